// `lstmgrad train`, `lstmgrad eval`, `lstmgrad sample`: language models on text.
#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <thread>

#include "cli/commands.hpp"
#include "cli/mpi_collective.hpp"
#include "lstmgrad/error.hpp"
#include "lstmgrad/threads.hpp"
#include "lstmgrad/train.hpp"

namespace lstmgrad::cli {

namespace {

namespace fs = std::filesystem;

// --data DIR: train.txt, valid.txt, test.txt, or PTB's ptb.{train,valid,test}.txt.
void resolve_data_dir(TrainOptions& o, const fs::path& dir) {
  if (!fs::is_directory(dir))
    throw InputError(fmt::format("--data {}: not a folder", dir.string()));
  for (const char* prefix : {"", "ptb."}) {
    const fs::path train = dir / fmt::format("{}train.txt", prefix);
    if (!fs::exists(train)) continue;
    if (o.train.empty()) o.train = train;  // --train given beside --data wins
    for (auto [name, dst] : {std::pair{"valid", &o.valid}, std::pair{"test", &o.test}}) {
      const fs::path p = dir / fmt::format("{}{}.txt", prefix, name);
      if (dst->empty() && fs::exists(p)) *dst = p;
    }
    return;
  }
  throw InputError(
      fmt::format("--data {}: holds neither train.txt nor ptb.train.txt", dir.string()));
}

// Every rank of a job that stops at its start waits here until each has arrived (rank 0 with its
// message written), so that none exits, and none is ended by mpirun, before rank 0 has said why.
void leave_together(Collective& world) {
  world.all_gather(std::span<const std::byte>(), "the end of a job that did not start");
}

// Rank 0 of a job that stopped at its start: the one line for every rank, written here rather than
// in main, before the job object's MPI_Finalize, then exit code 2 once all have met.
void say_why_the_job_stopped(const char* message, Collective& world) {
  std::fprintf(stderr, "lstmgrad: error: %s\n", message);
  std::fflush(stderr);
  set_exit_code(2);
  leave_together(world);
}

void register_train(CLI::App& app) {
  auto o = std::make_shared<TrainOptions>();
  auto data_dir = std::make_shared<std::string>();
  auto threads = std::make_shared<int>(0);
  CLI::App* cmd = app.add_subcommand("train", "Train an LSTM language model on text");
  cmd->add_option("--train", o->train, "Training text");
  cmd->add_option("--valid", o->valid, "Validation text (checked after each epoch)");
  cmd->add_option("--test", o->test, "Test text (evaluated with the best model at the end)");
  cmd->add_option("--data", *data_dir, "Folder with train/valid/test.txt or ptb.*.txt");
  cmd->add_option("--level", o->level, "word (whitespace + <eos> per line) or char")
      ->check(CLI::IsMember({"word", "char"}))
      ->capture_default_str();
  cmd->add_option("--layers", o->layers, "LSTM layers")->capture_default_str();
  auto hidden = std::make_shared<std::vector<int64_t>>();
  cmd->add_option("--hidden", *hidden,
                  "Hidden units per layer: one number for every layer, or one per layer "
                  "(1150,1150,400)")
      ->delimiter(',')
      ->default_str("200");
  cmd->add_flag("--peephole", o->peephole,
                "Peephole connections: i and f see s_prev, o sees s (rnn.weight_peephole_l{k})");
  cmd->add_flag("--layer-norm", o->layer_norm,
                "Layer-normalised LSTM (Ba et al.): LN on the input and recurrent pre-activations "
                "and on s before tanh (gains start at 1, biases at 0)");
  cmd->add_option("--proj", o->proj,
                  "Projection (LSTMP, PyTorch's proj_size): every layer outputs h = (o tanh s) "
                  "W_hr^T, this wide (rnn.weight_hr_l{k}); 0: none")
      ->capture_default_str();
  cmd->add_option("--embed", o->embed, "Embedding width")->capture_default_str();
  cmd->add_option("--seq", o->seq, "Unrolled steps per window (BPTT length)")
      ->capture_default_str();
  cmd->add_option("--batch", o->batch, "Parallel streams")->capture_default_str();
  auto* epochs = cmd->add_option("--epochs", o->epochs, "Epochs")->capture_default_str();
  cmd->add_option("--lr", o->lr, "Learning rate")->capture_default_str();
  cmd->add_option("--lr-decay", o->lr_decay, "Divide the lr by this each epoch after --decay-after")
      ->capture_default_str();
  cmd->add_option("--decay-after", o->decay_after, "Epochs at the full lr before --lr-decay")
      ->capture_default_str();
  cmd->add_option("--plateau-decay", o->plateau_decay,
                  "Divide the lr by this when validation stops improving")
      ->capture_default_str();
  cmd->add_option("--clip", o->clip, "Clip the global gradient norm (0: off)")
      ->capture_default_str();
  cmd->add_option("--dropout", o->dropout, "Non-recurrent dropout")->capture_default_str();
  add_regularization_options(cmd, o->reg, o->tie_weights);
  add_zoneout_options(cmd, o->zoneout_h, o->zoneout_s);
  cmd->add_option("--init", o->init, "Every parameter uniform(-init, init)")->capture_default_str();
  cmd->add_option("--init-scheme", o->init_scheme,
                  "uniform (every parameter as --init), or awd: embedding and readout weights as "
                  "--init, readout bias 0, each LSTM layer uniform(+-1/sqrt(H_k)) (AWD-LSTM's)")
      ->check(CLI::IsMember({"uniform", "awd"}))
      ->capture_default_str();
  cmd->add_option("--optimizer", o->optimizer,
                  "sgd, adam, asgd (averaged SGD), or nt-asgd (SGD, then averaged SGD once "
                  "validation stops improving: AWD-LSTM)")
      ->check(CLI::IsMember({"sgd", "adam", "asgd", "nt-asgd"}))
      ->capture_default_str();
  cmd->add_option("--weight-decay", o->weight_decay,
                  "Add this times the parameters to the clipped gradient (torch.optim's)")
      ->capture_default_str();
  cmd->add_flag("--bptt-jitter", o->bptt_jitter,
                "Draw each window's length as AWD-LSTM (about --seq, sometimes --seq/2) and "
                "scale its lr by length/seq");
  cmd->add_option("--nonmono", o->nonmono,
                  "nt-asgd and --finetune: a validation is compared with the checks before the "
                  "last N (the non-monotone interval)")
      ->capture_default_str();
  cmd->add_option("--eval-every", o->eval_every,
                  "Also validate every N updates (0: at epoch ends only)")
      ->capture_default_str();
  cmd->add_option("--finetune", o->finetune,
                  "Start from this run's best model with averaged SGD and stop when validation "
                  "stops improving (AWD-LSTM's finetune); writes into --out");
  cmd->add_option("--loss", o->loss,
                  "mean over T*B, or batch_mean (per-step batch mean summed over T: Zaremba)")
      ->check(CLI::IsMember({"mean", "batch_mean"}))
      ->capture_default_str();
  cmd->add_option("--dtype", o->dtype, "f32 or f64")
      ->check(CLI::IsMember({"f32", "f64"}))
      ->capture_default_str();
  cmd->add_option("--precision", o->precision,
                  "With --dtype f32 on the CPU: f32, or bf16 (bfloat16 GEMM operands with "
                  "float32 sums; AVX512_BF16)")
      ->check(CLI::IsMember({"f32", "bf16"}))
      ->capture_default_str();
  cmd->add_option("--seed", o->seed, "Random seed")->capture_default_str();
  cmd->add_option("--threads", *threads,
                  "Threads (0: the cores, fewer while the machine is busy; under mpirun the cores "
                  "over the processes on each machine)")
      ->capture_default_str();
  auto comm_timeout = std::make_shared<double>(60);
  cmd->add_option("--comm-timeout", *comm_timeout,
                  "Under mpirun or srun: seconds a process waits for another before it ends the "
                  "job, naming the rank that does not answer")
      ->check(CLI::Range(1.0, 86400.0))
      ->capture_default_str();
  cmd->add_option("--comm-overlap", o->comm_overlap,
                  "Under mpirun or srun: start summing each piece of the gradient as soon as the "
                  "backward has made it final (on), or after the backward (off); the same results")
      ->capture_default_str();
  cmd->add_option("--out", o->out, "Run folder")->capture_default_str();
  cmd->add_option("--resume", o->resume, "Continue the run in this folder");
  cmd->add_option("--max-steps", o->max_steps, "Stop after this many updates (0: no limit)");
  cmd->add_option("--checkpoint-every", o->checkpoint_every, "Also checkpoint every N updates");
  cmd->add_option("--on-nonfinite", o->on_nonfinite,
                  "A NaN or infinite loss or gradient: stop (keep the last checkpoint) or skip "
                  "the update")
      ->capture_default_str();
  cmd->add_option("--eval-batch", o->eval_batch, "Validation batch (default: --batch)");
  cmd->add_flag("--quiet", o->quiet, "No progress output");
  auto* device = add_device_option(cmd, o->device);
  cmd->callback([o, cmd, data_dir, threads, epochs, device, comm_timeout, hidden] {
    if (hidden->size() == 1) o->hidden = hidden->front(), o->hidden_layers.clear();
    if (hidden->size() > 1) {
      o->hidden = hidden->back(), o->hidden_layers = *hidden;
      bool uniform = true;
      for (int64_t w : *hidden) uniform = uniform && w == o->hidden;
      if (uniform)
        o->hidden_layers.clear();  // 200,200: the same model as 200 (a projection's
                                   // cells are listed by the trainer's shape_config)
    }
    // Started by mpirun or srun with several processes: one model, data-parallel over them.
    const Launched job = launched_job(*comm_timeout);
    o->device_given = device->count() > 0;
    o->threads = *threads;  // applied by the trainer (on --resume, the run's own by default)
    if (job.world && o->threads == 0)
      o->threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / job.local);
    // The flags given (--finetune takes the others from the run it starts from).
    for (const CLI::Option* opt : cmd->get_options())
      if (opt->count() > 0 && !opt->get_lnames().empty())
        o->given.push_back("--" + opt->get_lnames()[0]);
    if (!data_dir->empty()) o->given.insert(o->given.end(), {"--train", "--valid", "--test"});
    try {
      try {
        if (!data_dir->empty()) resolve_data_dir(*o, *data_dir);
        if (o->resume.empty() && o->finetune.empty() && o->train.empty())
          throw InputError(
              "train: give --train FILE or --data DIR (or --resume DIR, or --finetune DIR)");
      } catch (const InputError& e) {
        // The other ranks wait for this one at the start of the job: stop them too.
        if (!job.world) throw;
        refuse_training_start(*job.world, e.what());
      }
      o->epochs_given = epochs->count() > 0;
      set_exit_code(job.world ? run_training(*o, *job.world) : run_training(*o));
    } catch (const InputError& e) {
      // Several processes: the start every rank refused (a later error ends the job in
      // run_training). Rank 0 says why here, not in main: the job must not end before its line is
      // written, and mpirun ends it at the first rank that exits non-zero.
      if (!job.world) throw;
      say_why_the_job_stopped(e.what(), *job.world);
    } catch (const StoppedByOtherRank& e) {
      set_exit_code(e.code());  // rank 0 prints the message
      leave_together(*job.world);
    }
  });
}

void register_eval(CLI::App& app) {
  auto o = std::make_shared<EvalOptions>();
  auto json = std::make_shared<bool>(false);
  auto threads = std::make_shared<int>(0);
  CLI::App* cmd = app.add_subcommand("eval", "Loss and perplexity (or bits per char) on a text");
  cmd->add_option("--model", o->model, "Model written by lstmgrad train")->required();
  cmd->add_option("--data", o->data, "Text file")->required();
  cmd->add_option("--batch", o->batch, "Streams (1: the sequential protocol papers use)")
      ->capture_default_str();
  cmd->add_option("--seq", o->seq, "Window length (state carried between windows)")
      ->capture_default_str();
  cmd->add_option("--dtype", o->dtype, "f32 or f64")
      ->check(CLI::IsMember({"f32", "f64"}))
      ->capture_default_str();
  cmd->add_option("--precision", o->precision,
                  "With --dtype f32 on the CPU: f32, or bf16 (bfloat16 GEMM operands with "
                  "float32 sums; AVX512_BF16)")
      ->check(CLI::IsMember({"f32", "bf16"}))
      ->capture_default_str();
  cmd->add_option(
      "--threads", *threads,
      "Threads (0: the cores; under mpirun the cores over the processes on each machine)");
  cmd->add_option("--cache-window", o->cache_window,
                  "Continuous cache (Grave et al. 2016): each stream's last N positions "
                  "(0: no cache)")
      ->capture_default_str();
  cmd->add_option("--cache-theta", o->cache_theta,
                  "Cache attention: softmax of theta h_i . h_t over the remembered positions")
      ->capture_default_str();
  cmd->add_option("--cache-lambda", o->cache_lambda,
                  "Cache weight: p = (1 - lambda) p_model + lambda p_cache")
      ->capture_default_str();
  cmd->add_flag("--json", *json, "Machine-readable output");
  add_device_option(cmd, o->device);
  auto* dtype = cmd->get_option("--dtype");
  cmd->callback([o, json, threads, dtype] {
    // Under mpirun or srun: the streams split among the processes; rank 0 prints.
    const Launched job = launched_job(60);
    lstmgrad::set_threads(
        job.world && *threads == 0
            ? std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / job.local)
            : *threads);
    // --device cuda computes in float32: the default --dtype follows; an explicit other one (or
    // --precision) is refused with the other checks of the flags, where every rank of a job
    // agrees before one of them says why (evaluate_file).
    if (o->device == "cuda" && dtype->count() == 0) o->dtype = "f32";
    EvalResult r;
    try {
      r = job.world ? evaluate_file(*o, *job.world) : evaluate_file(*o);
    } catch (const InputError& e) {
      if (!job.world) throw;
      say_why_the_job_stopped(e.what(), *job.world);
      return;
    } catch (const StoppedByOtherRank& e) {
      set_exit_code(e.code());  // rank 0 prints the message
      leave_together(*job.world);
      return;
    }
    if (job.world && job.world->rank() != 0) return;
    if (*json) {
      std::cout << nlohmann::json{{"loss", r.loss},
                                  {"ppl", r.ppl},
                                  {"bpc", r.bpc},
                                  {"tokens", r.tokens}}
                       .dump()
                << "\n";
    } else {
      fmt::print("{}: loss {:.4f} nats/token, perplexity {:.2f}, {:.4f} bits/token, {} tokens\n",
                 o->data.string(), r.loss, r.ppl, r.bpc, r.tokens);
    }
  });
}

void register_sample(CLI::App& app) {
  auto o = std::make_shared<SampleOptions>();
  CLI::App* cmd = app.add_subcommand("sample", "Generate text from a trained model");
  cmd->add_option("--model", o->model, "Model written by lstmgrad train")->required();
  cmd->add_option("--prime", o->prime, "Text to start from")->capture_default_str();
  cmd->add_option("--length", o->length, "Tokens to generate")->capture_default_str();
  cmd->add_option("--temperature", o->temperature, "Below 1: safer; above 1: wilder")
      ->capture_default_str();
  cmd->add_option("--seed", o->seed, "Random seed")->capture_default_str();
  add_device_option(cmd, o->device, "cpu (float64), or cuda (float32 on an NVIDIA GPU)");
  cmd->callback([o] { std::cout << sample_text(*o) << "\n"; });
}

}  // namespace

const CommandRegistrar kTrainRegistrar(50, register_train);
const CommandRegistrar kEvalRegistrar(51, register_eval);
const CommandRegistrar kSampleRegistrar(52, register_sample);

}  // namespace lstmgrad::cli
