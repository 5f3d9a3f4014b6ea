// A small deterministic generator (splitmix64): the same numbers on every platform and standard
// library, unlike std::uniform_real_distribution.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

namespace lstmgrad::test {

struct SplitMix {
  SplitMix(uint64_t seed) : state(seed) {}  // implicit: a seed is a generator
  uint64_t state;
  double uniform(double lo, double hi) {
    uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return lo + (hi - lo) * static_cast<double>(z >> 11) * 0x1.0p-53;
  }
  std::vector<double> vec(size_t n, double lo, double hi) {
    std::vector<double> v(n);
    for (double& x : v) x = uniform(lo, hi);
    return v;
  }
  int64_t index(int64_t n) {
    return std::min(n - 1, static_cast<int64_t>(uniform(0, static_cast<double>(n))));
  }
};

}  // namespace lstmgrad::test
