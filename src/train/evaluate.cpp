#include "train/evaluate.hpp"

#include "lstmgrad/data.hpp"

namespace lstmgrad::train {

template <class Real>
StreamLoss evaluate_stream(LanguageModel<Real>& lm, std::span<const Real> params,
                           std::span<const int64_t> ids, int64_t B, int64_t seq, const char* where,
                           int64_t first, int64_t count, NeuralCache<Real>* cache) {
  const ModelConfig& c = lm.config();
  data::Batcher batcher(ids, B, seq, false, where);
  const bool part = count > 0;
  Batch<Real> b;
  b.B = part ? count : B;
  b.h0.assign(static_cast<size_t>(c.h_offset(c.L, b.B)), Real(0));
  b.s0.assign(static_cast<size_t>(c.s_offset(c.L, b.B)), Real(0));
  std::vector<int64_t> tokens, target;  // the whole window, when this is a part of it
  StreamLoss out;
  for (int64_t k = 0; k < batcher.windows(); ++k) {
    if (part) {
      b.T = batcher.window(k, tokens, target);
      b.tokens.resize(static_cast<size_t>(b.T * count)), b.target.resize(b.tokens.size());
      for (int64_t t = 0; t < b.T; ++t) {
        std::copy_n(tokens.begin() + t * B + first, count, b.tokens.begin() + t * count);
        std::copy_n(target.begin() + t * B + first, count, b.target.begin() + t * count);
      }
    } else {
      b.T = batcher.window(k, b.tokens, b.target);
    }
    const double plain = lm.infer(params, b, Reduction::sum);  // the training forward's bits
    out.sum +=
        cache ? cache->score(lm.top_output().data(), lm.probs().data(), c.V, b.target.data(), b.T)
              : plain;
    out.tokens += b.T * b.B;
    std::copy(lm.h_n().begin(), lm.h_n().end(), b.h0.begin());  // carry the state
    std::copy(lm.s_n().begin(), lm.s_n().end(), b.s0.begin());
  }
  return out;
}

StreamLoss evaluate_stream(cuda::LanguageModel& lm, std::span<const int64_t> ids, int64_t B,
                           int64_t seq, const char* where) {
  data::Batcher batcher(ids, B, seq, false, where);
  Batch<float> b;  // no h0/s0: the state stays on the device from window to window
  b.B = B;
  StreamLoss out;
  lm.reset_state();
  for (int64_t k = 0; k < batcher.windows(); ++k) {
    b.T = batcher.window(k, b.tokens, b.target);
    out.sum += lm.forward(b, Reduction::sum);
    out.tokens += b.T * B;
    lm.carry_state();
  }
  return out;
}

template StreamLoss evaluate_stream<float>(LanguageModel<float>&, std::span<const float>,
                                           std::span<const int64_t>, int64_t, int64_t, const char*,
                                           int64_t, int64_t, NeuralCache<float>*);
template StreamLoss evaluate_stream<double>(LanguageModel<double>&, std::span<const double>,
                                            std::span<const int64_t>, int64_t, int64_t, const char*,
                                            int64_t, int64_t, NeuralCache<double>*);

}  // namespace lstmgrad::train
