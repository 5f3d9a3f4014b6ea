// Checks shared by the tests of the cell's shapes (test_hidden_sizes.cpp, test_projection.cpp):
// hand BPTT = tape = finite differences for a model and its regularisers, and float32 against
// float64 with a carried-in state.
#pragma once
#include <gtest/gtest.h>

#include <random>
#include <string>

#include "compare.hpp"
#include "lstmgrad/check.hpp"
#include "lstmgrad/lstm.hpp"
#include "lstmgrad/regularize.hpp"

namespace lstmgrad::test {

struct Variant {
  std::string name;
  ModelConfig cfg;
  Regularization reg;
};

// `lstmgrad check` at T 5, B 3: every tensor within the tolerances (tape 1e-10, finite
// differences 1e-6; step 1e-4 with layer norm, CheckOptions::fd_step) and none all zero.
inline void expect_check_agrees(const Variant& v) {
  CheckOptions o;
  o.cfg = v.cfg, o.reg = v.reg;
  o.T = 5, o.B = 3, o.seed = 3;
  if (o.cfg.layer_norm) o.fd_step = 1e-4;
  const CheckReport r = run_check(o);
  for (const CheckRow& row : r.rows) {
    EXPECT_TRUE(row.ok) << row.tensor << ": tape " << row.tape_rel << ", fd " << row.fd_rel;
    EXPECT_GT(row.max_abs, 0) << row.tensor;
  }
  EXPECT_TRUE(r.ok);
}

// float32 (2 threads) against float64 on the same masks, T 7, B 5, a carried-in state: the loss,
// h_n, every gradient and dh0, ds0 within 1e-4 of each tensor's scale (the float32 golden
// tolerance). Then, without regularisers, infer's final states are forward's bits.
inline void expect_float32_matches_float64(const ModelConfig& cfg, const Regularization& reg,
                                           uint64_t seed) {
  std::mt19937_64 rng(seed);
  const std::vector<double> params = uniform(parameter_count(cfg), rng, -0.2, 0.2);
  Batch<double> b;
  b.T = 7, b.B = 5;
  std::uniform_int_distribution<int64_t> id(0, cfg.V - 1);
  for (int64_t k = 0; k < b.T * b.B; ++k) b.tokens.push_back(id(rng)), b.target.push_back(id(rng));
  b.h0 = uniform(static_cast<size_t>(cfg.h_offset(cfg.L, b.B)), rng, -0.5, 0.5);
  b.s0 = uniform(static_cast<size_t>(cfg.s_offset(cfg.L, b.B)), rng, -0.5, 0.5);
  Batch<float> f;
  f.T = b.T, f.B = b.B, f.tokens = b.tokens, f.target = b.target;
  f.h0 = cast<float>(b.h0), f.s0 = cast<float>(b.s0);
  LanguageModel<double> ref(cfg);
  LanguageModel<float> lm(cfg);
  lm.set_threads(2);
  ref.set_regularization(reg, 4), lm.set_regularization(reg, 4);
  const std::vector<float> fparams = cast<float>(params);
  const double want = ref.forward(params, b, Reduction::mean);
  EXPECT_NEAR(lm.forward(fparams, f, Reduction::mean), want, 1e-4 * want);
  EXPECT_TRUE(close("h_n", std::vector<double>(lm.h_n().begin(), lm.h_n().end()),
                    std::vector<double>(ref.h_n().begin(), ref.h_n().end()), 1e-4));
  std::vector<double> g(params.size(), 0.0), dh0(b.h0.size()), ds0(b.s0.size());
  std::vector<float> fg(params.size(), 0.0f), fdh0(b.h0.size()), fds0(b.s0.size());
  ref.backward(g, params, b, nullptr, dh0.data(), ds0.data());
  lm.backward(fg, fparams, f, nullptr, fdh0.data(), fds0.data());
  for (const ParamInfo& p : parameter_layout(cfg)) {
    const std::vector<float> x(fg.begin() + p.offset, fg.begin() + p.offset + p.size);
    const std::vector<double> y(g.begin() + p.offset, g.begin() + p.offset + p.size);
    EXPECT_TRUE(close(p.name, x, y, 1e-4));
  }
  EXPECT_TRUE(close("dh0", fdh0, dh0, 1e-4));
  EXPECT_TRUE(close("ds0", fds0, ds0, 1e-4));
  LanguageModel<double> plain(cfg);
  plain.forward(params, b, Reduction::mean);
  const std::vector<double> h_n(plain.h_n().begin(), plain.h_n().end());
  const std::vector<double> s_n(plain.s_n().begin(), plain.s_n().end());
  plain.infer(params, b, Reduction::mean);
  EXPECT_EQ(std::vector<double>(plain.h_n().begin(), plain.h_n().end()), h_n);
  EXPECT_EQ(std::vector<double>(plain.s_n().begin(), plain.s_n().end()), s_n);
}

}  // namespace lstmgrad::test
