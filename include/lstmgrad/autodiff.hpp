// lstmgrad: a small reverse-mode automatic differentiation tape in float64, and the LSTM language
// model written on it.
//
// This is the project's stand-in for the handout's Theano: an independent way to get gradients
// that knows nothing of the hand-derived backpropagation through time. The tape records every
// operation in creation order (which is a topological order of the graph); backward() walks it in
// reverse and each operation adds its contribution to its inputs' gradients (the chain rule, with
// gradients summed where a value is used more than once).
//
// Tensors are 2-D, row-major, double. A scalar is 1x1, a row vector 1xn. Every operation checks
// its shapes and throws std::invalid_argument naming the operation and the shapes.
//
// Size letters (tape_lm): T time, B batch, X input width, H hidden, L layers, V classes.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "lstmgrad/batch.hpp"
#include "lstmgrad/model.hpp"
#include "lstmgrad/regularize.hpp"

namespace lstmgrad::ad {

struct Tensor {
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<double> v;  // [rows, cols] row-major

  Tensor() = default;
  Tensor(int64_t r, int64_t c);                              // zeros
  Tensor(int64_t r, int64_t c, std::vector<double> values);  // values.size() must be r*c
  static Tensor scalar(double x) { return Tensor(1, 1, {x}); }

  double& operator()(int64_t r, int64_t c) { return v[static_cast<size_t>(r * cols + c)]; }
  double operator()(int64_t r, int64_t c) const { return v[static_cast<size_t>(r * cols + c)]; }
  size_t size() const { return v.size(); }
};

// A handle to one node of a Tape. Only meaningful for the tape that made it.
struct Var {
  int id = -1;
};

class Tape {
 public:
  // Sources. A leaf's gradient is computed; a constant's is not (it stays zero) and operations on
  // constants only are not differentiated at all.
  Var leaf(Tensor t);
  Var constant(Tensor t);

  // Linear algebra. add/sub/mul take b of a's shape, or b of shape [1, a.cols] which is broadcast
  // over a's rows (a bias); the broadcast b's gradient is then the column sums.
  Var matmul(Var a, Var b);    // [m,k] x [k,n] -> [m,n]
  Var transpose(Var a);        // [m,n] -> [n,m]
  Var add(Var a, Var b);       // a + b
  Var sub(Var a, Var b);       // a - b
  Var mul(Var a, Var b);       // a * b element-wise
  Var scale(Var a, double c);  // c a

  // Element-wise and reductions.
  Var sigmoid(Var a);  // 1 / (1 + exp(-a))
  Var tanh(Var a);
  Var log(Var a);  // natural log; a > 0 expected (log 0 = -inf, as in IEEE arithmetic)
  Var rsqrt(Var a, double eps);  // 1 / sqrt(a + eps); a + eps > 0 expected (layer norm's 1/sigma)
  Var softmax(Var a);            // row-wise: each row of the result sums to 1
  Var sum(Var a);                // -> 1x1, the sum of all entries

  // Indexing.
  Var rows(Var a, int64_t begin, int64_t count);     // a[begin : begin+count, :]
  Var gather_rows(Var a, std::vector<int64_t> ids);  // out[r] = a[ids[r]]; repeats accumulate
  Var at(Var a, int64_t r, int64_t c);               // 1x1 holding a[r, c]
  Var concat_rows(const std::vector<Var>& parts);    // parts stacked top to bottom, same cols

  const Tensor& value(Var x) const;

  // Reverse accumulation from `y` (must be 1x1), seeded with dy/dy = 1. Afterwards grad(x) is
  // dy/dx for every node x (zeros where y does not depend on x, and for constants). Calling it
  // again (after more operations, or from another y) recomputes every gradient from zero.
  void backward(Var y);
  const Tensor& grad(Var x) const;  // throws std::logic_error before backward()

  size_t size() const { return nodes_.size(); }  // number of recorded nodes

 private:
  enum class Op {
    leaf,
    constant,
    matmul,
    transpose,
    add,
    sub,
    mul,
    scale,
    sigmoid,
    tanh,
    log,
    rsqrt,
    softmax,
    sum,
    rows,
    gather_rows,
    at,
    concat_rows
  };
  struct Node {
    Op op = Op::leaf;
    Tensor value;
    Tensor grad;               // allocated by backward()
    bool needs_grad = false;   // a leaf, or depends on one
    int a = -1, b = -1;        // inputs (b = -1 for unary operations)
    double c = 0;              // scale factor
    int64_t r = 0, col = 0;    // rows: begin; at: (r, col)
    std::vector<int64_t> ids;  // gather_rows
    std::vector<int> parts;    // concat_rows
  };

  const Node& node(Var x, const char* op) const;  // checks that x belongs to this tape
  Var push(Node n);
  // A node f(a) applied entry by entry (scale, sigmoid, tanh, log); defined in tape.cpp.
  template <class F>
  Var elementwise(Var a, Op op, const char* name, F f, double c = 0);
  // a (op) b with b broadcast over rows (check_broadcast): add, sub, mul; defined in tape.cpp.
  template <class F>
  Var binary(Var a, Var b, Op op, const char* name, F f);
  void backward_node(const Node& n);  // adds n's contribution to its inputs' gradients

  std::vector<Node> nodes_;
  bool have_grads_ = false;
};

// ---------------------------------------------------------------------------------------------
// The LSTM language model (docs/design.md, "The model"), differentiated by the tape only.

struct TapeLmResult {
  double loss = 0;
  double ce = 0;               // the cross-entropy part of loss (= loss without regularisers)
  std::vector<double> grad;    // d loss / d params, flat, in parameter_layout(cfg) order
  std::vector<double> h_n;     // [L,B,H] the last step's hidden state per layer
  std::vector<double> s_n;     // [L,B,H] the last step's cell state per layer
  std::vector<double> dh0;     // [L,B,H] d loss / d h0
  std::vector<double> ds0;     // [L,B,H] d loss / d s0
  std::vector<double> dinput;  // [T,B,X] d loss / d dense input; empty for token input
};

// Forward through the whole batch on a fresh tape, then backward from the loss. `params` is flat
// in parameter_layout(cfg) order. Throws std::invalid_argument when sizes do not match.
TapeLmResult tape_lm(const ModelConfig& cfg, const std::vector<double>& params,
                     const Batch<double>& batch, Reduction red);

// The same with AWD-LSTM's regularisers (lstmgrad/regularize.hpp): the masks as given (constants
// on the tape; an empty vector: none at that site) and the AR and TAR rates. loss is then the
// objective CE + AR + TAR, ce the cross-entropy alone.
struct TapeRegularization {
  const Masks<double>* masks = nullptr;
  double ar = 0, tar = 0;
};
TapeLmResult tape_lm(const ModelConfig& cfg, const std::vector<double>& params,
                     const Batch<double>& batch, Reduction red, const TapeRegularization& reg);

}  // namespace lstmgrad::ad
