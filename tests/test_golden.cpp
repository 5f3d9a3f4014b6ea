// The hand-derived BPTT engine against golden files written by PyTorch (tools/make_golden.py,
// float64): loss, final state and every gradient; float32 too; and a 10-step SGD trajectory.
#include <gtest/gtest.h>

#include <string>

#include "compare.hpp"
#include "lstmgrad/lstm.hpp"
#include "lstmgrad/model_io.hpp"
#include "lstmgrad/safetensors.hpp"

namespace lstmgrad::test {
namespace {

const std::string kGolden = std::string(LSTMGRAD_TEST_DATA) + "/golden/";

struct Expected {
  io::TensorFile f;
  std::string file;
  std::vector<double> get(const std::string& name) const {
    return io::to_floats<double>(f.require(name, file), file);
  }
};

Expected read_expected(const std::string& dir) {
  const std::string file = dir + "/expected.safetensors";
  return {io::read_safetensors(file), file};
}

template <class Real>
void check_case(const std::string& name, double tol) {
  SCOPED_TRACE(name);
  const std::string dir = kGolden + name;
  const Model<Real> m = load_model<Real>(dir + "/model.safetensors");
  const Batch<Real> b = load_batch<Real>(dir + "/batch.safetensors", m.cfg);
  const Expected e = read_expected(dir);
  const Reduction red = parse_reduction(e.f.metadata.at("reduction"));
  LanguageModel<Real> lm(m.cfg);
  const double loss = lm.forward(m.params, b, red);
  std::vector<Real> grad(m.params.size(), Real(0));
  const size_t state = static_cast<size_t>(m.cfg.L * b.B * m.cfg.H);
  std::vector<Real> dinput(b.dense.size()), dh0(state), ds0(state);
  lm.backward(grad, m.params, b, dinput.empty() ? nullptr : dinput.data(), dh0.data(), ds0.data());

  EXPECT_TRUE(close("loss", std::vector<double>{loss}, e.get("loss"), tol));
  EXPECT_TRUE(close("h_n", std::vector<Real>(lm.h_n().begin(), lm.h_n().end()), e.get("h_n"), tol));
  EXPECT_TRUE(close("s_n", std::vector<Real>(lm.s_n().begin(), lm.s_n().end()), e.get("s_n"), tol));
  for (const ParamInfo& p : parameter_layout(m.cfg)) {
    const std::vector<Real> g(grad.begin() + p.offset, grad.begin() + p.offset + p.size);
    EXPECT_TRUE(close(p.name, g, e.get(p.name), tol));
  }
  if (!dinput.empty()) {
    EXPECT_TRUE(close("grad.input", dinput, e.get("grad.input"), tol));
  }
  if (e.f.find("grad.h0")) {
    EXPECT_TRUE(close("grad.h0", dh0, e.get("grad.h0"), tol));
    EXPECT_TRUE(close("grad.s0", ds0, e.get("grad.s0"), tol));
  }
}

class Golden : public ::testing::TestWithParam<std::string> {};

// float64: the same arithmetic as PyTorch in a different order; sums of at most a few hundred
// terms of O(1) values differ by ~1e-15 relative, so 1e-10 of each tensor's scale is generous.
TEST_P(Golden, Float64MatchesPyTorch) {
  check_case<double>(GetParam(), 1e-10);
}

// float32: 24-bit mantissas (6e-8) accumulate over the T = 20 steps and L = 3 layers of the
// longest case; 1e-4 of each tensor's scale bounds that with margin while still catching any
// derivation error (those are O(1)).
TEST_P(Golden, Float32MatchesPyTorch) {
  check_case<float>(GetParam(), 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Cases, Golden,
                         ::testing::Values("handout", "embed_class_sum", "deep_long", "tiny",
                                           "embed_soft", "identity_class", "zaremba_scale",
                                           "peephole"));

// Ten plain SGD steps p -= lr * grad on one batch, with PyTorch's loss before each step and after
// the last: every step depends on every gradient of the step before.
TEST(Golden, SgdTrajectoryMatchesPyTorch) {
  const std::string dir = kGolden + "sgd";
  Model<double> m = load_model<double>(dir + "/model.safetensors");
  const Batch<double> b = load_batch<double>(dir + "/batch.safetensors", m.cfg);
  const io::TensorFile traj = io::read_safetensors(dir + "/trajectory.safetensors");
  const std::vector<double> want = io::to_floats<double>(traj.require("loss", dir), dir);
  const double lr = std::stod(traj.metadata.at("lr"));
  const Reduction red = parse_reduction(traj.metadata.at("reduction"));
  LanguageModel<double> lm(m.cfg);
  std::vector<double> got, grad(m.params.size());
  for (size_t step = 0; step < want.size(); ++step) {
    got.push_back(lm.forward(m.params, b, red));
    std::fill(grad.begin(), grad.end(), 0.0);
    lm.backward(grad, m.params, b);
    for (size_t k = 0; k < grad.size(); ++k) m.params[k] -= lr * grad[k];
  }
  EXPECT_TRUE(close("SGD loss trajectory", got, want, 1e-9));
}

}  // namespace
}  // namespace lstmgrad::test
