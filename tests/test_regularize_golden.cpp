// The regularised language model against PyTorch (tools/make_awd_golden.py: a functional twin,
// tools/awd_twin.py, with masks torch drew): the objective, its cross-entropy and every gradient,
// float64 and float32, each regulariser alone, AWD-LSTM's combination, and it with recurrent
// dropout and zoneout; zoneout also without masks (the expectation, as evaluation runs it); the
// layer-normalised cell alone and with all of them; per-layer hidden sizes with all of them.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

#include "compare.hpp"
#include "lstmgrad/lstm.hpp"
#include "lstmgrad/safetensors.hpp"

namespace lstmgrad::test {
namespace {

const std::string kDir = std::string(LSTMGRAD_TEST_DATA) + "/golden_awd/";

template <class Real>
void check_case(const std::string& name, double tol) {
  SCOPED_TRACE(name);
  const std::string file = kDir + name + ".safetensors";
  const io::TensorFile f = io::read_safetensors(file);
  auto get = [&](const std::string& t) { return io::to_floats<Real>(f.require(t, file), file); };
  auto want = [&](const std::string& t) { return io::to_floats<double>(f.require(t, file), file); };
  const nlohmann::json c = nlohmann::json::parse(f.metadata.at("config"));
  ModelConfig cfg;
  cfg.V = c["V"], cfg.X = c["E"], cfg.H = c["H"], cfg.L = c["L"];
  cfg.tie_weights = c["tie_weights"];
  cfg.zoneout_h = c.value("zoneout_h", 0.0), cfg.zoneout_s = c.value("zoneout_s", 0.0);
  cfg.layer_norm = c.value("layer_norm", false);
  if (c.contains("hidden")) cfg.hidden = c["hidden"].get<std::vector<int64_t>>();
  cfg.proj = c.value("proj", int64_t{0});
  const std::vector<ParamInfo> layout = parameter_layout(cfg);
  std::vector<Real> params(parameter_count(cfg));
  for (const ParamInfo& p : layout) {
    const std::vector<Real> v = get(p.name);
    ASSERT_EQ(v.size(), p.size) << p.name;
    std::copy(v.begin(), v.end(), params.begin() + static_cast<std::ptrdiff_t>(p.offset));
  }
  Batch<Real> b;
  const io::Tensor& tok = f.require("tokens", file);
  b.T = tok.shape[0], b.B = tok.shape[1];
  b.tokens = io::to_ints(tok, file);
  b.target = io::to_ints(f.require("targets", file), file);
  b.h0 = get("h0"), b.s0 = get("s0");
  Masks<Real> m;
  m.B = b.B;
  if (f.find("mask.emb")) m.emb = get("mask.emb");
  if (f.find("mask.in")) m.in = get("mask.in");
  if (f.find("mask.out")) m.out = get("mask.out");
  for (int64_t k = 0; f.find("mask.hid." + std::to_string(k)); ++k)
    m.hid.push_back(get("mask.hid." + std::to_string(k)));
  for (int64_t k = 0; f.find("mask.weight." + std::to_string(k)); ++k)
    m.weight.push_back(get("mask.weight." + std::to_string(k)));
  for (int64_t k = 0; f.find("mask.rec." + std::to_string(k)); ++k)
    m.rec.push_back(get("mask.rec." + std::to_string(k)));
  for (int64_t k = 0; f.find("mask.zone_h." + std::to_string(k)); ++k)
    m.zone_h.push_back(get("mask.zone_h." + std::to_string(k)));
  for (int64_t k = 0; f.find("mask.zone_s." + std::to_string(k)); ++k)
    m.zone_s.push_back(get("mask.zone_s." + std::to_string(k)));
  Regularization r;
  r.ar = std::stod(f.metadata.at("ar")), r.tar = std::stod(f.metadata.at("tar"));

  LanguageModel<Real> lm(cfg);
  lm.set_regularization(r, 0);
  lm.set_masks(m);
  const double loss = lm.forward(params, b, Reduction::mean);
  EXPECT_TRUE(close("loss", std::vector<double>{loss}, want("loss"), tol));
  EXPECT_TRUE(close("ce", std::vector<double>{lm.cross_entropy()}, want("ce"), tol));
  std::vector<Real> grad(params.size(), Real(0));
  std::vector<Real> dh0(static_cast<size_t>(cfg.h_offset(cfg.L, b.B)));
  std::vector<Real> ds0(static_cast<size_t>(cfg.s_offset(cfg.L, b.B)));
  lm.backward(grad, params, b, nullptr, dh0.data(), ds0.data());
  for (const ParamInfo& p : layout) {
    const std::vector<Real> g(grad.begin() + static_cast<std::ptrdiff_t>(p.offset),
                              grad.begin() + static_cast<std::ptrdiff_t>(p.offset + p.size));
    EXPECT_TRUE(close(p.name, g, want("grad." + p.name), tol));
  }
  EXPECT_TRUE(close("grad.h0", dh0, want("grad.h0"), tol));
  EXPECT_TRUE(close("grad.s0", ds0, want("grad.s0"), tol));
}

class AwdGolden : public ::testing::TestWithParam<std::string> {};

// float64: the same arithmetic as PyTorch in another order, sums of at most a few hundred O(1)
// terms: ~1e-15 relative; 1e-10 of each tensor's scale, as the other golden tests.
TEST_P(AwdGolden, Float64MatchesPyTorch) {
  check_case<double>(GetParam(), 1e-10);
}

// float32: 24-bit mantissas over T = 7 steps and 3 layers; 1e-4 of each tensor's scale, as the
// other float32 golden tests (a derivation slip is O(1)).
TEST_P(AwdGolden, Float32MatchesPyTorch) {
  check_case<float>(GetParam(), 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Cases, AwdGolden,
                         ::testing::Values("dropout_in", "dropout_hid", "dropout_out",
                                           "dropout_emb", "weight_drop", "ar", "tar", "tied", "awd",
                                           "dropout_rec", "awd_rec", "zoneout",
                                           "zoneout_expectation", "awd_zoneout", "layer_norm",
                                           "awd_layer_norm", "hidden_sizes",
                                           "hidden_sizes_layer_norm", "projection",
                                           "awd_projection", "projection_layer_norm"));

}  // namespace
}  // namespace lstmgrad::test
