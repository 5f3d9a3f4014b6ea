#include "lstmgrad/cell.hpp"

#include <algorithm>

#include "core/gates.hpp"
#include "cpu/blas.hpp"

namespace lstmgrad {

using cpu::gemm;
using cpu::Tr;

template <class Real>
void cell_forward(Real* h, Real* s, Real* gates, const Real* x, const Real* h_prev,
                  const Real* s_prev, const CellWeights<Real>& w, int64_t B) {
  const int64_t H = w.H, X = w.X, G = 4 * H;
  for (int64_t r = 0; r < B; ++r) std::copy(w.b, w.b + G, gates + r * G);      // z = b
  gemm(Tr::N, Tr::T, B, G, X, Real(1), x, X, w.V, X, Real(1), gates, G);       // z += x V^T
  gemm(Tr::N, Tr::T, B, G, H, Real(1), h_prev, H, w.U, H, Real(1), gates, G);  // z += h_prev U^T
  core::gates_forward(gates, s, h, s_prev, B, H);
}

template <class Real>
void cell_backward(Real* dx, Real* dh_prev, Real* ds_prev, const CellGrads<Real>& g, Real* dz,
                   const Real* dh, const Real* ds, const Real* gates, const Real* s, const Real* x,
                   const Real* h_prev, const Real* s_prev, const CellWeights<Real>& w, int64_t B) {
  const int64_t H = w.H, X = w.X, G = 4 * H;
  std::copy(ds, ds + B * H, ds_prev);  // ds_prev enters as the carried ds and leaves as ds * f
  core::gates_backward(dz, ds_prev, static_cast<const Real*>(nullptr), dh, gates, s, s_prev, B, H);
  // z = x V^T + h_prev U^T + b
  gemm(Tr::T, Tr::N, G, X, B, Real(1), dz, G, x, X, Real(1), g.dV, X);       // dV += dz^T x
  gemm(Tr::T, Tr::N, G, H, B, Real(1), dz, G, h_prev, H, Real(1), g.dU, H);  // dU += dz^T h_prev
  for (int64_t r = 0; r < B; ++r)
    for (int64_t k = 0; k < G; ++k) g.db[k] += dz[r * G + k];           // db += sum over rows of dz
  gemm(Tr::N, Tr::N, B, X, G, Real(1), dz, G, w.V, X, Real(0), dx, X);  // dx = dz V
  gemm(Tr::N, Tr::N, B, H, G, Real(1), dz, G, w.U, H, Real(0), dh_prev, H);  // dh_prev = dz U
}

#define LSTMGRAD_INSTANTIATE(Real)                                                               \
  template void cell_forward<Real>(Real*, Real*, Real*, const Real*, const Real*, const Real*,   \
                                   const CellWeights<Real>&, int64_t);                           \
  template void cell_backward<Real>(                                                             \
      Real*, Real*, Real*, const CellGrads<Real>&, Real*, const Real*, const Real*, const Real*, \
      const Real*, const Real*, const Real*, const Real*, const CellWeights<Real>&, int64_t);
LSTMGRAD_INSTANTIATE(float)
LSTMGRAD_INSTANTIATE(double)
#undef LSTMGRAD_INSTANTIATE

}  // namespace lstmgrad
