// oneDNN's LSTM primitive on the presets of `lstmgrad bench` (docs/benchmarks.md, "oneDNN"), and
// a check that it computes what lstmgrad computes (--check).
//
//   onednn_lstm [--preset NAME] [--mode fwd|infer|fwdbwd|all] [--threads N] [--dtype f32|bf16]
//               [--runs N] [--warmup N] [--json] [--implicit-zero-state]
//   onednn_lstm --check [--dtype f32|bf16] [--implicit-zero-state]
//
// Modes, named as lstmgrad bench names them: fwd is forward_training (it writes the workspace
// backward reads), infer is forward_inference, fwdbwd is forward_training then backward with
// dL/dx, dL/dW, dL/db (and dL/dh0, dL/ds0). The weights live in lstmgrad's (PyTorch's) layout,
// oneDNN's ldgoi; fwd and fwdbwd reorder them into the primitives' own layouts on every call and
// the weight gradients back (a training step updates the weights in between), infer once before
// timing (inference weights are constant). Threads: Debian's oneDNN runs on OpenMP, so
// omp_set_num_threads. Sizes: T steps, B rows, X input width, H hidden, L layers, I the input
// width of one primitive.
//
// oneDNN 2.6 must be given the initial state explicitly, zeros included: with no src_iter and
// src_iter_c its backward returns wrong recurrent-weight gradients for the last layer
// (--implicit-zero-state shows it: --check then fails).
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <iostream>
#include <nlohmann/json.hpp>
#include <oneapi/dnnl/dnnl.hpp>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "lstmgrad/batch.hpp"
#include "lstmgrad/bench.hpp"
#include "lstmgrad/lstm.hpp"
#include "lstmgrad/model.hpp"

namespace {

using dnnl::memory;
using Dt = memory::data_type;
using Tag = memory::format_tag;
using Clock = std::chrono::steady_clock;

struct Shape {
  int64_t T, B, X, H, L;
};

// oneDNN runs several layers in one primitive only when each reads H inputs: a stack whose layer
// 0 reads X != H inputs is two primitives, layer 0 and then the L - 1 others.
struct Segment {
  int64_t first, layers, I;
};

std::vector<Segment> segments(const Shape& s) {
  if (s.X == s.H || s.L == 1) return {{0, s.L, s.X}};
  return {{0, 1, s.X}, {1, s.L - 1, s.H}};
}

// One segment's weights in lstmgrad's layout, layer after layer: W_ih [l,4H,I], W_hh [l,4H,H],
// and the bias oneDNN adds once, b_ih + b_hh [l,4H]. Gate blocks i, f, a, o: oneDNN's i, f, c~, o.
struct Weights {
  std::vector<float> W_ih, W_hh, bias;
};

void fill(const memory& m, const void* src) {
  std::memcpy(m.get_data_handle(), src, m.get_desc().get_size());
}

void zero(const memory& m) {
  std::memset(m.get_data_handle(), 0, m.get_desc().get_size());
}

// One primitive's worth of the stack (a segment): its primitives and every memory they touch.
class Lstm {
 public:
  // training: forward_training (else forward_inference); backward: also the backward primitive.
  Lstm(const dnnl::engine& eng, const Shape& s, const Segment& g, Dt dt, bool training,
       bool backward, bool implicit_zero)
      : eng_(eng), implicit_zero_(implicit_zero) {
    const int64_t T = s.T, B = s.B, H = s.H, l = g.layers, I = g.I;
    const memory::dims src{T, B, I}, dst{T, B, H}, iter{l, 1, B, H}, wl{l, 1, I, 4, H},
        wi{l, 1, H, 4, H}, bias{l, 1, 4, H};
    // Cell states, bias and every gradient stay float32 in bf16 runs (oneDNN 2.6 creates no bf16
    // backward with bf16 gradients of the data).
    const Dt c = Dt::f32;
    const memory::desc src_d(src, dt, Tag::tnc), dst_d(dst, dt, Tag::tnc),
        iter_d(iter, dt, Tag::ldnc), iter_c_d(iter, c, Tag::ldnc), wl_any(wl, dt, Tag::any),
        wi_any(wi, dt, Tag::any), bias_d(bias, c, Tag::ldgo);
    const memory::desc none;
    const auto prop =
        training ? dnnl::prop_kind::forward_training : dnnl::prop_kind::forward_inference;
    const dnnl::lstm_forward::desc fd(
        prop, dnnl::rnn_direction::unidirectional_left2right, src_d, implicit_zero ? none : iter_d,
        implicit_zero ? none : iter_c_d, wl_any, wi_any, bias_d, dst_d, iter_d, iter_c_d);
    fwd_pd_ = dnnl::lstm_forward::primitive_desc(fd, eng);
    fwd_ = dnnl::lstm_forward(fwd_pd_);
    user_wl_ = memory({wl, Dt::f32, Tag::ldgoi}, eng);
    user_wi_ = memory({wi, Dt::f32, Tag::ldgoi}, eng);
    bias_ = memory(bias_d, eng);
    wl_ = memory(fwd_pd_.weights_layer_desc(), eng);
    wi_ = memory(fwd_pd_.weights_iter_desc(), eng);
    src_iter_ = memory(iter_d, eng), src_iter_c_ = memory(iter_c_d, eng);
    zero(src_iter_), zero(src_iter_c_);
    dst_layer_ = memory(dst_d, eng);
    dst_iter_ = memory(iter_d, eng), dst_iter_c_ = memory(iter_c_d, eng);
    if (!training) return;
    workspace_ = memory(fwd_pd_.workspace_desc(), eng);
    if (!backward) return;
    const memory::desc dwl_any(wl, c, Tag::any), dwi_any(wi, c, Tag::any), dsrc_d(src, c, Tag::tnc),
        ddst_d(dst, c, Tag::tnc), diter_d(iter, c, Tag::ldnc);
    const dnnl::lstm_backward::desc bd(
        dnnl::prop_kind::backward, dnnl::rnn_direction::unidirectional_left2right, src_d,
        implicit_zero ? none : iter_d, implicit_zero ? none : iter_c_d, wl_any, wi_any, bias_d,
        dst_d, iter_d, iter_c_d, dsrc_d, implicit_zero ? none : diter_d,
        implicit_zero ? none : iter_c_d, dwl_any, dwi_any, bias_d, ddst_d, diter_d, iter_c_d);
    bwd_pd_ = dnnl::lstm_backward::primitive_desc(bd, eng, fwd_pd_);
    bwd_ = dnnl::lstm_backward(bwd_pd_);
    bwl_ = memory(bwd_pd_.weights_layer_desc(), eng);
    bwi_ = memory(bwd_pd_.weights_iter_desc(), eng);
    diff_src_layer_ = memory(dsrc_d, eng);
    diff_src_iter_ = memory(diter_d, eng), diff_src_iter_c_ = memory(iter_c_d, eng);
    diff_dst_iter_ = memory(diter_d, eng), diff_dst_iter_c_ = memory(iter_c_d, eng);
    zero(diff_dst_iter_), zero(diff_dst_iter_c_);  // nothing flows back from h_T, s_T
    diff_wl_ = memory(bwd_pd_.diff_weights_layer_desc(), eng);
    diff_wi_ = memory(bwd_pd_.diff_weights_iter_desc(), eng);
    diff_bias_ = memory(bias_d, eng);
    user_diff_wl_ = memory({wl, Dt::f32, Tag::ldgoi}, eng);
    user_diff_wi_ = memory({wi, Dt::f32, Tag::ldgoi}, eng);
  }

  void set_weights(const Weights& w) {
    fill(user_wl_, w.W_ih.data()), fill(user_wi_, w.W_hh.data()), fill(bias_, w.bias.data());
  }

  // The user's weights into the forward's layouts (each call of a training step; once for
  // inference).
  void pack_forward(dnnl::stream& st) { reorder(st, user_wl_, wl_), reorder(st, user_wi_, wi_); }

  // src_layer [T,B,I] in the primitive's type, complete before the call.
  void forward(dnnl::stream& st, const memory& src_layer) {
    std::unordered_map<int, memory> args{
        {DNNL_ARG_SRC_LAYER, src_layer},   {DNNL_ARG_WEIGHTS_LAYER, wl_},
        {DNNL_ARG_WEIGHTS_ITER, wi_},      {DNNL_ARG_BIAS, bias_},
        {DNNL_ARG_DST_LAYER, dst_layer_},  {DNNL_ARG_DST_ITER, dst_iter_},
        {DNNL_ARG_DST_ITER_C, dst_iter_c_}};
    if (!implicit_zero_)
      args[DNNL_ARG_SRC_ITER] = src_iter_, args[DNNL_ARG_SRC_ITER_C] = src_iter_c_;
    if (workspace_) args[DNNL_ARG_WORKSPACE] = workspace_;
    fwd_.execute(st, args);
  }

  // Backward of the last forward (same src_layer); diff_dst_layer [T,B,H]: dL/dh from above.
  // Writes dL/dx (diff_src_layer), dL/dh0, dL/ds0 and the weight gradients (user layout).
  void backward(dnnl::stream& st, const memory& src_layer, const memory& diff_dst_layer) {
    reorder(st, user_wl_, bwl_), reorder(st, user_wi_, bwi_);
    zero(diff_wl_), zero(diff_wi_), zero(diff_bias_);
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC_LAYER, src_layer},
                                         {DNNL_ARG_WEIGHTS_LAYER, bwl_},
                                         {DNNL_ARG_WEIGHTS_ITER, bwi_},
                                         {DNNL_ARG_BIAS, bias_},
                                         {DNNL_ARG_DST_LAYER, dst_layer_},
                                         {DNNL_ARG_DST_ITER, dst_iter_},
                                         {DNNL_ARG_DST_ITER_C, dst_iter_c_},
                                         {DNNL_ARG_WORKSPACE, workspace_},
                                         {DNNL_ARG_DIFF_SRC_LAYER, diff_src_layer_},
                                         {DNNL_ARG_DIFF_WEIGHTS_LAYER, diff_wl_},
                                         {DNNL_ARG_DIFF_WEIGHTS_ITER, diff_wi_},
                                         {DNNL_ARG_DIFF_BIAS, diff_bias_},
                                         {DNNL_ARG_DIFF_DST_LAYER, diff_dst_layer},
                                         {DNNL_ARG_DIFF_DST_ITER, diff_dst_iter_},
                                         {DNNL_ARG_DIFF_DST_ITER_C, diff_dst_iter_c_}};
    if (!implicit_zero_) {
      args[DNNL_ARG_SRC_ITER] = src_iter_, args[DNNL_ARG_SRC_ITER_C] = src_iter_c_;
      args[DNNL_ARG_DIFF_SRC_ITER] = diff_src_iter_;
      args[DNNL_ARG_DIFF_SRC_ITER_C] = diff_src_iter_c_;
    }
    bwd_.execute(st, args);
    reorder(st, diff_wl_, user_diff_wl_), reorder(st, diff_wi_, user_diff_wi_);
  }

  const memory& src_iter() const { return src_iter_; }
  const memory& src_iter_c() const { return src_iter_c_; }
  const memory& dst_layer() const { return dst_layer_; }
  const memory& dst_iter() const { return dst_iter_; }
  const memory& dst_iter_c() const { return dst_iter_c_; }
  const memory& diff_src_layer() const { return diff_src_layer_; }
  const memory& diff_src_iter() const { return diff_src_iter_; }
  const memory& diff_src_iter_c() const { return diff_src_iter_c_; }
  const memory& diff_weights_layer() const { return user_diff_wl_; }  // [l,4H,I] f32
  const memory& diff_weights_iter() const { return user_diff_wi_; }   // [l,4H,H] f32
  const memory& diff_bias() const { return diff_bias_; }              // [l,4H] f32

 private:
  void reorder(dnnl::stream& st, const memory& from, const memory& to) {
    if (from.get_desc() == to.get_desc()) {
      fill(to, from.get_data_handle());
    } else {
      dnnl::reorder(from, to).execute(st, const_cast<memory&>(from), const_cast<memory&>(to));
    }
  }

  dnnl::engine eng_;
  bool implicit_zero_;
  dnnl::lstm_forward::primitive_desc fwd_pd_;
  dnnl::lstm_forward fwd_;
  dnnl::lstm_backward::primitive_desc bwd_pd_;
  dnnl::lstm_backward bwd_;
  memory user_wl_, user_wi_, bias_, wl_, wi_, bwl_, bwi_;
  memory src_iter_, src_iter_c_, dst_layer_, dst_iter_, dst_iter_c_, workspace_;
  memory diff_src_layer_, diff_src_iter_, diff_src_iter_c_, diff_dst_iter_, diff_dst_iter_c_;
  memory diff_wl_, diff_wi_, diff_bias_, user_diff_wl_, user_diff_wi_;
};

// float32 values into a memory of any type in a plain layout (bf16: a reorder rounds them).
void write(dnnl::stream& st, const memory& m, const std::vector<float>& v) {
  const memory::desc d = m.get_desc();
  if (d.data_type() == Dt::f32) return fill(m, v.data());
  memory user({d.dims(), Dt::f32, d.dims().size() == 3 ? Tag::tnc : Tag::ldnc}, m.get_engine());
  fill(user, v.data());
  dnnl::reorder(user, m).execute(st, user, const_cast<memory&>(m));
  st.wait();
}

// A memory in a plain layout as float32 values (bf16: through a reorder).
std::vector<float> read(dnnl::stream& st, const memory& m) {
  const memory::desc d = m.get_desc();
  memory f32 = m;
  if (d.data_type() != Dt::f32) {
    f32 = memory({d.dims(), Dt::f32, d.dims().size() == 3 ? Tag::tnc : Tag::ldnc}, m.get_engine());
    dnnl::reorder(m, f32).execute(st, const_cast<memory&>(m), f32);
    st.wait();
  }
  std::vector<float> v(f32.get_desc().get_size() / sizeof(float));
  std::memcpy(v.data(), f32.get_data_handle(), v.size() * sizeof(float));
  return v;
}

// ---- the benchmark ----------------------------------------------------------------------------

struct Options {
  std::string preset, mode = "all", dtype = "f32";
  std::vector<int> threads{1, 2};
  int runs = 7, warmup = 5;
  bool json = false, check = false, implicit_zero = false;
};

double median_ms(const std::function<void()>& step, const Options& o) {
  return lstmgrad::median_ms(step, o.warmup, o.runs);
}

std::vector<float> uniform(size_t n, float a, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> d(-a, a);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// The stack of one preset: its segments' primitives, the input x and dL/dh of the top layer.
struct Stack {
  dnnl::engine eng{dnnl::engine::kind::cpu, 0};
  dnnl::stream st{eng};
  std::vector<Lstm> seg;
  memory x, dh;

  Stack(const Shape& s, Dt dt, bool training, bool backward, bool implicit_zero) {
    std::mt19937_64 rng(5);
    const float a = 1.0f / std::sqrt(static_cast<float>(s.H));
    for (const Segment& g : segments(s)) {
      seg.emplace_back(eng, s, g, dt, training, backward, implicit_zero);
      const auto G = static_cast<size_t>(g.layers * 4 * s.H);
      seg.back().set_weights({uniform(G * static_cast<size_t>(g.I), a, rng),
                              uniform(G * static_cast<size_t>(s.H), a, rng), uniform(G, a, rng)});
    }
    x = memory({{s.T, s.B, s.X}, dt, Tag::tnc}, eng);
    dh = memory({{s.T, s.B, s.H}, Dt::f32, Tag::tnc}, eng);  // a gradient: float32
    write(st, x, uniform(static_cast<size_t>(s.T * s.B * s.X), 1.0f, rng));
    write(st, dh, uniform(static_cast<size_t>(s.T * s.B * s.H), 1.0f, rng));
  }

  void forward(bool pack) {
    const memory* in = &x;
    for (Lstm& l : seg) {
      if (pack) l.pack_forward(st);
      l.forward(st, *in);
      in = &l.dst_layer();
    }
  }

  void backward() {
    const memory* dtop = &dh;
    for (size_t k = seg.size(); k-- > 0;) {
      seg[k].backward(st, k == 0 ? x : seg[k - 1].dst_layer(), *dtop);
      dtop = &seg[k].diff_src_layer();
    }
  }
};

nlohmann::json run_case(const lstmgrad::BenchPreset& p, const std::string& mode, int threads,
                        const Options& o) {
  omp_set_num_threads(threads);
  lstmgrad::reset_peak_rss();
  const Shape s{p.T, p.B, p.X, p.H, p.L};
  const Dt dt = o.dtype == "bf16" ? Dt::bf16 : Dt::f32;
  double ms = 0;
  {
    Stack stack(s, dt, mode != "infer", mode == "fwdbwd", o.implicit_zero);
    if (mode == "infer") {
      stack.forward(true);  // the weights packed once, then timed without
      stack.st.wait();
      ms = median_ms([&] { stack.forward(false), stack.st.wait(); }, o);
    } else {
      ms = median_ms(
          [&] {
            stack.forward(true);
            if (mode == "fwdbwd") stack.backward();
            stack.st.wait();
          },
          o);
    }
  }
  const double tokens = static_cast<double>(p.T * p.B);
  const double flops = lstmgrad::bench_flops_per_token(p, mode == "infer" ? "fwd" : mode);
  return {{"preset", p.name},
          {"mode", mode},
          {"threads", threads},
          {"engine", "onednn"},
          {"dtype", o.dtype},
          {"ms", ms},
          {"tokens_per_s", tokens / (ms / 1e3)},
          {"gflops", flops * tokens / (ms / 1e3) / 1e9},
          {"peak_rss_mb", lstmgrad::peak_rss_mb()}};
}

int run_bench(const Options& o) {
  std::vector<lstmgrad::BenchPreset> presets;
  for (const auto& p : lstmgrad::bench_presets())
    if (o.preset.empty() || p.name == o.preset) presets.push_back(p);
  if (presets.empty()) {
    std::string names;
    for (const auto& p : lstmgrad::bench_presets()) names += (names.empty() ? "" : ", ") + p.name;
    throw std::invalid_argument("--preset: unknown preset '" + o.preset + "' (one of " + names +
                                ")");
  }
  nlohmann::json out = nlohmann::json::array();
  if (!o.json)
    std::printf("oneDNN %d.%d LSTM, %s\n%-15s %-7s %7s %10s %12s %9s %9s\n", dnnl::version()->major,
                dnnl::version()->minor, o.dtype.c_str(), "preset", "mode", "threads", "ms",
                "tokens/s", "GFLOP/s", "peak MB");
  for (const auto& p : presets) {
    for (const std::string mode : {"fwd", "infer", "fwdbwd"}) {
      if (o.mode != "all" && o.mode != mode) continue;
      for (int t : o.threads) {
        nlohmann::json r;
        try {
          r = run_case(p, mode, t, o);
        } catch (const dnnl::error& e) {  // bf16 where this oneDNN has no such primitive
          if (o.dtype == "f32") throw;
          std::fprintf(stderr, "onednn_lstm: %s %s %s skipped: oneDNN %d.%d: %s\n", p.name.c_str(),
                       mode.c_str(), o.dtype.c_str(), dnnl::version()->major,
                       dnnl::version()->minor, e.what());
          continue;
        }
        if (o.json) {
          out.push_back(r);
        } else {
          std::printf("%-15s %-7s %7d %10.2f %12.0f %9.1f %9.1f\n", p.name.c_str(), mode.c_str(), t,
                      r["ms"].get<double>(), r["tokens_per_s"].get<double>(),
                      r["gflops"].get<double>(), r["peak_rss_mb"].get<double>());
          std::fflush(stdout);
        }
      }
    }
  }
  if (o.json) std::cout << out.dump(1) << "\n";
  return 0;
}

// ---- the check: the same computation as lstmgrad's float64 reference ---------------------------

// got (oneDNN, float32) against want (lstmgrad, float64): the largest difference relative to the
// largest |want|. Prints the tensor's line; returns whether it is within tol.
bool compare(const std::string& name, const std::vector<float>& got,
             const std::vector<double>& want, double tol) {
  double worst = 0, scale = 0;
  size_t at = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    scale = std::max(scale, std::abs(want[i]));
    const double d = std::abs(static_cast<double>(got[i]) - want[i]);
    if (d > worst) worst = d, at = i;
  }
  const double rel = scale > 0 ? worst / scale : worst;
  const bool ok = got.size() == want.size() && rel <= tol;
  std::printf(
      "  %-22s max |diff| %.3e at %zu (oneDNN %.6g, lstmgrad %.6g), / max |lstmgrad| %.3e "
      "%s\n",
      name.c_str(), worst, at, want.empty() ? 0.0 : static_cast<double>(got[at]),
      want.empty() ? 0.0 : want[at], rel, ok ? "ok" : "FAIL");
  return ok;
}

std::vector<double> slice(const std::vector<double>& v, size_t at, size_t n) {
  return {v.begin() + static_cast<long>(at), v.begin() + static_cast<long>(at + n)};
}

// One shape: lstmgrad's LanguageModel<double> (dense input, identity readout, summed
// cross-entropy, so dL/dh_top = p - onehot(y)) against oneDNN's primitives given the same
// weights, input, initial state and that dL/dh_top.
bool check_case(const Shape& s, bool random_state, bool implicit_zero, Dt dt) {
  std::printf("T=%ld B=%ld X=%ld H=%ld L=%ld, initial state %s\n", static_cast<long>(s.T),
              static_cast<long>(s.B), static_cast<long>(s.X), static_cast<long>(s.H),
              static_cast<long>(s.L), random_state ? "random" : "zero");
  lstmgrad::ModelConfig cfg;
  cfg.input = lstmgrad::InputKind::dense, cfg.readout = lstmgrad::Readout::identity;
  cfg.X = s.X, cfg.H = s.H, cfg.L = s.L, cfg.V = s.H;
  std::mt19937_64 rng(11);
  std::uniform_real_distribution<double> u(-0.6, 0.6);
  std::vector<double> params(lstmgrad::parameter_count(cfg)), grad(params.size(), 0.0);
  for (double& v : params) v = u(rng);
  const int64_t N = s.T * s.B, LBH = s.L * s.B * s.H;
  lstmgrad::Batch<double> b;
  b.T = s.T, b.B = s.B;
  for (int64_t i = 0; i < N * s.X; ++i) b.dense.push_back(2 * u(rng));
  for (int64_t r = 0; r < N; ++r) b.target.push_back(static_cast<int64_t>(rng() % s.H));
  if (random_state)
    for (int64_t i = 0; i < LBH; ++i) b.h0.push_back(u(rng)), b.s0.push_back(u(rng));
  lstmgrad::LanguageModel<double> lm(cfg);
  lm.forward(params, b, lstmgrad::Reduction::sum);
  const std::vector<double> p(lm.probs().begin(), lm.probs().end());
  const std::vector<double> h_n(lm.h_n().begin(), lm.h_n().end()),
      s_n(lm.s_n().begin(), lm.s_n().end());
  std::vector<double> dx(static_cast<size_t>(N * s.X)), dh0(static_cast<size_t>(LBH)),
      ds0(dh0.size());
  lm.backward(grad, params, b, dx.data(), dh0.data(), ds0.data());
  std::vector<float> dh_top(p.begin(), p.end());  // p - onehot(y)
  for (int64_t r = 0; r < N; ++r) dh_top[static_cast<size_t>(r * s.H + b.target[r])] -= 1.0f;

  Stack st(s, dt, true, true, implicit_zero);  // then given the model's weights and data
  const lstmgrad::ParameterOffsets off = lstmgrad::parameter_offsets(cfg);
  const int64_t G = 4 * s.H, BH = s.B * s.H;
  auto as_float = [](const std::vector<double>& v, size_t at, size_t n) {
    return std::vector<float>(v.begin() + static_cast<long>(at),
                              v.begin() + static_cast<long>(at + n));
  };
  std::vector<Segment> segs = segments(s);
  for (size_t k = 0; k < segs.size(); ++k) {
    Weights w;
    for (int64_t l = segs[k].first; l < segs[k].first + segs[k].layers; ++l) {
      const auto& o = off.layers[static_cast<size_t>(l)];
      const auto I = static_cast<size_t>(l == 0 ? s.X : s.H);
      const auto a = as_float(params, o.weight_ih, static_cast<size_t>(G) * I),
                 c = as_float(params, o.weight_hh, static_cast<size_t>(G * s.H));
      w.W_ih.insert(w.W_ih.end(), a.begin(), a.end());
      w.W_hh.insert(w.W_hh.end(), c.begin(), c.end());
      for (int64_t j = 0; j < G; ++j)
        w.bias.push_back(static_cast<float>(params[o.bias_ih + static_cast<size_t>(j)] +
                                            params[o.bias_hh + static_cast<size_t>(j)]));
    }
    st.seg[k].set_weights(w);
    if (random_state) {
      const auto at = static_cast<size_t>(segs[k].first * BH),
                 n = static_cast<size_t>(segs[k].layers * BH);
      write(st.st, st.seg[k].src_iter(), as_float(b.h0, at, n));
      write(st.st, st.seg[k].src_iter_c(), as_float(b.s0, at, n));
    }
  }
  write(st.st, st.x, as_float(b.dense, 0, b.dense.size()));
  write(st.st, st.dh, dh_top);
  st.forward(true);
  st.backward();
  st.st.wait();

  // float32: 1e-5 of each tensor's largest value. It rounds these sums of at most 4H + X + H
  // terms over T <= 6 steps to a few 1e-7 of it (measured: at most 4e-7), and a wrong gradient
  // (the implicit zero state's dW_hh) is off by 0.2 of it or more. bf16 (8 significant bits,
  // 2^-9 = 2e-3 relative rounding of every input, weight and h fed to a GEMM): 3e-2, three times
  // the largest measured (9e-3, a dW_hh), still well below the implicit zero state's error.
  const double tol = dt == Dt::f32 ? 1e-5 : 3e-2;
  bool ok = true;
  std::vector<float> top =
      read(st.st, st.seg.back().dst_layer());  // h of the top layer -> softmax(h)
  for (int64_t r = 0; r < N; ++r) {
    float* h = top.data() + r * s.H;
    const float m = *std::max_element(h, h + s.H);
    float z = 0;
    for (int64_t j = 0; j < s.H; ++j) z += (h[j] = std::exp(h[j] - m));
    for (int64_t j = 0; j < s.H; ++j) h[j] /= z;
  }
  ok &= compare("p = softmax(h_top)", top, p, tol);
  ok &= compare("dL/dx", read(st.st, st.seg.front().diff_src_layer()), dx, tol);
  for (size_t k = 0; k < segs.size(); ++k) {
    const Lstm& l = st.seg[k];
    const auto at = static_cast<size_t>(segs[k].first * BH),
               n = static_cast<size_t>(segs[k].layers * BH);
    const std::string layers = segs[k].layers == 1
                                   ? "layer " + std::to_string(segs[k].first)
                                   : "layers " + std::to_string(segs[k].first) + "-" +
                                         std::to_string(segs[k].first + segs[k].layers - 1);
    ok &= compare("h_n " + layers, read(st.st, l.dst_iter()), slice(h_n, at, n), tol);
    ok &= compare("s_n " + layers, read(st.st, l.dst_iter_c()), slice(s_n, at, n), tol);
    if (!implicit_zero) {
      ok &= compare("dL/dh0 " + layers, read(st.st, l.diff_src_iter()), slice(dh0, at, n), tol);
      ok &= compare("dL/ds0 " + layers, read(st.st, l.diff_src_iter_c()), slice(ds0, at, n), tol);
    }
    const std::vector<float> dwl = read(st.st, l.diff_weights_layer()),
                             dwi = read(st.st, l.diff_weights_iter()),
                             db = read(st.st, l.diff_bias());
    size_t pl = 0, pi = 0;
    for (int64_t j = 0; j < segs[k].layers; ++j) {
      const int64_t layer = segs[k].first + j;
      const auto& o = off.layers[static_cast<size_t>(layer)];
      const auto nl = static_cast<size_t>(G * (layer == 0 ? s.X : s.H)),
                 ni = static_cast<size_t>(G * s.H);
      const std::string name = "_l" + std::to_string(layer);
      ok &= compare("dW_ih" + name,
                    {dwl.begin() + static_cast<long>(pl), dwl.begin() + static_cast<long>(pl + nl)},
                    slice(grad, o.weight_ih, nl), tol);
      ok &= compare("dW_hh" + name,
                    {dwi.begin() + static_cast<long>(pi), dwi.begin() + static_cast<long>(pi + ni)},
                    slice(grad, o.weight_hh, ni), tol);
      const std::vector<float> dbj(db.begin() + j * G, db.begin() + (j + 1) * G);
      ok &= compare("db_ih" + name, dbj, slice(grad, o.bias_ih, static_cast<size_t>(G)), tol);
      ok &= compare("db_hh" + name, dbj, slice(grad, o.bias_hh, static_cast<size_t>(G)), tol);
      pl += nl, pi += ni;
    }
  }
  return ok;
}

// Exit status: 0 within tolerance, 1 not, 77 (CTest: skipped) bf16 where this oneDNN has no bf16
// LSTM on this CPU.
int run_check(const Options& o) {
  omp_set_num_threads(1);
  const Dt dt = o.dtype == "bf16" ? Dt::bf16 : Dt::f32;
  if (dt == Dt::bf16) {
    try {
      Stack probe({2, 2, 16, 16, 1}, dt, true, true, false);
    } catch (const dnnl::error& e) {
      std::printf(
          "onednn_lstm --check --dtype bf16: skipped: oneDNN %d.%d has no bf16 LSTM here "
          "(%s)\n",
          dnnl::version()->major, dnnl::version()->minor, e.what());
      return 77;
    }
  }
  std::printf("oneDNN %d.%d LSTM (%s) against lstmgrad's float64 LanguageModel%s\n",
              dnnl::version()->major, dnnl::version()->minor, o.dtype.c_str(),
              o.implicit_zero ? ", no initial state given (implicit zeros)" : "");
  bool ok = true;
  ok &= check_case({5, 3, 4, 6, 1}, false, o.implicit_zero, dt);
  if (!o.implicit_zero) ok &= check_case({4, 2, 5, 5, 3}, true, false, dt);
  ok &= check_case({3, 2, 3, 4, 2}, false, o.implicit_zero, dt);  // two primitives: X != H
  ok &= check_case({6, 3, 6, 6, 2}, false, o.implicit_zero, dt);
  std::printf("%s\n", ok ? "onednn_lstm --check: all within tolerance"
                         : "onednn_lstm --check: FAILED (see the lines marked FAIL)");
  return ok ? 0 : 1;
}

Options parse(int argc, char** argv) {
  Options o;
  auto value = [&](int& i) -> std::string {
    if (i + 1 >= argc) throw std::invalid_argument(std::string(argv[i]) + ": needs a value");
    return argv[++i];
  };
  auto count = [&](int& i, int lo) {
    const std::string name = argv[i], v = value(i);
    size_t used = 0;
    int n = 0;
    try {
      n = std::stoi(v, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != v.size() || n < lo)
      throw std::invalid_argument(name + ": expected an integer >= " + std::to_string(lo) +
                                  ", got '" + v + "'");
    return n;
  };
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--preset") {
      o.preset = value(i);
    } else if (a == "--mode") {
      o.mode = value(i);
      if (o.mode != "all" && o.mode != "fwd" && o.mode != "infer" && o.mode != "fwdbwd")
        throw std::invalid_argument("--mode: expected fwd, infer, fwdbwd or all, got '" + o.mode +
                                    "'");
    } else if (a == "--threads") {
      o.threads = {count(i, 1)};
    } else if (a == "--dtype") {
      o.dtype = value(i);
      if (o.dtype != "f32" && o.dtype != "bf16")
        throw std::invalid_argument("--dtype: expected f32 or bf16, got '" + o.dtype + "'");
    } else if (a == "--runs") {
      o.runs = count(i, 1);
    } else if (a == "--warmup") {
      o.warmup = count(i, 0);
    } else if (a == "--json") {
      o.json = true;
    } else if (a == "--check") {
      o.check = true;
    } else if (a == "--implicit-zero-state") {
      o.implicit_zero = true;
    } else if (a == "--help" || a == "-h") {
      std::printf(
          "onednn_lstm [--preset NAME] [--mode fwd|infer|fwdbwd|all] [--threads N (default 1 and "
          "2)]\n            [--dtype f32|bf16] [--runs N] [--warmup N] [--json] "
          "[--implicit-zero-state]\nonednn_lstm --check [--dtype f32|bf16] "
          "[--implicit-zero-state]\n");
      std::exit(0);
    } else {
      throw std::invalid_argument("unknown argument '" + a + "' (--help lists them)");
    }
  }
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options o = parse(argc, argv);
    if (o.check) return run_check(o);
    return run_bench(o);
  } catch (const dnnl::error& e) {
    std::fprintf(stderr, "onednn_lstm: oneDNN: %s (status %d)\n", e.what(),
                 static_cast<int>(e.status));
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "onednn_lstm: %s\n", e.what());
    return 2;
  }
}
