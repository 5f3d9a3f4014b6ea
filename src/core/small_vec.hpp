// Small-vector helpers for the exercise code (vectors of a handful of entries; clarity first).
#pragma once
#include <algorithm>
#include <cmath>
#include <vector>

namespace lstmgrad::core {

inline double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t k = 0; k < a.size(); ++k) s += a[k] * b[k];
  return s;
}

// c v
inline std::vector<double> scaled(const std::vector<double>& v, double c) {
  std::vector<double> out(v);
  for (double& e : out) e *= c;
  return out;
}

// acc + c v
inline std::vector<double> axpy(std::vector<double> acc, double c, const std::vector<double>& v) {
  for (size_t k = 0; k < acc.size(); ++k) acc[k] += c * v[k];
  return acc;
}

// max_k |other_k - ref_k| / |ref_k|
inline double max_rel_err(const std::vector<double>& other, const std::vector<double>& ref) {
  double worst = 0;
  for (size_t k = 0; k < ref.size(); ++k)
    worst = std::max(worst, std::abs(other[k] - ref[k]) / std::abs(ref[k]));
  return worst;
}

}  // namespace lstmgrad::core
