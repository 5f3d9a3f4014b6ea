// Clipping and the optimizers on the flat vector: the fused training update (step_and_zero)
// against the three separate passes it replaces, and the norm against a plain float64 sum. The
// sparse passes (zero ranges skipped) against the dense ones, bit for bit, down to a few training
// updates of a small embedding language model.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "compare.hpp"
#include "lstmgrad/lstm.hpp"
#include "lstmgrad/optimizer.hpp"
#include "lstmgrad/safetensors.hpp"
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
  EXPECT_EQ(one, two);                                     // the order is fixed by the blocks
}

TEST(Optimizer, ClipFactorFollowsPyTorch) {
  EXPECT_EQ(clip_factor(3.0, 5.0), 1.0);
  EXPECT_EQ(clip_factor(10.0, 5.0), 5.0 / (10.0 + 1e-6));
  EXPECT_EQ(clip_factor(10.0, 0.0), 1.0);  // max_norm <= 0: no clipping
}

// step_and_zero must give bit for bit what clip_grad_norm, step and a zero fill give.
template <class Real>
void expect_fused_equals_separate(OptimizerKind kind, double max_norm, double decay = 0) {
  SCOPED_TRACE(::testing::Message() << to_string(kind) << " max_norm " << max_norm << " decay "
                                    << decay << " " << sizeof(Real) * 8 << "-bit");
  auto p1 = random_vector<Real>(kSize, 5, 1.0), g1 = random_vector<Real>(kSize, 7, 0.5);
  auto p2 = p1, g2 = g1;
  Optimizer<Real> a(kind, kSize, 0.9, 0.999, 1e-8, decay), b(kind, kSize, 0.9, 0.999, 1e-8, decay);
  for (int step = 0; step < 4; ++step) {  // Adam's moments and ASGD's average carry over
    const double lr = 0.1 + 0.01 * step;  // ASGD's update takes the lr of the step before
    clip_grad_norm<Real>(g1, max_norm);
    a.step(p1, g1, lr);
    std::fill(g1.begin(), g1.end(), Real(0));
    b.step_and_zero(p2, g2, lr, clip_factor(grad_norm<Real>(g2), max_norm));
    ASSERT_EQ(p1, p2) << "step " << step;
    ASSERT_EQ(g1, g2);
    ASSERT_EQ(a.ax(), b.ax()) << "step " << step;
    g1 = random_vector<Real>(kSize, 11 + static_cast<uint64_t>(step), 0.5), g2 = g1;
  }
}

TEST(Optimizer, FusedStepIsBitIdenticalToClipStepZero) {
  for (OptimizerKind kind : {OptimizerKind::sgd, OptimizerKind::adam, OptimizerKind::asgd})
    for (double max_norm : {0.0, 1.0, 1e6})  // none, active (the norm is ~50), inactive
      for (double decay : {0.0, 1e-2}) {
        expect_fused_equals_separate<float>(kind, max_norm, decay);
        expect_fused_equals_separate<double>(kind, max_norm, decay);
      }
}

// torch.optim (tools/make_optimizer_golden.py): the same gradients, learning rates, clipping and
// weight decay through lstmgrad::Optimizer, the parameters (and ASGD's average) after every
// step within `tol` relative to the largest of them: 1e-12 in float64 (the only differences are
// the order of the norm's sum and torch's fused multiply-adds), 1e-5 in float32 (rounding of
// the same formulas: 14 steps of float32 updates of values near 1).
template <class Real>
void expect_golden_trajectory(const std::string& name, double tol) {
  SCOPED_TRACE(::testing::Message() << name << " " << sizeof(Real) * 8 << "-bit");
  const std::string file = std::string(LSTMGRAD_TEST_DATA) + "/optimizer/" + name + ".safetensors";
  const io::TensorFile f = io::read_safetensors(file);
  auto tensor = [&](const char* t) { return io::to_floats<double>(f.require(t, file), file); };
  const std::vector<double> p0 = tensor("p0"), grads = tensor("grads"), lr = tensor("lr"),
                            want = tensor("params");
  const std::string kind = f.metadata.at("kind");
  const double decay = std::stod(f.metadata.at("weight_decay")),
               clip = std::stod(f.metadata.at("clip"));
  const bool nt = kind == "nt_asgd";
  const size_t n = p0.size(), steps = lr.size(),
               to_avg = nt ? std::stoul(f.metadata.at("switch")) : steps;
  const std::vector<double> want_ax = nt ? tensor("ax") : std::vector<double>(n * steps, 0.0);
  Optimizer<Real> opt(nt ? OptimizerKind::sgd : parse_optimizer(kind), n, 0.9, 0.999, 1e-8, decay);
  std::vector<Real> p(p0.begin(), p0.end()), g(n);
  for (size_t t = 0; t < steps; ++t) {
    if (t == to_avg) opt.start_averaging();
    std::copy_n(grads.begin() + static_cast<std::ptrdiff_t>(t * n), n, g.begin());
    const double norm = grad_norm<Real>(g);
    opt.step_and_zero(p, g, lr[t], clip_factor(norm, clip));
    const auto at = [&](const std::vector<double>& v) {
      return std::vector<double>(v.begin() + static_cast<std::ptrdiff_t>(t * n),
                                 v.begin() + static_cast<std::ptrdiff_t>((t + 1) * n));
    };
    ASSERT_TRUE(close("params after step " + std::to_string(t), p, at(want), tol));
    if (nt && t >= to_avg) {
      ASSERT_TRUE(close("ax after step " + std::to_string(t), opt.ax(), at(want_ax), tol));
    }
  }
  if (nt) {
    EXPECT_EQ(opt.averaging_steps(), static_cast<int64_t>(steps - to_avg));
  }
}

TEST(Optimizer, MatchesTorchOptimWithWeightDecayClippingAndAveraging) {
  for (const char* name : {"sgd_decay_clip", "nt_asgd", "asgd_no_decay", "adam_decay_clip"}) {
    expect_golden_trajectory<double>(name, 1e-12);
    expect_golden_trajectory<float>(name, 1e-5);
  }
}

// ASGD's average is the plain mean of the parameters after steps 2..t (mu = 1 at steps 1 and 2,
// then 1/(t-1)), and each update uses the lr given to the step before it.
TEST(Optimizer, AsgdAveragesFromTheSecondStepAndLagsTheLearningRate) {
  const size_t n = 3;
  Optimizer<double> opt(OptimizerKind::asgd, n);
  std::vector<double> p = {1, 2, 3}, g(n), sum(n, 0.0), expect = p;
  const double lrs[] = {0.5, 0.25, 0.125, 1.0, 2.0};
  for (int t = 0; t < 5; ++t) {
    std::fill(g.begin(), g.end(), 1.0);
    opt.step_and_zero(p, g, lrs[t], 1.0);
    const double used = lrs[t == 0 ? 0 : t - 1];
    for (size_t k = 0; k < n; ++k) expect[k] -= used;
    EXPECT_EQ(p, expect) << "step " << t + 1;
    if (t >= 1)
      for (size_t k = 0; k < n; ++k) sum[k] += p[k];
    for (size_t k = 0; k < n; ++k)
      EXPECT_NEAR(opt.ax()[k], t == 0 ? p[k] : sum[k] / t, 1e-15) << "step " << t + 1;
  }
  EXPECT_EQ(opt.eta(), 2.0);
}

// AWD-LSTM's rule: with history h (the earlier checks) and this check's loss v, switch when
// len(h) > N and v > min(h[:-N]), the checks older than the last N.
TEST(Optimizer, NonMonotoneTriggerComparesWithTheChecksOlderThanTheLastN) {
  const std::vector<double> h = {5.0, 4.0, 4.5, 4.6};
  EXPECT_FALSE(nonmono_triggered(std::span(h).first(2), 9.0, 2));  // 2 checks: not more than N
  EXPECT_TRUE(nonmono_triggered(std::span(h).first(3), 5.5, 2));   // min of h[:1] = 5
  EXPECT_FALSE(nonmono_triggered(std::span(h).first(3), 5.0, 2));  // equal is not worse
  EXPECT_FALSE(nonmono_triggered(std::span(h).first(3), 4.9, 2));
  // With 4 checks the older ones are 5 and 4: 4.2 > 4 triggers, though it beats the last two.
  EXPECT_TRUE(nonmono_triggered(h, 4.2, 2));
  EXPECT_FALSE(nonmono_triggered(h, 4.0, 2));
  // N = 1: the older checks are all but the last one (4.6 is not among them).
  EXPECT_TRUE(nonmono_triggered(h, 4.55, 1));
  EXPECT_FALSE(nonmono_triggered(h, 3.9, 1));
  EXPECT_FALSE(nonmono_triggered(h, 100.0, 4));  // 4 checks, N = 4: none older
  EXPECT_TRUE(nonmono_triggered(h, 100.0, 3));
}

// Bit for bit (0 == -0 aside); on a failure, the largest difference and where it is.
template <class Real>
::testing::AssertionResult identical(const std::string& what, const std::vector<Real>& got,
                                     const std::vector<Real>& want) {
  if (got == want) return ::testing::AssertionSuccess();
  const Diff d = diff(std::span<const Real>(got), std::span<const Real>(want));
  return ::testing::AssertionFailure() << what << ": max abs difference " << d.max_abs
                                       << " (relative " << d.rel << ") at " << d.where;
}

// Runs f() with 1, then 2 OpenMP threads.
template <class F>
void at_one_and_two_threads(F&& f) {
  const int saved = omp_get_max_threads();
  for (int threads : {1, 2}) {
    SCOPED_TRACE(::testing::Message() << threads << " thread(s)");
    omp_set_num_threads(threads);
    f();
  }
  omp_set_num_threads(saved);
}

// Zero ranges in a kSize vector (blocks of 4096, lanes of 8): from element 0, single elements,
// ranges that start or end off a lane boundary, ranges across the block boundaries 4096, 8192
// and 12288, one over a whole block, a run of neighbours with gaps of 1, and one to the end.
const std::vector<ElementRange> kZero = {
    {0, 5},        {7, 8},         {13, 4090},     {4093, 4101},  {4101, 4101},
    {4102, 4103},  {5000, 5003},   {5004, 5006},   {5007, 5015},  {8187, 8200},
    {8201, 12290}, {12291, 12292}, {12293, 12295}, {13000, kSize}};

template <class Real>
void zero_out(std::vector<Real>& g, std::span<const ElementRange> zero) {
  for (const ElementRange& r : zero) std::fill(g.begin() + r.begin, g.begin() + r.end, Real(0));
}

// The documented order, one element at a time: blocks of 4096, element i into lane i % 8 of its
// block, the lanes in order, the blocks in order.
template <class Real>
double reference_norm(const std::vector<Real>& g) {
  double sq = 0;
  for (size_t i0 = 0; i0 < g.size(); i0 += 4096) {
    double lane[8] = {}, block = 0;
    for (size_t i = i0; i < std::min(g.size(), i0 + 4096); ++i)
      lane[i % 8] += static_cast<double>(g[i]) * static_cast<double>(g[i]);
    for (double x : lane) block += x;
    sq += block;
  }
  return std::sqrt(sq);
}

// Every element next to a range is random (not 0), so a norm or a step that skipped one element
// too many differs from the dense one.
template <class Real>
void expect_sparse_norm_equals_dense() {
  SCOPED_TRACE(::testing::Message() << sizeof(Real) * 8 << "-bit");
  auto g = random_vector<Real>(kSize, 13, 2.0);
  zero_out(g, kZero);
  const double dense = grad_norm<Real>(g);
  EXPECT_EQ(dense, reference_norm(g));
  const std::vector<ElementRange> all = {{0, kSize}}, none;
  at_one_and_two_threads([&] {
    EXPECT_EQ(grad_norm<Real>(g, kZero), dense);
    EXPECT_EQ(grad_norm<Real>(g, none), dense);
    EXPECT_EQ(grad_norm<Real>(g, all), 0.0);
  });
}

TEST(Optimizer, GradNormSkippingZeroRangesIsBitIdenticalToTheDenseNorm) {
  expect_sparse_norm_equals_dense<float>();
  expect_sparse_norm_equals_dense<double>();
}

// Element i must go into lane i % 8 even in a kept run that starts off a lane boundary: random
// data hardly shows a wrong lane through the sqrt, so this is built to. A large square (2^54) in
// lane 0 absorbs every small square (1) that joins lane 0 after it, while the 511 or so squares
// of another lane add up exactly; in each block, the run of small ones starts 2 or 3 past a lane
// boundary, after a zero range, and would put them into lane 0 if it ignored where it started.
template <class Real>
void expect_every_element_in_its_lane() {
  SCOPED_TRACE(::testing::Message() << sizeof(Real) * 8 << "-bit");
  std::vector<Real> g(2 * 4096, Real(0));
  g[0] = g[4096] = Real(0x1p27);
  for (size_t i = 2; i < 4090; i += 8) g[i] = Real(1);
  for (size_t i = 4096 + 3; i < 8192; i += 8) g[i] = Real(1);
  const std::vector<ElementRange> zero = {{1, 2}, {4090, 4096}, {4097, 4099}};
  auto zeroed = g;
  zero_out(zeroed, zero);
  ASSERT_EQ(zeroed, g);  // the ranges hold zeros
  const double dense = grad_norm<Real>(g);
  EXPECT_EQ(dense, reference_norm(g));
  EXPECT_NE(dense, std::sqrt(2 * 0x1p54));  // the small squares count
  at_one_and_two_threads([&] { EXPECT_EQ(grad_norm<Real>(g, zero), dense); });
}

TEST(Optimizer, GradNormPutsEveryElementIntoItsLane) {
  expect_every_element_in_its_lane<float>();
  expect_every_element_in_its_lane<double>();
}

// The ranges are really skipped (that is the speed-up): what they hold does not count.
TEST(Optimizer, GradNormDoesNotReadTheZeroRanges) {
  auto g = random_vector<double>(kSize, 17, 1.0), zeroed = g;
  zero_out(zeroed, kZero);
  at_one_and_two_threads(
      [&] { EXPECT_EQ(grad_norm<double>(g, kZero), grad_norm<double>(zeroed)); });
}

TEST(Optimizer, ZeroRangesOutOfOrderAreRefused) {
  const std::vector<double> g(100, 1.0);
  const std::vector<std::vector<ElementRange>> bad = {{{5, 10}, {8, 12}}, {{5, 4}}, {{90, 101}}};
  for (const auto& zero : bad) EXPECT_THROW(grad_norm<double>(g, zero), std::invalid_argument);
}

template <class Real>
void expect_sparse_sgd_equals_dense(double scale) {
  SCOPED_TRACE(::testing::Message() << sizeof(Real) * 8 << "-bit, scale " << scale);
  at_one_and_two_threads([&] {
    auto p1 = random_vector<Real>(kSize, 19, 1.0), p2 = p1;
    Optimizer<Real> a(OptimizerKind::sgd, kSize), b(OptimizerKind::sgd, kSize);
    for (int step = 0; step < 3; ++step) {
      auto g1 = random_vector<Real>(kSize, 23 + static_cast<uint64_t>(step), 0.5);
      zero_out(g1, kZero);
      auto g2 = g1;
      a.step_and_zero(p1, g1, 0.1, scale);
      b.step_and_zero(p2, g2, 0.1, scale, kZero);
      ASSERT_TRUE(identical("params, step " + std::to_string(step), p2, p1));
      ASSERT_TRUE(identical("grad", g2, std::vector<Real>(kSize, Real(0))));
    }
    EXPECT_EQ(b.steps(), 3);
  });
}

TEST(Optimizer, SparseSgdStepIsBitIdenticalToTheDenseStep) {
  for (double scale : {1.0, 0.37}) {
    expect_sparse_sgd_equals_dense<float>(scale);
    expect_sparse_sgd_equals_dense<double>(scale);
  }
}

// SGD neither reads nor writes the ranges; Adam ignores them (its moments decay at every step).
TEST(Optimizer, SparseStepTouchesNothingInTheZeroRangesButAdamIsDense) {
  const auto p0 = random_vector<double>(kSize, 29, 1.0), g0 = random_vector<double>(kSize, 31, 1.0);
  auto p = p0, g = g0;
  Optimizer<double>(OptimizerKind::sgd, kSize).step_and_zero(p, g, 0.1, 0.5, kZero);
  for (const ElementRange& r : kZero)
    for (size_t k = r.begin; k < r.end; ++k) ASSERT_TRUE(p[k] == p0[k] && g[k] == g0[k]) << k;
  auto pa = p0, ga = g0, pb = p0, gb = g0;
  Optimizer<double>(OptimizerKind::adam, kSize).step_and_zero(pa, ga, 0.1, 0.5);
  Optimizer<double>(OptimizerKind::adam, kSize).step_and_zero(pb, gb, 0.1, 0.5, kZero);
  EXPECT_TRUE(identical("adam params", pb, pa));
  EXPECT_TRUE(identical("adam grad", gb, ga));
}

// Brute force: element k of the table is in a range exactly when no id selects its row.
void expect_unused_rows(const std::vector<int64_t>& ids, int64_t rows, int64_t width, size_t offset,
                        std::vector<uint8_t>& mark, std::vector<ElementRange>& zero) {
  unused_rows(ids, rows, width, offset, mark, zero);
  std::vector<bool> in_range(offset + static_cast<size_t>(rows * width) + 3, false);
  for (size_t i = 0; i < zero.size(); ++i) {
    if (i > 0) {
      EXPECT_LT(zero[i - 1].end, zero[i].begin) << "ranges " << i - 1 << ", " << i;
    }
    EXPECT_LT(zero[i].begin, zero[i].end);
    for (size_t k = zero[i].begin; k < zero[i].end; ++k) in_range.at(k) = true;
  }
  for (size_t k = 0; k < in_range.size(); ++k) {
    const bool table = k >= offset && k < offset + static_cast<size_t>(rows * width);
    const int64_t row = table ? static_cast<int64_t>(k - offset) / width : -1;
    const bool used = std::find(ids.begin(), ids.end(), row) != ids.end();
    EXPECT_EQ(in_range[k], table && !used) << "element " << k << ", row " << row;
  }
  EXPECT_EQ(std::count(mark.begin(), mark.end(), 1), 0);  // ready for the next call
}

TEST(Optimizer, UnusedRowsAreExactlyTheRowsNoIdSelects) {
  std::vector<uint8_t> mark;
  std::vector<ElementRange> zero;
  // Repeats, the first and last rows, neighbours (merged ranges between them), then other ids
  // through the same scratch, none, and all.
  expect_unused_rows({0, 36, 5, 6, 5, 20, 22, 0}, 37, 3, 5, mark, zero);
  expect_unused_rows({1, 2, 35}, 37, 3, 5, mark, zero);
  const ElementRange* data = zero.data();
  expect_unused_rows({}, 37, 3, 5, mark, zero);
  EXPECT_EQ(zero.data(), data);  // fewer ranges: the same storage
  std::vector<int64_t> all(37);
  for (int64_t r = 0; r < 37; ++r) all[static_cast<size_t>(r)] = 36 - r;
  expect_unused_rows(all, 37, 3, 5, mark, zero);
  EXPECT_TRUE(zero.empty());
}

// What the trainer does at each update, with and without skipping the embedding rows the batch
// did not use: a small embedding LM with dropout and active clipping, several batches that use
// a few of its rows. Before each update, the skipped ranges of the gradient must really be 0
// (only the batch's rows receive a gradient); after it, the two runs must agree bit for bit.
template <class Real>
void expect_sparse_training_equals_dense() {
  SCOPED_TRACE(::testing::Message() << sizeof(Real) * 8 << "-bit");
  const ModelConfig cfg{InputKind::embedding, Readout::linear, 40, 8, 6, 2};
  const size_t embed = parameter_layout(cfg)[0].offset;
  at_one_and_two_threads([&] {
    auto p_dense = random_vector<Real>(parameter_count(cfg), 37, 0.3), p_sparse = p_dense;
    std::vector<Real> g_dense(p_dense.size(), Real(0)), g_sparse = g_dense;
    LanguageModel<Real> lm(cfg);
    Optimizer<Real> dense(OptimizerKind::sgd, p_dense.size()), sparse = dense;
    std::vector<uint8_t> mark;
    std::vector<ElementRange> zero;
    SplitMix rng{41};
    Batch<Real> batch;
    batch.T = 4, batch.B = 3;
    for (int step = 0; step < 4; ++step) {
      SCOPED_TRACE(::testing::Message() << "update " << step);
      batch.tokens.clear(), batch.target.clear();
      for (int k = 0; k < 12; ++k) {
        batch.tokens.push_back(rng.index(cfg.V));
        batch.target.push_back(rng.index(cfg.V));
      }
      unused_rows(batch.tokens, cfg.V, cfg.X, embed, mark, zero);
      ASSERT_FALSE(zero.empty());
      double norm[2];
      for (int sp = 0; sp < 2; ++sp) {
        auto& p = sp ? p_sparse : p_dense;
        auto& g = sp ? g_sparse : g_dense;
        lm.set_dropout(0.3, 100 + static_cast<uint64_t>(step));
        lm.forward(p, batch, Reduction::batch_mean);
        lm.backward(g, p, batch);
        for (const ElementRange& r : zero)
          for (size_t k = r.begin; k < r.end; ++k) ASSERT_EQ(g[k], Real(0)) << "element " << k;
        norm[sp] = sp ? grad_norm<Real>(g, zero) : grad_norm<Real>(g);
        const double c = clip_factor(norm[sp], 0.5);  // the norm is > 0.5: clipping is active
        if (sp)
          sparse.step_and_zero(p, g, 1.0, c, zero);
        else
          dense.step_and_zero(p, g, 1.0, c);
      }
      EXPECT_EQ(norm[1], norm[0]);
      EXPECT_GT(norm[0], 0.5);
      ASSERT_TRUE(identical("params", p_sparse, p_dense));
      ASSERT_TRUE(identical("grad", g_sparse, g_dense));
    }
  });
}

TEST(Optimizer, SkippingUnusedEmbeddingRowsTrainsBitIdentically) {
  expect_sparse_training_equals_dense<float>();
  expect_sparse_training_equals_dense<double>();
}

}  // namespace
}  // namespace lstmgrad::test
