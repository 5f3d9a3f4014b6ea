// The inference forward (LanguageModel::infer) against the training forward: the same bits of
// loss, p, h_n and s_n in float32 and float64, for every team split, in less memory; and
// backward refuses to follow it.
#include <gtest/gtest.h>

#include <random>
#include <stdexcept>
#include <string>
#include <tuple>

#include "compare.hpp"
#include "lstmgrad/lstm.hpp"

namespace lstmgrad::test {
namespace {

struct Case {
  std::string name;
  ModelConfig cfg;
  int64_t T, B;
  bool targets, state;  // class targets (else none: sampling), random h0 and s0 (else zeros)
};

// Peepholes, ragged H (not whole panels of 16), dense and token input, both readouts; float32
// takes the fused vocabulary readout where the CPU has AVX-512 (class targets, linear readout).
std::vector<Case> cases() {
  return {
      {"EmbeddingLinear", {InputKind::embedding, Readout::linear, 37, 8, 20, 2}, 5, 3, true, true},
      {"DenseIdentity", {InputKind::dense, Readout::identity, 7, 5, 7, 3}, 4, 2, true, false},
      {"Wide", {InputKind::embedding, Readout::linear, 50, 12, 48, 2}, 7, 5, true, true},
      {"Peephole", {InputKind::dense, Readout::linear, 9, 6, 33, 2, true}, 6, 4, true, true},
      {"SampleOneStep", {InputKind::embedding, Readout::linear, 23, 6, 18, 2}, 1, 1, false, true},
  };
}

template <class Real>
Batch<Real> make_batch(const Case& c, std::mt19937_64& rng) {
  Batch<Real> b;
  b.T = c.T, b.B = c.B;
  const int64_t N = c.T * c.B;
  std::uniform_int_distribution<int64_t> id(0, c.cfg.V - 1);
  for (int64_t r = 0; r < N; ++r) {
    if (c.cfg.input == InputKind::embedding) b.tokens.push_back(id(rng));
    if (c.targets) b.target.push_back(id(rng));
  }
  if (c.cfg.input == InputKind::dense)
    b.dense = cast<Real>(uniform(static_cast<size_t>(N * c.cfg.X), rng));
  if (c.state) {
    const auto n = static_cast<size_t>(c.cfg.L * c.B * c.cfg.H);
    b.h0 = cast<Real>(uniform(n, rng, -0.5, 0.5));
    b.s0 = cast<Real>(uniform(n, rng, -0.5, 0.5));
  }
  return b;
}

template <class Real>
std::vector<Real> copy(std::span<const Real> s) {
  return {s.begin(), s.end()};
}

// (shares, running threads) of set_team: one share; three run by three and by one thread (the
// results depend on the shares alone); the default.
using Team = std::pair<int, int>;

class Infer : public ::testing::TestWithParam<std::tuple<size_t, Team>> {};

template <class Real>
void expect_same_bits(const Case& c, Team team) {
  SCOPED_TRACE(c.name + (sizeof(Real) == 4 ? " float32" : " float64") + ", shares " +
               std::to_string(team.first) + ", running " + std::to_string(team.second));
  std::mt19937_64 rng(17);
  const std::vector<Real> params = cast<Real>(uniform(parameter_count(c.cfg), rng, -0.4, 0.4));
  const Batch<Real> b = make_batch<Real>(c, rng);
  LanguageModel<Real> train(c.cfg), infer(c.cfg);
  train.set_team(team.first, team.second), infer.set_team(team.first, team.second);
  for (int round = 0; round < 2; ++round) {  // the second time on warm arenas and tuners
    const double want = train.forward(params, b, Reduction::mean);
    const double got = infer.infer(params, b, Reduction::mean);
    EXPECT_EQ(got, want);
    // Tolerance 0: the same bits (close() reports the worst entry otherwise).
    EXPECT_TRUE(close("p", copy(infer.probs()), copy(train.probs()), 0.0));
    EXPECT_TRUE(close("h_n", copy(infer.h_n()), copy(train.h_n()), 0.0));
    EXPECT_TRUE(close("s_n", copy(infer.s_n()), copy(train.s_n()), 0.0));
  }
  // Nothing kept for backward: less memory, and backward says why it cannot run.
  EXPECT_LT(infer.arena_bytes(), train.arena_bytes());
  if (c.targets) {
    std::vector<Real> grad(params.size(), Real(0));
    EXPECT_THROW(infer.backward(grad, params, b), std::logic_error);
    // One model, both: a training forward after infer is whole again.
    EXPECT_EQ(infer.forward(params, b, Reduction::mean), train.forward(params, b, Reduction::mean));
    EXPECT_NO_THROW(infer.backward(grad, params, b));
  }
}

TEST_P(Infer, SameBitsAsTheTrainingForwardInLessMemory) {
  const auto [k, team] = GetParam();
  const Case c = cases()[k];
  expect_same_bits<float>(c, team);
  expect_same_bits<double>(c, team);
}

INSTANTIATE_TEST_SUITE_P(Shapes, Infer,
                         ::testing::Combine(::testing::Range<size_t>(0, 5),
                                            ::testing::Values(Team{1, 1}, Team{3, 3}, Team{3, 1},
                                                              Team{0, 0})),
                         [](const auto& p) {
                           const Team team = std::get<1>(p.param);
                           return cases()[std::get<0>(p.param)].name + "Shares" +
                                  std::to_string(team.first) + "Running" +
                                  std::to_string(team.second);
                         });

// The stack alone keeps a fraction of a training step's memory: per layer the training forward
// holds the gates [T,B,4H] and the h and s sequences, and backward adds its scratch; infer one
// layer's gates and two h sequences. For L = 4, H = X = 64, T*B = 200 the measured ratio is 0.25
// (0.31 against the training forward alone).
TEST(Infer, ArenaIsAFractionOfTheTrainingArena) {
  const ModelConfig cfg{InputKind::dense, Readout::identity, 64, 64, 64, 4};
  std::mt19937_64 rng(3);
  const std::vector<float> params = cast<float>(uniform(parameter_count(cfg), rng, -0.2, 0.2));
  Batch<float> b;
  b.T = 20, b.B = 10;
  b.dense = cast<float>(uniform(static_cast<size_t>(20 * 10 * 64), rng));
  b.target.assign(200, 1);
  LanguageModel<float> train(cfg), infer(cfg);
  train.forward(params, b, Reduction::mean);
  std::vector<float> grad(params.size(), 0.0f);
  train.backward(grad, params, b);
  infer.infer(params, b, Reduction::mean);
  const double ratio =
      static_cast<double>(infer.arena_bytes()) / static_cast<double>(train.arena_bytes());
  EXPECT_LT(ratio, 0.3) << "infer " << infer.arena_bytes() << " bytes, forward "
                        << train.arena_bytes();
}

}  // namespace
}  // namespace lstmgrad::test
