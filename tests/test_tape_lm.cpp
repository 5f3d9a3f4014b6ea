// The LSTM language model on the autodiff tape (tape_lm), checked two ways that do not involve
// the tape's own backward: central finite differences of its loss, and a plain-loop forward pass
// written out here from the equations of docs/derivation.md, "Forward".
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "compare.hpp"
#include "lstmgrad/autodiff.hpp"
#include "splitmix.hpp"

namespace {

using lstmgrad::Batch;
using lstmgrad::InputKind;
using lstmgrad::ModelConfig;
using lstmgrad::ParamInfo;
using lstmgrad::Readout;
using lstmgrad::Reduction;
using lstmgrad::ad::tape_lm;
using lstmgrad::ad::TapeLmResult;

using Rng = lstmgrad::test::SplitMix;

struct Case {
  ModelConfig cfg;
  Batch<double> batch;
  std::vector<double> params;  // flat, parameter_layout order
};

// A random model and batch. Weights in [-0.8, 0.8] so that gates are neither saturated nor
// linear; nonzero h0/s0 so that their gradients and their use are both exercised.
Case make_case(InputKind in, Readout ro, bool soft, int64_t T, int64_t B, int64_t X, int64_t H,
               int64_t L, int64_t V, uint64_t seed) {
  Rng rng{seed};
  Case c;
  c.cfg = ModelConfig{in, ro, V, X, H, L};
  c.params = rng.vec(lstmgrad::parameter_count(c.cfg), -0.8, 0.8);
  Batch<double>& b = c.batch;
  b.T = T;
  b.B = B;
  const size_t TB = static_cast<size_t>(T * B);
  if (in == InputKind::dense) {
    b.dense = rng.vec(TB * static_cast<size_t>(X), -1, 1);
  } else {
    for (size_t k = 0; k < TB; ++k) b.tokens.push_back(rng.index(V));
    b.tokens[1] = b.tokens[0];  // a repeated token: its embedding row gets two contributions
  }
  if (soft) {
    b.target_probs = rng.vec(TB * static_cast<size_t>(V), 0.05, 1);
    for (size_t r = 0; r < TB; ++r) {
      double s = 0;
      for (int64_t k = 0; k < V; ++k) s += b.target_probs[r * static_cast<size_t>(V) + k];
      for (int64_t k = 0; k < V; ++k) b.target_probs[r * static_cast<size_t>(V) + k] /= s;
    }
  } else {
    for (size_t k = 0; k < TB; ++k) b.target.push_back(rng.index(V));
  }
  b.h0 = rng.vec(static_cast<size_t>(L * B * H), -0.9, 0.9);
  b.s0 = rng.vec(static_cast<size_t>(L * B * H), -1.5, 1.5);
  return c;
}

double loss_of(const Case& c, Reduction red) {
  return tape_lm(c.cfg, c.params, c.batch, red).loss;
}

// Central differences of the loss with respect to every entry of `x` (a vector inside `c`).
std::vector<double> finite_differences(Case& c, std::vector<double>& x, Reduction red) {
  const double e = 1e-6;
  std::vector<double> g(x.size());
  for (size_t k = 0; k < x.size(); ++k) {
    const double x0 = x[k];
    x[k] = x0 + e;
    const double up = loss_of(c, red);
    x[k] = x0 - e;
    const double down = loss_of(c, red);
    x[k] = x0;
    g[k] = (up - down) / (2 * e);
  }
  return g;
}

// Tolerance for tape vs finite differences, relative to the tensor's largest gradient entry.
// The central difference (f(p+e) - f(p-e)) / 2e with e = 1e-6 has truncation error
// e^2/6 |f'''| = O(1e-13) and rounding error O(eps |f| / e) = 1e-16 |f| / 1e-6 = 1e-10 |f|;
// the loss |f| is between ~1 (mean) and ~10 (sum) here, so about 1e-10..1e-9 absolute. The
// smallest tensors' largest gradients here are ~2e-3, so the FD noise stays below ~1e-7
// relative (observed worst: 1.04e-7, encoder.weight under mean); 1e-6 leaves a 10x margin while
// a wrong gradient still fails (a 0.1% error in one softmax-backward term fails by 10x).
constexpr double kFdTol = 1e-6;

void expect_matches_fd(const std::vector<double>& tape, const std::vector<double>& fd,
                       const std::string& what) {
  double scale = 0;
  for (double g : fd) scale = std::max(scale, std::abs(g));
  EXPECT_GT(scale, 0) << what << ": gradient is identically zero, the check would be vacuous";
  EXPECT_TRUE(lstmgrad::test::close(what + " (tape vs finite differences)", tape, fd, kFdTol));
}

// Every gradient tape_lm returns (parameters, h0, s0, dense input) against finite differences.
void check_against_fd(Case c, Reduction red) {
  const TapeLmResult r = tape_lm(c.cfg, c.params, c.batch, red);
  const std::vector<double> fd = finite_differences(c, c.params, red);
  for (const ParamInfo& info : lstmgrad::parameter_layout(c.cfg)) {
    const auto tape_part =
        std::vector<double>(r.grad.begin() + info.offset, r.grad.begin() + info.offset + info.size);
    const auto fd_part =
        std::vector<double>(fd.begin() + info.offset, fd.begin() + info.offset + info.size);
    expect_matches_fd(tape_part, fd_part, info.name);
  }
  expect_matches_fd(r.dh0, finite_differences(c, c.batch.h0, red), "h0");
  expect_matches_fd(r.ds0, finite_differences(c, c.batch.s0, red), "s0");
  if (c.cfg.input == InputKind::dense)
    expect_matches_fd(r.dinput, finite_differences(c, c.batch.dense, red), "dense input");
  else
    EXPECT_TRUE(r.dinput.empty());
}

const Reduction kReductions[] = {Reduction::mean, Reduction::sum, Reduction::batch_mean};

TEST(TapeLm, IdentityDenseSoftTargetsMatchFiniteDifferences) {
  // The handout's model: dense x, p = softmax(h), soft targets; two layers.
  const Case c = make_case(InputKind::dense, Readout::identity, true, /*T=*/3, /*B=*/2, /*X=*/2,
                           /*H=*/3, /*L=*/2, /*V=*/3, 11);
  for (Reduction red : kReductions) {
    SCOPED_TRACE("reduction " + lstmgrad::to_string(red));
    check_against_fd(c, red);
  }
}

TEST(TapeLm, LinearEmbeddingClassTargetsMatchFiniteDifferences) {
  const Case c = make_case(InputKind::embedding, Readout::linear, false, /*T=*/3, /*B=*/2,
                           /*X=*/3, /*H=*/4, /*L=*/2, /*V=*/5, 12);
  for (Reduction red : kReductions) {
    SCOPED_TRACE("reduction " + lstmgrad::to_string(red));
    check_against_fd(c, red);
  }
}

TEST(TapeLm, LinearDenseSoftTargetsOneLayerMatchFiniteDifferences) {
  const Case c = make_case(InputKind::dense, Readout::linear, true, /*T=*/3, /*B=*/2, /*X=*/3,
                           /*H=*/2, /*L=*/1, /*V=*/4, 13);
  check_against_fd(c, Reduction::mean);
}

TEST(TapeLm, ReductionsScaleTheSameSum) {
  // With T = 3, B = 2: sum = T*B * mean = B * batch_mean, for the loss and for every gradient.
  const Case c = make_case(InputKind::embedding, Readout::linear, false, 3, 2, 3, 4, 2, 5, 14);
  const TapeLmResult sum = tape_lm(c.cfg, c.params, c.batch, Reduction::sum);
  const TapeLmResult mean = tape_lm(c.cfg, c.params, c.batch, Reduction::mean);
  const TapeLmResult bmean = tape_lm(c.cfg, c.params, c.batch, Reduction::batch_mean);
  EXPECT_NEAR(sum.loss, 6 * mean.loss, 1e-12 * sum.loss);
  EXPECT_NEAR(sum.loss, 2 * bmean.loss, 1e-12 * sum.loss);
  double worst_mean = 0, worst_bmean = 0;
  for (size_t k = 0; k < sum.grad.size(); ++k) {
    worst_mean = std::max(worst_mean, std::abs(sum.grad[k] - 6 * mean.grad[k]));
    worst_bmean = std::max(worst_bmean, std::abs(sum.grad[k] - 2 * bmean.grad[k]));
  }
  EXPECT_LE(worst_mean, 1e-13) << "max |sum grad - 6 mean grad|";
  EXPECT_LE(worst_bmean, 1e-13) << "max |sum grad - 2 batch_mean grad|";
}

// The forward pass (docs/derivation.md, "Forward") in plain loops: returns the summed loss,
// fills h_n, s_n [L,B,H].
double plain_forward(const Case& c, std::vector<double>& h_n, std::vector<double>& s_n) {
  const ModelConfig& m = c.cfg;
  const Batch<double>& b = c.batch;
  const auto layout = lstmgrad::parameter_layout(m);
  auto param = [&](const std::string& name) {
    for (const ParamInfo& p : layout)
      if (p.name == name) return c.params.data() + p.offset;
    throw std::logic_error(name);
  };
  const int64_t T = b.T, B = b.B, H = m.H, V = m.V;
  // xs[t][r] is the input row of sequence r at step t for the current layer.
  std::vector<std::vector<std::vector<double>>> xs(T, std::vector<std::vector<double>>(B));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t r = 0; r < B; ++r) {
      const double* src = m.input == InputKind::dense
                              ? &b.dense[(t * B + r) * m.X]
                              : param("encoder.weight") + b.tokens[t * B + r] * m.X;
      xs[t][r].assign(src, src + m.X);
    }
  h_n.assign(m.L * B * H, 0);
  s_n.assign(m.L * B * H, 0);
  for (int64_t k = 0; k < m.L; ++k) {
    const int64_t in = k == 0 ? m.X : H;
    const double* Wi = param("rnn.weight_ih_l" + std::to_string(k));
    const double* Wh = param("rnn.weight_hh_l" + std::to_string(k));
    const double* bi = param("rnn.bias_ih_l" + std::to_string(k));
    const double* bh = param("rnn.bias_hh_l" + std::to_string(k));
    for (int64_t r = 0; r < B; ++r) {
      std::vector<double> h(&b.h0[(k * B + r) * H], &b.h0[(k * B + r) * H] + H);
      std::vector<double> s(&b.s0[(k * B + r) * H], &b.s0[(k * B + r) * H] + H);
      for (int64_t t = 0; t < T; ++t) {
        std::vector<double> z(4 * H);  // [i; f; a; o] pre-activations
        for (int64_t j = 0; j < 4 * H; ++j) {
          z[j] = bi[j] + bh[j];
          for (int64_t q = 0; q < in; ++q) z[j] += Wi[j * in + q] * xs[t][r][q];
          for (int64_t q = 0; q < H; ++q) z[j] += Wh[j * H + q] * h[q];
        }
        auto sig = [](double v) { return 1 / (1 + std::exp(-v)); };
        for (int64_t j = 0; j < H; ++j) {
          const double i = sig(z[j]), f = sig(z[H + j]), a = std::tanh(z[2 * H + j]),
                       o = sig(z[3 * H + j]);
          s[j] = i * a + f * s[j];
          h[j] = o * std::tanh(s[j]);
        }
        xs[t][r] = h;
      }
      std::copy(h.begin(), h.end(), &h_n[(k * B + r) * H]);
      std::copy(s.begin(), s.end(), &s_n[(k * B + r) * H]);
    }
  }
  double loss = 0;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t r = 0; r < B; ++r) {
      std::vector<double> logits = xs[t][r];
      if (m.readout == Readout::linear) {
        logits.assign(V, 0);
        for (int64_t v = 0; v < V; ++v) {
          logits[v] = param("decoder.bias")[v];
          for (int64_t q = 0; q < H; ++q)
            logits[v] += param("decoder.weight")[v * H + q] * xs[t][r][q];
        }
      }
      double zsum = 0;
      for (double l : logits) zsum += std::exp(l);
      for (int64_t v = 0; v < V; ++v) {
        const double y = b.soft_targets() ? b.target_probs[(t * B + r) * V + v]
                                          : (b.target[t * B + r] == v ? 1.0 : 0.0);
        loss -= y * std::log(std::exp(logits[v]) / zsum);
      }
    }
  return loss;
}

TEST(TapeLm, ForwardMatchesPlainLoops) {
  for (const Case& c :
       {make_case(InputKind::dense, Readout::identity, true, 4, 3, 2, 3, 2, 3, 21),
        make_case(InputKind::embedding, Readout::linear, false, 4, 3, 3, 4, 3, 6, 22)}) {
    std::vector<double> h_n, s_n;
    const double want = plain_forward(c, h_n, s_n);
    const TapeLmResult r = tape_lm(c.cfg, c.params, c.batch, Reduction::sum);
    EXPECT_NEAR(r.loss, want, 1e-12 * want);
    ASSERT_EQ(r.h_n.size(), h_n.size());
    ASSERT_EQ(r.s_n.size(), s_n.size());
    for (size_t k = 0; k < h_n.size(); ++k) {
      EXPECT_NEAR(r.h_n[k], h_n[k], 1e-13) << "h_n[" << k << "]";
      EXPECT_NEAR(r.s_n[k], s_n[k], 1e-13) << "s_n[" << k << "]";
    }
  }
}

TEST(TapeLm, StateCarriesAcrossWindows) {
  // Two windows of 2 steps, the second starting from the first's h_n, s_n, give the same summed
  // loss and final state as one window of 4 steps.
  const Case whole = make_case(InputKind::embedding, Readout::linear, false, 4, 2, 3, 3, 2, 5, 23);
  auto window = [&](int64_t t0, const std::vector<double>& h0, const std::vector<double>& s0) {
    Case w = whole;
    w.batch.T = 2;
    const auto first = whole.batch.tokens.begin() + t0 * 2;
    w.batch.tokens.assign(first, first + 4);
    const auto ft = whole.batch.target.begin() + t0 * 2;
    w.batch.target.assign(ft, ft + 4);
    w.batch.h0 = h0;
    w.batch.s0 = s0;
    return tape_lm(w.cfg, w.params, w.batch, Reduction::sum);
  };
  const TapeLmResult all = tape_lm(whole.cfg, whole.params, whole.batch, Reduction::sum);
  const TapeLmResult a = window(0, whole.batch.h0, whole.batch.s0);
  const TapeLmResult b = window(2, a.h_n, a.s_n);
  EXPECT_NEAR(a.loss + b.loss, all.loss, 1e-12 * all.loss);
  for (size_t k = 0; k < all.h_n.size(); ++k) {
    EXPECT_NEAR(b.h_n[k], all.h_n[k], 1e-14);
    EXPECT_NEAR(b.s_n[k], all.s_n[k], 1e-14);
  }
}

TEST(TapeLm, EmptyInitialStateIsZeros) {
  Case c = make_case(InputKind::dense, Readout::linear, false, 2, 2, 2, 3, 2, 4, 24);
  std::fill(c.batch.h0.begin(), c.batch.h0.end(), 0.0);
  std::fill(c.batch.s0.begin(), c.batch.s0.end(), 0.0);
  const TapeLmResult zeros = tape_lm(c.cfg, c.params, c.batch, Reduction::mean);
  c.batch.h0.clear();
  c.batch.s0.clear();
  const TapeLmResult empty = tape_lm(c.cfg, c.params, c.batch, Reduction::mean);
  EXPECT_EQ(zeros.loss, empty.loss);
  EXPECT_EQ(zeros.grad, empty.grad);
  EXPECT_EQ(zeros.dh0, empty.dh0);
  EXPECT_EQ(empty.dh0.size(), static_cast<size_t>(2 * 2 * 3));
}

TEST(TapeLm, MediumModelIsQuick) {
  // T=20, B=4, H=8, L=3: a few thousand tape nodes; the whole forward + backward takes
  // milliseconds (gtest prints the time).
  const Case c = make_case(InputKind::embedding, Readout::linear, false, 20, 4, 8, 8, 3, 10, 25);
  const TapeLmResult r = tape_lm(c.cfg, c.params, c.batch, Reduction::mean);
  EXPECT_TRUE(std::isfinite(r.loss));
  EXPECT_EQ(r.grad.size(), c.params.size());
  for (double g : r.grad) ASSERT_TRUE(std::isfinite(g));
}

TEST(TapeLm, RejectsMismatchedSizes) {
  const Case good = make_case(InputKind::embedding, Readout::linear, false, 2, 2, 3, 3, 1, 4, 26);
  Case c = good;
  c.params.pop_back();
  EXPECT_THROW(tape_lm(c.cfg, c.params, c.batch, Reduction::mean), std::invalid_argument);
  c = good;
  c.batch.tokens[0] = 4;
  EXPECT_THROW(tape_lm(c.cfg, c.params, c.batch, Reduction::mean), std::invalid_argument);
  c = good;
  c.batch.target.pop_back();
  EXPECT_THROW(tape_lm(c.cfg, c.params, c.batch, Reduction::mean), std::invalid_argument);
  c = good;
  c.batch.h0.resize(5);
  EXPECT_THROW(tape_lm(c.cfg, c.params, c.batch, Reduction::mean), std::invalid_argument);
}

}  // namespace
