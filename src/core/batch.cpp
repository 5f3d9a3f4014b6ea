#include "lstmgrad/batch.hpp"

#include <fmt/format.h>

#include <cmath>

#include "lstmgrad/error.hpp"

namespace lstmgrad {

namespace {

void expect_size(const char* where, const char* field, size_t got, int64_t want,
                 const std::string& shape) {
  if (got != static_cast<size_t>(want))
    throw InputError(
        fmt::format("{}: '{}' has {} values, expected {} ({})", where, field, got, want, shape));
}

template <class Real>
void expect_finite(const char* where, const char* field, const std::vector<Real>& v) {
  for (size_t i = 0; i < v.size(); ++i)
    if (!std::isfinite(v[i]))
      throw InputError(fmt::format("{}: '{}' holds a non-finite value ({}) at flat index {}", where,
                                   field, static_cast<double>(v[i]), i));
}

void expect_ids(const char* where, const char* field, const std::vector<int64_t>& ids, int64_t V,
                int64_t B) {
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] < 0 || ids[i] >= V)
      throw InputError(fmt::format("{}: '{}' [t={}, b={}] = {} is outside the vocabulary [0, {})",
                                   where, field, static_cast<int64_t>(i) / B,
                                   static_cast<int64_t>(i) % B, ids[i], V));
}

// Soft targets must be probability vectors: dL/dz = p - y relies on sum_k y_k = 1.
template <class Real>
void expect_distributions(const char* where, const std::vector<Real>& y, int64_t V, int64_t B) {
  const double tol = sizeof(Real) == 4 ? 1e-4 : 1e-8;
  for (size_t r = 0; r * V < y.size(); ++r) {
    double sum = 0;
    for (int64_t k = 0; k < V; ++k) {
      const double v = static_cast<double>(y[r * V + k]);
      if (v < 0)
        throw InputError(fmt::format("{}: 'target_probs' [t={}, b={}] has a negative entry {}",
                                     where, static_cast<int64_t>(r) / B,
                                     static_cast<int64_t>(r) % B, v));
      sum += v;
    }
    if (std::abs(sum - 1) > tol)
      throw InputError(fmt::format("{}: 'target_probs' [t={}, b={}] sums to {}, expected 1", where,
                                   static_cast<int64_t>(r) / B, static_cast<int64_t>(r) % B, sum));
  }
}

}  // namespace

template <class Real>
void validate_batch(const ModelConfig& cfg, const Batch<Real>& b, const char* where) {
  if (b.T < 1 || b.B < 1)
    throw InputError(
        fmt::format("{}: 'input' must have T >= 1 and B >= 1, got T={}, B={}", where, b.T, b.B));
  const int64_t N = b.T * b.B;
  if (cfg.input == InputKind::embedding) {
    expect_size(where, "input", b.tokens.size(), N, fmt::format("int64 [T={}, B={}]", b.T, b.B));
    expect_ids(where, "input", b.tokens, cfg.V, b.B);
  } else {
    expect_size(where, "input", b.dense.size(), N * cfg.X,
                fmt::format("float [T={}, B={}, X={}]", b.T, b.B, cfg.X));
    expect_finite(where, "input", b.dense);
  }
  if (!b.target.empty() && !b.target_probs.empty())
    throw InputError(fmt::format("{}: give 'target' or 'target_probs', not both", where));
  if (!b.target.empty()) {
    expect_size(where, "target", b.target.size(), N, fmt::format("int64 [T={}, B={}]", b.T, b.B));
    expect_ids(where, "target", b.target, cfg.V, b.B);
  }
  if (!b.target_probs.empty()) {
    expect_size(where, "target_probs", b.target_probs.size(), N * cfg.V,
                fmt::format("float [T={}, B={}, V={}]", b.T, b.B, cfg.V));
    expect_finite(where, "target_probs", b.target_probs);
    expect_distributions(where, b.target_probs, cfg.V, b.B);
  }
  // the layers' [B, W_k] blocks; uniform: [L, B, W]
  if (!b.h0.empty())
    expect_size(where, "h0", b.h0.size(), cfg.h_offset(cfg.L, b.B),
                fmt::format("float, the layers' h blocks [B={}, H_k], [L={}, B, H={}] when "
                            "uniform",
                            b.B, cfg.L, cfg.H));
  if (!b.s0.empty())
    expect_size(where, "s0", b.s0.size(), cfg.s_offset(cfg.L, b.B),
                fmt::format("float, the layers' s blocks [B={}, H_k], [L={}, B, H={}] when "
                            "uniform",
                            b.B, cfg.L, cfg.width(cfg.L - 1)));

  expect_finite(where, "h0", b.h0);
  expect_finite(where, "s0", b.s0);
}

template void validate_batch<float>(const ModelConfig&, const Batch<float>&, const char*);
template void validate_batch<double>(const ModelConfig&, const Batch<double>&, const char*);

}  // namespace lstmgrad
