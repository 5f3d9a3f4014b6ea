// The continuous cache at evaluation (train/neural_cache.hpp): against a plain recomputation from
// each stream's whole history, against a golden file written by a numpy port of AWD-LSTM's
// pointer.py arithmetic (tools/make_cache_golden.py), and `lstmgrad eval --cache-*` end to end.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <vector>

#include "cli_runner.hpp"
#include "lstmgrad/safetensors.hpp"
#include "train/neural_cache.hpp"

namespace lstmgrad::test {
namespace {

using train::CacheOptions;
using train::NeuralCache;

// Random windows for B streams: outputs h [T,B,H] in (-1, 1), probabilities p [T,B,V] (each row
// normalised) and targets [T,B] from a small vocabulary, so that words repeat in the history.
struct Windows {
  int64_t B, H, V;
  std::vector<std::vector<double>> h, p;
  std::vector<std::vector<int64_t>> y;
  std::vector<int64_t> T;
  Windows(int64_t B_, int64_t H_, int64_t V_, std::vector<int64_t> lengths, unsigned seed)
      : B(B_), H(H_), V(V_), T(std::move(lengths)) {
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<double> u(-1, 1), pos(0.05, 1);
    std::uniform_int_distribution<int64_t> word(0, V - 1);
    for (int64_t t : T) {
      std::vector<double> hw(static_cast<size_t>(t * B * H)), pw(static_cast<size_t>(t * B * V));
      std::vector<int64_t> yw(static_cast<size_t>(t * B));
      for (double& v : hw) v = u(rng);
      for (int64_t r = 0; r < t * B; ++r) {
        double s = 0;
        for (int64_t k = 0; k < V; ++k) s += pw[static_cast<size_t>(r * V + k)] = pos(rng);
        for (int64_t k = 0; k < V; ++k) pw[static_cast<size_t>(r * V + k)] /= s;
        yw[static_cast<size_t>(r)] = word(rng);
      }
      h.push_back(hw), p.push_back(pw), y.push_back(yw);
    }
  }
};

// The mixture's -log p(target) of every position, from each stream's whole history in order,
// written directly from the formula (no ring, no shift of the logits; theta h.h stays small).
std::vector<double> reference(const Windows& w, const CacheOptions& o) {
  std::vector<std::vector<std::vector<double>>> keys(static_cast<size_t>(w.B));
  std::vector<std::vector<int64_t>> next(static_cast<size_t>(w.B));
  std::vector<double> out;
  for (size_t k = 0; k < w.T.size(); ++k)
    for (int64_t t = 0; t < w.T[k]; ++t)
      for (int64_t b = 0; b < w.B; ++b) {
        const int64_t r = t * w.B + b;
        const double* h = w.h[k].data() + r * w.H;
        const int64_t y = w.y[k][static_cast<size_t>(r)];
        const double pm = w.p[k][static_cast<size_t>(r * w.V + y)];
        auto& kb = keys[static_cast<size_t>(b)];
        auto& nb = next[static_cast<size_t>(b)];
        const size_t n = kb.size(), from = n > static_cast<size_t>(o.window) ? n - o.window : 0;
        double all = 0, hit = 0;
        for (size_t i = from; i < n; ++i) {
          double dot = 0;
          for (int64_t j = 0; j < w.H; ++j) dot += kb[i][static_cast<size_t>(j)] * h[j];
          const double e = std::exp(o.theta * dot);
          all += e;
          if (nb[i] == y) hit += e;
        }
        out.push_back(n == from ? -std::log(pm)
                                : -std::log((1 - o.lambda) * pm + o.lambda * hit / all));
        kb.emplace_back(h, h + w.H);
        nb.push_back(y);
      }
  return out;
}

double total(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return s;
}

template <class Real>
double cached(const Windows& w, const CacheOptions& o) {
  NeuralCache<Real> cache(w.B, w.H, o);
  double sum = 0;
  for (size_t k = 0; k < w.T.size(); ++k) {
    const std::vector<Real> h(w.h[k].begin(), w.h[k].end()), p(w.p[k].begin(), w.p[k].end());
    sum += cache.score(h.data(), p.data(), w.V, w.y[k].data(), w.T[k]);
  }
  return sum;
}

TEST(NeuralCache, MatchesTheFormulaOverEachStreamsHistory) {
  // Windows of several lengths: the ring wraps inside a window and across windows.
  const Windows w(3, 5, 7, {4, 9, 1, 6}, 11);
  for (const CacheOptions o : {CacheOptions{1, 0.7, 0.3}, CacheOptions{4, 1.0, 0.1},
                               CacheOptions{7, -0.5, 0.9}, CacheOptions{100, 2.0, 0.95}}) {
    const double want = total(reference(w, o)), got = cached<double>(w, o);
    EXPECT_NEAR(got, want, 1e-12 * std::abs(want)) << "window " << o.window;
    // float32 keys and probabilities: ~1e-7 relative per term, summed over 60 terms
    EXPECT_NEAR(cached<float>(w, o), want, 1e-5 * std::abs(want)) << "window " << o.window;
  }
}

TEST(NeuralCache, LambdaZeroIsThePlainLossExactly) {
  const Windows w(2, 4, 5, {3, 5}, 3);
  double plain = 0;
  for (size_t k = 0; k < w.T.size(); ++k)
    for (int64_t r = 0; r < w.T[k] * w.B; ++r)
      plain -= std::log(w.p[k][static_cast<size_t>(r * w.V + w.y[k][static_cast<size_t>(r)])]);
  EXPECT_EQ(cached<double>(w, {10, 1.0, 0.0}), plain);
}

TEST(NeuralCache, StreamsKeepTheirOwnHistories) {
  // Two streams at once give the sum of each stream alone.
  const Windows both(2, 4, 6, {5, 7}, 5);
  const CacheOptions o{6, 1.3, 0.4};
  double alone = 0;
  for (int64_t b = 0; b < 2; ++b) {
    Windows one = both;
    one.B = 1;
    for (size_t k = 0; k < both.T.size(); ++k) {
      one.h[k].clear(), one.p[k].clear(), one.y[k].clear();
      for (int64_t t = 0; t < both.T[k]; ++t) {
        const int64_t r = t * 2 + b;
        one.h[k].insert(one.h[k].end(), both.h[k].begin() + r * 4, both.h[k].begin() + r * 4 + 4);
        one.p[k].insert(one.p[k].end(), both.p[k].begin() + r * 6, both.p[k].begin() + r * 6 + 6);
        one.y[k].push_back(both.y[k][static_cast<size_t>(r)]);
      }
    }
    alone += cached<double>(one, o);
  }
  EXPECT_NEAR(cached<double>(both, o), alone, 1e-12 * alone);
}

// tools/make_cache_golden.py: pointer.py's arithmetic (the history concatenated and sliced, the
// attention by softmax, the cache distribution over the vocabulary by one-hot rows) in numpy.
TEST(NeuralCache, MatchesTheNumpyPortOfPointerPy) {
  const std::string file = std::string(LSTMGRAD_TEST_DATA) + "/golden_cache/cache.safetensors";
  const io::TensorFile g = io::read_safetensors(file);
  auto f64 = [&](const char* name) { return io::to_floats<double>(g.require(name, file), file); };
  auto i64 = [&](const char* name) { return io::to_ints(g.require(name, file), file); };
  const std::vector<double> h = f64("h"), p = f64("p"), opts = f64("options"), want = f64("loss");
  const std::vector<int64_t> y = i64("target"), shape = i64("shape");  // T, B, H, V, seq
  const int64_t T = shape[0], B = shape[1], H = shape[2], V = shape[3], seq = shape[4];
  const CacheOptions o{static_cast<int64_t>(opts[0]), opts[1], opts[2]};
  NeuralCache<double> cache(B, H, o);
  double got = 0;
  for (int64_t t0 = 0; t0 < T; t0 += seq) {  // in windows of seq steps, the history carried
    const int64_t n = std::min(seq, T - t0);
    got += cache.score(h.data() + t0 * B * H, p.data() + t0 * B * V, V, y.data() + t0 * B, n);
  }
  EXPECT_NEAR(got, want[0], 1e-12 * std::abs(want[0]));
}

// A small word-level model trained for an epoch on phrases; its evaluation with the cache on and
// with lambda 0 (the plain loss to the bit).
TEST(NeuralCache, EvalWithTheCacheOnATrainedModel) {
  TempDir dir;
  const std::string words[] = {"the cat sat on the mat", "a dog ran in the park",
                               "the bird sang at dawn", "a fox hid by the river"};
  std::ofstream train(dir / "train.txt"), test(dir / "test.txt");
  for (int k = 0; k < 300; ++k) train << words[(k * 7 + k / 5) % 4] << "\n";
  for (int k = 0; k < 40; ++k) test << words[(k * 3 + k / 7) % 4] << "\n";
  train.close(), test.close();
  const auto run = dir / "run";
  ASSERT_EQ(run_cli("train --train " + (dir / "train.txt").string() +
                    " --layers 1 --hidden 16 --embed 8 --seq 10 --batch 4 --epochs 1 --dtype f64 "
                    "--lr 1 --quiet --out " +
                    run.string())
                .rc,
            0);
  auto eval = [&](const std::string& flags) {
    const CliResult r = run_cli("eval --json --dtype f64 --batch 2 --seq 7 --model " +
                                (run / "model.safetensors").string() + " --data " +
                                (dir / "test.txt").string() + flags);
    EXPECT_EQ(r.rc, 0) << r.err;
    return nlohmann::json::parse(r.out)["loss"].get<double>();
  };
  const double plain = eval("");
  EXPECT_EQ(eval(" --cache-window 50 --cache-lambda 0"), plain);
  const double cached = eval(" --cache-window 50 --cache-theta 0.5 --cache-lambda 0.3");
  EXPECT_TRUE(std::isfinite(cached));
  EXPECT_NE(cached, plain);
}

TEST(NeuralCache, BadFlagsGetOneLine) {
  for (const auto& [flag, value] :
       {std::pair{"--cache-window", "-1"}, std::pair{"--cache-lambda", "1.5"},
        std::pair{"--cache-lambda", "nan"}, std::pair{"--cache-theta", "inf"}}) {
    const CliResult r = run_cli(
        std::string("eval --model nowhere.safetensors --data nowhere.txt ") + flag + " " + value);
    EXPECT_EQ(r.rc, 2) << flag << " " << value;
    EXPECT_NE(r.err.find(flag), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }
}

}  // namespace
}  // namespace lstmgrad::test
