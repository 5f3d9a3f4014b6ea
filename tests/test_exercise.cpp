// The handout's exercises: the numbers of Exercises 1-3, the consistent example, Equation 3
// against BPTT, and `lstmgrad exercise` end to end.
#include <gtest/gtest.h>

#include <chrono>
#include <nlohmann/json.hpp>

#include "cli_runner.hpp"
#include "compare.hpp"
#include "lstmgrad/exercise.hpp"

namespace lstmgrad::test {
namespace {

// 10 significant digits, as the handout's values are quoted.
void expect_digits(double got, double want, double rel = 5e-10) {
  EXPECT_NEAR(got, want, std::abs(want) * rel) << "got " << got << ", want " << want;
}

TEST(Exercise, Exercise2NumbersForTheHandoutsValues) {
  const Exercise2 e = run_exercise2(HandoutValues{}, 0.1);
  EXPECT_EQ(e.q, 5.0);
  EXPECT_EQ(e.dL_dh, 0.5);
  expect_digits(e.dh_ds, 0.07066319397);
  EXPECT_EQ(e.ds_da, 1.0);
  ASSERT_EQ(e.da_dVa1.size(), 2u);
  for (int k = 0; k < 2; ++k) {
    expect_digits(e.da_dVa1[k], 1.815832309e-4);
    expect_digits(e.dL_dVa1[k], 6.415625535e-6);
    expect_digits(e.hint_dL_dVa1[k], 7.07e-6, 1e-12);  // 0.5 * 0.0707 * 1 * 0.0002
  }
  EXPECT_NEAR(e.hint_rel_diff[0], 0.102, 0.001);  // the hints overstate by 10%
}

TEST(Exercise, Exercise3AutodiffAndFiniteDifferencesAgree) {
  const Exercise2 e = run_exercise2(HandoutValues{}, 0.1);
  EXPECT_LE(e.autodiff_rel_err, 1e-12);
  EXPECT_LE(e.fd_rel_err, 1e-6);
  EXPECT_TRUE(close("tape", e.autodiff_dL_dVa1, e.dL_dVa1, 1e-12));
}

TEST(Exercise, UpdateSubtractsTheGradient) {
  const Exercise2 e = run_exercise2(HandoutValues{}, 0.1);
  for (int k = 0; k < 2; ++k) {
    EXPECT_DOUBLE_EQ(e.Va1_after[k], 1.0 - 0.1 * e.dL_dVa1[k]);
    EXPECT_DOUBLE_EQ(e.Va1_after_handout_sign[k], 1.0 + 0.1 * e.dL_dVa1[k]);
  }
}

TEST(Exercise, OtherValuesFollowTheSameFormulas) {
  HandoutValues v;
  v.p1 = 0.3, v.y1 = 0.9, v.o1 = 0.7, v.i1 = 0.4, v.f1 = 0.6, v.s0 = -0.2, v.b1 = 0.1;
  v.Va1 = {0.2, -0.5, 0.3}, v.x = {1.5, -0.4, 0.8}, v.Ua1 = {0.1}, v.h0 = {-0.3};
  v.hint_tanh2_q.reset(), v.hint_tanh2_s.reset();
  const Exercise2 e = run_exercise2(v, 0.1);
  const double q = 0.2 * 1.5 + 0.5 * 0.4 + 0.3 * 0.8 - 0.03 + 0.1;
  const double s = 0.4 * std::tanh(q) - 0.6 * 0.2;
  const double chain = (0.3 - 0.9) * 0.7 * (1 - std::tanh(s) * std::tanh(s)) * 0.4 *
                       (1 - std::tanh(q) * std::tanh(q));
  for (int k = 0; k < 3; ++k) EXPECT_NEAR(e.dL_dVa1[k], chain * v.x[k], 1e-15);
  EXPECT_LE(e.autodiff_rel_err, 1e-12);
  EXPECT_LE(e.fd_rel_err, 1e-6);
  EXPECT_NEAR(e.hint_tanh2_q, std::round(std::tanh(q) * std::tanh(q) * 1e4) / 1e4, 1e-15);
}

TEST(Exercise, ConsistentExampleUpdateLowersTheLossAndTheHandoutsSignRaisesIt) {
  const ConsistentUpdate u = run_consistent_update(0.1);
  EXPECT_NEAR(u.p[0] + u.p[1], 1.0, 1e-15);
  EXPECT_LT(u.loss_after, u.loss_before);
  EXPECT_GT(u.loss_after_handout_sign, u.loss_before);
  EXPECT_TRUE(close("tape", u.autodiff_dL_dVa1, u.dL_dVa1, 1e-12));
  EXPECT_TRUE(close("finite differences", u.fd_dL_dVa1, u.dL_dVa1, 1e-8));
}

TEST(Exercise, Equation3MissesTermsAndFullBpttMatchesTheTape) {
  const MultiStep m = run_multistep(2);
  EXPECT_TRUE(close("BPTT vs tape", m.bptt, m.autodiff, 1e-12));
  EXPECT_TRUE(close("BPTT vs finite differences", m.bptt, m.fd, 1e-8));
  EXPECT_GT(m.equation3_rel_err, 0.1);  // the missing paths are not small
  // The path terms partition the gradient; the ones Equation 3 keeps give Equation 3.
  std::vector<double> all(2, 0.0), kept(2, 0.0);
  for (const PathTerm& t : m.terms)
    for (int k = 0; k < 2; ++k) {
      all[k] += t.dL_dVa1[k];
      if (t.in_equation3) kept[k] += t.dL_dVa1[k];
    }
  EXPECT_TRUE(close("sum of all paths vs BPTT", all, m.bptt, 1e-12));
  EXPECT_TRUE(close("paths Equation 3 keeps vs Equation 3", kept, m.equation3, 1e-12));
}

TEST(Exercise, LongerSequencesAgreeWithTheTape) {
  for (int T : {1, 3, 6}) {
    const MultiStep m = run_multistep(T);
    EXPECT_TRUE(close("BPTT vs tape, T=" + std::to_string(T), m.bptt, m.autodiff, 1e-12));
    if (T == 1) {
      EXPECT_TRUE(close("Equation 3 is exact for T = 1", m.equation3, m.bptt, 1e-12));
    }
  }
}

TEST(ExerciseCli, JsonHasTheDocumentedKeysAndValues) {
  const CliResult r = run_cli("exercise --json");
  ASSERT_EQ(r.rc, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["dL_dh"].get<double>(), 0.5);
  expect_digits(j["dh_ds"].get<double>(), 0.07066319397);
  EXPECT_EQ(j["ds_da"].get<double>(), 1.0);
  expect_digits(j["da_dVa1"][1].get<double>(), 1.815832309e-4);
  expect_digits(j["dL_dVa1"][0].get<double>(), 6.415625535e-6);
  expect_digits(j["hint"]["dL_dVa1"][0].get<double>(), 7.07e-6, 1e-12);
  const double hand = j["dL_dVa1"][0].get<double>();
  EXPECT_NEAR(j["autodiff"]["dL_dVa1"][0].get<double>(), hand, 1e-12 * hand);
  EXPECT_NEAR(j["finite_difference"]["dL_dVa1"][0].get<double>(), hand, 1e-6 * hand);
  EXPECT_EQ(j["update"]["Va1_before"][0].get<double>(), 1.0);
  EXPECT_DOUBLE_EQ(j["update"]["Va1_after"][0].get<double>(), 1.0 - 0.1 * hand);
}

TEST(ExerciseCli, TextNamesTheSlipsAndTwoStepsShowEquation3) {
  const CliResult r = run_cli("exercise --steps 2 --lr 0.5");
  ASSERT_EQ(r.rc, 0) << r.err;
  for (const char* s : {"V_a = V_a + eta dL/dV_a", "drops the factor x_1^1", "does not give f",
                        "cannot come from a softmax", "MISSING", "Equation 3 as written", "lower",
                        "higher", "+10.2%"})
    EXPECT_NE(r.out.find(s), std::string::npos) << "missing: " << s;
}

TEST(ExerciseCli, ValuesFileRoundTrip) {
  TempDir dir;
  std::ofstream(dir / "v.json") << R"({"p1": 0.4, "y1": 1, "o1": 0.5, "i1": 0.5, "s0": 0.2,
      "b1": 0, "Va1": [0.1, 0.2, 0.3], "x": [1, 2, 3], "Ua1": [0.5], "h0": [0.1]})";
  const CliResult r = run_cli("exercise --json --values " + (dir / "v.json").string());
  ASSERT_EQ(r.rc, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["dL_dVa1"].size(), 3u);
  EXPECT_NEAR(j["dL_dh"].get<double>(), -0.6, 1e-15);
}

// Exercise 3's finite differences once cost a dot product over X per evaluation, O(X^2) in all:
// 10^5 entries took minutes. Each is O(1) now; the bound is far above the time it takes (well
// under a second) and far below what the quadratic version took.
TEST(ExerciseCli, LongValuesFileTakesLinearTime) {
  TempDir dir;
  const size_t n = 100'000;
  nlohmann::json j = {{"p1", 0.4}, {"y1", 1}, {"o1", 0.5}, {"i1", 0.5}, {"s0", 0.2}, {"b1", 0}};
  std::vector<double> va(n), x(n);
  for (size_t k = 0; k < n; ++k) va[k] = 1e-7 * static_cast<double>(k % 7), x[k] = 0.5;
  j["Va1"] = va, j["x"] = x, j["Ua1"] = {0.5}, j["h0"] = {0.1};
  std::ofstream(dir / "long.json") << j.dump();
  const auto t0 = std::chrono::steady_clock::now();
  const HandoutValues v = read_handout_values(dir / "long.json");
  const Exercise2 e = run_exercise2(v, 0.1);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_EQ(e.fd_dL_dVa1.size(), n);
  EXPECT_LT(e.fd_rel_err, 1e-6);
  EXPECT_LT(seconds, 10.0);
}

// Bad --values: one line on stderr naming the file and the key, exit code 2, nothing on stdout.
TEST(ExerciseCli, BadValuesGetOneLineNamingFileAndKey) {
  TempDir dir;
  const std::string full =
      R"("y1": 0.5, "o1": 1, "i1": 1, "s0": 1, "b1": 1, "Ua1": [1, 1], "h0": [1, 1])";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{\"p1\": 1, " + full + ", \"Va1\": [1, 1], \"x\": [1, 1, 1]}", "'Va1'"},   // wrong length
      {"{\"p1\": NaN, " + full + ", \"Va1\": [1, 1], \"x\": [1, 1]}", "'p1'"},     // NaN
      {"{" + full + ", \"Va1\": [1, 1], \"x\": [1, 1]}", "'p1'"},                  // missing key
      {"{\"p1\": 1, " + full + ", \"Va1\": [1, \"a\"], \"x\": [1, 1]}", "'Va1'"},  // wrong type
      {"{\"p1\": 1, " + full, "malformed JSON"},                                   // malformed
      // Numbers beyond a double (issue 17: once "internal error" without the file).
      {"{\"p1\": 1e999, " + full + ", \"Va1\": [1, 1], \"x\": [1, 1]}", "'p1'"},
      {"{\"p1\": 1, " + full + ", \"Va1\": [1, -2e400], \"x\": [1, 1]}", "'Va1'"},
  };
  for (size_t c = 0; c < cases.size(); ++c) {
    const auto path = dir / ("bad" + std::to_string(c) + ".json");
    std::ofstream(path) << cases[c].first;
    const CliResult r = run_cli("exercise --values " + path.string());
    EXPECT_EQ(r.rc, 2) << cases[c].first;
    EXPECT_TRUE(r.out.empty()) << r.out;
    EXPECT_EQ(count_lines(r.err), 1u) << r.err;
    EXPECT_NE(r.err.find(path.string()), std::string::npos) << r.err;
    EXPECT_NE(r.err.find(cases[c].second), std::string::npos) << r.err;
  }
  const CliResult missing = run_cli("exercise --values " + (dir / "nope.json").string());
  EXPECT_EQ(missing.rc, 2);
  EXPECT_NE(missing.err.find("nope.json"), std::string::npos);
}

}  // namespace
}  // namespace lstmgrad::test
