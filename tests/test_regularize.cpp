// AWD-LSTM's regularisers (lstmgrad/regularize.hpp): weight drop, locked and embedding dropout,
// tied weights, AR and TAR. The float64 hand BPTT against the tape and finite differences for
// each alone and together; float32 against float64 on the same masks; the masks themselves
// (locked over time, their rate, the same for any split of the batch); training and resume.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "cli_runner.hpp"
#include "compare.hpp"
#include "lstmgrad/check.hpp"
#include "lstmgrad/error.hpp"
#include "lstmgrad/lstm.hpp"
#include "lstmgrad/model_io.hpp"
#include "lstmgrad/safetensors.hpp"
#include "phrases.hpp"
#include "resume_runs.hpp"
#include "tensor_files.hpp"

namespace lstmgrad::test {
namespace {

struct Case {
  std::string name;
  Regularization reg;
  int64_t L = 2, T = 4;
  bool tie = false;
  InputKind input = InputKind::embedding;
  Readout readout = Readout::linear;
  Reduction red = Reduction::mean;
  bool peephole = false;
  double zoneout_h = 0, zoneout_s = 0;  // the model's (ModelConfig)
  bool layer_norm = false;
};

Regularization
awd() {  // AWD-LSTM's PTB rates (embedding dropout 0.1, weight drop 0.5, AR 2, TAR 1)
  Regularization r;
  r.dropout_in = 0.4, r.dropout_hid = 0.25, r.dropout_out = 0.4, r.dropout_emb = 0.1;
  r.weight_drop = 0.5, r.ar = 2, r.tar = 1;
  return r;
}

Case mk(std::string name, Regularization r, int64_t L = 2, int64_t T = 4, bool tie = false) {
  Case c;
  c.name = std::move(name), c.reg = r, c.L = L, c.T = T, c.tie = tie;
  return c;
}

std::vector<Case> cases() {
  auto one = [](std::string n, auto set) {
    Regularization r;
    set(r);
    return mk(std::move(n), r);
  };
  std::vector<Case> v = {
      one("dropout_in", [](Regularization& r) { r.dropout_in = 0.5; }),
      one("dropout_hid", [](Regularization& r) { r.dropout_hid = 0.5; }),
      one("dropout_out", [](Regularization& r) { r.dropout_out = 0.5; }),
      one("dropout_emb", [](Regularization& r) { r.dropout_emb = 0.5; }),
      one("weight_drop", [](Regularization& r) { r.weight_drop = 0.5; }),
      one("dropout_rec", [](Regularization& r) { r.dropout_rec = 0.5; }),
      one("ar", [](Regularization& r) { r.ar = 2; }),
      one("tar", [](Regularization& r) { r.tar = 1; }),
  };
  v.push_back(mk("tied", Regularization{}, 2, 4, true));
  v.push_back(mk("awd_combination", awd(), 3, 5, true));
  v.push_back(mk("tar_T1", awd(), 2, 1, true));  // TAR has no pair of steps: 0
  v.push_back(mk("hid_L1", awd(), 1, 4, true));  // no boundary between layers: no hid mask
  Case dense = mk("dense_identity", awd(), 2, 4);
  dense.reg.dropout_emb = 0, dense.input = InputKind::dense, dense.readout = Readout::identity;
  v.push_back(dense);
  Case sum = mk("sum_peephole", awd(), 2, 4, true);
  sum.red = Reduction::sum, sum.peephole = true;
  v.push_back(sum);
  Case rec = mk("rec_weight_drop_peephole", awd(), 3, 5, true);  // both on weight_hh's product
  rec.reg.dropout_rec = 0.3, rec.peephole = true;
  v.push_back(rec);
  Case zh = mk("zoneout_h", Regularization{});
  zh.zoneout_h = 0.3;
  v.push_back(zh);
  Case zs = mk("zoneout_s", Regularization{});
  zs.zoneout_s = 0.4;
  v.push_back(zs);
  Case all = rec;  // every regulariser, peepholes, and zoneout on both
  all.name = "zoneout_everything", all.zoneout_h = 0.2, all.zoneout_s = 0.3;
  v.push_back(all);
  Case ln = mk("layer_norm", Regularization{});
  ln.layer_norm = true;
  v.push_back(ln);
  Case ln_all = all;  // layer norm with every regulariser and zoneout (no peepholes: refused)
  ln_all.name = "layer_norm_everything", ln_all.layer_norm = true, ln_all.peephole = false;
  v.push_back(ln_all);
  Case ln_dense = dense;
  ln_dense.name = "layer_norm_dense_identity", ln_dense.layer_norm = true;
  v.push_back(ln_dense);
  return v;
}

CheckOptions options(const Case& c) {
  CheckOptions o;
  o.cfg = {c.input,    c.readout, 6,           4,           4,           c.L,
           c.peephole, c.tie,     c.zoneout_h, c.zoneout_s, c.layer_norm};
  if (c.readout == Readout::identity) o.cfg.V = o.cfg.H;
  o.T = c.T, o.B = 3, o.reduction = c.red, o.reg = c.reg, o.seed = 7;
  if (c.layer_norm) o.fd_step = 1e-4;  // (check.hpp: rows near zero variance)
  return o;
}

class Regularized : public ::testing::TestWithParam<Case> {};

// Tape: the same float64 arithmetic in another order (1e-10 of each tensor's scale); five-point
// central differences with e = 1e-3: O(e^4) truncation and O(1e-16/e) rounding, 1e-6 (the masks
// are fixed by the seed, so the objective is smooth in every input).
TEST_P(Regularized, HandMatchesTapeAndFiniteDifferences) {
  const CheckReport r = run_check(options(GetParam()));
  EXPECT_NEAR(r.loss_hand, r.loss_tape, 1e-12 * std::max(1.0, r.loss_hand));
  EXPECT_NEAR(r.ce_hand, r.ce_tape, 1e-12 * std::max(1.0, r.ce_hand));
  for (const CheckRow& row : r.rows) {
    EXPECT_TRUE(row.ok) << row.tensor << ": tape " << row.tape_rel << ", fd " << row.fd_rel;
    EXPECT_GT(row.max_abs, 0) << row.tensor;  // a gradient that is there
  }
  EXPECT_TRUE(r.ok);
  // AR and TAR add to the objective; without them it is the cross-entropy.
  const Regularization& reg = GetParam().reg;
  if (reg.ar > 0 || (reg.tar > 0 && GetParam().T > 1))
    EXPECT_GT(r.loss_hand, r.ce_hand);
  else
    EXPECT_EQ(r.loss_hand, r.ce_hand);
}

// float32 (the fused kernels and readout where AVX-512 is) against float64 on the same masks:
// 24-bit mantissas over T = 5 steps and 3 layers; 1e-4 of each tensor's scale, as the float32
// golden tests, while a derivation slip is O(1).
TEST_P(Regularized, Float32MatchesFloat64OnTheSameMasks) {
  const Case& c = GetParam();
  const CheckOptions o = options(c);
  std::mt19937_64 rng(11);
  const std::vector<double> params = uniform(parameter_count(o.cfg), rng, -0.5, 0.5);
  Batch<double> b;
  b.T = o.T, b.B = o.B;
  std::uniform_int_distribution<int64_t> id(0, o.cfg.V - 1);
  for (int64_t k = 0; k < o.T * o.B; ++k) {
    if (o.cfg.input == InputKind::embedding) b.tokens.push_back(id(rng));
    b.target.push_back(id(rng));
  }
  if (o.cfg.input == InputKind::dense)
    b.dense = uniform(static_cast<size_t>(o.T * o.B * o.cfg.X), rng);
  Batch<float> f;
  f.T = b.T, f.B = b.B, f.tokens = b.tokens, f.target = b.target, f.dense = cast<float>(b.dense);
  LanguageModel<double> ref(o.cfg);
  LanguageModel<float> lm(o.cfg);
  ref.set_regularization(o.reg, 99), lm.set_regularization(o.reg, 99);
  const double want = ref.forward(params, b, o.reduction);
  const std::vector<float> fparams = cast<float>(params);
  const double got = lm.forward(fparams, f, o.reduction);
  EXPECT_NEAR(got, want, 1e-4 * std::max(1.0, std::abs(want)));
  EXPECT_NEAR(lm.cross_entropy(), ref.cross_entropy(), 1e-4 * std::max(1.0, ref.cross_entropy()));
  std::vector<double> g(params.size(), 0.0);
  std::vector<float> fg(params.size(), 0.0f);
  ref.backward(g, params, b);
  lm.backward(fg, fparams, f);
  for (const ParamInfo& p : parameter_layout(o.cfg)) {
    const std::vector<float> x(fg.begin() + p.offset, fg.begin() + p.offset + p.size);
    const std::vector<double> y(g.begin() + p.offset, g.begin() + p.offset + p.size);
    EXPECT_TRUE(close(p.name, x, y, 1e-4));
  }
}

INSTANTIATE_TEST_SUITE_P(Each, Regularized, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<Case>& p) { return p.param.name; });

// The same at a width where the float32 path takes the packed AVX-512 step kernels and the fused
// readout (H = 48: three groups of 16 units forward, a group of 32 and one of 16 backward;
// V = 120), with 4 threads: AWD's combination, tied; then with recurrent dropout as well; then
// with zoneout too. 1e-4 as above (the float32 golden tests' tolerance; measured: at most 5e-7
// relative).
// Then the layer-normalised cell with all of it (its own row-split path, row_layer.cpp); AWD's
// combination with per-layer widths (70, 90, 48); and projected to P = 48 (cells 70, 64, 56: the
// row-split path again).
class RegularizeFused : public ::testing::TestWithParam<int> {};

TEST_P(RegularizeFused, Float32FusedKernelsMatchFloat64) {
  Regularization reg = awd();
  if (GetParam() >= 1) reg.dropout_rec = 0.3;
  ModelConfig cfg{InputKind::embedding, Readout::linear, 120, 48, 48, 3, false, true};
  if (GetParam() >= 2) cfg.zoneout_h = 0.15, cfg.zoneout_s = 0.25;
  cfg.layer_norm = GetParam() == 3;
  if (GetParam() == 4) cfg.hidden = {70, 90, 48};  // AWD's shape: per-layer widths, top = E
  if (GetParam() == 5) cfg.proj = 48, cfg.hidden = {70, 64, 56};  // projected to E
  std::mt19937_64 rng(5);
  const std::vector<double> params = uniform(parameter_count(cfg), rng, -0.2, 0.2);
  Batch<double> b;
  b.T = 9, b.B = 7;
  std::uniform_int_distribution<int64_t> id(0, cfg.V - 1);
  for (int64_t k = 0; k < b.T * b.B; ++k) b.tokens.push_back(id(rng)), b.target.push_back(id(rng));
  Batch<float> f;
  f.T = b.T, f.B = b.B, f.tokens = b.tokens, f.target = b.target;
  LanguageModel<double> ref(cfg);
  LanguageModel<float> lm(cfg);
  lm.set_threads(4);
  ref.set_regularization(reg, 8), lm.set_regularization(reg, 8);
  const std::vector<float> fparams = cast<float>(params);
  const double want = ref.forward(params, b, Reduction::mean);
  EXPECT_NEAR(lm.forward(fparams, f, Reduction::mean), want, 1e-4 * want);
  std::vector<double> g(params.size(), 0.0);
  std::vector<float> fg(params.size(), 0.0f);
  ref.backward(g, params, b);
  lm.backward(fg, fparams, f);
  EXPECT_FALSE(lm.readout_grad_sumsq());  // tied: the embedding's rows add into the readout's
  for (const ParamInfo& p : parameter_layout(cfg)) {
    const std::vector<float> x(fg.begin() + p.offset, fg.begin() + p.offset + p.size);
    const std::vector<double> y(g.begin() + p.offset, g.begin() + p.offset + p.size);
    EXPECT_TRUE(close(p.name, x, y, 1e-4));
  }
}

INSTANTIATE_TEST_SUITE_P(StepLoop, RegularizeFused, ::testing::Values(0, 1, 2, 3, 4, 5),
                         [](const ::testing::TestParamInfo<int>& p) {
                           return p.param == 0   ? "awd"
                                  : p.param == 1 ? "awd_recurrent_dropout"
                                  : p.param == 2 ? "awd_recurrent_dropout_zoneout"
                                  : p.param == 3 ? "awd_everything_layer_norm"
                                  : p.param == 4 ? "awd_per_layer_widths"
                                                 : "awd_projection";
                         });

// Recurrent dropout and zoneout keep the engines' split-independence: float64 (the static split)
// gives the same bits on 1 and 3 threads; float32 (the claimed groups, where AVX-512 is) for 4
// shares run by 1 and by 3 threads (its row splits follow the shares). The layer-normalised cell
// too (its own path, rows split by shares).
class StepLoopTeams : public ::testing::TestWithParam<bool> {};

TEST_P(StepLoopTeams, RecurrentDropoutAndZoneoutAreTheSameForAnyTeam) {
  ModelConfig cfg{InputKind::embedding, Readout::linear, 40, 20, 40, 2};
  cfg.zoneout_h = 0.2, cfg.zoneout_s = 0.3, cfg.layer_norm = GetParam();
  std::mt19937_64 rng(9);
  const std::vector<double> params = uniform(parameter_count(cfg), rng, -0.3, 0.3);
  Batch<double> b;
  b.T = 6, b.B = 5;
  for (int k = 0; k < 30; ++k) b.tokens.push_back((7 * k) % 40), b.target.push_back((3 * k) % 40);
  Regularization r;
  r.dropout_rec = 0.4;
  auto run = [&]<class Real>(Real, int shares, int running) {
    LanguageModel<Real> lm(cfg);
    lm.set_team(shares, running);
    lm.set_regularization(r, 3);
    Batch<Real> rb;
    rb.T = b.T, rb.B = b.B, rb.tokens = b.tokens, rb.target = b.target;
    const std::vector<Real> p = cast<Real>(params);
    std::vector<Real> g(p.size(), Real(0));
    lm.forward(p, rb, Reduction::mean);
    lm.backward(g, p, rb);
    return g;
  };
  EXPECT_EQ(run(0.0, 1, 1), run(0.0, 3, 3));
  EXPECT_EQ(run(0.0f, 4, 1), run(0.0f, 4, 3));
  // and they are on: the gradient differs from the model's without masks (zoneout's expectation)
  LanguageModel<double> plain(cfg);
  std::vector<double> g(params.size(), 0.0);
  plain.forward(params, b, Reduction::mean);
  plain.backward(g, params, b);
  EXPECT_NE(g, run(0.0, 1, 1));
}

INSTANTIATE_TEST_SUITE_P(Cells, StepLoopTeams, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& p) {
                           return p.param ? "layer_norm" : "plain";
                         });

// Masks ---------------------------------------------------------------------------------------

ModelConfig small_model(int64_t L = 3) {
  return {InputKind::embedding, Readout::linear, 50, 8, 8, L};
}

// Each mask's entries are 0 or 1/(1-p), dropped at rate p within binomial bounds: n entries,
// sd = sqrt(n p (1-p)); 5 sd is a 6e-7 two-sided chance, and a wrong rate (p vs 1-p, or a mask
// of ones) is hundreds of sd away.
TEST(RegularizeMasks, EntriesAreZeroOrKeepAtTheRate) {
  const ModelConfig cfg{InputKind::embedding, Readout::linear, 4000, 30, 40, 3};
  Regularization r = awd();
  r.dropout_rec = 0.2;
  Masks<double> m;
  draw_masks(m, cfg, r, 50, 123);
  auto check = [](const std::vector<double>& v, double p, const char* what) {
    SCOPED_TRACE(what);
    ASSERT_FALSE(v.empty());
    double dropped = 0;
    for (double e : v) {
      ASSERT_TRUE(e == 0 || e == 1 / (1 - p)) << e;
      dropped += e == 0;
    }
    const double n = static_cast<double>(v.size()), sd = std::sqrt(n * p * (1 - p));
    EXPECT_NEAR(dropped, n * p, 5 * sd);
  };
  check(m.emb, r.dropout_emb, "emb [V]");
  check(m.in, r.dropout_in, "in [B,E]");
  ASSERT_EQ(m.hid.size(), 2u);
  check(m.hid[0], r.dropout_hid, "hid[0]");
  check(m.hid[1], r.dropout_hid, "hid[1]");
  check(m.out, r.dropout_out, "out");
  ASSERT_EQ(m.weight.size(), 3u);
  for (const auto& w : m.weight) check(w, r.weight_drop, "weight");
  ASSERT_EQ(m.rec.size(), 3u);
  for (const auto& w : m.rec) check(w, r.dropout_rec, "rec");
  EXPECT_NE(m.rec[0], m.rec[1]);
  EXPECT_EQ(m.rec[0].size(), 50u * 40u);
  EXPECT_NE(m.hid[0], m.hid[1]);  // every site its own stream
  EXPECT_NE(m.weight[0], m.weight[1]);
  EXPECT_EQ(m.emb.size(), 4000u);
  EXPECT_EQ(m.in.size(), 50u * 30u);
  EXPECT_EQ(m.weight[0].size(), 4u * 40u * 40u);
  // A rate of 0: no mask there.
  draw_masks(m, cfg, Regularization{}, 50, 123);
  EXPECT_TRUE(m.emb.empty() && m.in.empty() && m.hid.empty() && m.out.empty() && m.weight.empty() &&
              m.rec.empty());
}

// A shard's locked masks are the whole batch's rows at its streams, and the embedding and weight
// masks are the whole batch's: masks do not depend on how the batch is split (np 1 = 2 = 3).
TEST(RegularizeMasks, ShardsDrawTheWholeBatchsRows) {
  const ModelConfig cfg = small_model();
  Regularization r = awd();
  r.dropout_rec = 0.3;
  Masks<double> whole;
  draw_masks(whole, cfg, r, 6, 77);
  for (int ranks : {2, 3}) {
    const int64_t B = 6 / ranks;
    for (int64_t rank = 0; rank < ranks; ++rank) {
      Masks<double> part;
      draw_masks(part, cfg, r, B, 77, rank * B, 6);
      auto rows = [&](const std::vector<double>& v, int64_t W) {
        return std::vector<double>(v.begin() + rank * B * W, v.begin() + (rank + 1) * B * W);
      };
      EXPECT_EQ(part.in, rows(whole.in, cfg.X));
      EXPECT_EQ(part.out, rows(whole.out, cfg.H));
      for (size_t k = 0; k < part.hid.size(); ++k)
        EXPECT_EQ(part.hid[k], rows(whole.hid[k], cfg.H));
      ASSERT_EQ(part.rec.size(), 3u);
      for (size_t k = 0; k < part.rec.size(); ++k)
        EXPECT_EQ(part.rec[k], rows(whole.rec[k], cfg.H));
      EXPECT_EQ(part.emb, whole.emb);
      EXPECT_EQ(part.weight, whole.weight);
    }
  }
  Masks<double> again, other;
  draw_masks(again, cfg, r, 6, 77);
  draw_masks(other, cfg, r, 6, 78);
  EXPECT_EQ(again.in, whole.in);  // a pure function of the seed
  EXPECT_NE(other.in, whole.in);
}

// Zoneout's masks: 0 and 1 (1, keep, at the rate within 5 sd as above), [T,B,H] per layer, each
// layer and state its own stream; a shard's rows are the whole batch's at every step; rate 0: none.
TEST(RegularizeMasks, ZoneoutMasksKeepAtTheRate) {
  ModelConfig cfg{InputKind::embedding, Readout::linear, 50, 8, 30, 2};
  cfg.zoneout_h = 0.15, cfg.zoneout_s = 0.4;
  const int64_t T = 7, B = 6, H = 30;
  Masks<double> m;
  draw_zoneout(m, cfg, T, B, 11);
  ASSERT_EQ(m.zone_h.size(), 2u);
  ASSERT_EQ(m.zone_s.size(), 2u);
  for (const auto& [masks, p] : {std::pair{&m.zone_h, 0.15}, std::pair{&m.zone_s, 0.4}})
    for (const std::vector<double>& v : *masks) {
      ASSERT_EQ(v.size(), static_cast<size_t>(T * B * H));
      double kept = 0;
      for (double e : v) {
        ASSERT_TRUE(e == 0 || e == 1) << e;
        kept += e;
      }
      const double n = static_cast<double>(v.size());
      EXPECT_NEAR(kept, n * p, 5 * std::sqrt(n * p * (1 - p)));
    }
  EXPECT_NE(m.zone_h[0], m.zone_h[1]);
  EXPECT_NE(m.zone_s[0], m.zone_s[1]);
  for (int64_t rank = 0; rank < 2; ++rank) {
    Masks<double> part;
    draw_zoneout(part, cfg, T, B / 2, 11, rank * B / 2, B);
    for (size_t k = 0; k < 2; ++k)
      for (int64_t t = 0; t < T; ++t)
        for (int64_t i = 0; i < B / 2 * H; ++i) {
          const size_t whole = static_cast<size_t>((t * B + rank * B / 2) * H + i);
          const size_t mine = static_cast<size_t>(t * B / 2 * H + i);
          ASSERT_EQ(part.zone_h[k][mine], m.zone_h[k][whole]);
          ASSERT_EQ(part.zone_s[k][mine], m.zone_s[k][whole]);
        }
  }
  cfg.zoneout_h = 0;
  draw_zoneout(m, cfg, T, B, 11);
  EXPECT_TRUE(m.zone_h.empty());
  EXPECT_EQ(m.zone_s.size(), 2u);
}

// The engine applies the locked input mask at every step: dense input x with --dropout-in gives
// the very bits of the model without it on input x * m (m the same [B,X] at every t).
TEST(RegularizeMasks, LockedMaskIsTheSameAtEveryStep) {
  const ModelConfig cfg{InputKind::dense, Readout::linear, 5, 4, 6, 2};
  std::mt19937_64 rng(3);
  const std::vector<double> params = uniform(parameter_count(cfg), rng);
  Batch<double> b;
  b.T = 6, b.B = 3, b.dense = uniform(6 * 3 * 4, rng);
  for (int k = 0; k < 18; ++k) b.target.push_back(k % 5);
  Regularization r;
  r.dropout_in = 0.5;
  Masks<double> m;
  draw_masks(m, cfg, r, 3, 5);
  LanguageModel<double> lm(cfg), plain(cfg);
  lm.set_masks(m);
  const double a = lm.forward(params, b, Reduction::mean);
  Batch<double> pre = b;
  for (int64_t t = 0; t < 6; ++t)
    for (int64_t k = 0; k < 3 * 4; ++k)
      pre.dense[static_cast<size_t>(t * 12 + k)] *= m.in[static_cast<size_t>(k)];
  EXPECT_EQ(plain.forward(params, pre, Reduction::mean), a);
  EXPECT_EQ(std::vector<double>(lm.h_n().begin(), lm.h_n().end()),
            std::vector<double>(plain.h_n().begin(), plain.h_n().end()));
}

// set_regularization draws exactly draw_masks's masks: the same objective as set_masks with them.
TEST(RegularizeMasks, EngineDrawsWhatDrawMasksDraws) {
  const ModelConfig cfg{InputKind::embedding, Readout::linear, 7, 5, 5, 3, false, true};
  std::mt19937_64 rng(4);
  const std::vector<double> params = uniform(parameter_count(cfg), rng);
  Batch<double> b;
  b.T = 5, b.B = 2;
  for (int k = 0; k < 10; ++k) b.tokens.push_back(k % 7), b.target.push_back((3 * k) % 7);
  LanguageModel<double> drawn(cfg), given(cfg);
  Regularization r = awd();
  r.dropout_rec = 0.3;
  drawn.set_regularization(r, 21);
  given.set_regularization(r, 0);
  Masks<double> m;
  draw_masks(m, cfg, r, 2, 21);
  given.set_masks(m);
  EXPECT_EQ(drawn.forward(params, b, Reduction::mean), given.forward(params, b, Reduction::mean));
  // infer applies none of them: the cross-entropy of the plain model.
  LanguageModel<double> plain(cfg);
  EXPECT_EQ(drawn.infer(params, b, Reduction::mean), plain.forward(params, b, Reduction::mean));
}

TEST(RegularizeMasks, BadInputIsRefused) {
  const ModelConfig cfg = small_model(2);
  LanguageModel<double> lm(cfg);
  Regularization r;
  r.dropout_rec = 1.0;
  EXPECT_THROW(lm.set_regularization(r, 1), InputError);
  r.dropout_rec = 0;
  r.dropout_hid = 1.0;
  EXPECT_THROW(lm.set_regularization(r, 1), InputError);
  r.dropout_hid = 0.3;
  lm.set_regularization(r, 1);
  lm.set_dropout(0.2, 1);  // Zaremba's and locked masks at the same sites
  Batch<double> b;
  b.T = 2, b.B = 1, b.tokens = {1, 2}, b.target = {2, 3};
  const std::vector<double> params(parameter_count(cfg), 0.1);
  try {
    lm.forward(params, b, Reduction::mean);
    ADD_FAILURE() << "no error";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("--dropout-hid"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("--dropout "), std::string::npos) << e.what();
  }
  Masks<double> m;
  m.in.assign(5, 1.0);  // not [B,X]
  LanguageModel<double> given(cfg);
  given.set_masks(m);
  EXPECT_THROW(given.forward(params, b, Reduction::mean), std::invalid_argument);
  m.in.clear();
  m.rec.assign(1, std::vector<double>(8, 1.0));  // one mask for two layers
  given.set_masks(m);
  EXPECT_THROW(given.forward(params, b, Reduction::mean), std::invalid_argument);
}

// Zoneout ---------------------------------------------------------------------------------------

// Without masks zoneout runs its expectation (d = p): evaluation (infer) and a forward without
// set_regularization give the same bits, in float64 and float32, and differ from the same weights
// without zoneout. With set_regularization the forward draws masks: another objective.
TEST(Zoneout, EvaluationRunsTheExpectation) {
  ModelConfig cfg{InputKind::embedding, Readout::linear, 30, 10, 20, 2};
  cfg.zoneout_h = 0.3, cfg.zoneout_s = 0.2;
  std::mt19937_64 rng(6);
  const std::vector<double> params = uniform(parameter_count(cfg), rng, -0.4, 0.4);
  Batch<double> b;
  b.T = 8, b.B = 3;
  for (int k = 0; k < 24; ++k) b.tokens.push_back((5 * k) % 30), b.target.push_back((7 * k) % 30);
  LanguageModel<double> lm(cfg);
  const double expectation = lm.forward(params, b, Reduction::mean);
  EXPECT_EQ(lm.infer(params, b, Reduction::mean), expectation);
  Batch<float> f;
  f.T = b.T, f.B = b.B, f.tokens = b.tokens, f.target = b.target;
  LanguageModel<float> lf(cfg);
  const std::vector<float> fp = cast<float>(params);
  EXPECT_EQ(lf.infer(fp, f, Reduction::mean), lf.forward(fp, f, Reduction::mean));
  EXPECT_NEAR(lf.infer(fp, f, Reduction::mean), expectation, 1e-5 * expectation);
  ModelConfig none = cfg;
  none.zoneout_h = none.zoneout_s = 0;
  EXPECT_NE(LanguageModel<double>(none).forward(params, b, Reduction::mean), expectation);
  lm.set_regularization(Regularization{}, 4);  // training: masks drawn
  EXPECT_NE(lm.forward(params, b, Reduction::mean), expectation);
}

// The rates are part of the model: model files store them (only when on), and a bad one is an
// error naming the key.
TEST(Zoneout, ModelFilesStoreTheRates) {
  ModelConfig cfg{InputKind::embedding, Readout::linear, 9, 6, 6, 2};
  EXPECT_EQ(config_to_json(cfg).find("zoneout"), std::string::npos);
  cfg.zoneout_h = 0.25, cfg.zoneout_s = 0.5;
  const ModelConfig back = config_from_json(config_to_json(cfg), "f");
  EXPECT_EQ(back.zoneout_h, 0.25);
  EXPECT_EQ(back.zoneout_s, 0.5);
  try {
    config_from_json(R"({"input":"embedding","readout":"linear","V":9,"X":6,"H":6,"L":2,)"
                     R"("zoneout_s":1.5})",
                     "m.safetensors");
    ADD_FAILURE() << "no error";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("m.safetensors"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("zoneout_s"), std::string::npos) << e.what();
  }
  cfg.zoneout_h = 1.0;
  EXPECT_THROW(validate_config(cfg), InputError);
}

// Tied weights ---------------------------------------------------------------------------------

TEST(TieWeights, NoDecoderWeightAndAClearError) {
  ModelConfig cfg{InputKind::embedding, Readout::linear, 9, 6, 6, 2, false, true};
  for (const ParamInfo& p : parameter_layout(cfg)) EXPECT_NE(p.name, "decoder.weight");
  ModelConfig untied = cfg;
  untied.tie_weights = false;
  EXPECT_EQ(parameter_count(cfg) + 9 * 6, parameter_count(untied));
  const ParameterOffsets o = parameter_offsets(cfg);
  EXPECT_EQ(o.decoder_weight, o.encoder_weight);
  cfg.H = 7;
  try {
    validate_config(cfg);
    ADD_FAILURE() << "no error";
  } catch (const InputError& e) {
    EXPECT_STREQ(
        e.what(),
        "--tie-weights needs the top layer's output (--hidden, or --proj with a projection) "
        "equal to --embed (E): got H 7 and E 6");
  }
  cfg.H = 6, cfg.input = InputKind::dense;
  EXPECT_THROW(validate_config(cfg), InputError);
}

// The model file keeps the tie (metadata), and a tensors-only file with decoder.bias but no
// decoder.weight (a PyTorch state_dict of a tied model, less its alias) reads as tied; files
// without the key read as untied.
TEST(TieWeights, ModelFilesKeepIt) {
  ModelConfig cfg{InputKind::embedding, Readout::linear, 9, 6, 6, 2, false, true};
  EXPECT_TRUE(config_from_json(config_to_json(cfg), "f").tie_weights);
  cfg.tie_weights = false;
  EXPECT_EQ(config_to_json(cfg).find("tie_weights"), std::string::npos);
  EXPECT_FALSE(config_from_json(config_to_json(cfg), "f").tie_weights);
  EXPECT_THROW(config_from_json(R"({"input":"embedding","readout":"linear","V":9,"X":6,"H":6,)"
                                R"("L":2,"tie_weights":1})",
                                "f"),
               InputError);
}

// Training ---------------------------------------------------------------------------------------

std::vector<nlohmann::json> metrics(const std::filesystem::path& run) {
  std::vector<nlohmann::json> out;
  std::ifstream in(run / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) out.push_back(nlohmann::json::parse(line));
  return out;
}

const std::string kAwdFlags =
    " --level char --layers 3 --hidden 16 --embed 16 --seq 12 --batch 6 --quiet --threads 1"
    " --dropout-in 0.3 --dropout-hid 0.2 --dropout-out 0.3 --dropout-emb 0.1 --weight-drop 0.5"
    " --dropout-rec 0.2 --zoneout-h 0.1 --zoneout-s 0.15 --ar 2 --tar 1 --tie-weights"
    " --clip 0.25";

// Every flag at once, stopped twice and resumed: the same model bits as the uninterrupted run (the
// masks of each update replay from (seed, update)); float32 and float64. The tied model file reads
// back: eval gives the last validation's loss (the cross-entropy, not the AR/TAR objective).
TEST(RegularizeTrain, ResumeIsBitIdenticalAndTheModelReadsBack) {
  TempDir dir;
  const std::string train = (dir / "train.txt").string(), valid = (dir / "valid.txt").string();
  std::ofstream(train) << phrases(300, 1);
  std::ofstream(valid) << phrases(40, 2);
  for (const char* dtype : {"f64", "f32"}) {
    SCOPED_TRACE(dtype);
    const std::string common = "train --train " + train + " --valid " + valid + kAwdFlags +
                               " --epochs 2 --lr 2 --dtype " + dtype;
    const auto a = dir / (std::string("a") + dtype), b = dir / (std::string("b") + dtype);
    const CliResult ra = run_cli(common + " --out " + a.string());
    ASSERT_EQ(ra.rc, 0) << ra.err;
    ASSERT_EQ(run_cli(common + " --out " + b.string() + " --max-steps 5").rc, 0);
    ASSERT_EQ(run_cli("train --resume " + b.string() + " --max-steps 30 --quiet").rc, 0);
    const CliResult rb = run_cli("train --resume " + b.string() + " --quiet");
    ASSERT_EQ(rb.rc, 0) << rb.err;
    EXPECT_TRUE(same_tensors(a / "model.safetensors", b / "model.safetensors"));
    EXPECT_TRUE(same_tensors(a / "checkpoint.safetensors", b / "checkpoint.safetensors"));
    const io::TensorFile f = io::read_safetensors(a / "model.safetensors");
    EXPECT_EQ(f.find("decoder.weight"), nullptr);
    const auto m = metrics(a);
    ASSERT_EQ(m.size(), 2u);
    const CliResult e = run_cli("eval --json --batch 6 --seq 12 --dtype f64 --model " +
                                (a / "model.safetensors").string() + " --data " + valid);
    ASSERT_EQ(e.rc, 0) << e.err;
    EXPECT_NEAR(nlohmann::json::parse(e.out)["loss"].get<double>(),
                m.back()["valid_loss"].get<double>(), std::string(dtype) == "f64" ? 1e-12 : 1e-5);
  }
}

// The layer-normalised cell trains: gains start at 1 and biases at 0 (the identity), a stopped
// and resumed run gives the uninterrupted run's bits, the model file says layer_norm and eval of
// it reproduces the last validation.
TEST(LayerNorm, TrainsResumesAndReadsBack) {
  TempDir dir;
  const std::string train = (dir / "train.txt").string(), valid = (dir / "valid.txt").string();
  std::ofstream(train) << phrases(300, 1);
  std::ofstream(valid) << phrases(40, 2);
  const std::string common = "train --train " + train + " --valid " + valid +
                             " --level char --layers 2 --hidden 12 --embed 8 --seq 10 --batch 5"
                             " --quiet --threads 2 --layer-norm --dropout-rec 0.2 --zoneout-s 0.1"
                             " --epochs 2 --clip 1 --dtype f64";
  const auto a = dir / "a", init = dir / "init";
  EXPECT_EQ(
      resumed_run_matches(common + " --lr 1", a, dir / "b", 7, valid, "--batch 5 --seq 10").size(),
      2u);
  // one update at learning rate 1e-300 writes the initial model to 1e-290: the layer norms are the
  // identity (gains 1, biases 0)
  const CliResult ri = run_cli(common + " --out " + init.string() + " --max-steps 1 --lr 1e-300");
  ASSERT_EQ(ri.rc, 0) << ri.err;
  const io::TensorFile f0 = io::read_safetensors(init / "model.safetensors");
  for (const char* name : {"rnn.weight_ln_ih_l0", "rnn.weight_ln_cell_l1", "rnn.bias_ln_hh_l1"}) {
    const std::vector<double> v = io::to_floats<double>(f0.require(name, "init"), "init");
    const bool gain = std::string(name).find("weight") != std::string::npos;
    for (double e : v) ASSERT_NEAR(e, gain ? 1.0 : 0.0, 1e-290) << name;
  }
  const io::TensorFile f = io::read_safetensors(a / "model.safetensors");
  EXPECT_NE(f.metadata.at("lstmgrad.config").find("\"layer_norm\":true"), std::string::npos);
}

TEST(LayerNorm, ModelFilesAndBadConfigs) {
  ModelConfig cfg{InputKind::embedding, Readout::linear, 9, 6, 6, 2};
  EXPECT_EQ(config_to_json(cfg).find("layer_norm"), std::string::npos);
  cfg.layer_norm = true;
  EXPECT_TRUE(config_from_json(config_to_json(cfg), "f").layer_norm);
  size_t ln = 0;
  for (const ParamInfo& p : parameter_layout(cfg)) ln += p.name.find("_ln_") != std::string::npos;
  EXPECT_EQ(ln, 12u);  // 6 tensors per layer
  ModelConfig plain = cfg;
  plain.layer_norm = false;
  EXPECT_EQ(parameter_count(cfg), parameter_count(plain) + 2 * 18 * 6);
  cfg.peephole = true;
  EXPECT_THROW(validate_config(cfg), InputError);
}

// metrics.jsonl's train_loss is the cross-entropy, not the objective: with AR and TAR at 1e5 the
// objective is hundreds of nats above it (1e5 * mean h^2, h ~ 0.05 at init), while the
// cross-entropy of a model near its initialisation is about ln 19 (19 characters) = 2.9.
TEST(RegularizeTrain, LogsTheCrossEntropy) {
  TempDir dir;
  const std::string train = (dir / "train.txt").string();
  std::ofstream(train) << phrases(100, 1);
  const CliResult r = run_cli("train --train " + train + " --level char --layers 1 --hidden 8" +
                              " --embed 8 --seq 10 --batch 4 --epochs 1 --lr 0.001 --quiet" +
                              " --ar 100000 --tar 100000 --out " + (dir / "run").string());
  ASSERT_EQ(r.rc, 0) << r.err;
  const auto m = metrics(dir / "run");
  ASSERT_EQ(m.size(), 1u);
  EXPECT_LT(m[0]["train_loss"].get<double>(), std::log(19.0) + 0.5) << m[0].dump();
}

TEST(RegularizeTrain, BadCombinationsGetOneLineAndExit2) {
  TempDir dir;
  const std::string train = (dir / "train.txt").string();
  std::ofstream(train) << phrases(50, 1);
  const std::string base =
      "train --train " + train + " --level char --quiet --out " + (dir / "run").string();
  const CliResult both = run_cli(base + " --dropout 0.2 --dropout-hid 0.3");
  EXPECT_EQ(both.rc, 2);
  EXPECT_NE(both.err.find("--dropout and --dropout-in/--dropout-hid/--dropout-out"),
            std::string::npos)
      << both.err;
  const CliResult tie = run_cli(base + " --hidden 20 --embed 16 --tie-weights");
  EXPECT_EQ(tie.rc, 2);
  EXPECT_NE(tie.err.find("--tie-weights needs --hidden (top layer, H) equal to --embed (E)"),
            std::string::npos)
      << tie.err;
  const CliResult cuda = run_cli(base + " --device cuda --weight-drop 0.5");
  EXPECT_EQ(cuda.rc, 2);
  EXPECT_NE(cuda.err.find("--device cuda"), std::string::npos) << cuda.err;
  EXPECT_FALSE(std::filesystem::exists(dir / "run"));
}

}  // namespace
}  // namespace lstmgrad::test
