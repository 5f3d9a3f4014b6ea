// The threaded engine (LanguageModel with a team of threads) and `lstmgrad bench`.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "cli_runner.hpp"
#include "lstmgrad/bench.hpp"
#include "lstmgrad/lstm.hpp"

namespace lstmgrad::test {
namespace {

template <class Real>
struct ModelRun {
  double loss;
  std::vector<Real> grad, h_n, s_n, dh0, ds0;
};

template <class Real>
ModelRun<Real> run_model(const ModelConfig& cfg, int64_t T, int64_t B, int threads,
                         int running = -1, int running_backward = -1) {
  std::mt19937_64 rng(11);
  std::uniform_real_distribution<double> u(-0.5, 0.5);
  std::vector<Real> params(parameter_count(cfg));
  for (Real& p : params) p = static_cast<Real>(u(rng));
  Batch<Real> b;
  b.T = T, b.B = B;
  std::uniform_int_distribution<int64_t> tok(0, cfg.V - 1);
  for (int64_t r = 0; r < T * B; ++r) b.tokens.push_back(tok(rng)), b.target.push_back(tok(rng));
  b.h0.resize(static_cast<size_t>(cfg.L * B * cfg.H));
  b.s0.resize(b.h0.size());
  for (Real& v : b.h0) v = static_cast<Real>(u(rng));
  for (Real& v : b.s0) v = static_cast<Real>(u(rng));
  LanguageModel<Real> lm(cfg);
  lm.set_team(threads, running < 0 ? threads : running);
  ModelRun<Real> r;
  r.loss = lm.forward(params, b, Reduction::mean);
  if (running_backward >= 0) lm.set_team(threads, running_backward);
  r.grad.assign(params.size(), Real(0));
  r.dh0.resize(b.h0.size()), r.ds0.resize(b.h0.size());
  lm.backward(r.grad, params, b, nullptr, r.dh0.data(), r.ds0.data());
  r.h_n.assign(lm.h_n().begin(), lm.h_n().end());
  r.s_n.assign(lm.s_n().begin(), lm.s_n().end());
  return r;
}

template <class Real>
bool same_bits(const std::vector<Real>& a, const std::vector<Real>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(Real)) == 0;
}

template <class Real>
void expect_same_run(const ModelRun<Real>& one, const ModelRun<Real>& many, int threads) {
  EXPECT_EQ(std::memcmp(&one.loss, &many.loss, sizeof(double)), 0) << threads << " threads";
  EXPECT_TRUE(same_bits(one.grad, many.grad)) << threads << " threads";
  EXPECT_TRUE(same_bits(one.h_n, many.h_n)) << threads << " threads";
  EXPECT_TRUE(same_bits(one.s_n, many.s_n)) << threads << " threads";
  EXPECT_TRUE(same_bits(one.dh0, many.dh0)) << threads << " threads";
  EXPECT_TRUE(same_bits(one.ds0, many.ds0)) << threads << " threads";
}

// Training resumed with another --threads must continue bit for bit: every scalar is computed
// by the same BLAS call shape whatever the team size (lstm_layer.hpp).
TEST(Engine, Float64IsBitIdenticalForAnyThreadCount) {
  ModelConfig cfg;
  cfg.V = 37, cfg.X = 20, cfg.H = 40, cfg.L = 2;
  const ModelRun<double> one = run_model<double>(cfg, 7, 5, 1);
  for (int threads : {2, 3}) expect_same_run(one, run_model<double>(cfg, 7, 5, threads), threads);
}

// float32, where the threads take work as they finish (the recurrent steps' unit groups and the
// readout's vocabulary chunks, on AVX-512): the sums' order does not depend on who ran what, so
// repeated runs (other interleavings, other shares taken by each thread) give the same bits.
// (Across team sizes float32 may differ: with some of OpenBLAS's kernels, the Haswell ones this
// suite runs with among them, a float32 GEMM split by rows sums differently from the whole.)
// H = 40: groups of 16, 16 and 8 units, fewer than some teams.
TEST(Engine, Float32IsBitIdenticalFromRunToRun) {
  ModelConfig cfg;
  cfg.V = 300, cfg.X = 20, cfg.H = 40, cfg.L = 2;
  for (int threads : {2, 3, 4}) {
    const ModelRun<float> first = run_model<float>(cfg, 7, 5, threads);
    for (int again = 0; again < 4; ++again)
      expect_same_run(first, run_model<float>(cfg, 7, 5, threads), threads);
  }
}

// The team that runs the shares (fewer threads on a busy machine, cpu/team.hpp) changes no bit:
// the splits, and so every sum, depend on the shares alone. Each precision on its own paths
// (float32: the claimed steps and the fused readout on AVX-512; float64: the static split and the
// BLAS readout); forward and backward each with any team (each site has its own tuner, so a
// backward may run with another team than its forward), and running = 0 (the tuner) too.
template <class Real>
void expect_running_changes_nothing(const ModelConfig& cfg) {
  for (int shares : {2, 3}) {
    const ModelRun<Real> all = run_model<Real>(cfg, 7, 5, shares);
    for (int fwd = 0; fwd <= shares; ++fwd)
      for (int bwd = 0; bwd <= shares; ++bwd)
        expect_same_run(all, run_model<Real>(cfg, 7, 5, shares, fwd, bwd), 10 * fwd + bwd);
  }
}

TEST(Engine, RunningThreadsChangeNoBit) {
  ModelConfig cfg;
  cfg.V = 300, cfg.X = 20, cfg.H = 40, cfg.L = 2;
  expect_running_changes_nothing<float>(cfg);
  expect_running_changes_nothing<double>(cfg);
}

TEST(Bench, PresetsAreTheDocumentedShapes) {
  const auto& p = bench_presets();
  ASSERT_EQ(p.size(), 5u);
  EXPECT_EQ(p[0].name, "zaremba-small");
  EXPECT_EQ(p[1].H, 650);
  EXPECT_EQ(p[2].X, 65);
  EXPECT_EQ(p[3].T * p[3].B, 6400);
  EXPECT_EQ(p[4].H, 1024);
}

TEST(Bench, ReportsEveryField) {
  BenchPreset tiny{"tiny", 3, 2, 5, 8, 2, true};
  BenchOptions o;
  o.threads = 2, o.warmup = 1, o.runs = 3;
  for (const char* mode : {"fwd", "infer", "fwdbwd", "fwdbwd_nodx", "lm_step"}) {
    const BenchResult r = run_bench(tiny, mode, o);
    EXPECT_EQ(r.mode, mode);
    EXPECT_GT(r.ms, 0);
    EXPECT_GT(r.tokens_per_s, 0);
    EXPECT_GT(r.gflops, 0);
    EXPECT_GT(r.peak_rss_mb, 0);
  }
  EXPECT_THROW(run_bench(tiny, "nope", o), std::invalid_argument);
}

// --running: the shares of --threads run by fewer threads (the team a busy machine falls back
// to; Engine.RunningThreadsChangeNoBit checks that its bits are the same).
TEST(Bench, RunsSharesOnFewerThreads) {
  BenchPreset tiny{"tiny", 3, 2, 5, 8, 2, true};
  BenchOptions o;
  o.threads = 2, o.running = 1, o.warmup = 1, o.runs = 3;
  for (const char* mode : {"fwdbwd", "lm_step"}) {
    const BenchResult r = run_bench(tiny, mode, o);
    EXPECT_EQ(r.threads, 2);
    EXPECT_EQ(r.running, 1);
    EXPECT_GT(r.tokens_per_s, 0);
  }
}

TEST(BenchCli, RunningThreadsAreAtMostTheShares) {
  const CliResult over = run_cli("bench --preset zaremba-small --threads 2 --running 3");
  EXPECT_EQ(over.rc, 2) << over.err;
  EXPECT_EQ(over.err, "lstmgrad: error: --running 3: at most --threads (2)\n");
  const CliResult gemm = run_cli("bench --gemm --running 1");
  EXPECT_EQ(gemm.rc, 2) << gemm.err;
  EXPECT_EQ(gemm.err.rfind("lstmgrad: error: --running: ", 0), 0u) << gemm.err;
  EXPECT_TRUE(over.out.empty() && gemm.out.empty());
}

}  // namespace
}  // namespace lstmgrad::test
