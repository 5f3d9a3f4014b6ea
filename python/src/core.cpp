// lstmgrad._core: the public LSTM stack (lstmgrad/stack.hpp) for numpy, through pybind11.
//
// Arrays come in as numpy arrays of the engine's dtype (float32 or float64); C-contiguous ones
// are read in place, others are copied once. Every check raises ValueError naming the argument,
// its shape or dtype and what was expected, before the engine runs. forward and backward release
// the GIL while the engine works; one engine object runs one call at a time (a mutex).
#include <omp.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "buffers.hpp"
#include "lstmgrad/bench.hpp"
#include "lstmgrad/error.hpp"
#include "lstmgrad/precision.hpp"
#include "lstmgrad/stack.hpp"
#include "models.hpp"

namespace py = pybind11;

namespace {

using Shape = std::vector<int64_t>;
using lstmgrad::python::new_array;

std::string shape_str(const Shape& s) {
  std::ostringstream o;
  o << "(";
  for (size_t k = 0; k < s.size(); ++k) o << (k ? ", " : "") << s[k];
  o << (s.size() == 1 ? ",)" : ")");
  return o.str();
}

template <class Real>
const char* dtype_name() {
  return std::is_same_v<Real, float> ? "float32" : "float64";
}

// `obj` as a C-contiguous array of Real with shape `want` (-1: any size, returned in `got`).
// Copies only when obj is not C-contiguous; a different dtype is an error, not a conversion.
template <class Real>
py::array_t<Real, py::array::c_style> as_array(py::handle obj, const std::string& name,
                                               const Shape& want) {
  if (!py::isinstance<py::array>(obj))
    throw py::value_error(name + ": expected a numpy array, got " +
                          std::string(py::str(py::type::of(obj).attr("__name__"))));
  const py::array a = py::reinterpret_borrow<py::array>(obj);
  Shape got(a.shape(), a.shape() + a.ndim());
  if (!a.dtype().is(py::dtype::of<Real>()))
    throw py::value_error(name + ": dtype " + std::string(py::str(a.dtype())) + ", expected " +
                          dtype_name<Real>() + " (the engine's dtype)");
  bool ok = got.size() == want.size();
  for (size_t k = 0; ok && k < got.size(); ++k) ok = want[k] < 0 || got[k] == want[k];
  if (!ok)
    throw py::value_error(name + ": shape " + shape_str(got) + ", expected " + shape_str(want));
  return py::array_t<Real, py::array::c_style>::ensure(a);  // no copy when already C-contiguous
}

// A writable C-contiguous array of Real with exactly shape `want` (gradients accumulated in
// place: a copy would lose them, so it is an error).
template <class Real>
Real* out_array(py::handle obj, const std::string& name, const Shape& want) {
  auto a = as_array<Real>(obj, name, want);
  if (a.ptr() != obj.ptr() || !a.writeable())
    throw py::value_error(name +
                          ": must be a writable C-contiguous array (gradients are added "
                          "into it in place)");
  return a.mutable_data();
}

// Bi: nn.LSTM(bidirectional=True) (BidirectionalLstm): units 2k, 2k+1 per layer, outputs 2H wide.
// proj = P > 0: nn.LSTM's proj_size; every h (y, h0, h_n) is then P wide instead of H (R below).
template <class Real, bool Bi>
class PyLstm {
 public:
  PyLstm(int64_t X, int64_t H, int64_t L, int64_t P)
      : lstm_(X, H, L, P),
        X_(X),
        H_(H),
        L_(L),
        P_(P),
        R_(P > 0 ? P : H),
        U_(L * (Bi ? 2 : 1)),
        Y_(R_ * (Bi ? 2 : 1)) {}

  // x [T,B,X]; weights: L tuples (weight_ih [4H,in], weight_hh [4H,R], bias_ih [4H] or None,
  // bias_hh [4H] or None[, weight_hr [P,H]: with a projection, else absent or None]); h0 [L,B,R]
  // and s0 [L,B,H], or None. Returns (y [T,B,R], h_n [L,B,R], s_n [L,B,H]).
  py::tuple forward(py::handle x_obj, py::sequence weights, py::handle h0_obj, py::handle s0_obj) {
    auto x = as_array<Real>(x_obj, "input", {-1, -1, X_});
    const int64_t T = x.shape(0), B = x.shape(1);
    if (T < 1 || B < 1)
      throw py::value_error("input: shape " + shape_str({T, B, X_}) +
                            ", expected at least one step and one sequence");
    std::vector<py::object> keep;
    auto w = read_weights(weights, keep);
    std::optional<py::array_t<Real, py::array::c_style>> h0, s0;
    if (!h0_obj.is_none()) h0 = as_array<Real>(h0_obj, "h0", {U_, B, R_});
    if (!s0_obj.is_none()) s0 = as_array<Real>(s0_obj, "s0", {U_, B, H_});
    auto y = new_array<Real>({T, B, Y_}), h_n = new_array<Real>({U_, B, R_}),
         s_n = new_array<Real>({U_, B, H_});
    Real *yp = y.mutable_data(), *hp = h_n.mutable_data(), *sp = s_n.mutable_data();
    const Real* xp = x.data();
    const Real* h0p = h0 ? h0->data() : nullptr;
    const Real* s0p = s0 ? s0->data() : nullptr;
    {
      py::gil_scoped_release release;
      std::lock_guard lock(mutex_);
      lstm_.forward(xp, w, h0p, s0p, T, B, yp, hp, sp);
    }
    // What backward reads: the same x and weights, kept alive (and unchanged, the caller's part).
    saved_x_ = x, saved_keep_ = std::move(keep), saved_w_ = std::move(w), packed_ = false;
    return py::make_tuple(y, h_n, s_n);
  }

  // A packed batch (Lstm::forward_packed): data [N,X], batch_sizes [T] int64, non-increasing;
  // h0 [L,B,R], s0 [L,B,H] with B = batch_sizes[0], or None. Returns (y [N,R], h_n, s_n).
  py::tuple forward_packed(py::handle x_obj, py::sequence weights, py::handle sizes_obj,
                           py::handle h0_obj, py::handle s0_obj) {
    auto sizes = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(sizes_obj);
    if (!sizes || sizes.ndim() != 1 || sizes.size() == 0)
      throw py::value_error("batch_sizes: expected a non-empty 1-D array of integers");
    const std::vector<int64_t> bs(sizes.data(), sizes.data() + sizes.size());
    int64_t N = 0;
    for (size_t t = 0; t < bs.size(); ++t) {
      if (bs[t] < 1 || (t > 0 && bs[t] > bs[t - 1]))
        throw py::value_error("batch_sizes: expected positive and non-increasing, got " +
                              std::string(py::str(py::cast(bs))));
      N += bs[t];
    }
    const int64_t B = bs[0];
    auto x = as_array<Real>(x_obj, "input", {N, X_});
    std::vector<py::object> keep;
    auto w = read_weights(weights, keep);
    std::optional<py::array_t<Real, py::array::c_style>> h0, s0;
    if (!h0_obj.is_none()) h0 = as_array<Real>(h0_obj, "h0", {U_, B, R_});
    if (!s0_obj.is_none()) s0 = as_array<Real>(s0_obj, "s0", {U_, B, H_});
    auto y = new_array<Real>({N, Y_}), h_n = new_array<Real>({U_, B, R_}),
         s_n = new_array<Real>({U_, B, H_});
    Real *yp = y.mutable_data(), *hp = h_n.mutable_data(), *sp = s_n.mutable_data();
    const Real* xp = x.data();
    const Real* h0p = h0 ? h0->data() : nullptr;
    const Real* s0p = s0 ? s0->data() : nullptr;
    {
      py::gil_scoped_release release;
      std::lock_guard lock(mutex_);
      lstm_.forward_packed(xp, w, h0p, s0p, bs, yp, hp, sp);
    }
    saved_x_ = x, saved_keep_ = std::move(keep), saved_w_ = std::move(w), packed_ = true;
    return py::make_tuple(y, h_n, s_n);
  }

  // dy [T,B,R] ([N,R] after forward_packed) or None (zeros); dh_n [L,B,R], ds_n [L,B,H] or None
  // (zeros). grads: None (new zero arrays) or L tuples of arrays to add into, as the weights'
  // (bias entries None where the layer has no bias; weight_hr's with a projection). Returns (dx
  // or None, dh0 or None, ds0 or None, grads).
  py::tuple backward(py::handle dy_obj, py::handle dh_n_obj, py::handle ds_n_obj,
                     py::handle grads_obj, bool need_dx, bool need_dh0, bool need_ds0) {
    const int64_t T = lstm_.steps(), B = lstm_.batch();
    if (T == 0) throw py::value_error("backward: no forward to differentiate");
    std::optional<py::array_t<Real, py::array::c_style>> dy, dh_n, ds_n;
    const Shape ys = packed_ ? Shape{lstm_.rows(), Y_} : Shape{T, B, Y_};
    const Shape xs = packed_ ? Shape{lstm_.rows(), X_} : Shape{T, B, X_};
    if (!dy_obj.is_none()) dy = as_array<Real>(dy_obj, "grad_output", ys);
    if (!dh_n_obj.is_none()) dh_n = as_array<Real>(dh_n_obj, "grad_h_n", {U_, B, R_});
    if (!ds_n_obj.is_none()) ds_n = as_array<Real>(ds_n_obj, "grad_s_n", {U_, B, H_});
    py::list grads;
    std::vector<lstmgrad::LstmLayerGrads<Real>> g;
    if (grads_obj.is_none()) {
      for (int64_t k = 0; k < U_; ++k) {
        const int64_t in = in_of(k);
        const bool bias = saved_w_[k].bias_ih || saved_w_[k].bias_hh;
        auto wi = new_array<Real>({4 * H_, in}), wh = new_array<Real>({4 * H_, R_});
        std::optional<py::array_t<Real>> bi, bh, hr;
        if (bias) bi = new_array<Real>({4 * H_}), bh = new_array<Real>({4 * H_});
        if (P_ > 0) hr = new_array<Real>({P_, H_});
        for (auto* a : {&wi, &wh, bi ? &*bi : nullptr, bh ? &*bh : nullptr, hr ? &*hr : nullptr})
          if (a) std::fill_n(a->mutable_data(), a->size(), Real(0));
        auto data = [](std::optional<py::array_t<Real>>& a) {
          return a ? a->mutable_data() : nullptr;
        };
        g.push_back({wi.mutable_data(), wh.mutable_data(), data(bi), data(bh), data(hr)});
        auto obj = [](std::optional<py::array_t<Real>>& a) {
          return a ? py::object(*a) : py::object(py::none());
        };
        py::tuple t = P_ > 0 ? py::make_tuple(wi, wh, obj(bi), obj(bh), obj(hr))
                             : py::make_tuple(wi, wh, obj(bi), obj(bh));
        grads.append(t);
      }
    } else {
      auto seq = py::reinterpret_borrow<py::sequence>(grads_obj);
      if (static_cast<int64_t>(py::len(seq)) != U_)
        throw py::value_error("grads: " + std::to_string(py::len(seq)) + " layers, expected " +
                              std::to_string(U_));
      for (int64_t k = 0; k < U_; ++k) {
        auto t = py::reinterpret_borrow<py::sequence>(seq[k]);
        check_entries(t, "grads[" + std::to_string(k) + "]");
        const std::string l = suffix(k);
        const int64_t in = in_of(k);
        g.push_back({out_array<Real>(t[0], "grad weight_ih" + l, {4 * H_, in}),
                     out_array<Real>(t[1], "grad weight_hh" + l, {4 * H_, R_}),
                     t[2].is_none() ? nullptr : out_array<Real>(t[2], "grad bias_ih" + l, {4 * H_}),
                     t[3].is_none() ? nullptr : out_array<Real>(t[3], "grad bias_hh" + l, {4 * H_}),
                     P_ > 0 ? out_array<Real>(t[4], "grad weight_hr" + l, {P_, H_}) : nullptr});
        grads.append(t);
      }
    }
    std::optional<py::array_t<Real>> dx, dh0, ds0;
    if (need_dx) dx = new_array<Real>(xs);
    if (need_dh0) dh0 = new_array<Real>({U_, B, R_});
    if (need_ds0) ds0 = new_array<Real>({U_, B, H_});
    const Real* dyp = dy ? dy->data() : nullptr;
    const Real* dhp = dh_n ? dh_n->data() : nullptr;
    const Real* dsp = ds_n ? ds_n->data() : nullptr;
    Real* dxp = dx ? dx->mutable_data() : nullptr;
    Real* dh0p = dh0 ? dh0->mutable_data() : nullptr;
    Real* ds0p = ds0 ? ds0->mutable_data() : nullptr;
    const Real* xp = saved_x_.data();
    {
      py::gil_scoped_release release;
      std::lock_guard lock(mutex_);
      lstm_.backward(dyp, dhp, dsp, xp, saved_w_, g, dxp, dh0p, ds0p);
    }
    auto opt = [](std::optional<py::array_t<Real>>& a) {
      return a ? py::object(*a) : py::object(py::none());
    };
    return py::make_tuple(opt(dx), opt(dh0), opt(ds0), grads);
  }

  void set_threads(int n) { lstm_.set_threads(n); }
  void set_dropout(double p, uint64_t seed) {
    if constexpr (Bi)
      throw py::value_error("set_dropout: not available for a bidirectional stack");
    else
      lstm_.set_dropout(p, seed);
  }
  void set_team(int shares, int running) { lstm_.set_team(shares, running); }
  void set_precision(const std::string& p) {
    lstm_.set_precision(lstmgrad::parse_precision(p, "precision"));
  }
  int64_t X() const { return X_; }
  int64_t H() const { return H_; }
  int64_t L() const { return L_; }
  int64_t P() const { return P_; }

 private:
  // A layer's tuple: (weight_ih, weight_hh, bias_ih, bias_hh), then weight_hr with a projection
  // (without one a fifth entry may be given as None).
  void check_entries(py::sequence t, const std::string& name) const {
    const size_t n = py::len(t);
    const bool ok = P_ > 0 ? n == 5 && !t[4].is_none() : n == 4 || (n == 5 && t[4].is_none());
    if (!ok)
      throw py::value_error(name + ": expected (weight_ih, weight_hh, bias_ih, bias_hh" +
                            (P_ > 0 ? ", weight_hr) (the stack has a projection)"
                                    : ") (the stack has no projection)"));
  }

  std::vector<lstmgrad::LstmLayerWeights<Real>> read_weights(py::sequence weights,
                                                             std::vector<py::object>& keep) {
    if (static_cast<int64_t>(py::len(weights)) != U_)
      throw py::value_error("weights: " + std::to_string(py::len(weights)) + " layers, expected " +
                            std::to_string(U_));
    std::vector<lstmgrad::LstmLayerWeights<Real>> w;
    for (int64_t k = 0; k < U_; ++k) {
      auto t = py::reinterpret_borrow<py::sequence>(weights[k]);
      check_entries(t, "weights[" + std::to_string(k) + "]");
      const std::string l = suffix(k);
      const int64_t in = in_of(k);
      auto take = [&](py::handle o, const std::string& name, const Shape& s) -> const Real* {
        if (o.is_none()) return nullptr;
        auto a = as_array<Real>(o, name, s);
        keep.push_back(a);
        return a.data();
      };
      if (t[0].is_none() || t[1].is_none())
        throw py::value_error("weights[" + std::to_string(k) + "]: weight_ih" + l +
                              " and weight_hh" + l + " must be given");
      const Real* bi = take(t[2], "bias_ih" + l, {4 * H_});
      const Real* bh = take(t[3], "bias_hh" + l, {4 * H_});
      if (!bi != !bh)
        throw py::value_error("weights[" + std::to_string(k) + "]: bias_ih" + l + " and bias_hh" +
                              l + " must both be given or both be None");
      w.push_back({take(t[0], "weight_ih" + l, {4 * H_, in}),
                   take(t[1], "weight_hh" + l, {4 * H_, R_}), bi, bh,
                   P_ > 0 ? take(t[4], "weight_hr" + l, {P_, H_}) : nullptr});
    }
    return w;
  }

  // Unit u (nn.LSTM's order): layer u / D, reverse direction when u % D == 1.
  int64_t in_of(int64_t u) const { return u < (Bi ? 2 : 1) ? X_ : Y_; }
  std::string suffix(int64_t u) const {
    return "_l" + std::to_string(Bi ? u / 2 : u) + (Bi && u % 2 ? "_reverse" : "");
  }

  std::conditional_t<Bi, lstmgrad::BidirectionalLstm<Real>, lstmgrad::Lstm<Real>> lstm_;
  // P: the projection (0: none); R: h's width (P, else H); U: units (layers times directions);
  // Y: the output's width (R per direction)
  int64_t X_, H_, L_, P_, R_, U_, Y_;
  std::mutex mutex_;
  py::array_t<Real, py::array::c_style> saved_x_;  // the last forward's input and weights
  std::vector<py::object> saved_keep_;
  std::vector<lstmgrad::LstmLayerWeights<Real>> saved_w_;
  bool packed_ = false;  // the last forward was forward_packed
};

template <class Real, bool Bi>
void bind_lstm(py::module_& m, const char* name) {
  using P = PyLstm<Real, Bi>;
  py::class_<P>(m, name)
      .def(py::init<int64_t, int64_t, int64_t, int64_t>(), py::arg("input_size"),
           py::arg("hidden_size"), py::arg("num_layers") = 1, py::arg("proj_size") = 0)
      .def("forward", &P::forward, py::arg("input"), py::arg("weights"), py::arg("h0") = py::none(),
           py::arg("s0") = py::none())
      .def("forward_packed", &P::forward_packed, py::arg("input"), py::arg("weights"),
           py::arg("batch_sizes"), py::arg("h0") = py::none(), py::arg("s0") = py::none())
      .def("backward", &P::backward, py::arg("grad_output") = py::none(),
           py::arg("grad_h_n") = py::none(), py::arg("grad_s_n") = py::none(),
           py::arg("grads") = py::none(), py::arg("need_input_grad") = true,
           py::arg("need_h0_grad") = true, py::arg("need_s0_grad") = true)
      .def("set_threads", &P::set_threads, py::arg("n"))
      .def("set_dropout", &P::set_dropout, py::arg("p"), py::arg("seed"))
      .def("set_team", &P::set_team, py::arg("shares"), py::arg("running"))
      .def("set_precision", &P::set_precision, py::arg("precision"),
           "'f32', or 'bf16': bfloat16 GEMM operands with float32 sums (float32 engines, "
           "AVX512_BF16; ValueError otherwise)")
      .def_property_readonly("input_size", &P::X)
      .def_property_readonly("hidden_size", &P::H)
      .def_property_readonly("num_layers", &P::L)
      .def_property_readonly("proj_size", &P::P)
      .def_property_readonly("dtype", [](const P&) { return py::dtype::of<Real>(); });
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "lstmgrad's C++ engine: the LSTM stack forward and hand-derived backward";
  py::register_exception<lstmgrad::InputError>(m, "InputError", PyExc_ValueError);
  bind_lstm<float, false>(m, "LstmFloat32");
  bind_lstm<double, false>(m, "LstmFloat64");
  bind_lstm<float, true>(m, "BidirectionalLstmFloat32");
  bind_lstm<double, true>(m, "BidirectionalLstmFloat64");
  m.def(
      "parameter_layout",
      [](int64_t X, int64_t H, int64_t L, bool bias, int64_t proj) {
        py::list out;
        for (const lstmgrad::ParamInfo& p : lstmgrad::lstm_parameter_layout(X, H, L, bias, proj))
          out.append(py::make_tuple(p.name, py::tuple(py::cast(p.shape))));
        return out;
      },
      py::arg("input_size"), py::arg("hidden_size"), py::arg("num_layers") = 1,
      py::arg("bias") = true, py::arg("proj_size") = 0,
      "nn.LSTM's parameters of a stack in order: a list of (name, shape)");
  m.def(
      "bench",
      [](const std::string& preset, const std::string& mode, int runs, int warmup, int threads,
         int shares) {
        const lstmgrad::BenchPreset* p = nullptr;
        std::string names;
        for (const lstmgrad::BenchPreset& q : lstmgrad::bench_presets()) {
          if (q.name == preset) p = &q;
          names += (names.empty() ? "" : ", ") + q.name;
        }
        if (!p) throw py::value_error("preset: '" + preset + "', expected one of " + names);
        if (runs < 1 || warmup < 0 || threads < 0 || shares < 0)
          throw py::value_error("runs >= 1, warmup >= 0, threads >= 0 and shares >= 0 expected");
        lstmgrad::BenchOptions o;
        o.threads = threads, o.runs = runs, o.warmup = warmup;
        // threads 0: the default team, split for OpenMP's count as the command line reads it;
        // importing torch sets that count to torch's own, so `shares` stands in for the call.
        struct OmpThreads {  // OpenMP's count back as it was, however the call ends
          int saved = omp_get_max_threads();
          ~OmpThreads() { omp_set_num_threads(saved); }
        } restore;
        if (threads == 0 && shares > 0) omp_set_num_threads(shares);
        lstmgrad::BenchResult r;
        try {
          py::gil_scoped_release release;
          r = lstmgrad::run_bench(*p, mode, o);
        } catch (const std::invalid_argument& e) {
          throw py::value_error(e.what());
        }
        py::dict out;
        out["ms"] = r.ms, out["tokens_per_s"] = r.tokens_per_s, out["gflops"] = r.gflops;
        return out;
      },
      py::arg("preset"), py::arg("mode") = "fwdbwd", py::arg("runs") = 7, py::arg("warmup") = 5,
      py::arg("threads") = 0, py::arg("shares") = 0,
      "`lstmgrad bench`'s timing of one preset and mode in this process (the same code as the "
      "command line): a dict of ms (the median of `runs` after `warmup`), tokens_per_s, gflops. "
      "threads 0: the default team, its work split for `shares` cores (0: OpenMP's count)");
  m.def("empty_cache", &lstmgrad::python::empty_cache,
        "Frees the memory the output arrays' cache holds idle (buffers.hpp)");
  m.def(
      "cache_info",
      [] {
        const lstmgrad::python::CacheStats c = lstmgrad::python::cache_stats();
        py::dict out;
        out["bytes"] = c.bytes, out["blocks"] = c.blocks, out["limit"] = c.limit;
        return out;
      },
      "The output arrays' cache: a dict of bytes and blocks held idle, and the limit in bytes");
  m.def("set_cache_limit", &lstmgrad::python::set_cache_limit, py::arg("bytes"),
        "The most bytes the output arrays' cache keeps idle (default 512 MiB; 0: none)");
  m.def("bf16_supported", &lstmgrad::bf16_supported,
        "Whether this CPU runs precision 'bf16' (AVX512_BF16)");
  lstmgrad::python::bind_models(m);
}
