#include "lstmgrad/loss.hpp"

#include <algorithm>
#include <cmath>

namespace lstmgrad {

template <class Real>
double softmax_xent_forward(Real* p, const Real* z, const Real* y_probs, const int64_t* y_class,
                            int64_t N, int64_t V) {
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

template double softmax_xent_forward<float>(float*, const float*, const float*, const int64_t*,
                                            int64_t, int64_t);
template double softmax_xent_forward<double>(double*, const double*, const double*, const int64_t*,
                                             int64_t, int64_t);
template void softmax_xent_backward<float>(float*, const float*, const float*, const int64_t*,
                                           float, int64_t, int64_t);
template void softmax_xent_backward<double>(double*, const double*, const double*, const int64_t*,
                                            double, int64_t, int64_t);

}  // namespace lstmgrad
