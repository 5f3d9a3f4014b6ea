// lstmgrad: the LSTM language model on the CPU: embedding or dense input -> L-layer LSTM stack
// -> identity or linear readout -> softmax cross-entropy, forward and backward through time.
//
// Performance shape (docs/design.md): the input projection of all T steps is one GEMM before the
// time loop; each step is one GEMM for the four gates (h_prev U^T) and one fused element-wise
// pass; backward is one fused pass and one GEMM per step, and the weight gradients are one large
// GEMM each after the loop. Activations live in one arena sized for (T, B); nothing is allocated
// inside the loop, and the arena only grows when a larger batch arrives.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "lstmgrad/batch.hpp"
#include "lstmgrad/model.hpp"
#include "lstmgrad/precision.hpp"
#include "lstmgrad/regularize.hpp"

namespace lstmgrad {

// Told during LanguageModel::backward which part of the gradient is final, so that a caller can
// start sending it (data-parallel training: docs/scaling.md) while the rest is computed. Both
// run on the thread that called backward, while the engine's other threads work on.
class GradientListener {
 public:
  virtual ~GradientListener() = default;
  // grad[from, grad.size()) holds its final value for this backward. Called with decreasing
  // `from`: after the readout (its tensors; with tied weights its bias alone), then after each
  // layer from the top down (the layer's tensors, the ones after them already told). The
  // embedding's gradient is final when backward returns.
  virtual void final_from(size_t from) = 0;
  // Between the time steps of the backward: a moment for the caller's own work (keep it short:
  // the other threads may wait for this one at the next step).
  virtual void poll() = 0;
};

template <class Real>
class LanguageModel {
 public:
  explicit LanguageModel(const ModelConfig& cfg);
  ~LanguageModel();
  LanguageModel(LanguageModel&&) noexcept;
  LanguageModel& operator=(LanguageModel&&) noexcept;

  // The threads of forward and backward (the engine's own team; the BLAS runs one thread inside
  // it), in two parts. `shares`: how the work is split (n >= 1: n ways; 0, the default: up to
  // omp_get_max_threads(), fewer where the shapes are too small to share). float32 results
  // depend on the shares alone; float64 results on neither. `running`: the threads that run the
  // shares (n >= 1: that many, at most one per share; 0, the default: chosen by measuring, so
  // that a machine busy with other work gets fewer threads than shares and each per-step barrier
  // does not wait for a thread that is off its core). set_threads(n) is set_team(n, n).
  void set_team(int shares, int running);
  void set_threads(int n);
  int threads() const;

  // The GEMMs' operands for the calls that follow (lstmgrad/precision.hpp): bf16 rounds them in
  // the LSTM stack and in the fused readout (float32, linear readout, class targets) and sums in
  // float32; everything else stays float32 (the readout over soft targets too). Throws
  // InputError for bf16 in float64 and on a CPU without AVX512_BF16. Layer norm and the
  // projection run it too (the row-split layer, src/cpu/row_layer.cpp).
  void set_precision(Precision p);
  Precision precision() const;

  const ModelConfig& config() const;

  // Non-recurrent dropout (Zaremba et al. 2014) for the forward calls that follow: on the input
  // of layer 0, between layers, and before the readout, never on the recurrent h and s. The masks
  // are a pure function of (seed, layer, position): give each training step its own seed, and
  // p = 0 (the default) for evaluation.
  void set_dropout(double p, uint64_t seed);
  // The batches that follow are streams [first, first + B) of a batch of `total` streams (one
  // process's shard in data-parallel training): the dropout masks are the whole batch's at those
  // streams, so that they do not depend on how the batch is split. total = 0: the batch is whole.
  void set_stream_shard(int64_t first, int64_t total);

  // AWD-LSTM's regularisers (lstmgrad/regularize.hpp) for the forward calls that follow: each
  // forward draws its masks as draw_masks(r, seed, this batch's B and stream shard) does (a pure
  // function of the seed: give each update its own, and the same seed for the same masks). The
  // locked dropouts (dropout_in/hid/out) and set_dropout's are exclusive (InputError at forward).
  // forward() then returns the objective CE + AR + TAR; cross_entropy() the CE alone. infer()
  // applies none of them. A Regularization of zeros turns them off.
  void set_regularization(const Regularization& r, uint64_t seed);
  // Explicit masks (e.g. drawn by PyTorch) instead of drawn ones, for the forwards that follow
  // until set_regularization is called again; the AR and TAR rates stay set_regularization's.
  // Their sizes must fit the model and the batch (std::invalid_argument at forward).
  void set_masks(const Masks<Real>& m);
  // The cross-entropy part of the last forward's objective (the same as its return value when no
  // AR or TAR applies).
  double cross_entropy() const;

  // Runs the model over `batch` with parameters `params` (flat, parameter_layout order, size
  // parameter_count) and saves what backward needs. Returns the loss combined by `red`, or 0 when
  // the batch has no targets (then only probs(), h_n() and s_n() are meaningful). The batch must
  // be valid for the model (validate_batch; checked by assertions in debug builds).
  double forward(std::span<const Real> params, const Batch<Real>& batch, Reduction red);

  // Inference: runs the model as forward does and gives the same loss, probs(), h_n() and s_n()
  // (the same bits, for any team), but keeps nothing for backward, in less memory: no gates or
  // cell states of past steps, one layer's gates at a time. Dropout does not apply (evaluation),
  // and backward() after it throws std::logic_error.
  double infer(std::span<const Real> params, const Batch<Real>& batch, Reduction red);

  // Backward of the last forward: the same params and batch (the model keeps pointers into
  // neither, but its saved activations are theirs). Accumulates (+=) the gradient of the loss
  // into `grad` (flat, parameter_layout order; the caller zeroes it; must not alias params).
  // Optional outputs, overwritten: dinput [T,B,X] (dense input only), dh0 and ds0 [L,B,H].
  void backward(std::span<Real> grad, std::span<const Real> params, const Batch<Real>& batch,
                Real* dinput = nullptr, Real* dh0 = nullptr, Real* ds0 = nullptr);
  // The listener told during the backward calls that follow (nullptr: none, the default). The
  // caller keeps it alive while it is set.
  void set_gradient_listener(GradientListener* listener);

  // After backward: the sum of squares of the readout's gradient (decoder.weight and
  // decoder.bias) as it stands in `grad` after that backward, where backward could take it while
  // the values were in cache (the float32 fused readout); nullopt elsewhere. A gradient norm can
  // then skip the largest tensors (trainer: grad_norm).
  std::optional<double> readout_grad_sumsq() const;

  // [T,B,H] the top layer's output at every step of the last forward or infer (the readout's
  // input before any dropout: what a continuous cache at evaluation remembers).
  std::span<const Real> top_output() const;
  std::span<const Real> h_n() const;  // [L,B,H] final hidden state of the last forward
  std::span<const Real> s_n() const;  // [L,B,H] final cell state
  // [T,B,V] p = softmax of the last forward's logits. Available between forward and backward
  // (backward turns the same memory into dL/dlogits); throws std::logic_error after backward.
  std::span<const Real> probs() const;
  size_t arena_bytes() const;

  struct Impl;  // src/cpu/language_model.cpp

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace lstmgrad
