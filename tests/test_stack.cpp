// The public LSTM stack (lstmgrad/stack.hpp): its hand-derived backward against the autodiff tape
// (the stack written here on ad::Tape from the equations of docs/derivation.md, "Forward"),
// against central finite differences of its own forward, against PyTorch's nn.LSTM (golden files
// written by tools/make_stack_golden.py), float32 against float64, and its argument checks.
//
// Every check differentiates the scalar
//   L = sum(gy * y) + sum(ghn * h_n) + sum(gsn * s_n)
// for fixed random gy [T,B,H], ghn, gsn [L,B,H], so that dL/dy = gy, dL/dh_n = ghn, dL/ds_n = gsn.
#include <gtest/gtest.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "compare.hpp"
#include "lstmgrad/autodiff.hpp"
#include "lstmgrad/error.hpp"
#include "lstmgrad/finite_diff.hpp"
#include "lstmgrad/safetensors.hpp"
#include "lstmgrad/stack.hpp"
#include "splitmix.hpp"

namespace lstmgrad::test {
namespace {

struct Shape {
  int64_t T, B, X, H, L;
};

// A random stack problem in float64: weights flat in lstm_parameter_layout order.
struct Problem {
  Shape n;
  std::vector<double> params, x, h0, s0, gy, ghn, gsn;
};

Problem make_problem(Shape n, uint64_t seed) {
  SplitMix rng{seed};
  Problem p{n, {}, {}, {}, {}, {}, {}, {}};
  const size_t state = static_cast<size_t>(n.L * n.B * n.H);
  size_t count = 0;
  for (const ParamInfo& i : lstm_parameter_layout(n.X, n.H, n.L)) count += i.size;
  p.params = rng.vec(count, -0.8, 0.8);
  p.x = rng.vec(static_cast<size_t>(n.T * n.B * n.X), -1, 1);
  p.h0 = rng.vec(state, -0.5, 0.5), p.s0 = rng.vec(state, -0.5, 0.5);
  p.gy = rng.vec(static_cast<size_t>(n.T * n.B * n.H), -1, 1);
  p.ghn = rng.vec(state, -1, 1), p.gsn = rng.vec(state, -1, 1);
  return p;
}

// What the engine or the tape computed: outputs, and the gradients of L.
struct Result {
  double loss = 0;
  std::vector<double> y, h_n, s_n, grad, dx, dh0, ds0;
};

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t k = 0; k < a.size(); ++k) s += a[k] * b[k];
  return s;
}

template <class Real>
Result run_engine(const Problem& p, bool with_state, int threads = 1) {
  const Shape n = p.n;
  const auto params = cast<Real>(p.params), x = cast<Real>(p.x), h0 = cast<Real>(p.h0),
             s0 = cast<Real>(p.s0), gy = cast<Real>(p.gy), ghn = cast<Real>(p.ghn),
             gsn = cast<Real>(p.gsn);
  Lstm<Real> lstm(n.X, n.H, n.L);
  lstm.set_threads(threads);
  const auto w = lstm_layer_weights<Real>(params, n.X, n.H, n.L);
  std::vector<Real> y(p.gy.size()), h_n(p.h0.size()), s_n(p.h0.size());
  lstm.forward(x.data(), w, with_state ? h0.data() : nullptr, with_state ? s0.data() : nullptr, n.T,
               n.B, y.data(), h_n.data(), s_n.data());
  std::vector<Real> grad(params.size(), Real(0)), dx(x.size()), dh0(h0.size()), ds0(s0.size());
  const auto g = lstm_layer_grads<Real>(grad, n.X, n.H, n.L);
  lstm.backward(gy.data(), ghn.data(), gsn.data(), x.data(), w, g, dx.data(), dh0.data(),
                ds0.data());
  Result r;
  r.y.assign(y.begin(), y.end()), r.h_n.assign(h_n.begin(), h_n.end());
  r.s_n.assign(s_n.begin(), s_n.end()), r.grad.assign(grad.begin(), grad.end());
  r.dx.assign(dx.begin(), dx.end()), r.dh0.assign(dh0.begin(), dh0.end());
  r.ds0.assign(ds0.begin(), ds0.end());
  r.loss = dot(r.y, p.gy) + dot(r.h_n, p.ghn) + dot(r.s_n, p.gsn);
  return r;
}

// The stack on the tape, written from the equations alone (no engine code).
Result run_tape(const Problem& p) {
  const Shape n = p.n;
  const int64_t B = n.B, H = n.H;
  ad::Tape tape;
  std::vector<ad::Var> leaves;  // the parameters in layout order
  const auto layout = lstm_parameter_layout(n.X, n.H, n.L);
  for (const ParamInfo& i : layout) {
    const int64_t rows = i.shape[0], cols = i.shape.size() > 1 ? i.shape[1] : 1;
    leaves.push_back(tape.leaf(
        ad::Tensor(rows, cols,
                   std::vector<double>(p.params.begin() + static_cast<long>(i.offset),
                                       p.params.begin() + static_cast<long>(i.offset + i.size)))));
  }
  const ad::Var x = tape.leaf(ad::Tensor(n.T * B, n.X, p.x));
  std::vector<ad::Var> h0, s0;
  for (int64_t k = 0; k < n.L; ++k) {
    auto part = [&](const std::vector<double>& v) {
      return std::vector<double>(v.begin() + k * B * H, v.begin() + (k + 1) * B * H);
    };
    h0.push_back(tape.leaf(ad::Tensor(B, H, part(p.h0))));
    s0.push_back(tape.leaf(ad::Tensor(B, H, part(p.s0))));
  }
  ad::Var loss = tape.constant(ad::Tensor::scalar(0));
  auto add_dot = [&](ad::Var v, const std::vector<double>& g, int64_t at) {
    const ad::Tensor& t = tape.value(v);
    std::vector<double> part(g.begin() + at, g.begin() + at + static_cast<long>(t.size()));
    loss = tape.add(loss, tape.sum(tape.mul(v, tape.constant(ad::Tensor(t.rows, t.cols, part)))));
  };
  ad::Var input = x;
  std::vector<ad::Var> h_last, s_last;
  for (int64_t k = 0; k < n.L; ++k) {
    const ad::Var W_ih = leaves[4 * k], W_hh = leaves[4 * k + 1], b_ih = leaves[4 * k + 2],
                  b_hh = leaves[4 * k + 3];
    ad::Var Vt[4], Ut[4], b[4];  // gate blocks i, f, a, o: V^T [in,H], U^T [H,H], b [1,H]
    for (int q = 0; q < 4; ++q) {
      Vt[q] = tape.transpose(tape.rows(W_ih, q * H, H));
      Ut[q] = tape.transpose(tape.rows(W_hh, q * H, H));
      b[q] = tape.transpose(tape.add(tape.rows(b_ih, q * H, H), tape.rows(b_hh, q * H, H)));
    }
    ad::Var h = h0[k], s = s0[k];
    std::vector<ad::Var> hs;
    for (int64_t t = 0; t < n.T; ++t) {
      const ad::Var xt = tape.rows(input, t * B, B);
      ad::Var z[4];
      for (int q = 0; q < 4; ++q)
        z[q] = tape.add(tape.add(tape.matmul(xt, Vt[q]), tape.matmul(h, Ut[q])), b[q]);
      const ad::Var i = tape.sigmoid(z[0]), f = tape.sigmoid(z[1]), a = tape.tanh(z[2]),
                    o = tape.sigmoid(z[3]);
      s = tape.add(tape.mul(i, a), tape.mul(f, s));  // s = i * a + f * s_prev
      h = tape.mul(o, tape.tanh(s));                 // h = o * tanh(s)
      hs.push_back(h);
    }
    input = tape.concat_rows(hs);  // [T*B,H]
    h_last.push_back(h), s_last.push_back(s);
  }
  add_dot(input, p.gy, 0);
  for (int64_t k = 0; k < n.L; ++k) {
    add_dot(h_last[k], p.ghn, k * B * H);
    add_dot(s_last[k], p.gsn, k * B * H);
  }
  tape.backward(loss);
  Result r;
  r.loss = tape.value(loss).v[0];
  r.y = tape.value(input).v;
  for (int64_t k = 0; k < n.L; ++k) {
    const auto &hv = tape.value(h_last[k]).v, &sv = tape.value(s_last[k]).v;
    r.h_n.insert(r.h_n.end(), hv.begin(), hv.end());
    r.s_n.insert(r.s_n.end(), sv.begin(), sv.end());
    const auto &dh = tape.grad(h0[k]).v, &ds = tape.grad(s0[k]).v;
    r.dh0.insert(r.dh0.end(), dh.begin(), dh.end());
    r.ds0.insert(r.ds0.end(), ds.begin(), ds.end());
  }
  for (const ad::Var l : leaves) {
    const auto& g = tape.grad(l).v;
    r.grad.insert(r.grad.end(), g.begin(), g.end());
  }
  r.dx = tape.grad(x).v;
  return r;
}

void expect_same(const Result& got, const Result& want, double tol) {
  EXPECT_TRUE(close("y", got.y, want.y, tol));
  EXPECT_TRUE(close("h_n", got.h_n, want.h_n, tol));
  EXPECT_TRUE(close("s_n", got.s_n, want.s_n, tol));
  EXPECT_TRUE(close("dL/dweights", got.grad, want.grad, tol));
  EXPECT_TRUE(close("dL/dx", got.dx, want.dx, tol));
  EXPECT_TRUE(close("dL/dh0", got.dh0, want.dh0, tol));
  EXPECT_TRUE(close("dL/ds0", got.ds0, want.ds0, tol));
}

const Shape kShapes[] = {{3, 2, 3, 2, 2}, {1, 1, 1, 1, 1}, {6, 3, 4, 5, 3}, {5, 4, 2, 3, 1}};

TEST(stack, backward_matches_tape_float64) {
  for (const Shape& n : kShapes) {
    SCOPED_TRACE("T B X H L = " + std::to_string(n.T) + " " + std::to_string(n.B) + " " +
                 std::to_string(n.X) + " " + std::to_string(n.H) + " " + std::to_string(n.L));
    const Problem p = make_problem(n, 15 + static_cast<uint64_t>(n.T));
    expect_same(run_engine<double>(p, true), run_tape(p), 1e-12);
  }
}

TEST(stack, backward_matches_finite_differences) {
  const Problem p = make_problem({3, 2, 3, 2, 2}, 7);
  const Result r = run_engine<double>(p, true);
  // L as a function of one input vector, the others fixed.
  auto loss_of = [&](std::vector<double> Problem::*field) {
    return [&p, field](std::span<const double> v) {
      Problem q = p;
      q.*field = std::vector<double>(v.begin(), v.end());
      return run_engine<double>(q, true).loss;
    };
  };
  // Central differences at e = 1e-6: about 1e-10 relative for O(1) values (finite_diff.hpp).
  EXPECT_TRUE(
      close("weights", r.grad, central_difference(loss_of(&Problem::params), p.params), 1e-7));
  EXPECT_TRUE(close("x", r.dx, central_difference(loss_of(&Problem::x), p.x), 1e-7));
  EXPECT_TRUE(close("h0", r.dh0, central_difference(loss_of(&Problem::h0), p.h0), 1e-7));
  EXPECT_TRUE(close("s0", r.ds0, central_difference(loss_of(&Problem::s0), p.s0), 1e-7));
}

TEST(stack, float32_matches_float64) {
  // float32 runs the fast kernels (polynomial sigmoid and tanh, packed panels on AVX-512).
  const Problem p = make_problem({7, 5, 6, 20, 2}, 3);
  for (int threads : {1, 3}) {
    SCOPED_TRACE(std::to_string(threads) + " threads");
    expect_same(run_engine<float>(p, true, threads), run_engine<double>(p, true), 1e-4);
  }
}

TEST(stack, float64_same_bits_for_any_thread_count) {
  const Problem p = make_problem({6, 4, 5, 9, 2}, 5);
  const Result one = run_engine<double>(p, true, 1), three = run_engine<double>(p, true, 3);
  expect_same(three, one, 0.0);
}

TEST(stack, no_initial_state_is_zeros) {
  Problem p = make_problem({4, 2, 3, 3, 2}, 9);
  const Result none = run_engine<double>(p, false);
  std::fill(p.h0.begin(), p.h0.end(), 0.0), std::fill(p.s0.begin(), p.s0.end(), 0.0);
  expect_same(none, run_engine<double>(p, true), 0.0);
}

TEST(stack, null_bias_is_zero_bias_and_its_gradient_untouched) {
  const Shape n{4, 2, 3, 3, 2};
  Problem p = make_problem(n, 11);
  for (const ParamInfo& i : lstm_parameter_layout(n.X, n.H, n.L))
    if (i.name.find("bias") != std::string::npos)
      std::fill_n(p.params.begin() + static_cast<long>(i.offset), i.size, 0.0);
  const Result with_zeros = run_engine<double>(p, true);
  Lstm<double> lstm(n.X, n.H, n.L);
  auto w = lstm_layer_weights<double>(p.params, n.X, n.H, n.L);
  std::vector<double> grad(p.params.size(), 0.0), y(p.gy.size());
  auto g = lstm_layer_grads<double>(grad, n.X, n.H, n.L);
  for (auto& l : w) l.bias_ih = l.bias_hh = nullptr;
  for (auto& l : g) l.bias_ih = l.bias_hh = nullptr;
  lstm.forward(p.x.data(), w, p.h0.data(), p.s0.data(), n.T, n.B, y.data(), nullptr, nullptr);
  lstm.backward(p.gy.data(), p.ghn.data(), p.gsn.data(), p.x.data(), w, g, nullptr, nullptr,
                nullptr);
  EXPECT_TRUE(close("y", y, with_zeros.y, 0.0));
  for (const ParamInfo& i : lstm_parameter_layout(n.X, n.H, n.L)) {
    const bool bias = i.name.find("bias") != std::string::npos;
    for (size_t k = i.offset; k < i.offset + i.size; ++k)
      ASSERT_EQ(grad[k], bias ? 0.0 : with_zeros.grad[k]) << i.name << " at " << k - i.offset;
  }
}

TEST(stack, backward_twice_accumulates_the_same_gradient) {
  const Shape n{3, 2, 2, 4, 2};
  const Problem p = make_problem(n, 13);
  Lstm<float> lstm(n.X, n.H, n.L);
  const auto params = cast<float>(p.params), x = cast<float>(p.x), gy = cast<float>(p.gy);
  const auto w = lstm_layer_weights<float>(params, n.X, n.H, n.L);
  lstm.forward(x.data(), w, nullptr, nullptr, n.T, n.B, nullptr, nullptr, nullptr);
  std::vector<float> once(params.size(), 0.f), twice(params.size(), 0.f);
  lstm.backward(gy.data(), nullptr, nullptr, x.data(), w,
                lstm_layer_grads<float>(once, n.X, n.H, n.L), nullptr, nullptr, nullptr);
  for (int k = 0; k < 2; ++k)
    lstm.backward(gy.data(), nullptr, nullptr, x.data(), w,
                  lstm_layer_grads<float>(twice, n.X, n.H, n.L), nullptr, nullptr, nullptr);
  for (size_t k = 0; k < once.size(); ++k) ASSERT_EQ(twice[k], 2 * once[k]) << "at " << k;
}

TEST(stack, layout_is_nn_lstm_order) {
  const auto l = lstm_parameter_layout(3, 2, 2);
  const std::vector<std::string> names{"weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
                                       "weight_ih_l1", "weight_hh_l1", "bias_ih_l1", "bias_hh_l1"};
  ASSERT_EQ(l.size(), names.size());
  for (size_t k = 0; k < l.size(); ++k) EXPECT_EQ(l[k].name, names[k]);
  EXPECT_EQ(l[0].shape, (std::vector<int64_t>{8, 3}));
  EXPECT_EQ(l[4].shape, (std::vector<int64_t>{8, 2}));
  EXPECT_EQ(l[4].offset, 24u + 16u + 8u + 8u);
  const auto nb = lstm_parameter_layout(3, 2, 2, false);
  ASSERT_EQ(nb.size(), 4u);
  EXPECT_EQ(nb[2].name, "weight_ih_l1");
  EXPECT_EQ(nb[2].offset, 24u + 16u);
}

TEST(stack, rejects_bad_arguments) {
  EXPECT_THROW(Lstm<double>(0, 2, 1), InputError);
  EXPECT_THROW(Lstm<double>(2, 2, 0), InputError);
  Lstm<double> lstm(2, 2, 2);
  std::vector<double> params(parameter_count({InputKind::dense, Readout::identity, 2, 2, 2, 2}));
  std::vector<double> x(2 * 2 * 2), grad(params.size());
  auto w = lstm_layer_weights<double>(params, 2, 2, 2);
  auto g = lstm_layer_grads<double>(grad, 2, 2, 2);
  EXPECT_THROW(lstm.backward(nullptr, nullptr, nullptr, x.data(), w, g, nullptr, nullptr, nullptr),
               std::logic_error);  // no forward yet
  const std::span<const LstmLayerWeights<double>> one_layer(w.data(), 1);
  EXPECT_THROW(lstm.forward(x.data(), one_layer, nullptr, nullptr, 2, 2, nullptr, nullptr, nullptr),
               std::invalid_argument);
  EXPECT_THROW(lstm.forward(x.data(), w, nullptr, nullptr, 0, 2, nullptr, nullptr, nullptr),
               std::invalid_argument);
  w[1].weight_hh = nullptr;
  EXPECT_THROW(lstm.forward(x.data(), w, nullptr, nullptr, 2, 2, nullptr, nullptr, nullptr),
               std::invalid_argument);
  EXPECT_THROW(lstm_layer_weights<double>(std::span<const double>(params).first(3), 2, 2, 2),
               std::invalid_argument);
}

TEST(stack, projection_sizes_and_checks) {
  // nn.LSTM's proj_size (P < H there; any P >= 1 here): h (y, h0, h_n) P wide, s H wide,
  // weight_hr [P,H] per layer.
  EXPECT_THROW(Lstm<double>(3, 4, 2, -1), InputError);
  EXPECT_THROW(BidirectionalLstm<double>(3, 4, 2, -2), InputError);
  EXPECT_EQ(Lstm<double>(3, 4, 2, 6).output_size(), 6);  // wider than the cell
  const int64_t X = 3, H = 4, L = 2, P = 2, T = 3, B = 2;
  Lstm<double> lstm(X, H, L, P);
  EXPECT_EQ(lstm.proj_size(), P);
  EXPECT_EQ(lstm.output_size(), P);
  EXPECT_EQ(Lstm<double>(X, H, L).output_size(), H);
  const auto layout = lstm_parameter_layout(X, H, L, true, P);
  ASSERT_EQ(layout.size(), 10u);
  EXPECT_EQ(layout[1].shape, (std::vector<int64_t>{4 * H, P}));  // weight_hh_l0
  EXPECT_EQ(layout[4].name, "weight_hr_l0");
  EXPECT_EQ(layout[4].shape, (std::vector<int64_t>{P, H}));
  EXPECT_EQ(layout[5].shape, (std::vector<int64_t>{4 * H, P}));  // weight_ih_l1 reads h_0's P
  EXPECT_EQ(lstm_parameter_layout(X, H, L, false, P)[2].name, "weight_hr_l0");
  size_t n = 0;
  for (const ParamInfo& q : layout) n += q.size;
  std::vector<double> params(n, 0.1), grad(n), x(T * B * X, 0.5), y(T * B * P);
  std::vector<double> h_n(L * B * P), s_n(L * B * H), dh0(L * B * P), ds0(L * B * H);
  auto w = lstm_layer_weights<double>(params, X, H, L, P);
  auto g = lstm_layer_grads<double>(grad, X, H, L, P);
  ASSERT_NE(w[1].weight_hr, nullptr);
  lstm.forward(x.data(), w, nullptr, nullptr, T, B, y.data(), h_n.data(), s_n.data());
  for (int64_t i = 0; i < B * P; ++i)  // the top layer's h_n is its last output
    EXPECT_EQ(h_n[(L - 1) * B * P + i], y[(T - 1) * B * P + i]);
  lstm.backward(y.data(), nullptr, nullptr, x.data(), w, g, nullptr, dh0.data(), ds0.data());
  double hr = 0;
  for (size_t i = layout[4].offset; i < layout[4].offset + layout[4].size; ++i)
    hr += grad[i] * grad[i];
  EXPECT_GT(hr, 0);  // weight_hr's gradient was written
  auto missing = w;
  missing[0].weight_hr = nullptr;
  EXPECT_THROW(lstm.forward(x.data(), missing, nullptr, nullptr, T, B, y.data(), nullptr, nullptr),
               std::invalid_argument);
  auto no_grad = g;
  no_grad[1].weight_hr = nullptr;
  EXPECT_THROW(
      lstm.backward(y.data(), nullptr, nullptr, x.data(), w, no_grad, nullptr, nullptr, nullptr),
      std::invalid_argument);
  Lstm<double> plain(X, H, 1);  // a weight_hr given to a stack without a projection
  std::vector<double> p1(parameter_count({InputKind::dense, Readout::identity, H, X, H, 1}));
  auto w1 = lstm_layer_weights<double>(p1, X, H, 1);
  w1[0].weight_hr = params.data();
  std::vector<double> y1(T * B * H);
  EXPECT_THROW(plain.forward(x.data(), w1, nullptr, nullptr, T, B, y1.data(), nullptr, nullptr),
               std::invalid_argument);
}

// A packed batch (forward_packed): sequences of lengths `len` (non-increasing) taken from the
// padded problem p ([T,B,...] with T = len[0]): each sequence's rows at the steps it is active.
struct Packed {
  std::vector<int64_t> batch_sizes;
  std::vector<double> x, gy;  // [N,X], [N,H]
};

Packed pack(const Problem& p, const std::vector<int64_t>& len) {
  const Shape n = p.n;
  Packed k;
  for (int64_t t = 0; t < n.T; ++t) {
    int64_t rows = 0;
    for (int64_t l : len) rows += l > t ? 1 : 0;
    k.batch_sizes.push_back(rows);
    for (int64_t b = 0; b < rows; ++b) {
      const auto xr = p.x.begin() + (t * n.B + b) * n.X, yr = p.gy.begin() + (t * n.B + b) * n.H;
      k.x.insert(k.x.end(), xr, xr + n.X);
      k.gy.insert(k.gy.end(), yr, yr + n.H);
    }
  }
  return k;
}

Result run_packed(const Problem& p, const Packed& k, int threads = 1) {
  const Shape n = p.n;
  Lstm<double> lstm(n.X, n.H, n.L);
  lstm.set_threads(threads);
  const auto w = lstm_layer_weights<double>(p.params, n.X, n.H, n.L);
  Result r;
  r.y.resize(k.gy.size()), r.h_n.resize(p.h0.size()), r.s_n.resize(p.h0.size());
  lstm.forward_packed(k.x.data(), w, p.h0.data(), p.s0.data(), k.batch_sizes, r.y.data(),
                      r.h_n.data(), r.s_n.data());
  EXPECT_EQ(lstm.rows(), static_cast<int64_t>(k.x.size()) / n.X);
  r.grad.assign(p.params.size(), 0.0), r.dx.resize(k.x.size());
  r.dh0.resize(p.h0.size()), r.ds0.resize(p.h0.size());
  lstm.backward(k.gy.data(), p.ghn.data(), p.gsn.data(), k.x.data(), w,
                lstm_layer_grads<double>(r.grad, n.X, n.H, n.L), r.dx.data(), r.dh0.data(),
                r.ds0.data());
  return r;
}

TEST(stack, packed_is_each_sequence_alone) {
  const Shape n{6, 5, 3, 4, 2};
  const std::vector<int64_t> len{6, 6, 4, 3, 1};
  const Problem p = make_problem(n, 21);
  const Packed k = pack(p, len);
  const Result got = run_packed(p, k, 3);
  Result want;  // assembled from B runs of one sequence each, in the packed layout
  want.y.resize(got.y.size()), want.dx.resize(got.dx.size());
  want.h_n.resize(p.h0.size()), want.s_n.resize(p.h0.size());
  want.dh0.resize(p.h0.size()), want.ds0.resize(p.h0.size());
  want.grad.assign(p.params.size(), 0.0);
  for (int64_t b = 0; b < n.B; ++b) {
    Problem one = make_problem({len[b], 1, n.X, n.H, n.L}, 1);
    one.params = p.params;
    for (int64_t t = 0; t < len[b]; ++t) {
      std::copy_n(p.x.begin() + (t * n.B + b) * n.X, n.X, one.x.begin() + t * n.X);
      std::copy_n(p.gy.begin() + (t * n.B + b) * n.H, n.H, one.gy.begin() + t * n.H);
    }
    auto rows = [&](const std::vector<double>& from, std::vector<double>& to, bool out) {
      for (int64_t l = 0; l < n.L; ++l) {
        auto a = from.begin() + (l * (out ? 1 : n.B) + (out ? 0 : b)) * n.H;
        auto c = to.begin() + (l * (out ? n.B : 1) + (out ? b : 0)) * n.H;
        std::copy_n(a, n.H, c);
      }
    };
    rows(p.h0, one.h0, false), rows(p.s0, one.s0, false);
    rows(p.ghn, one.ghn, false), rows(p.gsn, one.gsn, false);
    const Result r = run_engine<double>(one, true);
    rows(r.h_n, want.h_n, true), rows(r.s_n, want.s_n, true);
    rows(r.dh0, want.dh0, true), rows(r.ds0, want.ds0, true);
    for (size_t i = 0; i < r.grad.size(); ++i) want.grad[i] += r.grad[i];
    int64_t off = 0;  // row of sequence b at step t in the packed layout
    for (int64_t t = 0; t < len[b]; ++t) {
      std::copy_n(r.y.begin() + t * n.H, n.H, want.y.begin() + (off + b) * n.H);
      std::copy_n(r.dx.begin() + t * n.X, n.X, want.dx.begin() + (off + b) * n.X);
      off += k.batch_sizes[t];
    }
  }
  expect_same(got, want, 1e-12);
}

TEST(stack, packed_of_equal_lengths_is_the_dense_stack) {
  const Shape n{5, 3, 4, 6, 2};
  const Problem p = make_problem(n, 23);
  const Result packed = run_packed(p, pack(p, {5, 5, 5}), 2),
               dense = run_engine<double>(p, true, 2);
  expect_same(packed, dense, 0.0);
}

TEST(stack, packed_backward_matches_finite_differences) {
  const Shape n{4, 3, 2, 3, 2};
  const Problem p = make_problem(n, 25);
  const std::vector<int64_t> len{4, 2, 1};
  const Packed k = pack(p, len);
  const Result r = run_packed(p, k);
  auto loss = [&](const Problem& q, const Packed& kq) {
    const Result o = run_packed(q, kq);
    return dot(o.y, kq.gy) + dot(o.h_n, q.ghn) + dot(o.s_n, q.gsn);
  };
  auto of_params = [&](std::span<const double> v) {
    Problem q = p;
    q.params.assign(v.begin(), v.end());
    return loss(q, k);
  };
  auto of_x = [&](std::span<const double> v) {
    Packed kq = k;
    kq.x.assign(v.begin(), v.end());
    return loss(p, kq);
  };
  auto of_h0 = [&](std::span<const double> v) {
    Problem q = p;
    q.h0.assign(v.begin(), v.end());
    return loss(q, k);
  };
  auto of_s0 = [&](std::span<const double> v) {
    Problem q = p;
    q.s0.assign(v.begin(), v.end());
    return loss(q, k);
  };
  EXPECT_TRUE(close("weights", r.grad, central_difference(of_params, p.params), 1e-7));
  EXPECT_TRUE(close("x", r.dx, central_difference(of_x, k.x), 1e-7));
  EXPECT_TRUE(close("h0", r.dh0, central_difference(of_h0, p.h0), 1e-7));
  EXPECT_TRUE(close("s0", r.ds0, central_difference(of_s0, p.s0), 1e-7));
}

// run_engine with dropout p between layers (seed 7).
Result run_dropout(const Problem& p, double drop, bool packed) {
  const Shape n = p.n;
  Lstm<double> lstm(n.X, n.H, n.L);
  lstm.set_dropout(drop, 7);
  const auto w = lstm_layer_weights<double>(p.params, n.X, n.H, n.L);
  Result r;
  r.y.resize(p.gy.size()), r.h_n.resize(p.h0.size()), r.s_n.resize(p.h0.size());
  const std::vector<int64_t> bs(static_cast<size_t>(n.T), n.B);
  if (packed)
    lstm.forward_packed(p.x.data(), w, p.h0.data(), p.s0.data(), bs, r.y.data(), r.h_n.data(),
                        r.s_n.data());
  else
    lstm.forward(p.x.data(), w, p.h0.data(), p.s0.data(), n.T, n.B, r.y.data(), r.h_n.data(),
                 r.s_n.data());
  r.loss = dot(r.y, p.gy) + dot(r.h_n, p.ghn) + dot(r.s_n, p.gsn);
  r.grad.assign(p.params.size(), 0.0), r.dx.resize(p.x.size());
  r.dh0.resize(p.h0.size()), r.ds0.resize(p.h0.size());
  lstm.backward(p.gy.data(), p.ghn.data(), p.gsn.data(), p.x.data(), w,
                lstm_layer_grads<double>(r.grad, n.X, n.H, n.L), r.dx.data(), r.dh0.data(),
                r.ds0.data());
  return r;
}

TEST(stack, dropout_backward_matches_finite_differences) {
  const Problem p = make_problem({4, 3, 3, 4, 3}, 27);
  for (bool packed : {false, true}) {
    SCOPED_TRACE(packed ? "forward_packed" : "forward");
    const Result r = run_dropout(p, 0.4, packed);
    auto of_params = [&](std::span<const double> v) {
      Problem q = p;
      q.params.assign(v.begin(), v.end());
      return run_dropout(q, 0.4, packed).loss;
    };
    auto of_x = [&](std::span<const double> v) {
      Problem q = p;
      q.x.assign(v.begin(), v.end());
      return run_dropout(q, 0.4, packed).loss;
    };
    EXPECT_TRUE(close("weights", r.grad, central_difference(of_params, p.params), 1e-7));
    EXPECT_TRUE(close("x", r.dx, central_difference(of_x, p.x), 1e-7));
  }
  // It drops: the outputs differ from p = 0's, which are the plain stack's.
  const Result none = run_dropout(p, 0.0, false), plain = run_engine<double>(p, true);
  EXPECT_TRUE(close("p = 0", none.y, plain.y, 0.0));
  EXPECT_GT(
      diff(std::span<const double>(run_dropout(p, 0.4, false).y), std::span<const double>(plain.y))
          .max_abs,
      1e-3);
  Lstm<double> lstm(2, 2, 2);
  EXPECT_THROW(lstm.set_dropout(1.0, 0), std::invalid_argument);
}

TEST(stack, packed_rejects_increasing_batch_sizes) {
  Lstm<double> lstm(2, 2, 1);
  std::vector<double> params(parameter_count({InputKind::dense, Readout::identity, 2, 2, 2, 1}));
  std::vector<double> x(6 * 2);
  const auto w = lstm_layer_weights<double>(params, 2, 2, 1);
  const std::vector<int64_t> up{2, 3, 1}, zero{2, 0}, none{};
  for (const auto* bs : {&up, &zero, &none})
    EXPECT_THROW(lstm.forward_packed(x.data(), w, nullptr, nullptr, *bs, nullptr, nullptr, nullptr),
                 std::invalid_argument);
}

// PyTorch's nn.LSTM (float64): tests/data/golden_stack/<case>.safetensors, written by
// tools/make_stack_golden.py with everything the check needs, inputs and results: stacks of one
// direction (Lstm) or two (BidirectionalLstm), dense or packed (padded tensors and `lengths` in
// the file; the packed rows are taken from them).
template <class Real>
void check_golden(const std::string& name, double tol) {
  SCOPED_TRACE(name);
  const std::string file =
      std::string(LSTMGRAD_TEST_DATA) + "/golden_stack/" + name + ".safetensors";
  const io::TensorFile f = io::read_safetensors(file);
  auto get = [&](const std::string& key) {
    return io::to_floats<double>(f.require(key, file), file);
  };
  auto size = [&](const char* key) { return std::stoll(f.metadata.at(key)); };
  const int64_t T = size("T"), B = size("B"), X = size("X"), H = size("H"), L = size("L"),
                D = size("D"), U = L * D;
  const int64_t P = f.metadata.count("P") ? size("P") : 0, R = P > 0 ? P : H;  // h's width
  // Weights and gradients per unit k * D + d (nn.LSTM's order).
  const char* kinds[] = {"weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr"};
  const int64_t per = P > 0 ? 5 : 4;
  std::vector<std::vector<Real>> wt, gt;
  std::vector<std::string> names;
  for (int64_t k = 0; k < L; ++k)
    for (int64_t d = 0; d < D; ++d)
      for (int64_t i = 0; i < per; ++i) {
        names.push_back(std::string(kinds[i]) + "_l" + std::to_string(k) + (d ? "_reverse" : ""));
        wt.push_back(cast<Real>(get("param." + names.back())));
        gt.emplace_back(wt.back().size(), Real(0));
      }
  std::vector<LstmLayerWeights<Real>> w;
  std::vector<LstmLayerGrads<Real>> g;
  for (int64_t u = 0; u < U; ++u) {
    const int64_t o = per * u;
    w.push_back({wt[o].data(), wt[o + 1].data(), wt[o + 2].data(), wt[o + 3].data(),
                 P > 0 ? wt[o + 4].data() : nullptr});
    g.push_back({gt[o].data(), gt[o + 1].data(), gt[o + 2].data(), gt[o + 3].data(),
                 P > 0 ? gt[o + 4].data() : nullptr});
  }
  // The rows: every (t, b) of the padded tensors, or only those before each sequence's end.
  std::vector<int64_t> lengths(static_cast<size_t>(B), T), bs;
  if (f.find("lengths")) lengths = io::to_ints(f.require("lengths", file), file);
  std::vector<int64_t> rows;  // index t * B + b of each packed row, in order
  for (int64_t t = 0; t < T; ++t) {
    int64_t n = 0;
    for (int64_t b = 0; b < B; ++b)
      if (lengths[b] > t) rows.push_back(t * B + b), ++n;
    bs.push_back(n);
  }
  auto pick = [&](const std::vector<double>& padded, int64_t width) {
    std::vector<double> out;
    for (int64_t r : rows)
      out.insert(out.end(), padded.begin() + r * width, padded.begin() + (r + 1) * width);
    return out;
  };
  const bool packed = f.find("lengths") != nullptr;
  const auto x = cast<Real>(pick(get("input"), X)),
             gy = cast<Real>(pick(get("grad_output"), D * R));
  const auto ghn = cast<Real>(get("grad_h_n")), gcn = cast<Real>(get("grad_c_n"));
  std::vector<Real> h0, s0;
  if (f.find("h0")) h0 = cast<Real>(get("h0")), s0 = cast<Real>(get("c0"));
  const Real* h0p = h0.empty() ? nullptr : h0.data();
  const Real* s0p = s0.empty() ? nullptr : s0.data();
  const size_t N = rows.size(), hstate = static_cast<size_t>(U * B * R),
               sstate = static_cast<size_t>(U * B * H);
  std::vector<Real> y(N * D * R), hn(hstate), cn(sstate), dx(x.size()), dh0(hstate), ds0(sstate);
  auto run = [&](auto& lstm) {
    if (packed)
      lstm.forward_packed(x.data(), w, h0p, s0p, bs, y.data(), hn.data(), cn.data());
    else
      lstm.forward(x.data(), w, h0p, s0p, T, B, y.data(), hn.data(), cn.data());
    lstm.backward(gy.data(), ghn.data(), gcn.data(), x.data(), w, g, dx.data(), dh0.data(),
                  ds0.data());
  };
  if (D == 1) {
    Lstm<Real> lstm(X, H, L, P);
    run(lstm);
  } else {
    BidirectionalLstm<Real> lstm(X, H, L, P);
    run(lstm);
  }
  auto d = [](const std::vector<Real>& v) { return std::vector<double>(v.begin(), v.end()); };
  EXPECT_TRUE(close("output", d(y), pick(get("output"), D * R), tol));
  EXPECT_TRUE(close("h_n", d(hn), get("h_n"), tol));
  EXPECT_TRUE(close("c_n", d(cn), get("c_n"), tol));
  EXPECT_TRUE(close("grad.input", d(dx), pick(get("grad.input"), X), tol));
  EXPECT_TRUE(close("grad.h0", d(dh0), get("grad.h0"), tol));
  EXPECT_TRUE(close("grad.c0", d(ds0), get("grad.c0"), tol));
  for (size_t i = 0; i < names.size(); ++i)
    EXPECT_TRUE(close("grad." + names[i], d(gt[i]), get("grad." + names[i]), tol));
}

const char* const kGoldenCases[] = {
    "one_layer_state",   "two_layers",    "three_layers_long",
    "packed_two_layers", "bidirectional", "bidirectional_packed",
    "proj_two_layers",   "proj_packed",   "proj_bidirectional_packed"};

TEST(stack, matches_pytorch_golden) {
  // float64 against float64: both sum in different orders, so agreement to ~1e-12 relative.
  for (const char* name : kGoldenCases) check_golden<double>(name, 1e-11);
  for (const char* name : kGoldenCases) check_golden<float>(name, 1e-4);
}

TEST(stack, bidirectional_backward_matches_finite_differences) {
  // Two layers, packed lengths 4, 2, 1: the reverse direction starts at each sequence's end.
  const int64_t X = 2, H = 2, L = 2, B = 3;
  const std::vector<int64_t> bs{3, 2, 1, 1};
  SplitMix rng{31};
  const int64_t N = 7, S = 2 * L * B * H;
  std::vector<double> params, x = rng.vec(N * X, -1, 1), h0 = rng.vec(S, -0.5, 0.5),
                              s0 = rng.vec(S, -0.5, 0.5), gy = rng.vec(N * 2 * H, -1, 1),
                              ghn = rng.vec(S, -1, 1), gsn = rng.vec(S, -1, 1);
  std::vector<size_t> at;  // where each unit's weights start in params
  for (int64_t u = 0; u < 2 * L; ++u) {
    const int64_t I = u < 2 ? X : 2 * H;
    at.push_back(params.size());
    const auto v = rng.vec(static_cast<size_t>(4 * H * (I + H) + 8 * H), -0.8, 0.8);
    params.insert(params.end(), v.begin(), v.end());
  }
  auto views = [&](auto* base) {
    using P = decltype(base);
    std::vector<std::conditional_t<std::is_const_v<std::remove_pointer_t<P>>,
                                   LstmLayerWeights<double>, LstmLayerGrads<double>>>
        out;
    for (int64_t u = 0; u < 2 * L; ++u) {
      const int64_t I = u < 2 ? X : 2 * H;
      P p = base + at[u];
      out.push_back({p, p + 4 * H * I, p + 4 * H * (I + H), p + 4 * H * (I + H) + 4 * H});
    }
    return out;
  };
  struct Out {
    double loss;
    std::vector<double> grad, dx, dh0, ds0;
  };
  auto run = [&](const std::vector<double>& p, const std::vector<double>& xv,
                 const std::vector<double>& h, const std::vector<double>& s, bool back) {
    BidirectionalLstm<double> lstm(X, H, L);
    const auto w = views(static_cast<const double*>(p.data()));
    std::vector<double> y(N * 2 * H), hn(S), sn(S);
    lstm.forward_packed(xv.data(), w, h.data(), s.data(), bs, y.data(), hn.data(), sn.data());
    Out o{dot(y, gy) + dot(hn, ghn) + dot(sn, gsn), {}, {}, {}, {}};
    if (back) {
      o.grad.assign(p.size(), 0.0), o.dx.resize(xv.size()), o.dh0.resize(S), o.ds0.resize(S);
      lstm.backward(gy.data(), ghn.data(), gsn.data(), xv.data(), w, views(o.grad.data()),
                    o.dx.data(), o.dh0.data(), o.ds0.data());
    }
    return o;
  };
  const Out r = run(params, x, h0, s0, true);
  auto fd = [&](int which) {
    std::vector<double> v = which == 0 ? params : which == 1 ? x : which == 2 ? h0 : s0;
    return central_difference(
        [&](std::span<const double> e) {
          std::vector<double> q(e.begin(), e.end());
          return run(which == 0 ? q : params, which == 1 ? q : x, which == 2 ? q : h0,
                     which == 3 ? q : s0, false)
              .loss;
        },
        v);
  };
  EXPECT_TRUE(close("weights", r.grad, fd(0), 1e-7));
  EXPECT_TRUE(close("x", r.dx, fd(1), 1e-7));
  EXPECT_TRUE(close("h0", r.dh0, fd(2), 1e-7));
  EXPECT_TRUE(close("s0", r.ds0, fd(3), 1e-7));
}

}  // namespace
}  // namespace lstmgrad::test
