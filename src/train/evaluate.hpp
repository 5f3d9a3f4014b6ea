// Evaluation over a token stream: B streams, windows of `seq`, state carried, no updates.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "lstmgrad/cuda.hpp"
#include "lstmgrad/lstm.hpp"
#include "train/neural_cache.hpp"

namespace lstmgrad::train {

struct StreamLoss {
  double sum = 0;      // nats, summed over the predictions
  int64_t tokens = 0;  // predictions made
  double mean() const { return tokens ? sum / static_cast<double>(tokens) : 0; }
};

// B = 1 is the sequential protocol papers use for test perplexity (every token but the first is
// predicted once, from everything before it). `count` > 0: only the streams [first, first +
// count) of the B (one rank's share in data-parallel training; the shares' sums add up to the
// whole's). `cache` (may be null): the loss is its mixture's (one NeuralCache for the streams
// evaluated, built for count or B of them, with empty histories).
template <class Real>
StreamLoss evaluate_stream(LanguageModel<Real>& lm, std::span<const Real> params,
                           std::span<const int64_t> ids, int64_t B, int64_t seq, const char* where,
                           int64_t first = 0, int64_t count = 0,
                           NeuralCache<Real>* cache = nullptr);

// The same on the GPU with the parameters already on the device (set_params); uses the model's
// carried state (reset first, left carried at the end).
StreamLoss evaluate_stream(cuda::LanguageModel& lm, std::span<const int64_t> ids, int64_t B,
                           int64_t seq, const char* where);

}  // namespace lstmgrad::train
