// The portable float32 kernels (auto-vectorised, what a CPU without AVX-512 runs), forced on this
// machine with cpu::force_portable_kernels: the gate passes against core::gates_* in float64,
// and the whole language model against float64 and against the AVX-512 path.
//
// Tolerances: the gate passes use core::fast_sigmoid / fast_tanh (<= 2.5e-7 absolute error,
// tests/test_fastmath.cpp) on values of order 1, so 2e-6 absolute covers their error carried
// through a few products; the model-level checks use the golden files' float32 tolerance
// (1e-4 of each tensor's largest value, tests/test_golden.cpp) for float32 against float64, and
// 1e-5 for AVX-512 against portable, two float32 evaluations of the same formulas.
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "compare.hpp"
#include "core/gates.hpp"
#include "cpu/fast_gates.hpp"
#include "cpu/panel_gemm.hpp"
#include "lstmgrad/lstm.hpp"

namespace lstmgrad::test {
namespace {

// The AVX-512 kernels off for one scope.
struct PortableKernels {
  PortableKernels() { cpu::force_portable_kernels(true); }
  ~PortableKernels() { cpu::force_portable_kernels(false); }
  PortableKernels(const PortableKernels&) = delete;
  PortableKernels& operator=(const PortableKernels&) = delete;
};

TEST(PortableKernels, SwitchTurnsTheAvx512PathOff) {
  const bool had = cpu::panel_gemm_available();
  {
    PortableKernels portable;
    EXPECT_FALSE(cpu::panel_gemm_available());
  }
  EXPECT_EQ(cpu::panel_gemm_available(), had);
}

// B rows of n = 37 units (a ragged 16-lane tail), gates gs = 40 apart, rows ldz = 4 * 40 apart;
// the plain cell and the cell with peepholes (CellUnit weights).
class PortableGatePasses : public ::testing::TestWithParam<bool> {};

TEST_P(PortableGatePasses, MatchTheFloat64Reference) {
  PortableKernels portable;
  std::mt19937_64 rng(9);
  const int64_t B = 3, n = 37, gs = 40, ldz = 4 * gs, ld = 41;
  const std::vector<double> z = uniform(static_cast<size_t>(B * ldz), rng, -3, 3);
  const std::vector<double> bias = uniform(static_cast<size_t>(4 * gs), rng, -1, 1);
  const std::vector<double> sp = uniform(static_cast<size_t>(B * ld), rng, -2, 2);
  const std::vector<double> unit = uniform(static_cast<size_t>(3 * gs), rng, -1, 1);
  const std::vector<float> unitf = cast<float>(unit);
  const double* ud = GetParam() ? unit.data() : nullptr;
  const float* uf = GetParam() ? unitf.data() : nullptr;
  std::vector<double> zd = z, s(sp.size()), h(sp.size());
  core::gates_forward(zd.data(), ldz, gs, bias.data(), ud, s.data(), h.data(), sp.data(), ld, B, n);
  std::vector<float> zf = cast<float>(z), sf(sp.size()), hf(sp.size());
  const std::vector<float> bf = cast<float>(bias), spf = cast<float>(sp);
  cpu::fast_gates_forward(zf.data(), ldz, gs, bf.data(), uf, sf.data(), hf.data(), spf.data(), ld,
                          B, n);
  auto within = [&](const char* what, const std::vector<float>& got,
                    const std::vector<double>& want) {
    for (int64_t r = 0; r < B; ++r)
      for (int64_t j = 0; j < n; ++j)
        for (int64_t g = 0; g < (got.size() == z.size() ? 4 : 1); ++g) {
          const size_t k =
              static_cast<size_t>(got.size() == z.size() ? r * ldz + g * gs + j : r * ld + j);
          EXPECT_NEAR(got[k], want[k], 2e-6) << what << " row " << r << " unit " << j;
        }
  };
  within("gates", zf, zd);
  within("s", sf, s);
  within("h", hf, h);

  const std::vector<double> dh_out = uniform(sp.size(), rng), dh_rec = uniform(sp.size(), rng);
  const std::vector<double> ds0 = uniform(sp.size(), rng);
  std::vector<double> dz(z.size()), ds = ds0;
  core::gates_backward(dz.data(), ldz, gs, ds.data(), dh_out.data(), dh_rec.data(), zd.data(),
                       s.data(), sp.data(), ud, ld, B, n);
  std::vector<float> dzf(z.size()), dsf = cast<float>(ds0);
  const std::vector<float> dhof = cast<float>(dh_out), dhrf = cast<float>(dh_rec);
  cpu::fast_gates_backward(dzf.data(), ldz, gs, dsf.data(), dhof.data(), dhrf.data(), zf.data(),
                           sf.data(), spf.data(), uf, ld, B, n);
  within("dz", dzf, dz);
  within("ds", dsf, ds);
}

INSTANTIATE_TEST_SUITE_P(Cells, PortableGatePasses, ::testing::Values(false, true), cell_variant);

struct LmRun {
  double loss;
  std::vector<double> grad, h_n;
};

template <class Real>
LmRun run_lm(const ModelConfig& cfg, const std::vector<double>& params, const Batch<double>& b,
             const Regularization& reg) {
  Batch<Real> br;
  br.T = b.T, br.B = b.B, br.tokens = b.tokens, br.target = b.target;
  br.h0 = cast<Real>(b.h0), br.s0 = cast<Real>(b.s0);
  const std::vector<Real> p = cast<Real>(params);
  LanguageModel<Real> lm(cfg);
  lm.set_regularization(reg, 5);
  LmRun r;
  r.loss = lm.forward(p, br, Reduction::mean);
  r.h_n.assign(lm.h_n().begin(), lm.h_n().end());
  std::vector<Real> g(p.size(), Real(0));
  lm.backward(g, p, br);
  r.grad.assign(g.begin(), g.end());
  return r;
}

// The cell variants and the regularisers inside the step loop: plain, peepholes, recurrent
// dropout, zoneout (with masks: set_regularization draws them).
enum class StepVariant { plain, peephole, recurrent_dropout, zoneout };

class PortableLanguageModel : public ::testing::TestWithParam<StepVariant> {};

TEST_P(PortableLanguageModel, MatchesFloat64AndAvx512) {
  ModelConfig cfg;
  cfg.V = 70, cfg.X = 20, cfg.H = 37, cfg.L = 2;
  cfg.peephole = GetParam() == StepVariant::peephole;
  Regularization reg;
  if (GetParam() == StepVariant::recurrent_dropout) reg.dropout_rec = 0.3;
  if (GetParam() == StepVariant::zoneout) cfg.zoneout_h = 0.2, cfg.zoneout_s = 0.3;
  std::mt19937_64 rng(4);
  const std::vector<double> params = uniform(parameter_count(cfg), rng, -0.3, 0.3);
  Batch<double> b;
  b.T = 6, b.B = 5;
  std::uniform_int_distribution<int64_t> id(0, cfg.V - 1);
  for (int64_t r = 0; r < b.T * b.B; ++r) b.tokens.push_back(id(rng)), b.target.push_back(id(rng));
  b.h0 = uniform(static_cast<size_t>(cfg.L * b.B * cfg.H), rng, -0.5, 0.5);
  b.s0 = uniform(b.h0.size(), rng, -0.5, 0.5);
  const LmRun ref = run_lm<double>(cfg, params, b, reg);
  const LmRun fast = run_lm<float>(cfg, params, b, reg);  // AVX-512 where the CPU has it
  LmRun portable;
  {
    PortableKernels off;
    portable = run_lm<float>(cfg, params, b, reg);
  }
  for (const LmRun* r : {static_cast<const LmRun*>(&portable), static_cast<const LmRun*>(&fast)}) {
    EXPECT_TRUE(close("loss", std::vector<double>{r->loss}, std::vector<double>{ref.loss}, 1e-4));
    EXPECT_TRUE(close("h_n", r->h_n, ref.h_n, 1e-4));
    for (const ParamInfo& info : parameter_layout(cfg)) {
      const auto at = [&](const std::vector<double>& v) {
        return std::vector<double>(v.begin() + static_cast<long>(info.offset),
                                   v.begin() + static_cast<long>(info.offset + info.size));
      };
      EXPECT_TRUE(close(info.name, at(r->grad), at(ref.grad), 1e-4));
      if (r == &portable) {
        EXPECT_TRUE(close(info.name, at(portable.grad), at(fast.grad), 1e-5));
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Cells, PortableLanguageModel,
                         ::testing::Values(StepVariant::plain, StepVariant::peephole,
                                           StepVariant::recurrent_dropout, StepVariant::zoneout),
                         [](const ::testing::TestParamInfo<StepVariant>& p) {
                           return p.param == StepVariant::plain      ? "plain"
                                  : p.param == StepVariant::peephole ? "peephole"
                                  : p.param == StepVariant::zoneout  ? "zoneout"
                                                                     : "recurrent_dropout";
                         });

}  // namespace
}  // namespace lstmgrad::test
