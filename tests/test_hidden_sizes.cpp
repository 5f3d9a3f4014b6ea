// Per-layer hidden sizes (ModelConfig::hidden, `--hidden 1150,1150,400`): the layout, the
// validation and the model files; hand BPTT = tape = finite differences with every variant;
// float32 (the fused kernels, several groups per layer) against float64; training that resumes
// bit-exactly and reads back. The PyTorch golden cases are in test_regularize_golden.cpp
// (hidden_sizes, hidden_sizes_layer_norm).
#include <gtest/gtest.h>

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
#include "variant_checks.hpp"

namespace lstmgrad::test {
namespace {

ModelConfig awd_shape() {  // AWD-LSTM's shape in small: wide middle, top = E (tied)
  ModelConfig c{InputKind::embedding, Readout::linear, 11, 5, 5, 3};
  c.hidden = {7, 9, 5};
  c.tie_weights = true;
  return c;
}

TEST(HiddenSizes, LayoutStatesAndValidation) {
  const ModelConfig c = awd_shape();
  const ParameterOffsets o = parameter_offsets(c);
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const ParamInfo& p : parameter_layout(c)) shapes[p.name] = p.shape;
  EXPECT_EQ(shapes["rnn.weight_ih_l0"], (std::vector<int64_t>{28, 5}));
  EXPECT_EQ(shapes["rnn.weight_hh_l1"], (std::vector<int64_t>{36, 9}));
  EXPECT_EQ(shapes["rnn.weight_ih_l2"], (std::vector<int64_t>{20, 9}));
  EXPECT_EQ(o.layers.size(), 3u);
  EXPECT_EQ(c.s_offset(3, 2), 2 * (7 + 9 + 5));
  EXPECT_EQ(c.s_offset(1, 2), 14);
  EXPECT_EQ(c.h_offset(3, 2), c.s_offset(3, 2));  // no projection: h as wide as s
  EXPECT_EQ(c.max_width(), 9);
  ModelConfig bad = c;
  bad.hidden = {7, 5};  // two sizes for three layers
  EXPECT_THROW(validate_config(bad), InputError);
  bad.hidden = {7, 9, 6};  // the top is not H
  EXPECT_THROW(validate_config(bad), InputError);
  bad.hidden = {7, 0, 5};
  EXPECT_THROW(validate_config(bad), InputError);
}

// The model file stores the sizes (only when they differ), and a file without metadata (as
// PyTorch writes it) gets them from the weights' shapes.
TEST(HiddenSizes, ModelFilesStoreAndInferTheSizes) {
  TempDir dir;
  const ModelConfig c = awd_shape();
  std::mt19937_64 rng(2);
  const std::vector<double> params = uniform(parameter_count(c), rng);
  save_model<double>(dir / "m.safetensors", c, params);
  const Model<double> back = load_model<double>(dir / "m.safetensors");
  EXPECT_EQ(back.cfg.hidden, c.hidden);
  EXPECT_EQ(back.params, params);
  io::TensorFile f = io::read_safetensors(dir / "m.safetensors");
  f.metadata.clear();
  io::write_safetensors(dir / "bare.safetensors", f);
  const Model<double> bare = load_model<double>(dir / "bare.safetensors");
  EXPECT_EQ(bare.cfg.hidden, c.hidden);
  EXPECT_EQ(bare.cfg.H, 5);
  EXPECT_TRUE(bare.cfg.tie_weights);
  ModelConfig uniform_cfg = c;
  uniform_cfg.hidden = {5, 5, 5};
  EXPECT_EQ(config_to_json(uniform_cfg).find("hidden"), std::string::npos);
}

std::vector<Variant> variants() {
  Regularization all;
  all.dropout_in = 0.3, all.dropout_hid = 0.25, all.dropout_out = 0.3, all.dropout_emb = 0.1;
  all.weight_drop = 0.4, all.dropout_rec = 0.2, all.ar = 1, all.tar = 1;
  std::vector<Variant> v;
  ModelConfig plain{InputKind::embedding, Readout::linear, 6, 3, 4, 3};
  plain.hidden = {6, 5, 4};
  v.push_back({"plain", plain, {}});
  ModelConfig every = awd_shape();
  every.zoneout_h = 0.1, every.zoneout_s = 0.2;
  v.push_back({"everything_tied_zoneout", every, all});
  ModelConfig ln = every;
  ln.layer_norm = true;
  v.push_back({"layer_norm_everything", ln, all});
  ModelConfig peep{InputKind::dense, Readout::identity, 4, 3, 4, 3, true};
  peep.hidden = {5, 9, 4};
  v.push_back({"peephole_dense_identity", peep, {}});
  return v;
}

class HiddenSizesCheck : public ::testing::TestWithParam<Variant> {};

// Tolerances as test_regularize.cpp's (tape 1e-10, finite differences 1e-6; step 1e-4 with layer
// norm, CheckOptions::fd_step).
TEST_P(HiddenSizesCheck, HandMatchesTapeAndFiniteDifferences) {
  expect_check_agrees(GetParam());
}

INSTANTIATE_TEST_SUITE_P(Variants, HiddenSizesCheck, ::testing::ValuesIn(variants()),
                         [](const ::testing::TestParamInfo<Variant>& p) { return p.param.name; });

// float32 against float64 where the fused kernels run several groups per layer (widths 48, 40,
// 24: three, three and two groups of 16 forward), 2 threads, every regulariser: 1e-4 of each
// tensor's scale (the float32 golden tolerance).
TEST(HiddenSizes, Float32MatchesFloat64) {
  ModelConfig cfg{InputKind::embedding, Readout::linear, 90, 24, 24, 3, false, true};
  cfg.hidden = {48, 40, 24};
  cfg.zoneout_s = 0.1;
  Regularization reg;
  reg.dropout_in = 0.3, reg.dropout_hid = 0.2, reg.dropout_out = 0.3, reg.weight_drop = 0.4;
  reg.dropout_rec = 0.2, reg.ar = 1, reg.tar = 1;
  expect_float32_matches_float64(cfg, reg, 8);
}

// `train --hidden 16,12,8` (the top = --embed for the tie): a stopped and resumed run gives the
// uninterrupted run's bits; the model file reads back with its sizes and eval reproduces the last
// validation; bad size lists are refused with the flag's name.
TEST(HiddenSizes, TrainResumesAndReadsBack) {
  TempDir dir;
  const std::string train = (dir / "train.txt").string(), valid = (dir / "valid.txt").string();
  std::ofstream(train) << phrases(300, 1);
  std::ofstream(valid) << phrases(40, 2);
  const std::string common = "train --train " + train + " --valid " + valid +
                             " --level char --layers 3 --hidden 16,12,8 --embed 8 --tie-weights"
                             " --seq 10 --batch 5 --quiet --threads 2 --dropout-hid 0.2"
                             " --dropout-rec 0.2 --weight-drop 0.3 --epochs 2 --lr 1 --clip 1"
                             " --dtype f64";
  const auto a = dir / "a";
  EXPECT_EQ(resumed_run_matches(common, a, dir / "b", 7, valid, "--batch 5 --seq 10").size(), 2u);
  const Model<double> m = load_model<double>(a / "model.safetensors");
  EXPECT_EQ(m.cfg.hidden, (std::vector<int64_t>{16, 12, 8}));
  const CliResult bad = run_cli("train --train " + train + " --layers 2 --hidden 16,12,8 --out " +
                                (dir / "bad").string());
  EXPECT_EQ(bad.rc, 2);
  EXPECT_NE(bad.err.find("--hidden: 3 sizes for 2 layers"), std::string::npos) << bad.err;
  EXPECT_FALSE(std::filesystem::exists(dir / "bad"));
}

}  // namespace
}  // namespace lstmgrad::test
