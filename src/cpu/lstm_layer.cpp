#include "cpu/lstm_layer.hpp"

#include <algorithm>

#include "core/gates.hpp"
#include "cpu/blas.hpp"

namespace lstmgrad::cpu {

template <class Real>
void layer_forward(const LayerSaved<Real>& saved, const Real* x, const LayerWeights<Real>& w,
                   int64_t T, int64_t B, int64_t I, int64_t H) {
  const int64_t G = 4 * H, N = T * B;
  Real* z = saved.gates;
  // z = x W_ih^T + b_ih + b_hh for all T*B positions at once (the hoisted input projection).
  for (int64_t k = 0; k < G; ++k) z[k] = w.b_ih[k] + w.b_hh[k];
  for (int64_t r = 1; r < N; ++r) std::copy(z, z + G, z + r * G);
  gemm(Tr::N, Tr::T, N, G, I, Real(1), x, I, w.W_ih, I, Real(1), z, G);
  for (int64_t t = 0; t < T; ++t) {
    Real* zt = z + t * B * G;
    const Real* h_prev = saved.hseq + t * B * H;
    gemm(Tr::N, Tr::T, B, G, H, Real(1), h_prev, H, w.W_hh, H, Real(1), zt, G);  // z += h U^T
    core::gates_forward(zt, saved.sseq + (t + 1) * B * H, saved.hseq + (t + 1) * B * H,
                        saved.sseq + t * B * H, B, H);
  }
}

template <class Real>
void layer_backward(Real* dx, const LayerGrads<Real>& g, Real* dz, Real* dh_rec, Real* ds,
                    const Real* dh_out, const LayerSaved<Real>& saved, const Real* x,
                    const LayerWeights<Real>& w, int64_t T, int64_t B, int64_t I, int64_t H) {
  const int64_t G = 4 * H, N = T * B;
  for (int64_t t = T - 1; t >= 0; --t) {
    Real* dzt = dz + t * B * G;
    core::gates_backward(dzt, ds, dh_out + t * B * H, dh_rec, saved.gates + t * B * G,
                         saved.sseq + (t + 1) * B * H, saved.sseq + t * B * H, B, H);
    // z_t = ... + h_{t-1} U^T: dh_{t-1} (recurrent part) = dz_t U.
    gemm(Tr::N, Tr::N, B, H, G, Real(1), dzt, G, w.W_hh, H, Real(0), dh_rec, H);
  }
  // Weight gradients over all steps at once: dW_ih += dz^T x, dW_hh += dz^T h_prev.
  gemm(Tr::T, Tr::N, G, I, N, Real(1), dz, G, x, I, Real(1), g.dW_ih, I);
  gemm(Tr::T, Tr::N, G, H, N, Real(1), dz, G, saved.hseq, H, Real(1), g.dW_hh, H);
  // z = ... + b_ih + b_hh: both biases receive the same gradient, the column sums of dz.
  for (int64_t r = 0; r < N; ++r) {
    const Real* dzr = dz + r * G;
    for (int64_t k = 0; k < G; ++k) g.db_ih[k] += dzr[k], g.db_hh[k] += dzr[k];
  }
  if (dx) gemm(Tr::N, Tr::N, N, I, G, Real(1), dz, G, w.W_ih, I, Real(0), dx, I);  // dx = dz W_ih
}

#define LSTMGRAD_INSTANTIATE(Real)                                                               \
  template void layer_forward<Real>(const LayerSaved<Real>&, const Real*,                        \
                                    const LayerWeights<Real>&, int64_t, int64_t, int64_t,        \
                                    int64_t);                                                    \
  template void layer_backward<Real>(                                                            \
      Real*, const LayerGrads<Real>&, Real*, Real*, Real*, const Real*, const LayerSaved<Real>&, \
      const Real*, const LayerWeights<Real>&, int64_t, int64_t, int64_t, int64_t);
LSTMGRAD_INSTANTIATE(float)
LSTMGRAD_INSTANTIATE(double)
#undef LSTMGRAD_INSTANTIATE

}  // namespace lstmgrad::cpu
