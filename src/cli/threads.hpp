// --threads: how many threads the BLAS (and OpenMP) may use; 0 leaves the defaults.
#pragma once
#include <cblas.h>
#include <omp.h>

namespace lstmgrad::cli {

inline void set_threads(int n) {
  if (n <= 0) return;
  openblas_set_num_threads(n);
  omp_set_num_threads(n);
}

}  // namespace lstmgrad::cli
