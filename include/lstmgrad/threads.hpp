// lstmgrad: how many threads the CPU engine uses, set in one place: the default size of the
// engine's team (its own threads, sized by OpenMP's setting: OMP_NUM_THREADS or this call) and
// the BLAS's own thread count (OpenBLAS runs the large GEMMs outside the team with its threads,
// and one thread inside it; another CBLAS is left to its own settings).
#pragma once

namespace lstmgrad {

// n >= 1: both to n. n <= 0: both left as they are (OMP_NUM_THREADS, OPENBLAS_NUM_THREADS or the
// libraries' defaults).
void set_threads(int n);

}  // namespace lstmgrad
