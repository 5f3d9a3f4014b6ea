#include "cpu/fast_gates.hpp"

#include "core/gates.hpp"

namespace lstmgrad::cpu {

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
