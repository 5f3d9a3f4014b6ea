#include "lstmgrad/optimizer.hpp"

#include <fmt/format.h>

#include <cmath>

#include "lstmgrad/error.hpp"

namespace lstmgrad {

template <class Real>
double clip_grad_norm(std::span<Real> g, double max_norm) {
  double sq = 0;
  for (Real v : g) sq += static_cast<double>(v) * static_cast<double>(v);
  const double norm = std::sqrt(sq);
  if (max_norm > 0 && norm > max_norm) {
    const Real c = static_cast<Real>(max_norm / (norm + 1e-6));
    for (Real& v : g) v *= c;
  }
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

template double clip_grad_norm<float>(std::span<float>, double);
template double clip_grad_norm<double>(std::span<double>, double);
template class Optimizer<float>;
template class Optimizer<double>;

}  // namespace lstmgrad
