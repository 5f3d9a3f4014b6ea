// One LSTM layer scanned over T steps (PyTorch ATen's cell -> layer -> stack split).
// Sizes: T steps, B rows, I input width, H hidden width, G = 4H.
#pragma once
#include <cstdint>

namespace lstmgrad::cpu {

template <class Real>
struct LayerWeights {
  const Real* W_ih;  // [G,I] rows [V_i; V_f; V_a; V_o]
  const Real* W_hh;  // [G,H] rows [U_i; U_f; U_a; U_o]
  const Real* b_ih;  // [G]
  const Real* b_hh;  // [G]
};

template <class Real>
struct LayerGrads {  // accumulated (+=)
  Real* dW_ih;
  Real* dW_hh;
  Real* db_ih;
  Real* db_hh;
};

// What forward saves for backward.
template <class Real>
struct LayerSaved {
  Real* gates;  // [T,B,G] i, f, a, o after activation
  Real* hseq;   // [T+1,B,H] h0 (filled by the caller), then h_1 .. h_T
  Real* sseq;   // [T+1,B,H] s0 (filled by the caller), then s_1 .. s_T
};

// x [T,B,I] in.
template <class Real>
void layer_forward(const LayerSaved<Real>& saved, const Real* x, const LayerWeights<Real>& w,
                   int64_t T, int64_t B, int64_t I, int64_t H);

// dx [T,B,I] out (may be null: not needed); grads accumulated; dz [T,B,G] scratch;
// dh_rec [B,H], ds [B,H]: in, dL/dh_T and dL/ds_T from outside (usually zeros); out, dL/dh0 and
// dL/ds0. dh_out [T,B,H]: dL/dh_t from the readout or the layer above.
template <class Real>
void layer_backward(Real* dx, const LayerGrads<Real>& g, Real* dz, Real* dh_rec, Real* ds,
                    const Real* dh_out, const LayerSaved<Real>& saved, const Real* x,
                    const LayerWeights<Real>& w, int64_t T, int64_t B, int64_t I, int64_t H);

}  // namespace lstmgrad::cpu
