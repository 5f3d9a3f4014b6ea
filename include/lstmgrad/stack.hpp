// lstmgrad: the L-layer LSTM stack on the CPU on its own, without the language model's readout
// and loss: PyTorch's nn.LSTM (unidirectional, time-major or packed variable-length, no
// dropout) with a hand-derived backward. Bidirectional stacks and dropout between layers are
// built from it layer by layer (python/lstmgrad/torch.py does).
//
// Sizes: T time steps, B sequences, X input width, H hidden width, L layers, G = 4H.
// Equations (docs/derivation.md, "One step"), per layer k and step t, x the layer's input:
//   i, f, o = sigmoid(V x + U h_prev + b_ih + b_hh) (their rows), a = tanh(...),
//   s = i * a + f * s_prev, h = o * tanh(s); layer k+1 reads layer k's h_1 .. h_T.
// Outputs: y [T,B,H] the top layer's h_1 .. h_T; h_n, s_n [L,B,H] every layer's h_T, s_T.
// Backward takes dL/dy, dL/dh_n, dL/ds_n (the last two optional: zeros) and returns dL/dx,
// dL/dh0, dL/ds0 and the weights' gradients.
//
// Weights per layer are PyTorch's tensors (weight_ih_l{k} [G,in], weight_hh_l{k} [G,H],
// bias_ih_l{k}, bias_hh_l{k} [G], rows [V_i; V_f; V_a; V_o], PyTorch's i, f, g, o); in = X for
// layer 0 and H above. Float64 is the reference path; float32 takes the fast fused kernels.
//
// With a projection (nn.LSTM's proj_size P: LSTMP, Sak et al. 2014; P >= 1 here, where nn.LSTM
// and lstmgrad.torch.LSTM need P < H) every layer's h
// is (o * tanh(s)) W_hr^T, P wide, with weight_hr_l{k} [P,H]: y [T,B,P], h0 and h_n [L,B,P]
// (s0 and s_n stay [L,B,H]), weight_hh_l{k} [G,P], and layers above the first read P inputs.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "lstmgrad/model.hpp"
#include "lstmgrad/precision.hpp"

namespace lstmgrad {

// One layer's weights, read only. Biases may be null (no bias: nn.LSTM(bias=False)).
template <class Real>
struct LstmLayerWeights {
  const Real* weight_ih = nullptr;  // [G,in]
  const Real* weight_hh = nullptr;  // [G,H]
  const Real* bias_ih = nullptr;    // [G] or null
  const Real* bias_hh = nullptr;    // [G] or null
  const Real* weight_hr = nullptr;  // [P,H] with a projection, else null
};

// One layer's gradients, accumulated (+=; the caller zeroes them). A null bias gradient is not
// computed. Must not alias the weights.
template <class Real>
struct LstmLayerGrads {
  Real* weight_ih = nullptr;  // [G,in]
  Real* weight_hh = nullptr;  // [G,H]
  Real* bias_ih = nullptr;    // [G] or null
  Real* bias_hh = nullptr;    // [G] or null
  Real* weight_hr = nullptr;  // [P,H] with a projection, else null
};

// The flat layout of a stack's parameters, nn.LSTM's order and names: weight_ih_l0,
// weight_hh_l0, bias_ih_l0, bias_hh_l0[, weight_hr_l0], weight_ih_l1, ... (bias = false: the
// weights only; proj = P > 0: with the projections).
std::vector<ParamInfo> lstm_parameter_layout(int64_t X, int64_t H, int64_t L, bool bias = true,
                                             int64_t proj = 0);
// Every layer's tensors inside a flat vector in that layout (bias = true).
template <class Real>
std::vector<LstmLayerWeights<Real>> lstm_layer_weights(std::span<const Real> flat, int64_t X,
                                                       int64_t H, int64_t L, int64_t proj = 0);
template <class Real>
std::vector<LstmLayerGrads<Real>> lstm_layer_grads(std::span<Real> flat, int64_t X, int64_t H,
                                                   int64_t L, int64_t proj = 0);

template <class Real>
class Lstm {
 public:
  // Throws InputError for sizes out of range (X, H >= 1, L >= 1, the limits of validate_config;
  // proj: 0, none, or P >= 1).
  Lstm(int64_t X, int64_t H, int64_t L, int64_t proj = 0);
  ~Lstm();
  Lstm(Lstm&&) noexcept;
  Lstm& operator=(Lstm&&) noexcept;

  // The threads of forward and backward, as LanguageModel::set_team (lstm.hpp).
  void set_team(int shares, int running);
  void set_threads(int n);
  // The GEMMs' operands for the calls that follow, as LanguageModel::set_precision: bf16 in
  // float32 only, on a CPU with AVX512_BF16 (InputError otherwise).
  void set_precision(Precision p);

  int64_t input_size() const;
  int64_t hidden_size() const;
  int64_t num_layers() const;
  int64_t proj_size() const;    // P, 0 without a projection
  int64_t output_size() const;  // the width of y and h: P with a projection, else H

  // Dropout between layers, as nn.LSTM's dropout in training: layer k+1 reads layer k's output
  // times a mask (1/(1-p) with probability 1-p, else 0), never the recurrent h or s, and not the
  // top layer's output. The masks are lstmgrad's own (a pure function of seed, layer and
  // position, not torch's generator); p = 0, the default, turns it off. Throws
  // std::invalid_argument for p outside [0, 1).
  void set_dropout(double p, uint64_t seed);

  // x [T,B,X] read; w [L] read; h0, s0 [L,B,H] read, or null (zeros). Written: y [T,B,H] and
  // h_n, s_n [L,B,H] (each may be null: not wanted). Saves what backward needs; x and the
  // weights must stay unchanged and alive until that backward (the engine keeps no copy).
  // Throws std::invalid_argument for T, B < 1, a w of the wrong size or a null weight.
  void forward(const Real* x, std::span<const LstmLayerWeights<Real>> w, const Real* h0,
               const Real* s0, int64_t T, int64_t B, Real* y, Real* h_n, Real* s_n);

  // A batch of sequences of different lengths in PyTorch's PackedSequence layout: batch_sizes
  // [T] the rows of each step, non-increasing and >= 1 (sequences sorted longest first); x [N,X]
  // and y [N,H] hold step 0's rows, then step 1's, ... (N = the sum of batch_sizes; sequence b is
  // row b of every step it is active in). h0, s0, h_n, s_n [L,B,H] with B = batch_sizes[0];
  // each sequence's final state is its state at its own last step. Runs as one stack per run of
  // steps of equal batch size, no padding computed. Throws std::invalid_argument for bad
  // batch_sizes. Backward (below) then takes dy [N,H] and writes dx [N,X].
  void forward_packed(const Real* x, std::span<const LstmLayerWeights<Real>> w, const Real* h0,
                      const Real* s0, std::span<const int64_t> batch_sizes, Real* y, Real* h_n,
                      Real* s_n);

  // Backward of the last forward (the same x and w). dy [T,B,H] read (null: zeros); dh_n,
  // ds_n [L,B,H] read, or null (zeros). g [L] accumulated (+=). Written (each may be null: not
  // wanted): dx [T,B,X], dh0, ds0 [L,B,H]. May be called again for the same forward. After
  // forward_packed: dy [N,H], dx [N,X]. Throws std::logic_error before any forward.
  void backward(const Real* dy, const Real* dh_n, const Real* ds_n, const Real* x,
                std::span<const LstmLayerWeights<Real>> w, std::span<const LstmLayerGrads<Real>> g,
                Real* dx, Real* dh0, Real* ds0);

  int64_t steps() const;  // T of the last forward (0 before any)
  int64_t batch() const;  // B of the last forward (forward_packed: batch_sizes[0])
  int64_t rows() const;   // T*B of the last forward (forward_packed: N)

  struct Impl;  // src/cpu/stack.cpp

 private:
  std::unique_ptr<Impl> impl_;
};

// nn.LSTM(bidirectional=True): every layer runs two stacks of one layer, one reading each sequence
// forwards and one from its own last step backwards; the layer's output, [fwd | rev] per row
// (2H wide), is the next layer's input. Weights and states in nn.LSTM's order: w, g [2L] and
// h0, s0, h_n, s_n [2L,B,H] with layer k's forward direction at 2k and its reverse at 2k+1
// (weight_*_l{k}, weight_*_l{k}_reverse); layer k's input is X wide for k = 0, 2H above.
// y [T,B,2H] (or [N,2H] packed), dy alike. Each direction's h_n is its state after its last
// step (the reverse direction's: after step 0). The backward is the stacks' own, composed by
// hand: each layer's dL/dinput is the sum of its two directions'.
template <class Real>
class BidirectionalLstm {
 public:
  // InputError for bad sizes; proj as Lstm's (each direction's h is P wide, y [T,B,2P]).
  BidirectionalLstm(int64_t X, int64_t H, int64_t L, int64_t proj = 0);
  ~BidirectionalLstm();
  BidirectionalLstm(BidirectionalLstm&&) noexcept;
  BidirectionalLstm& operator=(BidirectionalLstm&&) noexcept;
  void set_team(int shares, int running);
  void set_threads(int n);
  void set_precision(Precision p);  // both directions

  // As Lstm::forward and Lstm::forward_packed, with the sizes above.
  void forward(const Real* x, std::span<const LstmLayerWeights<Real>> w, const Real* h0,
               const Real* s0, int64_t T, int64_t B, Real* y, Real* h_n, Real* s_n);
  void forward_packed(const Real* x, std::span<const LstmLayerWeights<Real>> w, const Real* h0,
                      const Real* s0, std::span<const int64_t> batch_sizes, Real* y, Real* h_n,
                      Real* s_n);
  // As Lstm::backward: dy read (null: zeros), g accumulated, dx, dh0, ds0 written (null: not
  // wanted). The engine keeps its own copies of every layer's input except x.
  void backward(const Real* dy, const Real* dh_n, const Real* ds_n, const Real* x,
                std::span<const LstmLayerWeights<Real>> w, std::span<const LstmLayerGrads<Real>> g,
                Real* dx, Real* dh0, Real* ds0);

  int64_t steps() const;  // T of the last forward (0 before any)
  int64_t batch() const;  // B of the last forward (forward_packed: batch_sizes[0])
  int64_t rows() const;   // T*B of the last forward (forward_packed: N)

  struct Impl;  // src/cpu/bidirectional.cpp

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace lstmgrad
