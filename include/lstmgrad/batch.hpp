// lstmgrad: one batch of sequences, time-major, as in the batch file of docs/cli.md.
#pragma once
#include <cstdint>
#include <vector>

#include "lstmgrad/model.hpp"

namespace lstmgrad {

template <class Real>
struct Batch {
  int64_t T = 0;                   // time steps
  int64_t B = 0;                   // sequences
  std::vector<int64_t> tokens;     // [T,B] token ids, when cfg.input == embedding
  std::vector<Real> dense;         // [T,B,X] input vectors, when cfg.input == dense
  std::vector<int64_t> target;     // [T,B] class ids, or ...
  std::vector<Real> target_probs;  // [T,B,V] soft targets (each row a probability vector)
  std::vector<Real> h0, s0;        // [L,B,H] initial state; empty means zeros

  bool soft_targets() const { return !target_probs.empty(); }
};

// Checks every size and index of `b` against `cfg`; `where` names the source for the message
// (a file name). Throws InputError.
template <class Real>
void validate_batch(const ModelConfig& cfg, const Batch<Real>& b, const char* where);

}  // namespace lstmgrad
