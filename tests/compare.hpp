// Comparison helpers for the tests: the error of `got` against `want`, relative to the largest
// magnitude in `want` (so that entries near zero do not dominate), with where the worst entry is.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <span>
#include <string>
#include <vector>

namespace lstmgrad::test {

struct Diff {
  double max_abs = 0;  // max |got - want|
  double rel = 0;      // max_abs / max |want| (or max_abs when want is all zero)
  size_t where = 0;    // flat index of the worst entry
};

template <class A, class B>
Diff diff(std::span<const A> got, std::span<const B> want) {
  Diff d;
  double scale = 0;
  for (size_t k = 0; k < want.size(); ++k) scale = std::max(scale, std::abs(double(want[k])));
  for (size_t k = 0; k < want.size(); ++k) {
    const double e = std::abs(double(got[k]) - double(want[k]));
    if (e > d.max_abs || std::isnan(e)) d.max_abs = e, d.where = k;
  }
  d.rel = scale > 0 ? d.max_abs / scale : d.max_abs;
  return d;
}

template <class A, class B>
::testing::AssertionResult close(const std::string& what, const std::vector<A>& got,
                                 const std::vector<B>& want, double tol) {
  if (got.size() != want.size())
    return ::testing::AssertionFailure()
           << what << ": size " << got.size() << " != " << want.size();
  const Diff d = diff(std::span<const A>(got), std::span<const B>(want));
  if (d.rel <= tol && !std::isnan(d.max_abs)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << what << ": max abs diff " << d.max_abs << ", rel " << d.rel << " > tol " << tol
         << " at flat index " << d.where << " (got " << double(got[d.where]) << ", want "
         << double(want[d.where]) << ")";
}

inline std::vector<double> uniform(size_t n, std::mt19937_64& rng, double lo = -1, double hi = 1) {
  std::uniform_real_distribution<double> u(lo, hi);
  std::vector<double> v(n);
  for (double& e : v) e = u(rng);
  return v;
}

template <class To>
std::vector<To> cast(const std::vector<double>& v) {
  return std::vector<To>(v.begin(), v.end());
}

// Test names for a suite run on the plain cell (false) and on the cell with peepholes (true).
inline std::string cell_variant(const ::testing::TestParamInfo<bool>& p) {
  return p.param ? "Peephole" : "Plain";
}

}  // namespace lstmgrad::test
