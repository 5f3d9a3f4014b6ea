"""lstmgrad's random draws, written again in Python: the initial parameters, the --bptt-jitter
window lengths and every dropout mask of `lstmgrad train`, as the C++ trainer draws them
(src/train/trainer.cpp init_fresh and train_step, src/train/bptt_jitter.hpp, src/cpu/dropout.hpp,
src/cpu/regularize.cpp). With them a PyTorch model (tools/awd_twin.py) trains on the same draws
as lstmgrad, so that the two training loops can be compared update for update
(tools/make_train_golden.py), not only in distribution.

What is drawn where:
- one std::mt19937_64 seeded with --seed: first every parameter, in the layout's order
  (docs/design.md), as std::uniform_real_distribution<double>(-init, init) (libstdc++: one draw x,
  u = double(x) / 2^64, value = u * 2 init - init); layer norm's gains and biases are then set to
  1 and 0; then, per window, three draws for the --bptt-jitter length;
- the masks of update n (0-based) are a pure function of (seed * 0x9e3779b97f4a7c15 + n, site,
  index) through splitmix64: keep (1/(1-p)) unless the entry's uniform is below p.
"""

import math

M64 = (1 << 64) - 1

# Mask sites (src/cpu/regularize.cpp); --dropout (Zaremba's) uses 0 .. L.
SITE_EMB = 1 << 40
SITE_IN = (1 << 40) + 1
SITE_OUT = (1 << 40) + 2
SITE_HID = 2 << 40  # + k
SITE_WEIGHT = 3 << 40  # + k
SITE_REC = 4 << 40  # + k
SITE_ZONE_H = 5 << 40  # + k
SITE_ZONE_S = 6 << 40  # + k


class Mt19937_64:
    """std::mt19937_64 (the C++ standard's parameters and seeding)."""

    def __init__(self, seed):
        self.mt = [0] * 312
        self.mt[0] = seed & M64
        for i in range(1, 312):
            prev = self.mt[i - 1]
            self.mt[i] = (6364136223846793005 * (prev ^ (prev >> 62)) + i) & M64
        self.i = 312

    def _twist(self):
        mt = self.mt
        for k in range(312):
            y = (mt[k] & 0xFFFFFFFF80000000) | (mt[(k + 1) % 312] & 0x7FFFFFFF)
            v = mt[(k + 156) % 312] ^ (y >> 1)
            mt[k] = v ^ 0xB5026F5AA96619E9 if y & 1 else v
        self.i = 0

    def __call__(self):
        if self.i >= 312:
            self._twist()
        x = self.mt[self.i]
        self.i += 1
        x ^= (x >> 29) & 0x5555555555555555
        x ^= (x << 17) & 0x71D67FFFEDA60000
        x ^= (x << 37) & 0xFFF7EEE000000000
        x ^= x >> 43
        return x & M64


def uniform_real(rng, a, b):
    """std::uniform_real_distribution<double>(a, b)(rng) as libstdc++ computes it."""
    u = float(rng()) / 18446744073709551616.0
    if u >= 1.0:
        u = 0.9999999999999999  # nextafter(1, 0)
    return u * (b - a) + a


def unit_uniform(rng):
    """bptt_jitter.hpp's uniform in [0, 1) from a draw's top 53 bits."""
    return float(rng() >> 11) * 2.0 ** -53


def bptt_length(rng, seq):
    """One --bptt-jitter window length (bptt_jitter.hpp draw_bptt_length)."""
    base = float(seq) if unit_uniform(rng) < 0.95 else seq / 2.0
    u1 = 1.0 - unit_uniform(rng)
    u2 = unit_uniform(rng)
    z = math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)
    x = math.trunc(base + 5.0 * z)
    return int(min(max(x, 5.0), float(max(2 * seq, 5))))


def splitmix64(z):
    z = (z + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def update_seed(seed, step):
    """The masks' seed of update `step` (0-based): trainer.cpp's train_step."""
    return (seed * 0x9E3779B97F4A7C15 + step) & M64


def mask(n, p, seed, site):
    """dropout.hpp's dropout_mask [n]: entry k is 1/(1-p), or 0 where its uniform is below p."""
    base = splitmix64(seed ^ splitmix64(site + 1))
    keep = 1.0 / (1.0 - p)
    out = []
    for k in range(n):
        u = float(splitmix64((base + k) & M64) >> 11) * 2.0 ** -53
        out.append(0.0 if u < p else keep)
    return out
