// The CUDA engine's kernels and their launchers (src/cuda/kernels.cu). Every launcher runs on
// `stream` and checks the launch. Sizes as in lstm.hpp: T steps, B rows, H hidden, G = 4H gates,
// N = T*B positions, V classes.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace lstmgrad::cuda {

// One layer's recurrence, forward. gx [T,B,G]: x W_ih^T without bias (consumed by the steps
// path); hseq, sseq [T+1,B,H] with h0, s0 at step 0 on entry; gates [T,B,G] out: i, f, a, o.
struct RecurrentForward {
  float* gx;
  const float *U, *b_ih, *b_hh;  // [G,H], [G], [G]
  const float* unit;             // [3H] the cell's CellUnit weights p_i, p_f, p_o, or null
  float *hseq, *sseq, *gates;
  int T, B, H;
};
// One layer's recurrence, backward. dh_out [T,B,H] (may be null): dL/dh_t from above the layer;
// dz [T,B,G] out: the pre-activation gradients; dh0, ds0 [B,H] out: dL/dh_0, dL/ds_0. Scratch
// dhrec, ds [B,H] for the steps path.
struct RecurrentBackward {
  const float* dh_out;
  const float *U, *gates, *sseq;
  const float* unit;  // as in RecurrentForward
  float *dz, *dh0, *ds0, *dhrec, *ds;
  int T, B, H;
};

// The persistent kernel's plan for a layer: units per block and blocks, or 0 blocks where it
// cannot run (no cooperative launch, the slice of U too large, too few co-resident blocks).
struct PersistentPlan {
  int units = 0, blocks = 0;
  size_t smem_forward = 0, smem_backward = 0;
};
PersistentPlan plan_persistent(int B, int H);

void recurrent_forward_persistent(const RecurrentForward& a, const PersistentPlan& p,
                                  cudaStream_t stream);
void recurrent_backward_persistent(const RecurrentBackward& a, const PersistentPlan& p,
                                   cudaStream_t stream);
// The per-step path's element-wise halves (the GEMMs are the caller's).
void gates_forward_step(const RecurrentForward& a, int t, cudaStream_t stream);
void gates_backward_step(const RecurrentBackward& a, int t, cudaStream_t stream);
// du [3H] += the CellUnit weights' gradients summed over the T*B positions of dz [T,B,G] and
// the states sseq [T+1,B,H] (core::unit_grads, one thread per unit: a fixed order).
void unit_grads(float* du, const float* dz, const float* sseq, int64_t T, int64_t B, int64_t H,
                cudaStream_t stream);

void gather_rows(float* out, const float* table, const int64_t* ids, int64_t N, int64_t X,
                 cudaStream_t stream);
void scatter_add_rows(float* table, const float* rows, const int64_t* ids, int64_t N, int64_t X,
                      cudaStream_t stream);
// mask[k] = cpu::dropout_entry(base, k, p, keep), k < n.
void dropout_mask(float* mask, int64_t n, double p, uint64_t base, cudaStream_t stream);
void multiply(float* y, const float* x, const float* m, int64_t n, cudaStream_t stream);
void fill(float* p, float v, int64_t n, cudaStream_t stream);
void broadcast_rows(float* out, const float* row, int64_t N, int64_t V, cudaStream_t stream);
// Softmax of each row of z [N,V] in place (z becomes p); row_loss[r] = the cross-entropy with the
// class y[r] or the distribution yp[r] (both null: no targets, loss 0).
void softmax_xent(float* z, const int64_t* y, const float* yp, float* row_loss, int64_t N,
                  int64_t V, cudaStream_t stream);
// dz = scale (p - y) (in place where dz == p).
void softmax_xent_grad(float* dz, const float* p, const int64_t* y, const float* yp, float scale,
                       int64_t N, int64_t V, cudaStream_t stream);

// The optimizer step (see LanguageModel::sgd_step): the squared norm into norm2 (one double on
// the device, summed in a fixed order), scale = clip_factor(sqrt(norm2), clip) as a float.
void grad_norm(const float* g, int64_t n, double* partials, double* norm2, float* scale,
               double clip, cudaStream_t stream);
void sgd_update(float* p, float* g, int64_t n, float lr, const float* scale, cudaStream_t stream);
void adam_update(float* p, float* g, float* m, float* v, int64_t n, float step, float b1, float b2,
                 float bc2, float eps, const float* scale, cudaStream_t stream);
constexpr int kNormBlocks = 512;

}  // namespace lstmgrad::cuda
