// The public LSTM stack (lstmgrad/stack.hpp) over the engine's cpu::LstmStack: argument checks,
// nn.LSTM's bias = False (zero biases in, bias gradients into scratch), and the copies of the
// outputs out of the stack's arena.
#include "lstmgrad/stack.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "cpu/lstm_stack.hpp"
#include "lstmgrad/error.hpp"

namespace lstmgrad {

namespace {

// The stack alone is the model with dense input and the identity readout; with a projection,
// the model's H is the output's width P and `hidden` holds the cells' widths.
ModelConfig stack_config(int64_t X, int64_t H, int64_t L, int64_t proj) {
  if (proj < 0)
    throw InputError("Lstm: the projection's size must be 0 (none) or >= 1, got " +
                     std::to_string(proj));
  ModelConfig cfg;
  cfg.input = InputKind::dense, cfg.readout = Readout::identity;
  cfg.X = X, cfg.H = H, cfg.V = H, cfg.L = L;
  validate_config(cfg);  // the sizes (L among them) before `hidden` is made from L
  if (proj > 0) {
    cfg.H = cfg.V = cfg.proj = proj;
    cfg.hidden.assign(static_cast<size_t>(L), H);
    validate_config(cfg);
  }
  return cfg;
}

}  // namespace

std::vector<ParamInfo> lstm_parameter_layout(int64_t X, int64_t H, int64_t L, bool bias,
                                             int64_t proj) {
  std::vector<ParamInfo> out;
  size_t offset = 0;
  for (ParamInfo p : parameter_layout(stack_config(X, H, L, proj))) {
    if (!bias && p.name.find("bias") != std::string::npos) continue;
    p.name = p.name.substr(p.name.find('.') + 1);  // rnn.weight_ih_l0 -> weight_ih_l0
    p.offset = offset;
    offset += p.size;
    out.push_back(std::move(p));
  }
  return out;
}

template <class Real>
std::vector<LstmLayerWeights<Real>> lstm_layer_weights(std::span<const Real> flat, int64_t X,
                                                       int64_t H, int64_t L, int64_t proj) {
  const ModelConfig cfg = stack_config(X, H, L, proj);
  if (flat.size() != parameter_count(cfg))
    throw std::invalid_argument("lstm_layer_weights: " + std::to_string(flat.size()) +
                                " values, the layout has " + std::to_string(parameter_count(cfg)));
  std::vector<LstmLayerWeights<Real>> w;
  for (const ParameterOffsets::Layer& l : parameter_offsets(cfg).layers)
    w.push_back({flat.data() + l.weight_ih, flat.data() + l.weight_hh, flat.data() + l.bias_ih,
                 flat.data() + l.bias_hh, l.weight_hr ? flat.data() + *l.weight_hr : nullptr});
  return w;
}

template <class Real>
std::vector<LstmLayerGrads<Real>> lstm_layer_grads(std::span<Real> flat, int64_t X, int64_t H,
                                                   int64_t L, int64_t proj) {
  const ModelConfig cfg = stack_config(X, H, L, proj);
  if (flat.size() != parameter_count(cfg))
    throw std::invalid_argument("lstm_layer_grads: " + std::to_string(flat.size()) +
                                " values, the layout has " + std::to_string(parameter_count(cfg)));
  std::vector<LstmLayerGrads<Real>> g;
  for (const ParameterOffsets::Layer& l : parameter_offsets(cfg).layers)
    g.push_back({flat.data() + l.weight_ih, flat.data() + l.weight_hh, flat.data() + l.bias_ih,
                 flat.data() + l.bias_hh, l.weight_hr ? flat.data() + *l.weight_hr : nullptr});
  return g;
}

template <class Real>
struct Lstm<Real>::Impl {
  Impl(int64_t X, int64_t H, int64_t L, int64_t P)
      : X_(X), H_(H), L_(L), P_(P), Y_(P > 0 ? P : H), stack_(X, widths(H, L), P) {
    zeros_.assign(static_cast<size_t>(4 * H), Real(0));
    scratch_.assign(static_cast<size_t>(8 * H), Real(0));
  }
  std::vector<cpu::LayerWeights<Real>> engine_weights(std::span<const LstmLayerWeights<Real>> w,
                                                      const char* where) const;

  void packed_backward(const Real* dy, const Real* dh_n, const Real* ds_n, const Real* x,
                       const cpu::LayerWeights<Real>* w, const cpu::LayerGrads<Real>* g, Real* dx,
                       Real* dh0, Real* ds0);

  static std::vector<int64_t> widths(int64_t H, int64_t L) {
    return std::vector<int64_t>(static_cast<size_t>(L), H);
  }

  int64_t X_, H_, L_, P_, Y_;      // P: the projection (0: none); Y: h's width (P, else H)
  int64_t T_ = 0, B_ = 0, N_ = 0;  // shape of the last forward (N: rows, T*B when dense)
  cpu::LstmStack<Real> stack_;
  // forward_packed: one stack per run of steps of equal batch size; the state carried between
  // them, and in backward the gradients carried back, [L,B,Y] (h) and [L,B,H] (s).
  struct Segment {
    int64_t off, n, b;  // first row in the packed layout, steps, rows per step
    std::unique_ptr<cpu::LstmStack<Real>> stack;
  };
  std::vector<Segment> segs_;
  size_t n_segs_ = 0;  // segments of the last forward; 0: it was dense
  int shares_ = 0, running_ = 0;
  Precision precision_ = Precision::f32;
  double drop_p_ = 0;
  uint64_t drop_seed_ = 0;
  // Segment i's masks: their own stream, so that runs of steps do not repeat one another's.
  uint64_t segment_seed(size_t i) const { return drop_seed_ ^ (0x9e3779b97f4a7c15ULL * (i + 1)); }
  std::vector<Real> carry_h_, carry_s_, part_a_, part_b_, part_c_, part_d_, zero_dy_;
  std::vector<Real> zeros_;    // [G] the bias of a layer without one
  std::vector<Real> scratch_;  // [2G] where the bias gradients of a layer without them go
};

// The engine's per-layer view; null biases read zeros. Checks the count and the weights (a
// projection's weight_hr given exactly when the stack has one).
template <class Real>
std::vector<cpu::LayerWeights<Real>> Lstm<Real>::Impl::engine_weights(
    std::span<const LstmLayerWeights<Real>> w, const char* where) const {
  if (static_cast<int64_t>(w.size()) != L_)
    throw std::invalid_argument(std::string(where) + ": " + std::to_string(w.size()) +
                                " layers of weights, the stack has " + std::to_string(L_));
  std::vector<cpu::LayerWeights<Real>> out;
  for (size_t k = 0; k < w.size(); ++k) {
    if (!w[k].weight_ih || !w[k].weight_hh)
      throw std::invalid_argument(std::string(where) + ": layer " + std::to_string(k) +
                                  ": weight_ih and weight_hh must be given");
    if (!w[k].weight_hr != (P_ == 0))
      throw std::invalid_argument(std::string(where) + ": layer " + std::to_string(k) +
                                  (P_ > 0 ? ": weight_hr must be given (the stack has a projection)"
                                          : ": weight_hr given, the stack has no projection"));
    cpu::LayerWeights<Real> l{w[k].weight_ih, w[k].weight_hh,
                              w[k].bias_ih ? w[k].bias_ih : zeros_.data(),
                              w[k].bias_hh ? w[k].bias_hh : zeros_.data()};
    l.W_hr = w[k].weight_hr;
    out.push_back(l);
  }
  return out;
}

template <class Real>
Lstm<Real>::Lstm(int64_t X, int64_t H, int64_t L, int64_t proj)
    : impl_((stack_config(X, H, L, proj), std::make_unique<Impl>(X, H, L, proj))) {}
template <class Real>
Lstm<Real>::~Lstm() = default;
template <class Real>
Lstm<Real>::Lstm(Lstm&&) noexcept = default;
template <class Real>
Lstm<Real>& Lstm<Real>::operator=(Lstm&&) noexcept = default;

template <class Real>
void Lstm<Real>::set_team(int shares, int running) {
  impl_->stack_.set_team(shares, running);
  impl_->shares_ = shares, impl_->running_ = running;
  for (auto& seg : impl_->segs_) seg.stack->set_team(shares, running);
}
template <class Real>
void Lstm<Real>::set_precision(Precision p) {
  impl_->stack_.set_precision(p);  // refuses what cannot run it
  impl_->precision_ = p;
  for (auto& seg : impl_->segs_) seg.stack->set_precision(p);
}

template <class Real>
void Lstm<Real>::set_threads(int n) {
  set_team(n, n);
}
template <class Real>
void Lstm<Real>::set_dropout(double p, uint64_t seed) {
  if (!(p >= 0 && p < 1))
    throw std::invalid_argument("Lstm::set_dropout: p must be in [0, 1), got " + std::to_string(p));
  Impl& m = *impl_;
  m.drop_p_ = p, m.drop_seed_ = seed;
  m.stack_.set_dropout(p, seed);
  for (size_t i = 0; i < m.segs_.size(); ++i) m.segs_[i].stack->set_dropout(p, m.segment_seed(i));
}
template <class Real>
int64_t Lstm<Real>::rows() const {
  return impl_->N_;
}
template <class Real>
int64_t Lstm<Real>::input_size() const {
  return impl_->X_;
}
template <class Real>
int64_t Lstm<Real>::hidden_size() const {
  return impl_->H_;
}
template <class Real>
int64_t Lstm<Real>::num_layers() const {
  return impl_->L_;
}
template <class Real>
int64_t Lstm<Real>::proj_size() const {
  return impl_->P_;
}
template <class Real>
int64_t Lstm<Real>::output_size() const {
  return impl_->Y_;
}
template <class Real>
int64_t Lstm<Real>::steps() const {
  return impl_->T_;
}
template <class Real>
int64_t Lstm<Real>::batch() const {
  return impl_->B_;
}

template <class Real>
void Lstm<Real>::forward(const Real* x, std::span<const LstmLayerWeights<Real>> w, const Real* h0,
                         const Real* s0, int64_t T, int64_t B, Real* y, Real* h_n, Real* s_n) {
  Impl& m = *impl_;
  if (T < 1 || B < 1)
    throw std::invalid_argument("Lstm::forward: T and B must be >= 1, got T = " +
                                std::to_string(T) + ", B = " + std::to_string(B));
  if (!x) throw std::invalid_argument("Lstm::forward: x must be given");
  const auto ew = m.engine_weights(w, "Lstm::forward");
  m.stack_.forward(x, ew.data(), h0, s0, T, B);
  m.T_ = T, m.B_ = B, m.N_ = T * B, m.n_segs_ = 0;
  const int64_t H = m.H_, Y = m.Y_;
  if (y) std::copy_n(m.stack_.output(), T * B * Y, y);
  for (int64_t k = 0; k < m.L_; ++k) {
    if (h_n) std::copy_n(m.stack_.h_last(k), B * Y, h_n + k * B * Y);
    if (s_n) std::copy_n(m.stack_.s_last(k), B * H, s_n + k * B * H);
  }
}

template <class Real>
void Lstm<Real>::backward(const Real* dy, const Real* dh_n, const Real* ds_n, const Real* x,
                          std::span<const LstmLayerWeights<Real>> w,
                          std::span<const LstmLayerGrads<Real>> g, Real* dx, Real* dh0, Real* ds0) {
  Impl& m = *impl_;
  if (m.T_ == 0) throw std::logic_error("Lstm::backward: no forward to differentiate");
  const auto ew = m.engine_weights(w, "Lstm::backward");
  if (static_cast<int64_t>(g.size()) != m.L_)
    throw std::invalid_argument("Lstm::backward: " + std::to_string(g.size()) +
                                " layers of gradients, the stack has " + std::to_string(m.L_));
  std::vector<cpu::LayerGrads<Real>> eg;
  Real* const scratch = m.scratch_.data();
  for (const LstmLayerGrads<Real>& l : g) {
    if (!l.weight_ih || !l.weight_hh)
      throw std::invalid_argument(
          "Lstm::backward: weight_ih and weight_hh gradients must be given");
    if (!l.weight_hr != (m.P_ == 0))
      throw std::invalid_argument(m.P_ > 0 ? "Lstm::backward: weight_hr's gradient must be given"
                                           : "Lstm::backward: a weight_hr gradient given, the "
                                             "stack has no projection");
    cpu::LayerGrads<Real> e{l.weight_ih, l.weight_hh, l.bias_ih ? l.bias_ih : scratch,
                            l.bias_hh ? l.bias_hh : scratch + 4 * m.H_};
    e.dW_hr = l.weight_hr;
    eg.push_back(e);
  }
  // The stack reads dL/dy [T,B,H] for every step; null is zeros (only the final state's
  // gradients flow back).
  if (m.n_segs_ > 0)
    return m.packed_backward(dy, dh_n, ds_n, x, ew.data(), eg.data(), dx, dh0, ds0);
  std::vector<Real> zero_dy;
  if (!dy) zero_dy.assign(static_cast<size_t>(m.T_ * m.B_ * m.Y_), Real(0)), dy = zero_dy.data();
  m.stack_.backward(dx, eg.data(), dy, x, ew.data(), dh0, ds0, dh_n, ds_n);
}

namespace {

// Rows [0, b) of every layer of a state [L,B,H] into a [L,b,H] buffer, and back.
template <class Real>
void take_rows(Real* out, const Real* state, int64_t L, int64_t B, int64_t b, int64_t H) {
  for (int64_t k = 0; k < L; ++k) std::copy_n(state + k * B * H, b * H, out + k * b * H);
}
template <class Real>
void put_rows(Real* state, const Real* in, int64_t L, int64_t B, int64_t b, int64_t H) {
  for (int64_t k = 0; k < L; ++k) std::copy_n(in + k * b * H, b * H, state + k * B * H);
}

}  // namespace

template <class Real>
void Lstm<Real>::forward_packed(const Real* x, std::span<const LstmLayerWeights<Real>> w,
                                const Real* h0, const Real* s0,
                                std::span<const int64_t> batch_sizes, Real* y, Real* h_n,
                                Real* s_n) {
  Impl& m = *impl_;
  if (batch_sizes.empty() || batch_sizes.back() < 1)
    throw std::invalid_argument("Lstm::forward_packed: batch_sizes must be non-empty and >= 1");
  for (size_t t = 1; t < batch_sizes.size(); ++t)
    if (batch_sizes[t] > batch_sizes[t - 1])
      throw std::invalid_argument("Lstm::forward_packed: batch_sizes must be non-increasing, got " +
                                  std::to_string(batch_sizes[t]) + " after " +
                                  std::to_string(batch_sizes[t - 1]) + " at step " +
                                  std::to_string(t));
  if (!x) throw std::invalid_argument("Lstm::forward_packed: x must be given");
  const auto ew = m.engine_weights(w, "Lstm::forward_packed");
  const int64_t T = static_cast<int64_t>(batch_sizes.size()), B = batch_sizes[0], H = m.H_,
                Y = m.Y_, L = m.L_, hstate = L * B * Y, sstate = L * B * H;
  // The runs of equal batch size: one stack each, made once and kept.
  m.n_segs_ = 0;
  int64_t off = 0;
  for (int64_t t0 = 0, t = 1; t <= T; ++t) {
    if (t < T && batch_sizes[t] == batch_sizes[t0]) continue;
    if (m.segs_.size() <= m.n_segs_) {
      m.segs_.push_back(
          {0, 0, 0, std::make_unique<cpu::LstmStack<Real>>(m.X_, Impl::widths(H, L), m.P_)});
      m.segs_.back().stack->set_team(m.shares_, m.running_);
      m.segs_.back().stack->set_precision(m.precision_);
    }
    m.segs_[m.n_segs_].stack->set_dropout(m.drop_p_, m.segment_seed(m.n_segs_));
    auto& seg = m.segs_[m.n_segs_++];
    seg.off = off, seg.n = t - t0, seg.b = batch_sizes[t0];
    off += seg.n * seg.b, t0 = t;
  }
  m.T_ = T, m.B_ = B, m.N_ = off;
  m.carry_h_.assign(static_cast<size_t>(hstate), Real(0));  // the state of every sequence
  m.carry_s_.assign(static_cast<size_t>(sstate), Real(0));
  if (h0) std::copy_n(h0, hstate, m.carry_h_.data());
  if (s0) std::copy_n(s0, sstate, m.carry_s_.data());
  m.part_a_.resize(static_cast<size_t>(hstate)), m.part_b_.resize(static_cast<size_t>(sstate));
  for (size_t i = 0; i < m.n_segs_; ++i) {
    const auto& seg = m.segs_[i];
    // The rows still going start from their state so far; rows [b, B) ended: theirs is final.
    take_rows(m.part_a_.data(), m.carry_h_.data(), L, B, seg.b, Y);
    take_rows(m.part_b_.data(), m.carry_s_.data(), L, B, seg.b, H);
    seg.stack->forward(x + seg.off * m.X_, ew.data(), m.part_a_.data(), m.part_b_.data(), seg.n,
                       seg.b);
    if (y) std::copy_n(seg.stack->output(), seg.n * seg.b * Y, y + seg.off * Y);
    for (int64_t k = 0; k < L; ++k) {
      std::copy_n(seg.stack->h_last(k), seg.b * Y, m.carry_h_.data() + k * B * Y);
      std::copy_n(seg.stack->s_last(k), seg.b * H, m.carry_s_.data() + k * B * H);
    }
  }
  if (h_n) std::copy_n(m.carry_h_.data(), hstate, h_n);
  if (s_n) std::copy_n(m.carry_s_.data(), sstate, s_n);
}

// Backward of forward_packed, the runs from the last: each run's dL/dh_T, dL/ds_T are the
// gradients carried back from the run after it (its rows that go on) or from outside (dh_n,
// ds_n: rows that end with it); its dL/dh0, dL/ds0 are carried to the run before.
template <class Real>
void Lstm<Real>::Impl::packed_backward(const Real* dy, const Real* dh_n, const Real* ds_n,
                                       const Real* x, const cpu::LayerWeights<Real>* w,
                                       const cpu::LayerGrads<Real>* g, Real* dx, Real* dh0,
                                       Real* ds0) {
  const int64_t B = B_, H = H_, Y = Y_, L = L_, hstate = L * B * Y, sstate = L * B * H;
  carry_h_.assign(static_cast<size_t>(hstate), Real(0));
  carry_s_.assign(static_cast<size_t>(sstate), Real(0));
  if (dh_n) std::copy_n(dh_n, hstate, carry_h_.data());
  if (ds_n) std::copy_n(ds_n, sstate, carry_s_.data());
  for (auto* v : {&part_a_, &part_c_}) v->resize(static_cast<size_t>(hstate));
  for (auto* v : {&part_b_, &part_d_}) v->resize(static_cast<size_t>(sstate));
  if (!dy) zero_dy_.assign(static_cast<size_t>(N_ * Y), Real(0)), dy = zero_dy_.data();
  for (size_t i = n_segs_; i-- > 0;) {
    const Segment& seg = segs_[i];
    take_rows(part_a_.data(), carry_h_.data(), L, B, seg.b, Y);
    take_rows(part_b_.data(), carry_s_.data(), L, B, seg.b, H);
    seg.stack->backward(dx ? dx + seg.off * X_ : nullptr, g, dy + seg.off * Y, x + seg.off * X_, w,
                        part_c_.data(), part_d_.data(), part_a_.data(), part_b_.data());
    put_rows(carry_h_.data(), part_c_.data(), L, B, seg.b, Y);
    put_rows(carry_s_.data(), part_d_.data(), L, B, seg.b, H);
  }
  if (dh0) std::copy_n(carry_h_.data(), hstate, dh0);
  if (ds0) std::copy_n(carry_s_.data(), sstate, ds0);
}

template class Lstm<float>;
template class Lstm<double>;
template std::vector<LstmLayerWeights<float>> lstm_layer_weights(std::span<const float>, int64_t,
                                                                 int64_t, int64_t, int64_t);
template std::vector<LstmLayerWeights<double>> lstm_layer_weights(std::span<const double>, int64_t,
                                                                  int64_t, int64_t, int64_t);
template std::vector<LstmLayerGrads<float>> lstm_layer_grads(std::span<float>, int64_t, int64_t,
                                                             int64_t, int64_t);
template std::vector<LstmLayerGrads<double>> lstm_layer_grads(std::span<double>, int64_t, int64_t,
                                                              int64_t, int64_t);

}  // namespace lstmgrad
