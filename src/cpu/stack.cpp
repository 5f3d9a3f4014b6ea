// The public LSTM stack (lstmgrad/stack.hpp) over the engine's cpu::LstmStack: argument checks,
// nn.LSTM's bias = False (zero biases in, bias gradients into scratch), and the copies of the
// outputs out of the stack's arena.
#include "lstmgrad/stack.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "cpu/lstm_stack.hpp"

namespace lstmgrad {

namespace {

ModelConfig stack_config(int64_t X, int64_t H, int64_t L) {
  ModelConfig cfg;  // the stack alone is the model with dense input and the identity readout
  cfg.input = InputKind::dense, cfg.readout = Readout::identity;
  cfg.X = X, cfg.H = H, cfg.V = H, cfg.L = L;
  return cfg;
}

}  // namespace

std::vector<ParamInfo> lstm_parameter_layout(int64_t X, int64_t H, int64_t L, bool bias) {
  std::vector<ParamInfo> out;
  size_t offset = 0;
  for (ParamInfo p : parameter_layout(stack_config(X, H, L))) {
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
                                                       int64_t H, int64_t L) {
  const ModelConfig cfg = stack_config(X, H, L);
  if (flat.size() != parameter_count(cfg))
    throw std::invalid_argument("lstm_layer_weights: " + std::to_string(flat.size()) +
                                " values, the layout has " + std::to_string(parameter_count(cfg)));
  std::vector<LstmLayerWeights<Real>> w;
  for (const ParameterOffsets::Layer& l : parameter_offsets(cfg).layers)
    w.push_back({flat.data() + l.weight_ih, flat.data() + l.weight_hh, flat.data() + l.bias_ih,
                 flat.data() + l.bias_hh});
  return w;
}

template <class Real>
std::vector<LstmLayerGrads<Real>> lstm_layer_grads(std::span<Real> flat, int64_t X, int64_t H,
                                                   int64_t L) {
  const ModelConfig cfg = stack_config(X, H, L);
  if (flat.size() != parameter_count(cfg))
    throw std::invalid_argument("lstm_layer_grads: " + std::to_string(flat.size()) +
                                " values, the layout has " + std::to_string(parameter_count(cfg)));
  std::vector<LstmLayerGrads<Real>> g;
  for (const ParameterOffsets::Layer& l : parameter_offsets(cfg).layers)
    g.push_back({flat.data() + l.weight_ih, flat.data() + l.weight_hh, flat.data() + l.bias_ih,
                 flat.data() + l.bias_hh});
  return g;
}

template <class Real>
struct Lstm<Real>::Impl {
  Impl(int64_t X, int64_t H, int64_t L) : X_(X), H_(H), L_(L), stack_(X, H, L) {
    zeros_.assign(static_cast<size_t>(4 * H), Real(0));
    scratch_.assign(static_cast<size_t>(8 * H), Real(0));
  }
  std::vector<cpu::LayerWeights<Real>> engine_weights(std::span<const LstmLayerWeights<Real>> w,
                                                      const char* where) const;

  int64_t X_, H_, L_;
  int64_t T_ = 0, B_ = 0;  // shape of the last forward
  cpu::LstmStack<Real> stack_;
  std::vector<Real> zeros_;    // [G] the bias of a layer without one
  std::vector<Real> scratch_;  // [2G] where the bias gradients of a layer without them go
};

// The engine's per-layer view; null biases read zeros. Checks the count and the weights.
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
    out.push_back({w[k].weight_ih, w[k].weight_hh, w[k].bias_ih ? w[k].bias_ih : zeros_.data(),
                   w[k].bias_hh ? w[k].bias_hh : zeros_.data()});
  }
  return out;
}

template <class Real>
Lstm<Real>::Lstm(int64_t X, int64_t H, int64_t L)
    : impl_((validate_config(stack_config(X, H, L)), std::make_unique<Impl>(X, H, L))) {}
template <class Real>
Lstm<Real>::~Lstm() = default;
template <class Real>
Lstm<Real>::Lstm(Lstm&&) noexcept = default;
template <class Real>
Lstm<Real>& Lstm<Real>::operator=(Lstm&&) noexcept = default;

template <class Real>
void Lstm<Real>::set_team(int shares, int running) {
  impl_->stack_.set_team(shares, running);
}
template <class Real>
void Lstm<Real>::set_threads(int n) {
  impl_->stack_.set_threads(n);
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
  m.T_ = T, m.B_ = B;
  const int64_t H = m.H_;
  if (y) std::copy_n(m.stack_.output(), T * B * H, y);
  for (int64_t k = 0; k < m.L_; ++k) {
    if (h_n) std::copy_n(m.stack_.h_last(k), B * H, h_n + k * B * H);
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
    eg.push_back({l.weight_ih, l.weight_hh, l.bias_ih ? l.bias_ih : scratch,
                  l.bias_hh ? l.bias_hh : scratch + 4 * m.H_});
  }
  // The stack reads dL/dy [T,B,H] for every step; null is zeros (only the final state's
  // gradients flow back).
  std::vector<Real> zero_dy;
  if (!dy) zero_dy.assign(static_cast<size_t>(m.T_ * m.B_ * m.H_), Real(0)), dy = zero_dy.data();
  m.stack_.backward(dx, eg.data(), dy, x, ew.data(), dh0, ds0, dh_n, ds_n);
}

template class Lstm<float>;
template class Lstm<double>;
template std::vector<LstmLayerWeights<float>> lstm_layer_weights(std::span<const float>, int64_t,
                                                                 int64_t, int64_t);
template std::vector<LstmLayerWeights<double>> lstm_layer_weights(std::span<const double>, int64_t,
                                                                  int64_t, int64_t);
template std::vector<LstmLayerGrads<float>> lstm_layer_grads(std::span<float>, int64_t, int64_t,
                                                             int64_t);
template std::vector<LstmLayerGrads<double>> lstm_layer_grads(std::span<double>, int64_t, int64_t,
                                                              int64_t);

}  // namespace lstmgrad
