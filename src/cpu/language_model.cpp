#include <algorithm>
#include <cstring>

#include "cpu/blas.hpp"
#include "cpu/lstm_layer.hpp"
#include "lstmgrad/loss.hpp"
#include "lstmgrad/lstm.hpp"

namespace lstmgrad {

using cpu::gemm;
using cpu::Tr;

namespace {

// Index of layer k's first tensor (weight_ih) in parameter_layout order.
size_t layer_slot(const ModelConfig& cfg, int64_t k) {
  return (cfg.input == InputKind::embedding ? 1 : 0) + 4 * static_cast<size_t>(k);
}

template <class Real>
Real loss_scale(Reduction red, int64_t T, int64_t B) {
  switch (red) {
    case Reduction::mean:
      return Real(1) / static_cast<Real>(T * B);
    case Reduction::sum:
      return Real(1);
    case Reduction::batch_mean:
      return Real(1) / static_cast<Real>(B);
  }
  return Real(1);
}

// The initial state of layer k: rows of h0/s0 [L,B,H], or zeros when not given.
template <class Real>
void load_state(Real* dst, const std::vector<Real>& src, int64_t k, int64_t B, int64_t H) {
  if (src.empty()) {
    std::fill(dst, dst + B * H, Real(0));
  } else {
    std::copy_n(src.data() + k * B * H, B * H, dst);
  }
}

}  // namespace

template <class Real>
LanguageModel<Real>::LanguageModel(const ModelConfig& cfg)
    : cfg_(cfg), layout_(parameter_layout(cfg)) {
  validate_config(cfg_);
}

template <class Real>
void LanguageModel<Real>::reserve(int64_t T, int64_t B) {
  if (T <= capT_ && B <= capB_) return;
  capT_ = std::max(T, capT_);
  capB_ = std::max(B, capB_);
  const int64_t N = capT_ * capB_, H = cfg_.H, G = 4 * H, X = cfg_.X, L = cfg_.L;
  const int64_t S = (capT_ + 1) * capB_ * H;  // a state sequence h0..h_T
  const int64_t W = std::max(X, H);
  const bool emb = cfg_.input == InputKind::embedding;
  const size_t total = static_cast<size_t>((emb ? N * X : 0) + L * (N * G + 2 * S) + N * cfg_.V +
                                           N * G + 2 * N * W + 2 * capB_ * H);
  arena_.assign(total, Real(0));
  Real* p = arena_.data();
  auto carve = [&p](int64_t n) {
    Real* q = p;
    p += n;
    return q;
  };
  buf_.x0 = emb ? carve(N * X) : nullptr;
  buf_.gates.resize(L), buf_.hseq.resize(L), buf_.sseq.resize(L);
  for (int64_t k = 0; k < L; ++k) {
    buf_.gates[k] = carve(N * G);
    buf_.hseq[k] = carve(S);
    buf_.sseq[k] = carve(S);
  }
  buf_.probs = carve(N * cfg_.V);
  buf_.dz = carve(N * G);
  buf_.dh_a = carve(N * W);
  buf_.dh_b = carve(N * W);
  buf_.dh_rec = carve(capB_ * H);
  buf_.ds = carve(capB_ * H);
}

template <class Real>
std::span<const Real> LanguageModel<Real>::probs() const {
  return {buf_.probs, static_cast<size_t>(T_ * B_ * cfg_.V)};
}

template <class Real>
double LanguageModel<Real>::forward(std::span<const Real> params, const Batch<Real>& batch,
                                    Reduction red) {
  const int64_t T = batch.T, B = batch.B, N = T * B, H = cfg_.H, X = cfg_.X, V = cfg_.V;
  reserve(T, B);
  T_ = T, B_ = B, red_ = red;
  const Real* P = params.data();
  const Real* x = batch.dense.data();
  if (cfg_.input == InputKind::embedding) {  // x_t = encoder.weight[token]
    const Real* E = P + layout_[0].offset;
    for (int64_t r = 0; r < N; ++r) std::copy_n(E + batch.tokens[r] * X, X, buf_.x0 + r * X);
    x = buf_.x0;
  }
  h_n_.resize(static_cast<size_t>(cfg_.L * B * H));
  s_n_.resize(h_n_.size());
  for (int64_t k = 0; k < cfg_.L; ++k) {
    const size_t slot = layer_slot(cfg_, k);
    const cpu::LayerWeights<Real> w{P + layout_[slot].offset, P + layout_[slot + 1].offset,
                                    P + layout_[slot + 2].offset, P + layout_[slot + 3].offset};
    const cpu::LayerSaved<Real> saved{buf_.gates[k], buf_.hseq[k], buf_.sseq[k]};
    load_state(saved.hseq, batch.h0, k, B, H);
    load_state(saved.sseq, batch.s0, k, B, H);
    cpu::layer_forward(saved, x, w, T, B, k == 0 ? X : H, H);
    std::copy_n(saved.hseq + T * B * H, B * H, h_n_.data() + k * B * H);
    std::copy_n(saved.sseq + T * B * H, B * H, s_n_.data() + k * B * H);
    x = saved.hseq + B * H;  // h_1 .. h_T [T,B,H] feed the next layer
  }
  Real* logits = buf_.probs;
  if (cfg_.readout == Readout::linear) {  // logits = h W^T + c
    const size_t d = layout_.size() - 2;
    const Real* c = P + layout_[d + 1].offset;
    for (int64_t r = 0; r < N; ++r) std::copy_n(c, V, logits + r * V);
    gemm(Tr::N, Tr::T, N, V, H, Real(1), x, H, P + layout_[d].offset, H, Real(1), logits, V);
  } else {  // logits = h
    std::copy_n(x, N * V, logits);
  }
  const int64_t* y_class = batch.target.empty() ? nullptr : batch.target.data();
  const Real* y_probs = batch.target_probs.empty() ? nullptr : batch.target_probs.data();
  const double sum = softmax_xent_forward(logits, logits, y_probs, y_class, N, V);
  return sum * static_cast<double>(loss_scale<Real>(red, T, B));
}

template <class Real>
void LanguageModel<Real>::backward(std::span<Real> grad, std::span<const Real> params,
                                   const Batch<Real>& batch, Real* dinput, Real* dh0, Real* ds0) {
  const int64_t T = T_, B = B_, N = T * B, H = cfg_.H, X = cfg_.X, V = cfg_.V, L = cfg_.L;
  const Real* P = params.data();
  Real* D = grad.data();
  const int64_t* y_class = batch.target.empty() ? nullptr : batch.target.data();
  const Real* y_probs = batch.target_probs.empty() ? nullptr : batch.target_probs.data();
  Real* dlogits = buf_.probs;  // dL/dlogits = scale * (p - y), in place over p
  softmax_xent_backward(dlogits, buf_.probs, y_probs, y_class, loss_scale<Real>(red_, T, B), N, V);
  const Real* top = buf_.hseq[L - 1] + B * H;  // h_1 .. h_T of the top layer
  const Real* dh_out = dlogits;                // identity readout: dL/dh = dL/dlogits
  if (cfg_.readout == Readout::linear) {
    const size_t d = layout_.size() - 2;
    gemm(Tr::T, Tr::N, V, H, N, Real(1), dlogits, V, top, H, Real(1), D + layout_[d].offset, H);
    Real* dc = D + layout_[d + 1].offset;
    for (int64_t r = 0; r < N; ++r)
      for (int64_t v = 0; v < V; ++v) dc[v] += dlogits[r * V + v];
    gemm(Tr::N, Tr::N, N, H, V, Real(1), dlogits, V, P + layout_[d].offset, H, Real(0), buf_.dh_a,
         H);  // dh = dlogits W
    dh_out = buf_.dh_a;
  }
  Real* dx_buf = dh_out == buf_.dh_a ? buf_.dh_b : buf_.dh_a;
  const bool emb = cfg_.input == InputKind::embedding;
  for (int64_t k = L - 1; k >= 0; --k) {
    const size_t slot = layer_slot(cfg_, k);
    const cpu::LayerWeights<Real> w{P + layout_[slot].offset, P + layout_[slot + 1].offset,
                                    P + layout_[slot + 2].offset, P + layout_[slot + 3].offset};
    const cpu::LayerGrads<Real> g{D + layout_[slot].offset, D + layout_[slot + 1].offset,
                                  D + layout_[slot + 2].offset, D + layout_[slot + 3].offset};
    const cpu::LayerSaved<Real> saved{buf_.gates[k], buf_.hseq[k], buf_.sseq[k]};
    const Real* x = k > 0 ? buf_.hseq[k - 1] + B * H : emb ? buf_.x0 : batch.dense.data();
    Real* dx = k > 0 || emb ? dx_buf : dinput;
    std::fill_n(buf_.dh_rec, B * H, Real(0));  // nothing flows back from h_T, s_T
    std::fill_n(buf_.ds, B * H, Real(0));
    cpu::layer_backward(dx, g, buf_.dz, buf_.dh_rec, buf_.ds, dh_out, saved, x, w, T, B,
                        k == 0 ? X : H, H);
    if (dh0) std::copy_n(buf_.dh_rec, B * H, dh0 + k * B * H);
    if (ds0) std::copy_n(buf_.ds, B * H, ds0 + k * B * H);
    dh_out = dx;
    dx_buf = dx == buf_.dh_a ? buf_.dh_b : buf_.dh_a;
  }
  if (emb) {  // x_t = encoder.weight[token]: scatter-add the rows of dx
    Real* dE = D + layout_[0].offset;
    for (int64_t r = 0; r < N; ++r) {
      Real* row = dE + batch.tokens[r] * X;
      for (int64_t j = 0; j < X; ++j) row[j] += dh_out[r * X + j];
    }
  }
}

template class LanguageModel<float>;
template class LanguageModel<double>;

}  // namespace lstmgrad
