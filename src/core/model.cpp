#include "lstmgrad/model.hpp"

#include <fmt/format.h>

#include <tuple>

#include "lstmgrad/error.hpp"

namespace lstmgrad {

std::vector<ParamInfo> parameter_layout(const ModelConfig& cfg) {
  std::vector<ParamInfo> out;
  size_t offset = 0;
  auto add = [&](std::string name, std::vector<int64_t> shape) {
    size_t n = 1;
    for (int64_t d : shape) n *= static_cast<size_t>(d);
    out.push_back({std::move(name), std::move(shape), offset, n});
    offset += n;
  };
  if (cfg.input == InputKind::embedding) add("encoder.weight", {cfg.V, cfg.X});
  for (int64_t k = 0; k < cfg.L; ++k) {
    const int64_t in = k == 0 ? cfg.X : cfg.out_width(k - 1), H = cfg.width(k);
    add(fmt::format("rnn.weight_ih_l{}", k), {4 * H, in});
    add(fmt::format("rnn.weight_hh_l{}", k), {4 * H, cfg.out_width(k)});
    add(fmt::format("rnn.bias_ih_l{}", k), {4 * H});
    add(fmt::format("rnn.bias_hh_l{}", k), {4 * H});
    if (cfg.proj > 0) add(fmt::format("rnn.weight_hr_l{}", k), {cfg.proj, H});
    if (cfg.peephole) add(fmt::format("rnn.weight_peephole_l{}", k), {3, H});
    if (cfg.layer_norm)
      for (const auto& [part, n] :
           {std::pair{"ih", 4 * H}, std::pair{"hh", 4 * H}, std::pair{"cell", H}}) {
        add(fmt::format("rnn.weight_ln_{}_l{}", part, k), {n});
        add(fmt::format("rnn.bias_ln_{}_l{}", part, k), {n});
      }
  }
  if (cfg.readout == Readout::linear) {
    if (!cfg.tie_weights) add("decoder.weight", {cfg.V, cfg.H});  // tied: encoder.weight
    add("decoder.bias", {cfg.V});
  }
  return out;
}

ParameterOffsets parameter_offsets(const ModelConfig& cfg) {
  const std::vector<ParamInfo> layout = parameter_layout(cfg);
  auto find = [&](const std::string& name) -> std::optional<size_t> {
    for (const ParamInfo& p : layout)
      if (p.name == name) return p.offset;
    return std::nullopt;
  };
  ParameterOffsets o;
  o.encoder_weight = find("encoder.weight");
  for (int64_t k = 0; k < cfg.L; ++k)
    o.layers.push_back(
        {*find(fmt::format("rnn.weight_ih_l{}", k)), *find(fmt::format("rnn.weight_hh_l{}", k)),
         *find(fmt::format("rnn.bias_ih_l{}", k)), *find(fmt::format("rnn.bias_hh_l{}", k)),
         find(fmt::format("rnn.weight_peephole_l{}", k)), find(fmt::format("rnn.weight_hr_l{}", k)),
         find(fmt::format("rnn.weight_ln_ih_l{}", k))});
  o.decoder_weight = cfg.tie_weights ? o.encoder_weight : find("decoder.weight");
  o.decoder_bias = find("decoder.bias");
  return o;
}

std::vector<int64_t> state_shape(const ModelConfig& cfg, int64_t B, bool is_h) {
  auto width = [&](int64_t k) { return is_h ? cfg.out_width(k) : cfg.width(k); };
  bool uniform = true;
  for (int64_t k = 1; k < cfg.L; ++k) uniform = uniform && width(k) == width(0);
  if (uniform) return {cfg.L, B, width(0)};
  return {is_h ? cfg.h_offset(cfg.L, B) : cfg.s_offset(cfg.L, B)};
}

size_t parameter_count(const ModelConfig& cfg) {
  auto layout = parameter_layout(cfg);
  return layout.empty() ? 0 : layout.back().offset + layout.back().size;
}

namespace {

constexpr int64_t kMaxWidth = int64_t{1} << 31;  // V, X, H
constexpr int64_t kMaxLayers = 1 << 16;          // L
constexpr double kMaxParameters = 0x1p48;        // 2^48 scalars: 1 PiB as float32

// parameter_count in floating point, for sizes that may not fit the exact count's 64 bits.
double parameter_count_estimate(const ModelConfig& c) {
  const double V = static_cast<double>(c.V), X = static_cast<double>(c.X);
  const double H = static_cast<double>(c.H), L = static_cast<double>(c.L);
  double layers = 0;  // (+ 18 H_k each with layer norm: small)
  if (c.hidden.empty()) {
    layers = 4 * H * (X + H + 2) + (L - 1) * 4 * H * (2 * H + 2);
  } else {
    const double P = static_cast<double>(c.proj);
    for (size_t k = 0; k < c.hidden.size(); ++k) {
      const double h = static_cast<double>(c.hidden[k]), out = c.proj > 0 ? P : h;
      const double in = k == 0 ? X : c.proj > 0 ? P : static_cast<double>(c.hidden[k - 1]);
      layers += 4 * h * (in + out + 2) + (c.proj > 0 ? P * h : 0);
    }
  }
  return V * X + layers + V * ((c.tie_weights ? 0 : H) + 1);
}

}  // namespace

void validate_config(const ModelConfig& cfg) {
  if (cfg.H < 1) throw InputError(fmt::format("model: hidden size H must be >= 1, got {}", cfg.H));
  if (cfg.X < 1) throw InputError(fmt::format("model: input size X must be >= 1, got {}", cfg.X));
  if (cfg.L < 1) throw InputError(fmt::format("model: layers L must be >= 1, got {}", cfg.L));
  if (!cfg.hidden.empty()) {
    if (static_cast<int64_t>(cfg.hidden.size()) != cfg.L)
      throw InputError(
          fmt::format("--hidden: {} sizes for {} layers (give one per layer, or one for all)",
                      cfg.hidden.size(), cfg.L));
    for (int64_t w : cfg.hidden)
      if (w < 1 || w > kMaxWidth)
        throw InputError(fmt::format("--hidden: every size must be in [1, 2^31], got {}", w));
    if (cfg.proj == 0 && cfg.hidden.back() != cfg.H)
      throw InputError(
          fmt::format("model: the top layer's width {} must be H ({})", cfg.hidden.back(), cfg.H));
  }
  if (cfg.proj < 0 || cfg.proj > kMaxWidth)
    throw InputError(
        fmt::format("--proj: the projection's size must be in [1, 2^31], got {}", cfg.proj));
  if (cfg.proj > 0) {
    if (cfg.hidden.empty() || cfg.H != cfg.proj)
      throw InputError(fmt::format(
          "model: with a projection, H ({}) must be its size P ({}) and `hidden` hold the {} "
          "cells' widths",
          cfg.H, cfg.proj, cfg.L));
    if (cfg.peephole)
      throw InputError("--proj and --peephole: the projected cell has no peepholes");
  }

  if (cfg.V < 1) throw InputError(fmt::format("model: vocabulary V must be >= 1, got {}", cfg.V));
  // Sizes read from a file are checked against its tensors before anything is allocated; these
  // limits keep the layout's arithmetic (4H x H, summed over L layers) inside 64 bits first.
  for (const auto& [letter, what, v, most] : {std::tuple{"H", "hidden size", cfg.H, kMaxWidth},
                                              std::tuple{"X", "input size", cfg.X, kMaxWidth},
                                              std::tuple{"V", "vocabulary", cfg.V, kMaxWidth},
                                              std::tuple{"L", "layers", cfg.L, kMaxLayers}})
    if (v > most)
      throw InputError(fmt::format("model: {} {} must be <= {}, got {}", what, letter, most, v));
  if (parameter_count_estimate(cfg) > kMaxParameters)
    throw InputError(fmt::format(
        "model: V={}, X={}, H={}, L={} make {:.3g} parameters, more than the limit of {:.3g}",
        cfg.V, cfg.X, cfg.H, cfg.L, parameter_count_estimate(cfg), kMaxParameters));
  if (cfg.readout == Readout::identity && cfg.V != cfg.H)
    throw InputError(fmt::format(
        "model: the identity readout needs as many classes as hidden units (V {} != H {})", cfg.V,
        cfg.H));
  for (const auto& [flag, p] :
       {std::pair{"--zoneout-h", cfg.zoneout_h}, std::pair{"--zoneout-s", cfg.zoneout_s}})
    if (!(p >= 0 && p < 1))
      throw InputError(fmt::format("model: {} must be in [0, 1), got {}", flag, p));
  if (cfg.layer_norm && cfg.peephole)
    throw InputError("--layer-norm and --peephole: the layer-normalised cell has no peepholes");
  if (cfg.tie_weights) {
    if (cfg.input != InputKind::embedding || cfg.readout != Readout::linear)
      throw InputError(
          "--tie-weights needs the embedding input and the linear readout (the readout's weight "
          "is encoder.weight)");
    if (cfg.H != cfg.X)
      throw InputError(fmt::format(
          "--tie-weights needs the top layer's output (--hidden, or --proj with a projection) "
          "equal to --embed (E): got H {} and E {}",

          cfg.H, cfg.X));
  }
}

std::string to_string(InputKind k) {
  return k == InputKind::dense ? "dense" : "embedding";
}
std::string to_string(Readout r) {
  return r == Readout::identity ? "identity" : "linear";
}
std::string to_string(Reduction r) {
  switch (r) {
    case Reduction::mean:
      return "mean";
    case Reduction::sum:
      return "sum";
    case Reduction::batch_mean:
      return "batch_mean";
  }
  return "?";
}

Reduction parse_reduction(const std::string& s) {
  if (s == "mean") return Reduction::mean;
  if (s == "sum") return Reduction::sum;
  if (s == "batch_mean") return Reduction::batch_mean;
  throw InputError(fmt::format("--reduction: expected mean, sum or batch_mean, got '{}'", s));
}

}  // namespace lstmgrad
