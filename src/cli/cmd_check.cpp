// `lstmgrad check`: hand BPTT vs the autodiff tape vs finite differences on a random model.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <iostream>
#include <nlohmann/json.hpp>

#include "cli/commands.hpp"
#include "lstmgrad/check.hpp"

namespace lstmgrad::cli {

namespace {

struct CheckCliOptions {
  CheckOptions o;
  std::string input = "embedding", readout = "linear", target = "class", reduction = "mean";
  std::string device = "cpu";
  DeviceCheckOptions d;
  bool zero_state = false, json = false;
  std::vector<int64_t> hidden;  // -H: one width, or one per layer
};

// H, or each layer's width (6,5,4); with a projection, then its size ("6,5 P=3").
std::string widths(const ModelConfig& c) {
  const std::string cells =
      c.hidden.empty() ? std::to_string(c.H) : fmt::format("{}", fmt::join(c.hidden, ","));
  return c.proj > 0 ? fmt::format("{} P={}", cells, c.proj) : cells;
}

std::string describe(const Regularization& r, const ModelConfig& c) {
  std::string s;
  for (const auto& [name, v] :
       {std::pair{"dropout-in", r.dropout_in}, std::pair{"dropout-hid", r.dropout_hid},
        std::pair{"dropout-out", r.dropout_out}, std::pair{"dropout-rec", r.dropout_rec},
        std::pair{"dropout-emb", r.dropout_emb}, std::pair{"weight-drop", r.weight_drop},
        std::pair{"ar", r.ar}, std::pair{"tar", r.tar}})
    if (v > 0) s += fmt::format(", {} {}", name, v);
  if (c.tie_weights) s += ", tied weights";
  if (c.zoneout_h > 0) s += fmt::format(", zoneout-h {}", c.zoneout_h);
  if (c.zoneout_s > 0) s += fmt::format(", zoneout-s {}", c.zoneout_s);
  return s;
}

void print_table(const CheckOptions& o, const CheckReport& r) {
  const ModelConfig& c = o.cfg;
  fmt::print(
      "lstmgrad check: T={} B={} X={} H={} L={} V={}{}{}, {} input, {} readout, {} targets, "
      "{} reduction, seed {}\n",
      o.T, o.B, c.X, widths(c), c.L, c.V,
      c.peephole     ? ", peepholes"
      : c.layer_norm ? ", layer norm"
                     : "",
      describe(o.reg, c), to_string(c.input), to_string(c.readout),
      o.soft_targets ? "soft" : "class", to_string(o.reduction), o.seed);
  fmt::print("loss: hand {:.15g}, tape {:.15g}", r.loss_hand, r.loss_tape);
  if (o.reg.ar > 0 || o.reg.tar > 0)
    fmt::print(" (cross-entropy {:.15g}, tape {:.15g}; the rest AR/TAR)", r.ce_hand, r.ce_tape);
  fmt::print("\n\n");
  fmt::print("{:<24} {:<14} {:>10} {:>14} {:>14} {:>9}\n", "tensor", "shape", "max|grad|",
             "vs tape", "vs fin. diff.", "fd coords");
  for (const CheckRow& row : r.rows)
    fmt::print("{:<24} {:<14} {:>10.3e} {:>14.2e} {:>14.2e} {:>9} {}\n", row.tensor,
               fmt::format("[{}]", fmt::join(row.shape, ",")), row.max_abs, row.tape_rel,
               row.fd_rel, row.fd_coords, row.ok ? "" : "FAIL");
  fmt::print(
      "\nerrors are max |hand - other| / max |hand| per tensor; tolerances: tape {:.0e} "
      "(same float64 math, other order), finite differences {:.0e} (5-point "
      "stencil, e = {:.0e}: O(e^4) + O(eps/e))\n{}\n",
      o.tape_tol, o.fd_tol, o.fd_step, r.ok ? "OK: all three agree" : "FAIL: above tolerance");
}

nlohmann::json to_json(const CheckReport& r) {
  nlohmann::json rows = nlohmann::json::array();
  for (const CheckRow& row : r.rows)
    rows.push_back({{"tensor", row.tensor},
                    {"shape", row.shape},
                    {"max_abs", row.max_abs},
                    {"tape_rel", row.tape_rel},
                    {"fd_rel", row.fd_rel},
                    {"fd_coords", row.fd_coords},
                    {"ok", row.ok}});
  return {{"loss_hand", r.loss_hand},
          {"loss_tape", r.loss_tape},
          {"ce_hand", r.ce_hand},
          {"ce_tape", r.ce_tape},
          {"ok", r.ok},
          {"rows", rows}};
}

void print_device_table(const CheckOptions& o, const DeviceCheckOptions& d,
                        const DeviceCheckReport& r) {
  const ModelConfig& c = o.cfg;
  fmt::print(
      "lstmgrad check --device cuda: T={} B={} X={} H={} L={} V={}{}, {} input, {} readout, {} "
      "targets, {} reduction, dropout {}, seed {}\n{} ({} recurrence)\n",
      o.T, o.B, c.X, widths(c), c.L, c.V, c.peephole ? ", peepholes" : "", to_string(c.input),
      to_string(c.readout), o.soft_targets ? "soft" : "class", to_string(o.reduction), d.dropout,
      o.seed, r.device, r.recurrence);
  fmt::print("loss: float64 CPU {:.15g}, float32 CUDA {:.15g}\n\n", r.loss_ref, r.loss_device);
  fmt::print("{:<26} {:<14} {:>10} {:>12}\n", "tensor", "shape", "max|ref|", "rel. error");
  for (const DeviceCheckRow& row : r.rows)
    fmt::print("{:<26} {:<14} {:>10.3e} {:>12.2e} {}\n", row.tensor,
               fmt::format("[{}]", fmt::join(row.shape, ",")), row.max_abs, row.rel,
               row.ok ? "" : "FAIL");
  fmt::print(
      "\nerrors are max |cuda - cpu float64| / max |cpu float64| per tensor; 'sgd:' rows after {} "
      "SGD updates (lr {}, clip {}); tolerance {:.0e} (float32 arithmetic, TF32 off)\n{}\n",
      d.sgd_steps, d.lr, d.clip, d.tol, r.ok ? "OK: CUDA matches the float64 reference" : "FAIL");
}

nlohmann::json to_json(const DeviceCheckReport& r) {
  nlohmann::json rows = nlohmann::json::array();
  for (const DeviceCheckRow& row : r.rows)
    rows.push_back({{"tensor", row.tensor},
                    {"shape", row.shape},
                    {"max_abs", row.max_abs},
                    {"rel", row.rel},
                    {"ok", row.ok}});
  return {{"loss_ref", r.loss_ref},
          {"loss_device", r.loss_device},
          {"device", r.device},
          {"recurrence", r.recurrence},
          {"ok", r.ok},
          {"rows", rows}};
}

void run(CheckCliOptions& a) {
  if (!a.hidden.empty()) {  // the top layer's width is H; several: per layer
    a.o.cfg.H = a.hidden.back();
    a.o.cfg.hidden = a.hidden.size() > 1 ? a.hidden : std::vector<int64_t>{};
  }
  if (a.o.cfg.proj > 0) {  // H is the projection's size, `hidden` every cell's width
    if (a.o.cfg.hidden.empty()) a.o.cfg.hidden.assign(static_cast<size_t>(a.o.cfg.L), a.o.cfg.H);
    a.o.cfg.H = a.o.cfg.proj;
  }
  a.o.cfg.input = a.input == "dense" ? InputKind::dense : InputKind::embedding;
  a.o.cfg.readout = a.readout == "identity" ? Readout::identity : Readout::linear;
  if (a.o.cfg.readout == Readout::identity) a.o.cfg.V = a.o.cfg.H;  // p = softmax(h)
  a.o.soft_targets = a.target == "soft";
  a.o.initial_state = !a.zero_state;
  a.o.reduction = parse_reduction(a.reduction);
  if (a.o.cfg.layer_norm) a.o.fd_step = 1e-4;  // CheckOptions::fd_step: rows near zero variance
  if (a.device == "cuda") {
    const DeviceCheckReport r = run_device_check(a.o, a.d);
    if (a.json)
      std::cout << to_json(r).dump(2) << "\n";
    else
      print_device_table(a.o, a.d, r);
    if (!r.ok) set_exit_code(1);
    return;
  }
  const CheckReport r = run_check(a.o);
  if (a.json)
    std::cout << to_json(r).dump(2) << "\n";
  else
    print_table(a.o, r);
  if (!r.ok) set_exit_code(1);
}

void register_check(CLI::App& app) {
  auto a = std::make_shared<CheckCliOptions>();
  CLI::App* cmd = app.add_subcommand(
      "check", "Random model: hand BPTT vs autodiff tape vs finite differences, per tensor");
  const auto positive = CLI::Range(int64_t{1}, int64_t{1} << 20);
  cmd->add_option("-T,--time", a->o.T, "Time steps")->check(positive)->capture_default_str();
  cmd->add_option("-B,--batch", a->o.B, "Sequences")->check(positive)->capture_default_str();
  cmd->add_option("-X,--input-size", a->o.cfg.X, "Input width (dense) or embedding width")
      ->check(positive)
      ->capture_default_str();
  cmd->add_option("-H,--hidden", a->hidden,
                  "Hidden width: one for every layer, or one per layer (6,5,4)")
      ->check(positive)
      ->delimiter(',')
      ->default_str("4");
  cmd->add_option("-L,--layers", a->o.cfg.L, "Layers")->check(positive)->capture_default_str();
  cmd->add_option("--proj", a->o.cfg.proj,
                  "Projection (LSTMP, PyTorch's proj_size): h = (o tanh s) W_hr^T, this wide; 0: "
                  "none")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_flag("--peephole", a->o.cfg.peephole,
                "Peephole connections: i and f see s_prev, o sees s (rnn.weight_peephole_l{k})");
  cmd->add_flag("--layer-norm", a->o.cfg.layer_norm,
                "Layer-normalised LSTM (Ba et al.): LN on the input and recurrent pre-activations "
                "and on s before tanh");
  cmd->add_option("-V,--vocab", a->o.cfg.V, "Vocabulary / classes (identity readout: = H)")
      ->check(positive)
      ->capture_default_str();
  cmd->add_option("--input", a->input, "Input kind")
      ->check(CLI::IsMember({"embedding", "dense"}))
      ->capture_default_str();
  cmd->add_option("--readout", a->readout, "Readout")
      ->check(CLI::IsMember({"linear", "identity"}))
      ->capture_default_str();
  cmd->add_option("--target", a->target, "Targets: class ids or soft probability vectors")
      ->check(CLI::IsMember({"class", "soft"}))
      ->capture_default_str();
  cmd->add_option("--reduction", a->reduction, "mean, sum or batch_mean")
      ->check(CLI::IsMember({"mean", "sum", "batch_mean"}))
      ->capture_default_str();
  cmd->add_flag("--zero-state", a->zero_state, "Start from h0 = s0 = 0 (default: random)");
  cmd->add_option("--seed", a->o.seed, "Random seed")->capture_default_str();
  cmd->add_option("--fd-coords", a->o.fd_max_coords,
                  "Finite differences on at most this many coordinates per tensor")
      ->capture_default_str();
  cmd->add_flag("--json", a->json, "Machine-readable output");
  add_device_option(cmd, a->device,
                    "cpu: hand vs tape vs finite differences; cuda: the CUDA engine (float32) vs "
                    "the float64 hand BPTT, gradients and an SGD trajectory");
  cmd->add_option("--sgd-steps", a->d.sgd_steps, "--device cuda: SGD updates compared")
      ->check(CLI::Range(0, 1000))
      ->capture_default_str();
  cmd->add_option("--dropout", a->d.dropout, "--device cuda: dropout in the compared passes")
      ->check(CLI::Range(0.0, 0.95))
      ->capture_default_str();
  add_recurrence_option(cmd, a->d.recurrence);
  add_regularization_options(cmd, a->o.reg, a->o.cfg.tie_weights);
  add_zoneout_options(cmd, a->o.cfg.zoneout_h, a->o.cfg.zoneout_s);
  cmd->callback([a] { run(*a); });
}

}  // namespace

void add_regularization_options(CLI::App* cmd, Regularization& r, bool& tie_weights) {
  const auto rate = CLI::Range(0.0, 0.99);
  cmd->add_option("--dropout-in", r.dropout_in,
                  "Locked (variational) dropout on layer 0's input: one [B,E] mask per update, "
                  "the same at every step")
      ->check(rate)
      ->capture_default_str();
  cmd->add_option("--dropout-hid", r.dropout_hid,
                  "Locked dropout between layers: one [B,H] mask per boundary and update")
      ->check(rate)
      ->capture_default_str();
  cmd->add_option("--dropout-out", r.dropout_out,
                  "Locked dropout on the top layer's output before the readout")
      ->check(rate)
      ->capture_default_str();
  cmd->add_option("--dropout-rec", r.dropout_rec,
                  "Gal and Ghahramani's recurrent dropout: one [B,H] mask per layer and update on "
                  "h_{t-1} where the recurrent product reads it, the same at every step")
      ->check(rate)
      ->capture_default_str();
  cmd->add_option("--dropout-emb", r.dropout_emb,
                  "Embedding dropout: whole rows of encoder.weight dropped (rescaled 1/(1-p)) in "
                  "the lookup, one mask per update shared by all streams")
      ->check(rate)
      ->capture_default_str();
  cmd->add_option("--weight-drop", r.weight_drop,
                  "DropConnect on each layer's recurrent matrix weight_hh: one mask per update")
      ->check(rate)
      ->capture_default_str();
  cmd->add_option("--ar", r.ar,
                  "Activation regularisation: + AR * mean((top output after --dropout-out)^2)")
      ->check(CLI::Range(0.0, 1e6))
      ->capture_default_str();
  cmd->add_option("--tar", r.tar,
                  "Temporal AR: + TAR * mean((h_top[t+1] - h_top[t])^2), before dropout")
      ->check(CLI::Range(0.0, 1e6))
      ->capture_default_str();
  cmd->add_flag("--tie-weights", tie_weights,
                "Tie the readout's weight to the embedding (encoder.weight); needs hidden = "
                "embedding width");
}

void add_zoneout_options(CLI::App* cmd, double& zoneout_h, double& zoneout_s) {
  const auto rate = CLI::Range(0.0, 0.99);
  cmd->add_option("--zoneout-h", zoneout_h,
                  "Zoneout on h (Krueger et al.): in training each unit keeps its previous h with "
                  "this probability at each step; evaluation uses the expectation. Stored in the "
                  "model")
      ->check(rate)
      ->capture_default_str();
  cmd->add_option("--zoneout-s", zoneout_s, "Zoneout on the cell state s, as --zoneout-h")
      ->check(rate)
      ->capture_default_str();
}

const CommandRegistrar kCheckRegistrar(40, register_check);

}  // namespace lstmgrad::cli
