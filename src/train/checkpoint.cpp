#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "lstmgrad/error.hpp"
#include "lstmgrad/model_io.hpp"
#include "lstmgrad/safetensors.hpp"
#include "train/run_state.hpp"

namespace lstmgrad::train {

namespace {

using nlohmann::json;

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
          {"wall_s", r.wall_s},
          {"rng", r.rng},
          {"metrics", r.metrics}};
}

RunState run_from_json(const json& j) {
  RunState r;
  r.epoch = j.at("epoch"), r.window = j.at("window"), r.step = j.at("step");
  r.plateau_decays = j.at("plateau_decays"), r.best_valid = j.at("best_valid");
  r.best_epoch_valid = j.at("best_epoch_valid");
  r.epoch_loss_sum = j.at("epoch_loss_sum"), r.epoch_tokens = j.at("epoch_tokens");
  r.wall_s = j.at("wall_s"), r.rng = j.at("rng");
  r.metrics = j.at("metrics").get<std::vector<std::string>>();
  return r;
}

}  // namespace

template <class Real>
void write_checkpoint(const std::filesystem::path& path, const Checkpoint<Real>& c) {
  io::TensorFile f;
  f.metadata["lstmgrad.config"] = config_to_json(c.cfg);
  f.metadata["lstmgrad.vocab"] = json(c.vocab).dump();
  f.metadata["lstmgrad.level"] = c.level;
  f.metadata["lstmgrad.train_options"] = c.options_json;
  f.metadata["lstmgrad.run_state"] = run_to_json(c.run).dump();
  f.metadata["lstmgrad.optimizer_steps"] = std::to_string(c.optimizer_steps);
  for (const ParamInfo& p : parameter_layout(c.cfg))
    f.add(io::make_tensor(p.name, p.shape, slice(c.params, p)));
  const int64_t n = static_cast<int64_t>(c.params.size());
  if (!c.m.empty()) {
    f.add(io::make_tensor("optimizer.m", {n}, c.m));
    f.add(io::make_tensor("optimizer.v", {n}, c.v));
  }
  const int64_t S = static_cast<int64_t>(c.h.size());
  f.add(io::make_tensor("carry.h", {S}, c.h));
  f.add(io::make_tensor("carry.s", {S}, c.s));
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
  try {
    c.cfg = config_from_json(meta("lstmgrad.config"), file);
    c.vocab = json::parse(meta("lstmgrad.vocab")).template get<std::vector<std::string>>();
    c.run = run_from_json(json::parse(meta("lstmgrad.run_state")));
    c.optimizer_steps = std::stoll(meta("lstmgrad.optimizer_steps"));
  } catch (const json::exception& e) {
    throw InputError(fmt::format("{}: corrupt checkpoint metadata ({})", file, e.what()));
  }
  c.level = meta("lstmgrad.level");
  c.options_json = meta("lstmgrad.train_options");
  validate_config(c.cfg);
  c.params.resize(parameter_count(c.cfg));
  for (const ParamInfo& p : parameter_layout(c.cfg)) {
    const io::Tensor& t = f.require(p.name, file);
    if (t.shape != p.shape)
      throw InputError(fmt::format("{}: tensor '{}' has the wrong shape", file, p.name));
    const std::vector<Real> v = io::to_floats<Real>(t, file);
    std::copy(v.begin(), v.end(), c.params.begin() + static_cast<std::ptrdiff_t>(p.offset));
  }
  if (f.find("optimizer.m")) {
    c.m = io::to_floats<Real>(f.require("optimizer.m", file), file);
    c.v = io::to_floats<Real>(f.require("optimizer.v", file), file);
    if (c.m.size() != c.params.size() || c.v.size() != c.params.size())
      throw InputError(fmt::format("{}: optimizer state does not match the model", file));
  }
  c.h = io::to_floats<Real>(f.require("carry.h", file), file);
  c.s = io::to_floats<Real>(f.require("carry.s", file), file);
  return c;
}

template void write_checkpoint<float>(const std::filesystem::path&, const Checkpoint<float>&);
template void write_checkpoint<double>(const std::filesystem::path&, const Checkpoint<double>&);
template Checkpoint<float> read_checkpoint<float>(const std::filesystem::path&);
template Checkpoint<double> read_checkpoint<double>(const std::filesystem::path&);

}  // namespace lstmgrad::train
