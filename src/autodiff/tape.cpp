// lstmgrad: the reverse-mode autodiff tape (see autodiff.hpp).
//
// Every operation has two halves below: the forward (in the method that records it) and the
// backward (in backward_node), which quotes the forward line it differentiates. With g = dy/dout
// the gradient flowing into an operation's output, each backward adds g * d out / d input to the
// input's gradient. Plain loops throughout: this is the reference, clarity beats speed.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <utility>

#include "lstmgrad/autodiff.hpp"

namespace lstmgrad::ad {

namespace {

// r*c, checked before anything is allocated.
size_t element_count(int64_t r, int64_t c) {
  if (r < 0 || c < 0)
    throw std::invalid_argument(fmt::format("Tensor: negative shape [{}x{}]", r, c));
  return static_cast<size_t>(r * c);
}

std::string shape(const Tensor& t) {
  return fmt::format("[{}x{}]", t.rows, t.cols);
}

[[noreturn]] void shape_error(const char* op, const std::string& what) {
  throw std::invalid_argument(fmt::format("Tape::{}: {}", op, what));
}

// add/sub/mul: b is a's shape, or [1, a.cols] broadcast over a's rows.
void check_broadcast(const char* op, const Tensor& a, const Tensor& b) {
  const bool same = a.rows == b.rows && a.cols == b.cols;
  const bool row = b.rows == 1 && b.cols == a.cols;
  if (!same && !row)
    shape_error(op, fmt::format("b must have a's shape or [1x{}], got a {} and b {}", a.cols,
                                shape(a), shape(b)));
}

// The row of b that meets row r of a (0 when b is a broadcast row).
int64_t brow(const Tensor& b, int64_t r) {
  return b.rows == 1 ? 0 : r;
}

double sigmoid_of(double x) {
  // Two forms so that exp never overflows.
  if (x >= 0) return 1.0 / (1.0 + std::exp(-x));
  const double e = std::exp(x);
  return e / (1.0 + e);
}

}  // namespace

Tensor::Tensor(int64_t r, int64_t c) : rows(r), cols(c), v(element_count(r, c), 0.0) {}

Tensor::Tensor(int64_t r, int64_t c, std::vector<double> values)
    : rows(r), cols(c), v(std::move(values)) {
  if (v.size() != element_count(r, c))
    throw std::invalid_argument(
        fmt::format("Tensor: shape [{}x{}] needs {} values, got {}", r, c, r * c, v.size()));
}

// ---------------------------------------------------------------------------------------------
// Recording (forward).

const Tape::Node& Tape::node(Var x, const char* op) const {
  if (x.id < 0 || static_cast<size_t>(x.id) >= nodes_.size())
    throw std::invalid_argument(fmt::format(
        "Tape::{}: Var {} is not a node of this tape ({} nodes)", op, x.id, nodes_.size()));
  return nodes_[static_cast<size_t>(x.id)];
}

Var Tape::push(Node n) {
  nodes_.push_back(std::move(n));
  have_grads_ = false;  // grads of the older nodes stay valid, but the new node has none
  return Var{static_cast<int>(nodes_.size() - 1)};
}

Var Tape::leaf(Tensor t) {
  Node n;
  n.op = Op::leaf;
  n.value = std::move(t);
  n.needs_grad = true;
  return push(std::move(n));
}

Var Tape::constant(Tensor t) {
  Node n;
  n.op = Op::constant;
  n.value = std::move(t);
  n.needs_grad = false;
  return push(std::move(n));
}

Var Tape::matmul(Var a, Var b) {
  const Tensor& A = node(a, "matmul").value;  // [m,k]
  const Tensor& B = node(b, "matmul").value;  // [k,n]
  if (A.cols != B.rows)
    shape_error("matmul", fmt::format("inner sizes differ: {} x {}", shape(A), shape(B)));
  Tensor C(A.rows, B.cols);  // [m,n]
  for (int64_t i = 0; i < A.rows; ++i)
    for (int64_t p = 0; p < A.cols; ++p)
      for (int64_t j = 0; j < B.cols; ++j) C(i, j) += A(i, p) * B(p, j);
  Node n;
  n.op = Op::matmul;
  n.value = std::move(C);
  n.a = a.id;
  n.b = b.id;
  n.needs_grad = node(a, "matmul").needs_grad || node(b, "matmul").needs_grad;
  return push(std::move(n));
}

Var Tape::transpose(Var a) {
  const Node& na = node(a, "transpose");
  Tensor C(na.value.cols, na.value.rows);
  for (int64_t i = 0; i < na.value.rows; ++i)
    for (int64_t j = 0; j < na.value.cols; ++j) C(j, i) = na.value(i, j);
  Node n;
  n.op = Op::transpose;
  n.value = std::move(C);
  n.a = a.id;
  n.needs_grad = na.needs_grad;
  return push(std::move(n));
}

// add, sub and mul share their recording; only the element formula differs.
template <class F>
Var Tape::binary(Var a, Var b, Op op, const char* name, F f) {
  const Node& na = node(a, name);
  const Node& nb = node(b, name);
  check_broadcast(name, na.value, nb.value);
  Tensor C = na.value;
  for (int64_t r = 0; r < C.rows; ++r)
    for (int64_t c = 0; c < C.cols; ++c) C(r, c) = f(C(r, c), nb.value(brow(nb.value, r), c));
  Node n;
  n.op = op;
  n.value = std::move(C);
  n.a = a.id;
  n.b = b.id;
  n.needs_grad = na.needs_grad || nb.needs_grad;
  return push(std::move(n));
}

Var Tape::add(Var a, Var b) {
  return binary(a, b, Op::add, "add", [](double x, double y) { return x + y; });
}

Var Tape::sub(Var a, Var b) {
  return binary(a, b, Op::sub, "sub", [](double x, double y) { return x - y; });
}

Var Tape::mul(Var a, Var b) {
  return binary(a, b, Op::mul, "mul", [](double x, double y) { return x * y; });
}

template <class F>
Var Tape::elementwise(Var a, Op op, const char* name, F f, double c) {
  const Node& na = node(a, name);
  Tensor C = na.value;
  for (double& x : C.v) x = f(x);
  Node n;
  n.op = op;
  n.value = std::move(C);
  n.a = a.id;
  n.c = c;
  n.needs_grad = na.needs_grad;
  return push(std::move(n));
}

Var Tape::scale(Var a, double c) {
  return elementwise(
      a, Op::scale, "scale", [c](double x) { return x * c; }, c);
}

Var Tape::sigmoid(Var a) {
  return elementwise(a, Op::sigmoid, "sigmoid", [](double x) { return sigmoid_of(x); });
}

Var Tape::tanh(Var a) {
  return elementwise(a, Op::tanh, "tanh", [](double x) { return std::tanh(x); });
}

Var Tape::log(Var a) {
  return elementwise(a, Op::log, "log", [](double x) { return std::log(x); });
}

Var Tape::rsqrt(Var a, double eps) {
  return elementwise(
      a, Op::rsqrt, "rsqrt", [eps](double x) { return 1.0 / std::sqrt(x + eps); }, eps);
}

Var Tape::softmax(Var a) {
  const Node& na = node(a, "softmax");
  if (na.value.cols < 1) shape_error("softmax", fmt::format("no columns in {}", shape(na.value)));
  Tensor C = na.value;
  for (int64_t r = 0; r < C.rows; ++r) {
    // Subtracting the row's max leaves the result unchanged and keeps exp from overflowing.
    double mx = C(r, 0);
    for (int64_t c = 1; c < C.cols; ++c) mx = std::max(mx, C(r, c));
    double z = 0;
    for (int64_t c = 0; c < C.cols; ++c) z += (C(r, c) = std::exp(C(r, c) - mx));
    for (int64_t c = 0; c < C.cols; ++c) C(r, c) /= z;
  }
  Node n;
  n.op = Op::softmax;
  n.value = std::move(C);
  n.a = a.id;
  n.needs_grad = na.needs_grad;
  return push(std::move(n));
}

Var Tape::sum(Var a) {
  const Node& na = node(a, "sum");
  double s = 0;
  for (double x : na.value.v) s += x;
  Node n;
  n.op = Op::sum;
  n.value = Tensor::scalar(s);
  n.a = a.id;
  n.needs_grad = na.needs_grad;
  return push(std::move(n));
}

Var Tape::rows(Var a, int64_t begin, int64_t count) {
  const Node& na = node(a, "rows");
  if (begin < 0 || count < 0 || begin + count > na.value.rows)
    shape_error("rows", fmt::format("rows [{}, {}) out of range for {}", begin, begin + count,
                                    shape(na.value)));
  Tensor C(count, na.value.cols);
  for (int64_t r = 0; r < count; ++r)
    for (int64_t c = 0; c < C.cols; ++c) C(r, c) = na.value(begin + r, c);
  Node n;
  n.op = Op::rows;
  n.value = std::move(C);
  n.a = a.id;
  n.r = begin;
  n.needs_grad = na.needs_grad;
  return push(std::move(n));
}

Var Tape::gather_rows(Var a, std::vector<int64_t> ids) {
  const Node& na = node(a, "gather_rows");
  Tensor C(static_cast<int64_t>(ids.size()), na.value.cols);
  for (size_t k = 0; k < ids.size(); ++k) {
    const int64_t id = ids[k];
    if (id < 0 || id >= na.value.rows)
      shape_error("gather_rows",
                  fmt::format("id {} (at {}) out of range for {}", id, k, shape(na.value)));
    for (int64_t c = 0; c < C.cols; ++c) C(static_cast<int64_t>(k), c) = na.value(id, c);
  }
  Node n;
  n.op = Op::gather_rows;
  n.value = std::move(C);
  n.a = a.id;
  n.ids = std::move(ids);
  n.needs_grad = na.needs_grad;
  return push(std::move(n));
}

Var Tape::at(Var a, int64_t r, int64_t c) {
  const Node& na = node(a, "at");
  if (r < 0 || r >= na.value.rows || c < 0 || c >= na.value.cols)
    shape_error("at", fmt::format("({}, {}) out of range for {}", r, c, shape(na.value)));
  Node n;
  n.op = Op::at;
  n.value = Tensor::scalar(na.value(r, c));
  n.a = a.id;
  n.r = r;
  n.col = c;
  n.needs_grad = na.needs_grad;
  return push(std::move(n));
}

Var Tape::concat_rows(const std::vector<Var>& parts) {
  if (parts.empty()) shape_error("concat_rows", "no parts");
  const int64_t cols = node(parts[0], "concat_rows").value.cols;
  Node n;
  n.op = Op::concat_rows;
  int64_t total = 0;
  for (Var p : parts) {
    const Node& np = node(p, "concat_rows");
    if (np.value.cols != cols)
      shape_error("concat_rows",
                  fmt::format("parts have {} and {} columns ({} vs {})", cols, np.value.cols,
                              shape(node(parts[0], "").value), shape(np.value)));
    total += np.value.rows;
    n.needs_grad = n.needs_grad || np.needs_grad;
    n.parts.push_back(p.id);
  }
  Tensor C(total, cols);
  size_t off = 0;
  for (Var p : parts) {
    const Tensor& P = node(p, "concat_rows").value;
    std::copy(P.v.begin(), P.v.end(), C.v.begin() + static_cast<std::ptrdiff_t>(off));
    off += P.v.size();
  }
  n.value = std::move(C);
  return push(std::move(n));
}

const Tensor& Tape::value(Var x) const {
  return node(x, "value").value;
}

// ---------------------------------------------------------------------------------------------
// Reverse accumulation (backward).

const Tensor& Tape::grad(Var x) const {
  const Node& n = node(x, "grad");
  if (!have_grads_) throw std::logic_error("Tape::grad: call backward() after the last operation");
  return n.grad;
}

void Tape::backward(Var y) {
  const Node& ny = node(y, "backward");
  if (ny.value.rows != 1 || ny.value.cols != 1)
    shape_error("backward", fmt::format("needs a 1x1 scalar, got {}", shape(ny.value)));
  for (Node& n : nodes_) n.grad = Tensor(n.value.rows, n.value.cols);
  nodes_[static_cast<size_t>(y.id)].grad.v[0] = 1.0;  // dy/dy
  // Nodes are in creation order, so every consumer of a node comes after it: by the time we reach
  // a node walking backwards, its gradient is complete. Nodes after y cannot influence y.
  for (int id = y.id; id >= 0; --id) {
    const Node& n = nodes_[static_cast<size_t>(id)];
    if (n.needs_grad) backward_node(n);
  }
  have_grads_ = true;
}

void Tape::backward_node(const Node& n) {
  const Tensor& g = n.grad;  // dy/d(out), out's shape
  // The input gradients to add into; only for inputs that need one (constants stay zero).
  auto dof = [&](int id) -> Tensor* {
    Node& in = nodes_[static_cast<size_t>(id)];
    return in.needs_grad ? &in.grad : nullptr;
  };
  const Tensor* A = n.a >= 0 ? &nodes_[static_cast<size_t>(n.a)].value : nullptr;
  const Tensor* B = n.b >= 0 ? &nodes_[static_cast<size_t>(n.b)].value : nullptr;
  Tensor* dA = n.a >= 0 ? dof(n.a) : nullptr;
  Tensor* dB = n.b >= 0 ? dof(n.b) : nullptr;
  const Tensor& out = n.value;

  switch (n.op) {
    case Op::leaf:
    case Op::constant:
      break;
    case Op::matmul:
      // C = A B: dA += dC B^T, dB += A^T dC.
      for (int64_t i = 0; i < A->rows; ++i)
        for (int64_t p = 0; p < A->cols; ++p)
          for (int64_t j = 0; j < B->cols; ++j) {
            if (dA) (*dA)(i, p) += g(i, j) * (*B)(p, j);
            if (dB) (*dB)(p, j) += (*A)(i, p) * g(i, j);
          }
      break;
    case Op::transpose:
      // C(j,i) = A(i,j): dA(i,j) += dC(j,i).
      for (int64_t i = 0; i < A->rows; ++i)
        for (int64_t j = 0; j < A->cols; ++j) (*dA)(i, j) += g(j, i);
      break;
    case Op::add:
    case Op::sub: {
      // C(r,c) = A(r,c) +- B(br,c): dA += dC, dB(br,c) +-= dC(r,c) (column sums if broadcast).
      const double sign = n.op == Op::add ? 1.0 : -1.0;
      for (int64_t r = 0; r < g.rows; ++r)
        for (int64_t c = 0; c < g.cols; ++c) {
          if (dA) (*dA)(r, c) += g(r, c);
          if (dB) (*dB)(brow(*B, r), c) += sign * g(r, c);
        }
      break;
    }
    case Op::mul:
      // C(r,c) = A(r,c) B(br,c): dA(r,c) += dC B(br,c), dB(br,c) += dC A(r,c).
      for (int64_t r = 0; r < g.rows; ++r)
        for (int64_t c = 0; c < g.cols; ++c) {
          if (dA) (*dA)(r, c) += g(r, c) * (*B)(brow(*B, r), c);
          if (dB) (*dB)(brow(*B, r), c) += g(r, c) * (*A)(r, c);
        }
      break;
    case Op::scale:
      // C = c A: dA += c dC.
      for (size_t k = 0; k < g.size(); ++k) dA->v[k] += n.c * g.v[k];
      break;
    case Op::sigmoid:
      // C = sigmoid(A): dA += dC C (1 - C).
      for (size_t k = 0; k < g.size(); ++k) dA->v[k] += g.v[k] * out.v[k] * (1.0 - out.v[k]);
      break;
    case Op::tanh:
      // C = tanh(A): dA += dC (1 - C^2).
      for (size_t k = 0; k < g.size(); ++k) dA->v[k] += g.v[k] * (1.0 - out.v[k] * out.v[k]);
      break;
    case Op::log:
      // C = log(A): dA += dC / A.
      for (size_t k = 0; k < g.size(); ++k) dA->v[k] += g.v[k] / A->v[k];
      break;
    case Op::rsqrt:
      // C = (A + eps)^(-1/2): dA += dC (-1/2) (A + eps)^(-3/2) = dC (-1/2) C^3.
      for (size_t k = 0; k < g.size(); ++k)
        dA->v[k] += g.v[k] * -0.5 * out.v[k] * out.v[k] * out.v[k];
      break;
    case Op::softmax:
      // C(r,j) = exp(A(r,j)) / sum_k exp(A(r,k)); dC(r,j)/dA(r,k) = C(r,j) (delta_jk - C(r,k)),
      // so dA(r,k) += C(r,k) (dC(r,k) - sum_j dC(r,j) C(r,j)).
      for (int64_t r = 0; r < g.rows; ++r) {
        double dot = 0;
        for (int64_t j = 0; j < g.cols; ++j) dot += g(r, j) * out(r, j);
        for (int64_t k = 0; k < g.cols; ++k) (*dA)(r, k) += out(r, k) * (g(r, k) - dot);
      }
      break;
    case Op::sum:
      // C = sum_k A_k: dA_k += dC.
      for (double& d : dA->v) d += g.v[0];
      break;
    case Op::rows:
      // C(r,c) = A(begin + r, c): dA(begin + r, c) += dC(r,c).
      for (int64_t r = 0; r < g.rows; ++r)
        for (int64_t c = 0; c < g.cols; ++c) (*dA)(n.r + r, c) += g(r, c);
      break;
    case Op::gather_rows:
      // C(k,c) = A(ids[k], c): dA(ids[k], c) += dC(k,c); a repeated id receives every copy's.
      for (size_t k = 0; k < n.ids.size(); ++k)
        for (int64_t c = 0; c < g.cols; ++c) (*dA)(n.ids[k], c) += g(static_cast<int64_t>(k), c);
      break;
    case Op::at:
      // C = A(r,c): dA(r,c) += dC.
      (*dA)(n.r, n.col) += g.v[0];
      break;
    case Op::concat_rows: {
      // C = [P0; P1; ...]: dP_i += the rows of dC that P_i filled.
      size_t off = 0;
      for (int id : n.parts) {
        Tensor* dP = dof(id);
        const size_t len = nodes_[static_cast<size_t>(id)].value.size();
        if (dP)
          for (size_t k = 0; k < len; ++k) dP->v[k] += g.v[off + k];
        off += len;
      }
      break;
    }
  }
}

}  // namespace lstmgrad::ad
