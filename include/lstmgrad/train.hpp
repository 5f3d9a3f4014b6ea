// lstmgrad: training an LSTM language model on text, evaluating it, sampling from it.
//
// Batching as word_language_model and Zaremba et al. do: B contiguous streams, windows of `seq`
// steps, the state carried from window to window and never back-propagated across windows.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "lstmgrad/collective.hpp"
#include "lstmgrad/model.hpp"
#include "lstmgrad/regularize.hpp"

namespace lstmgrad {

struct TrainOptions {
  std::filesystem::path train, valid, test;       // text files (valid/test optional)
  std::string level = "word";                     // word | char
  int64_t layers = 2, hidden = 200, embed = 200;  // hidden: every layer's, or the top one's
  // --hidden 1150,1150,400: each layer's width (ModelConfig::hidden; the last is `hidden`);
  // empty: every layer `hidden`.
  std::vector<int64_t> hidden_layers;
  int64_t proj = 0;  // the projection's size P (ModelConfig::proj); 0: none

  bool peephole = false;  // the cell with peepholes (ModelConfig::peephole)
  int64_t seq = 35, batch = 20, epochs = 13;
  bool epochs_given = false;  // on --resume, --epochs given on the command line extends the run
  double lr = 1.0;
  double lr_decay = 1.0;       // divide the lr by this before each epoch after `decay_after`
  int64_t decay_after = 0;     // (epochs 1..decay_after run at lr)
  double plateau_decay = 1.0;  // divide the lr by this when validation loss does not improve
  double clip = 0;             // global gradient norm; 0 = none
  double dropout = 0;          // non-recurrent (embedding output, between layers, before readout)
  // AWD-LSTM's regularisers (lstmgrad/regularize.hpp; CPU only): locked and embedding dropout,
  // weight drop, AR and TAR, new masks at every update; and the tied embedding and readout.
  Regularization reg;
  bool tie_weights = false;
  double zoneout_h = 0, zoneout_s = 0;  // zoneout on h and s (ModelConfig::zoneout_h, zoneout_s)
  bool layer_norm = false;              // the layer-normalised cell (ModelConfig::layer_norm)
  double init = 0.1;                    // every parameter uniform(-init, init)
  // "uniform": every parameter uniform(-init, init). "awd": as AWD-LSTM initialises, the
  // embedding and readout weights uniform(-init, init), the readout bias 0, each LSTM layer's
  // parameters uniform(+-1/sqrt(H_k)) (PyTorch nn.LSTM's default, which AWD-LSTM keeps).
  std::string init_scheme = "uniform";
  std::string optimizer = "sgd";
  std::string loss = "mean";  // mean over T*B, or batch_mean (Zaremba: batch mean summed over T)
  std::string dtype = "f32";
  // The CPU float32 engine's GEMM operands: f32, or bf16 (lstmgrad/precision.hpp; the run's own
  // validations and test too).
  std::string precision = "f32";
  std::string device = "cpu";  // cpu, or cuda (float32 on an NVIDIA GPU)
  bool device_given = false;   // on --resume, --device given on the command line overrides
  uint64_t seed = 0;
  int threads = 0;  // 0 = leave the BLAS default
  std::filesystem::path out = "run";
  std::filesystem::path resume;  // a run folder to continue
  int64_t max_steps = 0;         // stop after this many updates in all (0 = no limit)
  int64_t checkpoint_every = 0;  // also checkpoint every N updates (0 = per epoch only)
  // A non-finite loss or gradient norm: "stop" (exit 1, the last checkpoint kept as it is) or
  // "skip" (the update is not applied and counted in metrics.jsonl's "skipped_nonfinite"; CPU).
  std::string on_nonfinite = "stop";
  // AWD-LSTM's training loop (docs/cli.md, "AWD-LSTM's optimizer"): the optimizer adds
  // weight_decay * p to the clipped gradient; --bptt-jitter draws each window's length (and scales
  // its lr by length / seq); nt-asgd switches SGD to averaged SGD when validation stops improving
  // (`nonmono`); `eval_every` validates every N updates too; `finetune` starts from a run's model
  // with ASGD and stops by the same rule.
  double weight_decay = 0;
  bool bptt_jitter = false;
  int64_t nonmono = 5;
  int64_t eval_every = 0;          // 0: validate at epoch ends only
  std::filesystem::path finetune;  // a run folder
  std::vector<std::string> given;  // the flags given on the command line (--finetune's merge)
  int64_t eval_batch = 0;          // validation batch (0 = --batch)
  bool test_sequential = true;     // test with batch 1, as papers report
  bool quiet = false;
  // On several processes: each piece of the gradient's sum starts as soon as the backward has
  // made it final (the readout's while the LSTM's backward runs, layer k's while layer k-1's
  // runs); false: every piece after the backward. The same pieces either way, so the same bits.
  bool comm_overlap = true;
};

// Runs (or resumes) training; writes model.safetensors, best.safetensors, checkpoint.safetensors
// and metrics.jsonl into opts.out. Returns the process exit code.
int run_training(const TrainOptions& opts);

// The same, data-parallel over the processes of `world` (docs/scaling.md): each rank trains
// batch / world.size() of the streams, the gradients are summed in a fixed order, every rank
// applies the same update, and rank 0 alone prints and writes the run's files. Every rank calls
// it with the same options. Throws StoppedByOtherRank on the ranks other than 0 when the job stops
// for an error that rank 0 reports.
int run_training(const TrainOptions& opts, Collective& world);

// For a rank of `world` that cannot call run_training (its options are wrong): meets the other
// ranks at the start of the job, where all of them stop. Throws InputError on rank 0 (the first
// failing rank's message), StoppedByOtherRank on the others.
[[noreturn]] void refuse_training_start(Collective& world, const std::string& error);

// The same meeting for any job of several processes that reads its input first (eval): `error`
// is why this rank cannot go on, or empty. Returns when no rank failed; else throws as above.
void agree_to_start(Collective& world, const std::string& error);

struct EvalResult {
  double loss = 0;  // nats per token
  double ppl = 0, bpc = 0;
  int64_t tokens = 0;
};

struct EvalOptions {
  std::filesystem::path model, data;
  int64_t batch = 1, seq = 35;
  std::string dtype = "f64";
  std::string precision = "f32";  // with dtype f32 on the CPU: f32 or bf16 GEMM operands
  std::string device = "cpu";     // cuda: float32 on an NVIDIA GPU (dtype "f32", precision "f32")
  // The continuous cache of Grave et al. 2016 (train/neural_cache.hpp): each stream's last
  // cache_window positions (0: none), attention flatness cache_theta, mixture weight cache_lambda.
  int64_t cache_window = 0;
  double cache_theta = 1.0, cache_lambda = 0.1;
};

EvalResult evaluate_file(const EvalOptions& o);
// The same over the processes of `world` (mpirun): each evaluates its share of the --batch streams
// and every rank returns the whole text's result; a batch that does not split among them (batch
// 1, the sequential protocol) is evaluated by rank 0 alone (the others return an empty result).
EvalResult evaluate_file(const EvalOptions& o, Collective& world);

struct SampleOptions {
  std::filesystem::path model;
  std::string prime;
  int64_t length = 200;
  double temperature = 1.0;
  uint64_t seed = 0;
  std::string device = "cpu";  // cpu (float64), or cuda (float32 on an NVIDIA GPU)
};

// Returns the prime followed by the sampled continuation.
std::string sample_text(const SampleOptions& o);

}  // namespace lstmgrad
