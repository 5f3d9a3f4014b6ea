// The consistent example behind the handout: a 2-class cell (X = 2, H = 2) whose p comes from a
// softmax over h, run for one step (the update) and for T steps (Equation 3 against full BPTT).
// Derivation: docs/derivation.md, "Backpropagation through time" and "The handout's slips".
#include <cmath>

#include "autodiff/tape_math.hpp"
#include "core/cell_math.hpp"
#include "core/small_vec.hpp"
#include "lstmgrad/autodiff.hpp"
#include "lstmgrad/cell.hpp"
#include "lstmgrad/exercise.hpp"
#include "lstmgrad/finite_diff.hpp"
#include "lstmgrad/loss.hpp"

namespace lstmgrad {

using core::axpy;
using core::max_rel_err;
using core::scaled;

namespace {

constexpr int64_t kX = 2, kH = 2, kRowVa1 = 2 * kH;  // V_a1 is row 2H of V = [V_i; V_f; V_a; V_o]

// Forward over the sequence; what the hand backward needs.
struct Trace {
  std::vector<std::vector<double>> h, s, gates, p;  // h, s: index 0 is the initial state
  double loss = 0;
};

Trace run_forward(const CellParams<double>& c, const ExampleSequence& q) {
  Trace tr;
  tr.h.push_back(q.h0), tr.s.push_back(q.s0);
  for (size_t t = 0; t < q.x.size(); ++t) {
    std::vector<double> h(kH), s(kH), g(4 * kH), p(kH);
    cell_forward(h.data(), s.data(), g.data(), q.x[t].data(), tr.h.back().data(),
                 tr.s.back().data(), c.view(), 1);
    tr.loss += softmax_xent_forward(p.data(), h.data(), q.y[t].data(), nullptr, 1, kH);
    tr.h.push_back(h), tr.s.push_back(s), tr.gates.push_back(g), tr.p.push_back(p);
  }
  return tr;
}

// Full BPTT by hand: dL/dV [4H,X]; also keeps step T's dz and ds_prev for the path terms.
struct Backward {
  std::vector<double> dV, last_dz, last_ds_prev;
};

Backward run_backward(const CellParams<double>& c, const ExampleSequence& q, const Trace& tr) {
  Backward bw;
  bw.dV.assign(4 * kH * kX, 0.0);
  std::vector<double> dU(4 * kH * kH), db(4 * kH), dx(kX), dz(4 * kH);
  std::vector<double> dh_next(kH, 0.0), ds_next(kH, 0.0), dh(kH), dh_prev(kH), ds_prev(kH);
  for (size_t t = q.x.size(); t-- > 0;) {
    softmax_xent_backward(dh.data(), tr.p[t].data(), q.y[t].data(), nullptr, 1.0, 1, kH);
    for (int64_t k = 0; k < kH; ++k) dh[k] += dh_next[k];  // from L^t and from step t+1
    cell_backward(dx.data(), dh_prev.data(), ds_prev.data(), {bw.dV.data(), dU.data(), db.data()},
                  dz.data(), dh.data(), ds_next.data(), tr.gates[t].data(), tr.s[t + 1].data(),
                  q.x[t].data(), tr.h[t].data(), tr.s[t].data(), c.view(), 1);
    if (t + 1 == q.x.size()) bw.last_dz = dz, bw.last_ds_prev = ds_prev;
    dh_next = dh_prev, ds_next = ds_prev;
  }
  return bw;
}

std::vector<double> row_Va1(const std::vector<double>& V) {
  return {V.begin() + kRowVa1 * kX, V.begin() + (kRowVa1 + 1) * kX};
}

// The loss as a function of V_a1 alone (for finite differences).
double loss_at(CellParams<double> c, const ExampleSequence& q, std::span<const double> Va1) {
  std::copy(Va1.begin(), Va1.end(), c.V.begin() + kRowVa1 * kX);
  return run_forward(c, q).loss;
}

// The same loss on the autodiff tape, built from the cell's forward alone (core/cell_math.hpp,
// the tape doing the derivatives); returns dL/dV_a1.
std::vector<double> tape_dVa1(const CellParams<double>& c, const ExampleSequence& q) {
  ad::Tape tp;
  const ad::Var V = tp.leaf({4 * kH, kX, c.V});
  const ad::Var U = tp.constant({4 * kH, kH, c.U});
  const ad::Var b = tp.constant({4 * kH, 1, c.b});
  ad::Var h = tp.constant({kH, 1, q.h0}), s = tp.constant({kH, 1, q.s0});
  ad::Var loss = tp.constant({1, 1, {0.0}});
  for (size_t t = 0; t < q.x.size(); ++t) {
    const ad::Var x = tp.constant({kX, 1, q.x[t]});
    const ad::Var z = tp.add(tp.add(tp.matmul(V, x), tp.matmul(U, h)), b);  // [4H,1]
    core::CellGates<ad::Var> g;
    const ad::Var s_prev = s;
    core::cell_forward(ad::TapeMath{tp}, tp.rows(z, 0, kH), tp.rows(z, kH, kH),
                       tp.rows(z, 2 * kH, kH), tp.rows(z, 3 * kH, kH), s_prev, nullptr, g, s, h);
    const ad::Var logp = tp.log(tp.softmax(tp.transpose(h)));  // [1,H]
    const ad::Var y = tp.constant({1, kH, q.y[t]});
    loss = tp.sub(loss, tp.sum(tp.mul(y, logp)));  // L^t = -sum_k y_k log p_k
  }
  tp.backward(loss);
  return row_Va1(tp.grad(V).v);
}

}  // namespace

// Moderate weights, so that no gate saturates and the gradient is far from zero.
CellParams<double> example_cell() {
  CellParams<double> c(kX, kH);
  c.V = {0.5, -0.4, 0.3,  0.8,     // V_i
         0.6, 0.1,  -0.2, 0.4,     // V_f
         0.4, -0.6, -0.7, 0.5,     // V_a (row 1 is V_a1)
         0.2, 0.3,  -0.5, 0.1};    // V_o
  c.U = {0.1,  -0.3, 0.2,  0.4,    // U_i
         -0.2, 0.5,  0.3,  0.1,    // U_f
         0.7,  -0.2, 0.3,  0.6,    // U_a
         0.4,  0.2,  -0.1, -0.3};  // U_o
  c.b = {0.1, -0.1, 0.2, 0.0, 0.05, -0.05, 0.1, 0.2};
  return c;
}

ExampleSequence example_sequence(int T) {
  ExampleSequence q;
  q.h0 = {0.2, -0.1}, q.s0 = {0.5, -0.3};
  for (int t = 0; t < T; ++t) {
    const double u = 0.3 * t;
    q.x.push_back({1.0 - u, 0.5 + 0.5 * std::sin(1.0 + t)});
    q.y.push_back(t % 2 == 0 ? std::vector<double>{0.8, 0.2} : std::vector<double>{0.3, 0.7});
  }
  return q;
}

ConsistentUpdate run_consistent_update(double lr) {
  const CellParams<double> c = example_cell();
  const ExampleSequence q = example_sequence(1);
  const Trace tr = run_forward(c, q);
  ConsistentUpdate u;
  u.p = tr.p[0], u.y = q.y[0];
  u.dL_dVa1 = row_Va1(run_backward(c, q, tr).dV);
  u.autodiff_dL_dVa1 = tape_dVa1(c, q);
  u.Va1_before = row_Va1(c.V);
  u.fd_dL_dVa1 = central_difference5(
      [&](std::span<const double> Va1) { return loss_at(c, q, Va1); }, u.Va1_before);
  u.loss_before = tr.loss;
  u.Va1_after = axpy(u.Va1_before, -lr, u.dL_dVa1);
  u.Va1_after_handout_sign = axpy(u.Va1_before, lr, u.dL_dVa1);
  u.loss_after = loss_at(c, q, u.Va1_after);
  u.loss_after_handout_sign = loss_at(c, q, u.Va1_after_handout_sign);
  return u;
}

namespace {

// Equation 3 as written, summed over t: only the path h_1^{t-1} -> a_1^t is followed back, with
// dh_1^{t-1}/dV_a1 taken along the same single path.
std::vector<double> equation3(const CellParams<double>& c, const ExampleSequence& q,
                              const Trace& tr) {
  std::vector<double> total(kX, 0.0), dh1_dV(kX, 0.0);  // dh_1^0/dV_a1 = 0: h^0 is constant
  const double Ua11 = c.U[kRowVa1 * kH + 0];
  for (size_t t = 0; t < q.x.size(); ++t) {
    const std::vector<double>& g = tr.gates[t];
    const double i = g[0], a = g[2 * kH], o = g[3 * kH], ts = std::tanh(tr.s[t + 1][0]);
    const double dL_dh = tr.p[t][0] - q.y[t][0];        // dE^t/dh_1^t = p_1 - y_1
    const double dh_ds = o * (1 - ts * ts), ds_da = i;  // dh_1/ds_1, ds_1/da_1
    std::vector<double> da_dV(kX);                      // da_1/dV_a1 + da_1/dh_1 dh_1/dV_a1
    for (int64_t k = 0; k < kX; ++k) da_dV[k] = (1 - a * a) * (q.x[t][k] + Ua11 * dh1_dV[k]);
    total = axpy(total, dL_dh * dh_ds * ds_da, da_dV);
    for (int64_t k = 0; k < kX; ++k) dh1_dV[k] = dh_ds * ds_da * da_dV[k];
  }
  return total;
}

// For T = 2: every path from V_a1 to L, grouped by the edge it takes from step 1 to step 2. The
// terms add up to the full gradient; Equation 3 keeps three of them.
std::vector<PathTerm> path_terms(const CellParams<double>& c, const ExampleSequence& q,
                                 const Trace& tr, const Backward& bw) {
  const std::vector<double>& g = tr.gates[0];
  const double i = g[0], a = g[2 * kH], o = g[3 * kH], ts = std::tanh(tr.s[1][0]);
  std::vector<double> ds1_dV(kX), dh1_dV(kX);  // ds_1^1/dV_a1, dh_1^1/dV_a1
  for (int64_t k = 0; k < kX; ++k) {
    ds1_dV[k] = i * (1 - a * a) * q.x[0][k];
    dh1_dV[k] = o * (1 - ts * ts) * ds1_dV[k];
  }
  const std::vector<double>& dz = bw.last_dz;            // dL^2/dz^2, blocks [i | f | a | o]
  auto via_h = [&](int block, int64_t k0, int64_t k1) {  // sum_k dz_{block,k} U_{block,k,1}
    double sum = 0;
    for (int64_t k = k0; k < k1; ++k) sum += dz[block * kH + k] * c.U[(block * kH + k) * kH];
    return scaled(dh1_dV, sum);
  };
  const std::vector<double> zero(kX, 0.0);
  return {
      {"L^1 through a_1^1 (Exercise 1's chain)", true, scaled(dh1_dV, tr.p[0][0] - q.y[0][0])},
      {"L^2 through a_1^2 with h^1 held (Equation 3, first term)", true,
       scaled(q.x[1], dz[2 * kH])},
      {"L^2 through h_1^1 -> a_1^2 (Equation 3, second term)", true, via_h(2, 0, 1)},
      {"L^2 through s_1^1 -> s_1^2 (the cell-state path, via f_1^2)", false,
       scaled(ds1_dV, bw.last_ds_prev[0])},
      {"L^2 through h_1^1 -> i^2 (input gate, every row of U_i)", false, via_h(0, 0, kH)},
      {"L^2 through h_1^1 -> f^2 (forget gate, every row of U_f)", false, via_h(1, 0, kH)},
      {"L^2 through h_1^1 -> o^2 (output gate, every row of U_o)", false, via_h(3, 0, kH)},
      {"L^2 through h_1^1 -> a_k^2, k != 1 (other rows of U_a)", false, via_h(2, 1, kH)},
  };
}

}  // namespace

MultiStep run_multistep(int steps) {
  const CellParams<double> c = example_cell();
  const ExampleSequence q = example_sequence(steps);
  const Trace tr = run_forward(c, q);
  const Backward bw = run_backward(c, q, tr);
  MultiStep m;
  m.steps = steps;
  m.bptt = row_Va1(bw.dV);
  m.equation3 = equation3(c, q, tr);
  m.autodiff = tape_dVa1(c, q);
  m.fd = central_difference5([&](std::span<const double> Va1) { return loss_at(c, q, Va1); },
                             row_Va1(c.V));
  m.equation3_rel_err = max_rel_err(m.equation3, m.bptt);
  m.bptt_vs_autodiff_rel_err = max_rel_err(m.bptt, m.autodiff);
  m.bptt_vs_fd_rel_err = max_rel_err(m.bptt, m.fd);
  if (steps == 2) m.terms = path_terms(c, q, tr, bw);
  return m;
}

}  // namespace lstmgrad
