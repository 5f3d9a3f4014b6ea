// The continuous cache of Grave et al. 2016 ("Improving neural language models with a continuous
// cache") at evaluation: each stream remembers the top layer's outputs h_i of its last N
// positions with the word y_i that followed each, and a prediction at position t mixes the
// model's distribution with a distribution over those remembered words:
//
//   a_i = softmax_i(theta h_i . h_t)   over the (at most N) remembered positions i < t
//   p_cache(w) = sum_{i: y_i = w} a_i
//   p(w) = (1 - lambda) p_model(w) + lambda p_cache(w)
//
// Only p(target) is needed for the loss, so a position costs one product of the history [n,H]
// with h_t and a pass over n weights, never a pass over the vocabulary. Semantics and where they
// differ from AWD-LSTM's pointer.py: docs/cli.md, "eval --cache-window".
#pragma once
#include <cstdint>
#include <vector>

namespace lstmgrad::train {

struct CacheOptions {
  int64_t window = 0;   // N, the positions each stream remembers; 0: no cache
  double theta = 1.0;   // the flatness of the attention over them
  double lambda = 0.1;  // the weight of the cache in the mixture, in [0, 1]
};

// Throws InputError naming the flag: window >= 0, theta finite, 0 <= lambda <= 1.
void validate_cache(const CacheOptions& o);

template <class Real>
class NeuralCache {
 public:
  // B streams of H-wide outputs; the history of each starts empty. Allocates all it needs.
  NeuralCache(int64_t B, int64_t H, const CacheOptions& o);

  // One window of T steps: h [T,B,H] the top layer's outputs (the readout's input), p [T,B,V] the
  // model's probabilities, target [T,B] the next words. Returns the sum over the T*B positions of
  // -log p(target), the mixture's; then remembers every position (the history carries over to
  // the next window, and a position sees the earlier positions of its own window).
  double score(const Real* h, const Real* p, int64_t V, const int64_t* target, int64_t T);

 private:
  // -log of the mixture at one position of stream b, before it is remembered.
  double position_loss(int64_t b, const Real* h, double p_target, int64_t target);
  void remember(int64_t b, const Real* h, int64_t next);

  int64_t B_, H_, N_;
  double theta_, lambda_;
  std::vector<Real> keys_;      // [B,N,H] each stream's remembered outputs, a ring
  std::vector<int64_t> next_;   // [B,N] the word that followed each
  std::vector<int64_t> count_;  // [B] how many are remembered (<= N)
  std::vector<int64_t> head_;   // [B] where the next one goes
  std::vector<Real> dots_;      // [N] h_i . h_t of one position
};

}  // namespace lstmgrad::train
