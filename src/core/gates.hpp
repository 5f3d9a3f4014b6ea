// The fused element-wise gate math of one LSTM step, shared by the cell and the layer.
// Equations: docs/derivation.md, "One step". Gate blocks in a row of z: [i | f | a | o], n each.
//
// Two versions of the nonlinearities: std::exp / std::tanh (any Real; float64 is the exact
// reference every other path is tested against) and fast_exp / fast_sigmoid / fast_tanh for
// float32 only, written so that the compiler vectorises them (src/cpu/fast_gates.cpp builds
// AVX-512, AVX2 and baseline clones and picks one at run time). Their error, measured over the
// whole float range in tests/test_fastmath.cpp: fast_exp <= 2 ulp relative, fast_sigmoid and
// fast_tanh <= 2.5e-7 absolute (float32 itself resolves 6e-8 near 1).
#pragma once
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>

#include "core/cell_math.hpp"

namespace lstmgrad::core {

// fast_exp's constants, shared with its AVX-512 form (exp16, cpu/simd_math.hpp): the clamp, 1/ln2,
// ln2 in two parts (ln2 = ln2_hi - ln2_lo, ln2_hi exact in 9 bits), and the polynomial for e^r,
// highest degree first (Cephes expf's coefficients).
struct FastExp {
  static constexpr float lo = -87.0f, hi = 88.0f;
  static constexpr float inv_ln2 = 1.44269504088896341f;
  static constexpr float ln2_hi = 0.693359375f, ln2_lo = 2.12194440e-4f;
  static constexpr float c[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                                 4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};
};

// e^x for float: x = k ln2 + r with |r| <= ln2/2, e^r by a degree-7 polynomial, 2^k built in the
// exponent bits. x is clamped to [-87, 88] (no inf, no denormal).
inline float fast_exp(float x) {
  using E = FastExp;
  x = std::min(std::max(x, E::lo), E::hi);
  const float k = (x * E::inv_ln2 + 12582912.0f) - 12582912.0f;  // round(x / ln2)
  const float r = (x - k * E::ln2_hi) + k * E::ln2_lo;           // x - k ln2, two parts
  float p = E::c[0];
  p = p * r + E::c[1];
  p = p * r + E::c[2];
  p = p * r + E::c[3];
  p = p * r + E::c[4];
  p = p * r + E::c[5];
  p = p * r * r + r + 1.0f;
  return p * std::bit_cast<float>((static_cast<int32_t>(k) + 127) << 23);
}

inline float fast_sigmoid(float x) {
  return 1.0f / (1.0f + fast_exp(-x));
}

// tanh x = 1 - 2 / (e^{2x} + 1): absolute error <= 2.5e-7 (tested), exactly +-1 for large |x|.
inline float fast_tanh(float x) {
  return 1.0f - 2.0f / (fast_exp(2.0f * x) + 1.0f);
}

// Unit j's CellUnit weights from a block laid out like a gate row: p_i, p_f, p_o at u, u + gs,
// u + 2 gs (zeros where u is null).
template <class Real>
inline CellUnit<Real> unit_at(const Real* u, int64_t gs, int64_t j) {
  if (!u) return {0, 0, 0};
  return {u[j], u[gs + j], u[2 * gs + j]};
}

// A slice of n hidden units (a thread's share, or all H). z: B rows with stride ldz, each holding
// the four gates' n pre-activations (V x + U h_prev) at z, z + gs, z + 2 gs, z + 3 gs (gs = H in
// a [B,4H] row); `bias` (same offsets, may be null) is added. `unit` (may be null): the units'
// CellUnit weights, p_i, p_f, p_o at unit, unit + gs, unit + 2 gs. Out: the activations i, f, a,
// o, saved for backward. s_prev [B,n] in; s [B,n], h [B,n] out; state rows have stride ld.
template <class Real>
inline void gates_forward(Real* z, int64_t ldz, int64_t gs, const Real* bias, const Real* unit,
                          Real* s, Real* h, const Real* s_prev, int64_t ld, int64_t B, int64_t n) {
  for (int64_t r = 0; r < B; ++r) {
    Real* zi = z + r * ldz;
    Real* zf = zi + gs;
    Real* za = zi + 2 * gs;
    Real* zo = zi + 3 * gs;
    const Real* sp = s_prev + r * ld;
    Real* sr = s + r * ld;
    Real* hr = h + r * ld;
    for (int64_t j = 0; j < n; ++j) {
      Real pi = zi[j], pf = zf[j], pa = za[j], po = zo[j];
      if (bias) pi += bias[j], pf += bias[gs + j], pa += bias[2 * gs + j], po += bias[3 * gs + j];
      CellGates<Real> g;
      const CellUnit<Real> u = unit_at(unit, gs, j);
      cell_forward(ScalarMath<Real>{}, pi, pf, pa, po, sp[j], unit ? &u : nullptr, g, sr[j], hr[j]);
      zi[j] = g.i, zf[j] = g.f, za[j] = g.a, zo[j] = g.o;
    }
  }
}

// The dense layout: z [B,4H], states [B,H].
template <class Real>
inline void gates_forward(Real* z, Real* s, Real* h, const Real* s_prev, int64_t B, int64_t H) {
  gates_forward(z, 4 * H, H, static_cast<const Real*>(nullptr), static_cast<const Real*>(nullptr),
                s, h, s_prev, H, B, H);
}

// Backward of gates_forward. dh = dh_out + dh_rec (from the readout or the layer above, and from
// step t+1); ds in: the gradient carried from step t+1 (ds_{t+1} * f_{t+1}); out: ds_prev, the
// gradient for s_prev (may be the same buffer). dz out: pre-activation gradients, laid out like
// gates (stride ldz, gate blocks gs apart). dh_out may be null (no gradient from outside at this
// step). States, ds, dh_out and dh_rec have row stride ld; `unit` as in gates_forward.
template <class Real>
inline void gates_backward(Real* dz, int64_t ldz, int64_t gs, Real* ds, const Real* dh_out,
                           const Real* dh_rec, const Real* gates, const Real* s, const Real* s_prev,
                           const Real* unit, int64_t ld, int64_t B, int64_t n) {
  for (int64_t r = 0; r < B; ++r) {
    const Real* g = gates + r * ldz;
    Real* d = dz + r * ldz;
    for (int64_t j = 0; j < n; ++j) {
      const int64_t k = r * ld + j;
      const CellGates<Real> gk{g[j], g[gs + j], g[2 * gs + j], g[3 * gs + j]};
      const Real dh = (dh_out ? dh_out[k] : Real(0)) + dh_rec[k];
      CellGates<Real> dzk;
      const CellUnit<Real> u = unit_at(unit, gs, j);
      cell_backward(ScalarMath<Real>{}, gk, std::tanh(s[k]), s_prev[k], unit ? &u : nullptr, dh,
                    ds[k], dzk);
      d[j] = dzk.i, d[gs + j] = dzk.f, d[2 * gs + j] = dzk.a, d[3 * gs + j] = dzk.o;
    }
  }
}

// The dense layout: dz, gates [B,4H], the rest [B,H].
template <class Real>
inline void gates_backward(Real* dz, Real* ds, const Real* dh_out, const Real* dh_rec,
                           const Real* gates, const Real* s, const Real* s_prev, int64_t B,
                           int64_t H) {
  gates_backward(dz, 4 * H, H, ds, dh_out, dh_rec, gates, s, s_prev,
                 static_cast<const Real*>(nullptr), H, B, H);
}

// The CellUnit weights' gradients of n units, summed over N positions (rows of stride ldz for dz,
// ld for the states) in order, added to du (p_i, p_f, p_o at du, du + gs, du + 2 gs). dz: the
// pre-activation gradients (gate blocks gs apart); s_prev, s: each position's states.
template <class Real>
inline void unit_grads(Real* du, int64_t gs, const Real* dz, int64_t ldz, const Real* s_prev,
                       const Real* s, int64_t ld, int64_t N, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    const CellUnit<Real> g = cell_unit_grads(dz + j, ldz, gs, s_prev + j, s + j, ld, N);
    du[j] += g.p_i, du[gs + j] += g.p_f, du[2 * gs + j] += g.p_o;
  }
}

}  // namespace lstmgrad::core
