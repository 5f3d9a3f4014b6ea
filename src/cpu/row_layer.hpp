// The row-split LSTM layer: the other half of lstm_layer.hpp's layer_forward / layer_backward,
// which call these for the two cells whose arithmetic needs a whole row of units at a time.
//   Layer norm (Ba et al. 2016; ModelConfig::layer_norm, LayerWeights::ln):
//     z = LN(x W_ih^T; g_ih, b_ih') + LN(h_{t-1} W_hh^T; g_hh, b_hh') + b_ih + b_hh   over 4H,
//     i, f, o = sigmoid, a = tanh,  s = f s_prev + i a,  m = o tanh(LN(s; g_c, b_c))   over H,
//   LN(v; g, b) = (v - mean v) / sqrt(var v + 1e-5) g + b per row (PyTorch's LayerNorm, biased
//   variance); without it z = x W_ih^T + h_{t-1} W_hh^T + b_ih + b_hh and m = o tanh(s).
//   Projection (LSTMP, Sak et al. 2014; ModelConfig::proj, LayerWeights::W_hr):
//     h = m W_hr^T, P wide (PyTorch's proj_size); without it h = m.
// The team splits the B rows (each thread owns its rows for every unit and step: no barrier
// between steps); the GEMMs over all steps split as in lstm_layer.cpp. Recurrent dropout and
// zoneout act as there (on the P-wide h with a projection); peepholes are not supported
// (validate_config). The derivations: docs/derivation.md, "Layer norm" and "Projection".
#pragma once
#include <cstdint>

#include "cpu/lstm_layer.hpp"
#include "lstmgrad/model.hpp"

namespace lstmgrad::cpu {

template <class Real>
void row_layer_forward(const LayerSaved<Real>& saved, const Real* x, const LayerWeights<Real>& w,
                       const TeamMember& tm, int64_t T, int64_t B, int64_t I, int64_t H);

template <class Real>
void row_layer_backward(Real* dx, const LayerGrads<Real>& g, Real* dz, Real* dh_rec, Real* ds,
                        const Real* dh_out, const LayerSaved<Real>& saved, const Real* x,
                        const LayerWeights<Real>& w, const TeamMember& tm, int64_t T, int64_t B,
                        int64_t I, int64_t H);

}  // namespace lstmgrad::cpu
