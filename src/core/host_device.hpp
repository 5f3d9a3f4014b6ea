// LSTMGRAD_HOST_DEVICE marks the small inline functions that both the CPU code and the CUDA
// kernels call (the cell's element math, the dropout masks): __host__ __device__ under nvcc,
// nothing otherwise.
#pragma once

#if defined(__CUDACC__)
#define LSTMGRAD_HOST_DEVICE __host__ __device__
#else
#define LSTMGRAD_HOST_DEVICE
#endif
