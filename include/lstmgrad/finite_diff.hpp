// lstmgrad: central finite differences in float64, for any scalar function of the parameters.
//
//   dL/dp_i ~ (L(p + e u_i) - L(p - e u_i)) / (2 e)
//
// The truncation error is O(e^2 L''') and the rounding error O(eps |L| / e); e = 1e-6 balances
// them at about 1e-10 relative for smooth functions of O(1) values in double precision.
#pragma once
#include <cstddef>
#include <functional>
#include <span>
#include <vector>

namespace lstmgrad {

using ScalarFn = std::function<double(std::span<const double>)>;

// Gradient of f at p for every coordinate.
std::vector<double> central_difference(const ScalarFn& f, std::vector<double> p,
                                       double step = 1e-6);

// Gradient of f at p for the listed coordinates only (others are left 0): for large models,
// where checking every coordinate would take too long.
std::vector<double> central_difference(const ScalarFn& f, std::vector<double> p,
                                       std::span<const size_t> coords, double step = 1e-6);

// The five-point central stencil (-f(p+2e) + 8 f(p+e) - 8 f(p-e) + f(p-2e)) / 12e: truncation
// error O(e^4), so a larger step (1e-3) keeps the rounding error O(eps |f| / e) small. For
// gradients far smaller than the function's value, such as the handout's Exercise 2 (dL/dV_a1 ~
// 1e-5 with L ~ 1), where the two-point rule at e = 1e-6 is only good to ~1e-6.
std::vector<double> central_difference5(const ScalarFn& f, std::vector<double> p,
                                        double step = 1e-3);
std::vector<double> central_difference5(const ScalarFn& f, std::vector<double> p,
                                        std::span<const size_t> coords, double step = 1e-3);

}  // namespace lstmgrad
