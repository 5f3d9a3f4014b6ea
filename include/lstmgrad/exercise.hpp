// lstmgrad: the handout's exercises computed ("Exercise: Updating a parameter matrix").
//
// Exercise 2 takes p, y, o, i, f, s0 as given numbers (not computed from weights) and needs only
// the first row of the candidate's weights: q = V_a1 x + U_a1 h0 + b_1, a_1 = tanh(q),
// s_1 = i_1 a_1 + f_1 s0_1, h_1 = o_1 tanh(s_1), dL/dh_1 = p_1 - y_1.
// A consistent example (p from a softmax over 2 classes) runs the whole cell end to end.
#pragma once
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "lstmgrad/cell.hpp"

namespace lstmgrad {

// The quantities of Exercise 2; `--values FILE.json` supplies them under these names.
struct HandoutValues {
  double p1 = 1.0, y1 = 0.5;  // prediction and gold for class 1
  double o1 = 1.0, i1 = 1.0;  // output and input gates
  double f1 = 1.0;            // forget gate: not given by the handout; its hint implies 1
  double s0 = 1.0;            // s_1^0, the previous cell state
  double b1 = 1.0;
  std::vector<double> Va1{1.0, 1.0}, Ua1{1.0, 1.0};  // first rows of V_a [X] and U_a [H]
  std::vector<double> x{1.0, 1.0}, h0{1.0, 1.0};     // x^1 [X], h^0 [H]
  // The handout's rounded hints tanh^2(q) ~ 0.9998 and tanh^2(s) ~ 0.9293; when absent, the
  // hints are tanh^2 rounded to 4 decimals, as the handout rounds.
  std::optional<double> hint_tanh2_q = 0.9998, hint_tanh2_s = 0.9293;
};

// Reads FILE.json: required keys p1 y1 o1 i1 s0 b1 (numbers), Va1 x (lists of equal length X),
// Ua1 h0 (lists of equal length H); optional f1 (default 1) and hint_tanh2_q, hint_tanh2_s
// (default: tanh^2 rounded to 4 decimals). Throws InputError naming the file and key for a missing
// file, malformed JSON, a missing or unknown key, a wrong type, a vector of the wrong length, or a
// non-finite number (NaN, Infinity).
HandoutValues read_handout_values(const std::filesystem::path& path);

struct Exercise2 {
  double q = 0, a = 0, s = 0, h = 0;
  double dL_dh = 0, dh_ds = 0, ds_da = 0;
  std::vector<double> da_dVa1, dL_dVa1;  // [X]
  // With the rounded hints: dh/ds = o (1 - hint_s), da/dV_a1 = (1 - hint_q) x.
  double hint_tanh2_q = 0, hint_tanh2_s = 0, hint_dh_ds = 0;
  std::vector<double> hint_da_dVa1, hint_dL_dVa1, hint_rel_diff;  // rel: (hint - exact) / exact
  // Exercise 3: the same gradient from the autodiff tape and from central differences.
  std::vector<double> autodiff_dL_dVa1, fd_dL_dVa1;
  double autodiff_rel_err = 0, fd_rel_err = 0;  // max over entries of |other - hand| / |hand|
  // The update, done right (minus) and as the handout writes it (plus).
  double lr = 0.1;
  std::vector<double> Va1_before, Va1_after, Va1_after_handout_sign;
};

Exercise2 run_exercise2(const HandoutValues& v, double lr);

// The consistent example's cell (X = 2, H = 2, moderate weights so no gate saturates) and a
// T-step sequence for it: inputs x^t [2], soft targets y^t [2], initial state h^0, s^0 [2].
struct ExampleSequence {
  std::vector<std::vector<double>> x, y;
  std::vector<double> h0, s0;
};
CellParams<double> example_cell();
ExampleSequence example_sequence(int T);

// The consistent example: a 2-class cell (X = 2, H = 2) with p = softmax(h); one SGD step on
// V_a1 lowers the loss, the handout's sign raises it.
struct ConsistentUpdate {
  std::vector<double> p, y;     // [2]
  std::vector<double> dL_dVa1;  // hand-derived (cell backward)
  std::vector<double> autodiff_dL_dVa1, fd_dL_dVa1;
  double loss_before = 0, loss_after = 0, loss_after_handout_sign = 0;
  std::vector<double> Va1_before, Va1_after, Va1_after_handout_sign;
};

ConsistentUpdate run_consistent_update(double lr);

// dL/dV_a1 for a T-step sequence (L = sum_t L^t) of the consistent example, three ways.
struct PathTerm {
  std::string path;             // e.g. "L^2 via s_1^1 -> s_1^2 (forget path)"
  bool in_equation3 = false;    // whether Equation 3 keeps this term
  std::vector<double> dL_dVa1;  // [X]
};

struct MultiStep {
  int steps = 2;
  std::vector<double> equation3, bptt, autodiff, fd;  // dL/dV_a1 [X]
  double equation3_rel_err = 0, bptt_vs_autodiff_rel_err = 0, bptt_vs_fd_rel_err = 0;
  std::vector<PathTerm> terms;  // for steps == 2: every path by the edge it takes from t=1 to t=2
};

MultiStep run_multistep(int steps);

}  // namespace lstmgrad
