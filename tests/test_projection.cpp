// The projection (LSTMP, ModelConfig::proj, `--proj P`): the layout and the validation; model
// files that store it and files without metadata (as PyTorch's nn.LSTM(proj_size) state_dict
// names it) that infer it; hand BPTT = tape = finite differences with every variant; float32
// against float64; training that resumes bit-exactly and reads back. The PyTorch golden cases
// are in test_regularize_golden.cpp (projection, awd_projection, projection_layer_norm; the
// twin there is checked against nn.LSTM(proj_size) by tools/make_awd_golden.py --selftest).
#include <gtest/gtest.h>

#include <fstream>
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
#include "variant_checks.hpp"

namespace lstmgrad::test {
namespace {

ModelConfig projected() {  // cells 7, 9, 6 projected to P = 4 = E (tied)
  ModelConfig c{InputKind::embedding, Readout::linear, 11, 4, 4, 3};
  c.hidden = {7, 9, 6}, c.proj = 4, c.tie_weights = true;
  return c;
}

TEST(Projection, LayoutStatesAndValidation) {
  const ModelConfig c = projected();
  validate_config(c);
  const std::vector<ParamInfo> layout = parameter_layout(c);
  auto shape = [&](const std::string& name) {
    for (const ParamInfo& p : layout)
      if (p.name == name) return p.shape;
    return std::vector<int64_t>{};
  };
  EXPECT_EQ(shape("rnn.weight_ih_l1"), (std::vector<int64_t>{36, 4}));  // reads P
  EXPECT_EQ(shape("rnn.weight_hh_l1"), (std::vector<int64_t>{36, 4}));
  EXPECT_EQ(shape("rnn.weight_hr_l1"), (std::vector<int64_t>{4, 9}));
  EXPECT_EQ(c.h_offset(3, 2), 2 * 3 * 4);
  EXPECT_EQ(c.s_offset(3, 2), 2 * (7 + 9 + 6));
  EXPECT_EQ(state_shape(c, 2, true), (std::vector<int64_t>{3, 2, 4}));  // PyTorch's h_n
  EXPECT_EQ(state_shape(c, 2, false), (std::vector<int64_t>{44}));      // unequal cells: flat
  ModelConfig bad = c;
  bad.H = 9;  // H must be P
  EXPECT_THROW(validate_config(bad), InputError);
  bad = c, bad.hidden.clear();  // the cells' widths are needed
  EXPECT_THROW(validate_config(bad), InputError);
  bad = c, bad.peephole = true;
  EXPECT_THROW(validate_config(bad), InputError);
}

TEST(Projection, ModelFilesStoreAndInferIt) {
  TempDir dir;
  ModelConfig c = projected();
  c.hidden = {6, 6, 6};  // uniform cells: "hidden" is still stored (H is P)
  std::mt19937_64 rng(2);
  const std::vector<double> params = uniform(parameter_count(c), rng);
  save_model<double>(dir / "m.safetensors", c, params);
  const Model<double> back = load_model<double>(dir / "m.safetensors");
  EXPECT_EQ(back.cfg.proj, 4);
  EXPECT_EQ(back.cfg.hidden, c.hidden);
  EXPECT_EQ(back.params, params);
  io::TensorFile f = io::read_safetensors(dir / "m.safetensors");
  f.metadata.clear();
  io::write_safetensors(dir / "bare.safetensors", f);
  const Model<double> bare = load_model<double>(dir / "bare.safetensors");
  EXPECT_EQ(bare.cfg.proj, 4);
  EXPECT_EQ(bare.cfg.H, 4);
  EXPECT_EQ(bare.cfg.hidden, c.hidden);
  EXPECT_EQ(bare.params, params);
}

std::vector<Variant> variants() {
  Regularization all;
  all.dropout_in = 0.3, all.dropout_hid = 0.25, all.dropout_out = 0.3, all.dropout_emb = 0.1;
  all.weight_drop = 0.4, all.dropout_rec = 0.2, all.ar = 1, all.tar = 1;
  std::vector<Variant> v;
  ModelConfig plain{InputKind::embedding, Readout::linear, 6, 3, 3, 2};
  plain.hidden = {5, 5}, plain.proj = 3;
  v.push_back({"plain", plain, {}});
  ModelConfig every = projected();
  every.zoneout_h = 0.1, every.zoneout_s = 0.2;
  v.push_back({"everything_tied_zoneout", every, all});
  ModelConfig ln = every;
  ln.layer_norm = true;
  v.push_back({"layer_norm_everything", ln, all});
  ModelConfig dense{InputKind::dense, Readout::identity, 3, 4, 3, 2};
  dense.hidden = {6, 4}, dense.proj = 3;
  v.push_back({"dense_identity", dense, {}});
  return v;
}

class ProjectionCheck : public ::testing::TestWithParam<Variant> {};

// Tolerances as test_regularize.cpp's (tape 1e-10, finite differences 1e-6; step 1e-4 with layer
// norm, CheckOptions::fd_step).
TEST_P(ProjectionCheck, HandMatchesTapeAndFiniteDifferences) {
  expect_check_agrees(GetParam());
}

INSTANTIATE_TEST_SUITE_P(Variants, ProjectionCheck, ::testing::ValuesIn(variants()),
                         [](const ::testing::TestParamInfo<Variant>& p) { return p.param.name; });

// float32 against float64 (variant_checks.hpp) with a carried-in state (h blocks [B,P], s blocks
// [B,H_k]), zoneout and the regularisers on h.
TEST(Projection, Float32MatchesFloat64) {
  ModelConfig cfg{InputKind::embedding, Readout::linear, 90, 24, 24, 3, false, true};
  cfg.hidden = {48, 40, 32}, cfg.proj = 24, cfg.zoneout_s = 0.1;
  Regularization reg;
  reg.dropout_hid = 0.2, reg.dropout_rec = 0.2, reg.weight_drop = 0.4, reg.ar = 1, reg.tar = 1;
  expect_float32_matches_float64(cfg, reg, 4);
}

// `train --proj 8` (= --embed, tied): a stopped and resumed run gives the uninterrupted run's
// bits; the model file reads back and eval reproduces the last validation; peepholes with it and
// a tie that does not fit are refused with the flags' names, nothing written.
TEST(Projection, TrainResumesAndReadsBack) {
  TempDir dir;
  const std::string train = (dir / "train.txt").string(), valid = (dir / "valid.txt").string();
  std::ofstream(train) << phrases(300, 1);
  std::ofstream(valid) << phrases(40, 2);
  const std::string common = "train --train " + train + " --valid " + valid +
                             " --level char --layers 2 --hidden 16,12 --proj 8 --embed 8"
                             " --tie-weights --seq 10 --batch 5 --quiet --threads 2"
                             " --dropout-hid 0.2 --dropout-rec 0.2 --weight-drop 0.3"
                             " --zoneout-h 0.1 --epochs 2 --lr 1 --clip 1 --dtype f64";
  const auto a = dir / "a";
  EXPECT_EQ(resumed_run_matches(common, a, dir / "b", 7, valid, "--batch 5 --seq 10").size(), 2u);
  const Model<double> m = load_model<double>(a / "model.safetensors");
  EXPECT_EQ(m.cfg.proj, 8);
  EXPECT_EQ(m.cfg.hidden, (std::vector<int64_t>{16, 12}));
  const CliResult peep =
      run_cli("train --train " + train + " --proj 4 --peephole --out " + (dir / "peep").string());
  EXPECT_EQ(peep.rc, 2);
  EXPECT_NE(peep.err.find("--proj and --peephole"), std::string::npos) << peep.err;
  const CliResult tie = run_cli("train --train " + train + " --proj 6 --embed 8 --tie-weights " +
                                "--out " + (dir / "tie").string());
  EXPECT_EQ(tie.rc, 2);
  EXPECT_NE(tie.err.find("--tie-weights needs --proj"), std::string::npos) << tie.err;
  EXPECT_FALSE(std::filesystem::exists(dir / "peep"));
  EXPECT_FALSE(std::filesystem::exists(dir / "tie"));
}

}  // namespace
}  // namespace lstmgrad::test
