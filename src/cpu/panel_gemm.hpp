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
// g * group_stride of C (the four gates of a thread's hidden units in a [B,4H] row of z: groups 4,
// group_stride H). Each block is padded to whole panels with zero lanes, which are never stored.
#pragma once
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

// Whether this CPU runs the kernel (AVX-512F); where not, callers use the BLAS.
bool panel_gemm_available();

// Packs op(W)'s columns into panels: column c of block g is row (g * group_stride + c) of W
// ([.., K] with row stride ldw) when `rows` (W^T is the operand: z += h U^T), else column
// (g * group_stride + c) of W ([K, ..] with row stride ldw: dh = dz U). `dst` 64-byte aligned.
void pack_panels(float* dst, const float* W, int64_t ldw, bool rows, const PanelLayout& layout);

// C[r, col] (+)= sum_k A[r, k] op(W)[k, col] for r < M and every column of the layout;
// accumulate = false overwrites C. A [M, K] row stride lda; C row stride ldc.
void panel_gemm(int64_t M, const float* A, int64_t lda, const float* packed,
                const PanelLayout& layout, float* C, int64_t ldc, bool accumulate);

}  // namespace lstmgrad::cpu
