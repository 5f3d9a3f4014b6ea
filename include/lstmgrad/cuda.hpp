// lstmgrad on an NVIDIA GPU: the language model of lstm.hpp in float32, with its parameters,
// gradients and carried state resident on the device. No CUDA type appears here; a build without
// the CUDA backend (-DLSTMGRAD_WITH_CUDA=OFF, or no toolkit found) still has these declarations,
// and available() says false, require() says why.
//
// Engine (src/cuda/, docs/design.md): cuBLAS for the hoisted input projection, the readout and
// every weight-gradient GEMM (TF32 off: float32 arithmetic throughout); the recurrence either as
// one persistent cooperative kernel per layer and direction, each block holding its units' slice
// of the recurrent weights U in shared memory for all T steps with one grid-wide barrier per step,
// or, where the slice does not fit or cooperative launch is missing, one cuBLAS GEMM and one fused
// gate kernel per step (the portable path). The element math of the cell is core/cell_math.hpp,
// the same definition the CPU reference uses.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "lstmgrad/batch.hpp"
#include "lstmgrad/model.hpp"

namespace lstmgrad::cuda {

// Whether this build has the CUDA backend and a usable CUDA GPU is present.
bool available();
// One line: the GPU in use ("NVIDIA H200, 132 SMs, compute 9.0, 139 GiB") or why there is none.
std::string describe();
// Throws InputError("<flag>: ...") with describe()'s reason when available() is false.
void require(const std::string& flag = "--device cuda");

// How the recurrent steps run (see the header comment). automatic: persistent where it fits.
enum class Recurrence { automatic, persistent, steps };
Recurrence parse_recurrence(const std::string& s);  // "auto", "persistent" or "steps"

class LanguageModel {
 public:
  explicit LanguageModel(const ModelConfig& cfg);  // require()s a GPU
  ~LanguageModel();
  LanguageModel(LanguageModel&&) noexcept;
  LanguageModel& operator=(LanguageModel&&) noexcept;

  const ModelConfig& config() const;
  void set_recurrence(Recurrence r);
  // The path the last forward took for its layers: "persistent" or "steps".
  std::string recurrence_used() const;

  // Parameters (flat, parameter_layout order) host -> device and back.
  void set_params(std::span<const float> params);
  void get_params(std::span<float> params) const;
  // The gradient accumulated on the device (flat, parameter_layout order) -> host; and zeroing it.
  void get_grad(std::span<float> grad) const;
  void zero_grad();

  // Dropout exactly as LanguageModel<Real>::set_dropout: the same masks for the same (p, seed).
  void set_dropout(double p, uint64_t seed);

  // Forward with the device's parameters. The initial state is the batch's h0/s0 when given, else
  // the carried state after carry_state(), else zeros. Returns the loss reduced by `red` (0 when
  // the batch has no targets). The batch is assumed validated (validate_batch).
  double forward(const Batch<float>& batch, Reduction red);
  // Backward of the last forward: the gradient accumulates (+=) into the device gradient.
  // Optional host outputs, overwritten: dinput [T,B,X] (dense input), dh0, ds0 [L,B,H].
  void backward(float* dinput = nullptr, float* dh0 = nullptr, float* ds0 = nullptr);
  // The next forward starts from this forward's final state (kept on the device), unless its
  // batch carries h0/s0; reset_state() goes back to zeros.
  void carry_state();
  void reset_state();
  // A carried state from the host ([L,B,H] each; a resumed run's), as if carry_state() had run.
  void set_carried_state(std::span<const float> h, std::span<const float> s, int64_t B);
  // The carried state to the host (zeros where none is carried), [L,B,H] each.
  void get_carried_state(std::span<float> h, std::span<float> s) const;

  // The same interface as LanguageModel<float> (host parameters, uploaded at every call; the
  // gradient downloaded and added to `grad`): what `grad`, `check` and `sample` use.
  double forward(std::span<const float> params, const Batch<float>& batch, Reduction red);
  void backward(std::span<float> grad, std::span<const float> params, const Batch<float>& batch,
                float* dinput = nullptr, float* dh0 = nullptr, float* ds0 = nullptr);

  // One optimizer update on the device, what the trainer does on the CPU: the global gradient
  // norm, clip_factor(norm, clip), then SGD (p -= lr c g) or Adam (torch.optim.Adam defaults, the
  // moments on the device), and the gradient zeroed. Queued only: nothing comes back to the host.
  void sgd_step(double lr, double clip);
  void adam_step(double lr, double clip, int64_t step);  // step: the update's number, from 1
  double last_grad_norm() const;  // the norm the last step computed, before clipping (waits)
  void set_adam_moments(std::span<const float> m, std::span<const float> v);
  void get_adam_moments(std::span<float> m, std::span<float> v) const;

  std::span<const float> h_n() const;  // [L,B,H] final hidden state of the last forward
  std::span<const float> s_n() const;  // [L,B,H] final cell state
  // [T,B,V] p of the last forward (downloaded on call), as LanguageModel<Real>::probs(): available
  // between forward and backward, std::logic_error after backward.
  std::span<const float> probs() const;
  // Waits until the device has done all the work queued so far.
  void synchronize() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// Benchmarks of the CUDA engine (lstmgrad bench --device cuda): median milliseconds over `runs`
// after `warmup`, timed with CUDA events. mode: fwd (stack forward), fwdbwd (forward, backward
// with dL/dx, as cuDNN computes it), lm_step (embedding, stack, readout over `V` words, cross
// entropy, SGD). Inputs uniform random, rotated among three sets.
struct CudaBenchShape {
  int64_t T, B, X, H, L;
};
double bench_ms(const CudaBenchShape& s, const std::string& mode, int64_t V, int warmup, int runs,
                Recurrence rec);
// float32 cuBLAS GEMM C[M,N] = A[M,K] B^T (TF32 off): median ms.
double bench_gemm_ms(int64_t M, int64_t N, int64_t K, int warmup, int runs);

}  // namespace lstmgrad::cuda
