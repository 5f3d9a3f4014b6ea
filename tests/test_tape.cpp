// The autodiff tape on its own, against functions whose derivatives are known in closed form.
//
// Each test builds y = f(x) on a tape, runs backward(y) and compares grad(x) with the formula
// evaluated directly. Float64 and a handful of operations: the two agree to a few ulps, so the
// tolerance is 1e-12 relative to the largest entry of the expected gradient.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "lstmgrad/autodiff.hpp"
#include "splitmix.hpp"

namespace {

using lstmgrad::ad::Tape;
using lstmgrad::ad::Tensor;
using lstmgrad::ad::Var;

constexpr double kTol = 1e-12;

// Deterministic random tensors.
struct Rng : lstmgrad::test::SplitMix {
  Tensor tensor(int64_t rows, int64_t cols, double lo, double hi) {
    return Tensor(rows, cols, vec(static_cast<size_t>(rows * cols), lo, hi));
  }
};

// Compares two tensors; on failure prints the max absolute and relative difference and where.
// Passes when max |got - want| <= rtol * max |want|.
void expect_close(const Tensor& got, const Tensor& want, double rtol, const std::string& what) {
  ASSERT_EQ(got.rows, want.rows) << what;
  ASSERT_EQ(got.cols, want.cols) << what;
  double max_abs = 0, max_rel = 0, scale = 0;
  size_t where_abs = 0, where_rel = 0;
  for (size_t k = 0; k < want.v.size(); ++k) {
    const double d = std::abs(got.v[k] - want.v[k]);
    const double rel = d == 0 ? 0 : d / std::abs(want.v[k]);
    if (d > max_abs) max_abs = d, where_abs = k;
    if (rel > max_rel) max_rel = rel, where_rel = k;
    scale = std::max(scale, std::abs(want.v[k]));
  }
  const auto rc = [&](size_t k) {
    return "(" + std::to_string(k / static_cast<size_t>(want.cols)) + "," +
           std::to_string(k % static_cast<size_t>(want.cols)) + ")";
  };
  EXPECT_LE(max_abs, rtol * scale)
      << what << ": max abs diff " << max_abs << " at " << rc(where_abs) << " (got "
      << got.v[where_abs] << ", want " << want.v[where_abs] << "), max rel diff " << max_rel
      << " at " << rc(where_rel) << ", largest |want| " << scale;
}

// Applies f to every entry.
template <class F>
Tensor map(const Tensor& x, F f) {
  Tensor y = x;
  for (double& e : y.v) e = f(e);
  return y;
}

TEST(Tape, SigmoidSumGradientIsSTimesOneMinusS) {
  Rng rng{1};
  Tape tape;
  const Tensor x0 = rng.tensor(3, 4, -4, 4);
  const Var x = tape.leaf(x0);
  const Var y = tape.sum(tape.sigmoid(x));
  tape.backward(y);
  const Tensor s = map(x0, [](double v) { return 1 / (1 + std::exp(-v)); });
  double want_y = 0;
  for (double v : s.v) want_y += v;
  EXPECT_NEAR(tape.value(y).v[0], want_y, kTol * want_y);
  expect_close(tape.grad(x), map(s, [](double v) { return v * (1 - v); }), kTol, "dy/dx");
}

TEST(Tape, TanhGradientIsOneMinusTanhSquared) {
  Rng rng{2};
  Tape tape;
  const Tensor x0 = rng.tensor(2, 5, -3, 3);
  const Var x = tape.leaf(x0);
  tape.backward(tape.sum(tape.tanh(x)));
  const Tensor want = map(x0, [](double v) { return 1 - std::tanh(v) * std::tanh(v); });
  expect_close(tape.grad(x), want, kTol, "d sum tanh(x)/dx");
}

TEST(Tape, LogGradientIsReciprocal) {
  Rng rng{3};
  Tape tape;
  const Tensor x0 = rng.tensor(4, 2, 0.05, 5);
  const Var x = tape.leaf(x0);
  tape.backward(tape.sum(tape.log(x)));
  expect_close(tape.grad(x), map(x0, [](double v) { return 1 / v; }), kTol, "d sum log(x)/dx");
}

TEST(Tape, MatmulGradientIsOnesTimesBTransposed) {
  // y = sum(A B): dy/dA = 1 B^T (each row: B's row sums), dy/dB = A^T 1 (each column: A's
  // column sums).
  Tape tape;
  const Var A = tape.leaf(Tensor(2, 3, {1, 2, 3, 4, 5, 6}));
  const Var B = tape.leaf(Tensor(3, 2, {7, 8, 9, 10, 11, 12}));
  const Var C = tape.matmul(A, B);
  tape.backward(tape.sum(C));
  expect_close(tape.value(C), Tensor(2, 2, {58, 64, 139, 154}), kTol, "A B");
  expect_close(tape.grad(A), Tensor(2, 3, {15, 19, 23, 15, 19, 23}), kTol, "dy/dA");
  expect_close(tape.grad(B), Tensor(3, 2, {5, 5, 7, 7, 9, 9}), kTol, "dy/dB");
}

TEST(Tape, SoftmaxCrossEntropyGradientIsPMinusY) {
  // L = -sum y log softmax(z) with every row of y summing to 1: dL/dz = softmax(z) - y.
  Rng rng{4};
  Tape tape;
  const Tensor z0 = rng.tensor(3, 5, -2, 2);
  Tensor y0 = rng.tensor(3, 5, 0, 1);
  for (int64_t r = 0; r < 3; ++r) {
    double s = 0;
    for (int64_t c = 0; c < 5; ++c) s += y0(r, c);
    for (int64_t c = 0; c < 5; ++c) y0(r, c) /= s;
  }
  const Var z = tape.leaf(z0);
  const Var y = tape.constant(y0);
  const Var p = tape.softmax(z);
  tape.backward(tape.scale(tape.sum(tape.mul(y, tape.log(p))), -1.0));
  Tensor want(3, 5), p_want(3, 5);
  for (int64_t r = 0; r < 3; ++r) {
    double s = 0;
    for (int64_t c = 0; c < 5; ++c) s += std::exp(z0(r, c));
    for (int64_t c = 0; c < 5; ++c) {
      p_want(r, c) = std::exp(z0(r, c)) / s;
      want(r, c) = p_want(r, c) - y0(r, c);
    }
  }
  expect_close(tape.value(p), p_want, kTol, "softmax(z)");
  expect_close(tape.grad(z), want, kTol, "dL/dz");
  expect_close(tape.grad(y), Tensor(3, 5), kTol, "constant y");
}

TEST(Tape, SoftmaxAndSigmoidAreStableForLargeInputs) {
  Tape tape;
  const Var p = tape.softmax(tape.leaf(Tensor(1, 3, {1000, 1001, 1002})));
  const double e = std::exp(1.0), s = 1 + e + e * e;
  expect_close(tape.value(p), Tensor(1, 3, {1 / s, e / s, e * e / s}), kTol, "softmax");
  const Var q = tape.sigmoid(tape.leaf(Tensor(1, 2, {-800, 800})));
  expect_close(tape.value(q), Tensor(1, 2, {0, 1}), kTol, "sigmoid");
}

TEST(Tape, BroadcastAddBiasGradientIsColumnSums) {
  // y = sum((x + b) * W) with b [1,n] broadcast: dy/dx = W, dy/db = W's column sums. And for
  // x - b: dy/db = minus the column sums.
  Rng rng{5};
  const Tensor x0 = rng.tensor(4, 3, -1, 1), b0 = rng.tensor(1, 3, -1, 1);
  const Tensor W0 = rng.tensor(4, 3, -2, 2);
  Tensor colsum(1, 3);
  for (int64_t r = 0; r < 4; ++r)
    for (int64_t c = 0; c < 3; ++c) colsum(0, c) += W0(r, c);
  for (bool minus : {false, true}) {
    Tape tape;
    const Var x = tape.leaf(x0), b = tape.leaf(b0), W = tape.constant(W0);
    const Var xb = minus ? tape.sub(x, b) : tape.add(x, b);
    tape.backward(tape.sum(tape.mul(xb, W)));
    Tensor xb_want = x0;
    for (int64_t r = 0; r < 4; ++r)
      for (int64_t c = 0; c < 3; ++c) xb_want(r, c) += (minus ? -1 : 1) * b0(0, c);
    expect_close(tape.value(xb), xb_want, kTol, "x +- b");
    expect_close(tape.grad(x), W0, kTol, "dy/dx");
    expect_close(tape.grad(b), map(colsum, [&](double v) { return minus ? -v : v; }), kTol,
                 minus ? "dy/db (sub)" : "dy/db (add)");
  }
}

TEST(Tape, GatherRowsAccumulatesRepeatedIds) {
  // y = sum(E[ids] * C): row ids[k] of dE receives C's row k, summed over repeats.
  Rng rng{6};
  Tape tape;
  const Tensor E0 = rng.tensor(4, 2, -1, 1), C0 = rng.tensor(4, 2, -1, 1);
  const Var E = tape.leaf(E0);
  const Var G = tape.gather_rows(E, {2, 0, 2, 2});
  tape.backward(tape.sum(tape.mul(G, tape.constant(C0))));
  Tensor want(4, 2);
  for (int64_t c = 0; c < 2; ++c) {
    want(0, c) = C0(1, c);
    want(2, c) = C0(0, c) + C0(2, c) + C0(3, c);
  }
  expect_close(
      tape.value(G),
      Tensor(4, 2,
             {E0(2, 0), E0(2, 1), E0(0, 0), E0(0, 1), E0(2, 0), E0(2, 1), E0(2, 0), E0(2, 1)}),
      kTol, "E[ids]");
  expect_close(tape.grad(E), want, kTol, "dy/dE");
}

TEST(Tape, MulFollowsProductRule) {
  Rng rng{7};
  const Tensor a0 = rng.tensor(3, 4, -2, 2), b0 = rng.tensor(3, 4, -2, 2);
  const Tensor r0 = rng.tensor(1, 4, -2, 2);
  {  // d sum(a b)/da = b, /db = a
    Tape tape;
    const Var a = tape.leaf(a0), b = tape.leaf(b0);
    tape.backward(tape.sum(tape.mul(a, b)));
    expect_close(tape.grad(a), b0, kTol, "d sum(ab)/da");
    expect_close(tape.grad(b), a0, kTol, "d sum(ab)/db");
  }
  {  // d sum(a a)/da = 2a: both operands are the same node, both contributions add
    Tape tape;
    const Var a = tape.leaf(a0);
    tape.backward(tape.sum(tape.mul(a, a)));
    expect_close(tape.grad(a), map(a0, [](double v) { return 2 * v; }), kTol, "d sum(aa)/da");
  }
  {  // broadcast row r [1,n]: d sum(a r)/dr = a's column sums, /da = r on every row
    Tape tape;
    const Var a = tape.leaf(a0), r = tape.leaf(r0);
    tape.backward(tape.sum(tape.mul(a, r)));
    Tensor da(3, 4), dr(1, 4);
    for (int64_t i = 0; i < 3; ++i)
      for (int64_t c = 0; c < 4; ++c) da(i, c) = r0(0, c), dr(0, c) += a0(i, c);
    expect_close(tape.grad(a), da, kTol, "d sum(a r)/da");
    expect_close(tape.grad(r), dr, kTol, "d sum(a r)/dr");
  }
}

TEST(Tape, CubeGradientIsThreeXSquared) {
  Rng rng{8};
  Tape tape;
  const Tensor x0 = rng.tensor(2, 3, -2, 2);
  const Var x = tape.leaf(x0);
  const Var y = tape.sum(tape.mul(tape.mul(x, x), x));
  tape.backward(y);
  double want_y = 0;
  for (double v : x0.v) want_y += v * v * v;
  EXPECT_NEAR(tape.value(y).v[0], want_y, kTol * std::abs(want_y));
  expect_close(tape.grad(x), map(x0, [](double v) { return 3 * v * v; }), kTol, "d sum x^3/dx");
}

TEST(Tape, ScaleMultipliesGradient) {
  Tape tape;
  const Var x = tape.leaf(Tensor(2, 2, {1, -2, 3, -4}));
  tape.backward(tape.sum(tape.scale(x, -2.5)));
  expect_close(tape.grad(x), Tensor(2, 2, {-2.5, -2.5, -2.5, -2.5}), kTol, "d sum(-2.5x)/dx");
}

TEST(Tape, IndexOpsRouteGradients) {
  Rng rng{9};
  const Tensor A0 = rng.tensor(4, 3, -1, 1), C0 = rng.tensor(3, 4, -1, 1);
  {  // y = A(2,1) + sum(A[1:3]): rows 1 and 2 get 1, (2,1) gets one more
    Tape tape;
    const Var A = tape.leaf(A0);
    tape.backward(tape.add(tape.at(A, 2, 1), tape.sum(tape.rows(A, 1, 2))));
    expect_close(tape.grad(A), Tensor(4, 3, {0, 0, 0, 1, 1, 1, 1, 2, 1, 0, 0, 0}), kTol,
                 "at + rows");
  }
  {  // y = sum(A^T * C): dA = C^T
    Tape tape;
    const Var A = tape.leaf(A0);
    tape.backward(tape.sum(tape.mul(tape.transpose(A), tape.constant(C0))));
    Tensor Ct(4, 3);
    for (int64_t i = 0; i < 3; ++i)
      for (int64_t j = 0; j < 4; ++j) Ct(j, i) = C0(i, j);
    expect_close(tape.grad(A), Ct, kTol, "transpose");
  }
  {  // y = sum([P; Q] * C) with P [1,4], Q [2,4]: dP, dQ are C's rows 0 and 1..2
    Tape tape;
    const Var P = tape.leaf(rng.tensor(1, 4, -1, 1)), Q = tape.leaf(rng.tensor(2, 4, -1, 1));
    const Var PQ = tape.concat_rows({P, Q});
    tape.backward(tape.sum(tape.mul(PQ, tape.constant(C0))));
    EXPECT_EQ(tape.value(PQ).v[4], tape.value(Q).v[0]);
    expect_close(tape.grad(P), Tensor(1, 4, {C0(0, 0), C0(0, 1), C0(0, 2), C0(0, 3)}), kTol,
                 "concat dP");
    expect_close(
        tape.grad(Q),
        Tensor(2, 4,
               {C0(1, 0), C0(1, 1), C0(1, 2), C0(1, 3), C0(2, 0), C0(2, 1), C0(2, 2), C0(2, 3)}),
        kTol, "concat dQ");
  }
}

TEST(Tape, UnreachedNodesAndConstantsHaveZeroGradient) {
  Tape tape;
  const Var x = tape.leaf(Tensor(1, 2, {0.5, -1}));
  const Var c = tape.constant(Tensor(1, 2, {3, 4}));
  const Var side = tape.tanh(x);  // made before y, but y does not use it
  const Var y = tape.sum(tape.mul(x, c));
  const Var later = tape.sigmoid(x);  // made after y
  tape.backward(y);
  expect_close(tape.grad(x), Tensor(1, 2, {3, 4}), kTol, "dy/dx");
  expect_close(tape.grad(c), Tensor(1, 2), kTol, "constant");
  expect_close(tape.grad(side), Tensor(1, 2), kTol, "side branch");
  expect_close(tape.grad(later), Tensor(1, 2), kTol, "node after y");
  // A second backward from another output recomputes from zero instead of accumulating.
  tape.backward(tape.sum(x));
  expect_close(tape.grad(x), Tensor(1, 2, {1, 1}), kTol, "second backward");
}

// Expects `f` to throw std::invalid_argument whose message contains every string in `parts`.
template <class F>
void expect_invalid(F f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no exception; expected one mentioning " << parts[0];
  } catch (const std::invalid_argument& e) {
    for (const std::string& s : parts)
      EXPECT_NE(std::string(e.what()).find(s), std::string::npos) << e.what() << " lacks " << s;
  }
}

TEST(Tape, RejectsBadShapesNamingTheOp) {
  Tape tape;
  const Var a = tape.leaf(Tensor(2, 3));
  const Var b = tape.leaf(Tensor(2, 2));
  expect_invalid([&] { tape.matmul(a, a); }, {"matmul", "[2x3]"});
  expect_invalid([&] { tape.add(a, b); }, {"add", "[2x3]", "[2x2]"});
  expect_invalid([&] { tape.sub(a, b); }, {"sub", "[2x2]"});
  expect_invalid([&] { tape.mul(a, tape.leaf(Tensor(1, 2))); }, {"mul", "[1x2]"});
  expect_invalid([&] { tape.rows(a, 1, 2); }, {"rows", "[2x3]"});
  expect_invalid([&] { tape.gather_rows(a, {0, 2}); }, {"gather_rows", "id 2"});
  expect_invalid([&] { tape.at(a, 0, 3); }, {"at", "[2x3]"});
  expect_invalid([&] { tape.concat_rows({a, b}); }, {"concat_rows"});
  expect_invalid([&] { tape.backward(a); }, {"backward", "1x1", "[2x3]"});
  expect_invalid([&] { tape.tanh(Var{99}); }, {"tanh", "99"});
  expect_invalid([] { Tensor(2, 2, {1, 2, 3}); }, {"Tensor", "[2x2]"});
  EXPECT_THROW(tape.grad(a), std::logic_error);  // no backward yet
}

}  // namespace
