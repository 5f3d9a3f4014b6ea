// Clipping and the optimizers on the flat vector: the fused training update (step_and_zero)
// against the three separate passes it replaces, and the norm against a plain float64 sum.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <vector>

#include "lstmgrad/optimizer.hpp"
#include "splitmix.hpp"

namespace lstmgrad::test {
namespace {

template <class Real>
std::vector<Real> random_vector(size_t n, uint64_t seed, double scale) {
  SplitMix rng{seed};
  std::vector<Real> v(n);
  for (Real& x : v) x = static_cast<Real>(rng.uniform(-scale, scale));
  return v;
}

// Not a multiple of the norm's 4096-element blocks nor of its 8 lanes.
constexpr size_t kSize = 3 * 4096 + 1237;

TEST(Optimizer, GradNormMatchesAPlainSumAndIgnoresTheThreadCount) {
  const auto g = random_vector<double>(kSize, 3, 2.0);
  double sq = 0;
  for (double v : g) sq += v * v;
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const double one = grad_norm<double>(g);
  omp_set_num_threads(2);
  const double two = grad_norm<double>(g);
  omp_set_num_threads(saved);
  EXPECT_NEAR(one, std::sqrt(sq), 1e-12 * std::sqrt(sq));  // another order of the same sum
  EXPECT_EQ(one, two);                                      // the order is fixed by the blocks
}

TEST(Optimizer, ClipFactorFollowsPyTorch) {
  EXPECT_EQ(clip_factor(3.0, 5.0), 1.0);
  EXPECT_EQ(clip_factor(10.0, 5.0), 5.0 / (10.0 + 1e-6));
  EXPECT_EQ(clip_factor(10.0, 0.0), 1.0);  // max_norm <= 0: no clipping
}

// step_and_zero must give bit for bit what clip_grad_norm, step and a zero fill give.
template <class Real>
void expect_fused_equals_separate(OptimizerKind kind, double max_norm) {
  SCOPED_TRACE(::testing::Message() << to_string(kind) << " max_norm " << max_norm << " "
                                    << sizeof(Real) * 8 << "-bit");
  auto p1 = random_vector<Real>(kSize, 5, 1.0), g1 = random_vector<Real>(kSize, 7, 0.5);
  auto p2 = p1, g2 = g1;
  Optimizer<Real> a(kind, kSize), b(kind, kSize);
  for (int step = 0; step < 3; ++step) {  // Adam's moments carry over the steps
    clip_grad_norm<Real>(g1, max_norm);
    a.step(p1, g1, 0.1);
    std::fill(g1.begin(), g1.end(), Real(0));
    b.step_and_zero(p2, g2, 0.1, clip_factor(grad_norm<Real>(g2), max_norm));
    ASSERT_EQ(p1, p2) << "step " << step;
    ASSERT_EQ(g1, g2);
    g1 = random_vector<Real>(kSize, 11 + static_cast<uint64_t>(step), 0.5), g2 = g1;
  }
}

TEST(Optimizer, FusedStepIsBitIdenticalToClipStepZero) {
  for (OptimizerKind kind : {OptimizerKind::sgd, OptimizerKind::adam})
    for (double max_norm : {0.0, 1.0, 1e6}) {  // none, active (the norm is ~50), inactive
      expect_fused_equals_separate<float>(kind, max_norm);
      expect_fused_equals_separate<double>(kind, max_norm);
    }
}

}  // namespace
}  // namespace lstmgrad::test
