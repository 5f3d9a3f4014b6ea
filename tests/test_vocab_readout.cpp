// The fused float32 readout (cpu/vocab_readout.hpp) against a plain float64 evaluation of
// logits = h W^T + c, softmax cross-entropy over class targets and its three gradients, on
// ragged shapes (positions not a multiple of the 16-wide panels, inputs not a multiple of 16, a
// vocabulary that ends mid-chunk), for teams of 1, 2 and 3 threads; the gradients of W and c are
// accumulated onto what was there (+=), dh overwritten.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <stdexcept>
#include <vector>

#include "compare.hpp"
#include "cpu/panel_gemm.hpp"
#include "cpu/team.hpp"
#include "cpu/vocab_readout.hpp"
#include "lstmgrad/lstm.hpp"
#include "splitmix.hpp"

namespace lstmgrad::test {
namespace {

struct Reference {
  std::vector<double> loss, p, dW, dc, dh;  // dW and dc: the gradient alone
};

Reference reference(const std::vector<float>& h, const std::vector<float>& W,
                    const std::vector<float>& c, const std::vector<int64_t>& y, double scale,
                    int64_t N, int64_t H, int64_t V) {
  Reference r{std::vector<double>(N), std::vector<double>(N * V), std::vector<double>(V * H),
              std::vector<double>(V), std::vector<double>(N * H)};
  for (int64_t n = 0; n < N; ++n) {
    std::vector<double> z(V);
    double m = -1e300;
    for (int64_t v = 0; v < V; ++v) {
      double s = c[v];
      for (int64_t j = 0; j < H; ++j) s += double(h[n * H + j]) * double(W[v * H + j]);
      z[v] = s, m = std::max(m, s);
    }
    double sum = 0;
    for (double e : z) sum += std::exp(e - m);
    const double lse = m + std::log(sum);
    r.loss[n] = lse - z[y[n]];
    for (int64_t v = 0; v < V; ++v) {
      const double p = std::exp(z[v] - lse);
      r.p[n * V + v] = p;
      const double g = scale * (p - (v == y[n] ? 1.0 : 0.0));
      r.dc[v] += g;
      for (int64_t j = 0; j < H; ++j) {
        r.dW[v * H + j] += g * h[n * H + j];
        r.dh[n * H + j] += g * W[v * H + j];
      }
    }
  }
  return r;
}

// Tolerance: float32 dot products of up to max(H, V, N) = 700 terms of O(1) values, in another
// order than the float64 reference, and a softmax through a 2-ulp exp: relative errors ~1e-6 of
// each tensor's scale; 2e-5 is ample and still catches any wrong element (O(1) off) or a
// position, class or thread share left out.
constexpr double kTol = 2e-5;

// h [N,H], W [V,H], c [V] and class targets y [N], drawn from `rng`; y[0] = V - 1, the last
// class, in the last (partial) chunk.
struct Inputs {
  std::vector<float> h, W, c;
  std::vector<int64_t> y;
};

Inputs inputs(int64_t N, int64_t H, int64_t V, SplitMix& rng) {
  auto fill = [&](int64_t n, double lo, double hi) {
    std::vector<float> v(static_cast<size_t>(n));
    for (float& x : v) x = static_cast<float>(rng.uniform(lo, hi));
    return v;
  };
  Inputs in{fill(N * H, -1, 1), fill(V * H, -0.5, 0.5), fill(V, -1, 1),
            std::vector<int64_t>(static_cast<size_t>(N))};
  for (int64_t& t : in.y) t = rng.index(V);
  in.y[0] = V - 1;
  return in;
}

void check(int64_t N, int64_t H, int64_t V, int threads, cpu::VocabReadout* reuse = nullptr) {
  SCOPED_TRACE(::testing::Message()
               << "N " << N << " H " << H << " V " << V << " threads " << threads);
  SplitMix rng(static_cast<uint64_t>(N * 1009 + H * 31 + V));
  auto fill = [&](size_t n, double lo, double hi) {
    std::vector<float> v(n);
    for (float& x : v) x = static_cast<float>(rng.uniform(lo, hi));
    return v;
  };
  const Inputs in = inputs(N, H, V, rng);
  const std::vector<float>&h = in.h, &W = in.W, &c = in.c;
  const std::vector<int64_t>& y = in.y;
  const double scale = 1.0 / 7;
  const Reference want = reference(h, W, c, y, scale, N, H, V);

  cpu::VocabReadout own;
  cpu::VocabReadout& r = reuse ? *reuse : own;
  r.reserve(N, H, V, threads);
  std::vector<double> loss(N, -1);
  std::vector<float> dW = fill(V * H, -1, 1), dc = fill(V, -1, 1), dh = fill(N * H, 5, 6);
  const std::vector<float> dW0 = dW, dc0 = dc;
  std::atomic<int> team{0};
  cpu::run_team(threads, [&] {
    const int nt = cpu::team_threads();
    if (cpu::team_thread() == 0) team = nt;
    r.forward(cpu::team_thread(), nt, h.data(), W.data(), c.data(), y.data(), loss.data());
  });
  EXPECT_EQ(team, threads);
  cpu::run_team(threads, [&] {
    r.backward(cpu::team_thread(), cpu::team_threads(), static_cast<float>(scale), W.data(),
               y.data(), dW.data(), dc.data(), dh.data());
  });
  std::vector<double> gW(V * H), gc(V);  // what was added
  for (size_t k = 0; k < gW.size(); ++k) gW[k] = double(dW[k]) - double(dW0[k]);
  for (size_t k = 0; k < gc.size(); ++k) gc[k] = double(dc[k]) - double(dc0[k]);
  std::vector<float> p(N * V);
  r.probs(p.data());
  EXPECT_TRUE(close("loss", loss, want.loss, kTol));
  EXPECT_TRUE(close("p", p, want.p, kTol));
  EXPECT_TRUE(close("dW", gW, want.dW, kTol));
  EXPECT_TRUE(close("dc", gc, want.dc, kTol));
  EXPECT_TRUE(close("dh", dh, want.dh, kTol));
}

TEST(VocabReadout, MatchesFloat64OnRaggedShapesAndTeams) {
  if (!cpu::panel_gemm_available()) GTEST_SKIP() << "no AVX-512F on this CPU";
  for (int threads : {1, 2, 3}) {
    check(37, 23, 250, threads);  // partial last panel, inputs not a multiple of 16
    check(16, 16, 193, threads);  // one panel; the vocabulary ends one row into a chunk
    check(48, 40, 700, threads);  // several chunks per thread
    check(5, 7, 2, threads);      // fewer classes than threads: a thread with no slice
  }
}

// The threads take chunks and groups as they finish, but every sum has one fixed order: the
// results are the same bits for teams of 1-4 and for repeated runs (each run interleaves the
// threads differently), including a vocabulary of more chunks than there are groups.
TEST(VocabReadout, SameBitsForAnyTeamAndInterleaving) {
  if (!cpu::panel_gemm_available()) GTEST_SKIP() << "no AVX-512F on this CPU";
  for (const int64_t V : {700, 2500}) {  // 8 chunks of 96 words; 27 chunks in 16 groups
    const int64_t N = 45, H = 40;
    SplitMix rng(static_cast<uint64_t>(V));
    const Inputs in = inputs(N, H, V, rng);
    const std::vector<float>&h = in.h, &W = in.W, &c = in.c;
    const std::vector<int64_t>& y = in.y;
    struct Out {
      std::vector<double> loss;
      std::vector<float> dW, dc, dh;
    };
    auto run = [&](int threads) {
      cpu::VocabReadout r;
      r.reserve(N, H, V, threads);
      Out o{std::vector<double>(N), std::vector<float>(V * H), std::vector<float>(V),
            std::vector<float>(N * H)};
      cpu::run_team(threads, [&] {
        r.forward(cpu::team_thread(), cpu::team_threads(), h.data(), W.data(), c.data(), y.data(),
                  o.loss.data());
      });
      cpu::run_team(threads, [&] {
        r.backward(cpu::team_thread(), cpu::team_threads(), 0.25f, W.data(), y.data(), o.dW.data(),
                   o.dc.data(), o.dh.data());
      });
      return o;
    };
    const Out want = run(1);
    for (int threads : {2, 3, 4, 2, 2, 3}) {
      SCOPED_TRACE(::testing::Message() << "V " << V << " threads " << threads);
      const Out got = run(threads);
      EXPECT_EQ(got.loss, want.loss);
      EXPECT_EQ(got.dW, want.dW);
      EXPECT_EQ(got.dc, want.dc);
      EXPECT_EQ(got.dh, want.dh);
    }
  }
}

// A second forward with other shapes on the same object (the buffers re-carved) is as exact.
TEST(VocabReadout, ReservesForLargerAndSmallerShapes) {
  if (!cpu::panel_gemm_available()) GTEST_SKIP() << "no AVX-512F on this CPU";
  cpu::VocabReadout r;
  check(64, 32, 300, 2, &r);
  check(20, 10, 100, 3, &r);
  check(70, 33, 310, 2, &r);
}

// Through the language model: float32 with class targets takes the fused readout; against the
// float64 model (the BLAS path, std::exp) on the same parameters and batch, for teams of 1-3:
// loss, every gradient and probs() (converted from the panel-major logits on demand). The
// tolerance is the golden files' float32 one (tests/test_golden.cpp), for the same reason.
TEST(VocabReadout, LanguageModelFloat32MatchesFloat64) {
  if (!cpu::panel_gemm_available()) GTEST_SKIP() << "no AVX-512F on this CPU";
  ModelConfig cfg;
  cfg.V = 300, cfg.X = 24, cfg.H = 40, cfg.L = 2;
  const int64_t T = 7, B = 5;  // 35 positions: a partial last panel
  SplitMix rng(5);
  const std::vector<double> params = rng.vec(parameter_count(cfg), -0.3, 0.3);
  Batch<double> b;
  b.T = T, b.B = B;
  for (int64_t r = 0; r < T * B; ++r)
    b.tokens.push_back(rng.index(cfg.V)), b.target.push_back(rng.index(cfg.V));
  LanguageModel<double> ref(cfg);
  const double want_loss = ref.forward(params, b, Reduction::batch_mean);
  const std::vector<double> want_p(ref.probs().begin(), ref.probs().end());
  std::vector<double> want_g(params.size(), 0.0);
  ref.backward(want_g, params, b);

  Batch<float> bf;
  bf.T = T, bf.B = B, bf.tokens = b.tokens, bf.target = b.target;
  const std::vector<float> pf(params.begin(), params.end());
  for (int threads : {1, 2, 3}) {
    SCOPED_TRACE(::testing::Message() << threads << " threads");
    LanguageModel<float> lm(cfg);
    lm.set_threads(threads);
    const double loss = lm.forward(pf, bf, Reduction::batch_mean);
    const std::vector<float> p(lm.probs().begin(), lm.probs().end());
    std::vector<float> g(pf.size(), 0.0f);
    lm.backward(g, pf, bf);
    EXPECT_THROW(lm.probs(), std::logic_error);  // backward took its memory
    EXPECT_TRUE(close("loss", std::vector<double>{loss}, std::vector<double>{want_loss}, 1e-4));
    EXPECT_TRUE(close("probs", p, want_p, 1e-4));
    for (const ParamInfo& info : parameter_layout(cfg)) {
      const std::vector<float> got(g.begin() + info.offset, g.begin() + info.offset + info.size);
      const std::vector<double> want(want_g.begin() + info.offset,
                                     want_g.begin() + info.offset + info.size);
      EXPECT_TRUE(close(info.name, got, want, 1e-4));
    }
  }
}

// readout_grad_sumsq: the squares of the readout's gradient as it stands after backward (what
// was there plus what backward added), against a float64 sum over those two tensors of `grad`.
// The squares of floats are exact in double; only the order of the sum differs (1e-12 relative).
// None from the float64 model (the BLAS readout) or before a backward.
TEST(VocabReadout, LanguageModelTakesTheReadoutGradientSquares) {
  if (!cpu::panel_gemm_available()) GTEST_SKIP() << "no AVX-512F on this CPU";
  ModelConfig cfg;
  cfg.V = 300, cfg.X = 24, cfg.H = 40, cfg.L = 1;
  SplitMix rng(8);
  const std::vector<double> pd = rng.vec(parameter_count(cfg), -0.3, 0.3);
  const std::vector<float> params(pd.begin(), pd.end());
  Batch<float> b;
  b.T = 6, b.B = 3;
  for (int64_t r = 0; r < b.T * b.B; ++r)
    b.tokens.push_back(rng.index(cfg.V)), b.target.push_back(rng.index(cfg.V));
  const std::vector<ParamInfo> layout = parameter_layout(cfg);
  const size_t readout = layout.end()[-2].offset;
  ASSERT_EQ(layout.back().offset + layout.back().size, params.size());
  for (int threads : {1, 2, 3}) {
    SCOPED_TRACE(::testing::Message() << threads << " threads");
    LanguageModel<float> lm(cfg);
    lm.set_threads(threads);
    lm.forward(params, b, Reduction::batch_mean);
    EXPECT_FALSE(lm.readout_grad_sumsq().has_value());
    const std::vector<double> before = rng.vec(params.size(), -0.01, 0.01);
    std::vector<float> g(before.begin(), before.end());
    lm.backward(g, params, b);
    double want = 0;
    for (size_t i = readout; i < g.size(); ++i) want += double(g[i]) * double(g[i]);
    ASSERT_TRUE(lm.readout_grad_sumsq().has_value());
    EXPECT_NEAR(*lm.readout_grad_sumsq(), want, 1e-12 * want);
  }
  LanguageModel<double> ref(cfg);
  Batch<double> bd;
  bd.T = b.T, bd.B = b.B, bd.tokens = b.tokens, bd.target = b.target;
  ref.forward(pd, bd, Reduction::batch_mean);
  std::vector<double> gd(pd.size(), 0.0);
  ref.backward(gd, pd, bd);
  EXPECT_FALSE(ref.readout_grad_sumsq().has_value());
}

}  // namespace
}  // namespace lstmgrad::test
