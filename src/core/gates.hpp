// The fused element-wise gate math of one LSTM step, shared by the cell and the layer.
// Equations: docs/derivation.md, "One step". Gate blocks in a row of z: [i | f | a | o], H each.
#pragma once
#include <cmath>
#include <cstdint>

namespace lstmgrad::core {

template <class Real>
inline Real sigmoid(Real v) {
  return Real(1) / (Real(1) + std::exp(-v));
}

// z [B,4H]: in, pre-activations (V x + U h_prev + b); out, activations i, f, a, o (saved for
// backward). s_prev [B,H] in; s [B,H], h [B,H] out.
template <class Real>
inline void gates_forward(Real* z, Real* s, Real* h, const Real* s_prev, int64_t B, int64_t H) {
  for (int64_t r = 0; r < B; ++r) {
    Real* zi = z + r * 4 * H;
    Real* zf = zi + H;
    Real* za = zi + 2 * H;
    Real* zo = zi + 3 * H;
    for (int64_t j = 0; j < H; ++j) {
      const Real i = sigmoid(zi[j]), f = sigmoid(zf[j]), a = std::tanh(za[j]), o = sigmoid(zo[j]);
      const Real sv = i * a + f * s_prev[r * H + j];  // s = i * a + f * s_prev
      zi[j] = i, zf[j] = f, za[j] = a, zo[j] = o;
      s[r * H + j] = sv;
      h[r * H + j] = o * std::tanh(sv);  // h = o * tanh(s)
    }
  }
}

// Backward of gates_forward. dh = dh_out + dh_rec (from the readout or the layer above, and from
// step t+1); ds [B,H] in: the gradient carried from step t+1 (ds_{t+1} * f_{t+1}); out: ds_prev,
// the gradient for s_prev (may be the same buffer). dz [B,4H] out: pre-activation gradients.
// dh_out may be null (no gradient from outside at this step).
template <class Real>
inline void gates_backward(Real* dz, Real* ds, const Real* dh_out, const Real* dh_rec,
                           const Real* gates, const Real* s, const Real* s_prev, int64_t B,
                           int64_t H) {
  for (int64_t r = 0; r < B; ++r) {
    const Real* g = gates + r * 4 * H;
    Real* d = dz + r * 4 * H;
    for (int64_t j = 0; j < H; ++j) {
      const int64_t k = r * H + j;
      const Real i = g[j], f = g[H + j], a = g[2 * H + j], o = g[3 * H + j];
      const Real dh = (dh_out ? dh_out[k] : Real(0)) + dh_rec[k];
      const Real ts = std::tanh(s[k]);
      const Real dst = ds[k] + dh * o * (Real(1) - ts * ts);  // h = o * tanh(s)
      const Real d_o = dh * ts;
      // s = i * a + f * s_prev
      const Real di = dst * a, da = dst * i, df = dst * s_prev[k];
      d[j] = di * i * (Real(1) - i);           // i = sigmoid(z_i)
      d[H + j] = df * f * (Real(1) - f);       // f = sigmoid(z_f)
      d[2 * H + j] = da * (Real(1) - a * a);   // a = tanh(z_a)
      d[3 * H + j] = d_o * o * (Real(1) - o);  // o = sigmoid(z_o)
      ds[k] = dst * f;
    }
  }
}

}  // namespace lstmgrad::core
