// Dropout (non-recurrent, Zaremba et al. 2014): y = x * m with m = 1/(1-p) or 0. Masks are a pure
// function of (seed, site, index), so a run replays exactly, after --resume too.
#pragma once
#include <cstdint>

namespace lstmgrad::cpu {

inline uint64_t splitmix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// mask [n]: 1/(1-p) with probability 1-p, else 0. `site` tells the dropout layers apart.
template <class Real>
void dropout_mask(Real* mask, int64_t n, double p, uint64_t seed, uint64_t site) {
  const Real keep = static_cast<Real>(1.0 / (1.0 - p));
  const uint64_t base = splitmix64(seed ^ splitmix64(site + 1));
  for (int64_t k = 0; k < n; ++k) {
    const double u = static_cast<double>(splitmix64(base + static_cast<uint64_t>(k)) >> 11) *
                     0x1.0p-53;  // uniform in [0, 1)
    mask[k] = u < p ? Real(0) : keep;
  }
}

// y[k] = x[k] * mask[k] for k in [k0, k1).
template <class Real>
void apply_mask(Real* y, const Real* x, const Real* mask, int64_t k0, int64_t k1) {
  for (int64_t k = k0; k < k1; ++k) y[k] = x[k] * mask[k];
}

}  // namespace lstmgrad::cpu
