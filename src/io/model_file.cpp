// Model, batch and gradient files on top of the safetensors reader and writer.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <unordered_map>

#include "io/json_text.hpp"
#include "lstmgrad/error.hpp"
#include "lstmgrad/model_io.hpp"
#include "lstmgrad/safetensors.hpp"

namespace lstmgrad {

namespace {

using io::Tensor;
using io::TensorFile;
using nlohmann::json;

constexpr const char* kConfigKey = "lstmgrad.config";
constexpr const char* kVocabKey = "lstmgrad.vocab";
constexpr const char* kLevelKey = "lstmgrad.level";

std::string shape_str(const std::vector<int64_t>& s) {
  return fmt::format("[{}]", fmt::join(s, ", "));
}

[[noreturn]] void fail(const std::string& file, const std::string& what) {
  throw InputError(fmt::format("{}: {}", file, what));
}

// The configuration the tensors imply (PyTorch's state_dict carries no metadata).
ModelConfig infer_config(const TensorFile& f, const std::string& file) {
  ModelConfig c;
  const Tensor* hh = f.find("rnn.weight_hh_l0");
  const Tensor* ih = f.find("rnn.weight_ih_l0");
  if (!hh || !ih)
    fail(file, fmt::format("missing tensor '{}' (not an LSTM model file?)",
                           hh ? "rnn.weight_ih_l0" : "rnn.weight_hh_l0"));
  if (hh->shape.size() != 2 || ih->shape.size() != 2)
    fail(file, fmt::format("tensor '{}': expected 2 dimensions, got {}",
                           hh->shape.size() != 2 ? hh->name : ih->name,
                           shape_str(hh->shape.size() != 2 ? hh->shape : ih->shape)));
  c.L = 0;
  while (f.find(fmt::format("rnn.weight_ih_l{}", c.L))) ++c.L;
  // each layer's width from its weight_hh [4 H_k, H_k]; the top one is H. With a projection
  // (PyTorch's proj_size) from its weight_hr [P, H_k], and H is P.
  const Tensor* hr = f.find("rnn.weight_hr_l0");
  c.proj = hr && hr->shape.size() == 2 ? hr->shape[0] : 0;
  for (int64_t k = 0; k < c.L; ++k) {
    const Tensor* w = f.find(fmt::format("rnn.weight_{}_l{}", hr ? "hr" : "hh", k));
    c.hidden.push_back(w && w->shape.size() == 2 ? w->shape[1] : hh->shape[1]);
  }
  c.H = c.proj > 0 ? c.proj : c.hidden.empty() ? hh->shape[1] : c.hidden.back();
  bool uniform = c.proj == 0;
  for (int64_t w : c.hidden) uniform = uniform && w == c.H;
  if (uniform) c.hidden.clear();
  const Tensor* enc = f.find("encoder.weight");
  c.input = enc ? InputKind::embedding : InputKind::dense;
  c.X = enc && enc->shape.size() == 2 ? enc->shape[1] : ih->shape[1];
  const Tensor* dec = f.find("decoder.weight");
  // decoder.bias without decoder.weight: the readout tied to encoder.weight (AWD-LSTM's state_dict
  // holds the one shared tensor under encoder.weight too).
  c.tie_weights = !dec && enc && f.find("decoder.bias");
  c.readout = dec || c.tie_weights ? Readout::linear : Readout::identity;
  c.V = dec && !dec->shape.empty()   ? dec->shape[0]
        : enc && !enc->shape.empty() ? enc->shape[0]
                                     : c.H;
  c.peephole = f.find("rnn.weight_peephole_l0") != nullptr;
  c.layer_norm = f.find("rnn.weight_ln_ih_l0") != nullptr;
  return c;
}

[[noreturn]] void bad_config(const std::string& file, const std::string& what) {
  fail(file, fmt::format("__metadata__ '{}': {}", kConfigKey, what));
}

// A size: an integer that fits int64 (validate_config checks its range).
int64_t json_int(const json& j, const char* key, const std::string& file) {
  const auto it = j.find(key);
  const bool fits =
      it != j.end() && it->is_number_integer() &&
      (!it->is_number_unsigned() ||
       it->get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()));
  if (!fits)
    bad_config(file, fmt::format("key '{}' must be an integer, got {}", key,
                                 it == j.end() ? "nothing" : it->dump()));
  return it->get<int64_t>();
}

// One of `allowed`, as a JSON string.
std::string json_choice(const json& j, const char* key, const char* a, const char* b,
                        const std::string& file) {
  const auto it = j.find(key);
  if (it == j.end() || !it->is_string() || (*it != a && *it != b))
    bad_config(file, fmt::format("key '{}' must be \"{}\" or \"{}\", got {}", key, a, b,
                                 it == j.end() ? "nothing" : it->dump()));
  return it->get<std::string>();
}

}  // namespace

ModelConfig config_from_json(const std::string& text, const std::string& file) {
  const json j = io::parse_json(text, fmt::format("{}: __metadata__ '{}'", file, kConfigKey));
  if (!j.is_object())
    bad_config(file, fmt::format("expected a JSON object, got {}", j.type_name()));
  ModelConfig c;
  c.input = json_choice(j, "input", "dense", "embedding", file) == "dense" ? InputKind::dense
                                                                           : InputKind::embedding;
  c.readout = json_choice(j, "readout", "identity", "linear", file) == "identity"
                  ? Readout::identity
                  : Readout::linear;
  c.V = json_int(j, "V", file), c.X = json_int(j, "X", file);
  c.H = json_int(j, "H", file), c.L = json_int(j, "L", file);
  if (j.contains("peephole")) {  // absent: the plain cell (files written before peepholes)
    if (!j["peephole"].is_boolean())
      bad_config(file,
                 fmt::format("key 'peephole' must be true or false, got {}", j["peephole"].dump()));
    c.peephole = j["peephole"].get<bool>();
  }
  if (j.contains("tie_weights")) {  // absent: untied (files written before --tie-weights)
    if (!j["tie_weights"].is_boolean())
      bad_config(file, fmt::format("key 'tie_weights' must be true or false, got {}",
                                   j["tie_weights"].dump()));
    c.tie_weights = j["tie_weights"].get<bool>();
  }
  if (j.contains("hidden")) {  // absent: every layer H
    const json& h = j["hidden"];
    if (!h.is_array()) bad_config(file, "key 'hidden' must be a list of sizes");
    for (const json& w : h) {
      if (!w.is_number_integer() || w.get<int64_t>() < 1)
        bad_config(file,
                   fmt::format("key 'hidden': sizes must be integers >= 1, got {}", w.dump()));
      c.hidden.push_back(w.get<int64_t>());
    }
  }
  if (j.contains("proj")) {  // absent: no projection (files written before it)
    const json& p = j["proj"];
    if (!p.is_number_integer() || p.get<int64_t>() < 1)
      bad_config(file, fmt::format("key 'proj' must be an integer >= 1, got {}", p.dump()));
    c.proj = p.get<int64_t>();
  }
  if (j.contains("layer_norm")) {  // absent: no layer norm (files written before it)
    if (!j["layer_norm"].is_boolean())
      bad_config(file, fmt::format("key 'layer_norm' must be true or false, got {}",
                                   j["layer_norm"].dump()));
    c.layer_norm = j["layer_norm"].get<bool>();
  }
  for (const auto& [key, p] :
       {std::pair{"zoneout_h", &c.zoneout_h}, std::pair{"zoneout_s", &c.zoneout_s}}) {
    if (!j.contains(key)) continue;  // absent: no zoneout (files written before it)
    if (!j[key].is_number() || !(j[key].get<double>() >= 0 && j[key].get<double>() < 1))
      bad_config(file,
                 fmt::format("key '{}' must be a number in [0, 1), got {}", key, j[key].dump()));
    *p = j[key].get<double>();
  }
  return c;
}

std::string config_to_json(const ModelConfig& c) {
  json j{{"input", to_string(c.input)},
         {"readout", to_string(c.readout)},
         {"V", c.V},
         {"X", c.X},
         {"H", c.H},
         {"L", c.L}};
  if (c.peephole) j["peephole"] = true;               // the plain cell's files stay as they were
  if (c.tie_weights) j["tie_weights"] = true;         // untied files too
  if (c.zoneout_h > 0) j["zoneout_h"] = c.zoneout_h;  // and files without zoneout
  if (c.zoneout_s > 0) j["zoneout_s"] = c.zoneout_s;
  if (c.layer_norm) j["layer_norm"] = true;
  if (c.proj > 0) j["proj"] = c.proj;  // with `hidden` always: the cells' widths
  bool uniform = c.proj == 0;
  for (int64_t w : c.hidden) uniform = uniform && w == c.H;
  if (!uniform) j["hidden"] = c.hidden;  // files of uniform models stay as they were

  return j.dump();
}

namespace {

template <class Real>
void expect_finite(const std::vector<Real>& v, const std::string& file, const std::string& name) {
  for (size_t k = 0; k < v.size(); ++k)
    if (!std::isfinite(v[k]))
      fail(file, fmt::format("tensor '{}': non-finite value {} at flat index {}", name,
                             static_cast<double>(v[k]), k));
}

std::vector<std::string> read_vocab(const std::map<std::string, std::string>& metadata,
                                    const std::string& file) {
  auto it = metadata.find(kVocabKey);
  if (it == metadata.end()) return {};
  try {
    return json::parse(it->second).get<std::vector<std::string>>();
  } catch (const json::exception&) {
    fail(file, fmt::format("__metadata__ '{}' must be a JSON list of strings", kVocabKey));
  }
}

}  // namespace

template <class Real>
std::vector<Real> read_parameters(const io::TensorFile& f, const ModelConfig& cfg,
                                  const std::string& file) {
  try {
    validate_config(cfg);
  } catch (const InputError& e) {
    fail(file, e.what());
  }
  std::unordered_map<std::string_view, const Tensor*> by_name;
  for (const Tensor& t : f.tensors) by_name.emplace(t.name, &t);
  const std::vector<ParamInfo> layout = parameter_layout(cfg);
  // Every shape first: the sizes the config claims are then ones the file's bytes hold.
  std::vector<const Tensor*> found;
  for (const ParamInfo& p : layout) {
    const auto it = by_name.find(p.name);
    if (it == by_name.end())
      fail(file, fmt::format("missing tensor '{}' (model H={}, X={}, V={}, L={})", p.name, cfg.H,
                             cfg.X, cfg.V, cfg.L));
    if (it->second->shape != p.shape)
      fail(file,
           fmt::format("tensor '{}': expected shape {}, got {} (model H={}, X={}, V={}, L={})",
                       p.name, shape_str(p.shape), shape_str(it->second->shape), cfg.H, cfg.X,
                       cfg.V, cfg.L));
    found.push_back(it->second);
  }
  std::vector<Real> params(parameter_count(cfg));
  for (size_t k = 0; k < layout.size(); ++k) {
    const std::vector<Real> v = io::to_floats<Real>(*found[k], file);
    expect_finite(v, file, layout[k].name);
    std::copy(v.begin(), v.end(), params.begin() + static_cast<std::ptrdiff_t>(layout[k].offset));
  }
  return params;
}

data::Vocabulary model_vocabulary(const std::map<std::string, std::string>& metadata, int64_t V,
                                  const std::string& file) {
  const auto level = metadata.find(kLevelKey);
  const data::Level lv = data::parse_level(level == metadata.end() ? "word" : level->second,
                                           fmt::format("{}: __metadata__ '{}'", file, kLevelKey));
  const std::vector<std::string> words = read_vocab(metadata, file);
  if (!words.empty() && static_cast<int64_t>(words.size()) != V)
    fail(file,
         fmt::format("__metadata__ '{}' has {} words but V = {}", kVocabKey, words.size(), V));
  return data::Vocabulary::from_words(lv, words,
                                      fmt::format("{}: __metadata__ '{}'", file, kVocabKey));
}

template <class Real>
Model<Real> load_model(const std::filesystem::path& path) {
  const std::string file = path.string();
  const TensorFile f = io::read_safetensors(path);
  Model<Real> m;
  auto it = f.metadata.find(kConfigKey);
  m.cfg = it != f.metadata.end() ? config_from_json(it->second, file) : infer_config(f, file);
  m.params = read_parameters<Real>(f, m.cfg, file);
  const std::set<std::string> expected = [&] {
    std::set<std::string> names;
    for (const ParamInfo& p : parameter_layout(m.cfg)) names.insert(p.name);
    return names;
  }();
  for (const Tensor& t : f.tensors)
    if (!expected.count(t.name))
      fail(file, fmt::format("unexpected tensor '{}' for a model with config {}", t.name,
                             config_to_json(m.cfg)));
  model_vocabulary(f.metadata, m.cfg.V, file);  // checked here, so that every command refuses
  m.metadata = f.metadata;
  m.vocab = read_vocab(f.metadata, file);
  return m;
}

template <class Real>
void save_model(const std::filesystem::path& path, const ModelConfig& cfg,
                std::span<const Real> params, const std::vector<std::string>& vocab,
                const std::map<std::string, std::string>& metadata) {
  TensorFile f;
  f.metadata = metadata;
  f.metadata[kConfigKey] = config_to_json(cfg);
  if (!vocab.empty()) f.metadata[kVocabKey] = json(vocab).dump();
  for (const ParamInfo& p : parameter_layout(cfg)) {
    const std::vector<Real> v(params.begin() + static_cast<std::ptrdiff_t>(p.offset),
                              params.begin() + static_cast<std::ptrdiff_t>(p.offset + p.size));
    f.add(io::make_tensor(p.name, p.shape, v));
  }
  io::write_safetensors(path, f);
}

namespace {

void expect_shape(const Tensor& t, const std::vector<int64_t>& want, const std::string& what,
                  const std::string& file) {
  if (t.shape != want)
    fail(file, fmt::format("tensor '{}': shape {} disagrees with the batch: expected {} ({})",
                           t.name, shape_str(t.shape), shape_str(want), what));
}

// A state's shape (state_shape) described for messages: "[L=2, B=3, H=4]", or the flat size.
std::string state_what(const std::vector<int64_t>& shape) {
  if (shape.size() == 3) return fmt::format("[L={}, B={}, H={}]", shape[0], shape[1], shape[2]);
  return fmt::format("the layers' [B, H_k] blocks, {} values", shape[0]);
}

template <class Real>
std::vector<Real> float_tensor(const Tensor& t, const std::string& file) {
  if (!io::is_float(t.dtype))
    fail(file, fmt::format("tensor '{}': expected a float tensor (F32 or F64), got {}", t.name,
                           io::to_string(t.dtype)));
  std::vector<Real> v = io::to_floats<Real>(t, file);
  expect_finite(v, file, t.name);
  return v;
}

}  // namespace

template <class Real>
Batch<Real> load_batch(const std::filesystem::path& path, const ModelConfig& cfg) {
  const std::string file = path.string();
  const TensorFile f = io::read_safetensors(path);
  Batch<Real> b;
  const Tensor& in = f.require("input", file);
  const size_t want_rank = cfg.input == InputKind::embedding ? 2 : 3;
  if (in.shape.size() != want_rank)
    fail(file,
         fmt::format("tensor 'input': expected {} for this model, got shape {}",
                     cfg.input == InputKind::embedding ? "token ids [T, B]" : "vectors [T, B, X]",
                     shape_str(in.shape)));
  b.T = in.shape[0], b.B = in.shape[1];
  if (cfg.input == InputKind::embedding) {
    if (io::is_float(in.dtype))
      fail(file, fmt::format("tensor 'input': the model embeds token ids (I64 or I32), got {}",
                             io::to_string(in.dtype)));
    b.tokens = io::to_ints(in, file);
  } else {
    expect_shape(in, {b.T, b.B, cfg.X}, fmt::format("[T, B, X={}]", cfg.X), file);
    b.dense = float_tensor<Real>(in, file);
  }
  const Tensor* y = f.find("target");
  const Tensor* yp = f.find("target_probs");
  if (!y && !yp) fail(file, "missing tensor 'target' (class ids) or 'target_probs' (soft targets)");
  if (y && yp) fail(file, "give tensor 'target' or 'target_probs', not both");
  if (y) {
    expect_shape(*y, {b.T, b.B}, "[T, B] like 'input'", file);
    if (io::is_float(y->dtype))
      fail(file, fmt::format("tensor 'target': expected class ids (I64 or I32), got {}",
                             io::to_string(y->dtype)));
    b.target = io::to_ints(*y, file);
  } else {
    expect_shape(*yp, {b.T, b.B, cfg.V}, fmt::format("[T, B, V={}]", cfg.V), file);
    b.target_probs = float_tensor<Real>(*yp, file);
  }
  for (const char* name : {"h0", "s0"}) {
    const Tensor* t = f.find(name);
    if (!t) continue;
    const std::vector<int64_t> shape = state_shape(cfg, b.B, std::string(name) == "h0");
    expect_shape(*t, shape, state_what(shape), file);
    (std::string(name) == "h0" ? b.h0 : b.s0) = float_tensor<Real>(*t, file);
  }
  for (const Tensor& t : f.tensors)
    if (t.name != "input" && t.name != "target" && t.name != "target_probs" && t.name != "h0" &&
        t.name != "s0")
      fail(file, fmt::format("unexpected tensor '{}' (a batch holds input, target or "
                             "target_probs, and optionally h0, s0)",
                             t.name));
  validate_batch(cfg, b, file.c_str());
  return b;
}

template <class Real>
void save_batch(const std::filesystem::path& path, const ModelConfig& cfg, const Batch<Real>& b) {
  TensorFile f;
  if (cfg.input == InputKind::embedding)
    f.add(io::make_tensor("input", {b.T, b.B}, b.tokens));
  else
    f.add(io::make_tensor("input", {b.T, b.B, cfg.X}, b.dense));
  if (b.soft_targets())
    f.add(io::make_tensor("target_probs", {b.T, b.B, cfg.V}, b.target_probs));
  else
    f.add(io::make_tensor("target", {b.T, b.B}, b.target));
  if (!b.h0.empty()) f.add(io::make_tensor("h0", state_shape(cfg, b.B, true), b.h0));
  if (!b.s0.empty()) f.add(io::make_tensor("s0", state_shape(cfg, b.B, false), b.s0));
  io::write_safetensors(path, f);
}

template <class Real>
void save_gradients(const std::filesystem::path& path, const ModelConfig& cfg, int64_t T, int64_t B,
                    const GradientResult<Real>& g, Reduction red) {
  TensorFile f;
  f.metadata["reduction"] = to_string(red);
  f.metadata["dtype"] = sizeof(Real) == 4 ? "f32" : "f64";
  for (const ParamInfo& p : parameter_layout(cfg)) {
    const std::vector<Real> v(g.grad.begin() + static_cast<std::ptrdiff_t>(p.offset),
                              g.grad.begin() + static_cast<std::ptrdiff_t>(p.offset + p.size));
    f.add(io::make_tensor(p.name, p.shape, v));
  }
  f.add(io::make_tensor("loss", {}, std::vector<double>{g.loss}));
  const std::vector<int64_t> h_state = state_shape(cfg, B, true);
  const std::vector<int64_t> s_state = state_shape(cfg, B, false);
  f.add(io::make_tensor("h_n", h_state, g.h_n));
  f.add(io::make_tensor("s_n", s_state, g.s_n));
  if (!g.dinput.empty()) f.add(io::make_tensor("grad.input", {T, B, cfg.X}, g.dinput));
  if (!g.dh0.empty()) f.add(io::make_tensor("grad.h0", h_state, g.dh0));
  if (!g.ds0.empty()) f.add(io::make_tensor("grad.s0", s_state, g.ds0));

  io::write_safetensors(path, f);
}

#define LSTMGRAD_INSTANTIATE(Real)                                                              \
  template Model<Real> load_model<Real>(const std::filesystem::path&);                          \
  template std::vector<Real> read_parameters<Real>(const io::TensorFile&, const ModelConfig&,   \
                                                   const std::string&);                         \
  template void save_model<Real>(const std::filesystem::path&, const ModelConfig&,              \
                                 std::span<const Real>, const std::vector<std::string>&,        \
                                 const std::map<std::string, std::string>&);                    \
  template Batch<Real> load_batch<Real>(const std::filesystem::path&, const ModelConfig&);      \
  template void save_batch<Real>(const std::filesystem::path&, const ModelConfig&,              \
                                 const Batch<Real>&);                                           \
  template void save_gradients<Real>(const std::filesystem::path&, const ModelConfig&, int64_t, \
                                     int64_t, const GradientResult<Real>&, Reduction);
LSTMGRAD_INSTANTIATE(float)
LSTMGRAD_INSTANTIATE(double)
#undef LSTMGRAD_INSTANTIATE

}  // namespace lstmgrad
