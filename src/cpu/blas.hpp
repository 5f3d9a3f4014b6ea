// Row-major GEMM on CBLAS for float and double: C = alpha op(A) op(B) + beta C.
#pragma once
#include <cblas.h>

#include <cstdint>

namespace lstmgrad::cpu {

enum class Tr { N, T };  // op(A) = A or A^T

inline CBLAS_TRANSPOSE cblas_op(Tr t) {
  return t == Tr::N ? CblasNoTrans : CblasTrans;
}

// op(A) [M,K], op(B) [K,N], C [M,N]; leading dimensions are row strides.
inline void gemm(Tr ta, Tr tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                 int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, cblas_op(ta), cblas_op(tb), static_cast<int>(M), static_cast<int>(N),
              static_cast<int>(K), alpha, A, static_cast<int>(lda), B, static_cast<int>(ldb), beta,
              C, static_cast<int>(ldc));
}

inline void gemm(Tr ta, Tr tb, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
                 int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  cblas_dgemm(CblasRowMajor, cblas_op(ta), cblas_op(tb), static_cast<int>(M), static_cast<int>(N),
              static_cast<int>(K), alpha, A, static_cast<int>(lda), B, static_cast<int>(ldb), beta,
              C, static_cast<int>(ldc));
}

// The BLAS's own thread count (OpenBLAS; 1 and no-op with another CBLAS). cpu/blas.cpp.
int blas_threads();
void set_blas_threads(int n);

// Sets the BLAS's thread count for a scope and restores it after (OpenBLAS's own threads are
// used for the large GEMMs outside the engine's thread team; inside the team it runs one thread).
class BlasThreads {
 public:
  explicit BlasThreads(int n) : saved_(blas_threads()) {
    if (n != saved_) set_blas_threads(n);
  }
  ~BlasThreads() {
    if (blas_threads() != saved_) set_blas_threads(saved_);
  }
  BlasThreads(const BlasThreads&) = delete;
  BlasThreads& operator=(const BlasThreads&) = delete;

 private:
  int saved_;
};

// Leading dimension of op(A) [rows, cols] stored row-major.
inline int64_t ld_of(Tr t, int64_t rows, int64_t cols) {
  return t == Tr::N ? cols : rows;
}

}  // namespace lstmgrad::cpu
