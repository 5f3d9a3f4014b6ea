// The packed recurrent kernel (cpu/panel_gemm.hpp) against a plain float64 triple loop, on the
// shapes the engine gives it and on ragged ones: rows that are not a multiple of the 12-row tile,
// column blocks narrower than a panel or not a multiple of 16, an odd number of panels, both
// packing directions, accumulate and overwrite. Columns outside the layout must stay untouched.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <vector>

#include "cpu/panel_gemm.hpp"
#include "splitmix.hpp"

namespace lstmgrad::test {
namespace {

struct Case {
  int64_t M, K, groups, width, stride;
  bool rows, accumulate;
};

// Tolerance: float32 sums of K products of values in [-1, 1], in another order than the float64
// reference: K * 2^-24 * max |partial sum| is below 1e-5 * K here; 2e-6 * K is ample and still
// catches a wrong element (off by O(1)).
void check(const Case& c) {
  SCOPED_TRACE(::testing::Message()
               << "M " << c.M << " K " << c.K << " groups " << c.groups << " width " << c.width
               << " rows " << c.rows << " acc " << c.accumulate);
  const int64_t cols = (c.groups - 1) * c.stride + c.width;  // op(W) spans this many columns
  const int64_t ldc = cols + 3, lda = c.K + 5;
  SplitMix rng(static_cast<uint64_t>(c.M * 131 + c.K * 7 + c.width));
  auto fill = [&](std::vector<float>& v) {
    for (float& x : v) x = static_cast<float>(rng.uniform(-1, 1));
  };
  std::vector<float> A(static_cast<size_t>(c.M * lda)), C(static_cast<size_t>(c.M * ldc));
  // W holds op(W) [K, cols]: as rows of [cols, K] (rows) or directly as [K, cols].
  const int64_t ldw = c.rows ? c.K + 2 : cols + 2;
  std::vector<float> W(static_cast<size_t>((c.rows ? cols : c.K) * ldw));
  fill(A), fill(C), fill(W);
  const std::vector<float> C0 = C;
  auto op_w = [&](int64_t k, int64_t col) { return c.rows ? W[col * ldw + k] : W[k * ldw + col]; };

  const cpu::PanelLayout layout{c.groups, c.width, c.stride, c.K};
  float* packed =
      static_cast<float*>(std::aligned_alloc(64, static_cast<size_t>(layout.floats() * 4 + 64)));
  cpu::pack_panels(packed, W.data(), ldw, c.rows, layout);
  cpu::panel_gemm(c.M, A.data(), lda, packed, layout, C.data(), ldc, c.accumulate);
  std::free(packed);

  std::vector<bool> in_layout(static_cast<size_t>(ldc), false);
  for (int64_t g = 0; g < c.groups; ++g)
    for (int64_t j = 0; j < c.width; ++j) in_layout[g * c.stride + j] = true;
  double worst = 0;
  for (int64_t r = 0; r < c.M; ++r)
    for (int64_t col = 0; col < ldc; ++col) {
      const float got = C[r * ldc + col];
      if (!in_layout[col]) {
        ASSERT_EQ(got, C0[r * ldc + col]) << "column " << col << " outside the layout was written";
        continue;
      }
      double ref = c.accumulate ? C0[r * ldc + col] : 0.0;
      for (int64_t k = 0; k < c.K; ++k) ref += double(A[r * lda + k]) * op_w(k, col);
      worst = std::max(worst, std::abs(got - ref));
    }
  EXPECT_LE(worst, 2e-6 * static_cast<double>(c.K));
}

// pack_panels puts op(W)[k][c] of panel p at lane c % 16 of row k, zeros past each block's width,
// for random layouts in both directions (the transposed one goes through 16 x 16 blocks: K and
// widths not multiples of 16 exercise its partial blocks).
TEST(PanelGemm, PackPanelsPlacesEveryElement) {
  SplitMix rng(17);
  for (int trial = 0; trial < 200; ++trial) {
    const int64_t groups = 1 + rng.index(4), width = 1 + rng.index(40), K = 1 + rng.index(70);
    const int64_t stride = width + rng.index(5);
    const bool rows = trial % 2 == 0;
    const cpu::PanelLayout layout{groups, width, stride, K};
    const int64_t cols = (groups - 1) * stride + width;
    const int64_t ldw = (rows ? K : cols) + rng.index(7);
    std::vector<float> W(static_cast<size_t>((rows ? cols : K) * ldw));
    for (float& x : W) x = static_cast<float>(rng.uniform(-1, 1));
    float* packed = static_cast<float*>(std::aligned_alloc(64, (layout.floats() + 16) * 4));
    cpu::pack_panels(packed, W.data(), ldw, rows, layout);
    int64_t wrong = 0;
    for (int64_t p = 0; p < layout.panels(); ++p) {
      const int64_t c0 = (p % layout.per_group()) * 16;
      const int64_t col = (p / layout.per_group()) * stride + c0;
      for (int64_t k = 0; k < K; ++k)
        for (int64_t l = 0; l < 16; ++l) {
          const float want = c0 + l >= width ? 0.0f
                             : rows          ? W[(col + l) * ldw + k]
                                             : W[k * ldw + col + l];
          wrong += packed[(p * K + k) * 16 + l] != want;
        }
    }
    std::free(packed);
    EXPECT_EQ(wrong, 0) << "groups " << groups << " width " << width << " K " << K << " rows "
                        << rows;
  }
}

TEST(PanelGemm, MatchesFloat64OnEngineAndRaggedShapes) {
  if (!cpu::panel_gemm_available()) GTEST_SKIP() << "no AVX-512 on this CPU: the BLAS is used";
  const Case cases[] = {
      {20, 200, 4, 100, 200, true, true},  // zaremba-small, forward, one of two threads
      {20, 800, 1, 104, 0, false, false},  // zaremba-small, backward, the other thread
      {50, 512, 4, 256, 512, true, true},  // char-rnn forward
      {1, 7, 1, 1, 0, true, false},        // the smallest
      {13, 33, 3, 17, 40, true, true},     // 13 rows: a 12-row tile and a 1-row tile
      {25, 64, 2, 5, 9, false, true},      // narrow blocks, one panel each
      {12, 48, 1, 48, 0, false, false},    // three panels: a pair and a single
      {37, 129, 4, 31, 31, true, false},   // blocks back to back (stride = width)
  };
  for (const Case& c : cases) check(c);
}

}  // namespace
}  // namespace lstmgrad::test
