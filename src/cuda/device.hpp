// The CUDA backend's plumbing: error checks, device buffers, the cuBLAS calls in row-major terms.
// Included by the .cu files only (never by a public header).
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>

namespace lstmgrad::cuda {

// cuBLAS's entry points, opened (dlopen) at the first use rather than linked: a process that
// links cuBLAS pays for its static constructors at start-up whether or not it uses a GPU, 154 MB
// of memory and 0.75 s (measured: a program that only links libcublas.so.13), and every run of
// the command line, every test process and the Python module's import would pay it. The backend
// calls cuBLAS through this table only (lstmgrad does not link it: a direct call fails to link).
struct Cublas {
  decltype(&cublasCreate_v2) create;
  decltype(&cublasDestroy_v2) destroy;
  decltype(&cublasSetStream_v2) set_stream;
  decltype(&cublasSetMathMode) set_math_mode;
  decltype(&cublasSgemm_v2) sgemm;
  decltype(&cublasSgemv_v2) sgemv;
  decltype(&cublasGetStatusString) status_string;
};
// The table, opened at the first call (InputError where cuBLAS cannot be opened: the reason).
const Cublas& cublas();
// Why cuBLAS cannot be opened, or "" (opens it).
std::string cublas_error();

[[noreturn]] inline void fail(const char* call, const char* why, const char* file, int line) {
  throw std::runtime_error(std::string("CUDA: ") + call + ": " + why + " (" + file + ":" +
                           std::to_string(line) + ")");
}

#define LSTMGRAD_CUDA(call)                                                      \
  do {                                                                           \
    const cudaError_t e_ = (call);                                               \
    if (e_ != cudaSuccess)                                                       \
      ::lstmgrad::cuda::fail(#call, cudaGetErrorString(e_), __FILE__, __LINE__); \
  } while (0)
#define LSTMGRAD_CUBLAS(call)                                                               \
  do {                                                                                      \
    const cublasStatus_t s_ = (call);                                                       \
    if (s_ != CUBLAS_STATUS_SUCCESS)                                                        \
      ::lstmgrad::cuda::fail(#call, ::lstmgrad::cuda::cublas().status_string(s_), __FILE__, \
                             __LINE__);                                                     \
  } while (0)
// After every kernel launch: a bad configuration shows here, not three kernels later.
#define LSTMGRAD_LAUNCHED() LSTMGRAD_CUDA(cudaGetLastError())

// One device allocation of n elements; grow() keeps nothing (buffers are scratch or refilled).
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  ~DeviceBuffer() { release(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept
      : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) release(), p_ = std::exchange(o.p_, nullptr), n_ = std::exchange(o.n_, 0);
    return *this;
  }
  // At least n elements (contents undefined after a regrowth).
  void grow(size_t n) {
    if (n <= n_) return;
    release();
    LSTMGRAD_CUDA(cudaMalloc(reinterpret_cast<void**>(&p_), n * sizeof(T)));
    n_ = n;
  }
  T* get() const { return p_; }
  size_t size() const { return n_; }

 private:
  void release() {
    if (p_) cudaFree(p_);
    p_ = nullptr, n_ = 0;
  }
  T* p_ = nullptr;
  size_t n_ = 0;
};

// Row-major C[M,N] = alpha op(A)[M,K] op(B)[K,N] + beta C, with leading dimensions of the row-major
// storage (cuBLAS is column-major: it computes C^T = op(B)^T op(A)^T, the flags unchanged).
inline void gemm(cublasHandle_t h, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha,
                 const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
                 int64_t ldc) {
  LSTMGRAD_CUBLAS(cublas().sgemm(h, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                                 static_cast<int>(N), static_cast<int>(M), static_cast<int>(K),
                                 &alpha, B, static_cast<int>(ldb), A, static_cast<int>(lda), &beta,
                                 C, static_cast<int>(ldc)));
}

// y[N] += alpha * column sums of the row-major A[M,N] (ones[M] holds 1s).
inline void column_sums(cublasHandle_t h, int64_t M, int64_t N, float alpha, const float* A,
                        const float* ones, float* y) {
  const float beta = 1.0f;
  LSTMGRAD_CUBLAS(cublas().sgemv(h, CUBLAS_OP_N, static_cast<int>(N), static_cast<int>(M), &alpha,
                                 A, static_cast<int>(N), ones, 1, &beta, y, 1));
}

// What the engine needs to know about the GPU, read once.
struct DeviceInfo {
  int id = 0;
  int sms = 0;
  bool cooperative = false;
  size_t smem_optin = 0;  // the most dynamic shared memory one block may ask for
  std::string name;
};
const DeviceInfo& device_info();  // require()s a GPU

}  // namespace lstmgrad::cuda
