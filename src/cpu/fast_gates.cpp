#include "cpu/fast_gates.hpp"

#include "core/gates.hpp"
#include "cpu/panel_gemm.hpp"
#include "cpu/simd_math.hpp"

namespace lstmgrad::cpu {

namespace {

LSTMGRAD_AVX512 inline __m512 biased(__mmask16 m, const float* z, const float* b) {
  return _mm512_add_ps(_mm512_maskz_loadu_ps(m, z), _mm512_maskz_loadu_ps(m, b));
}

// AVX-512: one pass per row over 16 units at a time, the four gates and the cell in registers
// (the tail masked), instead of five passes through the row.
LSTMGRAD_AVX512 void gates_forward16(float* z, int64_t ldz, int64_t gs, const float* bias, float* s,
                                     float* h, const float* s_prev, int64_t ld, int64_t B,
                                     int64_t n) {
  for (int64_t r = 0; r < B; ++r) {
    float* zr = z + r * ldz;
    const float* sp = s_prev + r * ld;
    float* sr = s + r * ld;
    float* hr = h + r * ld;
    for (int64_t j = 0; j < n; j += 16) {
      const __mmask16 m = first_lanes(n - j);
      const __m512 i = sigmoid16(biased(m, zr + j, bias + j)),
                   f = sigmoid16(biased(m, zr + gs + j, bias + gs + j)),
                   a = tanh16(biased(m, zr + 2 * gs + j, bias + 2 * gs + j)),
                   o = sigmoid16(biased(m, zr + 3 * gs + j, bias + 3 * gs + j));
      const __m512 sv = _mm512_fmadd_ps(f, _mm512_maskz_loadu_ps(m, sp + j), _mm512_mul_ps(i, a));
      _mm512_mask_storeu_ps(zr + j, m, i);
      _mm512_mask_storeu_ps(zr + gs + j, m, f);
      _mm512_mask_storeu_ps(zr + 2 * gs + j, m, a);
      _mm512_mask_storeu_ps(zr + 3 * gs + j, m, o);
      _mm512_mask_storeu_ps(sr + j, m, sv);
      _mm512_mask_storeu_ps(hr + j, m, _mm512_mul_ps(o, tanh16(sv)));
    }
  }
}

LSTMGRAD_AVX512 void gates_backward16(float* dz, int64_t ldz, int64_t gs, float* ds,
                                      const float* dh_out, const float* dh_rec, const float* gates,
                                      const float* s, const float* s_prev, int64_t ld, int64_t B,
                                      int64_t n) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int64_t r = 0; r < B; ++r) {
    const float* g = gates + r * ldz;
    float* d = dz + r * ldz;
    for (int64_t j = 0; j < n; j += 16) {
      const __mmask16 m = first_lanes(n - j);
      const int64_t k = r * ld + j;
      const __m512 i = _mm512_maskz_loadu_ps(m, g + j), f = _mm512_maskz_loadu_ps(m, g + gs + j),
                   a = _mm512_maskz_loadu_ps(m, g + 2 * gs + j),
                   o = _mm512_maskz_loadu_ps(m, g + 3 * gs + j);
      __m512 dh = _mm512_maskz_loadu_ps(m, dh_rec + k);
      if (dh_out) dh = _mm512_add_ps(dh, _mm512_maskz_loadu_ps(m, dh_out + k));
      const __m512 ts = tanh16(_mm512_maskz_loadu_ps(m, s + k));
      // h = o * tanh(s); s = i * a + f * s_prev
      const __m512 dst = _mm512_fmadd_ps(_mm512_mul_ps(dh, o), _mm512_fnmadd_ps(ts, ts, one),
                                         _mm512_maskz_loadu_ps(m, ds + k));
      const __m512 di =
          _mm512_mul_ps(_mm512_mul_ps(dst, a), _mm512_mul_ps(i, _mm512_sub_ps(one, i)));
      const __m512 df = _mm512_mul_ps(_mm512_mul_ps(dst, _mm512_maskz_loadu_ps(m, s_prev + k)),
                                      _mm512_mul_ps(f, _mm512_sub_ps(one, f)));
      const __m512 da = _mm512_mul_ps(_mm512_mul_ps(dst, i), _mm512_fnmadd_ps(a, a, one));
      const __m512 d_o =
          _mm512_mul_ps(_mm512_mul_ps(dh, ts), _mm512_mul_ps(o, _mm512_sub_ps(one, o)));
      _mm512_mask_storeu_ps(d + j, m, di);
      _mm512_mask_storeu_ps(d + gs + j, m, df);
      _mm512_mask_storeu_ps(d + 2 * gs + j, m, da);
      _mm512_mask_storeu_ps(d + 3 * gs + j, m, d_o);
      _mm512_mask_storeu_ps(ds + k, m, _mm512_mul_ps(dst, f));
    }
  }
}

}  // namespace

using core::fast_sigmoid;
using core::fast_tanh;

#define LSTMGRAD_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))

// Simple loops, one function each, so that the compiler vectorises every one of them (a single
// loop with all five nonlinearities does not if-convert). A row's blocks stay in L1 between them.
inline void sigmoid_bias(float* __restrict v, const float* __restrict b, int64_t n) {
  for (int64_t j = 0; j < n; ++j) v[j] = fast_sigmoid(v[j] + b[j]);
}

inline void tanh_bias(float* __restrict v, const float* __restrict b, int64_t n) {
  for (int64_t j = 0; j < n; ++j) v[j] = fast_tanh(v[j] + b[j]);
}

inline void cell_update(float* __restrict s, float* __restrict h, const float* __restrict i,
                        const float* __restrict f, const float* __restrict a,
                        const float* __restrict o, const float* __restrict sp, int64_t n) {
  for (int64_t j = 0; j < n; ++j) s[j] = i[j] * a[j] + f[j] * sp[j];  // s = i * a + f * s_prev
  for (int64_t j = 0; j < n; ++j) h[j] = o[j] * fast_tanh(s[j]);      // h = o * tanh(s)
}

LSTMGRAD_CLONES
void fast_gates_forward(float* z, int64_t ldz, int64_t gs, const float* bias, float* s, float* h,
                        const float* s_prev, int64_t ld, int64_t B, int64_t n) {
  if (panel_gemm_available()) return gates_forward16(z, ldz, gs, bias, s, h, s_prev, ld, B, n);
  for (int64_t r = 0; r < B; ++r) {
    float* zr = z + r * ldz;
    sigmoid_bias(zr, bias, n);
    sigmoid_bias(zr + gs, bias + gs, n);
    tanh_bias(zr + 2 * gs, bias + 2 * gs, n);
    sigmoid_bias(zr + 3 * gs, bias + 3 * gs, n);
    cell_update(s + r * ld, h + r * ld, zr, zr + gs, zr + 2 * gs, zr + 3 * gs, s_prev + r * ld, n);
  }
}

inline void tanh_of(float* __restrict out, const float* __restrict v, int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = fast_tanh(v[j]);
}

// d_i .. d_o out; d_i and d_f may hold dh and tanh(s) on entry (read before written at each j).
inline void gate_grads(float* d_i, float* d_f, float* __restrict d_a, float* __restrict d_o,
                       float* __restrict ds, const float* dh, const float* ts,
                       const float* __restrict g, int64_t gs, const float* __restrict sp,
                       int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    const float i = g[j], f = g[gs + j], a = g[2 * gs + j], o = g[3 * gs + j];
    const float dhj = dh[j], tsj = ts[j];
    const float dst = ds[j] + dhj * o * (1.0f - tsj * tsj);  // h = o * tanh(s)
    // s = i * a + f * s_prev
    d_i[j] = dst * a * i * (1.0f - i);      // i = sigmoid(z_i)
    d_f[j] = dst * sp[j] * f * (1.0f - f);  // f = sigmoid(z_f)
    d_a[j] = dst * i * (1.0f - a * a);      // a = tanh(z_a)
    d_o[j] = dhj * tsj * o * (1.0f - o);    // o = sigmoid(z_o)
    ds[j] = dst * f;
  }
}

LSTMGRAD_CLONES
void fast_gates_backward(float* dz, int64_t ldz, int64_t gs, float* ds, const float* dh_out,
                         const float* dh_rec, const float* gates, const float* s,
                         const float* s_prev, int64_t ld, int64_t B, int64_t n) {
  if (panel_gemm_available())
    return gates_backward16(dz, ldz, gs, ds, dh_out, dh_rec, gates, s, s_prev, ld, B, n);
  for (int64_t r = 0; r < B; ++r) {
    const float* __restrict g = gates + r * ldz;
    float* d = dz + r * ldz;
    float* __restrict dsr = ds + r * ld;
    const float* __restrict dhr = dh_rec + r * ld;
    const float* __restrict sp = s_prev + r * ld;
    // The i and f blocks of the dz row hold dh and tanh(s) until the last loop overwrites them.
    float* __restrict dh = d;
    float* __restrict ts = d + gs;
    if (dh_out) {
      const float* __restrict dho = dh_out + r * ld;
      for (int64_t j = 0; j < n; ++j) dh[j] = dho[j] + dhr[j];
    } else {
      for (int64_t j = 0; j < n; ++j) dh[j] = dhr[j];
    }
    tanh_of(ts, s + r * ld, n);
    gate_grads(d, d + gs, d + 2 * gs, d + 3 * gs, dsr, dh, ts, g, gs, sp, n);
  }
}

#undef LSTMGRAD_CLONES

}  // namespace lstmgrad::cpu
