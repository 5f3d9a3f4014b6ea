// The one file that talks to the BLAS about threads (OpenBLAS's extensions, where that is the
// CBLAS found; its cblas.h defines OPENBLAS_CONFIG_H).
#include "cpu/blas.hpp"

#include <omp.h>

#include "lstmgrad/threads.hpp"

namespace lstmgrad {

namespace cpu {

int blas_threads() {
#ifdef OPENBLAS_CONFIG_H
  return openblas_get_num_threads();
#else
  return 1;
#endif
}

void set_blas_threads(int n) {
#ifdef OPENBLAS_CONFIG_H
  openblas_set_num_threads(n);
#else
  (void)n;
#endif
}

}  // namespace cpu

void set_threads(int n) {
  if (n <= 0) return;
  cpu::set_blas_threads(n);
  omp_set_num_threads(n);
}

}  // namespace lstmgrad
