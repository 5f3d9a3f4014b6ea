// lstmgrad: the LSTM language model on the CPU: embedding or dense input -> L-layer LSTM stack
// -> identity or linear readout -> softmax cross-entropy, forward and backward through time.
//
// Performance shape (DESIGN.md): the input projection of all T steps is one GEMM before the time
// loop; each step is one GEMM for the four gates (h_prev U^T) and one fused element-wise pass;
// backward is one fused pass and one GEMM per step, and the weight gradients are one large GEMM
// each after the loop. Activations live in one arena sized for (T, B); nothing is allocated
// inside the loop, and the arena only grows when a larger batch arrives.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "lstmgrad/batch.hpp"
#include "lstmgrad/model.hpp"

namespace lstmgrad {

namespace cpu {
template <class Real>
class LstmStack;     // src/cpu/lstm_stack.hpp
class VocabReadout;  // src/cpu/vocab_readout.hpp
}  // namespace cpu

template <class Real>
class LanguageModel {
 public:
  explicit LanguageModel(const ModelConfig& cfg);
  ~LanguageModel();
  LanguageModel(LanguageModel&&) noexcept;
  LanguageModel& operator=(LanguageModel&&) noexcept;

  // Threads for forward and backward (the engine's own team; the BLAS runs one thread inside
  // it). 0, the default: up to omp_get_max_threads(), fewer where the shapes are too small to
  // share. float64 results are bit-identical for every thread count.
  void set_threads(int n);
  int threads() const;

  const ModelConfig& config() const { return cfg_; }

  // Non-recurrent dropout (Zaremba et al. 2014) for the forward calls that follow: on the input
  // of layer 0, between layers, and before the readout, never on the recurrent h and s. The masks
  // are a pure function of (seed, layer, position): give each training step its own seed, and
  // p = 0 (the default) for evaluation.
  void set_dropout(double p, uint64_t seed);

  // Runs the model over `batch` with parameters `params` (flat, parameter_layout order) and saves
  // what backward needs. Returns the loss combined by `red`, or 0 when the batch has no targets
  // (then only probs(), h_n() and s_n() are meaningful). The batch is assumed validated.
  double forward(std::span<const Real> params, const Batch<Real>& batch, Reduction red);

  // Backward of the last forward (same params and batch). Accumulates (+=) the gradient of the
  // loss into `grad` (flat, parameter_layout order; the caller zeroes it). Optional outputs,
  // overwritten: dinput [T,B,X] (dense input only), dh0 and ds0 [L,B,H].
  void backward(std::span<Real> grad, std::span<const Real> params, const Batch<Real>& batch,
                Real* dinput = nullptr, Real* dh0 = nullptr, Real* ds0 = nullptr);

  // After backward: the sum of squares of the readout's gradient (decoder.weight and
  // decoder.bias, the last two tensors of the layout) as it stands in `grad` after that backward,
  // where backward could take it while the values were in cache (the float32 fused readout);
  // nullopt elsewhere. A gradient norm can then skip the largest tensors (trainer: grad_norm).
  std::optional<double> readout_grad_sumsq() const;

  std::span<const Real> h_n() const { return h_n_; }  // [L,B,H] final hidden state
  std::span<const Real> s_n() const { return s_n_; }  // [L,B,H] final cell state
  std::span<const Real> probs() const;                // [T,B,V] p of the last forward
  size_t arena_bytes() const;

 private:
  void reserve(int64_t T, int64_t B);
  bool fuses_readout(const Batch<Real>& batch) const;

  ModelConfig cfg_;
  std::vector<ParamInfo> layout_;
  int64_t T_ = 0, B_ = 0;        // shape of the last forward
  int64_t capT_ = 0, capB_ = 0;  // shape the arena is sized for (T*B positions, B rows)
  Reduction red_ = Reduction::mean;
  int threads_ = 0;
  std::unique_ptr<cpu::LstmStack<Real>> stack_;  // the layers' activations and thread team
  // float32, linear readout, class targets, AVX-512: the fused readout (vocab_fused_ says the last
  // forward used it; probs() then converts its logits into probs_ on demand).
  std::unique_ptr<cpu::VocabReadout> vocab_;
  bool vocab_fused_ = false;
  bool readout_sumsq_ = false;  // the last backward took the fused readout's grad_sumsq
  mutable std::vector<Real> probs_;  // [T,B,V] logits, then p, then dL/dlogits (sized on use)
  // The BLAS readout (linear): [ceil(T*B/16),V] per 16-row block, the column sums of p - y
  // (sized on use, like probs_; the fused readout needs neither).
  std::vector<Real> colsum_;
  std::vector<Real> arena_;       // the buffers below, carved from one allocation
  std::vector<Real> h_n_, s_n_;   // [L,B,H]
  std::vector<double> row_loss_;  // [T*B] the loss of each position (summed in order)
  double drop_p_ = 0;
  uint64_t drop_seed_ = 0;
  bool dropped_ = false;  // whether the last forward used dropout
  // With dropout: input mask [T,B,X], dropped input [T,B,X], top mask [T,B,H], dropped top
  // [T,B,H], dL/d(top) [T,B,H]. Grown on demand, never inside the time loop.
  std::vector<Real> drop_;
  bool readout_dropped_ = false;  // the top mask of the current forward is made
  const Real* readout_input();
  struct Buffers {
    Real* x0;   // [T,B,X] embedded input (embedding only)
    Real* dh;   // [T,B,H] dL/dh of the top layer (linear readout)
    Real* dx0;  // [T,B,X] dL/dx of the embedded input (embedding only)
  } buf_{};
};

}  // namespace lstmgrad
