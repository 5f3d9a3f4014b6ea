// The batcher: B contiguous streams, windows of seq steps along them (rules in data.hpp).
#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <utility>

#include "lstmgrad/data.hpp"
#include "lstmgrad/error.hpp"

namespace lstmgrad::data {
namespace {

std::string tokens_text(int64_t n) {
  return fmt::format("{} token{}", n, n == 1 ? "" : "s");
}

}  // namespace

int64_t Batcher::check(int64_t N, int64_t B, int64_t seq, bool drop_last,
                       const std::string& where) {
  if (B < 1) throw InputError(fmt::format("{}: batch must be >= 1, got {}", where, B));
  if (seq < 1) throw InputError(fmt::format("{}: window length must be >= 1, got {}", where, seq));
  const int64_t n = N / B;
  if (n < 2)
    throw InputError(fmt::format("{}: {} make streams of {} for batch {}; need at least 2", where,
                                 tokens_text(N), tokens_text(n), B));
  // Each stream yields n-1 (input, target) pairs.
  const int64_t windows = drop_last ? (n - 1) / seq : (n - 1 + seq - 1) / seq;
  if (windows == 0)
    throw InputError(
        fmt::format("{}: {} make streams of {} for batch {}; a full window of {} steps needs {}",
                    where, tokens_text(N), tokens_text(n), B, seq, tokens_text(seq + 1)));
  return windows;
}

Batcher::Batcher(std::span<const int64_t> ids, int64_t B, int64_t seq, bool drop_last,
                 std::string where)
    : B_(B), seq_(seq), drop_last_(drop_last), where_(std::move(where)) {
  windows_ = check(static_cast<int64_t>(ids.size()), B, seq, drop_last, where_);
  n_ = static_cast<int64_t>(ids.size()) / B;
  // Transpose once to time-major [n, B] so that every window is two contiguous copies.
  data_.resize(static_cast<size_t>(n_ * B));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t p = 0; p < n_; ++p) data_[p * B + b] = ids[b * n_ + p];
}

int64_t Batcher::steps(int64_t k) const {
  return std::min(seq_, n_ - 1 - k * seq_);
}

int64_t Batcher::predictions() const {
  return drop_last_ ? windows_ * seq_ * B_ : (n_ - 1) * B_;
}

int64_t Batcher::window(int64_t k, std::vector<int64_t>& inputs,
                        std::vector<int64_t>& targets) const {
  if (k < 0 || k >= windows_)
    throw std::out_of_range(fmt::format("{}: window {} is outside [0, {})", where_, k, windows_));
  const int64_t T = steps(k);
  const auto count = static_cast<size_t>(T * B_);
  inputs.resize(count);
  targets.resize(count);
  const int64_t* first = data_.data() + k * seq_ * B_;  // row k*seq of [n, B]
  std::memcpy(inputs.data(), first, count * sizeof(int64_t));
  std::memcpy(targets.data(), first + B_, count * sizeof(int64_t));
  return T;
}

int64_t Batcher::window_at(int64_t pos, int64_t len, std::vector<int64_t>& inputs,
                           std::vector<int64_t>& targets) const {
  if (pos < 0 || pos >= n_ - 1 || len < 1)
    throw std::out_of_range(
        fmt::format("{}: a window of {} steps at position {} is outside the "
                    "streams' {} positions",
                    where_, len, pos, n_ - 1));
  const int64_t T = std::min(len, n_ - 1 - pos);
  const auto count = static_cast<size_t>(T * B_);
  inputs.resize(count);
  targets.resize(count);
  const int64_t* first = data_.data() + pos * B_;  // row pos of [n, B]
  std::memcpy(inputs.data(), first, count * sizeof(int64_t));
  std::memcpy(targets.data(), first + B_, count * sizeof(int64_t));
  return T;
}

int64_t Batcher::next(std::vector<int64_t>& inputs, std::vector<int64_t>& targets) {
  if (pos_ >= windows_) return 0;
  const int64_t T = window(pos_, inputs, targets);
  ++pos_;
  return T;
}

void Batcher::seek(int64_t k) {
  if (k < 0 || k > windows_)
    throw InputError(
        fmt::format("{}: window position {} is outside the epoch's {} windows "
                    "(batch {}, window length {})",
                    where_, k, windows_, B_, seq_));
  pos_ = k;
}

}  // namespace lstmgrad::data
