// The recurrent GEMM of one step, float32, with its weight operand packed once per call of the
// layer instead of once per step.
//
// A step multiplies a few rows (B = 20 .. 64) by U (H x 4H): the BLAS re-packs the whole weight
// slice at every call, which costs more than the arithmetic at these shapes (profiled: 100-140
// GFLOP/s per core for the presets' recurrent shapes against 190 for square sgemm). Here the
// weights are packed into panels of 16 output columns ([K][16] floats, 64-byte aligned) at the
// start of a layer's forward or backward, and every step runs an AVX-512 register-blocked kernel
// over them: up to 12 rows x 2 panels of accumulators, the panels streamed from L2.
//
// Columns are grouped: `groups` blocks of `width` columns each, block g starting at column
// g * group_stride of C (the four gates of a group of hidden units in a [B,4H] row of z: groups 4,
// group_stride H). Each block is padded to whole panels with zero lanes, which are never stored.
#pragma once
#include <algorithm>
#include <cstdint>

namespace lstmgrad::cpu {

constexpr int64_t kPanelWidth = 16;  // one AVX-512 vector of float

struct PanelLayout {
  int64_t groups = 1;        // column blocks
  int64_t width = 0;         // columns per block
  int64_t group_stride = 0;  // C columns from one block's start to the next
  int64_t K = 0;             // the shared dimension
  int64_t per_group() const { return (width + kPanelWidth - 1) / kPanelWidth; }
  int64_t panels() const { return groups * per_group(); }
  int64_t floats() const { return panels() * K * kPanelWidth; }  // packed size
};

// Panel p of a layout: its first column of op(W) (and of C) and how many of its 16 are real.
struct PanelColumns {
  int64_t col, width;
};

inline PanelColumns columns_of(const PanelLayout& layout, int64_t p) {
  const int64_t pg = layout.per_group(), c = (p % pg) * kPanelWidth;
  return {(p / pg) * layout.group_stride + c, std::min(kPanelWidth, layout.width - c)};
}

// How a tile reads A(r, k) from `A` with stride `as`:
//   rows   A[r * as + k]  (row-major, the usual)
//   cols   A[k * as + r]  (column-major: A^T of a row-major matrix)
//   blocks A[(k / 16) * as + r * 16 + k % 16]  (blocks of 16 k per row, one block's rows together:
//          the layout panel_tiles writes with c_stride = as, ldc = 16; K a multiple of 16)
enum class AForm { rows, cols, blocks };

// What the accumulators start from: 0 (C overwritten), C itself (C +=), or bias[r] for row r
// (C overwritten with bias + A B).
enum class Start { zero, accumulate, row_bias };

// Whether this CPU runs the kernel (AVX-512F) and it is not switched off; where not, callers use
// the BLAS and the portable (auto-vectorised) gate kernels.
bool panel_gemm_available();

// Switches the AVX-512 kernels off (true) or back on, so that the tests run the portable path
// on a machine that has AVX-512. Engine objects choose their path when they are made and when
// they grow: switch before making them.
void force_portable_kernels(bool on);

// Packs op(W)'s columns into panels: column c of block g is row (g * group_stride + c) of W
// ([.., K] with row stride ldw) when `rows` (W^T is the operand: z += h U^T), else column
// (g * group_stride + c) of W ([K, ..] with row stride ldw: dh = dz U). `dst` 64-byte aligned.
void pack_panels(float* dst, const float* W, int64_t ldw, bool rows, const PanelLayout& layout);

// C[r, col] (+)= sum_k A[r, k] op(W)[k, col] for r < M and every column of the layout;
// accumulate = false overwrites C. A [M, K] row stride lda; C row stride ldc.
void panel_gemm(int64_t M, const float* A, int64_t lda, const float* packed,
                const PanelLayout& layout, float* C, int64_t ldc, bool accumulate);

// The general form: C = start + A B for r < M and `columns` columns, B already in panels (panel q
// at B + q * b_stride, [K][16] floats, 64-byte aligned, lanes past `columns` zero). Row r of
// panel q's 16 columns is at C + q * c_stride + r * ldc: row-major C has c_stride 16; a
// "panel-major" C (ldc 16, c_stride = rows * 16) is itself a B operand for a later call.
void panel_tiles(int64_t M, int64_t K, AForm form, const float* A, int64_t as, const float* B,
                 int64_t b_stride, int64_t columns, float* C, int64_t ldc, int64_t c_stride,
                 Start start, const float* bias);

}  // namespace lstmgrad::cpu
