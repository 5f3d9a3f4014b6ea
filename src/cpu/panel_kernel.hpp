// The register-blocked inner loop of the packed GEMM, shared by panel_gemm's tiles
// (cpu/panel_gemm.cpp) and the fused step kernels (cpu/fast_gates.cpp): MR rows of A against NP
// panels of 16 columns, the MR x NP accumulators in registers over all of K. AVX-512 only; the
// callers check panel_gemm_available().
#pragma once
#include <cstdint>

#include "cpu/panel_gemm.hpp"  // kPanelWidth, AForm
#include "cpu/simd_math.hpp"   // immintrin.h, LSTMGRAD_AVX512

namespace lstmgrad::cpu {

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

}  // namespace lstmgrad::cpu
