#include <algorithm>

#include "cpu/dropout.hpp"
#include "cuda/stack.hpp"

namespace lstmgrad::cuda {

Stack::Stack(int64_t X, int64_t H, int64_t L, cudaStream_t stream, cublasHandle_t blas)
    : X_(X), H_(H), L_(L), stream_(stream), blas_(blas) {}

void Stack::reserve(int64_t T, int64_t B) {
  T_ = T, B_ = B;
  const int64_t N = T * B, G = 4 * H_;
  if (N <= capN_ && B <= capB_) return;
  capN_ = std::max(N, capN_), capB_ = std::max(B, capB_);
  const size_t n = static_cast<size_t>(capN_), b = static_cast<size_t>(capB_);
  const size_t H = static_cast<size_t>(H_), L = static_cast<size_t>(L_);
  hseq_.grow(L * (n + b) * H), sseq_.grow(L * (n + b) * H);
  gates_.grow(L * n * 4 * H), gx_.grow(n * static_cast<size_t>(G)), dz_.grow(gx_.size());
  dh_a_.grow(n * H), dh_b_.grow(n * H), dhrec_.grow(b * H), ds_.grow(b * H);
  ones_.grow(n);
  fill(ones_.get(), 1.0f, static_cast<int64_t>(n), stream_);
}

const float* Stack::layer_input(const float* x, int64_t k) const {
  if (k == 0) return x;
  return dropped_ ? dropped(k - 1) : hseq(k - 1) + B_ * H_;
}

void Stack::forward(const float* x, const LayerParams* w, const float* h0, const float* s0,
                    int64_t T, int64_t B) {
  reserve(T, B);
  const int64_t N = T * B, G = 4 * H_, S = B * H_;
  dropped_ = drop_p_ > 0 && L_ > 1;
  if (dropped_) drop_.grow(static_cast<size_t>(2 * (L_ - 1) * N * H_));
  if (plan_B_ != B) {  // the occupancy query costs microseconds: once per batch size
    plan_ = plan_persistent(static_cast<int>(B), static_cast<int>(H_));
    plan_B_ = B;
  }
  const PersistentPlan plan = rec_ == Recurrence::steps ? PersistentPlan{} : plan_;
  if (rec_ == Recurrence::persistent && plan.blocks == 0)
    throw std::runtime_error("CUDA: the persistent recurrence cannot run this shape here");
  persistent_ = plan.blocks > 0;
  for (int64_t k = 0; k < L_; ++k) {
    const int64_t I = k == 0 ? X_ : H_;
    if (h0) {
      LSTMGRAD_CUDA(cudaMemcpyAsync(hseq(k), h0 + k * S, S * sizeof(float),
                                    cudaMemcpyDeviceToDevice, stream_));
    } else {
      LSTMGRAD_CUDA(cudaMemsetAsync(hseq(k), 0, S * sizeof(float), stream_));
    }
    if (s0) {
      LSTMGRAD_CUDA(cudaMemcpyAsync(sseq(k), s0 + k * S, S * sizeof(float),
                                    cudaMemcpyDeviceToDevice, stream_));
    } else {
      LSTMGRAD_CUDA(cudaMemsetAsync(sseq(k), 0, S * sizeof(float), stream_));
    }
    // The input projection of all T steps at once: gx = x W_ih^T.
    gemm(blas_, false, true, N, G, I, 1.0f, layer_input(x, k), I, w[k].W_ih, I, 0.0f, gx_.get(), G);
    RecurrentForward a{gx_.get(),
                       w[k].W_hh,
                       w[k].b_ih,
                       w[k].b_hh,
                       w[k].unit,
                       hseq(k),
                       sseq(k),
                       gates(k),
                       static_cast<int>(T),
                       static_cast<int>(B),
                       static_cast<int>(H_)};
    if (persistent_) {
      recurrent_forward_persistent(a, plan, stream_);
    } else {
      for (int t = 0; t < T; ++t) {  // gx_t += h_{t-1} U^T, then the cells
        gemm(blas_, false, true, B, G, H_, 1.0f, hseq(k) + t * S, H_, w[k].W_hh, H_, 1.0f,
             gx_.get() + t * B * G, G);
        gates_forward_step(a, t, stream_);
      }
    }
    if (dropped_ && k + 1 < L_) {
      dropout_mask(mask(k), N * H_, drop_p_,
                   cpu::dropout_base(drop_seed_, static_cast<uint64_t>(k + 1)), stream_);
      multiply(dropped(k), hseq(k) + S, mask(k), N * H_, stream_);
    }
  }
}

void Stack::backward(float* dx, const LayerGrads* g, const float* dh_top, const float* x,
                     const LayerParams* w, float* dh0, float* ds0) {
  const int64_t T = T_, B = B_, N = T * B, G = 4 * H_, S = B * H_;
  const PersistentPlan plan = plan_;
  const float* dh_out = dh_top;
  for (int64_t k = L_ - 1; k >= 0; --k) {
    const int64_t I = k == 0 ? X_ : H_;
    RecurrentBackward a{dh_out,
                        w[k].W_hh,
                        gates(k),
                        sseq(k),
                        w[k].unit,
                        dz_.get(),
                        dh0 ? dh0 + k * S : dhrec_.get(),
                        ds0 ? ds0 + k * S : ds_.get(),
                        dhrec_.get(),
                        ds_.get(),
                        static_cast<int>(T),
                        static_cast<int>(B),
                        static_cast<int>(H_)};
    if (persistent_) {
      recurrent_backward_persistent(a, plan, stream_);
    } else {
      LSTMGRAD_CUDA(cudaMemsetAsync(dhrec_.get(), 0, S * sizeof(float), stream_));
      LSTMGRAD_CUDA(cudaMemsetAsync(ds_.get(), 0, S * sizeof(float), stream_));
      for (int t = static_cast<int>(T) - 1; t >= 0; --t) {  // the cells, then dhrec = dz_t U
        gates_backward_step(a, t, stream_);
        gemm(blas_, false, false, B, H_, G, 1.0f, dz_.get() + t * B * G, G, w[k].W_hh, H_, 0.0f,
             dhrec_.get(), H_);
      }
      if (dh0)
        LSTMGRAD_CUDA(cudaMemcpyAsync(dh0 + k * S, dhrec_.get(), S * sizeof(float),
                                      cudaMemcpyDeviceToDevice, stream_));
      if (ds0)
        LSTMGRAD_CUDA(cudaMemcpyAsync(ds0 + k * S, ds_.get(), S * sizeof(float),
                                      cudaMemcpyDeviceToDevice, stream_));
    }
    // The weight gradients of all T steps at once.
    const float* in = layer_input(x, k);
    gemm(blas_, true, false, G, I, N, 1.0f, dz_.get(), G, in, I, 1.0f, g[k].dW_ih, I);
    gemm(blas_, true, false, G, H_, N, 1.0f, dz_.get(), G, hseq(k), H_, 1.0f, g[k].dW_hh, H_);
    column_sums(blas_, N, G, 1.0f, dz_.get(), ones_.get(), g[k].db_ih);
    column_sums(blas_, N, G, 1.0f, dz_.get(), ones_.get(), g[k].db_hh);
    if (w[k].unit) unit_grads(g[k].dunit, dz_.get(), sseq(k), T, B, H_, stream_);
    // dL/d(input) = dz W_ih: the layer below's dh_out, or dx.
    float* down = k == 0 ? dx : (dh_out == dh_a_.get() ? dh_b_.get() : dh_a_.get());
    if (down) {
      gemm(blas_, false, false, N, I, G, 1.0f, dz_.get(), G, w[k].W_ih, I, 0.0f, down, I);
      if (dropped_ && k > 0) multiply(down, down, mask(k - 1), N * H_, stream_);
    }
    dh_out = down;
  }
}

}  // namespace lstmgrad::cuda
