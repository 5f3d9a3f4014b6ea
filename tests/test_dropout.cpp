// Non-recurrent dropout: the hand-derived backward through the masks against finite differences
// (the masks are a pure function of the seed, so the loss is a smooth function of the weights).
#include <gtest/gtest.h>

#include <random>

#include "compare.hpp"
#include "cpu/dropout.hpp"
#include "lstmgrad/finite_diff.hpp"
#include "lstmgrad/lstm.hpp"

namespace lstmgrad::test {
namespace {

struct Problem {
  ModelConfig cfg;
  std::vector<double> params;
  Batch<double> batch;
};

Problem make(InputKind input, Readout readout, int64_t L, uint64_t seed) {
  Problem s;
  const int64_t H = 4;
  s.cfg = {input, readout, readout == Readout::identity ? H : 6, 3, H, L};
  std::mt19937_64 rng(seed);
  s.params = uniform(parameter_count(s.cfg), rng, -0.5, 0.5);
  s.batch.T = 4, s.batch.B = 3;
  std::uniform_int_distribution<int64_t> id(0, s.cfg.V - 1);
  for (int k = 0; k < 12; ++k) {
    if (input == InputKind::embedding) s.batch.tokens.push_back(id(rng));
    s.batch.target.push_back(id(rng));
  }
  if (input == InputKind::dense) s.batch.dense = uniform(12 * 3, rng);
  return s;
}

class Dropout : public ::testing::TestWithParam<std::tuple<InputKind, Readout, int64_t>> {};

TEST_P(Dropout, BackwardMatchesFiniteDifferences) {
  const auto [input, readout, L] = GetParam();
  Problem s = make(input, readout, L, 5);
  LanguageModel<double> lm(s.cfg);
  lm.set_dropout(0.4, 1234);
  lm.forward(s.params, s.batch, Reduction::mean);
  std::vector<double> grad(s.params.size(), 0.0), dinput(s.batch.dense.size());
  lm.backward(grad, s.params, s.batch, dinput.empty() ? nullptr : dinput.data());
  const std::vector<double> fd = central_difference5(
      [&](std::span<const double> p) { return lm.forward(p, s.batch, Reduction::mean); }, s.params);
  // Five-point differences with e = 1e-3: O(e^4) truncation, O(1e-16 / e) rounding.
  EXPECT_TRUE(close("parameters, dropout 0.4", grad, fd, 1e-8));
  if (!dinput.empty()) {
    Batch<double> b = s.batch;
    const std::vector<double> fdx = central_difference5(
        [&](std::span<const double> x) {
          b.dense.assign(x.begin(), x.end());
          return lm.forward(s.params, b, Reduction::mean);
        },
        s.batch.dense);
    EXPECT_TRUE(close("dense input, dropout 0.4", dinput, fdx, 1e-8));
  }
}

INSTANTIATE_TEST_SUITE_P(Models, Dropout,
                         ::testing::Values(std::tuple{InputKind::embedding, Readout::linear, 2},
                                           std::tuple{InputKind::dense, Readout::identity, 3},
                                           std::tuple{InputKind::dense, Readout::linear, 1}));

TEST(DropoutMasks, ZeroRateIsTheModelWithoutDropoutAndSeedsAreReproducible) {
  Problem s = make(InputKind::embedding, Readout::linear, 2, 7);
  LanguageModel<double> lm(s.cfg);
  const double plain = lm.forward(s.params, s.batch, Reduction::mean);
  lm.set_dropout(0.0, 99);
  EXPECT_EQ(lm.forward(s.params, s.batch, Reduction::mean), plain);
  lm.set_dropout(0.5, 1);
  const double a = lm.forward(s.params, s.batch, Reduction::mean);
  EXPECT_EQ(lm.forward(s.params, s.batch, Reduction::mean), a);  // same seed, same masks
  lm.set_dropout(0.5, 2);
  EXPECT_NE(lm.forward(s.params, s.batch, Reduction::mean), a);
}

TEST(DropoutMasks, DropTheRequestedFractionAndScaleTheRest) {
  std::vector<float> m(200000);
  cpu::dropout_mask(m.data(), static_cast<int64_t>(m.size()), 0.3, 42, 1);
  size_t zeros = 0;
  for (float v : m) {
    if (v == 0)
      ++zeros;
    else
      EXPECT_FLOAT_EQ(v, 1.0f / 0.7f);
  }
  // Binomial(200000, 0.3): standard deviation 205, so 0.3 +- 0.005 is a 5-sigma band.
  EXPECT_NEAR(static_cast<double>(zeros) / static_cast<double>(m.size()), 0.3, 0.005);
}

}  // namespace
}  // namespace lstmgrad::test
