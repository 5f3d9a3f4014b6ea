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
// A cell variant (peepholes, layer norm, zoneout) changes these functions and nothing else of the
// element math. M provides: mul(x, y); fma(x, y, c) = x y + c (fused or not, M's choice);
// one_minus_square(y) = 1 - y^2 (tanh's slope at its value y); sigmoid_slope(y) = y (1 - y);
// sigmoid(x); tanh(x). Arguments go by reference (vector types never cross a function boundary
// by value where their instruction set is not enabled).
#pragma once
#include <cmath>

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

// Pre-activations (bias included) and s_prev in; the gates, s and h out.
template <class M, class V>
LSTMGRAD_HOST_DEVICE inline void cell_forward(const M& m, const V& zi, const V& zf, const V& za,
                                              const V& zo, const V& s_prev, CellGates<V>& g, V& s,
                                              V& h) {
  g.i = m.sigmoid(zi), g.f = m.sigmoid(zf), g.a = m.tanh(za), g.o = m.sigmoid(zo);
  cell_state(m, g, s_prev, s);
  cell_output(m, g, m.tanh(s), h);
}

// Backward of cell_forward, given the saved gates g, tanh(s_t), s_prev, and dh = dL/dh_t (from
// outside the layer plus from step t+1). ds: in, the gradient carried from step t+1 (ds_{t+1}
// f_{t+1}); out, the one carried to step t-1 (ds_t f_t). dz out: the pre-activation gradients.
template <class M, class V>
LSTMGRAD_HOST_DEVICE inline void cell_backward(const M& m, const CellGates<V>& g, const V& tanh_s,
                                               const V& s_prev, const V& dh, V& ds,
                                               CellGates<V>& dz) {
  const V dst = m.fma(m.mul(dh, g.o), m.one_minus_square(tanh_s), ds);  // h = o tanh(s)
  // s = i a + f s_prev
  dz.i = m.mul(m.mul(dst, g.a), m.sigmoid_slope(g.i));     // i = sigmoid(z_i)
  dz.f = m.mul(m.mul(dst, s_prev), m.sigmoid_slope(g.f));  // f = sigmoid(z_f)
  dz.a = m.mul(m.mul(dst, g.i), m.one_minus_square(g.a));  // a = tanh(z_a)
  dz.o = m.mul(m.mul(dh, tanh_s), m.sigmoid_slope(g.o));   // o = sigmoid(z_o)
  ds = m.mul(dst, g.f);
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

}  // namespace lstmgrad::core
