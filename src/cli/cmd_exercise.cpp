// `lstmgrad exercise`: the handout's Exercises 1-3, its update, and Equation 3 against BPTT.
#include <fmt/format.h>

#include <cmath>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "cli/commands.hpp"
#include "cli/format.hpp"
#include "lstmgrad/exercise.hpp"

namespace lstmgrad::cli {

namespace {

struct ExerciseOptions {
  std::string values;
  bool json = false;
  double lr = 0.1;
  int steps = 1;
};

void print_exercise1() {
  fmt::print(
      "Exercise 1: the blanks, filled (t = 1, h^0 a constant)\n"
      "  dh_1/ds_1  = o_1 (1 - tanh^2(s_1))\n"
      "  ds_1/da_1  = i_1\n"
      "  da_1/dV_a1 = (1 - tanh^2(q_1)) (x^1)^T        with q_1 = V_a1 x^1 + U_a1 h^0 + b_1\n"
      "    slip: the handout's step \"da_1/dV_a11 = 1 - tanh^2(q_1)\" drops the factor x_1^1\n"
      "    (harmless below, where x_1^1 = 1): da_1/dV_a11 = (1 - tanh^2(q_1)) x_1^1.\n"
      "  dL/dh_1    = p_1 - y_1                         (appendix, using sum_k y_k = 1)\n"
      "  dL/dV_a1   = (p_1 - y_1) o_1 (1 - tanh^2(s_1)) i_1 (1 - tanh^2(q_1)) (x^1)^T\n"
      "  appendix boxes: dp_1/dh_1 = p_1 - p_1^2 = p_1 (1 - p_1); dp_a/dh_1 = -p_a p_1 for a != "
      "1\n\n");
}

void print_exercise2(const HandoutValues& v, const Exercise2& e) {
  fmt::print("Exercise 2: the numbers\n");
  fmt::print("  given: p_1 = {}, y_1 = {}, o_1 = {}, i_1 = {}, s_1^0 = {}, b_1 = {},\n", num(v.p1),
             num(v.y1), num(v.o1), num(v.i1), num(v.s0), num(v.b1));
  fmt::print("         V_a1 = {}, U_a1 = {}, x^1 = {}, h^0 = {}\n", vec(v.Va1), vec(v.Ua1),
             vec(v.x), vec(v.h0));
  fmt::print(
      "  f_1 = {}: the handout does not give f; its hint tanh^2(1.9998) implies f_1 s_1^0 = 1\n",
      num(v.f1));
  fmt::print(
      "  p_1 and y_1 are taken as given: p_1 = 1 with y_1 = 0.5 cannot come from a softmax\n"
      "  over more than one class (see the consistent example below)\n");
  fmt::print(
      "  forward: q_1 = {}, a_1 = tanh(q_1) = {}, s_1 = i_1 a_1 + f_1 s_1^0 = {}, h_1 = {}\n\n",
      num(e.q), num(e.a), num(e.s), num(e.h));
  fmt::print("  {:<12} {:<36} {:<36}\n", "", "exact", "with the handout's rounded hints");
  fmt::print("  {:<12} {:<36} {:<36}\n", "dL/dh_1", num(e.dL_dh), num(e.dL_dh));
  fmt::print("  {:<12} {:<36} {:<36}\n", "dh_1/ds_1", num(e.dh_ds),
             fmt::format("{} = o_1 (1 - {})", num(e.hint_dh_ds), num(e.hint_tanh2_s)));
  fmt::print("  {:<12} {:<36} {:<36}\n", "ds_1/da_1", num(e.ds_da), num(e.ds_da));
  fmt::print("  {:<12} {:<36} {:<36}\n", "da_1/dV_a1", vec(e.da_dVa1),
             fmt::format("{} = (1 - {}) x", vec(e.hint_da_dVa1, 4), num(e.hint_tanh2_q)));
  fmt::print("  {:<12} {:<36} {:<36}\n", "dL/dV_a1", vec(e.dL_dVa1), vec(e.hint_dL_dVa1, 4));
  fmt::print("  the rounded hints change dL/dV_a1 by {:+.1f}% (relative difference {})\n\n",
             100 * e.hint_rel_diff[0], vec(e.hint_rel_diff, 3));
}

void print_exercise3(const Exercise2& e) {
  fmt::print(
      "Exercise 3: the same gradient two other ways (lstmgrad's tape stands in for Theano)\n");
  fmt::print("  {:<30} {:<36} max rel. diff from hand\n", "", "dL/dV_a1");
  fmt::print("  {:<30} {:<36}\n", "hand-derived (cell backward)", vec(e.dL_dVa1));
  fmt::print("  {:<30} {:<36} {:.2e}\n", "autodiff tape", vec(e.autodiff_dL_dVa1),
             e.autodiff_rel_err);
  fmt::print("  {:<30} {:<36} {:.2e}\n\n", "central differences (5-point)", vec(e.fd_dL_dVa1),
             e.fd_rel_err);
  fmt::print("The update, V_a1 <- V_a1 - eta dL/dV_a1 with eta = {}\n", num(e.lr));
  fmt::print("  slip: the handout writes V_a = V_a + eta dL/dV_a; gradient descent subtracts.\n");
  fmt::print("  V_a1 {} -> {}   (the handout's sign would give {})\n\n", vec(e.Va1_before, 12),
             vec(e.Va1_after, 12), vec(e.Va1_after_handout_sign, 12));
}

void print_consistent(const ConsistentUpdate& u, double lr) {
  fmt::print(
      "A consistent example: X = 2, H = 2 classes, p = softmax(h) (weights: docs/derivation.md)\n");
  fmt::print("  p = {}, y = {}\n", vec(u.p, 6), vec(u.y, 6));
  fmt::print("  dL/dV_a1: hand {}, tape {}, finite differences {}\n", vec(u.dL_dVa1, 8),
             vec(u.autodiff_dL_dVa1, 8), vec(u.fd_dL_dVa1, 8));
  fmt::print("  L before the update                 {:.9f}\n", u.loss_before);
  fmt::print("  L after V_a1 - eta dL/dV_a1 (eta {}) {:.9f}  ({:+.3e}: lower)\n", num(lr),
             u.loss_after, u.loss_after - u.loss_before);
  fmt::print("  L after the handout's V_a1 + eta g  {:.9f}  ({:+.3e}: higher)\n\n",
             u.loss_after_handout_sign, u.loss_after_handout_sign - u.loss_before);
}

void print_multistep(const MultiStep& m) {
  fmt::print("dL/dV_a1 over {} steps (L = sum_t L^t), the consistent example\n", m.steps);
  fmt::print("  {:<44} {}\n", "Equation 3 as written (summed over t)", vec(m.equation3));
  fmt::print("  {:<44} {}\n", "full BPTT (hand-derived, cell backward)", vec(m.bptt));
  fmt::print("  {:<44} {}\n", "autodiff tape", vec(m.autodiff));
  fmt::print("  {:<44} {}\n", "central differences", vec(m.fd));
  fmt::print("  Equation 3 is off by {:.1f}% (max rel.); BPTT vs tape {:.1e}, BPTT vs FD {:.1e}\n",
             100 * m.equation3_rel_err, m.bptt_vs_autodiff_rel_err, m.bptt_vs_fd_rel_err);
  if (m.terms.empty()) {
    fmt::print("\n");
    return;
  }
  fmt::print("  every path from V_a1 to L, by the edge it takes from t = 1 to t = 2:\n");
  for (const PathTerm& t : m.terms)
    fmt::print("    {:<8} {:<62} {}\n", t.in_equation3 ? "eq. 3" : "MISSING", t.path,
               vec(t.dL_dVa1, 6));
  fmt::print("  the terms add up to the full BPTT gradient; Equation 3 keeps the first three.\n\n");
}

nlohmann::json to_json(const Exercise2& e, const ConsistentUpdate& u,
                       const std::optional<MultiStep>& m) {
  nlohmann::json j;
  j["forward"] = {{"q", e.q}, {"a", e.a}, {"s", e.s}, {"h", e.h}};
  j["dL_dh"] = e.dL_dh, j["dh_ds"] = e.dh_ds, j["ds_da"] = e.ds_da;
  j["da_dVa1"] = e.da_dVa1, j["dL_dVa1"] = e.dL_dVa1;
  j["hint"] = {{"tanh2_q", e.hint_tanh2_q}, {"tanh2_s", e.hint_tanh2_s},
               {"dh_ds", e.hint_dh_ds},     {"da_dVa1", e.hint_da_dVa1},
               {"dL_dVa1", e.hint_dL_dVa1}, {"rel_diff", e.hint_rel_diff}};
  j["autodiff"] = {{"dL_dVa1", e.autodiff_dL_dVa1}, {"max_rel_err", e.autodiff_rel_err}};
  j["finite_difference"] = {{"dL_dVa1", e.fd_dL_dVa1}, {"max_rel_err", e.fd_rel_err}};
  j["update"] = {{"lr", e.lr},
                 {"Va1_before", e.Va1_before},
                 {"Va1_after", e.Va1_after},
                 {"Va1_after_handout_sign", e.Va1_after_handout_sign}};
  j["consistent_example"] = {{"p", u.p},
                             {"y", u.y},
                             {"dL_dVa1", u.dL_dVa1},
                             {"autodiff_dL_dVa1", u.autodiff_dL_dVa1},
                             {"fd_dL_dVa1", u.fd_dL_dVa1},
                             {"loss_before", u.loss_before},
                             {"loss_after", u.loss_after},
                             {"loss_after_handout_sign", u.loss_after_handout_sign}};
  if (m) {
    nlohmann::json terms = nlohmann::json::array();
    for (const PathTerm& t : m->terms)
      terms.push_back({{"path", t.path}, {"in_equation3", t.in_equation3}, {"dL_dVa1", t.dL_dVa1}});
    j["steps"] = {{"T", m->steps},           {"equation3", m->equation3},  {"bptt", m->bptt},
                  {"autodiff", m->autodiff}, {"finite_difference", m->fd}, {"paths", terms}};
  }
  return j;
}

void run(const ExerciseOptions& o) {
  const HandoutValues v = o.values.empty() ? HandoutValues{} : read_handout_values(o.values);
  const Exercise2 e = run_exercise2(v, o.lr);
  const ConsistentUpdate u = run_consistent_update(o.lr);
  std::optional<MultiStep> m;
  if (o.steps >= 2) m = run_multistep(o.steps);
  if (o.json) {
    std::cout << to_json(e, u, m).dump(2) << "\n";
    return;
  }
  fmt::print(
      "lstmgrad exercise: \"Exercise: Updating a parameter matrix\" (Fujinuma, 2017), "
      "computed\n\n");
  print_exercise1();
  print_exercise2(v, e);
  print_exercise3(e);
  print_consistent(u, o.lr);
  if (m) print_multistep(*m);
}

}  // namespace

void register_exercise(CLI::App& app);
const CommandRegistrar kRegistrar(10, register_exercise);

void register_exercise(CLI::App& app) {
  auto opts = std::make_shared<ExerciseOptions>();
  CLI::App* cmd =
      app.add_subcommand("exercise", "The handout's Exercises 1-3, computed and checked");
  cmd->add_option("--values", opts->values,
                  "JSON file with other numbers for Exercise 2 (docs/cli.md)");
  cmd->add_flag("--json", opts->json, "Machine-readable output");
  cmd->add_option("--lr", opts->lr, "Learning rate eta of the update")->capture_default_str();
  cmd->add_option("--steps", opts->steps,
                  "Also compare Equation 3 with full BPTT over this many steps")
      ->check(CLI::Range(1, 100))
      ->capture_default_str();
  cmd->callback([opts] { run(*opts); });
}

}  // namespace lstmgrad::cli
