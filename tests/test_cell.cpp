// The cell's backward against central finite differences (the tape: test_tape*.cpp).
#include <gtest/gtest.h>

#include "compare.hpp"
#include "lstmgrad/autodiff.hpp"
#include "lstmgrad/cell.hpp"
#include "lstmgrad/finite_diff.hpp"

namespace lstmgrad::test {
namespace {

struct Shape {
  int64_t B, X, H;
};

// Everything the cell reads, packed in one vector so finite differences can perturb any of it:
// V [4H,X], U [4H,H], b [4H], x [B,X], h_prev [B,H], s_prev [B,H].
struct Packed {
  Shape sh;
  size_t oV, oU, ob, ox, oh, os, n;
  explicit Packed(Shape s) : sh(s) {
    const int64_t G = 4 * s.H;
    oV = 0, oU = oV + G * s.X, ob = oU + G * s.H, ox = ob + G, oh = ox + s.B * s.X;
    os = oh + s.B * s.H, n = os + s.B * s.H;
  }
};

// A scalar that uses both outputs: F = sum(wh * h) + sum(ws * s), so dF/dh = wh, dF/ds = ws.
template <class Real>
double objective(const Packed& P, std::span<const Real> v, const std::vector<Real>& wh,
                 const std::vector<Real>& ws) {
  const Shape s = P.sh;
  std::vector<Real> h(s.B * s.H), st(s.B * s.H), gates(s.B * 4 * s.H);
  const CellWeights<Real> w{v.data() + P.oV, v.data() + P.oU, v.data() + P.ob, s.X, s.H};
  cell_forward(h.data(), st.data(), gates.data(), v.data() + P.ox, v.data() + P.oh, v.data() + P.os,
               w, s.B);
  double F = 0;
  for (size_t k = 0; k < h.size(); ++k) F += double(wh[k]) * h[k] + double(ws[k]) * st[k];
  return F;
}

// The hand-derived gradient of the objective with respect to everything in Packed.
template <class Real>
std::vector<Real> hand_gradient(const Packed& P, const std::vector<Real>& v,
                                const std::vector<Real>& wh, const std::vector<Real>& ws) {
  const Shape s = P.sh;
  std::vector<Real> h(s.B * s.H), st(s.B * s.H), gates(s.B * 4 * s.H), dz(s.B * 4 * s.H);
  std::vector<Real> g(P.n, Real(0));
  const CellWeights<Real> w{v.data() + P.oV, v.data() + P.oU, v.data() + P.ob, s.X, s.H};
  cell_forward(h.data(), st.data(), gates.data(), v.data() + P.ox, v.data() + P.oh, v.data() + P.os,
               w, s.B);
  cell_backward(g.data() + P.ox, g.data() + P.oh, g.data() + P.os,
                CellGrads<Real>{g.data() + P.oV, g.data() + P.oU, g.data() + P.ob}, dz.data(),
                wh.data(), ws.data(), gates.data(), st.data(), v.data() + P.ox, v.data() + P.oh,
                v.data() + P.os, w, s.B);
  return g;
}

class CellGradient : public ::testing::TestWithParam<std::tuple<Shape, int>> {};

TEST_P(CellGradient, MatchesCentralDifferencesInFloat64) {
  const auto [shape, seed] = GetParam();
  const Packed P(shape);
  std::mt19937_64 rng(seed);
  const std::vector<double> v = uniform(P.n, rng), wh = uniform(shape.B * shape.H, rng),
                            ws = uniform(shape.B * shape.H, rng);
  const std::vector<double> hand = hand_gradient(P, v, wh, ws);
  const std::vector<double> fd =
      central_difference([&](std::span<const double> p) { return objective(P, p, wh, ws); }, v);
  // Central differences with e = 1e-6 are accurate to O(e^2) + O(1e-16 / e) ~ 1e-10 of the
  // gradient's scale; 1e-8 leaves room for the third derivatives of sigmoid and tanh.
  EXPECT_TRUE(close("cell gradient vs finite differences", hand, fd, 1e-8));
}

TEST_P(CellGradient, Float32AgreesWithFloat64) {
  const auto [shape, seed] = GetParam();
  const Packed P(shape);
  std::mt19937_64 rng(seed + 100);
  const std::vector<double> v = uniform(P.n, rng), wh = uniform(shape.B * shape.H, rng),
                            ws = uniform(shape.B * shape.H, rng);
  const std::vector<double> ref = hand_gradient(P, v, wh, ws);
  const std::vector<float> got = hand_gradient(P, cast<float>(v), cast<float>(wh), cast<float>(ws));
  // float32 rounds each operation to 6e-8 relative; a step is a few dozen operations deep and
  // the GEMMs sum up to max(X, H, B) terms, so errors stay well below 1e-5 of the scale.
  EXPECT_TRUE(close("float32 cell gradient vs float64", got, ref, 1e-5));
}

INSTANTIATE_TEST_SUITE_P(Shapes, CellGradient,
                         ::testing::Combine(::testing::Values(Shape{1, 1, 1}, Shape{1, 2, 1},
                                                              Shape{2, 3, 4}, Shape{3, 5, 2},
                                                              Shape{4, 1, 6}),
                                            ::testing::Values(1, 2, 3)));

}  // namespace
}  // namespace lstmgrad::test

namespace lstmgrad::test {
namespace {

// The same objective on the autodiff tape, from the equations alone; returns d/d(everything).
std::vector<double> tape_gradient(const Packed& P, const std::vector<double>& v,
                                  const std::vector<double>& wh, const std::vector<double>& ws) {
  const Shape s = P.sh;
  auto slice = [&](size_t off, int64_t n) {
    return std::vector<double>(v.begin() + off, v.begin() + off + n);
  };
  ad::Tape tp;
  const ad::Var V = tp.leaf({4 * s.H, s.X, slice(P.oV, 4 * s.H * s.X)});
  const ad::Var U = tp.leaf({4 * s.H, s.H, slice(P.oU, 4 * s.H * s.H)});
  const ad::Var b = tp.leaf({4 * s.H, 1, slice(P.ob, 4 * s.H)});
  const ad::Var x = tp.leaf({s.B, s.X, slice(P.ox, s.B * s.X)});
  const ad::Var h_prev = tp.leaf({s.B, s.H, slice(P.oh, s.B * s.H)});
  const ad::Var s_prev = tp.leaf({s.B, s.H, slice(P.os, s.B * s.H)});
  auto z = [&](int gate) {  // [B,H] = x V_g^T + h_prev U_g^T + b_g
    const ad::Var Vg = tp.rows(V, gate * s.H, s.H), Ug = tp.rows(U, gate * s.H, s.H);
    const ad::Var bg = tp.transpose(tp.rows(b, gate * s.H, s.H));
    return tp.add(tp.add(tp.matmul(x, tp.transpose(Vg)), tp.matmul(h_prev, tp.transpose(Ug))), bg);
  };
  const ad::Var i = tp.sigmoid(z(0)), f = tp.sigmoid(z(1)), a = tp.tanh(z(2)), o = tp.sigmoid(z(3));
  const ad::Var st = tp.add(tp.mul(i, a), tp.mul(f, s_prev));
  const ad::Var h = tp.mul(o, tp.tanh(st));
  const ad::Var F = tp.add(tp.sum(tp.mul(h, tp.constant({s.B, s.H, wh}))),
                           tp.sum(tp.mul(st, tp.constant({s.B, s.H, ws}))));
  tp.backward(F);
  std::vector<double> g;
  for (ad::Var leaf : {V, U, b, x, h_prev, s_prev})
    g.insert(g.end(), tp.grad(leaf).v.begin(), tp.grad(leaf).v.end());
  return g;
}

TEST_P(CellGradient, MatchesAutodiffTapeInFloat64) {
  const auto [shape, seed] = GetParam();
  const Packed P(shape);
  std::mt19937_64 rng(seed + 200);
  const std::vector<double> v = uniform(P.n, rng), wh = uniform(shape.B * shape.H, rng),
                            ws = uniform(shape.B * shape.H, rng);
  // Same float64 arithmetic in a different order: agreement to rounding, far inside 1e-10.
  EXPECT_TRUE(close("cell gradient vs tape", hand_gradient(P, v, wh, ws),
                    tape_gradient(P, v, wh, ws), 1e-10));
}

}  // namespace
}  // namespace lstmgrad::test
