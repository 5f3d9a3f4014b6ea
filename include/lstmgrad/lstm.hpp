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
#include <span>
#include <vector>

#include "lstmgrad/batch.hpp"
#include "lstmgrad/model.hpp"

namespace lstmgrad {

template <class Real>
class LanguageModel {
 public:
  explicit LanguageModel(const ModelConfig& cfg);

  const ModelConfig& config() const { return cfg_; }

  // Runs the model over `batch` with parameters `params` (flat, parameter_layout order) and saves
  // what backward needs. Returns the loss combined by `red`, or 0 when the batch has no targets
  // (then only probs(), h_n() and s_n() are meaningful). The batch is assumed validated.
  double forward(std::span<const Real> params, const Batch<Real>& batch, Reduction red);

  // Backward of the last forward (same params and batch). Accumulates (+=) the gradient of the
  // loss into `grad` (flat, parameter_layout order; the caller zeroes it). Optional outputs,
  // overwritten: dinput [T,B,X] (dense input only), dh0 and ds0 [L,B,H].
  void backward(std::span<Real> grad, std::span<const Real> params, const Batch<Real>& batch,
                Real* dinput = nullptr, Real* dh0 = nullptr, Real* ds0 = nullptr);

  std::span<const Real> h_n() const { return h_n_; }  // [L,B,H] final hidden state
  std::span<const Real> s_n() const { return s_n_; }  // [L,B,H] final cell state
  std::span<const Real> probs() const;                // [T,B,V] p of the last forward
  size_t arena_bytes() const { return arena_.size() * sizeof(Real); }

 private:
  void reserve(int64_t T, int64_t B);

  ModelConfig cfg_;
  std::vector<ParamInfo> layout_;
  int64_t T_ = 0, B_ = 0;        // shape of the last forward
  int64_t capT_ = 0, capB_ = 0;  // shape the arena is sized for (T*B positions, B rows)
  Reduction red_ = Reduction::mean;
  std::vector<Real> arena_;      // every activation and scratch buffer, carved below
  std::vector<Real> h_n_, s_n_;  // [L,B,H]
  struct Buffers {
    Real* x0;                  // [T,B,X] embedded input (embedding only)
    std::vector<Real*> gates;  // per layer [T,B,4H]: pre-activations, then i, f, a, o
    std::vector<Real*> hseq;   // per layer [T+1,B,H]: h0, h_1 .. h_T
    std::vector<Real*> sseq;   // per layer [T+1,B,H]: s0, s_1 .. s_T
    Real* probs;               // [T,B,V] logits, then p, then dL/dlogits
    Real* dz;                  // [T,B,4H] pre-activation gradients of one layer
    Real* dh_a;                // [T,B,max(X,H)] gradient flowing down the stack (ping)
    Real* dh_b;                // [T,B,max(X,H)] (pong)
    Real* dh_rec;              // [B,H] dL/dh_{t-1} through the recurrence
    Real* ds;                  // [B,H] dL/ds carried through time
  } buf_{};
};

}  // namespace lstmgrad
