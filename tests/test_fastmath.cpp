// The vectorised float32 nonlinearities (core::fast_exp / fast_sigmoid / fast_tanh, used by the
// float32 gate kernels and softmax) against the std:: versions in double, over a dense sweep.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "compare.hpp"
#include "core/gates.hpp"
#include "cpu/fast_gates.hpp"
#include "cpu/panel_gemm.hpp"

namespace lstmgrad::test {
namespace {

TEST(FastMath, ExpIsWithinTwoUlpRelative) {
  double worst = 0, at = 0;
  for (float x = -87.0f; x <= 88.0f; x += 0.0013f) {
    const double ref = std::exp(static_cast<double>(x));
    const double rel = std::abs(core::fast_exp(x) - ref) / ref;
    if (rel > worst) worst = rel, at = x;
  }
  EXPECT_LE(worst, 2.4e-7) << "max relative error at x = " << at;  // 2 ulp of float
}

TEST(FastMath, SigmoidAndTanhAreWithinAbsoluteTolerance) {
  double ws = 0, wt = 0, as = 0, at = 0;
  for (float x = -30.0f; x <= 30.0f; x += 0.00037f) {
    const double xd = x;
    const double es = std::abs(core::fast_sigmoid(x) - 1.0 / (1.0 + std::exp(-xd)));
    const double et = std::abs(core::fast_tanh(x) - std::tanh(xd));
    if (es > ws) ws = es, as = x;
    if (et > wt) wt = et, at = x;
  }
  EXPECT_LE(ws, 2.5e-7) << "sigmoid max |error| at x = " << as;
  EXPECT_LE(wt, 2.5e-7) << "tanh max |error| at x = " << at;
  EXPECT_EQ(core::fast_tanh(50.0f), 1.0f);
  EXPECT_EQ(core::fast_tanh(-50.0f), -1.0f);
  EXPECT_EQ(core::fast_sigmoid(-200.0f) >= 0.0f, true);
}

// The float32 gate kernels against the float64 reference kernels on the same inputs: the plain
// cell and the cell with peepholes (CellUnit weights).
class GateKernels : public ::testing::TestWithParam<bool> {};

TEST_P(GateKernels, MatchTheFloat64Reference) {
  const int64_t B = 3, H = 37, G = 4 * H;
  std::vector<double> z(B * G), bias(G), sp(B * H), s(B * H), h(B * H);
  for (int64_t k = 0; k < B * G; ++k) z[k] = std::sin(0.37 * static_cast<double>(k)) * 4;
  for (int64_t k = 0; k < G; ++k) bias[k] = std::cos(0.11 * static_cast<double>(k));
  for (int64_t k = 0; k < B * H; ++k) sp[k] = std::cos(0.53 * static_cast<double>(k)) * 2;
  std::vector<double> unit(3 * H);
  for (int64_t k = 0; k < 3 * H; ++k) unit[k] = std::sin(0.29 * static_cast<double>(k));
  std::vector<float> zf(z.begin(), z.end()), bf(bias.begin(), bias.end()),
      spf(sp.begin(), sp.end()), sf(B * H), hf(B * H), unitf(unit.begin(), unit.end());
  const double* ud = GetParam() ? unit.data() : nullptr;
  const float* uf = GetParam() ? unitf.data() : nullptr;
  core::gates_forward(z.data(), G, H, bias.data(), ud, s.data(), h.data(), sp.data(), H, B, H);
  cpu::fast_gates_forward(zf.data(), G, H, bf.data(), uf, sf.data(), hf.data(), spf.data(), H, B,
                          H);
  double worst = 0;
  for (int64_t k = 0; k < B * H; ++k)
    worst = std::max({worst, std::abs(sf[k] - s[k]), std::abs(hf[k] - h[k])});
  for (int64_t k = 0; k < B * G; ++k) worst = std::max(worst, std::abs(zf[k] - z[k]));
  EXPECT_LE(worst, 2e-6);
  // Backward of the same step.
  std::vector<double> dz(B * G), ds(B * H), dho(B * H), dhr(B * H);
  for (int64_t k = 0; k < B * H; ++k) {
    const double x = static_cast<double>(k);
    ds[k] = std::sin(0.7 * x), dho[k] = std::cos(0.3 * x), dhr[k] = std::sin(0.2 * x);
  }
  std::vector<float> dzf(B * G), dsf(ds.begin(), ds.end()), dhof(dho.begin(), dho.end()),
      dhrf(dhr.begin(), dhr.end());
  core::gates_backward(dz.data(), G, H, ds.data(), dho.data(), dhr.data(), z.data(), s.data(),
                       sp.data(), ud, H, B, H);
  cpu::fast_gates_backward(dzf.data(), G, H, dsf.data(), dhof.data(), dhrf.data(), zf.data(),
                           sf.data(), spf.data(), uf, H, B, H);
  worst = 0;
  for (int64_t k = 0; k < B * G; ++k) worst = std::max(worst, std::abs(dzf[k] - dz[k]));
  for (int64_t k = 0; k < B * H; ++k) worst = std::max(worst, std::abs(dsf[k] - ds[k]));
  EXPECT_LE(worst, 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Cells, GateKernels, ::testing::Values(false, true), cell_variant);

// The fused step kernels (the recurrent GEMM and the gate pass in one, the sums in registers)
// against the two they replace, panel_gemm then fast_gates_*: the same sums in the same order,
// so the same bits, on ragged shapes (rows not a multiple of the tiles' 5 or 12, groups of fewer
// than 16 or 32 units, K not a multiple of anything), with and without dh_out, with and without
// peepholes.
TEST(FastMath, FusedStepKernelsMatchGemmThenGates) {
  if (!cpu::panel_gemm_available()) GTEST_SKIP() << "no AVX-512 on this CPU";
  const int64_t H = 45, G = 4 * H;  // a layer's row stride; groups start at unit j
  auto fill = [](std::vector<float>& v, double f, double a) {
    for (size_t k = 0; k < v.size(); ++k)
      v[k] = static_cast<float>(a * std::sin(f * static_cast<double>(k) + 0.3));
  };
  std::vector<float> unit(3 * H);
  fill(unit, 0.21, 0.8);
  for (int64_t B : {1, 4, 5, 7, 12, 13, 20, 26}) {
    const float* u = B % 2 ? unit.data() + 3 : nullptr;  // peepholes on odd B
    for (int64_t n : {16, 11, 1}) {                      // forward: one group of up to 16 units
      SCOPED_TRACE(::testing::Message() << "forward B " << B << " n " << n);
      const int64_t K = 37, j = 3;
      std::vector<float> hp(B * K), zin(B * G), bias(G), sp(B * H), W(G * K);
      fill(hp, 0.31, 1), fill(zin, 0.17, 2), fill(bias, 0.05, 0.5), fill(sp, 0.41, 1.5);
      fill(W, 0.013, 0.3);
      const cpu::PanelLayout layout{4, n, H, K};  // rows j.. of each gate's block of U
      std::vector<float> panels(static_cast<size_t>(layout.floats()) + 16);
      float* P = panels.data() + (64 - reinterpret_cast<uintptr_t>(panels.data()) % 64) % 64 / 4;
      cpu::pack_panels(P, W.data() + j * K, K, true, layout);
      std::vector<float> z1 = zin, z2 = zin, s1(B * H), s2(B * H), h1(B * H), h2(B * H);
      cpu::panel_gemm(B, hp.data(), K, P, layout, z1.data() + j, G, true);
      cpu::fast_gates_forward(z1.data() + j, G, H, bias.data() + j, u, s1.data() + j, h1.data() + j,
                              sp.data() + j, H, B, n);
      cpu::fused_step_forward(B, hp.data(), K, K, P, z2.data() + j, G, H, bias.data() + j, u,
                              s2.data() + j, h2.data() + j, sp.data() + j, H, n);
      EXPECT_EQ(z1, z2);
      EXPECT_EQ(s1, s2);
      EXPECT_EQ(h1, h2);
    }
    for (int64_t n : {32, 20, 16, 9}) {  // backward: one group of up to 32 units, K = 4H
      for (int variant = 0; variant < 3; ++variant) {
        const bool with_out = variant != 1, with_mask = variant == 2;  // recurrent dropout
        SCOPED_TRACE(::testing::Message() << "backward B " << B << " n " << n << " dh_out "
                                          << with_out << " rec_mask " << with_mask);
        const int64_t j = 7;
        std::vector<float> dzn(B * G), gates(B * G), s(B * H), sp(B * H), ds(B * H), dho(B * H),
            U(G * H);
        fill(dzn, 0.23, 0.5), fill(gates, 0.07, 0.45), fill(s, 0.19, 1.2), fill(sp, 0.29, 1);
        fill(ds, 0.11, 0.3), fill(dho, 0.37, 0.7), fill(U, 0.017, 0.2);
        for (float& g : gates) g += 0.5f;           // activations in (0, 1)
        const cpu::PanelLayout layout{1, n, 0, G};  // columns j.. of U [G,H]
        std::vector<float> panels(static_cast<size_t>(layout.floats()) + 16);
        float* P = panels.data() + (64 - reinterpret_cast<uintptr_t>(panels.data()) % 64) % 64 / 4;
        cpu::pack_panels(P, U.data() + j, H, false, layout);
        std::vector<float> dz1(B * G), dz2(B * G), ds1 = ds, ds2 = ds, dh_rec(B * H);
        const float* out = with_out ? dho.data() + j : nullptr;
        cpu::panel_gemm(B, dzn.data(), G, P, layout, dh_rec.data() + j, H, false);
        std::vector<float> mask(B * H);  // 0 or 1/(1-p), p = 0.3
        for (size_t e = 0; e < mask.size(); ++e) mask[e] = e % 3 == 1 ? 0.0f : 1.0f / 0.7f;
        if (with_mask)
          for (size_t e = 0; e < mask.size(); ++e) dh_rec[e] *= mask[e];
        cpu::fast_gates_backward(dz1.data() + j, G, H, ds1.data() + j, out, dh_rec.data() + j,
                                 gates.data() + j, s.data() + j, sp.data() + j, u, H, B, n);
        cpu::fused_step_backward(B, dzn.data(), G, G, P, dz2.data() + j, H, ds2.data() + j, out,
                                 gates.data() + j, s.data() + j, sp.data() + j, u,
                                 with_mask ? mask.data() + j : nullptr, H, n);
        EXPECT_EQ(dz1, dz2);
        EXPECT_EQ(ds1, ds2);
      }
    }
  }
}

}  // namespace
}  // namespace lstmgrad::test
