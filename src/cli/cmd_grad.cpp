// `lstmgrad grad`: loss, final state and every gradient of a model on a batch, as safetensors.
#include <fmt/format.h>

#include "cli/commands.hpp"
#include "lstmgrad/cuda.hpp"
#include "lstmgrad/error.hpp"
#include "lstmgrad/lstm.hpp"
#include "lstmgrad/model_io.hpp"

namespace lstmgrad::cli {

namespace {

struct GradOptions {
  std::string model, batch, out, dtype = "f64", reduction = "mean", device = "cpu";
};

// Engine: LanguageModel<Real> (CPU) or cuda::LanguageModel (float32).
template <class Real, class Engine>
void run_typed(const GradOptions& o) {
  const Reduction red = parse_reduction(o.reduction);
  const Model<Real> m = load_model<Real>(o.model);
  const Batch<Real> b = load_batch<Real>(o.batch, m.cfg);
  Engine lm(m.cfg);
  GradientResult<Real> g;
  g.loss = lm.forward(m.params, b, red);
  g.grad.assign(m.params.size(), Real(0));
  g.dinput.resize(b.dense.size());
  if (!b.h0.empty() || !b.s0.empty())
    g.dh0.resize(static_cast<size_t>(m.cfg.h_offset(m.cfg.L, b.B))),
        g.ds0.resize(static_cast<size_t>(m.cfg.s_offset(m.cfg.L, b.B)));
  lm.backward(g.grad, m.params, b, g.dinput.empty() ? nullptr : g.dinput.data(),
              g.dh0.empty() ? nullptr : g.dh0.data(), g.ds0.empty() ? nullptr : g.ds0.data());
  g.h_n.assign(lm.h_n().begin(), lm.h_n().end());
  g.s_n.assign(lm.s_n().begin(), lm.s_n().end());
  save_gradients(o.out, m.cfg, b.T, b.B, g, red);
  fmt::print("loss {:.17g} ({} over T={} x B={}, {}, {}); wrote {}\n", g.loss, to_string(red), b.T,
             b.B, o.dtype, o.device, o.out);
}

void register_grad(CLI::App& app) {
  auto o = std::make_shared<GradOptions>();
  CLI::App* cmd = app.add_subcommand(
      "grad", "Loss, final state and every gradient of a model on a batch (safetensors)");
  cmd->add_option("--model", o->model, "Model file (safetensors, PyTorch names)")->required();
  cmd->add_option("--batch", o->batch, "Batch file: input, target or target_probs, h0, s0")
      ->required();
  cmd->add_option("--out", o->out, "Gradient file to write (atomically)")->required();
  cmd->add_option("--dtype", o->dtype, "Arithmetic: f64 (reference) or f32")
      ->check(CLI::IsMember({"f32", "f64"}))
      ->capture_default_str();
  cmd->add_option("--reduction", o->reduction, "mean (over T*B), sum, or batch_mean (sum / B)")
      ->check(CLI::IsMember({"mean", "sum", "batch_mean"}))
      ->capture_default_str();
  auto* dtype = cmd->get_option("--dtype");
  add_device_option(cmd, o->device);
  cmd->callback([o, dtype] {
    if (o->device == "cuda") {
      if (dtype->count() > 0 && o->dtype != "f32")
        throw InputError("--dtype " + o->dtype + ": --device cuda computes in float32 (f32)");
      o->dtype = "f32";
      return run_typed<float, cuda::LanguageModel>(*o);
    }
    o->dtype == "f32" ? run_typed<float, LanguageModel<float>>(*o)
                      : run_typed<double, LanguageModel<double>>(*o);
  });
}

}  // namespace

const CommandRegistrar kGradRegistrar(30, register_grad);

}  // namespace lstmgrad::cli
