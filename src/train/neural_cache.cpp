#include "train/neural_cache.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "cpu/blas.hpp"
#include "lstmgrad/error.hpp"

namespace lstmgrad::train {

void validate_cache(const CacheOptions& o) {
  if (o.window < 0)
    throw InputError(fmt::format("--cache-window: must be >= 0 (0: no cache), got {}", o.window));
  if (!std::isfinite(o.theta))
    throw InputError(fmt::format("--cache-theta: must be finite, got {}", o.theta));
  if (!(o.lambda >= 0 && o.lambda <= 1))
    throw InputError(fmt::format("--cache-lambda: must be in [0, 1], got {}", o.lambda));
}

template <class Real>
NeuralCache<Real>::NeuralCache(int64_t B, int64_t H, const CacheOptions& o)
    : B_(B),
      H_(H),
      N_(o.window),
      theta_(o.theta),
      lambda_(o.lambda),
      keys_(static_cast<size_t>(B * o.window * H)),
      next_(static_cast<size_t>(B * o.window)),
      count_(static_cast<size_t>(B), 0),
      head_(static_cast<size_t>(B), 0),
      dots_(static_cast<size_t>(o.window)) {}

template <class Real>
double NeuralCache<Real>::score(const Real* h, const Real* p, int64_t V, const int64_t* target,
                                int64_t T) {
  double sum = 0;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t b = 0; b < B_; ++b) {
      const int64_t k = t * B_ + b;  // the position's row in [T,B]
      const Real* hk = h + k * H_;
      sum += position_loss(b, hk, static_cast<double>(p[k * V + target[k]]), target[k]);
      remember(b, hk, target[k]);
    }
  return sum;
}

template <class Real>
double NeuralCache<Real>::position_loss(int64_t b, const Real* h, double p_target, int64_t target) {
  const int64_t n = count_[static_cast<size_t>(b)];
  if (n == 0 || lambda_ == 0) return -std::log(p_target);
  // dots [n] = keys [n,H] h [H] (the ring's rows in storage order: the mixture does not depend on
  // the order, and every run takes the same one)
  const Real* keys = keys_.data() + b * N_ * H_;
  cpu::gemm(cpu::Tr::N, cpu::Tr::N, n, 1, H_, Real(1), keys, H_, h, 1, Real(0), dots_.data(), 1);
  double top = -INFINITY;
  for (int64_t i = 0; i < n; ++i) top = std::max(top, theta_ * static_cast<double>(dots_[i]));
  // softmax with the largest logit subtracted: sum_all the normaliser, hit the target's share
  const int64_t* next = next_.data() + b * N_;
  double sum_all = 0, hit = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double e = std::exp(theta_ * static_cast<double>(dots_[i]) - top);
    sum_all += e;
    if (next[i] == target) hit += e;
  }
  return -std::log((1 - lambda_) * p_target + lambda_ * (hit / sum_all));
}

template <class Real>
void NeuralCache<Real>::remember(int64_t b, const Real* h, int64_t next) {
  if (N_ == 0) return;
  const size_t sb = static_cast<size_t>(b);
  const int64_t slot = head_[sb];
  std::copy_n(h, H_, keys_.data() + (b * N_ + slot) * H_);
  next_[static_cast<size_t>(b * N_ + slot)] = next;
  head_[sb] = (slot + 1) % N_;
  count_[sb] = std::min(count_[sb] + 1, N_);
}

template class NeuralCache<float>;
template class NeuralCache<double>;

}  // namespace lstmgrad::train
