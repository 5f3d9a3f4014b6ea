// Variable-length BPTT (train --bptt-jitter), as AWD-LSTM's main.py draws it (docs/cli.md).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numbers>
#include <random>

namespace lstmgrad::train {

// The longest window a draw gives: 2 seq (and at least 5); a normal draw goes past it for seq >= 5
// with probability below 1e-6 (seq / 5 standard deviations), and buffers stay bounded.
inline int64_t bptt_jitter_cap(int64_t seq) {
  return std::max<int64_t>(2 * seq, 5);
}

// A uniform double in [0, 1) from the top 53 bits of one draw.
inline double unit_uniform(std::mt19937_64& rng) {
  return static_cast<double>(rng() >> 11) * 0x1.0p-53;
}

// One window's length: base = seq with probability 0.95, else seq / 2; length =
// max(5, int(N(base, 5))) (int truncates toward 0, as Python's), at most bptt_jitter_cap(seq).
// Three draws of the engine each time (the uniform, then Box-Muller's two), written out here
// rather than with std::normal_distribution, whose algorithm and cached second value are the
// library's: the lengths are a function of the engine's state alone, which checkpoints save.
inline int64_t draw_bptt_length(std::mt19937_64& rng, int64_t seq) {
  const double base =
      unit_uniform(rng) < 0.95 ? static_cast<double>(seq) : static_cast<double>(seq) / 2.0;
  const double u1 = 1.0 - unit_uniform(rng), u2 = unit_uniform(rng);  // u1 in (0, 1]
  const double z = std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
  const double x = std::trunc(base + 5.0 * z);
  const double cap = static_cast<double>(bptt_jitter_cap(seq));
  return static_cast<int64_t>(std::clamp(x, 5.0, cap));
}

}  // namespace lstmgrad::train
