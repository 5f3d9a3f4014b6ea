// The vectorised float32 nonlinearities (core::fast_exp / fast_sigmoid / fast_tanh, used by the
// float32 gate kernels and softmax) against the std:: versions in double, over a dense sweep.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/gates.hpp"
#include "cpu/fast_gates.hpp"

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

// The float32 gate kernels against the float64 reference kernels on the same inputs.
TEST(FastMath, GateKernelsMatchTheFloat64Reference) {
  const int64_t B = 3, H = 37, G = 4 * H;
  std::vector<double> z(B * G), bias(G), sp(B * H), s(B * H), h(B * H);
  for (int64_t k = 0; k < B * G; ++k) z[k] = std::sin(0.37 * k) * 4;
  for (int64_t k = 0; k < G; ++k) bias[k] = std::cos(0.11 * k);
  for (int64_t k = 0; k < B * H; ++k) sp[k] = std::cos(0.53 * k) * 2;
  std::vector<float> zf(z.begin(), z.end()), bf(bias.begin(), bias.end()),
      spf(sp.begin(), sp.end()), sf(B * H), hf(B * H);
  core::gates_forward(z.data(), G, H, bias.data(), s.data(), h.data(), sp.data(), H, B, H);
  cpu::fast_gates_forward(zf.data(), G, H, bf.data(), sf.data(), hf.data(), spf.data(), H, B, H);
  double worst = 0;
  for (int64_t k = 0; k < B * H; ++k)
    worst = std::max({worst, std::abs(sf[k] - s[k]), std::abs(hf[k] - h[k])});
  for (int64_t k = 0; k < B * G; ++k) worst = std::max(worst, std::abs(zf[k] - z[k]));
  EXPECT_LE(worst, 2e-6);
  // Backward of the same step.
  std::vector<double> dz(B * G), ds(B * H), dho(B * H), dhr(B * H);
  for (int64_t k = 0; k < B * H; ++k)
    ds[k] = std::sin(0.7 * k), dho[k] = std::cos(0.3 * k), dhr[k] = std::sin(0.2 * k);
  std::vector<float> dzf(B * G), dsf(ds.begin(), ds.end()), dhof(dho.begin(), dho.end()),
      dhrf(dhr.begin(), dhr.end());
  core::gates_backward(dz.data(), G, H, ds.data(), dho.data(), dhr.data(), z.data(), s.data(),
                       sp.data(), H, B, H);
  cpu::fast_gates_backward(dzf.data(), G, H, dsf.data(), dhof.data(), dhrf.data(), zf.data(),
                           sf.data(), spf.data(), H, B, H);
  worst = 0;
  for (int64_t k = 0; k < B * G; ++k) worst = std::max(worst, std::abs(dzf[k] - dz[k]));
  for (int64_t k = 0; k < B * H; ++k) worst = std::max(worst, std::abs(dsf[k] - ds[k]));
  EXPECT_LE(worst, 1e-5);
}

}  // namespace
}  // namespace lstmgrad::test
