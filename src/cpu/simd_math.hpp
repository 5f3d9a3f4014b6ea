// 16-lane AVX-512 forms of core::fast_exp, fast_sigmoid and fast_tanh (core/gates.hpp): the same
// algorithms and constants, for the kernels that run only where panel_gemm_available(). Include
// from functions compiled with LSTMGRAD_AVX512.
#pragma once
// GCC 12's avx512fintrin.h builds the "undefined" pass-through vector of unmasked intrinsics
// (min, max, roundscale, unpack, ...) by initialising a variable with itself, which
// -Wuninitialized reports inside that header at every inlined call; the vectors are never read.
// The warnings are located in the header, so they are silenced for its text alone.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#if defined(__GNUC__) && !defined(__clang__)  // GCC's name; clang has no such group
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#pragma GCC diagnostic pop

#include "core/cell_math.hpp"
#include "core/gates.hpp"

#define LSTMGRAD_AVX512 __attribute__((target("avx512f,prfchw")))

namespace lstmgrad::cpu {

// The first min(n, 16) of 16 lanes (n >= 0): a ragged tail's mask.
inline __mmask16 first_lanes(int64_t n) {
  return n >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << n) - 1u);
}

// e^x (clamped to [-87, 88]): x = k ln2 + r, e^r by core::FastExp's polynomial, times 2^k.
LSTMGRAD_AVX512 inline __m512 exp16(__m512 x) {
  using E = core::FastExp;
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(E::lo)), _mm512_set1_ps(E::hi));
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(E::inv_ln2)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(E::ln2_hi), x);  // x - k ln2 in two parts
  r = _mm512_fmadd_ps(k, _mm512_set1_ps(E::ln2_lo), r);
  __m512 p = _mm512_set1_ps(E::c[0]);
  for (int i = 1; i < 6; ++i) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(E::c[i]));
  p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, k);
}

// 1 / d for d >= 1: the 14-bit estimate and one Newton step (relative error ~2^-28 before
// rounding). A division is several times slower here (the gate kernels were bound by it).
LSTMGRAD_AVX512 inline __m512 recip16(__m512 d) {
  const __m512 y = _mm512_rcp14_ps(d);
  return _mm512_fmadd_ps(y, _mm512_fnmadd_ps(d, y, _mm512_set1_ps(1.0f)), y);
}

// 1 / (1 + e^-x)
LSTMGRAD_AVX512 inline __m512 sigmoid16(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.0f);
  return recip16(_mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), x))));
}

// 1 - 2 / (e^{2x} + 1)
LSTMGRAD_AVX512 inline __m512 tanh16(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 r = recip16(_mm512_add_ps(exp16(_mm512_add_ps(x, x)), one));
  return _mm512_fnmadd_ps(_mm512_set1_ps(2.0f), r, one);
}

// The cell's arithmetic on 16 lanes (core/cell_math.hpp's M): products and fused multiply-adds,
// the AVX-512 sigmoid and tanh. Vec16 wraps __m512 so that it can be a template argument.
// Functions that instantiate the cell on it are LSTMGRAD_AVX512_FLAT: the generic cell functions
// are compiled for the default target, so only flattening into an AVX-512 caller inlines them
// together with these operations.
struct Vec16 {
  __m512 v;
};

#define LSTMGRAD_AVX512_FLAT __attribute__((target("avx512f,prfchw"), flatten))

struct Avx512Math {
  LSTMGRAD_AVX512 Vec16 mul(Vec16 x, Vec16 y) const { return {_mm512_mul_ps(x.v, y.v)}; }
  LSTMGRAD_AVX512 Vec16 fma(Vec16 x, Vec16 y, Vec16 c) const {
    return {_mm512_fmadd_ps(x.v, y.v, c.v)};
  }
  LSTMGRAD_AVX512 Vec16 one_minus_square(Vec16 y) const {
    return {_mm512_fnmadd_ps(y.v, y.v, _mm512_set1_ps(1.0f))};
  }
  LSTMGRAD_AVX512 Vec16 sigmoid_slope(Vec16 y) const {
    return {_mm512_mul_ps(y.v, _mm512_sub_ps(_mm512_set1_ps(1.0f), y.v))};
  }
  LSTMGRAD_AVX512 Vec16 sigmoid(Vec16 x) const { return {sigmoid16(x.v)}; }
  LSTMGRAD_AVX512 Vec16 tanh(Vec16 x) const { return {tanh16(x.v)}; }
};

}  // namespace lstmgrad::cpu
