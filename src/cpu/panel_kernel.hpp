// The register-blocked inner loop of the packed GEMM, shared by panel_gemm's tiles
// (cpu/panel_gemm.cpp) and the fused step kernels (cpu/fast_gates.cpp), and the 16 x 16 transpose
// of the panel packers (panel_gemm.cpp, bf16.cpp): MR rows of A against NP
// panels of 16 columns, the MR x NP accumulators in registers over all of K. AVX-512 only; the
// callers check panel_gemm_available().
#pragma once
#include <cstdint>

#include "cpu/panel_gemm.hpp"  // kPanelWidth, AForm, Start
#include "cpu/simd_math.hpp"   // immintrin.h, LSTMGRAD_AVX512

namespace lstmgrad::cpu {

// A tile's accumulators before its K loop: bias[r] (Start::row_bias) or 0, with the tile's C lines
// fetched for writing meanwhile (a large C comes from memory: the readout's [V, H] gradient, its
// logits); and after it, C (+)= acc under each panel's mask. C[p]: row 0 of panel p's columns.
template <int MR, int NP>
LSTMGRAD_AVX512 inline void tile_start(__m512 (&acc)[MR][NP], Start start, const float* bias,
                                       float* const* C, int64_t ldc) {
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
    for (int p = 0; p < NP; ++p) {
      acc[r][p] = start == Start::row_bias ? _mm512_set1_ps(bias[r]) : _mm512_setzero_ps();
      __builtin_prefetch(C[p] + r * ldc, 1, 3);
    }
}

template <int MR, int NP>
LSTMGRAD_AVX512 inline void tile_store(const __m512 (&acc)[MR][NP], Start start, float* const* C,
                                       const __mmask16* mask, int64_t ldc) {
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
    for (int p = 0; p < NP; ++p) {
      float* c = C[p] + r * ldc;
      __m512 v = acc[r][p];
      if (start == Start::accumulate) v = _mm512_add_ps(_mm512_maskz_loadu_ps(mask[p], c), v);
      _mm512_mask_storeu_ps(c, mask[p], v);
    }
}

// acc[r][p] += sum over k < K of A(r, k) times row k of panel p (P[p]: [K][16] floats, 64-byte
// aligned). A(r, k) is read as F says with stride `as` (AForm in panel_gemm.hpp).
template <int MR, int NP, AForm F>
LSTMGRAD_AVX512 inline void panel_sums(int64_t K, const float* A, int64_t as, const float* const* P,
                                       __m512 (&acc)[MR][NP]) {
  // Row r's A(r, k) is a[r * rs]: rs = as for rows, 1 for cols, 16 for blocks.
  const int64_t rs = F == AForm::rows ? as : F == AForm::cols ? 1 : kPanelWidth;
  for (int64_t k = 0; k < K; ++k) {
    const float* a = F == AForm::rows   ? A + k
                     : F == AForm::cols ? A + k * as
                                        : A + (k / kPanelWidth) * as + k % kPanelWidth;
    __m512 w[NP];
#pragma GCC unroll 4
    for (int p = 0; p < NP; ++p) w[p] = _mm512_load_ps(P[p] + k * kPanelWidth);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const __m512 av = _mm512_set1_ps(a[r * rs]);
#pragma GCC unroll 4
      for (int p = 0; p < NP; ++p) acc[r][p] = _mm512_fmadd_ps(av, w[p], acc[r][p]);
    }
  }
}

// Columns [0, kc) of the 16 x 16 block whose row l is r[l] ([l][c] -> dst[c * 16 + l]): four
// rounds of interleaves and 128-bit lane shuffles.
LSTMGRAD_AVX512 inline void transpose16(const __m512* r, int64_t kc, float* dst) {
  __m512 t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int g = 0; g < 4; ++g) {  // u[4g + j]: rows 4g..4g+3 of columns j, j+4, j+8, j+12
    const __m512d a = _mm512_castps_pd(t[4 * g]), b = _mm512_castps_pd(t[4 * g + 1]),
                  c = _mm512_castps_pd(t[4 * g + 2]), d = _mm512_castps_pd(t[4 * g + 3]);
    u[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int j = 0; j < 4; ++j) {
    const __m512 v = _mm512_shuffle_f32x4(u[j], u[4 + j], 0x88);
    const __m512 w = _mm512_shuffle_f32x4(u[j], u[4 + j], 0xdd);
    const __m512 v2 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0x88);
    const __m512 w2 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0xdd);
    const __m512 col[4] = {_mm512_shuffle_f32x4(v, v2, 0x88), _mm512_shuffle_f32x4(w, w2, 0x88),
                           _mm512_shuffle_f32x4(v, v2, 0xdd), _mm512_shuffle_f32x4(w, w2, 0xdd)};
    for (int m = 0; m < 4; ++m)
      if (j + 4 * m < kc) _mm512_store_ps(dst + (j + 4 * m) * kPanelWidth, col[m]);
  }
}

}  // namespace lstmgrad::cpu
