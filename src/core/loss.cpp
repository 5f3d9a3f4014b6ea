#include "lstmgrad/loss.hpp"

#include <algorithm>
#include <cmath>

#include "core/clones.hpp"
#include "core/gates.hpp"

namespace lstmgrad {

namespace {

// float32 rows: p = exp(z - max) / sum with the vectorised core::fast_exp (2 ulp), sums and the
// max kept in 16 lanes so that the compiler vectorises them without reordering anything else.
// AVX-512, AVX2 and baseline clones, picked at load time. Returns log sum_j exp(z_j - max) and
// the max.
LSTMGRAD_CLONES void softmax_row_f32(float* __restrict p, const float* z, int64_t V,
                                     float* zmax_out, float* log_sum_out) {
  constexpr int kLanes = 16;
  float m[kLanes];
  for (int l = 0; l < kLanes; ++l) m[l] = -3.0e38f;
  const int64_t Vv = V / kLanes * kLanes;
  for (int64_t k = 0; k < Vv; k += kLanes)
    for (int l = 0; l < kLanes; ++l) m[l] = std::max(m[l], z[k + l]);
  float zmax = -3.0e38f;
  for (int l = 0; l < kLanes; ++l) zmax = std::max(zmax, m[l]);
  for (int64_t k = Vv; k < V; ++k) zmax = std::max(zmax, z[k]);
  float acc[kLanes] = {};
  for (int64_t k = 0; k < Vv; k += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const float e = core::fast_exp(z[k + l] - zmax);
      p[k + l] = e;
      acc[l] += e;
    }
  float sum = 0;
  for (int l = 0; l < kLanes; ++l) sum += acc[l];
  for (int64_t k = Vv; k < V; ++k) sum += (p[k] = core::fast_exp(z[k] - zmax));
  const float inv = 1.0f / sum;
  for (int64_t k = 0; k < V; ++k) p[k] *= inv;
  *zmax_out = zmax;
  *log_sum_out = std::log(sum);
}

}  // namespace

// std::exp throughout: the float64 reference (and float32 soft targets).
template <class Real>
double softmax_xent_forward_generic(Real* p, const Real* z, const Real* y_probs,
                                    const int64_t* y_class, int64_t N, int64_t V) {
  double total = 0;
  for (int64_t r = 0; r < N; ++r) {
    const Real* zr = z + r * V;
    Real* pr = p + r * V;
    const Real zmax = *std::max_element(zr, zr + V);
    Real sum = 0;
    for (int64_t k = 0; k < V; ++k) sum += std::exp(zr[k] - zmax);
    const Real log_sum = std::log(sum);
    // log p_k = z_k - zmax - log sum_j exp(z_j - zmax): stable for any z.
    if (y_class) {
      total -= static_cast<double>(zr[y_class[r]] - zmax - log_sum);
    } else if (y_probs) {
      const Real* yr = y_probs + r * V;
      for (int64_t k = 0; k < V; ++k)
        if (yr[k] != Real(0)) total -= static_cast<double>(yr[k] * (zr[k] - zmax - log_sum));
    }
    for (int64_t k = 0; k < V; ++k) pr[k] = std::exp(zr[k] - zmax - log_sum);
  }
  return total;
}

// float32 with class targets (or none): the vectorised row. Soft targets take the generic path.
template <>
double softmax_xent_forward<float>(float* p, const float* z, const float* y_probs,
                                   const int64_t* y_class, int64_t N, int64_t V) {
  if (y_probs) return softmax_xent_forward_generic(p, z, y_probs, y_class, N, V);
  double total = 0;
  for (int64_t r = 0; r < N; ++r) {
    const float* zr = z + r * V;
    const float zy = y_class ? zr[y_class[r]] : 0.0f;  // read before p (may alias z) is written
    float zmax = 0, log_sum = 0;
    softmax_row_f32(p + r * V, zr, V, &zmax, &log_sum);
    if (y_class) total -= static_cast<double>(zy - zmax - log_sum);
  }
  return total;
}

template <class Real>
void softmax_xent_backward(Real* dz, const Real* p, const Real* y_probs, const int64_t* y_class,
                           Real scale, int64_t N, int64_t V) {
  for (int64_t r = 0; r < N; ++r) {
    for (int64_t k = 0; k < V; ++k) {
      const Real y = y_class ? Real(y_class[r] == k ? 1 : 0) : y_probs[r * V + k];
      dz[r * V + k] = scale * (p[r * V + k] - y);
    }
  }
}

template <class Real>
double softmax_xent_forward(Real* p, const Real* z, const Real* y_probs, const int64_t* y_class,
                            int64_t N, int64_t V) {
  return softmax_xent_forward_generic(p, z, y_probs, y_class, N, V);
}

template double softmax_xent_forward<double>(double*, const double*, const double*, const int64_t*,
                                             int64_t, int64_t);
template void softmax_xent_backward<float>(float*, const float*, const float*, const int64_t*,
                                           float, int64_t, int64_t);
template void softmax_xent_backward<double>(double*, const double*, const double*, const int64_t*,
                                            double, int64_t, int64_t);

}  // namespace lstmgrad
