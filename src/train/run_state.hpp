// What a training run must save to continue exactly where it stopped (src/train/checkpoint.cpp).
#pragma once
#include <cstdint>
#include <filesystem>
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
  double wall_s = 0;                 // training time before this process
  std::string rng;                   // std::mt19937_64 state
  std::vector<std::string> metrics;  // metrics.jsonl lines so far
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
  int64_t optimizer_steps = 0;
  std::vector<Real> h, s;  // [L,B,H] state carried into the next window
  RunState run;
};

template <class Real>
void write_checkpoint(const std::filesystem::path& path, const Checkpoint<Real>& c);
template <class Real>
Checkpoint<Real> read_checkpoint(const std::filesystem::path& path);

}  // namespace lstmgrad::train
