// float32 gate kernels with vectorised sigmoid/tanh (core::fast_*), same contract as
// core::gates_forward / core::gates_backward (strided form). Built as AVX-512, AVX2 and baseline
// clones; the loader picks the best one the CPU runs (no -march=native needed). Here `bias` must
// not be null.
#pragma once
#include <cstdint>

namespace lstmgrad::cpu {

void fast_gates_forward(float* z, int64_t ldz, int64_t gs, const float* bias, float* s, float* h,
                        const float* s_prev, int64_t ld, int64_t B, int64_t n);

void fast_gates_backward(float* dz, int64_t ldz, int64_t gs, float* ds, const float* dh_out,
                         const float* dh_rec, const float* gates, const float* s,
                         const float* s_prev, int64_t ld, int64_t B, int64_t n);

}  // namespace lstmgrad::cpu
