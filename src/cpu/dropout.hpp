// Dropout (non-recurrent, Zaremba et al. 2014): y = x * m with m = 1/(1-p) or 0. Masks are a pure
// function of (seed, site, index), so a run replays exactly, after --resume too.
#pragma once
#include <cstdint>

#include "core/host_device.hpp"

namespace lstmgrad::cpu {

LSTMGRAD_HOST_DEVICE inline uint64_t splitmix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// The stream of one dropout site: `site` tells the dropout layers apart.
inline uint64_t dropout_base(uint64_t seed, uint64_t site) {
  return splitmix64(seed ^ splitmix64(site + 1));
}

// Entry k of a site's mask: keep = 1/(1-p) with probability 1-p, else 0 (the CUDA kernels call
// this too, so both engines drop the same units).
template <class Real>
LSTMGRAD_HOST_DEVICE inline Real dropout_entry(uint64_t base, uint64_t k, double p, Real keep) {
  const double u = static_cast<double>(splitmix64(base + k) >> 11) * 0x1.0p-53;  // in [0, 1)
  return u < p ? Real(0) : keep;
}

// mask [n]: 1/(1-p) with probability 1-p, else 0.
template <class Real>
void dropout_mask(Real* mask, int64_t n, double p, uint64_t seed, uint64_t site) {
  const Real keep = static_cast<Real>(1.0 / (1.0 - p));
  const uint64_t base = dropout_base(seed, site);
  for (int64_t k = 0; k < n; ++k) mask[k] = dropout_entry(base, static_cast<uint64_t>(k), p, keep);
}

// Which streams of a batch a model runs: [first, first + B) of `total` (0: the batch is whole).
// A shard of a batch (one process's part in data-parallel training) draws the same mask entries
// as the whole batch would at those streams, so that the masks do not depend on the split.
struct StreamShard {
  int64_t first = 0, total = 0;
};

// mask [T,B,W] of the streams `shard` names: entry (t, b, j) is entry ((t * total + first + b) * W
// + j) of the whole batch's mask, as dropout_mask above draws it (the same, when the batch is
// whole).
template <class Real>
void dropout_mask(Real* mask, int64_t T, int64_t B, int64_t W, StreamShard shard, double p,
                  uint64_t seed, uint64_t site) {
  if (shard.total == 0) return dropout_mask(mask, T * B * W, p, seed, site);
  const Real keep = static_cast<Real>(1.0 / (1.0 - p));
  const uint64_t base = dropout_base(seed, site);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t b = 0; b < B; ++b) {
      const uint64_t k0 = static_cast<uint64_t>((t * shard.total + shard.first + b) * W);
      Real* m = mask + (t * B + b) * W;
      for (int64_t j = 0; j < W; ++j)
        m[j] = dropout_entry(base, k0 + static_cast<uint64_t>(j), p, keep);
    }
}

// y[k] = x[k] * mask[k] for k in [k0, k1).
template <class Real>
void apply_mask(Real* y, const Real* x, const Real* mask, int64_t k0, int64_t k1) {
  for (int64_t k = k0; k < k1; ++k) y[k] = x[k] * mask[k];
}

// Rows [r0, r1) of y [N,W] = x * mask, where row r takes mask row r % period: period N for a
// mask per position [T,B,W], B for a locked mask [B,W] shared by the T steps (no [T,B,W] copy).
template <class Real>
void apply_mask_rows(Real* y, const Real* x, const Real* mask, int64_t W, int64_t period,
                     int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const Real* m = mask + (r % period) * W;
    Real* yr = y + r * W;
    const Real* xr = x + r * W;
    for (int64_t j = 0; j < W; ++j) yr[j] = xr[j] * m[j];
  }
}

}  // namespace lstmgrad::cpu
