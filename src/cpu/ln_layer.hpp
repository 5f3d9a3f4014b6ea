// The layer-normalised LSTM layer (Ba et al. 2016; ModelConfig::layer_norm), the other half of
// lstm_layer.hpp's layer_forward / layer_backward, which call these when LayerWeights::ln is set:
//   z = LN(x W_ih^T; g_ih, b_ih') + LN(h_{t-1} W_hh^T; g_hh, b_hh') + b_ih + b_hh   over 4H,
//   i, f, o = sigmoid, a = tanh,  s = f s_prev + i a,  h = o tanh(LN(s; g_c, b_c))   over H,
// LN(v; g, b) = (v - mean v) / sqrt(var v + 1e-5) g + b per row (PyTorch's LayerNorm, biased
// variance). A normalisation needs a whole row, so the team splits the B rows (each thread owns
// its rows for every unit and step: no barrier between steps); the GEMMs over all steps split
// as in lstm_layer.cpp. Recurrent dropout and zoneout act as there; peepholes are not supported
// (validate_config). The derivation: docs/derivation.md, "Layer norm".
#pragma once
#include <cstdint>

#include "cpu/lstm_layer.hpp"
#include "lstmgrad/model.hpp"

namespace lstmgrad::cpu {

template <class Real>
void ln_layer_forward(const LayerSaved<Real>& saved, const Real* x, const LayerWeights<Real>& w,
                      const TeamMember& tm, int64_t T, int64_t B, int64_t I, int64_t H);

template <class Real>
void ln_layer_backward(Real* dx, const LayerGrads<Real>& g, Real* dz, Real* dh_rec, Real* ds,
                       const Real* dh_out, const LayerSaved<Real>& saved, const Real* x,
                       const LayerWeights<Real>& w, const TeamMember& tm, int64_t T, int64_t B,
                       int64_t I, int64_t H);

}  // namespace lstmgrad::cpu
