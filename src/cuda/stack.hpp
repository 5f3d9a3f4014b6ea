// The L-layer LSTM stack on the GPU, float32 (the CUDA counterpart of cpu/lstm_stack.hpp): owns
// the activations of the last forward on the device, grown for the largest T*B seen. Layer k's
// weights and gradients are device pointers (into the model's parameter and gradient vectors).
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "cuda/device.hpp"
#include "cuda/kernels.cuh"
#include "lstmgrad/cuda.hpp"

namespace lstmgrad::cuda {

struct LayerParams {
  const float *W_ih, *W_hh, *b_ih, *b_hh;  // [G,I], [G,H], [G], [G]
  const float* unit = nullptr;             // [3H] CellUnit weights (peepholes) or null
};
struct LayerGrads {  // accumulated (+=)
  float *dW_ih, *dW_hh, *db_ih, *db_hh;
  float* dunit = nullptr;  // [3H], with LayerParams::unit
};

class Stack {
 public:
  Stack(int64_t X, int64_t H, int64_t L, cudaStream_t stream, cublasHandle_t blas);

  void set_recurrence(Recurrence r) { rec_ = r; }
  bool persistent_used() const { return persistent_; }

  // Dropout between layers (site k+1 on layer k's output), masks as the CPU's; p = 0: off.
  void set_dropout(double p, uint64_t seed) { drop_p_ = p, drop_seed_ = seed; }

  // x [T,B,X] (device); h0, s0 [L,B,H] device or null (zeros). Saves what backward needs.
  void forward(const float* x, const LayerParams* w, const float* h0, const float* s0, int64_t T,
               int64_t B);
  const float* output() const { return hseq(L_ - 1) + B_ * H_; }           // [T,B,H]
  const float* h_last(int64_t k) const { return hseq(k) + T_ * B_ * H_; }  // [B,H]
  const float* s_last(int64_t k) const { return sseq(k) + T_ * B_ * H_; }  // [B,H]

  // Backward of the last forward (same x and w). dh_top [T,B,H]: dL/dh from above the stack.
  // Gradients accumulate into g. Optional device outputs, overwritten: dx [T,B,X], dh0, ds0
  // [L,B,H].
  void backward(float* dx, const LayerGrads* g, const float* dh_top, const float* x,
                const LayerParams* w, float* dh0, float* ds0);

 private:
  void reserve(int64_t T, int64_t B);
  float* hseq(int64_t k) const { return hseq_.get() + k * (T_ + 1) * B_ * H_; }
  float* sseq(int64_t k) const { return sseq_.get() + k * (T_ + 1) * B_ * H_; }
  float* gates(int64_t k) const { return gates_.get() + k * T_ * B_ * 4 * H_; }
  float* mask(int64_t k) const { return drop_.get() + 2 * k * T_ * B_ * H_; }  // boundary k
  float* dropped(int64_t k) const { return mask(k) + T_ * B_ * H_; }
  const float* layer_input(const float* x, int64_t k) const;

  int64_t X_, H_, L_;
  cudaStream_t stream_;
  cublasHandle_t blas_;
  Recurrence rec_ = Recurrence::automatic;
  bool persistent_ = false;
  PersistentPlan plan_;  // of the last forward (blocks 0: the steps path)
  int64_t plan_B_ = -1;  // the batch it was made for
  int64_t T_ = 0, B_ = 0, capN_ = 0, capB_ = 0;
  double drop_p_ = 0;
  uint64_t drop_seed_ = 0;
  bool dropped_ = false;
  DeviceBuffer<float> hseq_, sseq_, gates_;  // per layer [T+1,B,H], [T+1,B,H], [T,B,G]
  DeviceBuffer<float> gx_, dz_;              // [T,B,G] scratch (one layer at a time)
  DeviceBuffer<float> dh_a_, dh_b_;          // [T,B,H] the gradient flowing down
  DeviceBuffer<float> dhrec_, ds_;           // [B,H] the steps path's carries
  DeviceBuffer<float> ones_;                 // [T*B] for column sums
  DeviceBuffer<float> drop_;                 // per boundary: mask, dropped input [T,B,H] each
};

}  // namespace lstmgrad::cuda
