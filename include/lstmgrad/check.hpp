// lstmgrad: the three-way gradient check on a random model (`lstmgrad check`).
// Hand-derived BPTT (LanguageModel<double>) against the autodiff tape (ad::tape_lm) and against
// central finite differences, every tensor: parameters, the initial state, dense inputs.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "lstmgrad/model.hpp"
#include "lstmgrad/regularize.hpp"

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
  // The finite differences' step. 1e-3 suits smooth objectives; layer norm of a row whose
  // variance is near 0 (a row a dropout mask zeroed) bends on the scale sqrt(eps) = 3e-3, where
  // a step of 1e-4 keeps the stencil's O(step^4) term small.
  double fd_step = 1e-3;
  // AWD-LSTM's regularisers on both (lstmgrad/regularize.hpp): the engine draws its masks from
  // mask_seed(), the tape is given the same masks (draw_masks), finite differences see them fixed.
  Regularization reg;
  uint64_t mask_seed() const { return seed * 0x9e3779b97f4a7c15ULL + 12345; }
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
  double loss_hand = 0, loss_tape = 0;  // the objective (CE + AR + TAR)
  double ce_hand = 0, ce_tape = 0;      // its cross-entropy part
  std::vector<CheckRow> rows;
  bool ok = true;
};

CheckReport run_check(const CheckOptions& o);

// `lstmgrad check --device cuda`: the CUDA engine (float32, TF32 off) against the CPU float64
// hand BPTT on run_check's random problem: the loss, the final state, every gradient (parameters,
// h0, s0, dense input), then `sgd_steps` updates of SGD with gradient clipping from the same start
// (the same batch, a dropout seed per update), every parameter compared after the last.
struct DeviceCheckOptions {
  double tol = 1e-5;   // max |device - reference| / max |reference| per tensor (float32)
  int sgd_steps = 10;  // 0: no trajectory
  double lr = 0.5, clip = 0.5;
  double dropout = 0;  // non-recurrent dropout in the forward passes (same masks on both)
  std::string recurrence = "auto";  // the CUDA engine's recurrent path: auto, persistent, steps
};

struct DeviceCheckRow {
  std::string tensor;  // a parameter, h_n, s_n, dh0, ds0, input; "sgd:NAME" after the updates
  std::vector<int64_t> shape;
  double max_abs = 0;  // max |reference|
  double rel = 0;      // max |device - reference| / max |reference|
  bool ok = true;
};

struct DeviceCheckReport {
  double loss_ref = 0, loss_device = 0;
  std::string device, recurrence;  // the GPU, and the recurrent path the engine took
  std::vector<DeviceCheckRow> rows;
  bool ok = true;
};

DeviceCheckReport run_device_check(const CheckOptions& o, const DeviceCheckOptions& d);

}  // namespace lstmgrad
