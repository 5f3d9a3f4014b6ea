// bfloat16 operands (cpu/bf16.hpp, LstmStack::set_precision): the rounding against its definition,
// the conversions and kernels against float64 sums of the rounded operands (odd K, ragged rows
// and columns, both A forms, grouped layouts), and the stack's forward, inference and backward in
// bf16 against float64 on the same weights, for every cell variant the bf16 path takes. Skipped
// where the CPU has no AVX512_BF16 (the engine refuses bf16 there: tested too).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "compare.hpp"
#include "cpu/bf16.hpp"
#include "cpu/lstm_stack.hpp"
#include "lstmgrad/error.hpp"
#include "lstmgrad/lstm.hpp"
#include "splitmix.hpp"

namespace lstmgrad::test {
namespace {

using cpu::bf16_t;

#define SKIP_WITHOUT_BF16() \
  if (!cpu::bf16_available()) GTEST_SKIP() << "this CPU has no AVX512_BF16"

float bits_to_float(uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

TEST(Bf16, RoundsToNearestEven) {
  EXPECT_EQ(cpu::to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(cpu::to_bf16(bits_to_float(0x3f808000u)), 0x3f80);  // a tie, to the even 0x3f80
  EXPECT_EQ(cpu::to_bf16(bits_to_float(0x3f818000u)), 0x3f82);  // a tie, to the even 0x3f82
  EXPECT_EQ(cpu::to_bf16(bits_to_float(0x3f808001u)), 0x3f81);  // above the tie: up
  EXPECT_EQ(cpu::to_bf16(-2.5f), 0xc020);
  EXPECT_EQ(cpu::to_bf16(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_EQ(cpu::to_bf16(std::numeric_limits<float>::max()), 0x7f80);  // rounds up to infinity
  EXPECT_TRUE(std::isnan(cpu::from_bf16(cpu::to_bf16(std::nanf("")))));
  EXPECT_EQ(cpu::to_bf16(bits_to_float(0x00000123u)), 0x0000);  // denormal: zero (as the CPU)
  EXPECT_EQ(cpu::to_bf16(bits_to_float(0x80000123u)), 0x8000);
  EXPECT_EQ(cpu::from_bf16(0x3f80), 1.0f);
}

// The vector conversions (the CPU's vcvtneps2bf16) give the scalar rounding's bits, with the
// padding the formats promise.
TEST(Bf16, VectorConversionsMatchTheScalarRounding) {
  SKIP_WITHOUT_BF16();
  SplitMix rng(3);
  const int64_t rows = 7, K = 37, lds = 41;
  std::vector<float> src(static_cast<size_t>(rows * lds));
  for (float& x : src) x = static_cast<float>(rng.uniform(-3, 3));
  const int64_t ldd = cpu::even(K) + 2;
  std::vector<bf16_t> dst(static_cast<size_t>(rows * ldd), 0xffff);
  cpu::to_bf16_rows(dst.data(), ldd, src.data(), lds, rows, 0, K, K);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t k = 0; k < K; ++k)
      ASSERT_EQ(dst[r * ldd + k], cpu::to_bf16(src[r * lds + k])) << r << "," << k;
    ASSERT_EQ(dst[r * ldd + K], 0) << "odd K's pad";
  }
  // pairs: columns [2, 21) of 7 rows (K = 7, odd), 24 lanes
  const int64_t c0 = 2, c1 = 21, lanes = 24, ldp = 2 * lanes + 4;
  std::vector<bf16_t> p(static_cast<size_t>(4 * ldp), 0xffff);
  cpu::to_bf16_pairs(p.data(), ldp, src.data(), lds, rows, c0, c1, lanes);
  for (int64_t k = 0; k < cpu::even(rows); ++k)
    for (int64_t c = 0; c < lanes; ++c) {
      const bf16_t want = k < rows && c < c1 - c0 ? cpu::to_bf16(src[k * lds + c0 + c]) : 0;
      ASSERT_EQ(p[(k / 2) * ldp + 2 * c + k % 2], want) << k << "," << c;
    }
}

// The panels of op(W) = W^T (rows = true, the vector transpose) and of W itself hold exactly the
// rounded entries, zeros in the padding lanes and in an odd K's last pair.
TEST(Bf16, PanelsHoldTheRoundedEntries) {
  SKIP_WITHOUT_BF16();
  SplitMix rng(5);
  for (const bool rows : {true, false}) {
    const int64_t K = 45, groups = 3, width = 21, stride = 26, cols = 2 * stride + width;
    const int64_t ldw = rows ? K + 3 : cols + 3;
    std::vector<float> W(static_cast<size_t>((rows ? cols : K) * ldw));
    for (float& x : W) x = static_cast<float>(rng.uniform(-2, 2));
    const cpu::PanelLayout layout{groups, width, stride, K};
    std::vector<bf16_t> d(static_cast<size_t>(cpu::bf16_panels_size(layout) + 32), 0xffff);
    bf16_t* packed = d.data() + (64 - reinterpret_cast<uintptr_t>(d.data()) % 64) % 64 / 2;
    cpu::pack_bf16_panels(packed, W.data(), ldw, rows, layout, 0, layout.panels());
    for (int64_t p = 0; p < layout.panels(); ++p)
      for (int64_t k = 0; k < cpu::even(K); ++k)
        for (int64_t l = 0; l < cpu::kPanelWidth; ++l) {
          const int64_t g = p / layout.per_group(), c = (p % layout.per_group()) * 16 + l;
          const int64_t col = g * stride + c;
          const bool inside = c < width && k < K;  // padding lanes and pair: zeros, W unread
          const bf16_t want =
              inside ? cpu::to_bf16(rows ? W[col * ldw + k] : W[k * ldw + col]) : bf16_t(0);
          ASSERT_EQ(packed[p * cpu::bf16_panel_size(K) + (k / 2) * 32 + 2 * l + k % 2], want)
              << "rows " << rows << " panel " << p << " k " << k << " lane " << l;
        }
  }
}

// C = start + A B with bf16 operands against float64 sums of the same rounded operands. The
// products of two bf16 are exact in float32; what differs is the float32 summation's rounding, at
// most K * 2^-24 * sum |a b| <= 2^-24 K^2 here (|a|, |b| <= 1): 6e-8 K^2, below 1e-3 for K <= 130.
// A wrong or missing pair is off by O(1/K) of the sum or more.
void check_tiles(int64_t M, int64_t K, int64_t cols, cpu::PairForm form, cpu::Start start) {
  SCOPED_TRACE(::testing::Message()
               << "M " << M << " K " << K << " cols " << cols << " form " << static_cast<int>(form)
               << " start " << static_cast<int>(start));
  SplitMix rng(static_cast<uint64_t>(M * 1000 + K * 10 + cols));
  auto draw = [&] { return cpu::from_bf16(cpu::to_bf16(static_cast<float>(rng.uniform(-1, 1)))); };
  // A(r, k) and B(k, c) as float32 values that bf16 holds exactly
  std::vector<float> A(static_cast<size_t>(M * K)), B(static_cast<size_t>(K * cols));
  for (float& x : A) x = draw();
  for (float& x : B) x = draw();
  std::vector<float> bias(static_cast<size_t>(M));
  for (float& x : bias) x = static_cast<float>(rng.uniform(-1, 1));
  const int64_t ldc = cols + 3;
  std::vector<float> C(static_cast<size_t>(M * ldc));
  for (float& x : C) x = static_cast<float>(rng.uniform(-1, 1));
  const std::vector<float> C0 = C;

  // A in its form: rows [M][even(K) + 2]; pairs [even(K) / 2][M + 1][2]; blocks of 12 rows
  const int64_t blocks = (M + cpu::kBf16Rows - 1) / cpu::kBf16Rows;
  const int64_t as = form == cpu::PairForm::rows    ? cpu::even(K) + 2
                     : form == cpu::PairForm::pairs ? 2 * (M + 1)
                                                    : cpu::bf16_block_size(K);
  const int64_t a_size = form == cpu::PairForm::rows    ? M * as
                         : form == cpu::PairForm::pairs ? cpu::even(K) / 2 * as
                                                        : blocks * as;
  std::vector<bf16_t> a(static_cast<size_t>(a_size));
  std::vector<float> At(static_cast<size_t>(K * M));  // A^T [K][M] row-major
  for (int64_t r = 0; r < M; ++r)
    for (int64_t k = 0; k < K; ++k) At[k * M + r] = A[r * K + k];
  if (form == cpu::PairForm::rows)
    cpu::to_bf16_rows(a.data(), as, A.data(), K, M, 0, K, K);
  else if (form == cpu::PairForm::pairs)
    cpu::to_bf16_pairs(a.data(), as, At.data(), M, K, 0, M, M);
  else
    cpu::to_bf16_blocks(a.data(), At.data(), M, K, 0, M);
  const cpu::PanelLayout layout{1, cols, 0, K};
  const int64_t size = cpu::bf16_panel_size(K);
  auto* packed = static_cast<bf16_t*>(
      std::aligned_alloc(64, static_cast<size_t>(cpu::bf16_panels_size(layout) * 2 + 64)));
  cpu::pack_bf16_panels(packed, B.data(), cols, false, layout, 0, layout.panels());
  cpu::bf16_tiles(M, K, form, a.data(), as, packed, size, cols, C.data(), ldc, cpu::kPanelWidth,
                  start, bias.data());
  std::free(packed);
  for (int64_t r = 0; r < M; ++r)
    for (int64_t c = 0; c < ldc; ++c) {
      const float got = C[r * ldc + c];
      if (c >= cols) {
        ASSERT_EQ(got, C0[r * ldc + c]) << "column " << c << " outside the product was written";
        continue;
      }
      double want = start == cpu::Start::accumulate ? C0[r * ldc + c]
                    : start == cpu::Start::row_bias ? bias[r]
                                                    : 0.0;
      for (int64_t k = 0; k < K; ++k) want += double(A[r * K + k]) * double(B[k * cols + c]);
      ASSERT_NEAR(got, want, 6e-8 * double(K * K) + 1e-6) << "C[" << r << "," << c << "]";
    }
}

TEST(Bf16, TilesAgainstFloat64SumsOfTheRoundedOperands) {
  SKIP_WITHOUT_BF16();
  for (auto form : {cpu::PairForm::rows, cpu::PairForm::pairs, cpu::PairForm::blocks})
    for (auto start : {cpu::Start::zero, cpu::Start::accumulate, cpu::Start::row_bias}) {
      check_tiles(1, 1, 1, form, start);
      check_tiles(13, 37, 45, form, start);  // ragged rows (12 + 1), odd K, 3 panels (2 + 1)
      check_tiles(24, 64, 32, form, start);
      check_tiles(5, 130, 17, form, start);
      check_tiles(30, 9, 40, form, start);  // three row blocks, the last one of 6
    }
}

// The grouped layout of the recurrent steps (bf16_gemm, pack_bf16_panels with rows = true: op(W)
// = W^T), columns outside the layout untouched.
TEST(Bf16, GroupedGemmAgainstFloat64) {
  SKIP_WITHOUT_BF16();
  const int64_t M = 14, K = 21, groups = 4, width = 9, stride = 11, cols = 3 * stride + width;
  SplitMix rng(9);
  auto draw = [&] { return cpu::from_bf16(cpu::to_bf16(static_cast<float>(rng.uniform(-1, 1)))); };
  std::vector<float> A(static_cast<size_t>(M * K)), W(static_cast<size_t>(cols * K)),
      C(static_cast<size_t>(M * cols));
  for (float& x : A) x = draw();
  for (float& x : W) x = draw();  // W [cols][K]: op(W) = W^T
  for (float& x : C) x = static_cast<float>(rng.uniform(-1, 1));
  const std::vector<float> C0 = C;
  const int64_t lda = cpu::even(K);
  std::vector<bf16_t> a(static_cast<size_t>(M * lda));
  cpu::to_bf16_rows(a.data(), lda, A.data(), K, M, 0, K, K);
  const cpu::PanelLayout layout{groups, width, stride, K};
  auto* packed = static_cast<bf16_t*>(
      std::aligned_alloc(64, static_cast<size_t>(cpu::bf16_panels_size(layout) * 2 + 64)));
  cpu::pack_bf16_panels(packed, W.data(), K, true, layout, 0, layout.panels());
  cpu::bf16_gemm(M, a.data(), lda, packed, layout, C.data(), cols, true);
  std::free(packed);
  for (int64_t r = 0; r < M; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      if (c % stride >= width) {
        ASSERT_EQ(C[r * cols + c], C0[r * cols + c]) << "column " << c;
        continue;
      }
      double want = C0[r * cols + c];
      for (int64_t k = 0; k < K; ++k) want += double(A[r * K + k]) * double(W[c * K + k]);
      ASSERT_NEAR(C[r * cols + c], want, 6e-8 * double(K * K) + 1e-6);
    }
}

// The stack in bf16 against float64 on the same weights, inputs and masks.
struct StackCase {
  std::string name;
  int64_t X;
  std::vector<int64_t> widths;
  int64_t T, B;
  bool unit = false, rec = false, zone = false, drop = false;
  bool ln = false;   // layer norm (the row layer)
  int64_t proj = 0;  // a projection to this width (the row layer)
};

template <class Real>
struct StackRun {
  std::vector<Real> y, h_n, s_n, dx, dh0, ds0, grads;
};

template <class Real>
StackRun<Real> run_stack(const StackCase& c, Precision precision, int shares, bool infer = false,
                         int64_t infer_budget = 0) {
  const int64_t L = static_cast<int64_t>(c.widths.size()), N = c.T * c.B;
  std::mt19937_64 rng(11);
  // per layer: W_ih [G,I], W_hh [G,P], b_ih, b_hh [G], unit [3H], layer norm [18H], W_hr [P,H]
  // (P the layer's output width: the projection's, or H)
  auto out = [&](int64_t k) { return c.proj > 0 ? c.proj : c.widths[k]; };
  std::vector<std::vector<Real>> wv, gv;
  std::vector<cpu::LayerWeights<Real>> w;
  std::vector<cpu::LayerGrads<Real>> g;
  for (int64_t k = 0; k < L; ++k) {
    const int64_t H = c.widths[k], G = 4 * H, I = k == 0 ? c.X : out(k - 1), P = out(k);
    const int64_t n = G * (I + P + 2) + 3 * H + 18 * H + (c.proj > 0 ? P * H : 0);
    wv.push_back(cast<Real>(uniform(static_cast<size_t>(n), rng, -0.5, 0.5)));
    gv.emplace_back(wv.back().size(), Real(0));
  }
  for (int64_t k = 0; k < L; ++k) {
    const int64_t H = c.widths[k], G = 4 * H, I = k == 0 ? c.X : out(k - 1), P = out(k);
    const int64_t unit = G * (I + P + 2), ln = unit + 3 * H, hr = ln + 18 * H;
    Real* p = wv[k].data();
    Real* d = gv[k].data();
    w.push_back({p, p + G * I, p + G * (I + P), p + G * (I + P + 1), c.unit ? p + unit : nullptr,
                 c.ln ? p + ln : nullptr, c.proj > 0 ? p + hr : nullptr});
    g.push_back({d, d + G * I, d + G * (I + P), d + G * (I + P + 1), c.unit ? d + unit : nullptr,
                 c.ln ? d + ln : nullptr, c.proj > 0 ? d + hr : nullptr});
  }
  int64_t states = 0, outs = 0, top = out(L - 1);
  for (int64_t k = 0; k < L; ++k) states += c.B * c.widths[k], outs += c.B * out(k);
  const std::vector<Real> x = cast<Real>(uniform(static_cast<size_t>(N * c.X), rng));
  const std::vector<Real> h0 = cast<Real>(uniform(static_cast<size_t>(outs), rng, -0.5, 0.5));
  const std::vector<Real> s0 = cast<Real>(uniform(static_cast<size_t>(states), rng, -0.5, 0.5));
  const std::vector<Real> dy = cast<Real>(uniform(static_cast<size_t>(N * top), rng));
  // masks of 0 and 1/(1-p) (dropout) or 0 and 1 (zoneout), drawn the same for both precisions
  std::bernoulli_distribution keep(0.7);
  std::vector<std::vector<Real>> rec_m, zh, zs, lock;
  std::vector<const Real*> rec_p, zh_p, zs_p, lock_p;
  for (int64_t k = 0; k < L; ++k) {
    const int64_t H = c.widths[k], P = out(k);
    auto mask = [&](int64_t n, Real on) {
      std::vector<Real> m(static_cast<size_t>(n));
      for (Real& v : m) v = keep(rng) ? on : Real(0);
      return m;
    };
    rec_m.push_back(mask(c.B * P, Real(1) / Real(0.7)));
    zh.push_back(mask(N * P, Real(1))), zs.push_back(mask(N * H, Real(1)));
    lock.push_back(mask(c.B * P, Real(1) / Real(0.7)));
  }
  for (int64_t k = 0; k < L; ++k) {
    rec_p.push_back(rec_m[k].data()), zh_p.push_back(zh[k].data()), zs_p.push_back(zs[k].data());
    lock_p.push_back(lock[k].data());
  }
  cpu::LstmStack<Real> stack(c.X, c.widths, c.proj);
  stack.set_layer_norm(c.ln);
  stack.set_threads(shares);
  stack.set_precision(precision);
  if (c.rec) stack.set_recurrent_masks(rec_p.data());
  if (c.zone) stack.set_zoneout(0.3, 0.3), stack.set_zoneout_masks(zh_p.data(), zs_p.data());
  if (c.drop) stack.set_locked_masks(lock_p.data());
  StackRun<Real> run;
  if (infer) {
    stack.set_infer_gate_budget(infer_budget);
    stack.infer(x.data(), w.data(), h0.data(), s0.data(), c.T, c.B);
    run.y.assign(stack.infer_output(), stack.infer_output() + N * top);
    for (int64_t k = 0; k < L; ++k) {
      const Real* h = stack.infer_h_last(k);
      const Real* s = stack.infer_s_last(k);
      run.h_n.insert(run.h_n.end(), h, h + c.B * out(k));
      run.s_n.insert(run.s_n.end(), s, s + c.B * c.widths[k]);
    }
    return run;
  }
  stack.forward(x.data(), w.data(), h0.data(), s0.data(), c.T, c.B);
  run.y.assign(stack.output(), stack.output() + N * top);
  for (int64_t k = 0; k < L; ++k) {
    run.h_n.insert(run.h_n.end(), stack.h_last(k), stack.h_last(k) + c.B * out(k));
    run.s_n.insert(run.s_n.end(), stack.s_last(k), stack.s_last(k) + c.B * c.widths[k]);
  }
  run.dx.assign(x.size(), Real(0)), run.dh0.assign(h0.size(), Real(0));
  run.ds0.assign(s0.size(), Real(0));
  stack.backward(run.dx.data(), g.data(), dy.data(), x.data(), w.data(), run.dh0.data(),
                 run.ds0.data());
  for (auto& gk : gv) run.grads.insert(run.grads.end(), gk.begin(), gk.end());
  return run;
}

std::vector<StackCase> stack_cases() {
  return {
      {"Plain", 10, {20, 20}, 6, 5},
      {"OddWidths", 7, {13, 9}, 5, 13},  // odd K everywhere, ragged rows and groups
      {"Wide", 40, {48, 40}, 4, 3},      // several groups of 16 and 32
      {"Peephole", 6, {17}, 5, 4, true},
      {"Recurrent", 9, {18, 11}, 5, 3, false, true},
      {"Zoneout", 8, {16, 21}, 6, 4, false, false, true},
      {"AllOfThem", 5, {15, 19, 14}, 4, 6, true, true, true, true},
      // the row layer (every row of units at a time): layer norm, a projection, both, with the
      // masks; ragged and wide widths
      {"LayerNorm", 9, {20, 13}, 5, 7, false, false, false, false, true},
      {"Projection", 7, {24, 18}, 5, 5, false, false, false, false, false, 11},
      {"LayerNormProjection", 33, {40, 36}, 4, 14, false, false, false, false, true, 17},
      {"RowLayerMasks", 6, {14, 19, 15}, 4, 5, false, true, true, true, true, 9},
  };
}

class Bf16Stack : public ::testing::TestWithParam<size_t> {};

// Tolerance 3e-2 of each tensor's largest entry: bf16 rounds every GEMM operand to 8
// significant bits (relative 2^-9), and the errors go through the steps and layers; measured at
// most 9e-3 on these cases. A plumbing error (a stale or missing operand) is O(1).
TEST_P(Bf16Stack, AgreesWithFloat64) {
  SKIP_WITHOUT_BF16();
  const StackCase c = stack_cases()[GetParam()];
  SCOPED_TRACE(c.name);
  const StackRun<double> want = run_stack<double>(c, Precision::f32, 1);
  const StackRun<float> got = run_stack<float>(c, Precision::bf16, 2);
  const double tol = 3e-2;
  EXPECT_TRUE(close("y", got.y, want.y, tol));
  EXPECT_TRUE(close("h_n", got.h_n, want.h_n, tol));
  EXPECT_TRUE(close("s_n", got.s_n, want.s_n, tol));
  EXPECT_TRUE(close("dx", got.dx, want.dx, tol));
  EXPECT_TRUE(close("dh0", got.dh0, want.dh0, tol));
  EXPECT_TRUE(close("ds0", got.ds0, want.ds0, tol));
  EXPECT_TRUE(close("weight gradients", got.grads, want.grads, tol));
  // and it is bf16: float32 is 1e5 times closer to float64 than this
  const StackRun<float> f32 = run_stack<float>(c, Precision::f32, 2);
  const Diff bf = diff(std::span<const float>(got.grads), std::span<const double>(want.grads));
  const Diff f = diff(std::span<const float>(f32.grads), std::span<const double>(want.grads));
  EXPECT_GT(bf.rel, 1e-4) << "bf16 gradients as close as float32's: not the bf16 path?";
  EXPECT_LT(f.rel, 1e-5);
  for (auto [name, a, b] :
       {std::tuple{"y", &got.y, &want.y}, std::tuple{"dx", &got.dx, &want.dx}}) {
    const Diff d = diff(std::span<const float>(*a), std::span<const double>(*b));
    RecordProperty(std::string("bf16_rel_") + name, std::to_string(d.rel));
    EXPECT_GT(d.rel, 1e-4) << name << " as close as float32's: not the bf16 path?";
  }
}

// The claimed split's groups and the row splits do not change a bf16 sum: the same bits for
// any number of shares; inference gives the training forward's bits.
TEST_P(Bf16Stack, SameBitsForEveryTeamAndForInference) {
  SKIP_WITHOUT_BF16();
  const StackCase c = stack_cases()[GetParam()];
  SCOPED_TRACE(c.name);
  const StackRun<float> one = run_stack<float>(c, Precision::bf16, 1);
  for (int shares : {2, 3}) {
    const StackRun<float> many = run_stack<float>(c, Precision::bf16, shares);
    EXPECT_TRUE(close("y", many.y, one.y, 0));
    EXPECT_TRUE(close("dx", many.dx, one.dx, 0));
    EXPECT_TRUE(close("weight gradients", many.grads, one.grads, 0));
  }
  if (c.rec || c.zone || c.drop) return;  // inference has no masks
  const StackRun<float> inf = run_stack<float>(c, Precision::bf16, 2, true);
  EXPECT_TRUE(close("inference y", inf.y, one.y, 0));
  EXPECT_TRUE(close("inference h_n", inf.h_n, one.h_n, 0));
  EXPECT_TRUE(close("inference s_n", inf.s_n, one.s_n, 0));
}

// Inference in windows of steps (the input projection of one window at a time, in a gates
// buffer of that size; cpu::LstmStack::set_infer_gate_budget) against the training forward, for
// any team. bf16 (this project's kernel, whose sums do not depend on the rows of a call): the
// same bits. float32: the input projection is the BLAS's sgemm over other row ranges, whose sums
// do on some kernels (OpenBLAS's Haswell kernels, the tests' OPENBLAS_CORETYPE: another order
// of the same products); so within 1e-5 of each tensor's largest entry (float32 rounding through
// 25 steps; measured about 3e-7), and with one share, where the calls split no tile, the same
// bits. Budgets of 1 row force the smallest window, whole multiples of cpu::kWindowRows rows: 3
// steps at B = 16 (windows 3, 3, 3, 2), 8 at B = 6, 1 at B = 48; 200 rows give windows of 12
// steps at B = 6 (and none at B = 16: all 176 rows fit).
TEST(InferWindows, AgreeWithTheTrainingForward) {
  const std::vector<StackCase> cases = {
      {"B16", 10, {20, 20}, 11, 16},
      {"B6", 7, {13, 9}, 25, 6},
      {"B48", 9, {17}, 5, 48, true},
  };
  for (const Precision p : {Precision::f32, Precision::bf16}) {
    if (p == Precision::bf16 && !cpu::bf16_available()) continue;
    for (const StackCase& c : cases) {
      SCOPED_TRACE(c.name + (p == Precision::bf16 ? " bf16" : " f32"));
      for (const int shares : {1, 2, 3}) {
        const StackRun<float> want = run_stack<float>(c, p, shares);
        const double tol = p == Precision::bf16 || shares == 1 ? 0.0 : 1e-5;
        for (const int64_t budget : {int64_t{1}, int64_t{200}}) {
          SCOPED_TRACE("budget " + std::to_string(budget) + ", shares " + std::to_string(shares));
          const StackRun<float> got = run_stack<float>(c, p, shares, true, budget);
          EXPECT_TRUE(close("y", got.y, want.y, tol));
          EXPECT_TRUE(close("h_n", got.h_n, want.h_n, tol));
          EXPECT_TRUE(close("s_n", got.s_n, want.s_n, tol));
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, Bf16Stack, ::testing::Range<size_t>(0, stack_cases().size()),
                         [](const ::testing::TestParamInfo<size_t>& p) {
                           return stack_cases()[p.param].name;
                         });

// The language model in bf16 (the stack and the fused readout) against float64: loss, every
// gradient, and the inference forward's bits. Shapes: a vocabulary that ends mid-chunk (96),
// positions not a multiple of 16 (N = 7 x 3 = 21), odd widths.
struct LmRun {
  double loss = 0, infer_loss = 0;
  std::vector<double> grad;
};

template <class Real>
LmRun run_lm(const ModelConfig& cfg, Precision precision, int64_t T, int64_t B, int threads) {
  std::mt19937_64 rng(23);
  const std::vector<Real> params = cast<Real>(uniform(parameter_count(cfg), rng, -0.3, 0.3));
  Batch<Real> b;
  b.T = T, b.B = B;
  std::uniform_int_distribution<int64_t> id(0, cfg.V - 1);
  for (int64_t n = 0; n < T * B; ++n) b.tokens.push_back(id(rng)), b.target.push_back(id(rng));
  LanguageModel<Real> lm(cfg);
  lm.set_threads(threads);
  lm.set_precision(precision);
  LmRun r;
  r.infer_loss = lm.infer(params, b, Reduction::mean);
  r.loss = lm.forward(params, b, Reduction::mean);
  std::vector<Real> grad(params.size(), Real(0));
  lm.backward(grad, params, b);
  r.grad.assign(grad.begin(), grad.end());
  return r;
}

TEST(Bf16, LanguageModelAgreesWithFloat64) {
  SKIP_WITHOUT_BF16();
  ModelConfig cfg{InputKind::embedding, Readout::linear, 203, 14, 19, 2};
  const LmRun want = run_lm<double>(cfg, Precision::f32, 7, 3, 1);
  for (int threads : {1, 2}) {
    SCOPED_TRACE(threads);
    const LmRun got = run_lm<float>(cfg, Precision::bf16, 7, 3, threads);
    // the loss is a mean of log-probabilities: bf16's relative 2^-9 per operand moves it by
    // about 1e-3 of its value here; 1e-2 still catches a wrong logit (O(1))
    EXPECT_NEAR(got.loss, want.loss, 1e-2 * want.loss);
    EXPECT_EQ(got.infer_loss, got.loss) << "inference gives the training forward's bits";
    EXPECT_TRUE(close("gradient", got.grad, want.grad, 3e-2));
    const Diff d = diff(std::span<const double>(got.grad), std::span<const double>(want.grad));
    EXPECT_GT(d.rel, 1e-5) << "as close as float32: not the bf16 path?";
  }
}

// 100 SGD updates of a small word model from the same weights on the same batches (the loss falls
// from 3.92 to 0.62): the loss trajectory in bf16 follows float64's, float32's far closer.
// Tolerances, of each step's loss: bf16 1% (measured at most 0.12%; training amplifies a
// difference, so a steeper learning rate drifts further: 3.8% at lr 5); float32 1e-5 (measured
// 9e-8).
TEST(Bf16, HundredStepLossTrajectoryFollowsFloat64) {
  SKIP_WITHOUT_BF16();
  ModelConfig cfg{InputKind::embedding, Readout::linear, 50, 16, 32, 1};
  const int64_t T = 10, B = 4;
  auto trajectory = [&]<class Real>(Real, Precision precision) {
    std::mt19937_64 rng(29);
    std::vector<Real> params = cast<Real>(uniform(parameter_count(cfg), rng, -0.3, 0.3));
    std::vector<Real> grad(params.size());
    // a text with structure: token t follows t - 1 mostly, so the loss falls
    std::vector<int64_t> text(2000);
    std::uniform_int_distribution<int64_t> id(0, cfg.V - 1);
    std::bernoulli_distribution jump(0.2);
    for (size_t i = 1; i < text.size(); ++i)
      text[i] = jump(rng) ? id(rng) : (text[i - 1] + 1) % cfg.V;
    LanguageModel<Real> lm(cfg);
    lm.set_threads(2);
    lm.set_precision(precision);
    std::vector<double> losses;
    for (int step = 0; step < 100; ++step) {
      Batch<Real> b;
      b.T = T, b.B = B;
      for (int64_t t = 0; t < T; ++t)
        for (int64_t r = 0; r < B; ++r) {
          const size_t at = static_cast<size_t>((step * T + t) % 400 + r * 450);
          b.tokens.push_back(text[at]), b.target.push_back(text[at + 1]);
        }
      losses.push_back(lm.forward(params, b, Reduction::mean));
      std::fill(grad.begin(), grad.end(), Real(0));
      lm.backward(grad, params, b);
      for (size_t i = 0; i < params.size(); ++i) params[i] -= Real(3) * grad[i];
    }
    return losses;
  };
  const std::vector<double> f64 = trajectory(0.0, Precision::f32);
  const std::vector<double> f32 = trajectory(0.0f, Precision::f32);
  const std::vector<double> bf16 = trajectory(0.0f, Precision::bf16);
  ASSERT_LT(f64.back(), 0.8 * f64.front()) << "the model learns (else the test shows nothing)";

  double worst_bf16 = 0, worst_f32 = 0;
  for (size_t i = 0; i < f64.size(); ++i) {
    worst_bf16 = std::max(worst_bf16, std::abs(bf16[i] - f64[i]) / f64[i]);
    worst_f32 = std::max(worst_f32, std::abs(f32[i] - f64[i]) / f64[i]);
  }
  EXPECT_LT(worst_bf16, 1e-2);
  EXPECT_LT(worst_f32, 1e-5);
  EXPECT_GT(worst_bf16, worst_f32) << "bf16 as close as float32: not the bf16 path?";
  RecordProperty("worst_bf16", std::to_string(worst_bf16));
  RecordProperty("worst_f32", std::to_string(worst_f32));
}

TEST(Bf16, RefusedWhereItCannotRun) {
  cpu::LstmStack<double> reference(3, 4, 1);
  EXPECT_THROW(reference.set_precision(Precision::bf16), InputError);
  if (!cpu::bf16_available()) {
    cpu::LstmStack<float> stack(3, 4, 1);
    EXPECT_THROW(stack.set_precision(Precision::bf16), InputError);
    return;
  }
  EXPECT_THROW(parse_precision("fp8"), InputError);
}

}  // namespace
}  // namespace lstmgrad::test
