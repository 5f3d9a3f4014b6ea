// The CUDA engine against the CPU float64 reference (labelled gpu in CTest). Where no GPU is
// present every parity test is skipped (GTEST_SKIP, reported as skipped, not passed), and the
// one test that runs checks that --device cuda then says so.
//
// Tolerance: 1e-5 of each tensor's largest reference value (max |cuda - cpu f64| / max |cpu|).
// The CUDA engine computes in float32 with TF32 off (eps 6e-8); sums of up to a few thousand
// terms and 10 SGD updates stay well inside 1e-5, while a wrong index, a missing barrier or a
// TF32 GEMM (error ~1e-3) fail it by orders of magnitude.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <random>
#include <string>

#include "lstmgrad/check.hpp"
#include "lstmgrad/cuda.hpp"
#include "lstmgrad/error.hpp"
#include "lstmgrad/lstm.hpp"
#include "lstmgrad/optimizer.hpp"

namespace lstmgrad {
namespace {

#define SKIP_WITHOUT_GPU()                          \
  if (!cuda::available()) {                         \
    GTEST_SKIP() << "no GPU: " << cuda::describe(); \
  }

struct Case {
  const char* name;
  InputKind input;
  Readout readout;
  int64_t T, B, X, H, L, V;
  bool soft = false, zero_state = false;
  Reduction red = Reduction::mean;
  double dropout = 0;
  bool peephole = false;
};

void expect_parity(const Case& c, const std::string& recurrence) {
  CheckOptions o;
  o.cfg = {c.input, c.readout, c.readout == Readout::identity ? c.H : c.V, c.X, c.H, c.L};
  o.cfg.peephole = c.peephole;
  o.T = c.T, o.B = c.B, o.soft_targets = c.soft, o.initial_state = !c.zero_state;
  o.reduction = c.red, o.seed = 11;
  DeviceCheckOptions d;
  d.dropout = c.dropout, d.recurrence = recurrence;
  const DeviceCheckReport r = run_device_check(o, d);
  for (const DeviceCheckRow& row : r.rows)
    EXPECT_TRUE(row.ok) << c.name << " (" << r.recurrence << "): " << row.tensor << " rel "
                        << row.rel << " (max |ref| " << row.max_abs << ")";
  EXPECT_TRUE(r.ok);
  if (recurrence != "auto") {
    EXPECT_EQ(r.recurrence, recurrence) << c.name;
  }
}

const Case kCases[] = {
    {"embedding-linear", InputKind::embedding, Readout::linear, 5, 3, 6, 8, 2, 11},
    {"dense-identity-soft-sum", InputKind::dense, Readout::identity, 4, 2, 5, 9, 3, 9, true, false,
     Reduction::sum},
    {"zero-state-batch-mean-dropout", InputKind::embedding, Readout::linear, 6, 4, 7, 10, 2, 13,
     false, true, Reduction::batch_mean, 0.3},
    // Blocks of 2 units, tiles of 4 rows: the Zaremba-small widths.
    {"zaremba-small-shape", InputKind::embedding, Readout::linear, 12, 20, 200, 200, 2, 50},
    // A ragged last block and a batch that is no multiple of the tile rows.
    {"ragged", InputKind::dense, Readout::linear, 5, 13, 17, 133, 1, 7},
    // Blocks of 8 units, tiles of 2 rows: the large preset's width.
    {"wide", InputKind::dense, Readout::linear, 3, 33, 64, 1024, 1, 5},
    // Peepholes: the CellUnit weights in both recurrences and their gradient kernel.
    {"peephole", InputKind::embedding, Readout::linear, 7, 5, 6, 19, 2, 11, false, false,
     Reduction::mean, 0.2, true},
};

TEST(CudaParity, EveryCaseOnThePersistentPath) {
  SKIP_WITHOUT_GPU();
  for (const Case& c : kCases) expect_parity(c, "persistent");
}

TEST(CudaParity, EveryCaseOnThePerStepPath) {
  SKIP_WITHOUT_GPU();
  for (const Case& c : kCases) expect_parity(c, "steps");
}

// Two windows, the state carried on the device, against the CPU fed h_n explicitly.
TEST(CudaParity, CarriedStateMatchesAnExplicitState) {
  SKIP_WITHOUT_GPU();
  const ModelConfig cfg{InputKind::embedding, Readout::linear, 23, 8, 12, 2};
  std::mt19937_64 rng(3);
  std::uniform_real_distribution<double> u(-0.4, 0.4);
  std::vector<double> params(parameter_count(cfg));
  for (double& p : params) p = u(rng);
  const std::vector<float> fparams(params.begin(), params.end());
  std::uniform_int_distribution<int64_t> id(0, cfg.V - 1);
  Batch<double> w[2];
  Batch<float> fw[2];
  for (int k = 0; k < 2; ++k) {
    w[k].T = fw[k].T = 6, w[k].B = fw[k].B = 3;
    for (int r = 0; r < 18; ++r) w[k].tokens.push_back(id(rng)), w[k].target.push_back(id(rng));
    fw[k].tokens = w[k].tokens, fw[k].target = w[k].target;
  }
  LanguageModel<double> cpu(cfg);
  cuda::LanguageModel gpu(cfg);
  gpu.set_params(fparams);
  double ref[2], got[2];
  ref[0] = cpu.forward(params, w[0], Reduction::sum);
  w[1].h0.assign(cpu.h_n().begin(), cpu.h_n().end());
  w[1].s0.assign(cpu.s_n().begin(), cpu.s_n().end());
  ref[1] = cpu.forward(params, w[1], Reduction::sum);
  got[0] = gpu.forward(fw[0], Reduction::sum);
  gpu.carry_state();
  got[1] = gpu.forward(fw[1], Reduction::sum);
  for (int k = 0; k < 2; ++k)
    EXPECT_NEAR(got[k], ref[k], 1e-5 * std::abs(ref[k])) << "window " << k;
  // After reset_state the second window starts from zeros again.
  gpu.reset_state();
  const double zero_start = gpu.forward(fw[1], Reduction::sum);
  EXPECT_GT(std::abs(zero_start - got[1]), 1e-4);
}

// Three Adam updates with clipping on the device against Optimizer<double> on the CPU.
TEST(CudaParity, AdamUpdatesMatchTheCpuOptimizer) {
  SKIP_WITHOUT_GPU();
  const ModelConfig cfg{InputKind::embedding, Readout::linear, 17, 6, 10, 1};
  std::mt19937_64 rng(5);
  std::uniform_real_distribution<double> u(-0.3, 0.3);
  std::vector<double> params(parameter_count(cfg)), grad(params.size());
  for (double& p : params) p = u(rng);
  std::vector<float> fparams(params.begin(), params.end());
  Batch<double> b;
  b.T = 5, b.B = 2;
  std::uniform_int_distribution<int64_t> id(0, cfg.V - 1);
  for (int r = 0; r < 10; ++r) b.tokens.push_back(id(rng)), b.target.push_back(id(rng));
  Batch<float> fb;
  fb.T = b.T, fb.B = b.B, fb.tokens = b.tokens, fb.target = b.target;
  LanguageModel<double> cpu(cfg);
  Optimizer<double> adam(OptimizerKind::adam, params.size());
  cuda::LanguageModel gpu(cfg);
  gpu.set_params(fparams);
  const double lr = 0.01, clip = 0.1;
  for (int step = 1; step <= 3; ++step) {
    std::fill(grad.begin(), grad.end(), 0.0);
    cpu.forward(params, b, Reduction::mean);
    cpu.backward(grad, params, b);
    adam.step_and_zero(params, grad, lr, clip_factor(grad_norm<double>(grad), clip));
    gpu.forward(fb, Reduction::mean);
    gpu.backward();
    gpu.adam_step(lr, clip, step);
  }
  gpu.get_params(fparams);
  double err = 0, mx = 0;
  for (size_t k = 0; k < params.size(); ++k)
    err = std::max(err, std::abs(params[k] - fparams[k])), mx = std::max(mx, std::abs(params[k]));
  // Adam divides by sqrt(v): early updates move each parameter by about lr whatever the gradient,
  // so float32 gradients that differ by 1e-7 still give updates that agree to ~1e-6 lr.
  EXPECT_LT(err / mx, 1e-5);
}

// Without a GPU (or without the backend) the engine refuses with the reason, naming the flag.
TEST(CudaBackend, WithoutAGpuTheEngineSaysSo) {
  if (cuda::available()) GTEST_SKIP() << "a GPU is present: " << cuda::describe();
  const ModelConfig cfg{InputKind::embedding, Readout::linear, 5, 3, 4, 1};
  try {
    cuda::LanguageModel lm(cfg);
    FAIL() << "constructed without a GPU";
  } catch (const InputError& e) {
    const std::string what = e.what();
    EXPECT_EQ(what.rfind("--device cuda: ", 0), 0u) << what;
    EXPECT_EQ(what.find('\n'), std::string::npos) << what;
  }
  EXPECT_FALSE(cuda::describe().empty());
}

}  // namespace
}  // namespace lstmgrad
