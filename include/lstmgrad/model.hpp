// lstmgrad: the language model's configuration and its packed parameters.
//
// Size letters: T time, B batch, X input width (dense input) or E embedding width, H hidden,
// L layers, V vocabulary (classes). For the identity readout V = H.
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace lstmgrad {

enum class InputKind { dense, embedding };  // float [T,B,X] vectors, or int64 [T,B] token ids
enum class Readout { identity, linear };    // p = softmax(h), or p = softmax(W h + c)

// How the per-position losses are combined:
//   mean       over all T*B positions (PyTorch's CrossEntropyLoss default),
//   sum        over all T*B positions,
//   batch_mean mean over B at each step, summed over T (Zaremba et al. 2014's scale).
enum class Reduction { mean, sum, batch_mean };

// Where block k starts in a state of B rows made of blocks [B, width(j)] one after another (the
// layers' h or s blocks: ModelConfig::h_offset, and the engines' stacks alike); at k = L, the
// state's size.
template <class Width>
int64_t block_offset(int64_t k, int64_t B, Width&& width) {
  int64_t o = 0;
  for (int64_t j = 0; j < k; ++j) o += B * width(j);
  return o;
}

struct ModelConfig {
  InputKind input = InputKind::embedding;
  Readout readout = Readout::linear;
  int64_t V = 0;  // vocabulary (embedding rows, readout classes); = H for the identity readout
  int64_t X = 0;  // input width of layer 0: dense width, or embedding width E
  // hidden width of every layer; with `hidden`, of the top layer; with `proj`, the projection's
  // width P. Always the width of the top layer's output h, which the readout reads.
  int64_t H = 0;
  int64_t L = 1;  // number of layers
  // The cell's variant. Peepholes (Gers and Schmidhuber 2000): i and f also see s_prev, o sees s,
  // each through a diagonal weight (one tensor rnn.weight_peephole_l{k} [3,H] per layer).
  bool peephole = false;
  // Tied embedding and readout (Inan et al. 2017; Press and Wolf 2017): the readout's weight is
  // encoder.weight [V,E] (no decoder.weight in the layout), so its gradient adds into the
  // embedding's. Needs the embedding input, the linear readout and H == E.
  bool tie_weights = false;
  // Zoneout (Krueger et al. 2016) on h and on s, every layer: in a training forward each unit
  // keeps its previous value with probability zoneout_h (h) or zoneout_s (s) at each step,
  // h_t = d h_{t-1} + (1 - d) o tanh(s~_t) (masks drawn per update); elsewhere (evaluation,
  // inference, `grad`) d is the rate itself, the expectation. In [0, 1); a property of the model
  // (model files store it).
  double zoneout_h = 0, zoneout_s = 0;
  bool zoneout() const { return zoneout_h > 0 || zoneout_s > 0; }
  // Layer-normalised LSTM (Ba et al. 2016): z = LN(x W_ih^T) + LN(h_{t-1} W_hh^T) + b over the 4H
  // pre-activations of a row, and h = o tanh(LN(s)) over its H states, each LN with its own gain
  // and bias (rnn.weight_ln_{ih,hh,cell}_l{k}, rnn.bias_ln_{ih,hh,cell}_l{k}).
  bool layer_norm = false;
  // Per-layer hidden widths (AWD-LSTM's 1150, 1150, 400): L entries, the last equal to H; empty:
  // every layer H. Layer k's weight_ih is [4 H_k, H_{k-1}] (H_{-1} = X), its weight_hh
  // [4 H_k, H_k]; states (h0, s0, h_n, s_n) are the layers' [B, H_k] blocks one after another.
  std::vector<int64_t> hidden{};
  // Projection (LSTMP, Sak et al. 2014; PyTorch's proj_size): every layer's output is
  // h = (o tanh s) W_hr^T, P = proj wide (rnn.weight_hr_l{k} [P, H_k]); the recurrent product,
  // the next layer and the readout read that h, so weight_hh is [4 H_k, P] and H is P. `hidden`
  // then holds every cell's width (L entries, uniform or not). 0: none.
  int64_t proj = 0;
  // Layer k's cell width H_k (s, the gates) and output width (h: P with proj, else H_k).
  int64_t width(int64_t k) const { return hidden.empty() ? H : hidden[static_cast<size_t>(k)]; }
  int64_t out_width(int64_t k) const { return proj > 0 ? proj : width(k); }
  // States are the layers' blocks one after another: h (h0, h_n) [B, out_width(k)] blocks, s
  // (s0, s_n) [B, H_k] blocks. Where layer k's block starts in a state of B rows; at k = L: the
  // state's size.
  int64_t h_offset(int64_t k, int64_t B) const {
    return block_offset(k, B, [this](int64_t j) { return out_width(j); });
  }
  int64_t s_offset(int64_t k, int64_t B) const {
    return block_offset(k, B, [this](int64_t j) { return width(j); });
  }
  int64_t max_width() const {  // the widest cell or output
    int64_t m = H > proj ? H : proj;
    for (int64_t w : hidden) m = w > m ? w : m;
    return m;
  }
};

// The shape of a state h (is_h: h0, h_n) or s (s0, s_n) of B rows: [L, B, W] when every layer's
// block is W wide (as PyTorch's h_n and c_n, a projection's h included), else flat [n], the
// layers' [B, W_k] blocks one after another (per-layer widths).
std::vector<int64_t> state_shape(const ModelConfig& cfg, int64_t B, bool is_h);

// The epsilon of every layer norm: (v - mean) / sqrt(var + eps), PyTorch's LayerNorm default.
inline constexpr double kLayerNormEps = 1e-5;

// One named tensor inside the flat parameter vector. Names follow PyTorch's word_language_model:
// encoder.weight [V,E], rnn.weight_ih_l{k} [4H,in], rnn.weight_hh_l{k} [4H,H],
// rnn.bias_ih_l{k} [4H], rnn.bias_hh_l{k} [4H], decoder.weight [V,H], decoder.bias [V].
// Rows of weight_ih/weight_hh are the gate blocks [V_i; V_f; V_a; V_o] (PyTorch's i, f, g, o).
// With peepholes, after each layer's biases: rnn.weight_peephole_l{k} [3,H], rows p_i, p_f, p_o
// (PyTorch's nn.LSTM has none; the name follows its pattern). With a projection, after the
// biases: rnn.weight_hr_l{k} [P,H_k] (PyTorch's place and name). With layer norm, then:
// rnn.weight_ln_ih_l{k} [4H], rnn.bias_ln_ih_l{k} [4H], rnn.weight_ln_hh_l{k} [4H],
// rnn.bias_ln_hh_l{k} [4H], rnn.weight_ln_cell_l{k} [H], rnn.bias_ln_cell_l{k} [H], one after
// another (18H values from ParameterOffsets::Layer::layer_norm).
struct ParamInfo {
  std::string name;
  std::vector<int64_t> shape;
  size_t offset = 0;  // into the flat vector
  size_t size = 0;    // product of shape
};

// The layout of every parameter of `cfg`, in a fixed order, packed without gaps.
std::vector<ParamInfo> parameter_layout(const ModelConfig& cfg);
// Total number of scalars in that layout.
size_t parameter_count(const ModelConfig& cfg);

// Where each tensor starts in the flat vector, looked up by name in parameter_layout (the one
// place that orders them): code reaches a tensor through these, never by its position in a list.
struct ParameterOffsets {
  struct Layer {
    size_t weight_ih, weight_hh, bias_ih, bias_hh;  // rnn.{weight,bias}_{ih,hh}_l{k}
    std::optional<size_t> weight_peephole;          // rnn.weight_peephole_l{k}, peepholes only
    std::optional<size_t> weight_hr;                // rnn.weight_hr_l{k}, projection only
    std::optional<size_t>
        layer_norm;  // rnn.weight_ln_ih_l{k} and the five after it, layer norm only
  };
  std::optional<size_t> encoder_weight;  // [V,X], embedding input only
  std::vector<Layer> layers;             // L entries
  // [V,H], linear readout only; with tie_weights the same offset as encoder_weight (the readout
  // reads, and its gradient adds into, the embedding table)
  std::optional<size_t> decoder_weight;
  std::optional<size_t> decoder_bias;  // [V], linear readout only
};
ParameterOffsets parameter_offsets(const ModelConfig& cfg);

// Every layer's tensors inside a flat vector of parameters or gradients at `base`, as an engine's
// per-layer view: View{weight_ih, weight_hh, bias_ih, bias_hh, weight_peephole (or null)}.
template <class View, class Ptr>
std::vector<View> layer_views(const ParameterOffsets& o, Ptr base) {
  std::vector<View> out;
  for (const ParameterOffsets::Layer& l : o.layers)
    out.push_back({base + l.weight_ih, base + l.weight_hh, base + l.bias_ih, base + l.bias_hh,
                   l.weight_peephole ? base + *l.weight_peephole : nullptr});
  return out;
}

// Checks that sizes are positive, within limits (V, X, H <= 2^31, L <= 2^16, at most 2^48
// parameters: the layout's arithmetic then fits 64 bits) and consistent (identity readout needs
// V == H; tie_weights needs the embedding input, the linear readout and H == X); throws
// InputError. It allocates nothing.
void validate_config(const ModelConfig& cfg);
std::string to_string(InputKind k);
std::string to_string(Readout r);
std::string to_string(Reduction r);
Reduction parse_reduction(const std::string& s);

}  // namespace lstmgrad
