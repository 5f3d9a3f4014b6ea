// `lstmgrad train`: the training loop, its schedule, validation and checkpoints.
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cassert>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <span>
#include <sstream>
#include <system_error>
#include <type_traits>

#include "data/scan.hpp"
#include "io/json_text.hpp"
#include "lstmgrad/atomic_file.hpp"
#include "lstmgrad/collective.hpp"
#include "lstmgrad/cuda.hpp"
#include "lstmgrad/data.hpp"
#include "lstmgrad/error.hpp"
#include "lstmgrad/lstm.hpp"
#include "lstmgrad/model_io.hpp"
#include "lstmgrad/optimizer.hpp"
#include "lstmgrad/threads.hpp"
#include "lstmgrad/train.hpp"
#include "train/bptt_jitter.hpp"
#include "train/evaluate.hpp"
#include "train/progress.hpp"
#include "train/run_state.hpp"

namespace lstmgrad {

namespace fs = std::filesystem;
using nlohmann::json;

namespace train {

json options_to_json(const TrainOptions& o) {
  return {{"train", o.train.string()},
          {"valid", o.valid.string()},
          {"test", o.test.string()},
          {"level", o.level},
          {"layers", o.layers},
          {"hidden", o.hidden_layers.empty() ? json(o.hidden) : json(o.hidden_layers)},
          {"proj", o.proj},
          {"on_nonfinite", o.on_nonfinite},
          {"peephole", o.peephole},
          {"embed", o.embed},
          {"seq", o.seq},
          {"batch", o.batch},
          {"epochs", o.epochs},
          {"lr", o.lr},
          {"lr_decay", o.lr_decay},
          {"decay_after", o.decay_after},
          {"plateau_decay", o.plateau_decay},
          {"clip", o.clip},
          {"dropout", o.dropout},
          {"dropout_in", o.reg.dropout_in},
          {"dropout_hid", o.reg.dropout_hid},
          {"dropout_out", o.reg.dropout_out},
          {"dropout_rec", o.reg.dropout_rec},
          {"dropout_emb", o.reg.dropout_emb},
          {"weight_drop", o.reg.weight_drop},
          {"ar", o.reg.ar},
          {"tar", o.reg.tar},
          {"tie_weights", o.tie_weights},
          {"zoneout_h", o.zoneout_h},
          {"zoneout_s", o.zoneout_s},
          {"layer_norm", o.layer_norm},
          {"init", o.init},
          {"init_scheme", o.init_scheme},
          {"optimizer", o.optimizer},
          {"loss", o.loss},
          {"dtype", o.dtype},
          {"precision", o.precision},
          {"device", o.device},
          {"seed", o.seed},
          {"eval_batch", o.eval_batch},
          {"test_sequential", o.test_sequential},
          {"weight_decay", o.weight_decay},
          {"bptt_jitter", o.bptt_jitter},
          {"nonmono", o.nonmono},
          {"eval_every", o.eval_every},
          {"finetune", o.finetune.string()}};
}

constexpr int64_t kMaxThreads = 1 << 16;

// The layer k of a parameter named "rnn.<...>_l<k>" (parameter_layout's names).
int64_t layer_of(const std::string& name) {
  return std::stoll(name.substr(name.rfind("_l") + 2));
}

// The fields of a checkpoint's stored options, each checked for its JSON type; InputError naming
// the checkpoint and the key.
class StoredOptions {
 public:
  StoredOptions(const json& j, std::string where) : j_(j), where_(std::move(where)) {}

  std::string text(const char* key) const {
    const json& v = at(key);
    if (!v.is_string()) bad(key, "expected a string", v);
    return v.get<std::string>();
  }
  int64_t integer(const char* key) const {
    const json& v = at(key);
    if (!v.is_number_integer() ||
        (v.is_number_unsigned() &&
         v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())))
      bad(key, "expected an integer", v);
    return v.get<int64_t>();
  }
  uint64_t natural(const char* key) const {
    const json& v = at(key);
    if (!v.is_number_unsigned()) bad(key, "expected an integer >= 0", v);
    return v.get<uint64_t>();
  }
  double number(const char* key) const {
    const json& v = at(key);
    if (!v.is_number()) bad(key, "expected a number", v);
    return v.get<double>();
  }
  bool flag(const char* key) const {
    const json& v = at(key);
    if (!v.is_boolean()) bad(key, "expected true or false", v);
    return v.get<bool>();
  }
  bool has(const char* key) const { return j_.contains(key); }
  // A list of integers >= 1 (the per-layer sizes).
  std::vector<int64_t> sizes(const char* key) const {
    const json& v = at(key);
    std::vector<int64_t> out;
    if (!v.is_array()) bad(key, "expected a number or a list of numbers", v);
    for (const json& e : v) {
      if (!e.is_number_integer() || e.get<int64_t>() < 1) bad(key, "expected integers >= 1", v);
      out.push_back(e.get<int64_t>());
    }
    if (out.empty()) bad(key, "expected at least one size", v);
    return out;
  }
  bool is_list(const char* key) const { return at(key).is_array(); }

 private:
  const json& at(const char* key) const {
    const auto it = j_.find(key);
    if (it == j_.end()) throw InputError(fmt::format("{} '{}': missing", where_, key));
    return *it;
  }
  [[noreturn]] void bad(const char* key, const char* what, const json& v) const {
    throw InputError(fmt::format("{} '{}': {}, got {}", where_, key, what,
                                 v.dump(-1, ' ', false, json::error_handler_t::replace)));
  }

  const json& j_;
  std::string where_;
};

// How an option is named in messages: its flag ("--seq"), or on --resume, for an option the run
// stored, the checkpoint's field ("run/checkpoint.safetensors: __metadata__
// 'lstmgrad.train_options': key 'seq'").
using OptionName = std::function<std::string(std::string_view flag)>;

// `where` names the options in messages: "run/checkpoint.safetensors: __metadata__
// 'lstmgrad.train_options': key".
TrainOptions options_from_json(const json& j, const std::string& where) {
  if (!j.is_object()) throw InputError(fmt::format("{}: expected a JSON object", where));
  const StoredOptions s(j, where + ": key");
  TrainOptions o;
  o.train = s.text("train"), o.valid = s.text("valid"), o.test = s.text("test");
  o.level = s.text("level");
  o.layers = s.integer("layers"), o.embed = s.integer("embed");
  if (s.is_list("hidden")) {  // per-layer sizes (written as a list only when they differ)
    o.hidden_layers = s.sizes("hidden");
    o.hidden = o.hidden_layers.back();
  } else {
    o.hidden = s.integer("hidden");
  }
  o.seq = s.integer("seq"), o.batch = s.integer("batch"), o.epochs = s.integer("epochs");
  o.lr = s.number("lr"), o.lr_decay = s.number("lr_decay"),
  o.decay_after = s.integer("decay_after");
  o.plateau_decay = s.number("plateau_decay"), o.clip = s.number("clip");
  o.dropout = s.number("dropout"), o.init = s.number("init");
  o.optimizer = s.text("optimizer"), o.loss = s.text("loss"), o.dtype = s.text("dtype");
  o.seed = s.natural("seed"), o.eval_batch = s.integer("eval_batch");
  o.test_sequential = s.flag("test_sequential");
  // absent: written before AWD-LSTM's loop (none of it)
  if (s.has("precision")) o.precision = s.text("precision");        // absent: before bf16 (f32)
  if (s.has("init_scheme")) o.init_scheme = s.text("init_scheme");  // absent: uniform
  if (s.has("weight_decay")) o.weight_decay = s.number("weight_decay");
  if (s.has("bptt_jitter")) o.bptt_jitter = s.flag("bptt_jitter");
  if (s.has("nonmono")) o.nonmono = s.integer("nonmono");
  if (s.has("eval_every")) o.eval_every = s.integer("eval_every");
  if (s.has("finetune")) o.finetune = s.text("finetune");
  if (s.has("threads")) {  // written by older versions
    const int64_t t = s.integer("threads");
    if (t < 0 || t > kMaxThreads)
      throw InputError(
          fmt::format("{}: key 'threads': must be in [0, {}], got {}", where, kMaxThreads, t));
    o.threads = static_cast<int>(t);
  }
  o.device = s.has("device") ? s.text("device") : std::string("cpu");
  o.peephole = s.has("peephole") && s.flag("peephole");  // absent: written before peepholes
  if (s.has("on_nonfinite")) o.on_nonfinite = s.text("on_nonfinite");
  // absent: written before the regularisers (none of them)
  for (const auto& [key, v] :
       {std::pair{"dropout_in", &o.reg.dropout_in}, std::pair{"dropout_hid", &o.reg.dropout_hid},
        std::pair{"dropout_out", &o.reg.dropout_out}, std::pair{"dropout_rec", &o.reg.dropout_rec},
        std::pair{"dropout_emb", &o.reg.dropout_emb}, std::pair{"weight_drop", &o.reg.weight_drop},
        std::pair{"ar", &o.reg.ar}, std::pair{"tar", &o.reg.tar}})
    if (s.has(key)) *v = s.number(key);
  o.tie_weights = s.has("tie_weights") && s.flag("tie_weights");
  if (s.has("zoneout_h")) o.zoneout_h = s.number("zoneout_h");  // absent: written before zoneout
  if (s.has("zoneout_s")) o.zoneout_s = s.number("zoneout_s");
  o.layer_norm = s.has("layer_norm") && s.flag("layer_norm");  // absent: written before it
  if (s.has("proj")) o.proj = s.integer("proj");               // absent: written before projections
  return o;
}

// The flag itself ("--seq"): options from the command line.
std::string flag_name(std::string_view flag) {
  return std::string(flag);
}

void validate_options(const TrainOptions& o, const OptionName& name) {
  auto positive = [&](const char* flag, int64_t v) {
    if (v < 1) throw InputError(fmt::format("{}: must be >= 1, got {}", name(flag), v));
  };
  positive("--seq", o.seq), positive("--batch", o.batch), positive("--layers", o.layers);
  positive("--hidden", o.hidden), positive("--embed", o.embed), positive("--epochs", o.epochs);
  if (!o.hidden_layers.empty()) {
    if (static_cast<int64_t>(o.hidden_layers.size()) != o.layers)
      throw InputError(fmt::format("{}: {} sizes for {} layers (one per layer, or one for all)",
                                   name("--hidden"), o.hidden_layers.size(), o.layers));
    for (int64_t w : o.hidden_layers) positive("--hidden", w);
  }
  if (o.proj < 0)
    throw InputError(fmt::format("{}: must be >= 1 (0: none), got {}", name("--proj"), o.proj));
  if (o.proj > 0 && o.peephole)
    throw InputError(fmt::format("{} and {}: the projected cell has no peepholes", name("--proj"),
                                 name("--peephole")));
  // A finite number >= low (> low when `strict`).
  auto number = [&](const char* flag, double v, double low, bool strict, const char* rule) {
    if (!std::isfinite(v) || v < low || (strict && v == low))
      throw InputError(fmt::format("{}: must be {}, got {}", name(flag), rule, v));
  };
  number("--lr", o.lr, 0, true, "> 0"), number("--init", o.init, 0, true, "> 0");
  if (o.init_scheme != "uniform" && o.init_scheme != "awd")
    throw InputError(
        fmt::format("{}: must be uniform or awd, got '{}'", name("--init-scheme"), o.init_scheme));
  number("--lr-decay", o.lr_decay, 1, false, ">= 1 (the lr is divided by it)");
  number("--plateau-decay", o.plateau_decay, 1, false, ">= 1 (the lr is divided by it)");
  number("--clip", o.clip, 0, false, ">= 0");
  if (!(o.dropout >= 0 && o.dropout < 1))
    throw InputError(fmt::format("{}: must be in [0, 1), got {}", name("--dropout"), o.dropout));
  if (o.decay_after < 0)
    throw InputError(fmt::format("{}: must be >= 0, got {}", name("--decay-after"), o.decay_after));
  if (o.eval_batch < 0)
    throw InputError(fmt::format("{}: must be >= 0, got {}", name("--eval-batch"), o.eval_batch));
  if (o.threads < 0)
    throw InputError(fmt::format("{}: must be >= 0, got {}", name("--threads"), o.threads));
  auto choice = [&](const char* flag, const std::string& v, const char* a, const char* b) {
    if (v != a && v != b)
      throw InputError(fmt::format("{}: expected {} or {}, got '{}'", name(flag), a, b,
                                   data::scan::printable(v)));
  };
  choice("--loss", o.loss, "mean", "batch_mean"), choice("--dtype", o.dtype, "f32", "f64");
  choice("--device", o.device, "cpu", "cuda");
  if (o.optimizer != "sgd" && o.optimizer != "adam" && o.optimizer != "asgd" &&
      o.optimizer != "nt-asgd")
    throw InputError(fmt::format("{}: expected sgd, adam, asgd or nt-asgd, got '{}'",
                                 name("--optimizer"), data::scan::printable(o.optimizer)));
  number("--weight-decay", o.weight_decay, 0, false, ">= 0");
  if ((o.optimizer == "nt-asgd" || !o.finetune.empty()) && o.valid.empty())
    throw InputError(
        fmt::format("{}: needs a validation text (--valid or --data): its "
                    "validations decide when to {}",
                    o.finetune.empty() ? "--optimizer nt-asgd" : "--finetune",
                    o.finetune.empty() ? "switch to averaging" : "stop"));
  if (o.nonmono < 1)
    throw InputError(
        fmt::format("{}: must be >= 1 (validations), got {}", name("--nonmono"), o.nonmono));
  if (o.eval_every < 0)
    throw InputError(fmt::format("{}: must be >= 0 (updates; 0: epoch ends only), got {}",
                                 name("--eval-every"), o.eval_every));
  if (!o.finetune.empty() && o.optimizer != "asgd")
    throw InputError(
        fmt::format("{} {}: --finetune trains with asgd", name("--optimizer"), o.optimizer));
  if (o.device == "cuda") {  // what the CUDA engine does not have yet
    const char* flag = o.weight_decay != 0        ? "--weight-decay"
                       : o.bptt_jitter            ? "--bptt-jitter"
                       : !o.finetune.empty()      ? "--finetune"
                       : o.optimizer == "asgd"    ? "--optimizer asgd"
                       : o.optimizer == "nt-asgd" ? "--optimizer nt-asgd"
                       : o.tie_weights            ? "--tie-weights"
                       : o.zoneout_h > 0          ? "--zoneout-h"
                       : o.zoneout_s > 0          ? "--zoneout-s"
                       : o.layer_norm             ? "--layer-norm"
                       : !o.hidden_layers.empty() ? "--hidden (per layer)"
                       : o.proj > 0               ? "--proj"
                                                  : regularization_flag(o.reg);
    if (flag)
      throw InputError(
          fmt::format("{} {}: the CUDA engine does not support {} yet (use --device "
                      "cpu)",
                      name("--device"), o.device, flag));
  }
  choice("--on-nonfinite", o.on_nonfinite, "stop", "skip");
  if (o.device == "cuda" && o.on_nonfinite == "skip")
    throw InputError(
        fmt::format("{} skip: the CUDA engine applies its update on the device; "
                    "use stop",
                    name("--on-nonfinite")));
  data::parse_level(o.level, name("--level"));
  if (o.device == "cuda" && o.dtype != "f32")
    throw InputError(
        fmt::format("{} {}: --device cuda trains in float32 (f32)", name("--dtype"), o.dtype));
  choice("--precision", o.precision, "f32", "bf16");
  if (o.precision == "bf16") {
    const char* why = o.dtype != "f32"    ? "--dtype f64 (bf16 rounds float32's GEMM operands)"
                      : o.device != "cpu" ? "--device cuda (the CPU's for now)"
                                          : nullptr;
    if (why) throw InputError(fmt::format("{} bf16: not with {}", name("--precision"), why));
    require_bf16();
  }
  if (o.dropout > 0 && (o.reg.dropout_in > 0 || o.reg.dropout_hid > 0 || o.reg.dropout_out > 0))
    throw InputError(fmt::format(
        "{} and {}/{}/{}: both drop at the same sites (a mask per position, or locked masks); "
        "give one or the other",
        name("--dropout"), name("--dropout-in"), name("--dropout-hid"), name("--dropout-out")));
  validate_regularization(o.reg, {InputKind::embedding, Readout::linear, 1, 1, 1, 1});
  const int64_t top = o.proj > 0 ? o.proj : o.hidden;  // what the readout reads
  if (o.tie_weights && top != o.embed)
    throw InputError(fmt::format("{} needs {} (top layer, H) equal to {} (E): got {} and {}",
                                 name("--tie-weights"), name(o.proj > 0 ? "--proj" : "--hidden"),
                                 name("--embed"), top, o.embed));
  if (o.device == "cuda") cuda::require();  // before anything is written
}

}  // namespace train

namespace train {

namespace {

using Clock = std::chrono::steady_clock;

// Training cannot go on, with nothing wrong in the input (a non-finite loss): run_training prints
// it and returns 1; the last checkpoint stays as it was.
class Halted : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A 64-bit hash of bytes, the same on every machine (splitmix64 over 8-byte words, the tail
// zero-padded): the ranks of a job compare their options, texts and parameters with it.
uint64_t content_hash(std::span<const std::byte> bytes, uint64_t h = 0) {
  auto mix = [](uint64_t z) {
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  };
  size_t k = 0;
  for (; k + 8 <= bytes.size(); k += 8) {
    uint64_t w = 0;
    std::memcpy(&w, bytes.data() + k, 8);
    h = mix(h ^ w);
  }
  uint64_t tail = 0;
  std::memcpy(&tail, bytes.data() + k, bytes.size() - k);
  return mix(h ^ tail ^ (static_cast<uint64_t>(bytes.size()) << 56));
}
template <class T>
uint64_t content_hash(std::span<const T> v, uint64_t h = 0) {
  return content_hash(std::as_bytes(v), h);
}
uint64_t content_hash(std::string_view s, uint64_t h = 0) {
  return content_hash(std::as_bytes(std::span<const char>(s.data(), s.size())), h);
}

// What each rank brings to the start of a job of several processes: the error that stops it
// (empty: none), or hashes of what it would train.
struct StartReport {
  static constexpr const char* kWhat[] = {"the options", "the training text and vocabulary",
                                          "the validation text", "the test text", "the checkpoint"};
  std::array<char, 1024> error{};
  std::array<uint64_t, 5> hashes{};
};

// The one point every rank of a job passes before any writes a file: the ranks exchange their
// StartReports, and either all start or all stop, with one message from rank 0 (the lowest
// failing rank's error, or what differs between the ranks) and exit code 2 everywhere.
class StartGate {
 public:
  explicit StartGate(Collective& world) : world_(world) {}
  bool passed() const { return passed_; }

  void pass(const StartReport& mine) {
    passed_ = true;
    std::vector<StartReport> all(static_cast<size_t>(world_.size()));
    const std::vector<std::byte> bytes = world_.all_gather(
        std::as_bytes(std::span<const StartReport>(&mine, 1)), "the start of the job");
    std::memcpy(all.data(), bytes.data(), bytes.size());
    for (int q = 0; q < world_.size(); ++q)
      if (all[q].error[0] != 0) stop(fmt::format("rank {}: {}", q, all[q].error.data()));
    for (int q = 1; q < world_.size(); ++q)
      for (size_t k = 0; k < mine.hashes.size(); ++k)
        if (all[q].hashes[k] != all[0].hashes[k])
          stop(fmt::format(
              "rank {}: {}: not the same as rank 0's; every process of a job must be given "
              "the same flags and files",
              q, StartReport::kWhat[k]));
  }

  // This rank cannot start: `error` says why.
  [[noreturn]] void fail(const std::string& error) {
    StartReport r;
    const size_t n = std::min(error.size(), r.error.size() - 1);
    std::memcpy(r.error.data(), error.data(), n);
    if (n == 0) r.error[0] = '?';
    pass(r);
    throw std::logic_error("StartGate::fail: the gate let a failed rank through");
  }

 private:
  [[noreturn]] void stop(const std::string& message) {
    if (world_.rank() == 0) throw InputError(message);
    throw StoppedByOtherRank(2);
  }

  Collective& world_;
  bool passed_ = false;
};

// SIGINT and SIGTERM while training: the first lets the update in progress finish, writes a
// checkpoint and ends the run with 128 + the signal's number (130, 143: what a shell reports for a
// process the signal ended); a second ends the process at once (every file is written atomically,
// so the last complete checkpoint survives that too). SIGXFSZ is ignored, so that a file-size
// limit reaches the writer as an error (EFBIG) the way a full disk does (ENOSPC), not as a kill.
std::atomic<int> stop_signal{0};

void on_stop_signal(int sig) {
  if (stop_signal.exchange(sig) != 0) {
    std::signal(sig, SIG_DFL);
    std::raise(sig);
  }
}

class StopSignals {
 public:
  StopSignals() {
    stop_signal = 0;
    install(SIGINT, on_stop_signal, old_[0]), install(SIGTERM, on_stop_signal, old_[1]);
    install(SIGXFSZ, SIG_IGN, old_[2]);
  }
  ~StopSignals() {
    ::sigaction(SIGINT, &old_[0], nullptr), ::sigaction(SIGTERM, &old_[1], nullptr);
    ::sigaction(SIGXFSZ, &old_[2], nullptr);
  }
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

  int pending() const { return stop_signal.load(); }
  static const char* name(int sig) { return sig == SIGINT ? "SIGINT" : "SIGTERM"; }

 private:
  static void install(int sig, void (*handler)(int), struct sigaction& old) {
    struct sigaction sa {};
    sa.sa_handler = handler;
    sigemptyset(&sa.sa_mask);
    ::sigaction(sig, &sa, &old);
  }
  struct sigaction old_[3]{};
};

// One training at a time per run folder: an exclusive flock(2) on OUT/.lstmgrad.lock, held while
// the process lives (the kernel drops it when the process ends, however it ends, so a killed run
// leaves no stale lock behind). The file holds the holder's pid, for the message.
class RunLock {
 public:
  explicit RunLock(const fs::path& out) {
    const fs::path p = out / ".lstmgrad.lock";
    fd_ = ::open(p.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0)
      throw InputError(fmt::format("{}: cannot open the run's lock file: {}", p.string(),
                                   std::generic_category().message(errno)));
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      char pid[32] = {};
      const ssize_t n = ::pread(fd_, pid, sizeof pid - 1, 0);
      ::close(fd_);
      if (err == EWOULDBLOCK)
        throw InputError(fmt::format(
            "{}: another lstmgrad train is using this run folder (pid {}); wait for it to end, "
            "or choose another --out",
            out.string(), n > 0 ? std::string(pid, static_cast<size_t>(n)) : "unknown"));
      throw InputError(
          fmt::format("{}: cannot lock: {}", p.string(), std::generic_category().message(err)));
    }
    const std::string me = std::to_string(::getpid());
    if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, me.data(), me.size(), 0) < 0) {
      // The pid is only for the message; the lock itself is held.
    }
  }
  ~RunLock() { ::close(fd_); }
  RunLock(const RunLock&) = delete;
  RunLock& operator=(const RunLock&) = delete;

 private:
  int fd_ = -1;
};

// Refuses, before anything is allocated, a model whose training would not fit in this machine's
// memory: the parameters and the copies training keeps (gradient, best model, Adam's moments,
// the checkpoint's copies while it is written), and the activations of one window (the stack's
// gates and states, the readout's probabilities).
template <class Real>
void require_memory(const ModelConfig& cfg, const TrainOptions& o) {
  const double P = static_cast<double>(parameter_count(cfg));
  const double copies = o.optimizer == "adam" ? 9 : (o.optimizer == "sgd" ? 6 : 8);  // ASGD: ax
  const int64_t T = o.bptt_jitter ? bptt_jitter_cap(o.seq) : o.seq;
  const double N = static_cast<double>(T) * static_cast<double>(o.batch);
  const double H = static_cast<double>(cfg.max_width()), L = static_cast<double>(cfg.L);
  const double width = static_cast<double>(std::max(cfg.X, cfg.max_width()));
  const double act = N * ((L + 1) * 4 * H + 2 * L * H + 2 * width + 2 * static_cast<double>(cfg.V));
  const double need = (P * copies + act) * sizeof(Real);
  const double have =
      static_cast<double>(::sysconf(_SC_PHYS_PAGES)) * static_cast<double>(::sysconf(_SC_PAGESIZE));
  if (have > 0 && need > have)
    throw InputError(fmt::format(
        "--hidden {} --layers {} --embed {}: training this model needs about {:.1f} GiB ({:.3g} "
        "parameters, {} copies, and one window's activations), and this machine has {:.1f} GiB",
        o.hidden, o.layers, o.embed, need / (1 << 30), P, copies, have / (1 << 30)));
}

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Refuses to write over a run the user already has. Creates nothing: the folder is made once the
// text has been read and accepted (create_out), so that a rejected corpus leaves none behind.
void ensure_fresh_out(const fs::path& out) {
  for (const char* f : {"checkpoint.safetensors", "model.safetensors", "metrics.jsonl"})
    if (fs::exists(out / f))
      throw InputError(
          fmt::format("--out {}: already holds a training run ({}); continue it with "
                      "--resume {} or choose another --out",
                      out.string(), f, out.string()));
  if (fs::exists(out) && !fs::is_directory(out))
    throw InputError(fmt::format("--out {}: exists and is not a folder", out.string()));
}

void create_out(const fs::path& out) {
  std::error_code ec;
  fs::create_directories(out, ec);
  if (ec)
    throw InputError(
        fmt::format("--out {}: cannot create the folder ({})", out.string(), ec.message()));
}

// The model's shape from the options: X, H, L, the per-layer widths and the projection
// (ModelConfig::H is what the top layer outputs: the projection's size when there is one, whose
// `hidden` then lists every cell's width).
ModelConfig shape_config(const TrainOptions& o) {
  ModelConfig c;
  c.X = o.embed, c.L = o.layers, c.proj = o.proj;
  c.H = o.proj > 0 ? o.proj : o.hidden;
  c.hidden = o.hidden_layers;
  if (o.proj > 0 && c.hidden.empty()) c.hidden.assign(static_cast<size_t>(o.layers), o.hidden);
  return c;
}

// a * b + c, or nullopt beyond int64.
std::optional<int64_t> checked_mul_add(int64_t a, int64_t b, int64_t c) {
  int64_t r = 0;
  if (__builtin_mul_overflow(a, b, &r) || __builtin_add_overflow(r, c, &r)) return std::nullopt;
  return r;
}

// What a checkpoint must agree with in its run's options `o` (the epochs as stored, before a
// command-line --epochs), checked before the trainer allocates by those options: the model's sizes,
// the level, the optimizer's state, the carried state's length, the counters.
template <class Real>
void check_resumable(const Checkpoint<Real>& c, const TrainOptions& o, int64_t stored_epochs,
                     const std::string& ck) {
  const ModelConfig shape = shape_config(o);
  if (c.cfg.input != InputKind::embedding || c.cfg.readout != Readout::linear ||
      c.cfg.H != shape.H || c.cfg.L != shape.L || c.cfg.X != shape.X ||
      c.cfg.hidden != shape.hidden || c.cfg.proj != shape.proj)
    throw InputError(fmt::format(
        "{}: the model (__metadata__ 'lstmgrad.config' {}) does not match the stored options "
        "(hidden {}, layers {}, embed {}, proj {})",
        ck, config_to_json(c.cfg), o.hidden, o.layers, o.embed, o.proj));
  if (c.level != o.level)
    throw InputError(
        fmt::format("{}: __metadata__ 'lstmgrad.level' '{}' differs from the stored "
                    "option level '{}'",
                    ck, data::scan::printable(c.level), o.level));
  const bool adam = o.optimizer == "adam";
  if (c.run.asgd_from >= 0 && o.optimizer != "asgd" && o.optimizer != "nt-asgd")
    throw InputError(
        fmt::format("{}: the run uses {} but the checkpoint holds an average (tensor "
                    "'optimizer.ax')",
                    ck, o.optimizer));
  if (o.optimizer == "asgd" && c.run.asgd_from != 0)
    throw InputError(fmt::format(
        "{}: the run uses asgd but the checkpoint has no average from its first update", ck));
  if (adam && c.m.empty())
    throw InputError(
        fmt::format("{}: the run uses adam but the checkpoint has no Adam moments "
                    "(tensors 'optimizer.m', 'optimizer.v')",
                    ck));
  if (!adam && !c.m.empty())
    throw InputError(
        fmt::format("{}: the run uses {} but the checkpoint holds Adam moments "
                    "(tensors 'optimizer.m', 'optimizer.v')",
                    ck, o.optimizer));
  // the widths' sums fit (validate_config); times the batch, checked
  for (const auto& [name, carry, per_row] :
       {std::tuple{"carry.h", &c.h, c.cfg.h_offset(c.cfg.L, 1)},
        std::tuple{"carry.s", &c.s, c.cfg.s_offset(c.cfg.L, 1)}}) {
    const auto S = checked_mul_add(per_row, o.batch, 0);
    if (!S || static_cast<size_t>(*S) != carry->size())
      throw InputError(
          fmt::format("{}: tensor '{}': {} values, but the layers' widths ({} in all) x batch {} "
                      "make {}",
                      ck, name, carry->size(), per_row, o.batch, S ? *S : -1));
  }
  const std::string run = ck + ": __metadata__ 'lstmgrad.run_state'";
  if (c.run.epoch - 1 > stored_epochs)
    throw InputError(fmt::format("{}: key 'epoch': {} is past the run's {} epochs", run,
                                 c.run.epoch, stored_epochs));
  if (c.run.plateau_decays > c.run.epoch - 1)
    throw InputError(fmt::format("{}: key 'plateau_decays': {} in {} finished epochs", run,
                                 c.run.plateau_decays, c.run.epoch - 1));
  if (c.run.skipped > c.run.step || c.optimizer_steps != c.run.step - c.run.skipped)
    throw InputError(
        fmt::format("{}: __metadata__ 'lstmgrad.optimizer_steps' {} is not the run state's "
                    "step {} less its {} skipped updates",
                    ck, c.optimizer_steps, c.run.step, c.run.skipped));
}

template <class Real>
class Trainer {
 public:
  Trainer(TrainOptions o, Collective& world, StartGate& gate)
      : o_(std::move(o)),
        world_(world),
        gate_(gate),
        ranks_(world.size()),
        rank_(world.rank()),
        progress_(o_.quiet || rank_ != 0) {}

  int run(const Checkpoint<Real>* resume) {
    set_threads(o_.threads);  // 0: the defaults
    load_data();
    data::Batcher batcher(train_ids_, o_.batch, o_.seq, false, o_.train.string());
    const int64_t n = batcher.windows();
    if (resume) check_against_text(*resume, n, batcher.stream_length() - 1);
    if (ranks_ > 1) gate_.pass(start_report(resume));  // every rank starts, or none does
    std::optional<RunLock> lock;
    if (resume) {
      if (rank_ == 0) lock.emplace(o_.out);  // before restore touches the folder
      restore(*resume);
    } else {
      if (rank_ == 0) create_out(o_.out);  // only now: a rejected text leaves no folder behind
      if (rank_ == 0) lock.emplace(o_.out);
      init_fresh();
    }
    const StopSignals signals;
    signals_ = &signals;
    if (gpu_) to_device(resume != nullptr);
    if (!resume)
      progress_.line(
          fmt::format("lstmgrad train: {} tokens, vocabulary {}, {} parameters, {} windows of {} x "
                      "{} per epoch{}",
                      train_ids_.size(), vocab_.size(), params_.size(), n, o_.seq, o_.batch,
                      o_.bptt_jitter ? " (about as many, of drawn lengths: --bptt-jitter)" : ""));
    // --finetune: the model it starts from is the best so far (AWD-LSTM's finetune.py); a
    // checkpoint with it, so that the run folder can be resumed from its first file on.
    if (!resume && !o_.finetune.empty()) {
      validate(0, lr_now(), false, false);
      checkpoint();
    }
    const Reduction red = o_.loss == "batch_mean" ? Reduction::batch_mean : Reduction::mean;
    // The epoch's windows: n of --seq steps, or with --bptt-jitter drawn lengths until the
    // streams' last position (run_.offset: where the next one starts).
    const int64_t positions = batcher.stream_length() - 1;
    auto epoch_done = [&] { return o_.bptt_jitter ? run_.offset >= positions : run_.window >= n; };
    while (run_.epoch <= o_.epochs && !run_.finished) {
      if (run_.window == 0) start_epoch();
      const double lr = lr_now(), wall0 = run_.wall_s;
      const auto t0 = Clock::now();
      const int64_t tokens0 = run_.epoch_tokens;
      auto tokens_per_s = [&] {
        return static_cast<double>(run_.epoch_tokens - tokens0) / std::max(seconds_since(t0), 1e-9);
      };
      while (!epoch_done()) {
        // --bptt-jitter: this window's length from the run's generator, its lr scaled by it
        // (AWD-LSTM: by the drawn length, also where the streams' end cuts the window short).
        const int64_t len = o_.bptt_jitter ? draw_bptt_length(rng_, o_.seq) : o_.seq;
        const double step_lr =
            o_.bptt_jitter ? lr * static_cast<double>(len) / static_cast<double>(o_.seq) : lr;
        auto fetch = [&](std::vector<int64_t>& in, std::vector<int64_t>& target) {
          return o_.bptt_jitter ? batcher.window_at(run_.offset, len, in, target)
                                : batcher.window(run_.window, in, target);
        };
        if (ranks_ == 1) {
          batch_.T = fetch(batch_.tokens, batch_.target);
        } else {  // the whole window, then this rank's streams of it
          batch_.T = fetch(window_tokens_, window_target_);
          take_streams(window_tokens_, batch_.tokens, batch_.T);
          take_streams(window_target_, batch_.target, batch_.T);
        }
        train_step(red, step_lr);
        ++run_.window;
        if (o_.bptt_jitter) run_.offset += len;
        run_.wall_s = wall0 + seconds_since(t0);
        progress_.update(run_.epoch, o_.epochs,
                         o_.bptt_jitter ? std::min(run_.offset, positions) / o_.seq : run_.window,
                         n, run_.epoch_loss_sum / static_cast<double>(run_.epoch_tokens),
                         tokens_per_s(), lr, seconds_since(t0));
        // --eval-every: a validation every N updates, except the one an epoch's end makes.
        const bool eval_now = o_.eval_every > 0 && run_.step % o_.eval_every == 0 && !epoch_done();
        if (o_.max_steps > 0 && run_.step >= o_.max_steps) {
          // A scheduled validation here counts as one (the resumed run starts after it).
          validate(tokens_per_s(), lr, /*end_of_epoch=*/false, /*scheduled=*/eval_now);
          checkpoint();
          progress_.line(
              fmt::format("stopped after {} updates (--max-steps); continue with "
                          "--resume {}",
                          run_.step, o_.out.string()));
          return 0;
        }
        if (eval_now) validate(tokens_per_s(), lr, /*end_of_epoch=*/false, /*scheduled=*/true);
        if (run_.finished) break;  // --finetune's rule: the checkpoint below, then the test
        if (const int sig = stop_pending()) return interrupted(sig);
        if (o_.checkpoint_every > 0 && run_.step % o_.checkpoint_every == 0) checkpoint();
        if (ranks_ > 1 && run_.step % kSameModelEvery == 0) require_same_model();
      }
      if (run_.finished) {
        checkpoint();
        break;
      }
      validate(tokens_per_s(), lr, /*end_of_epoch=*/true, /*scheduled=*/true);
      ++run_.epoch, run_.window = 0, run_.offset = 0;  // the checkpoint resumes at the next epoch
      checkpoint();
      if (const int sig = stop_pending(); sig && run_.epoch <= o_.epochs) return interrupted(sig);
    }
    test();
    return 0;
  }

 private:
  // The stop signal every rank acts on after this update: the process's own, or on several
  // ranks the largest any rank received (train_step agrees on it with the update's loss).
  int stop_pending() const { return ranks_ == 1 ? signals_->pending() : agreed_stop_; }

  // After a stop signal: the update in progress is done; a checkpoint, then 128 + the signal.
  int interrupted(int sig) {
    checkpoint();
    if (rank_ == 0)
      std::fprintf(stderr,
                   "lstmgrad train: %s after update %lld: checkpoint written; continue with "
                   "--resume %s\n",
                   StopSignals::name(sig), static_cast<long long>(run_.step), o_.out.c_str());
    return 128 + sig;
  }

  // The GPU engine: parameters, optimizer moments and the carried state move there once; the host
  // copies are refreshed only where the run writes them (validation's best model, checkpoints).
  void to_device(bool resumed) {
    if constexpr (std::is_same_v<Real, float>) {
      gpu_->set_params(params_);
      if (opt_->kind() == OptimizerKind::adam && !opt_->m().empty())
        gpu_->set_adam_moments(opt_->m(), opt_->v());
      if (resumed) gpu_->set_carried_state(batch_.h0, batch_.s0, batch_.B);
    }
  }

  void from_device() {
    if constexpr (std::is_same_v<Real, float>) {
      gpu_->get_params(params_);
      if (opt_->kind() == OptimizerKind::adam) gpu_->get_adam_moments(opt_->m(), opt_->v());
    }
  }

  void load_data() {
    const data::Level level = data::parse_level(o_.level);
    data::TrainingText t = data::read_training_text(o_.train, level);
    vocab_ = std::move(t.vocab);
    train_ids_ = std::move(t.ids);
    if (!o_.valid.empty()) valid_ids_ = data::read_text(o_.valid, vocab_);
    if (!o_.test.empty()) test_ids_ = data::read_text(o_.test, vocab_);
    cfg_ = shape_config(o_);
    cfg_.input = InputKind::embedding, cfg_.readout = Readout::linear, cfg_.V = vocab_.size();
    cfg_.peephole = o_.peephole;
    cfg_.tie_weights = o_.tie_weights;
    cfg_.zoneout_h = o_.zoneout_h, cfg_.zoneout_s = o_.zoneout_s;
    cfg_.layer_norm = o_.layer_norm;
    require_memory<Real>(cfg_, o_);  // before the engine or the parameters are allocated
    lm_.emplace(cfg_);
    if constexpr (std::is_same_v<Real, float>) {
      lm_->set_precision(parse_precision(o_.precision));
      if (o_.device == "cuda") {
        gpu_.emplace(cfg_);
        progress_.line(fmt::format("lstmgrad train: on {}", cuda::describe()));
      }
    }
    const ParameterOffsets at = parameter_offsets(cfg_);
    embed_offset_ = *at.encoder_weight;  // the embedding table, [V,X]
    // decoder.weight [V,H] and decoder.bias [V], as sorted disjoint element ranges
    const size_t w = *at.decoder_weight, c = *at.decoder_bias, V = static_cast<size_t>(cfg_.V);
    readout_ranges_[0] = {w, w + V * static_cast<size_t>(cfg_.H)};
    readout_ranges_[1] = {c, c + V};
    if (readout_ranges_[1].begin < readout_ranges_[0].begin)
      std::swap(readout_ranges_[0], readout_ranges_[1]);
    // the readout's tensors as LanguageModel's backward tells them (tied: its bias alone)
    piece_starts_ = {cfg_.tie_weights ? c : w};
    for (int64_t k = cfg_.L - 1; k >= 0; --k)
      piece_starts_.push_back(at.layers[static_cast<size_t>(k)].weight_ih);
    layers_begin_ = piece_starts_.back();
    piece_starts_.push_back(0);
    // This rank's streams of the batch: [first, first + B/ranks) (validate_options: B divides).
    const int64_t B = o_.batch / ranks_;
    if (ranks_ > 1) lm_->set_stream_shard(rank_ * B, o_.batch);
    batch_.B = B;
    batch_.h0.assign(static_cast<size_t>(cfg_.h_offset(cfg_.L, B)), Real(0));
    batch_.s0.assign(static_cast<size_t>(cfg_.s_offset(cfg_.L, B)), Real(0));
  }

  // This rank's streams of a [T, o_.batch] window: [T, B/ranks] (the tokens or the targets).
  void take_streams(const std::vector<int64_t>& whole, std::vector<int64_t>& mine,
                    int64_t T) const {
    const int64_t B = batch_.B, first = rank_ * B;
    mine.resize(static_cast<size_t>(T * B));
    for (int64_t t = 0; t < T; ++t)
      std::copy_n(whole.begin() + t * o_.batch + first, B, mine.begin() + t * B);
  }

  // Layer k's width in the carried h (is_h) or s.
  int64_t state_width(bool is_h, int64_t k) const {
    return is_h ? cfg_.out_width(k) : cfg_.width(k);
  }
  int64_t state_offset(bool is_h, int64_t k, int64_t B) const {
    return is_h ? cfg_.h_offset(k, B) : cfg_.s_offset(k, B);
  }

  // The state h (is_h) or s carried into the next window, layer blocks [o_.batch, width], from
  // every rank's part [B/ranks, width] of each (`mine`): each rank's rows in place, zeros
  // elsewhere, summed (x + 0 is exact).
  std::vector<Real> whole_state(const std::vector<Real>& mine, bool is_h) {
    if (ranks_ == 1) return mine;
    const int64_t B = batch_.B;
    std::vector<Real> whole(static_cast<size_t>(state_offset(is_h, cfg_.L, o_.batch)), Real(0));
    for (int64_t l = 0; l < cfg_.L; ++l) {
      const int64_t H = state_width(is_h, l);
      std::copy_n(mine.begin() + state_offset(is_h, l, B), B * H,
                  whole.begin() + state_offset(is_h, l, o_.batch) + rank_ * B * H);
    }
    world_.sum(std::span<Real>(whole), "the carried state");
    return whole;
  }

  // This rank's part of a whole carried state h (is_h) or s (a checkpoint's).
  void take_state(const std::vector<Real>& whole, std::vector<Real>& mine, bool is_h) const {
    const int64_t B = batch_.B;
    for (int64_t l = 0; l < cfg_.L; ++l) {
      const int64_t H = state_width(is_h, l);
      std::copy_n(whole.begin() + state_offset(is_h, l, o_.batch) + rank_ * B * H, B * H,
                  mine.begin() + state_offset(is_h, l, B));
    }
  }

  // What this rank would train, for the ranks to compare before any of them starts (StartGate):
  // the options that shape the run (not the paths, which may differ between machines, nor the
  // threads), the texts and the vocabulary, and the checkpoint resumed.
  StartReport start_report(const Checkpoint<Real>* resume) const {
    json shaping = options_to_json(o_);
    for (const char* path : {"train", "valid", "test", "finetune"}) shaping.erase(path);
    StartReport r;
    r.hashes[0] = content_hash(shaping.dump());
    r.hashes[1] = content_hash(std::span<const int64_t>(train_ids_));
    for (const std::string& w : vocab_.words()) r.hashes[1] = content_hash(w, r.hashes[1]);
    r.hashes[2] = content_hash(std::span<const int64_t>(valid_ids_));
    r.hashes[3] = content_hash(std::span<const int64_t>(test_ids_));
    r.hashes[4] = resume ? content_hash(std::span<const Real>(resume->params)) ^
                               content_hash(std::span<const Real>(resume->h)) ^
                               static_cast<uint64_t>(resume->run.step)
                         : 0;
    return r;
  }

  // Every kSameModelEvery updates and at each checkpoint: the ranks compare a hash of their
  // parameters, and a difference (which the fixed-order sums should make impossible) halts the
  // run before a diverged model is written.
  static constexpr int64_t kSameModelEvery = 100;
  void require_same_model() {
    const uint64_t mine = content_hash(std::span<const Real>(params_));
    const std::vector<std::byte> all = world_.all_gather(
        std::as_bytes(std::span<const uint64_t>(&mine, 1)), "the parameter hashes");
    uint64_t h0 = 0;
    std::memcpy(&h0, all.data(), sizeof h0);
    for (int q = 1; q < ranks_; ++q) {
      uint64_t h = 0;
      std::memcpy(&h, all.data() + q * sizeof h, sizeof h);
      if (h != h0)
        throw Halted(fmt::format(
            "after update {} rank {} holds other parameters than rank 0 (hash {:016x}, not "
            "{:016x}); training stopped, {}",
            run_.step, q, h, h0, last_checkpoint()));
    }
  }

  void init_fresh() {
    // One draw per parameter in the layout's order, whatever the scheme (the jitter's draws
    // follow them): tools/lstmgrad_draws.py repeats it.
    rng_.seed(o_.seed);
    params_.resize(parameter_count(cfg_));
    const bool awd = o_.init_scheme == "awd";
    for (const ParamInfo& info : parameter_layout(cfg_)) {
      const bool ln =
          info.name.starts_with("rnn.weight_ln_") || info.name.starts_with("rnn.bias_ln_");
      double range = o_.init;
      if (awd && info.name.starts_with("rnn.") && !ln)  // layer k's cells: H_k
        range = 1.0 / std::sqrt(static_cast<double>(cfg_.width(layer_of(info.name))));
      std::uniform_real_distribution<double> u(-range, range);
      Real* p = params_.data() + info.offset;
      for (size_t k = 0; k < info.size; ++k) p[k] = static_cast<Real>(u(rng_));
      // layer norm starts as the identity: gains 1, biases 0 (PyTorch's LayerNorm init)
      if (ln) std::fill_n(p, info.size, static_cast<Real>(info.name.starts_with("rnn.weight_ln_")));
      if (awd && info.name == "decoder.bias") std::fill_n(p, info.size, Real(0));
    }
    if (!o_.finetune.empty()) params_ = finetune_start();
    make_optimizer();
    if (opt_->averaging()) run_.asgd_from = 0;  // asgd: averaging from the first update
    grad_.assign(params_.size(), Real(0));
  }

  // nt-asgd starts as SGD (nonmono_check switches it); asgd averages from the first update.
  void make_optimizer() {
    const OptimizerKind kind =
        o_.optimizer == "nt-asgd" ? OptimizerKind::sgd : parse_optimizer(o_.optimizer);
    opt_.emplace(kind, params_.size(), 0.9, 0.999, 1e-8, o_.weight_decay);
  }

  // --finetune RUN: RUN's best model (the average, when RUN had switched to averaged SGD before
  // its best validation, as AWD-LSTM's saved model), or its last model when it has no best.
  std::vector<Real> finetune_start() const {
    fs::path from = o_.finetune / "best.safetensors";
    if (!fs::exists(from)) from = o_.finetune / "model.safetensors";
    Model<Real> m = load_model<Real>(from);
    if (config_to_json(m.cfg) != config_to_json(cfg_))
      throw InputError(fmt::format(
          "--finetune {}: {}'s model ({}) is not the one these options "
          "train ({})",
          o_.finetune.string(), from.string(), config_to_json(m.cfg), config_to_json(cfg_)));
    if (!m.vocab.empty() && m.vocab != vocab_.words())
      throw InputError(fmt::format("--finetune {}: the vocabulary of {} differs from {}'s",
                                   o_.finetune.string(), o_.train.string(), from.string()));
    return std::move(m.params);
  }

  // Temporary files of writes a killed process left half done (io::AtomicFile's names).
  void remove_stale_temporaries() const {
    for (const auto& e : fs::directory_iterator(o_.out)) {
      const std::string name = e.path().filename().string();
      for (const char* f : {"checkpoint.safetensors", "model.safetensors", "best.safetensors",
                            "average.safetensors", "metrics.jsonl", "results.json"})
        if (name.rfind(fmt::format(".{}.tmp.", f), 0) == 0) fs::remove(e.path());
    }
  }

  // What the checkpoint must agree with in the run's text and model: checked, with
  // check_resumable and read_checkpoint before it, before anything in the run folder is touched.
  void check_against_text(const Checkpoint<Real>& c, int64_t windows,
                          int64_t stream_positions) const {
    const std::string ck = (o_.out / "checkpoint.safetensors").string();
    if (c.vocab != vocab_.words())
      throw InputError(
          fmt::format("--resume {}: the vocabulary of {} differs from the checkpoint's",
                      o_.out.string(), o_.train.string()));
    if (c.cfg.V != cfg_.V || c.cfg.H != cfg_.H || c.cfg.L != cfg_.L || c.cfg.X != cfg_.X ||
        c.cfg.peephole != cfg_.peephole || c.cfg.tie_weights != cfg_.tie_weights ||
        c.cfg.zoneout_h != cfg_.zoneout_h || c.cfg.zoneout_s != cfg_.zoneout_s ||
        c.cfg.layer_norm != cfg_.layer_norm || c.cfg.hidden != cfg_.hidden ||
        c.cfg.proj != cfg_.proj)
      throw InputError(fmt::format("--resume {}: the checkpoint's model does not match its options",
                                   o_.out.string()));
    const size_t Sh = static_cast<size_t>(cfg_.h_offset(cfg_.L, o_.batch));
    const size_t Ss = static_cast<size_t>(cfg_.s_offset(cfg_.L, o_.batch));
    if (c.h.size() != Sh || c.s.size() != Ss)
      throw InputError(
          fmt::format("{}: tensors 'carry.h' and 'carry.s': {} and {} values for {} and {}", ck,
                      c.h.size(), c.s.size(), Sh, Ss));
    const std::string run = ck + ": __metadata__ 'lstmgrad.run_state'";
    if (o_.bptt_jitter) {  // windows of drawn lengths: the position in the streams
      if (c.run.offset > stream_positions)
        throw InputError(fmt::format("{}: key 'offset': {} is past the streams' {} positions", run,
                                     c.run.offset, stream_positions));
      return;
    }
    // Each window is one update: step = (epoch - 1) * windows + window.
    if (c.run.window > windows)
      throw InputError(fmt::format("{}: key 'window': {} is past the {} windows of an epoch of {}",
                                   run, c.run.window, windows, o_.train.string()));
    if (checked_mul_add(c.run.epoch - 1, windows, c.run.window) != c.run.step)
      throw InputError(
          fmt::format("{}: key 'step': {} updates do not fit epoch {}, window {} "
                      "({} windows an epoch)",
                      run, c.run.step, c.run.epoch, c.run.window, windows));
  }

  void restore(const Checkpoint<Real>& c) {
    const fs::path best = o_.out / "best.safetensors";
    best_params_ = c.params;  // replaced by best.safetensors' contents when it exists
    if (fs::exists(best)) {
      Model<Real> m = load_model<Real>(best);
      if (m.cfg.V != cfg_.V || m.cfg.H != cfg_.H || m.cfg.L != cfg_.L || m.cfg.X != cfg_.X ||
          m.cfg.hidden != cfg_.hidden || m.cfg.proj != cfg_.proj ||

          m.cfg.input != cfg_.input || m.cfg.readout != cfg_.readout)
        throw InputError(fmt::format("{}: its model ({}) is not the checkpoint's ({})",
                                     best.string(), config_to_json(m.cfg), config_to_json(cfg_)));
      best_params_ = std::move(m.params);
    }
    rng_ = rng_from_state(c.run.rng, (o_.out / "checkpoint.safetensors").string());
    if (rank_ == 0) remove_stale_temporaries();  // the first change to the run folder
    params_ = c.params;
    make_optimizer();
    if (!c.m.empty()) opt_->m() = c.m, opt_->v() = c.v;
    if (!c.ax.empty()) opt_->set_averaging(c.ax, c.run.asgd_steps, c.run.asgd_eta);
    opt_->set_steps(c.optimizer_steps);
    grad_.assign(params_.size(), Real(0));
    take_state(c.h, batch_.h0, true), take_state(c.s, batch_.s0, false);

    run_ = c.run;
    progress_.line(fmt::format("resuming {} at epoch {}, window {}, update {}", o_.out.string(),
                               run_.epoch, run_.window, run_.step));
  }

  // lr / lr_decay^max(0, epoch - decay_after) / plateau_decay^(plateaus so far).
  double lr_now() const {
    const double decays = static_cast<double>(std::max<int64_t>(0, run_.epoch - o_.decay_after));
    return o_.lr / std::pow(o_.lr_decay, decays) /
           std::pow(o_.plateau_decay, static_cast<double>(run_.plateau_decays));
  }

  void start_epoch() {
    std::fill(batch_.h0.begin(), batch_.h0.end(), Real(0));  // each epoch starts from zeros
    std::fill(batch_.s0.begin(), batch_.s0.end(), Real(0));
    if (gpu_) gpu_->reset_state();
    run_.epoch_loss_sum = 0, run_.epoch_tokens = 0;
  }

  // The same update on the GPU: the state carried there, the loss the only thing that comes back.
  double gpu_step(Reduction red, double lr) {
    double loss = 0;
    if constexpr (std::is_same_v<Real, float>) {
      gpu_->set_dropout(o_.dropout,
                        o_.seed * 0x9e3779b97f4a7c15ULL + static_cast<uint64_t>(run_.step));
      gpu_batch_.T = batch_.T, gpu_batch_.B = batch_.B;
      gpu_batch_.tokens.swap(batch_.tokens), gpu_batch_.target.swap(batch_.target);
      loss = gpu_->forward(gpu_batch_, red);
      gpu_batch_.tokens.swap(batch_.tokens), gpu_batch_.target.swap(batch_.target);
      gpu_->backward();
      if (opt_->kind() == OptimizerKind::adam) {
        gpu_->adam_step(lr, o_.clip, opt_->steps() + 1);
      } else {
        gpu_->sgd_step(lr, o_.clip);
      }
      opt_->set_steps(opt_->steps() + 1);
      gpu_->carry_state();
    }
    return loss;
  }

  void train_step(Reduction red, double lr) {
    if (gpu_) {
      // The device applied the update already: a non-finite loss stops the run before anything
      // is written (validate_options refuses skip on the GPU).
      const double loss = gpu_step(red, lr);
      if (!std::isfinite(loss)) return nonfinite(loss, 0);
      count_step(red, loss);
      return;
    }
    // Each update its own dropout masks, a function of (seed, update): resumes replay them.
    const uint64_t masks = o_.seed * 0x9e3779b97f4a7c15ULL + static_cast<uint64_t>(run_.step);
    lm_->set_dropout(o_.dropout, masks);
    lm_->set_regularization(o_.reg, masks);  // sites of their own: other masks than --dropout's
    // The embedding rows no token of the batch used hold a zero gradient (backward adds only to
    // the batch's rows, and nothing else writes there): both passes skip them, to the same result.
    // On several ranks the whole window's tokens decide, so that every rank skips the same rows.
    const std::span<const ElementRange> zero = unused_embedding_rows();
    if (ranks_ > 1) plan_sum(zero);
    // backward derives the objective CE + AR + TAR; the cross-entropy alone is what is logged
    lm_->forward(params_, batch_, red);
    double loss = lm_->cross_entropy();
    lm_->backward(grad_, params_, batch_);  // grad_ is zero: the last step cleared it
    if (ranks_ > 1 && o_.comm_overlap) window_s_ += seconds_since(first_piece_);
    double scale = 1;  // what the summed gradient is multiplied by
    double norm = 0;
    if (ranks_ == 1) {
      norm = gradient_norm(zero);
    } else {
      // Each rank's loss and gradient are its streams' mean (or batch mean); the whole batch's
      // are their mean over the ranks: the sum, divided by the ranks.
      const auto c0 = Clock::now();
      sum_gradient();
      // With it, the stop signals: SIGTERM when any rank has one, else SIGINT when any has one.
      const int sig = signals_->pending();
      std::array<double, 3> shared = {loss, sig == SIGTERM ? 1.0 : 0.0, sig == SIGINT ? 1.0 : 0.0};
      world_.sum(std::span<double>(shared), "the loss");
      loss = shared[0] / ranks_;
      comm_s_ += seconds_since(c0);
      agreed_stop_ = shared[1] > 0 ? SIGTERM : (shared[2] > 0 ? SIGINT : 0);
      scale = 1.0 / ranks_;
      norm = grad_norm<Real>(grad_, zero) * scale;
    }
    if (!std::isfinite(loss) || !std::isfinite(norm)) return nonfinite(loss, norm);
    opt_->step_and_zero(params_, grad_, lr, scale * clip_factor(norm, o_.clip), zero);
    // The state carries into the next window; its gradient does not (truncated BPTT).
    std::copy(lm_->h_n().begin(), lm_->h_n().end(), batch_.h0.begin());
    std::copy(lm_->s_n().begin(), lm_->s_n().end(), batch_.s0.begin());
    count_step(red, loss);
  }

  // A NaN or infinite loss or gradient norm at this update: --on-nonfinite stop ends the run
  // (the last checkpoint as it was); skip leaves the parameters, the optimizer and the carried
  // state as they were and counts the update as done and skipped.
  void nonfinite(double loss, double norm) {
    const double bad = std::isfinite(loss) ? norm : loss;
    const std::string what =
        fmt::format("update {} (epoch {}, window {}): {} is {}", run_.step + 1, run_.epoch,
                    run_.window + 1, std::isfinite(loss) ? "the gradient's norm" : "the loss",
                    std::isnan(bad) ? "NaN" : (bad > 0 ? "inf" : "-inf"));
    if (o_.on_nonfinite == "stop")
      throw Halted(fmt::format("{}; training stopped, {} (--on-nonfinite skip skips such updates)",
                               what, last_checkpoint()));
    std::fill(grad_.begin(), grad_.end(), Real(0));
    ++run_.step, ++run_.skipped;
    progress_.line(what + ": update skipped (--on-nonfinite skip)");
  }

  // Before anything is written from the parameters (a checkpoint, a validation's files): an
  // update with a finite gradient can still overflow them (an absurd learning rate), and such a
  // model must not replace the last good one. The host copy of the parameters is current.
  void require_finite_parameters() {
    const auto bad = std::find_if(params_.begin(), params_.end(),
                                  [](Real p) { return !std::isfinite(static_cast<double>(p)); });
    if (bad == params_.end()) return;
    const size_t k = static_cast<size_t>(bad - params_.begin());
    std::string tensor = "?";
    for (const ParamInfo& info : parameter_layout(cfg_))
      if (k >= info.offset && k < info.offset + info.size) tensor = info.name;
    throw Halted(fmt::format(
        "update {} (epoch {}, window {}): the parameters are non-finite after the update ({} "
        "holds {}); training stopped, {}",
        run_.step, run_.epoch, run_.window, tensor, static_cast<double>(*bad), last_checkpoint()));
  }

  // What a halted run leaves: the last checkpoint as it was, or none yet.
  std::string last_checkpoint() const {
    const fs::path ck = o_.out / "checkpoint.safetensors";
    return fs::exists(ck) ? fmt::format("{} kept as it was", ck.string())
                          : std::string("no checkpoint was written before it");
  }

  void count_step(Reduction red, double loss) {
    const double per_sum = red == Reduction::mean ? static_cast<double>(batch_.T * o_.batch)
                                                  : static_cast<double>(o_.batch);
    run_.epoch_loss_sum += loss * per_sum;
    run_.epoch_tokens += batch_.T * o_.batch;
    ++run_.step;
  }

  // The gradient summed over the ranks, except the ranges `zero` (the embedding rows no token of
  // the whole window used: 0 on every rank). The LSTM's and the readout's are summed where they
  // lie, in pieces: the readout's tensors, then each layer's. In the embedding the ranges between
  // the unused rows that are short (runs of used rows) travel packed together in one sum, the
  // long ones where they lie. For zaremba-small on PTB this sends about 2.7M of the 4.65M values.
  // The pieces are the same on every rank and with or without --comm-overlap, and so are the
  // sums' bits (each element is rank 0's value plus rank 1's ..., whatever the pieces).
  static constexpr size_t kPackBelow = size_t{1} << 16;
  bool packed(const ElementRange& r) const {
    return r.end <= layers_begin_ && r.end - r.begin < kPackBelow;
  }

  // Before the backward: the ranges that travel, and the listener that starts the pieces the
  // backward makes final (--comm-overlap).
  void plan_sum(std::span<const ElementRange> zero) {
    live_.clear();
    size_t at = 0;
    for (const ElementRange& z : zero) {
      if (z.begin > at) live_.push_back({at, z.begin});
      at = z.end;
    }
    if (at < grad_.size()) live_.push_back({at, grad_.size()});
    // split where the embedding ends (layer 0's piece begins): packed() sees the parts apart
    for (size_t k = 0; k < live_.size(); ++k)
      if (live_[k].begin < layers_begin_ && live_[k].end > layers_begin_) {
        live_.insert(live_.begin() + static_cast<ptrdiff_t>(k) + 1, {layers_begin_, live_[k].end});
        live_[k].end = layers_begin_;
        break;
      }
    started_to_ = grad_.size(), next_piece_ = 0;
    lm_->set_gradient_listener(o_.comm_overlap ? &sum_as_ready_ : nullptr);
  }

  // Starts the sums of the pieces from piece_starts_ that begin at `from` or after and have not
  // started: the long live ranges' parts inside them.
  void start_pieces_from(size_t from) {
    for (; next_piece_ < piece_starts_.size() && piece_starts_[next_piece_] >= from;
         ++next_piece_) {
      const size_t b = piece_starts_[next_piece_], e = started_to_;
      for (const ElementRange& r : live_) {
        const size_t lo = std::max(r.begin, b), hi = std::min(r.end, e);
        if (!packed(r) && lo < hi)
          world_.start_sum(std::span<Real>(grad_).subspan(lo, hi - lo), "the gradient");
      }
      started_to_ = b;
    }
  }

  void sum_gradient() {
    start_pieces_from(0);  // the pieces not started during the backward, the embedding's last
    pack_.clear();
    for (const ElementRange& r : live_)
      if (packed(r)) pack_.insert(pack_.end(), grad_.begin() + r.begin, grad_.begin() + r.end);
    if (!pack_.empty()) world_.start_sum(std::span<Real>(pack_), "the gradient");
    world_.finish_sums();
    size_t k = 0;
    for (const ElementRange& r : live_)
      if (packed(r)) {
        std::copy_n(pack_.begin() + k, r.end - r.begin, grad_.begin() + r.begin);
        k += r.end - r.begin;
      }
  }

  // Told by the backward what is final: starts those pieces' sums, and lets the started ones
  // move between the backward's steps. Its seconds are counted apart from the wait after it.
  class SumAsReady final : public GradientListener {
   public:
    explicit SumAsReady(Trainer& t) : t_(t) {}
    void final_from(size_t from) override {
      const auto c0 = Clock::now();
      if (t_.next_piece_ == 0) t_.first_piece_ = c0;
      t_.start_pieces_from(from);
      t_.overlap_s_ += seconds_since(c0);
    }
    void poll() override {
      const auto c0 = Clock::now();
      t_.world_.progress();
      t_.overlap_s_ += seconds_since(c0);
    }

   private:
    Trainer& t_;
  };

  // The gradient's global norm; the readout's part from the backward that just ran when it took
  // it (the fused readout, while its rows were in cache), saving a pass over the largest tensors.
  double gradient_norm(std::span<const ElementRange> zero) {
    const std::optional<double> readout = lm_->readout_grad_sumsq();
    if (!readout) return grad_norm<Real>(grad_, zero);
    // The embedding's ranges, then the readout's: grad_norm needs them sorted (checked there).
    skip_.assign(zero.begin(), zero.end());
    assert(zero.empty() || zero.back().end <= readout_ranges_[0].begin);
    skip_.insert(skip_.end(), readout_ranges_.begin(), readout_ranges_.end());
    const double rest = grad_norm<Real>(grad_, skip_);
    return std::sqrt(rest * rest + *readout);
  }

  // The element ranges of the embedding table (encoder.weight, [V,X]) whose rows
  // this batch's tokens do not select; none for a dense input.
  std::span<const ElementRange> unused_embedding_rows() {
    // Tied: the readout's gradient fills every row of the table.
    if (cfg_.input != InputKind::embedding || cfg_.tie_weights) return {};
    unused_rows(ranks_ == 1 ? batch_.tokens : window_tokens_, cfg_.V, cfg_.X, embed_offset_,
                row_mark_, zero_rows_);
    return zero_rows_;
  }

  // Every validation reports and keeps the best model; only the end-of-epoch ones drive the
  // plateau schedule, and only the scheduled ones (epoch ends, --eval-every) NT-ASGD's and
  // --finetune's rule, so that a run stopped by --max-steps and resumed follows the same schedule.
  // While averaging, the average is what is validated and kept as the best model (AWD-LSTM swaps
  // it in for evaluation); training goes on from the raw parameters.
  void validate(double tokens_per_s, double lr, bool end_of_epoch, bool scheduled) {
    const double train_loss =
        run_.epoch_tokens ? run_.epoch_loss_sum / static_cast<double>(run_.epoch_tokens) : 0;
    json line = {{"epoch", run_.epoch},
                 {"step", run_.step},
                 {"lr", lr},
                 {"train_loss", train_loss},
                 {"tokens_per_s", tokens_per_s},
                 {"wall_s", run_.wall_s},
                 {"world_size", ranks_}};
    if (run_.skipped > 0) line["skipped_nonfinite"] = run_.skipped;
    if (ranks_ > 1) {  // rank 0's, this process
      line["sum_wait_s"] = comm_s_;
      line["sum_overlap_s"] = overlap_s_;
      if (o_.comm_overlap) line["overlap_window_s"] = window_s_;
    }
    bool improved = true;
    lm_->set_dropout(0, 0);  // evaluation sees the whole network
    if (gpu_) from_device();
    require_finite_parameters();
    // (The average exists once averaging has taken a step.)
    const bool averaged = opt_->averaging() && opt_->averaging_steps() > 0;
    const std::vector<Real>& evaluated = averaged ? opt_->ax() : params_;
    if (averaged) line["asgd"] = true, line["asgd_from_step"] = run_.asgd_from + 1;
    if (!valid_ids_.empty()) {
      const int64_t B = o_.eval_batch > 0 ? o_.eval_batch : o_.batch;
      const double v = evaluate(evaluated, valid_ids_, B, o_.seq, o_.valid.string().c_str()).mean();
      line["valid_loss"] = v;
      line["valid_ppl"] = std::exp(v);
      improved = run_.best_valid == 0 || v < run_.best_valid;
      if (improved) run_.best_valid = v;
      if (end_of_epoch) {
        if (run_.best_epoch_valid != 0 && v >= run_.best_epoch_valid && o_.plateau_decay > 1)
          ++run_.plateau_decays;
        if (run_.best_epoch_valid == 0 || v < run_.best_epoch_valid) run_.best_epoch_valid = v;
      }
      if (scheduled) nonmono_check(v, line);
      progress_.line(
          fmt::format("epoch {} update {}: train loss {:.4f} (ppl {:.2f}), valid loss {:.4f} (ppl "
                      "{:.2f}), lr {:.4g}, {:.0f} tok/s",
                      run_.epoch, run_.step, train_loss, std::exp(train_loss), v, std::exp(v), lr,
                      tokens_per_s));
    } else {
      line["valid_loss"] = nullptr;
      progress_.line(fmt::format("epoch {} update {}: train loss {:.4f}, lr {:.4g}", run_.epoch,
                                 run_.step, train_loss, lr));
    }
    run_.metrics.push_back(line.dump());
    if (improved) best_params_ = evaluated;
    if (rank_ != 0) return;  // rank 0 writes the run's files
    if (improved)
      save_model<Real>(o_.out / "best.safetensors", cfg_, evaluated, vocab_.words(),
                       {{"lstmgrad.level", o_.level}});
    std::string text;
    for (const std::string& l : run_.metrics) text += l + "\n";
    io_write_text(o_.out / "metrics.jsonl", text);
  }

  // NT-ASGD (AWD-LSTM's main.py): at each scheduled validation before the switch, switch to
  // averaged SGD when nonmono_triggered; each such check then joins the history. --finetune
  // (finetune.py): the same rule on the averaged model's checks ends the training.
  void nonmono_check(double v, json& line) {
    const bool switching = o_.optimizer == "nt-asgd" && !opt_->averaging();
    if (!switching && o_.finetune.empty()) return;
    if (nonmono_triggered(run_.valid_history, v, o_.nonmono)) {
      if (switching) {
        opt_->start_averaging();
        run_.asgd_from = run_.step;
        line["asgd_switch"] = true, line["asgd_from_step"] = run_.step + 1;
        progress_.line(
            fmt::format("update {}: validation has not improved on the checks before "
                        "the last {}; switching to averaged SGD (--optimizer nt-asgd)",
                        run_.step, o_.nonmono));
      } else {
        run_.finished = true;
        line["finetune_done"] = true;
        progress_.line(
            fmt::format("update {}: validation has not improved on the checks before "
                        "the last {}; finetuning done",
                        run_.step, o_.nonmono));
      }
    }
    run_.valid_history.push_back(v);
  }

  // evaluate_stream on the engine of the run; on the GPU with `params` on the device already
  // (from_device has run) or uploaded, and the training state kept aside and restored.
  StreamLoss evaluate(const std::vector<Real>& params, std::span<const int64_t> ids, int64_t B,
                      int64_t seq, const char* where) {
    if constexpr (std::is_same_v<Real, float>) {
      if (gpu_) {
        gpu_->set_dropout(0, 0);
        if (&params != &params_) gpu_->set_params(params);
        gpu_->get_carried_state(batch_.h0, batch_.s0);
        const StreamLoss s = evaluate_stream(*gpu_, ids, B, seq, where);
        gpu_->set_carried_state(batch_.h0, batch_.s0, batch_.B);
        return s;
      }
    }
    if (ranks_ == 1 || B % ranks_ != 0)
      return evaluate_stream<Real>(*lm_, params, ids, B, seq, where);
    // Each rank its share of the streams; the sums and counts added over the ranks.
    const int64_t part = B / ranks_;
    const StreamLoss mine =
        evaluate_stream<Real>(*lm_, params, ids, B, seq, where, rank_ * part, part);
    std::array<double, 2> both = {mine.sum, static_cast<double>(mine.tokens)};
    world_.sum(std::span<double>(both), "the evaluation");
    return {both[0], static_cast<int64_t>(both[1])};
  }

  void checkpoint() {
    if (gpu_) {
      from_device();
      if constexpr (std::is_same_v<Real, float>) gpu_->get_carried_state(batch_.h0, batch_.s0);
    }
    require_finite_parameters();
    std::vector<Real> h = whole_state(batch_.h0, true), s = whole_state(batch_.s0, false);

    if (ranks_ > 1) require_same_model();
    std::ostringstream rng;
    rng << rng_;
    run_.rng = rng.str();
    run_.asgd_steps = opt_->averaging_steps(), run_.asgd_eta = opt_->eta();
    if (rank_ != 0) return;  // rank 0 writes the run's files
    save_model<Real>(o_.out / "model.safetensors", cfg_, params_, vocab_.words(),
                     {{"lstmgrad.level", o_.level}});
    if (opt_->averaging() && opt_->averaging_steps() > 0)  // what validation evaluates
      save_model<Real>(o_.out / "average.safetensors", cfg_, opt_->ax(), vocab_.words(),
                       {{"lstmgrad.level", o_.level}});
    Checkpoint<Real> c;
    c.cfg = cfg_, c.vocab = vocab_.words(), c.level = o_.level;
    c.options_json = options_to_json(o_).dump();
    c.params = params_, c.m = opt_->m(), c.v = opt_->v(), c.optimizer_steps = opt_->steps();
    c.ax = opt_->ax();
    c.h = std::move(h), c.s = std::move(s);
    c.run = run_;
    write_checkpoint(o_.out / "checkpoint.safetensors", c);
  }

  void test() {
    json results = {{"valid_loss", run_.best_valid},
                    {"valid_ppl", std::exp(run_.best_valid)},
                    {"updates", run_.step},
                    {"wall_s", run_.wall_s},
                    {"world_size", ranks_}};
    const int64_t B = o_.test_sequential ? 1 : (o_.eval_batch > 0 ? o_.eval_batch : o_.batch);
    // A test that splits into the ranks' streams runs on all of them; the sequential test (one
    // stream) on rank 0 alone.
    const bool shared = B % ranks_ == 0;
    if (!shared && rank_ != 0) return;
    if (!test_ids_.empty()) {
      const auto t0 = Clock::now();
      lm_->set_dropout(0, 0);
      const StreamLoss t = evaluate(best_params_, test_ids_, B, std::max<int64_t>(o_.seq, 100),
                                    o_.test.string().c_str());
      results["test_loss"] = t.mean();
      results["test_ppl"] = std::exp(t.mean());
      results["test_bpc"] = t.mean() / std::log(2.0);
      results["test_tokens"] = t.tokens;
      results["test_batch"] = B;
      results["test_wall_s"] = seconds_since(t0);
      progress_.line(fmt::format(
          "test (best model, batch {}): loss {:.4f}, ppl {:.2f}, bpc {:.4f} over {} tokens", B,
          t.mean(), std::exp(t.mean()), t.mean() / std::log(2.0), t.tokens));
    }
    if (rank_ == 0) io_write_text(o_.out / "results.json", results.dump(2) + "\n");
  }

  static void io_write_text(const fs::path& p, const std::string& text) {
    io::write_text_atomic(p, text);
  }

  TrainOptions o_;
  Collective& world_;
  StartGate& gate_;
  const int ranks_, rank_;  // the processes training this model, and this one's place
  Progress progress_;
  const StopSignals* signals_ = nullptr;
  int agreed_stop_ = 0;
  // On several ranks: this process's seconds in the sums after the backward, and in starting
  // and moving them during it (--comm-overlap).
  // window_s_: the backward's seconds after its first piece started (what the sums could hide
  // behind).
  double comm_s_ = 0, overlap_s_ = 0, window_s_ = 0;
  Clock::time_point first_piece_;
  std::vector<ElementRange> live_;  // plan_sum: the ranges that travel
  std::vector<Real> pack_;          // and the short ones, packed
  // Where the pieces of the sum begin, in the order the backward makes them final: the readout's
  // tensors, each layer's from the top down, then 0 (the embedding).
  std::vector<size_t> piece_starts_;
  size_t next_piece_ = 0, started_to_ = 0;  // the next piece to start; where the started end
  size_t layers_begin_ = 0;                 // where the embedding ends and layer 0 begins
  SumAsReady sum_as_ready_{*this};
  std::vector<int64_t> window_tokens_, window_target_;  // on several ranks: the whole window
  data::Vocabulary vocab_;
  std::vector<int64_t> train_ids_, valid_ids_, test_ids_;
  ModelConfig cfg_;
  std::vector<Real> params_, grad_, best_params_;
  std::optional<Optimizer<Real>> opt_;
  std::optional<LanguageModel<Real>> lm_;
  // --device cuda (float32 only): the engine, and its batch (tokens and targets, no state).
  std::optional<cuda::LanguageModel> gpu_;
  Batch<float> gpu_batch_;
  Batch<Real> batch_;
  size_t embed_offset_ = 0;                       // where the embedding table starts in params_
  std::vector<uint8_t> row_mark_;                 // [V] scratch of unused_rows
  std::vector<ElementRange> zero_rows_;           // the embedding ranges the batch leaves at zero
  std::array<ElementRange, 2> readout_ranges_{};  // decoder.weight and decoder.bias
  std::vector<ElementRange> skip_;                // zero_rows_ and the readout (gradient_norm)
  RunState run_;
  std::mt19937_64 rng_;
};

}  // namespace

}  // namespace train

namespace {

// On several processes: each rank trains B / ranks of the streams on the CPU.
void validate_ranks(const TrainOptions& o, const train::OptionName& name, int ranks) {
  if (ranks == 1) return;
  if (o.batch % ranks != 0)
    throw InputError(fmt::format(
        "{} {}: must be a multiple of the {} processes of the job (each trains an equal share of "
        "the streams)",
        name("--batch"), o.batch, ranks));
  if (o.device != "cpu")
    throw InputError(fmt::format("{} {}: training on several processes runs on the CPU",
                                 name("--device"), o.device));
}

// --finetune RUN: RUN's stored options, with the flags given on the command line in their place
// (the model's shape and level are RUN's and may only be repeated); averaged SGD (asgd).
TrainOptions finetune_options(const TrainOptions& o) {
  const std::string run = o.finetune.string();
  if (!o.resume.empty())
    throw InputError(
        fmt::format("--finetune {}: not with --resume (continue a finetuning run "
                    "with --resume OUT alone)",
                    run));
  const fs::path ck = o.finetune / "checkpoint.safetensors";
  if (!fs::is_directory(o.finetune))
    throw InputError(fmt::format("--finetune {}: not a folder", run));
  if (!fs::exists(ck))
    throw InputError(fmt::format(
        "--finetune {}: no checkpoint.safetensors there (a run folder of lstmgrad train)", run));
  const train::Checkpoint<double> probe = train::read_checkpoint<double>(ck);
  const std::string where = ck.string() + ": __metadata__ 'lstmgrad.train_options'";
  json base = train::options_to_json(
      train::options_from_json(io::parse_json(probe.options_json, where), where));
  const auto given = [&](const std::string& flag) {
    return std::find(o.given.begin(), o.given.end(), flag) != o.given.end();
  };
  const json mine = train::options_to_json(o);
  for (const auto& [key, value] : mine.items()) {
    std::string flag = "--" + key;
    std::replace(flag.begin(), flag.end(), '_', '-');
    if (!given(flag)) continue;
    const bool model = key == "layers" || key == "hidden" || key == "embed" || key == "peephole" ||
                       key == "level" || key == "tie_weights" || key == "zoneout_h" ||
                       key == "zoneout_s" || key == "layer_norm";
    if (model && base.contains(key) && base[key] != value)
      throw InputError(fmt::format("{} {}: --finetune keeps the model of {} ({} {})", flag,
                                   value.dump(), run, key, base[key].dump()));
    base[key] = value;
  }
  TrainOptions f = train::options_from_json(base, where);
  f.finetune = o.finetune, f.given = o.given;
  f.optimizer = given("--optimizer") ? o.optimizer : "asgd";
  f.out = o.out, f.threads = o.threads, f.max_steps = o.max_steps;
  f.checkpoint_every = o.checkpoint_every, f.quiet = o.quiet, f.comm_overlap = o.comm_overlap;
  return f;
}

int start_training(const TrainOptions& opts, Collective& world, train::StartGate& gate) {
  using train::Checkpoint;
  TrainOptions o = opts;
  if (!o.finetune.empty()) o = finetune_options(o);
  if (!o.resume.empty()) {
    const fs::path ck = o.resume / "checkpoint.safetensors";
    if (!fs::exists(ck))
      throw InputError(
          fmt::format("--resume {}: no checkpoint.safetensors there", o.resume.string()));
    // The run continues with its own options; only how long it runs may change.
    const std::string file = ck.string();
    const std::string where = file + ": __metadata__ 'lstmgrad.train_options'";
    // Read once as double to get the options (parameters are re-read in the run's dtype).
    const Checkpoint<double> probe = train::read_checkpoint<double>(ck);
    TrainOptions stored =
        train::options_from_json(io::parse_json(probe.options_json, where), where);
    // Named as the checkpoint's fields, except those the command line gives.
    const bool threads_given = o.threads > 0;
    auto name = [&](std::string_view flag) {
      if ((flag == "--epochs" && o.epochs_given) || (flag == "--device" && o.device_given) ||
          (flag == "--threads" && threads_given))
        return std::string(flag);
      std::string key(flag.substr(2));
      std::replace(key.begin(), key.end(), '-', '_');
      return fmt::format("{}: key '{}'", where, key);
    };
    const int64_t stored_epochs = stored.epochs;
    stored.out = o.resume, stored.resume = o.resume;
    stored.max_steps = o.max_steps, stored.checkpoint_every = o.checkpoint_every;
    stored.quiet = o.quiet, stored.comm_overlap = o.comm_overlap;
    if (o.device_given) stored.device = o.device;   // else the run's own
    if (threads_given) stored.threads = o.threads;  // else the run's own: results depend on it
    if (o.epochs_given) stored.epochs = o.epochs;
    o = stored;
    train::validate_options(o, name);
    validate_ranks(o, name, world.size());
    train::check_resumable(probe, o, stored_epochs, file);
    if (o.dtype == "f32") {
      const Checkpoint<float> c = train::read_checkpoint<float>(ck);
      return train::Trainer<float>(o, world, gate).run(&c);
    }
    const Checkpoint<double> c = train::read_checkpoint<double>(ck);
    return train::Trainer<double>(o, world, gate).run(&c);
  }
  train::validate_options(o, train::flag_name);
  validate_ranks(o, train::flag_name, world.size());
  if (world.rank() == 0) train::ensure_fresh_out(o.out);
  return o.dtype == "f32" ? train::Trainer<float>(o, world, gate).run(nullptr)
                          : train::Trainer<double>(o, world, gate).run(nullptr);
}

}  // namespace

void refuse_training_start(Collective& world, const std::string& error) {
  train::StartGate(world).fail(error);
}

void agree_to_start(Collective& world, const std::string& error) {
  train::StartGate gate(world);
  if (!error.empty()) gate.fail(error);
  gate.pass(train::StartReport{});  // no hashes to compare: each rank's own input
}

int run_training(const TrainOptions& opts) {
  SingleProcess alone;
  return run_training(opts, alone);
}

int run_training(const TrainOptions& opts, Collective& world) {
  train::StartGate gate(world);
  try {
    return start_training(opts, world, gate);
  } catch (const train::Halted& e) {  // every rank halts at the same update; rank 0 says why
    if (world.rank() == 0) std::fprintf(stderr, "lstmgrad train: %s\n", e.what());
    return 1;
  } catch (const InputError& e) {
    if (world.size() == 1) throw;
    if (!gate.passed()) gate.fail(e.what());  // every rank stops; rank 0 says why
    // After the start (a file rank 0 cannot write): the other ranks wait for this one in an
    // exchange; end the job now, with the message.
    std::fprintf(stderr, "lstmgrad: error: rank %d: %s\n", world.rank(), e.what());
    world.abort(2);
    throw;
  }
}

}  // namespace lstmgrad
