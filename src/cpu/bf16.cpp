#include "cpu/bf16.hpp"

#include <algorithm>
#include <array>
#include <cstring>
#include <utility>

#include "cpu/panel_kernel.hpp"  // transpose16
#include "cpu/simd_math.hpp"     // immintrin.h, first_lanes

#define LSTMGRAD_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,prfchw")))

namespace lstmgrad::cpu {

bool bf16_available() {
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512bf16");
  return ok && panel_gemm_available();
}

// As vcvtneps2bf16 rounds: to nearest even, a denormal input to a zero of its sign (the
// instruction's DAZ), NaN quiet.
bf16_t to_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu) != 0)
    return static_cast<bf16_t>((u >> 16) | 0x0040u);
  if ((u & 0x7f800000u) == 0) return static_cast<bf16_t>((u >> 16) & 0x8000u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<bf16_t>(u >> 16);
}

float from_bf16(bf16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

void carve_bf16(ZeroedBuffer<bf16_t>& mem, std::span<const int64_t> sizes,
                std::span<bf16_t** const> slots) {
  constexpr int64_t kAlign = 32;  // bf16_t: 64 bytes
  auto whole = [](int64_t n) { return (n + kAlign - 1) / kAlign * kAlign; };
  int64_t total = kAlign;
  for (int64_t n : sizes) total += whole(n);
  if (static_cast<size_t>(total) > mem.size()) mem.assign(static_cast<size_t>(total));
  bf16_t* p = mem.data();
  p += (64 - reinterpret_cast<uintptr_t>(p) % 64) % 64 / sizeof(bf16_t);
  for (size_t i = 0; i < sizes.size(); ++i) *slots[i] = p, p += whole(sizes[i]);
}

namespace {

// Row k's lanes c..c+15 of src (as many as `n`, the rest 0) as bf16, and row k + 1's (or zeros
// where `second` is false), interleaved: lane pair (2l, 2l + 1) = (row k, row k + 1) of column l.
LSTMGRAD_AVX512_BF16 inline __m512i pairs16(const float* row, const float* next, int64_t n) {
  const __mmask16 m = first_lanes(std::max<int64_t>(n, 0));
  const __m512 a = _mm512_maskz_loadu_ps(m, row);
  const __m512 b = next ? _mm512_maskz_loadu_ps(m, next) : _mm512_setzero_ps();
  // lanes 0-15: a's, 16-31: b's
  const __m512i v = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(b, a));
  const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                       23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  return _mm512_permutexvar_epi16(idx, v);
}

LSTMGRAD_AVX512_BF16 void rows_avx(bf16_t* dst, int64_t ldd, const float* src, int64_t lds,
                                   int64_t rows, int64_t c0, int64_t c1) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = c0; c < c1; c += 16) {
      const __mmask16 m = first_lanes(c1 - c);
      const __m256i v = reinterpret_cast<__m256i>(
          _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, src + r * lds + c)));
      _mm256_mask_storeu_epi16(dst + r * ldd + c, m, v);
    }
}

LSTMGRAD_AVX512_BF16 void pairs_avx(bf16_t* dst, int64_t ldd, const float* src, int64_t lds,
                                    int64_t K, int64_t c0, int64_t c1, int64_t lanes) {
  for (int64_t k = 0; k < K; k += 2) {
    bf16_t* d = dst + (k / 2) * ldd;
    const float* row = src + k * lds + c0;
    const float* next = k + 1 < K ? row + lds : nullptr;
    for (int64_t c = 0; c < lanes; c += 16) {
      const __m512i v = pairs16(row + c, next ? next + c : nullptr, c1 - c0 - c);
      const int64_t n = std::min<int64_t>(16, lanes - c);  // columns stored
      const __mmask32 m = n >= 16 ? ~__mmask32(0) : (__mmask32(1) << (2 * n)) - 1;
      _mm512_mask_storeu_epi16(d + 2 * c, m, v);
    }
  }
}

}  // namespace

void to_bf16_rows(bf16_t* dst, int64_t ldd, const float* src, int64_t lds, int64_t rows, int64_t c0,
                  int64_t c1, int64_t K) {
  if (bf16_available()) {
    rows_avx(dst, ldd, src, lds, rows, c0, c1);
  } else {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = c0; c < c1; ++c) dst[r * ldd + c] = to_bf16(src[r * lds + c]);
  }
  if (c1 == K && (K & 1) && c0 < c1)  // the range that ends the row: one writer (no empty share)
    for (int64_t r = 0; r < rows; ++r) dst[r * ldd + K] = 0;
}

void to_bf16_pairs(bf16_t* dst, int64_t ldd, const float* src, int64_t lds, int64_t K, int64_t c0,
                   int64_t c1, int64_t lanes) {
  if (bf16_available()) return pairs_avx(dst, ldd, src, lds, K, c0, c1, lanes);
  for (int64_t k = 0; k < even(K); ++k)
    for (int64_t c = 0; c < lanes; ++c)
      dst[(k / 2) * ldd + 2 * c + k % 2] =
          k < K && c < c1 - c0 ? to_bf16(src[k * lds + c0 + c]) : bf16_t(0);
}

void to_bf16_blocks(bf16_t* dst, const float* src, int64_t lds, int64_t K, int64_t c0, int64_t c1) {
  for (int64_t c = c0; c < c1; c += kBf16Rows)
    to_bf16_pairs(dst + (c - c0) / kBf16Rows * bf16_block_size(K), 2 * kBf16Rows, src, lds, K, c,
                  std::min(c + kBf16Rows, c1), kBf16Rows);
}

namespace {

// One panel of op(W) = W^T (rows = true) in bf16: 32 k of 16 rows of W at a time, each row's 16
// pairs converted into one vector, then the 16 x 16 words transposed (a pair row per lane set).
LSTMGRAD_AVX512_BF16 void pack_rows_avx(bf16_t* d, const float* W, int64_t ldw, int64_t col,
                                        int64_t width, int64_t K) {
  __m512 r[16];
  for (int64_t k0 = 0; k0 < K; k0 += 2 * kPanelWidth) {
    const int64_t kc = std::min<int64_t>(2 * kPanelWidth, K - k0);
    const __mmask16 lo = first_lanes(kc), hi = first_lanes(std::max<int64_t>(kc - 16, 0));
    for (int64_t l = 0; l < kPanelWidth; ++l) {
      if (l >= width) {
        r[l] = _mm512_setzero_ps();
        continue;
      }
      const float* w = W + (col + l) * ldw + k0;
      const __m512 a = _mm512_maskz_loadu_ps(lo, w), b = _mm512_maskz_loadu_ps(hi, w + 16);
      r[l] = reinterpret_cast<__m512>(_mm512_cvtne2ps_pbh(b, a));  // words: pairs of k0 ..
    }
    transpose16(r, (kc + 1) / 2, reinterpret_cast<float*>(d + k0 * kPanelWidth));
  }
}

}  // namespace

void pack_bf16_panels(bf16_t* dst, const float* W, int64_t ldw, bool rows,
                      const PanelLayout& layout, int64_t p0, int64_t p1) {
  const int64_t K = layout.K, size = bf16_panel_size(K);
  for (int64_t p = p0; p < p1; ++p) {
    bf16_t* d = dst + p * size;
    const auto [col, width] = columns_of(layout, p);
    if (!rows) {  // row k of the panel: W[k][col .. col + width)
      to_bf16_pairs(d, 2 * kPanelWidth, W, ldw, K, col, col + width, kPanelWidth);
      continue;
    }
    // op(W)[k][l] = W[col + l][k]: each of W's rows gives lane l of every pair row
    if (bf16_available()) {
      pack_rows_avx(d, W, ldw, col, width, K);
      continue;
    }
    for (int64_t l = 0; l < kPanelWidth; ++l) {
      const float* w = W + (col + l) * ldw;
      for (int64_t k = 0; k < even(K); ++k)
        d[(k / 2) * 2 * kPanelWidth + 2 * l + k % 2] = l < width && k < K ? to_bf16(w[k]) : 0;
    }
  }
}

namespace {

constexpr int kMaxRows = static_cast<int>(kBf16Rows);

// acc[r][p] += sum over k of A(r, k) B_p(k, lane), two k a step (K even).
template <int MR, int NP, PairForm F>
LSTMGRAD_AVX512_BF16 inline void sums(int64_t K, const bf16_t* A, int64_t as,
                                      const bf16_t* const* P, __m512 (&acc)[MR][NP]) {
  // from row r's pair to row r + 1's
  const int64_t rs = F == PairForm::rows ? as : F == PairForm::lanes ? kPanelWidth : 2;
  for (int64_t k = 0; k < K; k += 2) {
    const bf16_t* a = F == PairForm::rows    ? A + k
                      : F == PairForm::lanes ? A + (k / kPanelWidth) * as + k % kPanelWidth
                                             : A + (k / 2) * as;
    __m512i w[NP];
#pragma GCC unroll 4
    for (int p = 0; p < NP; ++p)
      w[p] = _mm512_load_si512(reinterpret_cast<const void*>(P[p] + k * kPanelWidth));
#pragma GCC unroll 12
    for (int r = 0; r < MR; ++r) {
      int32_t pair;
      std::memcpy(&pair, a + r * rs, sizeof pair);
      const __m512i av = _mm512_set1_epi32(pair);
#pragma GCC unroll 4
      for (int p = 0; p < NP; ++p)
        acc[r][p] = _mm512_dpbf16_ps(acc[r][p], reinterpret_cast<__m512bh>(av),
                                     reinterpret_cast<__m512bh>(w[p]));
    }
  }
}

template <int MR, int NP, PairForm F>
LSTMGRAD_AVX512_BF16 void tile(int64_t K, const bf16_t* A, int64_t as, const bf16_t* const* P,
                               float* const* C, const __mmask16* mask, int64_t ldc, Start start,
                               const float* bias) {
  __m512 acc[MR][NP];
  tile_start<MR, NP>(acc, start, bias, C, ldc);
  sums<MR, NP, F>(even(K), A, as, P, acc);
  tile_store<MR, NP>(acc, start, C, mask, ldc);
}

using TileFn = void (*)(int64_t, const bf16_t*, int64_t, const bf16_t* const*, float* const*,
                        const __mmask16*, int64_t, Start, const float*);

template <int NP, PairForm F, size_t... I>
constexpr std::array<TileFn, sizeof...(I)> tiles(std::index_sequence<I...>) {
  return {&tile<static_cast<int>(I) + 1, NP, F>...};
}

template <PairForm F>
constexpr std::array<std::array<TileFn, kMaxRows>, 2> tiles_of() {
  return {tiles<1, F>(std::make_index_sequence<kMaxRows>{}),
          tiles<2, F>(std::make_index_sequence<kMaxRows>{})};
}

// kTiles[form][NP - 1][MR - 1] (blocks runs the pairs tiles block by block)
const std::array<std::array<std::array<TileFn, kMaxRows>, 2>, 4> kTiles = {
    tiles_of<PairForm::rows>(), tiles_of<PairForm::pairs>(), tiles_of<PairForm::pairs>(),
    tiles_of<PairForm::lanes>()};

TileFn tile_fn(PairForm f, int np, int mr) {
  return kTiles[static_cast<size_t>(f)][np - 1][mr - 1];
}

template <int MR, int NP>
LSTMGRAD_AVX512_BF16 void group_sums(int64_t K, const bf16_t* A, int64_t lda, const bf16_t* P,
                                     float* out) {
  const bf16_t* panels[NP];
  for (int p = 0; p < NP; ++p) panels[p] = P + p * bf16_panel_size(K);
  __m512 acc[MR][NP];
  for (int r = 0; r < MR; ++r)
    for (int p = 0; p < NP; ++p) acc[r][p] = _mm512_setzero_ps();
  sums<MR, NP, PairForm::rows>(even(K), A, lda, panels, acc);
  for (int r = 0; r < MR; ++r)
    for (int p = 0; p < NP; ++p) _mm512_store_ps(out + (r * NP + p) * kPanelWidth, acc[r][p]);
}

using SumsFn = void (*)(int64_t, const bf16_t*, int64_t, const bf16_t*, float*);

template <int NP, size_t... I>
constexpr std::array<SumsFn, sizeof...(I)> group_sums_of(std::index_sequence<I...>) {
  return {&group_sums<static_cast<int>(I) + 1, NP>...};
}

// kGroupSums[NP == 4 ? 2 : NP - 1][MR - 1]
const std::array<std::array<SumsFn, kMaxRows>, 3> kGroupSums = {
    group_sums_of<1>(std::make_index_sequence<kMaxRows>{}),
    group_sums_of<2>(std::make_index_sequence<kMaxRows>{}),
    group_sums_of<4>(std::make_index_sequence<kMaxRows>{})};

}  // namespace

void bf16_tiles(int64_t M, int64_t K, PairForm form, const bf16_t* A, int64_t as, const bf16_t* B,
                int64_t b_stride, int64_t columns, float* C, int64_t ldc, int64_t c_stride,
                Start start, const float* bias) {
  const int64_t np = (columns + kPanelWidth - 1) / kPanelWidth;
  // blocks: r is a multiple of 12 (the tiles' rows); each block a pairs form of its own
  auto a_row = [&](int64_t r) {
    return form == PairForm::rows    ? A + r * as
           : form == PairForm::pairs ? A + 2 * r
           : form == PairForm::lanes ? A + r * kPanelWidth
                                     : A + r / kBf16Rows * as;
  };
  const PairForm tile_form = form == PairForm::blocks ? PairForm::pairs : form;
  const int64_t tile_as = form == PairForm::blocks ? 2 * kBf16Rows : as;
  // Rows in blocks whose A stays in L2 (about 256 KB) while every panel pair passes over it: A
  // is read from memory once, the panels once per block (without the blocks, a long M read A
  // once per panel pair: 64 times on throughput's input projection).
  const int64_t mb =
      std::max<int64_t>(kMaxRows, (256 * 1024 / (2 * even(K) * kMaxRows)) * kMaxRows);
  for (int64_t m0 = 0; m0 < M; m0 += mb) {
    const int64_t m1 = std::min(M, m0 + mb);
    for (int64_t p0 = 0; p0 < np; p0 += 2) {
      const int NP = np - p0 >= 2 ? 2 : 1;
      const bf16_t* P[2] = {nullptr, nullptr};
      float* Cp[2] = {nullptr, nullptr};
      __mmask16 mask[2] = {0, 0};
      for (int q = 0; q < NP; ++q) {
        P[q] = B + (p0 + q) * b_stride;
        Cp[q] = C + (p0 + q) * c_stride;
        mask[q] = first_lanes(columns - (p0 + q) * kPanelWidth);
      }
      for (int64_t r = m0; r < m1; r += kMaxRows) {
        const int mr = static_cast<int>(std::min<int64_t>(kMaxRows, m1 - r));
        float* Cr[2] = {Cp[0] + r * ldc, NP == 2 ? Cp[1] + r * ldc : nullptr};
        tile_fn(tile_form, NP, mr)(K, a_row(r), tile_as, P, Cr, mask, ldc, start,
                                   bias ? bias + r : nullptr);
      }
    }
  }
}

void bf16_gemm(int64_t M, const bf16_t* A, int64_t lda, const bf16_t* packed,
               const PanelLayout& layout, float* C, int64_t ldc, bool accumulate) {
  // Each group's panels are consecutive and so are its columns of C: one bf16_tiles each.
  const int64_t size = bf16_panel_size(layout.K), pg = layout.per_group();
  for (int64_t g = 0; g < layout.groups; ++g)
    bf16_tiles(M, layout.K, PairForm::rows, A, lda, packed + g * pg * size, size, layout.width,
               C + g * layout.group_stride, ldc, kPanelWidth,
               accumulate ? Start::accumulate : Start::zero, nullptr);
}

void bf16_group_sums(int MR, int NP, int64_t K, const bf16_t* A, int64_t lda, const bf16_t* P,
                     float* acc) {
  kGroupSums[static_cast<size_t>(NP == 4 ? 2 : NP - 1)][static_cast<size_t>(MR - 1)](K, A, lda, P,
                                                                                     acc);
}

}  // namespace lstmgrad::cpu
