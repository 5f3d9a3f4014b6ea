#include "lstmgrad/optimizer.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "lstmgrad/error.hpp"

namespace lstmgrad {

namespace {

constexpr size_t kNormBlock = 4096;  // elements per block of the norm's sum
constexpr size_t kNormLanes = 8;     // independent partial sums in a block (vectorisable)

// g *= factor (rounded to Real first, as clipping has always done), element-wise and threaded.
template <class Real>
void scale_in_place(std::span<Real> g, double factor) {
  const Real c = static_cast<Real>(factor);
  Real* v = g.data();
  const size_t n = g.size();
#pragma omp parallel for schedule(static)
  for (size_t k = 0; k < n; ++k) v[k] *= c;
}

}  // namespace

template <class Real>
double grad_norm(std::span<const Real> g) {
  const size_t n = g.size(), blocks = (n + kNormBlock - 1) / kNormBlock;
  std::vector<double> block_sum(blocks);
  const Real* v = g.data();
  // Each block: kNormLanes running sums (element i into lane i % kNormLanes), then the lanes in
  // order; then the blocks in order. The order is fixed by the code, not by the team.
#pragma omp parallel for schedule(static)
  for (size_t b = 0; b < blocks; ++b) {
    double lane[kNormLanes] = {};
    const size_t i0 = b * kNormBlock, i1 = std::min(n, i0 + kNormBlock);
    size_t i = i0;
    for (; i + kNormLanes <= i1; i += kNormLanes)
      for (size_t l = 0; l < kNormLanes; ++l)
        lane[l] += static_cast<double>(v[i + l]) * static_cast<double>(v[i + l]);
    for (; i < i1; ++i) lane[i % kNormLanes] += static_cast<double>(v[i]) * static_cast<double>(v[i]);
    double sum = 0;
    for (double x : lane) sum += x;
    block_sum[b] = sum;
  }
  double sq = 0;
  for (double x : block_sum) sq += x;
  return std::sqrt(sq);
}

double clip_factor(double norm, double max_norm) {
  return max_norm > 0 && norm > max_norm ? max_norm / (norm + 1e-6) : 1.0;
}

template <class Real>
double clip_grad_norm(std::span<Real> g, double max_norm) {
  const double norm = grad_norm<Real>(g);
  const double c = clip_factor(norm, max_norm);
  if (c != 1.0) scale_in_place(g, c);
  return norm;
}

OptimizerKind parse_optimizer(const std::string& s) {
  if (s == "sgd") return OptimizerKind::sgd;
  if (s == "adam") return OptimizerKind::adam;
  throw InputError(fmt::format("--optimizer: expected sgd or adam, got '{}'", s));
}

std::string to_string(OptimizerKind k) {
  return k == OptimizerKind::sgd ? "sgd" : "adam";
}

template <class Real>
Optimizer<Real>::Optimizer(OptimizerKind kind, size_t n, double beta1, double beta2, double eps)
    : kind_(kind), beta1_(beta1), beta2_(beta2), eps_(eps) {
  if (kind_ == OptimizerKind::adam) m_.assign(n, Real(0)), v_.assign(n, Real(0));
}

template <class Real>
void Optimizer<Real>::step_and_zero(std::span<Real> params, std::span<Real> grad, double lr,
                                    double grad_scale) {
  if (kind_ != OptimizerKind::sgd) {  // Adam: the scaled gradient, then the usual step
    if (grad_scale != 1.0) scale_in_place(grad, grad_scale);
    step(params, grad, lr);
    std::fill(grad.begin(), grad.end(), Real(0));
    return;
  }
  ++t_;
  const size_t n = params.size();
  const Real a = static_cast<Real>(lr), c = static_cast<Real>(grad_scale);
  const bool scaled = grad_scale != 1.0;
  Real* p = params.data();
  Real* g = grad.data();
  // Element-wise: the same result for any thread count.
#pragma omp parallel for schedule(static)
  for (size_t k = 0; k < n; ++k) {
    const Real gk = scaled ? g[k] * c : g[k];
    p[k] -= a * gk;
    g[k] = Real(0);
  }
}

template <class Real>
void Optimizer<Real>::step(std::span<Real> params, std::span<const Real> grad, double lr) {
  ++t_;
  const size_t n = params.size();
  if (kind_ == OptimizerKind::sgd) {
    const Real a = static_cast<Real>(lr);
    for (size_t k = 0; k < n; ++k) params[k] -= a * grad[k];
    return;
  }
  const double td = static_cast<double>(t_);
  const Real b1 = static_cast<Real>(beta1_), b2 = static_cast<Real>(beta2_);
  const Real step = static_cast<Real>(lr / (1 - std::pow(beta1_, td)));
  const Real bc2 = static_cast<Real>(std::sqrt(1 - std::pow(beta2_, td)));
  const Real eps = static_cast<Real>(eps_);
  for (size_t k = 0; k < n; ++k) {
    const Real g = grad[k];
    m_[k] = b1 * m_[k] + (Real(1) - b1) * g;
    v_[k] = b2 * v_[k] + (Real(1) - b2) * g * g;
    params[k] -= step * m_[k] / (std::sqrt(v_[k]) / bc2 + eps);
  }
}

template double grad_norm<float>(std::span<const float>);
template double grad_norm<double>(std::span<const double>);
template double clip_grad_norm<float>(std::span<float>, double);
template double clip_grad_norm<double>(std::span<double>, double);
template class Optimizer<float>;
template class Optimizer<double>;

}  // namespace lstmgrad
