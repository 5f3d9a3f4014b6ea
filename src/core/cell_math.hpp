// The LSTM cell's element math, defined once: the forward and the hand-derived backward of one
// unit at one step, written over an arithmetic `M` so that every engine instantiates the same
// formulas with its own element type:
//   ScalarMath<Real> (here)      std::exp / std::tanh, no fused multiply-add: the float64
//                                reference (core/gates.hpp) and the CUDA kernels (src/cuda/);
//   cpu::FastMath (fast_gates)   float32 with core::fast_sigmoid / fast_tanh: the portable
//                                auto-vectorised kernels;
//   cpu::Avx512Math (simd_math)  16 lanes of __m512, fused multiply-adds: the AVX-512 kernels;
//   ad::TapeMath (tape_lm.cpp)   autodiff tape variables: the forward that the tape
//                                differentiates on its own, to check the backward below.
// Equations: docs/derivation.md, "One step". Gates i, f, o = sigmoid, a = tanh (PyTorch's g);
//   s = i a + f s_prev,   h = o tanh(s).
// A cell variant changes these functions and nothing else of the element math (docs/design.md,
// "Adding a cell variant"); per-unit weights go in CellUnit. M provides: mul(x, y); fma(x, y, c) =
// x y + c (fused or not, M's choice); one_minus_square(y) = 1 - y^2 (tanh's slope at its value y);
// sigmoid_slope(y) = y (1 - y); sigmoid(x); tanh(x). Arguments go by reference (vector types never
// cross a function boundary by value where their instruction set is not enabled).
#pragma once
#include <cmath>
#include <type_traits>

#include "core/host_device.hpp"

namespace lstmgrad::core {

// The four activated gates of one unit (or their pre-activation gradients), in row order.
template <class V>
struct CellGates {
  V i, f, a, o;
};

// s = i a + f s_prev.
template <class M, class V>
LSTMGRAD_HOST_DEVICE inline void cell_state(const M& m, const CellGates<V>& g, const V& s_prev,
                                            V& s) {
  s = m.fma(g.f, s_prev, m.mul(g.i, g.a));
}

// h = o tanh(s), given tanh(s).
template <class M, class V>
LSTMGRAD_HOST_DEVICE inline void cell_output(const M& m, const CellGates<V>& g, const V& tanh_s,
                                             V& h) {
  h = m.mul(g.o, tanh_s);
}

// The per-unit weights that cell variants add, one value per hidden unit each (null where a model
// has none). Peepholes (Gers and Schmidhuber 2000): the gates see the cell state through diagonal
// weights, i and f the state they update (s_prev), o the new state s:
//   i = sigmoid(z_i + p_i s_prev),  f = sigmoid(z_f + p_f s_prev),  o = sigmoid(z_o + p_o s).
template <class V>
struct CellUnit {
  V p_i, p_f, p_o;
};

// Pre-activations (bias included), s_prev and the unit's weights u (may be null) in; the gates, s
// and h out.
template <class M, class V>
LSTMGRAD_HOST_DEVICE inline void cell_forward(const M& m, const V& zi, const V& zf, const V& za,
                                              const V& zo, const V& s_prev,
                                              const std::type_identity_t<CellUnit<V>>* u,
                                              CellGates<V>& g, V& s, V& h) {
  if (u) {
    g.i = m.sigmoid(m.fma(s_prev, u->p_i, zi)), g.f = m.sigmoid(m.fma(s_prev, u->p_f, zf));
    g.a = m.tanh(za);
    cell_state(m, g, s_prev, s);
    g.o = m.sigmoid(m.fma(s, u->p_o, zo));
  } else {
    g.i = m.sigmoid(zi), g.f = m.sigmoid(zf), g.a = m.tanh(za), g.o = m.sigmoid(zo);
    cell_state(m, g, s_prev, s);
  }
  cell_output(m, g, m.tanh(s), h);
}

// Backward of cell_forward, given the saved gates g, tanh(s_t), s_prev, the unit's weights u (may
// be null) and dh = dL/dh_t (from outside the layer plus from step t+1). ds: in, the gradient
// carried from step t+1 (what s_t's use at t+1 sends back); out, the one carried to step t-1.
// dz out: the pre-activation gradients.
template <class M, class V>
LSTMGRAD_HOST_DEVICE inline void cell_backward(const M& m, const CellGates<V>& g, const V& tanh_s,
                                               const V& s_prev,
                                               const std::type_identity_t<CellUnit<V>>* u,
                                               const V& dh, V& ds, CellGates<V>& dz) {
  dz.o = m.mul(m.mul(dh, tanh_s), m.sigmoid_slope(g.o));  // h = o tanh(s), o = sigmoid(z_o)
  V dst = m.fma(m.mul(dh, g.o), m.one_minus_square(tanh_s), ds);
  if (u) dst = m.fma(dz.o, u->p_o, dst);  // z_o = ... + p_o s
  // s = i a + f s_prev
  dz.i = m.mul(m.mul(dst, g.a), m.sigmoid_slope(g.i));     // i = sigmoid(z_i)
  dz.f = m.mul(m.mul(dst, s_prev), m.sigmoid_slope(g.f));  // f = sigmoid(z_f)
  dz.a = m.mul(m.mul(dst, g.i), m.one_minus_square(g.a));  // a = tanh(z_a)
  ds = m.mul(dst, g.f);
  if (u) ds = m.fma(dz.f, u->p_f, m.fma(dz.i, u->p_i, ds));  // z_i, z_f = ... + p s_prev
}

// The reference arithmetic: std::exp and std::tanh, each product and sum rounded on its own.
template <class Real>
struct ScalarMath {
  LSTMGRAD_HOST_DEVICE Real mul(Real x, Real y) const { return x * y; }
  LSTMGRAD_HOST_DEVICE Real fma(Real x, Real y, Real c) const { return x * y + c; }
  LSTMGRAD_HOST_DEVICE Real one_minus_square(Real y) const { return Real(1) - y * y; }
  LSTMGRAD_HOST_DEVICE Real sigmoid_slope(Real y) const { return y * (Real(1) - y); }
  LSTMGRAD_HOST_DEVICE Real sigmoid(Real x) const { return Real(1) / (Real(1) + std::exp(-x)); }
  LSTMGRAD_HOST_DEVICE Real tanh(Real x) const { return std::tanh(x); }
};

template <class Real>
LSTMGRAD_HOST_DEVICE inline Real sigmoid(Real v) {
  return ScalarMath<Real>{}.sigmoid(v);
}

// One unit's CellUnit weight gradients, summed over N positions in order (the weights are shared
// by every row and step): dz the unit's pre-activation gradients from cell_backward (positions
// ldz apart, gate blocks gs apart), s_prev and s its states at each position (ld apart).
//   z_i, z_f = ... + p s_prev,   z_o = ... + p_o s.
template <class Real, class Index>
LSTMGRAD_HOST_DEVICE inline CellUnit<Real> cell_unit_grads(const Real* dz, Index ldz, Index gs,
                                                           const Real* s_prev, const Real* s,
                                                           Index ld, Index N) {
  CellUnit<Real> sum{0, 0, 0};
  for (Index r = 0; r < N; ++r) {
    const Real* d = dz + r * ldz;
    sum.p_i += d[0] * s_prev[r * ld], sum.p_f += d[gs] * s_prev[r * ld];
    sum.p_o += d[3 * gs] * s[r * ld];
  }
  return sum;
}

}  // namespace lstmgrad::core
