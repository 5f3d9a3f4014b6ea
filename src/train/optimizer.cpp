#include "lstmgrad/optimizer.hpp"

#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

#include "cpu/team.hpp"
#include "lstmgrad/error.hpp"

namespace lstmgrad {

namespace {

constexpr size_t kNormBlock = 4096;  // elements per block of the norm's sum
constexpr size_t kNormLanes = 8;     // independent partial sums in a block (vectorisable)

// The team of one of the element-wise passes below, over n elements: up to
// omp_get_max_threads(), chosen by measuring (cpu/team.hpp); fewer on a machine busy with other
// work, where a thread off its core would hold up the pass's end (and, kept awake by the passes,
// the engine's team that had already left it). Element-wise, so the team changes no bit. Each
// pass keeps its own tuner per calling thread.
cpu::TeamCall pass_team(cpu::TeamTuner& tuner, size_t n) {
  return {tuner, omp_get_max_threads(), 0, static_cast<double>(std::max<size_t>(n, 1))};
}

// g *= factor (rounded to Real first, as clipping has always done), element-wise and threaded.
template <class Real>
void scale_in_place(std::span<Real> g, double factor) {
  const Real c = static_cast<Real>(factor);
  Real* v = g.data();
  const size_t n = g.size();
  thread_local cpu::TeamTuner tuner;
  const cpu::TeamCall team = pass_team(tuner, n);
  cpu::run_team(team.threads(), [&] {
    const size_t nt = static_cast<size_t>(cpu::team_threads()),
                 id = static_cast<size_t>(cpu::team_thread());
    for (size_t k = n * id / nt; k < n * (id + 1) / nt; ++k) v[k] *= c;
  });
}

// `zero` must be sorted, disjoint and inside [0, n): a range out of place would skip elements
// that are not 0 (O(ranges), next to nothing beside the pass it guards).
void check_ranges(std::span<const ElementRange> zero, size_t n, const char* what) {
  size_t end = 0;
  for (const ElementRange& r : zero) {
    if (r.begin < end || r.end < r.begin || r.end > n)
      throw std::invalid_argument(
          fmt::format("{}: zero ranges must be sorted, disjoint and inside [0, {}); got [{}, {}) "
                      "after {}",
                      what, n, r.begin, r.end, end));
    end = r.end;
  }
}

// lane[i % kNormLanes] += g_i^2 for i in [a, b), each lane in increasing i, as over a whole block:
// the unaligned head one at a time, then kNormLanes at a time, then the tail.
template <class Real>
inline void add_squares(double* lane, const Real* v, size_t a, size_t b) {
  size_t i = a;
  for (; i < b && i % kNormLanes != 0; ++i)
    lane[i % kNormLanes] += static_cast<double>(v[i]) * static_cast<double>(v[i]);
  for (; i + kNormLanes <= b; i += kNormLanes)
    for (size_t l = 0; l < kNormLanes; ++l)
      lane[l] += static_cast<double>(v[i + l]) * static_cast<double>(v[i + l]);
  for (; i < b; ++i) lane[i % kNormLanes] += static_cast<double>(v[i]) * static_cast<double>(v[i]);
}

// Calls f(a, b) on each run [a, b) of [begin, end) that lies outside `zero`, in order.
template <class F>
void for_kept_runs(size_t begin, size_t end, std::span<const ElementRange> zero, F&& f) {
  auto z = std::partition_point(zero.begin(), zero.end(),
                                [begin](const ElementRange& r) { return r.end <= begin; });
  size_t i = begin;
  for (; z != zero.end() && z->begin < end; ++z) {
    if (z->begin > i) f(i, z->begin);
    i = std::max(i, z->end);
  }
  if (i < end) f(i, end);
}

// This thread's part [begin, end) of [0, n), inside a parallel region: the parts hold equal
// counts of elements outside `zero` (what the passes read), so skipping leaves no thread idle,
// and they are contiguous, so that grad_norm and the step that follows it find the same part of
// the vectors in each core's cache.
ElementRange thread_part(size_t n, std::span<const ElementRange> zero) {
  size_t kept = n;
  for (const ElementRange& r : zero) kept -= r.end - r.begin;
  const size_t nt = static_cast<size_t>(cpu::team_threads());
  const size_t id = static_cast<size_t>(cpu::team_thread());
  // Where the k-th element outside `zero` is.
  auto position = [&](size_t k) {
    size_t pos = 0, seen = 0;  // kept elements before pos
    for (const ElementRange& r : zero) {
      if (k < seen + (r.begin - pos)) break;
      seen += r.begin - pos, pos = r.end;
    }
    return std::min(n, pos + (k - seen));
  };
  return {id == 0 ? 0 : position(kept * id / nt),
          id + 1 == nt ? n : position(kept * (id + 1) / nt)};
}

}  // namespace

template <class Real>
double grad_norm(std::span<const Real> g, std::span<const ElementRange> zero) {
  check_ranges(zero, g.size(), "grad_norm");
  const size_t n = g.size(), blocks = (n + kNormBlock - 1) / kNormBlock;
  // Reused from call to call (the training loop calls this at every update); the team writes
  // through `sums` (block_sum is the calling thread's).
  thread_local std::vector<double> block_sum;
  block_sum.resize(blocks);
  double* sums = block_sum.data();
  const Real* v = g.data();
  // Each block: kNormLanes running sums (element i into lane i % kNormLanes), then the lanes in
  // order; then the blocks in order. The order is fixed by the code, not by the team.
  thread_local cpu::TeamTuner tuner;
  const cpu::TeamCall team = pass_team(tuner, n);
  cpu::run_team(team.threads(), [&] {
    const ElementRange part = thread_part(n, zero);  // the blocks that start in it
    const size_t b1 = (part.end + kNormBlock - 1) / kNormBlock;
    for (size_t b = (part.begin + kNormBlock - 1) / kNormBlock; b < b1; ++b) {
      double lane[kNormLanes] = {};
      const size_t i0 = b * kNormBlock, i1 = std::min(n, i0 + kNormBlock);
      for_kept_runs(i0, i1, zero, [&](size_t a, size_t e) { add_squares(lane, v, a, e); });
      double sum = 0;
      for (double x : lane) sum += x;
      sums[b] = sum;
    }
  });
  double sq = 0;
  for (double x : block_sum) sq += x;
  return std::sqrt(sq);
}

void unused_rows(std::span<const int64_t> ids, int64_t rows, int64_t width, size_t offset,
                 std::vector<uint8_t>& mark, std::vector<ElementRange>& zero) {
  if (mark.size() < static_cast<size_t>(rows)) mark.resize(static_cast<size_t>(rows), 0);
  for (int64_t id : ids) mark[static_cast<size_t>(id)] = 1;
  zero.clear();
  const size_t w = static_cast<size_t>(width);
  for (size_t r = 0, R = static_cast<size_t>(rows); r < R;) {
    if (mark[r]) {
      mark[r++] = 0;  // left all 0 for the next call
      continue;
    }
    const size_t r0 = r;
    while (r < R && !mark[r]) ++r;
    zero.push_back({offset + r0 * w, offset + r * w});
  }
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

bool nonmono_triggered(std::span<const double> history, double loss, int64_t n) {
  const size_t N = static_cast<size_t>(std::max<int64_t>(n, 1));
  if (history.size() <= N) return false;
  const auto older = history.first(history.size() - N);
  return loss > *std::min_element(older.begin(), older.end());
}

OptimizerKind parse_optimizer(const std::string& s) {
  if (s == "sgd") return OptimizerKind::sgd;
  if (s == "adam") return OptimizerKind::adam;
  if (s == "asgd") return OptimizerKind::asgd;
  throw InputError(fmt::format("--optimizer: expected sgd, adam or asgd, got '{}'", s));
}

std::string to_string(OptimizerKind k) {
  return k == OptimizerKind::sgd ? "sgd" : (k == OptimizerKind::adam ? "adam" : "asgd");
}

template <class Real>
Optimizer<Real>::Optimizer(OptimizerKind kind, size_t n, double beta1, double beta2, double eps,
                           double weight_decay)
    : kind_(kind), n_(n), beta1_(beta1), beta2_(beta2), eps_(eps), weight_decay_(weight_decay) {
  if (kind_ == OptimizerKind::adam) m_.assign(n, Real(0)), v_.assign(n, Real(0));
  if (kind_ == OptimizerKind::asgd) ax_.assign(n, Real(0));
}

template <class Real>
void Optimizer<Real>::start_averaging() {
  if (kind_ != OptimizerKind::sgd)
    throw std::logic_error("Optimizer::start_averaging: only SGD switches to averaging");
  kind_ = OptimizerKind::asgd;
  ax_.assign(n_, Real(0));
  avg_t_ = 0, eta_ = 0;
}

template <class Real>
void Optimizer<Real>::set_averaging(std::vector<Real> ax, int64_t steps, double eta) {
  kind_ = OptimizerKind::asgd;
  ax_ = std::move(ax), avg_t_ = steps, eta_ = eta;
}

namespace {

// One run [k0, k1) of the SGD or ASGD update (see the header), with the flags as template
// arguments so that each combination is a loop of its own, without branches in it.
template <class Real, bool kScaled, bool kDecay, bool kAverage>
inline void sgd_run(Real* p, Real* g, Real* ax, size_t k0, size_t k1, Real a, Real c, Real w,
                    Real mu, bool copy) {
  for (size_t k = k0; k < k1; ++k) {
    Real gk = kScaled ? g[k] * c : g[k];
    if constexpr (kDecay) gk = gk + w * p[k];
    p[k] -= a * gk;
    if constexpr (kAverage) ax[k] = copy ? p[k] : ax[k] + (p[k] - ax[k]) * mu;
    g[k] = Real(0);
  }
}

template <class Real, bool kScaled, bool kDecay, bool kAverage>
void sgd_pass(std::span<Real> params, std::span<Real> grad, Real* ax, Real a, Real c, Real w,
              Real mu, bool copy, std::span<const ElementRange> zero, cpu::TeamTuner& tuner) {
  Real* p = params.data();
  Real* g = grad.data();
  const size_t n = params.size();
  const cpu::TeamCall team = pass_team(tuner, n);
  cpu::run_team(team.threads(), [&] {
    const ElementRange part = thread_part(n, zero);
    for_kept_runs(part.begin, part.end, zero, [=](size_t k0, size_t k1) {
      sgd_run<Real, kScaled, kDecay, kAverage>(p, g, ax, k0, k1, a, c, w, mu, copy);
    });
  });
}

}  // namespace

template <class Real>
void Optimizer<Real>::step_and_zero(std::span<Real> params, std::span<Real> grad, double lr,
                                    double grad_scale, std::span<const ElementRange> zero) {
  if (kind_ == OptimizerKind::adam) {  // the scaled gradient, then the usual step
    if (grad_scale != 1.0) scale_in_place(grad, grad_scale);
    step(params, grad, lr);
    std::fill(grad.begin(), grad.end(), Real(0));
    return;
  }
  check_ranges(zero, grad.size(), "step_and_zero");
  const bool average = kind_ == OptimizerKind::asgd, decay = weight_decay_ != 0;
  // Weight decay and the average change the elements whose gradient is 0 too.
  if (average || decay) zero = {};
  ++t_;
  Real a = static_cast<Real>(lr), mu = Real(1);
  if (average) {
    if (avg_t_ == 0) eta_ = lr;  // torch: eta starts as the lr of the first step
    a = static_cast<Real>(eta_);
    mu = static_cast<Real>(1.0 / static_cast<double>(std::max<int64_t>(1, avg_t_)));
    ++avg_t_;
    eta_ = lr;
  }
  const Real c = static_cast<Real>(grad_scale), w = static_cast<Real>(weight_decay_);
  const bool copy = mu == Real(1);
  Real* ax = ax_.data();
  // Element-wise: the same result for any thread count and any parts. One tuner per variant.
  thread_local cpu::TeamTuner tuner;
  auto pass = [&]<bool kScaled, bool kDecay, bool kAverage>() {
    sgd_pass<Real, kScaled, kDecay, kAverage>(params, grad, ax, a, c, w, mu, copy, zero, tuner);
  };
  const bool scaled = grad_scale != 1.0;
  if (!average && !decay) {
    scaled ? pass.template operator()<true, false, false>()
           : pass.template operator()<false, false, false>();
  } else if (!average) {
    scaled ? pass.template operator()<true, true, false>()
           : pass.template operator()<false, true, false>();
  } else if (!decay) {
    scaled ? pass.template operator()<true, false, true>()
           : pass.template operator()<false, false, true>();
  } else {
    scaled ? pass.template operator()<true, true, true>()
           : pass.template operator()<false, true, true>();
  }
}

template <class Real>
void Optimizer<Real>::step(std::span<Real> params, std::span<const Real> grad, double lr) {
  ++t_;
  const size_t n = params.size();
  const Real w = static_cast<Real>(weight_decay_);
  const bool decay = weight_decay_ != 0;
  auto gradient = [&](size_t k) { return decay ? grad[k] + w * params[k] : grad[k]; };
  if (kind_ == OptimizerKind::sgd) {
    const Real a = static_cast<Real>(lr);
    for (size_t k = 0; k < n; ++k) params[k] -= a * gradient(k);
    return;
  }
  if (kind_ == OptimizerKind::asgd) {
    if (avg_t_ == 0) eta_ = lr;
    const Real a = static_cast<Real>(eta_);
    const Real mu = static_cast<Real>(1.0 / static_cast<double>(std::max<int64_t>(1, avg_t_)));
    for (size_t k = 0; k < n; ++k) {
      params[k] -= a * gradient(k);
      ax_[k] = mu == Real(1) ? params[k] : ax_[k] + (params[k] - ax_[k]) * mu;
    }
    ++avg_t_;
    eta_ = lr;
    return;
  }
  const double td = static_cast<double>(t_);
  const Real b1 = static_cast<Real>(beta1_), b2 = static_cast<Real>(beta2_);
  const Real step = static_cast<Real>(lr / (1 - std::pow(beta1_, td)));
  const Real bc2 = static_cast<Real>(std::sqrt(1 - std::pow(beta2_, td)));
  const Real eps = static_cast<Real>(eps_);
  for (size_t k = 0; k < n; ++k) {
    const Real g = gradient(k);
    m_[k] = b1 * m_[k] + (Real(1) - b1) * g;
    v_[k] = b2 * v_[k] + (Real(1) - b2) * g * g;
    params[k] -= step * m_[k] / (std::sqrt(v_[k]) / bc2 + eps);
  }
}

template double grad_norm<float>(std::span<const float>, std::span<const ElementRange>);
template double grad_norm<double>(std::span<const double>, std::span<const ElementRange>);
template double clip_grad_norm<float>(std::span<float>, double);
template double clip_grad_norm<double>(std::span<double>, double);
template class Optimizer<float>;
template class Optimizer<double>;

}  // namespace lstmgrad
