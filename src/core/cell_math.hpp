// One LSTM unit at one step, forward and backward: the single definition of the cell's element
// math that the scalar reference (core/gates.hpp) and the CUDA kernels (src/cuda/) both call.
// Equations: docs/derivation.md, "One step". Gates i, f, o = sigmoid, a = tanh (PyTorch's g);
// s = i a + f s_prev, h = o tanh(s). Under nvcc the functions are also device functions.
#pragma once
#include <cmath>

#include "core/host_device.hpp"

namespace lstmgrad::core {

template <class Real>
LSTMGRAD_HOST_DEVICE inline Real sigmoid(Real v) {
  return Real(1) / (Real(1) + std::exp(-v));
}

// The four activated gates of one unit.
template <class Real>
struct CellGates {
  Real i, f, a, o;
};

// Pre-activations (bias included) and s_prev in; the gates, s and h out.
template <class Real>
LSTMGRAD_HOST_DEVICE inline CellGates<Real> cell_forward(Real zi, Real zf, Real za, Real zo,
                                                         Real s_prev, Real& s, Real& h) {
  const CellGates<Real> g{sigmoid(zi), sigmoid(zf), std::tanh(za), sigmoid(zo)};
  s = g.i * g.a + g.f * s_prev;  // s = i * a + f * s_prev
  h = g.o * std::tanh(s);        // h = o * tanh(s)
  return g;
}

// Backward of cell_forward. dh: dL/dh_t (from outside the layer plus from step t+1); ds: in, the
// gradient carried from step t+1 (ds_{t+1} f_{t+1}), out, the one carried to step t-1 (ds_t f_t).
// Returns the pre-activation gradients dz in gate order.
template <class Real>
LSTMGRAD_HOST_DEVICE inline CellGates<Real> cell_backward(const CellGates<Real>& g, Real s,
                                                          Real s_prev, Real dh, Real& ds) {
  const Real ts = std::tanh(s);
  const Real dst = ds + dh * g.o * (Real(1) - ts * ts);  // h = o * tanh(s)
  const Real d_o = dh * ts;
  const Real di = dst * g.a, da = dst * g.i, df = dst * s_prev;  // s = i * a + f * s_prev
  ds = dst * g.f;
  return {di * g.i * (Real(1) - g.i),    // i = sigmoid(z_i)
          df * g.f * (Real(1) - g.f),    // f = sigmoid(z_f)
          da * (Real(1) - g.a * g.a),    // a = tanh(z_a)
          d_o * g.o * (Real(1) - g.o)};  // o = sigmoid(z_o)
}

}  // namespace lstmgrad::core
