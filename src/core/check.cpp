#include "lstmgrad/check.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "lstmgrad/autodiff.hpp"
#include "lstmgrad/cuda.hpp"
#include "lstmgrad/error.hpp"
#include "lstmgrad/finite_diff.hpp"
#include "lstmgrad/lstm.hpp"
#include "lstmgrad/optimizer.hpp"

namespace lstmgrad {

namespace {

std::vector<double> uniform(size_t n, std::mt19937_64& rng, double lo, double hi) {
  std::uniform_real_distribution<double> u(lo, hi);
  std::vector<double> v(n);
  for (double& e : v) e = u(rng);
  return v;
}

Batch<double> random_batch(const CheckOptions& o, std::mt19937_64& rng) {
  const ModelConfig& c = o.cfg;
  Batch<double> b;
  b.T = o.T, b.B = o.B;
  const size_t N = static_cast<size_t>(o.T * o.B);
  std::uniform_int_distribution<int64_t> id(0, c.V - 1);
  if (c.input == InputKind::embedding) {
    for (size_t k = 0; k < N; ++k) b.tokens.push_back(id(rng));
  } else {
    b.dense = uniform(N * static_cast<size_t>(c.X), rng, -1, 1);
  }
  if (o.soft_targets) {  // softmax of random numbers: probability rows
    b.target_probs = uniform(N * static_cast<size_t>(c.V), rng, -2, 2);
    for (size_t r = 0; r < N; ++r) {
      double* row = b.target_probs.data() + r * static_cast<size_t>(c.V);
      double sum = 0;
      for (int64_t k = 0; k < c.V; ++k) sum += row[k] = std::exp(row[k]);
      for (int64_t k = 0; k < c.V; ++k) row[k] /= sum;
    }
  } else {
    for (size_t k = 0; k < N; ++k) b.target.push_back(id(rng));
  }
  if (o.initial_state) {
    b.h0 = uniform(static_cast<size_t>(c.h_offset(c.L, o.B)), rng, -0.5, 0.5);
    b.s0 = uniform(static_cast<size_t>(c.s_offset(c.L, o.B)), rng, -1, 1);
  }
  return b;
}

// The coordinates finite differences check: all of a small tensor, an even spread of a large one.
std::vector<size_t> sample_coords(size_t offset, size_t size, size_t max) {
  std::vector<size_t> c;
  const size_t n = std::min(size, max);
  for (size_t k = 0; k < n; ++k) c.push_back(offset + k * size / n);
  return c;
}

CheckRow compare(const std::string& name, std::vector<int64_t> shape, const double* hand,
                 const double* tape, const std::vector<double>& fd,
                 const std::vector<size_t>& coords, size_t offset, size_t size,
                 const CheckOptions& o) {
  CheckRow r{name, std::move(shape)};
  double tape_err = 0, fd_err = 0;
  for (size_t k = 0; k < size; ++k) {
    r.max_abs = std::max(r.max_abs, std::abs(hand[k]));
    tape_err = std::max(tape_err, std::abs(hand[k] - tape[k]));
  }
  for (size_t c : coords) fd_err = std::max(fd_err, std::abs(hand[c - offset] - fd[c]));
  const double scale = r.max_abs > 0 ? r.max_abs : 1.0;
  r.tape_rel = tape_err / scale;
  r.fd_rel = fd_err / scale;
  r.fd_coords = coords.size();
  r.ok = r.tape_rel <= o.tape_tol && r.fd_rel <= o.fd_tol;
  return r;
}

}  // namespace

CheckReport run_check(const CheckOptions& o) {
  const ModelConfig& c = o.cfg;
  validate_config(c);
  std::mt19937_64 rng(o.seed);
  const std::vector<double> params = uniform(parameter_count(c), rng, -0.5, 0.5);
  const Batch<double> batch = random_batch(o, rng);
  validate_batch(c, batch, "check");

  // Hand-derived BPTT.
  LanguageModel<double> lm(c);
  lm.set_regularization(o.reg, o.mask_seed());
  CheckReport rep;
  rep.loss_hand = lm.forward(params, batch, o.reduction);
  rep.ce_hand = lm.cross_entropy();
  const size_t Sh = static_cast<size_t>(c.h_offset(c.L, o.B));
  const size_t Ss = static_cast<size_t>(c.s_offset(c.L, o.B));
  std::vector<double> grad(params.size(), 0.0), dh0(Sh), ds0(Ss), dinput(batch.dense.size());
  lm.backward(grad, params, batch, dinput.empty() ? nullptr : dinput.data(), dh0.data(),
              ds0.data());
  // The tape.
  Masks<double> masks;
  draw_masks(masks, c, o.reg, o.B, o.mask_seed());
  draw_zoneout(masks, c, o.T, o.B, o.mask_seed());
  const ad::TapeLmResult tape =
      ad::tape_lm(c, params, batch, o.reduction, {&masks, o.reg.ar, o.reg.tar});
  rep.loss_tape = tape.loss;
  rep.ce_tape = tape.ce;

  // Finite differences over one vector [params | h0 | s0 | dense input], through the forward.
  std::vector<double> all = params;
  const size_t o_h0 = all.size();
  all.insert(all.end(), batch.h0.begin(), batch.h0.end());
  const size_t o_s0 = all.size();
  all.insert(all.end(), batch.s0.begin(), batch.s0.end());
  const size_t o_in = all.size();
  all.insert(all.end(), batch.dense.begin(), batch.dense.end());
  LanguageModel<double> fwd(c);
  fwd.set_regularization(o.reg, o.mask_seed());  // the same masks at every evaluation
  Batch<double> work = batch;
  auto loss_at = [&](std::span<const double> v) {
    std::copy(v.begin() + o_h0, v.begin() + o_s0, work.h0.begin());
    std::copy(v.begin() + o_s0, v.begin() + o_in, work.s0.begin());
    std::copy(v.begin() + o_in, v.end(), work.dense.begin());
    return fwd.forward(v.subspan(0, o_h0), work, o.reduction);
  };
  std::vector<size_t> coords;
  const std::vector<ParamInfo> layout = parameter_layout(c);
  for (const ParamInfo& p : layout) {
    auto s = sample_coords(p.offset, p.size, o.fd_max_coords);
    coords.insert(coords.end(), s.begin(), s.end());
  }
  for (auto [off, n] : {std::pair{o_h0, batch.h0.size()}, std::pair{o_s0, batch.s0.size()},
                        std::pair{o_in, batch.dense.size()}}) {
    auto s = sample_coords(off, n, o.fd_max_coords);
    coords.insert(coords.end(), s.begin(), s.end());
  }
  const std::vector<double> fd = central_difference5(loss_at, all, coords, o.fd_step);
  auto coords_in = [&](size_t off, size_t n) {
    std::vector<size_t> r;
    for (size_t k : coords)
      if (k >= off && k < off + n) r.push_back(k);
    return r;
  };

  for (const ParamInfo& p : layout)
    rep.rows.push_back(compare(p.name, p.shape, grad.data() + p.offset, tape.grad.data() + p.offset,
                               fd, coords_in(p.offset, p.size), p.offset, p.size, o));
  if (!batch.h0.empty()) {
    rep.rows.push_back(compare("h0", state_shape(c, o.B, true), dh0.data(), tape.dh0.data(), fd,
                               coords_in(o_h0, Sh), o_h0, Sh, o));
    rep.rows.push_back(compare("s0", state_shape(c, o.B, false), ds0.data(), tape.ds0.data(), fd,
                               coords_in(o_s0, Ss), o_s0, Ss, o));
  }
  if (!dinput.empty())
    rep.rows.push_back(compare("input", {o.T, o.B, c.X}, dinput.data(), tape.dinput.data(), fd,
                               coords_in(o_in, dinput.size()), o_in, dinput.size(), o));
  rep.ok = std::abs(rep.loss_hand - rep.loss_tape) <= o.tape_tol * std::max(1.0, rep.loss_hand);
  for (const CheckRow& r : rep.rows) rep.ok = rep.ok && r.ok;
  return rep;
}

namespace {

template <class To, class From>
std::vector<To> cast(const std::vector<From>& v) {
  return std::vector<To>(v.begin(), v.end());
}

Batch<float> to_float(const Batch<double>& b) {
  Batch<float> f;
  f.T = b.T, f.B = b.B, f.tokens = b.tokens, f.target = b.target;
  f.dense = cast<float>(b.dense), f.target_probs = cast<float>(b.target_probs);
  f.h0 = cast<float>(b.h0), f.s0 = cast<float>(b.s0);
  return f;
}

DeviceCheckRow compare_device(const std::string& name, std::vector<int64_t> shape,
                              const double* ref, const float* dev, size_t n, double tol) {
  DeviceCheckRow r{name, std::move(shape)};
  double err = 0;
  bool finite = true;
  for (size_t k = 0; k < n; ++k) {
    r.max_abs = std::max(r.max_abs, std::abs(ref[k]));
    err = std::max(err, std::abs(ref[k] - static_cast<double>(dev[k])));
    finite = finite && std::isfinite(dev[k]);
  }
  r.rel = err / (r.max_abs > 0 ? r.max_abs : 1.0);
  r.ok = finite && r.rel <= tol;
  return r;
}

}  // namespace

DeviceCheckReport run_device_check(const CheckOptions& o, const DeviceCheckOptions& d) {
  const ModelConfig& c = o.cfg;
  validate_config(c);
  cuda::require();
  const char* flag = c.tie_weights ? "--tie-weights" : regularization_flag(o.reg);
  if (flag)
    throw InputError(fmt::format(
        "--device cuda: the CUDA engine does not support {} yet (use --device cpu)", flag));
  std::mt19937_64 rng(o.seed);
  std::vector<double> params = uniform(parameter_count(c), rng, -0.5, 0.5);
  const Batch<double> batch = random_batch(o, rng);
  validate_batch(c, batch, "check");
  const Batch<float> fbatch = to_float(batch);
  const std::vector<ParamInfo> layout = parameter_layout(c);
  // (the CUDA engine refuses per-layer widths and projections: h and s alike [L,B,H])
  const size_t S = static_cast<size_t>(c.h_offset(c.L, o.B));
  const std::vector<int64_t> state{c.L, o.B, c.H};

  LanguageModel<double> ref(c);
  cuda::LanguageModel dev(c);
  dev.set_recurrence(cuda::parse_recurrence(d.recurrence));
  DeviceCheckReport rep;
  rep.device = cuda::describe();
  const uint64_t seed = o.seed * 7919;
  ref.set_dropout(d.dropout, seed), dev.set_dropout(d.dropout, seed);
  rep.loss_ref = ref.forward(params, batch, o.reduction);
  std::vector<double> grad(params.size(), 0.0), dh0(S), ds0(S), dinput(batch.dense.size());
  ref.backward(grad, params, batch, dinput.empty() ? nullptr : dinput.data(), dh0.data(),
               ds0.data());
  std::vector<float> fparams = cast<float>(params);
  rep.loss_device = dev.forward(fparams, fbatch, o.reduction);
  rep.recurrence = dev.recurrence_used();
  std::vector<float> fgrad(params.size(), 0.0f), fdh0(S), fds0(S), fdinput(dinput.size());
  const std::vector<float> fh_n(dev.h_n().begin(), dev.h_n().end());
  const std::vector<float> fs_n(dev.s_n().begin(), dev.s_n().end());
  dev.backward(fgrad, fparams, fbatch, fdinput.empty() ? nullptr : fdinput.data(), fdh0.data(),
               fds0.data());
  const double loss_rel =
      std::abs(rep.loss_device - rep.loss_ref) / std::max(1.0, std::abs(rep.loss_ref));
  rep.rows.push_back({"loss", {}, std::abs(rep.loss_ref), loss_rel, loss_rel <= d.tol});
  rep.rows.push_back(compare_device("h_n", state, ref.h_n().data(), fh_n.data(), S, d.tol));
  rep.rows.push_back(compare_device("s_n", state, ref.s_n().data(), fs_n.data(), S, d.tol));
  for (const ParamInfo& p : layout)
    rep.rows.push_back(compare_device(p.name, p.shape, grad.data() + p.offset,
                                      fgrad.data() + p.offset, p.size, d.tol));
  if (!batch.h0.empty()) {
    rep.rows.push_back(compare_device("dh0", state, dh0.data(), fdh0.data(), S, d.tol));
    rep.rows.push_back(compare_device("ds0", state, ds0.data(), fds0.data(), S, d.tol));
  }
  if (!dinput.empty())
    rep.rows.push_back(compare_device("input", {o.T, o.B, c.X}, dinput.data(), fdinput.data(),
                                      dinput.size(), d.tol));

  // The trajectory: the same SGD with clipping on both, the device's parameters never leaving it.
  dev.set_params(fparams);
  dev.zero_grad();
  for (int step = 1; step <= d.sgd_steps; ++step) {
    const uint64_t s = seed + static_cast<uint64_t>(step);
    ref.set_dropout(d.dropout, s), dev.set_dropout(d.dropout, s);
    std::fill(grad.begin(), grad.end(), 0.0);
    ref.forward(params, batch, o.reduction);
    ref.backward(grad, params, batch);
    const double factor = clip_factor(grad_norm<double>(grad), d.clip);
    for (size_t k = 0; k < params.size(); ++k) params[k] -= d.lr * factor * grad[k];
    dev.forward(fbatch, o.reduction);
    dev.backward();
    dev.sgd_step(d.lr, d.clip);
  }
  if (d.sgd_steps > 0) {
    dev.get_params(fparams);
    for (const ParamInfo& p : layout)
      rep.rows.push_back(compare_device("sgd:" + p.name, p.shape, params.data() + p.offset,
                                        fparams.data() + p.offset, p.size, d.tol));
  }
  for (const DeviceCheckRow& r : rep.rows) rep.ok = rep.ok && r.ok;
  return rep;
}

}  // namespace lstmgrad
