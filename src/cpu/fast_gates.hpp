// float32 gate kernels with vectorised sigmoid/tanh (core::fast_*), same contract as
// core::gates_forward / core::gates_backward (strided form). Built as AVX-512, AVX2 and baseline
// clones; the loader picks the best one the CPU runs (no -march=native needed). Here `bias` must
// not be null; `unit` (the CellUnit weights, laid out like a gate row) may be.
#pragma once
#include <cstdint>

#include "cpu/bf16.hpp"  // bf16_t

namespace lstmgrad::cpu {

void fast_gates_forward(float* z, int64_t ldz, int64_t gs, const float* bias, const float* unit,
                        float* s, float* h, const float* s_prev, int64_t ld, int64_t B, int64_t n);

// One recurrent step of one group of n <= 16 units, AVX-512 only (panel_gemm_available()):
// z [B, 4 gates at gs apart] holds x W_ih^T on entry; adds h_prev [B,K] (row stride ldh) times
// the group's packed U (`panels`: the four gates' [K][16] panels one after another, 64-byte
// aligned), then runs fast_gates_forward's pass on the sums while they are in registers: the
// same outputs (z = the activated gates, s, h), one trip through memory fewer.
void fused_step_forward(int64_t B, const float* h_prev, int64_t ldh, int64_t K, const float* panels,
                        float* z, int64_t ldz, int64_t gs, const float* bias, const float* unit,
                        float* s, float* h, const float* s_prev, int64_t ld, int64_t n);
// The same with bf16 operands (cpu/bf16.hpp): h_prev [B,K] in rows form (row stride ldh >=
// even(K)) and the group's bf16 panels (pack_bf16_panels), float32 sums.
void fused_step_forward(int64_t B, const bf16_t* h_prev, int64_t ldh, int64_t K,
                        const bf16_t* panels, float* z, int64_t ldz, int64_t gs, const float* bias,
                        const float* unit, float* s, float* h, const float* s_prev, int64_t ld,
                        int64_t n);

// The backward counterpart, for one group of n <= 32 units: dh_rec = dz_next [B,K] (row stride
// ldz, K = 4H) times the group's packed columns of U (ceil(n / 16) [K][16] panels one after
// another), times rec_mask (row stride ld; null: none) where the forward's product read
// h_t * rec_mask, then fast_gates_backward's pass with that dh_rec, without storing it.
void fused_step_backward(int64_t B, const float* dz_next, int64_t ldz, int64_t K,
                         const float* panels, float* dz, int64_t gs, float* ds, const float* dh_out,
                         const float* gates, const float* s, const float* s_prev, const float* unit,
                         const float* rec_mask, int64_t ld, int64_t n);
// The same with bf16 operands: dz_next [B,K] in bf16 (row stride ldz, as dz's), bf16 panels.
void fused_step_backward(int64_t B, const bf16_t* dz_next, int64_t ldz, int64_t K,
                         const bf16_t* panels, float* dz, int64_t gs, float* ds,
                         const float* dh_out, const float* gates, const float* s,
                         const float* s_prev, const float* unit, const float* rec_mask, int64_t ld,
                         int64_t n);

void fast_gates_backward(float* dz, int64_t ldz, int64_t gs, float* ds, const float* dh_out,
                         const float* dh_rec, const float* gates, const float* s,
                         const float* s_prev, const float* unit, int64_t ld, int64_t B, int64_t n);

}  // namespace lstmgrad::cpu
