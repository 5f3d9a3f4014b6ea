// The handout's exercises. Formulas: docs/derivation.md, "Exercise 1" and "Exercise 2".
#include "lstmgrad/exercise.hpp"

#include <cmath>

#include "core/gates.hpp"
#include "core/small_vec.hpp"
#include "lstmgrad/autodiff.hpp"
#include "lstmgrad/finite_diff.hpp"

namespace lstmgrad {

using core::dot;
using core::max_rel_err;
using core::scaled;

namespace {

double round4(double v) {
  return std::round(v * 1e4) / 1e4;
}

// h_1 of Exercise 2 as a function of q = V_a1 x + U_a1 h_0 + b_1, the forward pass only.
double exercise_h1(const HandoutValues& v, double q) {
  return v.o1 * std::tanh(v.i1 * std::tanh(q) + v.f1 * v.s0);
}

// Exercise 3 by finite differences, one entry of V_a1 at a time: moving V_a1[k] by e moves q by
// e x_k, so each evaluation costs O(1), not a dot product over X (which made the whole O(X^2):
// 10^5 entries took minutes).
std::vector<double> exercise_finite_differences(const HandoutValues& v, double q, double dL_dh) {
  std::vector<double> g(v.x.size());
  for (size_t k = 0; k < g.size(); ++k) {
    const double xk = v.x[k];
    g[k] = central_difference5(
        [&](std::span<const double> e) { return dL_dh * exercise_h1(v, q + e[0] * xk); }, {0.0})[0];
  }
  return g;
}

// Exercise 3 on the tape: the given dL/dh_1 = p_1 - y_1 is back-propagated from h_1 by making
// the scalar (p_1 - y_1) h_1, whose gradient is exactly dL/dh_1 dh_1/dV_a1.
std::vector<double> exercise_autodiff(const HandoutValues& v) {
  const int64_t X = static_cast<int64_t>(v.x.size()), H = static_cast<int64_t>(v.h0.size());
  ad::Tape tp;
  const ad::Var Va1 = tp.leaf({1, X, v.Va1});
  const ad::Var x = tp.constant({X, 1, v.x});
  const ad::Var Ua1 = tp.constant({1, H, v.Ua1});
  const ad::Var h0 = tp.constant({H, 1, v.h0});
  const ad::Var b1 = tp.constant({1, 1, {v.b1}});
  const ad::Var q = tp.add(tp.add(tp.matmul(Va1, x), tp.matmul(Ua1, h0)), b1);
  const ad::Var a = tp.tanh(q);
  const ad::Var s = tp.add(tp.scale(a, v.i1), tp.constant({1, 1, {v.f1 * v.s0}}));
  const ad::Var h = tp.scale(tp.tanh(s), v.o1);
  const ad::Var surrogate = tp.scale(h, v.p1 - v.y1);
  tp.backward(surrogate);
  return tp.grad(Va1).v;
}

}  // namespace

Exercise2 run_exercise2(const HandoutValues& v, double lr) {
  Exercise2 e;
  const size_t X = v.x.size();
  e.q = dot(v.Va1, v.x) + dot(v.Ua1, v.h0) + v.b1;
  e.a = std::tanh(e.q);
  e.s = v.i1 * e.a + v.f1 * v.s0;
  e.h = v.o1 * std::tanh(e.s);
  // Exercise 1's factors, each from its own formula.
  e.dL_dh = v.p1 - v.y1;
  e.dh_ds = v.o1 * (1 - std::tanh(e.s) * std::tanh(e.s));
  e.ds_da = v.i1;
  e.da_dVa1 = scaled(v.x, 1 - e.a * e.a);
  // Their product, computed by the cell's own backward kernel (B = 1, H = 1): dL/dq = dz_a.
  double gates[4] = {v.i1, v.f1, e.a, v.o1}, dz[4] = {}, ds = 0;
  const double s_arr[1] = {e.s}, s0_arr[1] = {v.s0}, dh[1] = {e.dL_dh};
  core::gates_backward(dz, &ds, static_cast<const double*>(nullptr), dh, gates, s_arr, s0_arr, 1,
                       1);
  e.dL_dVa1 = scaled(v.x, dz[2]);  // q = V_a1 x + ...: dL/dV_a1 = dL/dq x^T
  // The handout's rounded hints.
  const double hq = v.hint_tanh2_q.value_or(round4(e.a * e.a));
  const double hs = v.hint_tanh2_s.value_or(round4(std::tanh(e.s) * std::tanh(e.s)));
  e.hint_tanh2_q = hq;
  e.hint_tanh2_s = hs;
  e.hint_dh_ds = v.o1 * (1 - hs);
  e.hint_da_dVa1 = scaled(v.x, 1 - hq);
  e.hint_dL_dVa1 = scaled(e.hint_da_dVa1, e.dL_dh * e.hint_dh_ds * e.ds_da);
  for (size_t k = 0; k < X; ++k)
    e.hint_rel_diff.push_back((e.hint_dL_dVa1[k] - e.dL_dVa1[k]) / e.dL_dVa1[k]);
  // Exercise 3.
  e.autodiff_dL_dVa1 = exercise_autodiff(v);
  e.fd_dL_dVa1 = exercise_finite_differences(v, e.q, e.dL_dh);
  e.autodiff_rel_err = max_rel_err(e.autodiff_dL_dVa1, e.dL_dVa1);
  e.fd_rel_err = max_rel_err(e.fd_dL_dVa1, e.dL_dVa1);
  // The update: V_a1 <- V_a1 - eta dL/dV_a1 (the handout writes +).
  e.lr = lr;
  e.Va1_before = v.Va1;
  for (size_t k = 0; k < X; ++k) {
    e.Va1_after.push_back(v.Va1[k] - lr * e.dL_dVa1[k]);
    e.Va1_after_handout_sign.push_back(v.Va1[k] + lr * e.dL_dVa1[k]);
  }
  return e;
}

}  // namespace lstmgrad
