#include "lstmgrad/finite_diff.hpp"

namespace lstmgrad {

std::vector<double> central_difference(const ScalarFn& f, std::vector<double> p,
                                       std::span<const size_t> coords, double step) {
  std::vector<double> g(p.size(), 0.0);
  for (size_t i : coords) {
    const double keep = p[i];
    p[i] = keep + step;
    const double up = f(p);
    p[i] = keep - step;
    const double down = f(p);
    p[i] = keep;
    g[i] = (up - down) / (2 * step);
  }
  return g;
}

std::vector<double> central_difference(const ScalarFn& f, std::vector<double> p, double step) {
  std::vector<size_t> all(p.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = i;
  return central_difference(f, std::move(p), all, step);
}

std::vector<double> central_difference5(const ScalarFn& f, std::vector<double> p,
                                        std::span<const size_t> coords, double step) {
  std::vector<double> g(p.size(), 0.0);
  for (size_t i : coords) {
    const double keep = p[i];
    auto at = [&](double offset) {
      p[i] = keep + offset;
      return f(p);
    };
    g[i] = (-at(2 * step) + 8 * at(step) - 8 * at(-step) + at(-2 * step)) / (12 * step);
    p[i] = keep;
  }
  return g;
}

std::vector<double> central_difference5(const ScalarFn& f, std::vector<double> p, double step) {
  std::vector<size_t> all(p.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = i;
  return central_difference5(f, std::move(p), all, step);
}

}  // namespace lstmgrad
