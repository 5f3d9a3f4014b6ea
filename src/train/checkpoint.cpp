#include <fmt/format.h>

#include <charconv>
#include <cmath>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "io/json_text.hpp"
#include "lstmgrad/error.hpp"
#include "lstmgrad/model_io.hpp"
#include "lstmgrad/safetensors.hpp"
#include "train/run_state.hpp"

namespace lstmgrad::train {

namespace {

using nlohmann::json;

constexpr const char* kRunStateKey = "lstmgrad.run_state";

template <class Real>
std::vector<Real> slice(const std::vector<Real>& v, const ParamInfo& p) {
  return {v.begin() + static_cast<std::ptrdiff_t>(p.offset),
          v.begin() + static_cast<std::ptrdiff_t>(p.offset + p.size)};
}

json run_to_json(const RunState& r) {
  return {{"epoch", r.epoch},
          {"window", r.window},
          {"step", r.step},
          {"plateau_decays", r.plateau_decays},
          {"best_valid", r.best_valid},
          {"best_epoch_valid", r.best_epoch_valid},
          {"epoch_loss_sum", r.epoch_loss_sum},
          {"epoch_tokens", r.epoch_tokens},
          {"skipped", r.skipped},
          {"wall_s", r.wall_s},
          {"offset", r.offset},
          {"valid_history", r.valid_history},
          {"asgd_from", r.asgd_from},
          {"asgd_steps", r.asgd_steps},
          {"asgd_eta", r.asgd_eta},
          {"finished", r.finished},
          {"rng", r.rng},
          {"metrics", r.metrics}};
}

[[noreturn]] void bad_key(const std::string& file, const char* meta, const char* key,
                          const std::string& what) {
  throw InputError(fmt::format("{}: __metadata__ '{}': key '{}': {}", file, meta, key, what));
}

// A count: a JSON integer in [0, 2^53] (beyond it nothing a run counts can be).
int64_t count_at(const json& j, const char* key, const std::string& file) {
  const auto it = j.find(key);
  if (it == j.end() || !it->is_number_integer())
    bad_key(file, kRunStateKey, key,
            fmt::format("expected an integer, got {}", it == j.end() ? "nothing" : it->dump()));
  if (it->is_number_integer() && !it->is_number_unsigned())
    bad_key(file, kRunStateKey, key, fmt::format("must be >= 0, got {}", it->get<int64_t>()));
  const uint64_t u = it->get<uint64_t>();
  if (u > (uint64_t{1} << 53))
    bad_key(file, kRunStateKey, key, fmt::format("{} is out of range", u));
  return static_cast<int64_t>(u);
}

// A loss or a time: a finite JSON number >= 0.
double amount_at(const json& j, const char* key, const std::string& file) {
  const auto it = j.find(key);
  if (it == j.end() || !it->is_number() || !(it->get<double>() >= 0) ||
      !std::isfinite(it->get<double>()))
    bad_key(file, kRunStateKey, key,
            fmt::format("expected a finite number >= 0, got {}",
                        it == j.end() ? "nothing" : it->dump()));
  return it->get<double>();
}

std::vector<std::string> metrics_at(const json& j, const std::string& file) {
  const auto it = j.find("metrics");
  if (it == j.end() || !it->is_array())
    bad_key(file, kRunStateKey, "metrics", "expected a list of metrics.jsonl lines");
  std::vector<std::string> lines;
  for (const json& line : *it) {
    // Each goes back into metrics.jsonl as one line holding one JSON object.
    bool ok = line.is_string() && line.get<std::string>().find('\n') == std::string::npos;
    if (ok) ok = json::parse(line.get<std::string>(), nullptr, false).is_object();
    if (!ok)
      bad_key(file, kRunStateKey, "metrics",
              fmt::format("entry {} is not one line of a JSON object", lines.size()));
    lines.push_back(line.get<std::string>());
  }
  return lines;
}

RunState run_from_json(const std::string& text, const std::string& file) {
  const json j = io::parse_json(text, fmt::format("{}: __metadata__ '{}'", file, kRunStateKey));
  if (!j.is_object())
    throw InputError(
        fmt::format("{}: __metadata__ '{}': expected a JSON object", file, kRunStateKey));
  RunState r;
  r.epoch = count_at(j, "epoch", file), r.window = count_at(j, "window", file);
  r.step = count_at(j, "step", file), r.plateau_decays = count_at(j, "plateau_decays", file);
  r.epoch_tokens = count_at(j, "epoch_tokens", file);
  if (j.contains("skipped")) r.skipped = count_at(j, "skipped", file);  // absent: none (older)
  r.best_valid = amount_at(j, "best_valid", file);
  r.best_epoch_valid = amount_at(j, "best_epoch_valid", file);
  r.epoch_loss_sum = amount_at(j, "epoch_loss_sum", file), r.wall_s = amount_at(j, "wall_s", file);
  if (r.epoch < 1) bad_key(file, kRunStateKey, "epoch", "must be >= 1, got 0");
  const auto rng = j.find("rng");
  if (rng == j.end() || !rng->is_string())
    bad_key(file, kRunStateKey, "rng", "expected the random-number state as a string");
  r.rng = rng->get<std::string>();
  rng_from_state(r.rng, fmt::format("{}: __metadata__ '{}': key 'rng'", file, kRunStateKey));
  r.metrics = metrics_at(j, file);
  // Written since AWD-LSTM's loop (absent in older checkpoints: no jitter, no averaging).
  if (j.contains("offset")) r.offset = count_at(j, "offset", file);
  if (j.contains("asgd_steps")) r.asgd_steps = count_at(j, "asgd_steps", file);
  if (j.contains("asgd_eta")) r.asgd_eta = amount_at(j, "asgd_eta", file);
  if (const auto it = j.find("asgd_from"); it != j.end()) {
    if (!it->is_number_integer() || it->get<int64_t>() < -1 || it->get<int64_t>() > r.step)
      bad_key(file, kRunStateKey, "asgd_from",
              fmt::format("expected an update count in [-1, {}], got {}", r.step, it->dump()));
    r.asgd_from = it->get<int64_t>();
  }
  if (const auto it = j.find("finished"); it != j.end()) {
    if (!it->is_boolean()) bad_key(file, kRunStateKey, "finished", "expected true or false");
    r.finished = it->get<bool>();
  }
  if (const auto it = j.find("valid_history"); it != j.end()) {
    if (!it->is_array()) bad_key(file, kRunStateKey, "valid_history", "expected a list of losses");
    for (const json& v : *it) {
      if (!v.is_number() || !std::isfinite(v.get<double>()))
        bad_key(file, kRunStateKey, "valid_history",
                fmt::format("entry {} is not a finite number", r.valid_history.size()));
      r.valid_history.push_back(v.get<double>());
    }
  }
  return r;
}

// The whole text as a decimal count >= 0 ("12abc", "-1" and "1e3" are refused).
int64_t parse_count(const std::string& text, const std::string& file, const char* key) {
  int64_t n = -1;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
  if (ec != std::errc() || end != text.data() + text.size() || n < 0)
    throw InputError(fmt::format("{}: __metadata__ '{}': expected a count >= 0, got {}", file, key,
                                 json(text).dump(-1, ' ', false, json::error_handler_t::replace)));
  return n;
}

std::vector<std::string> vocab_from_json(const std::string& text, const std::string& file) {
  const std::string where = fmt::format("{}: __metadata__ 'lstmgrad.vocab'", file);
  const json j = io::parse_json(text, where);
  if (!j.is_array()) throw InputError(where + ": expected a JSON list of strings");
  std::vector<std::string> words;
  for (const json& w : j) {
    if (!w.is_string())
      throw InputError(fmt::format("{}: entry {} is not a string", where, words.size()));
    words.push_back(w.get<std::string>());
  }
  return words;
}

// A vector tensor of n finite values (the moments, the carried state); `non_negative` for Adam's
// second moment, whose square root the update takes.
template <class Real>
std::vector<Real> vector_tensor(const io::TensorFile& f, const char* name, const std::string& file,
                                bool non_negative = false) {
  const io::Tensor& t = f.require(name, file);
  if (t.shape.size() != 1)
    throw InputError(
        fmt::format("{}: tensor '{}': expected one dimension, got {}", file, name, t.shape.size()));
  std::vector<Real> v = io::to_floats<Real>(t, file);
  for (size_t k = 0; k < v.size(); ++k)
    if (!std::isfinite(v[k]) || (non_negative && v[k] < 0))
      throw InputError(fmt::format("{}: tensor '{}': value {} at index {} is not {}", file, name,
                                   static_cast<double>(v[k]), k,
                                   non_negative ? "finite and >= 0" : "finite"));
  return v;
}

}  // namespace

std::mt19937_64 rng_from_state(const std::string& state, const std::string& where) {
  std::mt19937_64 rng;
  std::istringstream in(state);
  in >> rng;
  bool whole = !in.fail();
  if (whole && !in.eof()) whole = (in >> std::ws).eof();  // nothing after the state
  if (!whole)
    throw InputError(fmt::format("{}: not a random-number state (std::mt19937_64)", where));
  return rng;
}

template <class Real>
void write_checkpoint(const std::filesystem::path& path, const Checkpoint<Real>& c) {
  io::TensorFile f;
  f.metadata["lstmgrad.config"] = config_to_json(c.cfg);
  f.metadata["lstmgrad.vocab"] = json(c.vocab).dump();
  f.metadata["lstmgrad.level"] = c.level;
  f.metadata["lstmgrad.train_options"] = c.options_json;
  f.metadata[kRunStateKey] = run_to_json(c.run).dump();
  f.metadata["lstmgrad.optimizer_steps"] = std::to_string(c.optimizer_steps);
  for (const ParamInfo& p : parameter_layout(c.cfg))
    f.add(io::make_tensor(p.name, p.shape, slice(c.params, p)));
  const int64_t n = static_cast<int64_t>(c.params.size());
  if (!c.m.empty()) {
    f.add(io::make_tensor("optimizer.m", {n}, c.m));
    f.add(io::make_tensor("optimizer.v", {n}, c.v));
  }
  if (!c.ax.empty()) f.add(io::make_tensor("optimizer.ax", {n}, c.ax));
  // (a projection makes h narrower than s: each its own length)
  f.add(io::make_tensor("carry.h", {static_cast<int64_t>(c.h.size())}, c.h));
  f.add(io::make_tensor("carry.s", {static_cast<int64_t>(c.s.size())}, c.s));
  io::write_safetensors(path, f);
}

template <class Real>
Checkpoint<Real> read_checkpoint(const std::filesystem::path& path) {
  const std::string file = path.string();
  const io::TensorFile f = io::read_safetensors(path);
  Checkpoint<Real> c;
  auto meta = [&](const char* key) -> const std::string& {
    auto it = f.metadata.find(key);
    if (it == f.metadata.end())
      throw InputError(
          fmt::format("{}: not a training checkpoint (no __metadata__ '{}')", file, key));
    return it->second;
  };
  c.cfg = config_from_json(meta("lstmgrad.config"), file);
  c.vocab = vocab_from_json(meta("lstmgrad.vocab"), file);
  c.run = run_from_json(meta(kRunStateKey), file);
  c.optimizer_steps =
      parse_count(meta("lstmgrad.optimizer_steps"), file, "lstmgrad.optimizer_steps");
  c.level = meta("lstmgrad.level");
  c.options_json = meta("lstmgrad.train_options");
  c.params = read_parameters<Real>(f, c.cfg, file);  // shapes checked before any allocation
  if (f.find("optimizer.m") || f.find("optimizer.v")) {
    c.m = vector_tensor<Real>(f, "optimizer.m", file);
    c.v = vector_tensor<Real>(f, "optimizer.v", file, /*non_negative=*/true);
    if (c.m.size() != c.params.size() || c.v.size() != c.params.size())
      throw InputError(fmt::format(
          "{}: tensors 'optimizer.m' and 'optimizer.v': {} and {} values for {} parameters", file,
          c.m.size(), c.v.size(), c.params.size()));
  }
  if (f.find("optimizer.ax")) {
    c.ax = vector_tensor<Real>(f, "optimizer.ax", file);
    if (c.ax.size() != c.params.size())
      throw InputError(fmt::format("{}: tensor 'optimizer.ax': {} values for {} parameters", file,
                                   c.ax.size(), c.params.size()));
  }
  if ((c.run.asgd_from >= 0) != !c.ax.empty())
    throw InputError(fmt::format(
        "{}: __metadata__ '{}' key 'asgd_from' {} does not fit the tensor 'optimizer.ax' ({})",
        file, kRunStateKey, c.run.asgd_from, c.ax.empty() ? "absent" : "present"));
  c.h = vector_tensor<Real>(f, "carry.h", file);
  c.s = vector_tensor<Real>(f, "carry.s", file);
  // (each one's length against the model and the batch: the trainer's check_resumable)

  std::set<std::string> known{"carry.h", "carry.s"};
  if (!c.m.empty()) known.insert({"optimizer.m", "optimizer.v"});
  if (!c.ax.empty()) known.insert("optimizer.ax");
  for (const ParamInfo& p : parameter_layout(c.cfg)) known.insert(p.name);
  for (const io::Tensor& t : f.tensors)
    if (!known.count(t.name))
      throw InputError(fmt::format("{}: unexpected tensor '{}' in a checkpoint", file, t.name));
  return c;
}

template void write_checkpoint<float>(const std::filesystem::path&, const Checkpoint<float>&);
template void write_checkpoint<double>(const std::filesystem::path&, const Checkpoint<double>&);
template Checkpoint<float> read_checkpoint<float>(const std::filesystem::path&);
template Checkpoint<double> read_checkpoint<double>(const std::filesystem::path&);

}  // namespace lstmgrad::train
