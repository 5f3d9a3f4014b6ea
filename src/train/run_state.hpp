// What a training run must save to continue exactly where it stopped (src/train/checkpoint.cpp).
#pragma once
#include <cstdint>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "lstmgrad/model.hpp"
#include "lstmgrad/optimizer.hpp"

namespace lstmgrad::train {

struct RunState {
  int64_t epoch = 1;            // the epoch in progress (1-based)
  int64_t window = 0;           // the next window of that epoch
  int64_t step = 0;             // updates done
  int64_t plateau_decays = 0;   // times the lr was divided for a validation plateau
  double best_valid = 0;        // best validation loss so far (0: none yet)
  double best_epoch_valid = 0;  // best end-of-epoch validation loss (drives the plateau decay)
  double epoch_loss_sum = 0;    // training loss (nats) summed over this epoch's tokens so far
  int64_t epoch_tokens = 0;
  int64_t skipped = 0;                // updates skipped for a non-finite loss or gradient
  double wall_s = 0;                  // training time before this process
  int64_t offset = 0;                 // --bptt-jitter: where the next window starts in the streams
  std::vector<double> valid_history;  // NT-ASGD's and --finetune's checks (validation losses)
  int64_t asgd_from = -1;             // averaging began after this many updates (-1: not averaging)
  int64_t asgd_steps = 0;             // the averaging optimizer's own steps
  double asgd_eta = 0;                // and the lr its next step uses (Optimizer::eta)
  bool finished = false;              // --finetune: the non-monotone rule ended the training
  std::string rng;                    // std::mt19937_64 state
  std::vector<std::string> metrics;   // metrics.jsonl lines so far
};

// A checkpoint: parameters, optimizer state, the carried state and RunState, in one file written
// atomically, so that a crash at any moment leaves the previous checkpoint whole.
template <class Real>
struct Checkpoint {
  ModelConfig cfg;
  std::vector<std::string> vocab;
  std::string level;
  std::string options_json;  // the TrainOptions of the run
  std::vector<Real> params;
  std::vector<Real> m, v;  // Adam moments (empty for SGD)
  std::vector<Real> ax;    // ASGD's average (empty before averaging starts)
  int64_t optimizer_steps = 0;
  std::vector<Real> h, s;  // [L,B,H] state carried into the next window
  RunState run;
};

// The random-number state a RunState stores; InputError naming `where` when it is not one.
std::mt19937_64 rng_from_state(const std::string& state, const std::string& where);

template <class Real>
void write_checkpoint(const std::filesystem::path& path, const Checkpoint<Real>& c);
// Reads and checks on its own what the file can show: the config against the tensors (before any
// allocation), every value finite (Adam's v also >= 0), counts >= 0, the random-number state,
// moments of the parameters' size, carry.h and carry.s alike, no other tensor. What needs the
// run's options and text (check_resumable, the trainer) comes after. InputError naming the file
// and the field or tensor.
template <class Real>
Checkpoint<Real> read_checkpoint(const std::filesystem::path& path);

}  // namespace lstmgrad::train
