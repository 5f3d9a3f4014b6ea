// lstmgrad: the three-way gradient check on a random model (`lstmgrad check`).
// Hand-derived BPTT (LanguageModel<double>) against the autodiff tape (ad::tape_lm) and against
// central finite differences, every tensor: parameters, the initial state, dense inputs.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "lstmgrad/model.hpp"

namespace lstmgrad {

struct CheckOptions {
  ModelConfig cfg{InputKind::embedding, Readout::linear, 5, 3, 4, 2};
  int64_t T = 3, B = 2;
  bool soft_targets = false;
  bool initial_state = true;  // random non-zero h0, s0 (else zeros)
  Reduction reduction = Reduction::mean;
  uint64_t seed = 1;
  size_t fd_max_coords = 64;  // finite differences on at most this many coordinates per tensor
  double tape_tol = 1e-10;    // relative to each tensor's max-abs
  double fd_tol = 1e-6;
};

struct CheckRow {
  std::string tensor;
  std::vector<int64_t> shape;
  double max_abs = 0;    // max |hand gradient|
  double tape_rel = 0;   // max |hand - tape| / max |hand|
  double fd_rel = 0;     // max |hand - fd| / max |hand| over the checked coordinates
  size_t fd_coords = 0;  // how many coordinates finite differences checked
  bool ok = true;
};

struct CheckReport {
  double loss_hand = 0, loss_tape = 0;
  std::vector<CheckRow> rows;
  bool ok = true;
};

CheckReport run_check(const CheckOptions& o);

}  // namespace lstmgrad
