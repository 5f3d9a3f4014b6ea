#include "cpu/panel_gemm.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <utility>

#include "cpu/panel_kernel.hpp"

namespace lstmgrad::cpu {

namespace {

constexpr int kMaxRows = 12;  // 12 rows x 2 panels: 24 accumulators of the 32 vector registers

// One tile: MR rows of C against NP panels, the accumulators held in registers over all of K.
// A(r, k) is read as F says (see AForm); `start` gives the accumulators' first value.
template <int MR, int NP, AForm F>
LSTMGRAD_AVX512 void tile(int64_t K, const float* A, int64_t as, const float* const* P,
                          float* const* C, const __mmask16* mask, int64_t ldc, Start start,
                          const float* bias) {
  __m512 acc[MR][NP];
  tile_start<MR, NP>(acc, start, bias, C, ldc);
  panel_sums<MR, NP, F>(K, A, as, P, acc);
  tile_store<MR, NP>(acc, start, C, mask, ldc);
}

using TileFn = void (*)(int64_t, const float*, int64_t, const float* const*, float* const*,
                        const __mmask16*, int64_t, Start, const float*);

template <int NP, AForm F, size_t... I>
constexpr std::array<TileFn, sizeof...(I)> tiles(std::index_sequence<I...>) {
  return {&tile<static_cast<int>(I) + 1, NP, F>...};
}

template <AForm F>
constexpr std::array<std::array<TileFn, kMaxRows>, 2> tiles_of() {
  return {tiles<1, F>(std::make_index_sequence<kMaxRows>{}),
          tiles<2, F>(std::make_index_sequence<kMaxRows>{})};
}

// kTiles[form][NP - 1][MR - 1]
const std::array<std::array<std::array<TileFn, kMaxRows>, 2>, 3> kTiles = {
    tiles_of<AForm::rows>(), tiles_of<AForm::cols>(), tiles_of<AForm::blocks>()};

TileFn tile_fn(AForm f, int np, int mr) {
  return kTiles[static_cast<size_t>(f)][np - 1][mr - 1];
}

}  // namespace

namespace {
std::atomic<bool> portable_forced{false};
}  // namespace

bool panel_gemm_available() {
  static const bool ok = __builtin_cpu_supports("avx512f");
  return ok && !portable_forced.load(std::memory_order_relaxed);
}

void force_portable_kernels(bool on) {
  portable_forced.store(on, std::memory_order_relaxed);
}

namespace {

// pack_panels for AVX-512: a panel row is one masked load (rows = false), or, transposed
// (rows = true), 16 rows of W are read 16 floats at a time and transposed in registers; stores
// are whole aligned vectors (padding lanes 0).
LSTMGRAD_AVX512 void pack_panels16(float* dst, const float* W, int64_t ldw, bool rows,
                                   const PanelLayout& layout) {
  const int64_t K = layout.K;
  for (int64_t p = 0; p < layout.panels(); ++p) {
    float* d = dst + p * K * kPanelWidth;
    const auto [col, width] = columns_of(layout, p);
    if (rows) {  // lane l of row k: W[(col + l) * ldw + k]
      __m512 r[16];
      for (int64_t k0 = 0; k0 < K; k0 += kPanelWidth) {
        const int64_t kc = std::min(kPanelWidth, K - k0);
        const __mmask16 km = first_lanes(kc);
        for (int64_t l = 0; l < kPanelWidth; ++l)
          r[l] =
              l < width ? _mm512_maskz_loadu_ps(km, W + (col + l) * ldw + k0) : _mm512_setzero_ps();
        transpose16(r, kc, d + k0 * kPanelWidth);
      }
    } else {
      const __mmask16 m = first_lanes(width);
      for (int64_t k = 0; k < K; ++k)
        _mm512_store_ps(d + k * kPanelWidth, _mm512_maskz_loadu_ps(m, W + k * ldw + col));
    }
  }
}

}  // namespace

void pack_panels(float* dst, const float* W, int64_t ldw, bool rows, const PanelLayout& layout) {
  if (panel_gemm_available()) return pack_panels16(dst, W, ldw, rows, layout);
  const int64_t K = layout.K;
  for (int64_t p = 0; p < layout.panels(); ++p) {
    float* d = dst + p * K * kPanelWidth;
    const auto [col, width] = columns_of(layout, p);
    if (rows) {  // a transpose: each W row read along k, written every 16th float
      for (int64_t l = 0; l < kPanelWidth; ++l)
        for (int64_t k = 0; k < K; ++k)
          d[k * kPanelWidth + l] = l < width ? W[(col + l) * ldw + k] : 0.0f;
    } else {  // row k of the panel is `width` consecutive floats of W's row k
      for (int64_t k = 0; k < K; ++k)
        for (int64_t l = 0; l < kPanelWidth; ++l)
          d[k * kPanelWidth + l] = l < width ? W[k * ldw + col + l] : 0.0f;
    }
  }
}

void panel_gemm(int64_t M, const float* A, int64_t lda, const float* packed,
                const PanelLayout& layout, float* C, int64_t ldc, bool accumulate) {
  const int64_t K = layout.K, np = layout.panels();
  for (int64_t p0 = 0; p0 < np; p0 += 2) {
    const int NP = np - p0 >= 2 ? 2 : 1;
    const float* P[2] = {packed + p0 * K * kPanelWidth, nullptr};
    float* Cp[2] = {nullptr, nullptr};
    __mmask16 mask[2] = {0, 0};
    for (int q = 0; q < NP; ++q) {
      const auto [col, width] = columns_of(layout, p0 + q);
      P[q] = packed + (p0 + q) * K * kPanelWidth;
      Cp[q] = C + col;
      mask[q] = first_lanes(width);
    }
    // The panels (2 x K x 64 bytes) stay in L2 while the row blocks pass over them.
    for (int64_t r = 0; r < M; r += kMaxRows) {
      const int mr = static_cast<int>(std::min<int64_t>(kMaxRows, M - r));
      float* Cr[2] = {Cp[0] + r * ldc, NP == 2 ? Cp[1] + r * ldc : nullptr};
      tile_fn(AForm::rows, NP, mr)(K, A + r * lda, lda, P, Cr, mask, ldc,
                                   accumulate ? Start::accumulate : Start::zero, nullptr);
    }
  }
}

void panel_tiles(int64_t M, int64_t K, AForm form, const float* A, int64_t as, const float* B,
                 int64_t b_stride, int64_t columns, float* C, int64_t ldc, int64_t c_stride,
                 Start start, const float* bias) {
  const int64_t np = (columns + kPanelWidth - 1) / kPanelWidth;
  auto a_row = [&](int64_t r) {  // A(r, 0)
    return form == AForm::rows ? A + r * as : form == AForm::cols ? A + r : A + r * kPanelWidth;
  };
  for (int64_t p0 = 0; p0 < np; p0 += 2) {
    const int NP = np - p0 >= 2 ? 2 : 1;
    const float* P[2] = {nullptr, nullptr};
    float* Cp[2] = {nullptr, nullptr};
    __mmask16 mask[2] = {0, 0};
    for (int q = 0; q < NP; ++q) {
      P[q] = B + (p0 + q) * b_stride;
      Cp[q] = C + (p0 + q) * c_stride;
      mask[q] = first_lanes(columns - (p0 + q) * kPanelWidth);
    }
    for (int64_t r = 0; r < M; r += kMaxRows) {
      const int mr = static_cast<int>(std::min<int64_t>(kMaxRows, M - r));
      float* Cr[2] = {Cp[0] + r * ldc, NP == 2 ? Cp[1] + r * ldc : nullptr};
      tile_fn(form, NP, mr)(K, a_row(r), as, P, Cr, mask, ldc, start, bias ? bias + r : nullptr);
    }
  }
}

}  // namespace lstmgrad::cpu
