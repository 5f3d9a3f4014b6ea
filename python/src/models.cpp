// lstmgrad._core, the language model's side (float64, the reference path): model and batch files,
// the gradient of a model on a batch (what `lstmgrad grad` computes), and the handout's
// Exercise 2 (what `lstmgrad exercise` prints). Configurations cross as lstmgrad.config JSON
// text (model_io.hpp); the Python wrappers in lstmgrad/__init__.py turn it into a dict.
#include "models.hpp"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>
#include <pybind11/stl/filesystem.h>

#include <string>
#include <vector>

#include "lstmgrad/error.hpp"
#include "lstmgrad/exercise.hpp"
#include "lstmgrad/lstm.hpp"
#include "lstmgrad/model_io.hpp"

namespace py = pybind11;

namespace lstmgrad::python {

namespace {

using Array = py::array_t<double>;

Array to_array(const std::vector<double>& v, std::vector<int64_t> shape) {
  Array a(shape);
  std::copy(v.begin(), v.end(), a.mutable_data());
  return a;
}

// {name: array} -> flat in parameter_layout order, every tensor present with its shape, no other.
std::vector<double> flat_params(const ModelConfig& cfg, const py::dict& params) {
  std::vector<double> flat(parameter_count(cfg));
  size_t used = 0;
  for (const ParamInfo& p : parameter_layout(cfg)) {
    if (!params.contains(p.name)) throw py::value_error("params: missing " + p.name);
    auto a = py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(
        params[p.name.c_str()]);
    if (!a) throw py::value_error("params: " + p.name + ": not a numeric array");
    std::vector<int64_t> got(a.shape(), a.shape() + a.ndim());
    if (got != p.shape)
      throw py::value_error("params: " + p.name + ": shape " +
                            std::string(py::str(py::tuple(py::cast(got)))) + ", expected " +
                            std::string(py::str(py::tuple(py::cast(p.shape)))));
    std::copy_n(a.data(), p.size, flat.begin() + static_cast<long>(p.offset));
    ++used;
  }
  if (used != py::len(params)) {
    std::string extra;
    for (auto item : params) {
      const std::string name = py::str(item.first);
      bool known = false;
      for (const ParamInfo& p : parameter_layout(cfg)) known = known || p.name == name;
      if (!known) extra += (extra.empty() ? "" : ", ") + name;
    }
    throw py::value_error("params: unknown names " + extra);
  }
  return flat;
}

py::dict named(const ModelConfig& cfg, const std::vector<double>& flat) {
  py::dict d;
  for (const ParamInfo& p : parameter_layout(cfg))
    d[p.name.c_str()] =
        to_array(std::vector<double>(flat.begin() + static_cast<long>(p.offset),
                                     flat.begin() + static_cast<long>(p.offset + p.size)),
                 p.shape);
  return d;
}

template <class T>
std::vector<T> vec(const py::dict& d, const char* key) {
  if (!d.contains(key) || d[key].is_none()) return {};
  auto a = py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(d[key]);
  if (!a) throw py::value_error(std::string("batch: ") + key + ": not a numeric array");
  return std::vector<T>(a.data(), a.data() + a.size());
}

Batch<double> make_batch(const ModelConfig& cfg, const py::dict& d) {
  Batch<double> b;
  const char* first = cfg.input == InputKind::embedding ? "tokens" : "input";
  if (!d.contains(first)) throw py::value_error(std::string("batch: missing ") + first);
  auto a = py::array::ensure(d[first]);
  if (!a || a.ndim() < 2)
    throw py::value_error(std::string("batch: ") + first + ": expected an array [T,B,...]");
  b.T = a.shape(0), b.B = a.shape(1);
  b.tokens = vec<int64_t>(d, "tokens"), b.dense = vec<double>(d, "input");
  b.target = vec<int64_t>(d, "target"), b.target_probs = vec<double>(d, "target_probs");
  b.h0 = vec<double>(d, "h0"), b.s0 = vec<double>(d, "s0");
  validate_batch(cfg, b, "batch");  // InputError -> ValueError naming the field
  return b;
}

py::dict batch_dict(const ModelConfig& cfg, const Batch<double>& b) {
  py::dict d;
  const int64_t T = b.T, B = b.B;
  if (!b.tokens.empty()) d["tokens"] = py::array_t<int64_t>({T, B}, b.tokens.data());
  if (!b.dense.empty()) d["input"] = to_array(b.dense, {T, B, cfg.X});
  if (!b.target.empty()) d["target"] = py::array_t<int64_t>({T, B}, b.target.data());
  if (!b.target_probs.empty()) d["target_probs"] = to_array(b.target_probs, {T, B, cfg.V});
  if (!b.h0.empty()) d["h0"] = to_array(b.h0, state_shape(cfg, B, true));
  if (!b.s0.empty()) d["s0"] = to_array(b.s0, state_shape(cfg, B, false));
  return d;
}

// What `lstmgrad grad` computes: loss, every parameter's gradient, h_n, s_n, and the gradients
// of the dense input and of h0, s0.
py::dict gradient(const std::string& config, const py::dict& params, const py::dict& batch,
                  const std::string& reduction, int threads) {
  const ModelConfig cfg = config_from_json(config, "config");
  const std::vector<double> p = flat_params(cfg, params);
  const Batch<double> b = make_batch(cfg, batch);
  const Reduction red = parse_reduction(reduction);
  LanguageModel<double> lm(cfg);
  lm.set_threads(threads);
  std::vector<double> grad(p.size(), 0.0), dinput(b.dense.size());
  std::vector<double> dh0(static_cast<size_t>(cfg.h_offset(cfg.L, b.B)));
  std::vector<double> ds0(static_cast<size_t>(cfg.s_offset(cfg.L, b.B)));
  double loss = 0;
  {
    py::gil_scoped_release release;
    loss = lm.forward(p, b, red);
    lm.backward(grad, p, b, dinput.empty() ? nullptr : dinput.data(), dh0.data(), ds0.data());
  }
  const std::vector<int64_t> hst = state_shape(cfg, b.B, true), sst = state_shape(cfg, b.B, false);
  py::dict out;
  out["loss"] = loss;
  out["grads"] = named(cfg, grad);
  out["h_n"] = to_array({lm.h_n().begin(), lm.h_n().end()}, hst);
  out["s_n"] = to_array({lm.s_n().begin(), lm.s_n().end()}, sst);
  if (!dinput.empty()) out["grad_input"] = to_array(dinput, {b.T, b.B, cfg.X});
  out["grad_h0"] = to_array(dh0, hst);
  out["grad_s0"] = to_array(ds0, sst);
  return out;
}

py::dict exercise2(const std::optional<std::filesystem::path>& values, double lr) {
  const HandoutValues v = values ? read_handout_values(*values) : HandoutValues{};
  const Exercise2 e = run_exercise2(v, lr);
  py::dict d;
  d["q"] = e.q, d["a"] = e.a, d["s"] = e.s, d["h"] = e.h;
  d["dL_dh"] = e.dL_dh, d["dh_ds"] = e.dh_ds, d["ds_da"] = e.ds_da;
  d["da_dVa1"] = e.da_dVa1, d["dL_dVa1"] = e.dL_dVa1;
  d["hint_tanh2_q"] = e.hint_tanh2_q, d["hint_tanh2_s"] = e.hint_tanh2_s;
  d["hint_dh_ds"] = e.hint_dh_ds, d["hint_dL_dVa1"] = e.hint_dL_dVa1;
  d["autodiff_dL_dVa1"] = e.autodiff_dL_dVa1, d["fd_dL_dVa1"] = e.fd_dL_dVa1;
  d["autodiff_rel_err"] = e.autodiff_rel_err, d["fd_rel_err"] = e.fd_rel_err;
  d["lr"] = e.lr, d["Va1_before"] = e.Va1_before, d["Va1_after"] = e.Va1_after;
  d["Va1_after_handout_sign"] = e.Va1_after_handout_sign;
  return d;
}

}  // namespace

void bind_models(py::module_& m) {
  m.def(
      "load_model",
      [](const std::filesystem::path& path) {
        const Model<double> model = load_model<double>(path);
        return py::make_tuple(config_to_json(model.cfg), named(model.cfg, model.params),
                              model.metadata, model.vocab);
      },
      py::arg("path"), "(config JSON, {name: float64 array}, metadata, vocab) of a model file");
  m.def(
      "save_model",
      [](const std::filesystem::path& path, const std::string& config, const py::dict& params,
         const std::vector<std::string>& vocab, const std::map<std::string, std::string>& meta) {
        const ModelConfig cfg = config_from_json(config, "config");
        const std::vector<double> p = flat_params(cfg, params);
        save_model<double>(path, cfg, p, vocab, meta);
      },
      py::arg("path"), py::arg("config"), py::arg("params"), py::arg("vocab"), py::arg("metadata"));
  m.def(
      "load_batch",
      [](const std::filesystem::path& path, const std::string& config) {
        const ModelConfig cfg = config_from_json(config, "config");
        return batch_dict(cfg, load_batch<double>(path, cfg));
      },
      py::arg("path"), py::arg("config"));
  m.def("gradient", &gradient, py::arg("config"), py::arg("params"), py::arg("batch"),
        py::arg("reduction"), py::arg("threads"));
  m.def("exercise2", &exercise2, py::arg("values"), py::arg("lr"));
}

}  // namespace lstmgrad::python
