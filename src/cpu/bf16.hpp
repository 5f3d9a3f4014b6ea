// bfloat16 GEMM operands with float32 sums (the --precision bf16 of the stack, LstmStack::
// set_precision): what AVX512_BF16's vdpbf16ps computes, 32 products a vector (two per float32
// lane: acc += a[k] b[k] + a[k+1] b[k+1]), twice the float32 kernel's rate on the same core
// (measured 395-430 against 200-210 GFLOP/s, one core, the panel kernel's 12 x 2 tile).
//
// A bf16 is a float32's upper 16 bits (8 significant bits), rounded to nearest even. Operands go
// in pairs along the shared dimension k, so a K is padded to even(K) with a zero:
//   - A, the broadcast operand, in one of three forms (PairForm): `rows`, row r's pair (k, k+1)
//     at A + r * as + k (a row-major matrix whose rows are padded: as >= even(K)); `pairs`, at
//     A + (k / 2) * as + 2 r (two rows of a k-major matrix interleaved: A^T of a row-major one,
//     to_bf16_pairs); `blocks`, pairs form in blocks of kBf16Rows rows, block b at A + b * as
//     with its own pair stride 2 kBf16Rows (to_bf16_blocks): a tile's operand is one stream,
//     where the pairs form of a long K jumps a page at every pair; `lanes`, at
//     A + (k / 16) * as + 16 r + k % 16 (float32's AForm::blocks: 16 k of a row side by side,
//     one block's rows together; the readout's panel-major chunks in bf16).
//   - B in panels of 16 columns like the float32 kernel's (cpu/panel_gemm.hpp), each [even(K) /
//     2][16][2]: row k / 2 holds the 16 columns' pairs, 64 bytes, aligned.
// The callers keep float32 everywhere else: C, the bias, the cell state, every gradient and the
// weights themselves (rounded into the panels at each pack).
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "cpu/arena.hpp"       // ZeroedBuffer
#include "cpu/panel_gemm.hpp"  // PanelLayout, Start

namespace lstmgrad::cpu {

using bf16_t = uint16_t;

// Whether this CPU runs the bf16 kernels (AVX512_BF16 and AVX512BW) and the AVX-512 kernels are
// not switched off (force_portable_kernels). There is no portable bf16 path: LstmStack refuses
// the precision where this is false.
bool bf16_available();

// Round to nearest even; NaN stays a (quiet) NaN, infinities stay infinite.
bf16_t to_bf16(float x);
float from_bf16(bf16_t b);

constexpr int64_t even(int64_t k) {
  return k + (k & 1);
}

// dst[r * ldd + k] = bf16(src[r * lds + k]) for r < rows and k in [c0, c1); where a non-empty
// range ends at the odd width K, the pad dst[r * ldd + K] = 0 too (ldd >= even(K)): of a row's
// ranges converted by several threads, only the last writes it.
void to_bf16_rows(bf16_t* dst, int64_t ldd, const float* src, int64_t lds, int64_t rows, int64_t c0,
                  int64_t c1, int64_t K);

// The pairs form of src's columns [c0, c1): for k < K, dst[(k / 2) * ldd + 2 (c - c0) + k % 2] =
// bf16(src[k * lds + c]); an odd K's last pair gets a 0 second; columns [c1 - c0, lanes) of every
// pair row are zeros (lanes >= c1 - c0; a panel's padding).
void to_bf16_pairs(bf16_t* dst, int64_t ldd, const float* src, int64_t lds, int64_t K, int64_t c0,
                   int64_t c1, int64_t lanes);

// Blocks of sizes[i] bf16_t elements, each 64-byte aligned, carved out of `mem` (grown, zeroed,
// only when they do not fit; a block nothing writes costs no memory): *slots[i] points at block
// i. The engine's bf16 buffers.
void carve_bf16(ZeroedBuffer<bf16_t>& mem, std::span<const int64_t> sizes,
                std::span<bf16_t** const> slots);

// bf16_t elements of one panel and of a layout's panels (K padded to even).
inline int64_t bf16_panel_size(int64_t K) {
  return even(K) * kPanelWidth;
}
inline int64_t bf16_panels_size(const PanelLayout& layout) {
  return layout.panels() * bf16_panel_size(layout.K);
}

// pack_panels in bf16: panel p of the layout (p in [p0, p1)) at dst + p * bf16_panel_size(K),
// from W as pack_panels reads it (`rows`: op(W) = W^T). dst 64-byte aligned.
void pack_bf16_panels(bf16_t* dst, const float* W, int64_t ldw, bool rows,
                      const PanelLayout& layout, int64_t p0, int64_t p1);

// panel_tiles in bf16: C = start + A B for r < M and `columns` columns, K the shared dimension
// (A and B padded to even(K)); panel q at B + q * b_stride; C as panel_tiles writes it (row r of
// panel q's 16 columns at C + q * c_stride + r * ldc).
enum class PairForm { rows, pairs, blocks, lanes };

// The tile's rows (the blocks form's block height).
constexpr int64_t kBf16Rows = 12;

// The blocks form of src's columns [c0, c1) over K rows (A(r, k) = src[k * lds + c0 + r]):
// block b (rows c0 + 12 b ..) at dst + b * bf16_block_size(K), each to_bf16_pairs with 12 lanes.
inline int64_t bf16_block_size(int64_t K) {
  return even(K) * kBf16Rows;
}
void to_bf16_blocks(bf16_t* dst, const float* src, int64_t lds, int64_t K, int64_t c0, int64_t c1);
void bf16_tiles(int64_t M, int64_t K, PairForm form, const bf16_t* A, int64_t as, const bf16_t* B,
                int64_t b_stride, int64_t columns, float* C, int64_t ldc, int64_t c_stride,
                Start start, const float* bias);

// panel_gemm in bf16, for a grouped layout: C[r, col] (+)= sum_k A[r, k] op(W)[k, col], A in rows
// form (row stride lda >= even(K)), `packed` from pack_bf16_panels.
void bf16_gemm(int64_t M, const bf16_t* A, int64_t lda, const bf16_t* packed,
               const PanelLayout& layout, float* C, int64_t ldc, bool accumulate);

// The fused steps' sums (cpu/fast_gates.cpp): acc[r][p] = sum over k of A(r, k) times panel p's
// column lanes, for rows r < MR of a rows-form A (MR in [1, 12], NP panels of [even(K) / 2][16][2]
// one after another at P), stored to acc [MR][NP][16] floats.
void bf16_group_sums(int MR, int NP, int64_t K, const bf16_t* A, int64_t lda, const bf16_t* P,
                     float* acc);

}  // namespace lstmgrad::cpu
