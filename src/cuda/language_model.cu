// cuda::LanguageModel: embedding or dense input -> the stack (cuda/stack.hpp) -> identity or
// linear readout -> softmax cross-entropy, with parameters, gradients, optimizer moments and the
// carried state on the device. Same dropout sites and masks as the CPU model (lstm.hpp).
#include <algorithm>
#include <cmath>
#include <numeric>
#include <optional>

#include "cpu/dropout.hpp"
#include "cuda/device.hpp"
#include "cuda/kernels.cuh"
#include "cuda/stack.hpp"
#include "lstmgrad/cuda.hpp"
#include "lstmgrad/error.hpp"

namespace lstmgrad::cuda {

namespace {

// Why no GPU can be used, or "" when one can.
std::string unavailable_reason() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear it
    return std::string("no usable CUDA GPU (") + cudaGetErrorString(e) + ")";
  }
  if (n == 0) return "no CUDA GPU is present";
  return cublas_error();
}

}  // namespace

const DeviceInfo& device_info() {
  static const DeviceInfo info = [] {
    require();
    DeviceInfo d;
    LSTMGRAD_CUDA(cudaGetDevice(&d.id));
    cudaDeviceProp p{};
    LSTMGRAD_CUDA(cudaGetDeviceProperties(&p, d.id));
    d.sms = p.multiProcessorCount;
    d.cooperative = p.cooperativeLaunch != 0;
    d.smem_optin = p.sharedMemPerBlockOptin;
    d.name = p.name;
    return d;
  }();
  return info;
}

bool available() {
  return unavailable_reason().empty();
}

std::string describe() {
  const std::string why = unavailable_reason();
  if (!why.empty()) return why;
  int id = 0;
  LSTMGRAD_CUDA(cudaGetDevice(&id));
  cudaDeviceProp p{};
  LSTMGRAD_CUDA(cudaGetDeviceProperties(&p, id));
  return std::string(p.name) + ", " + std::to_string(p.multiProcessorCount) + " SMs, compute " +
         std::to_string(p.major) + "." + std::to_string(p.minor) + ", " +
         std::to_string(p.totalGlobalMem >> 30) + " GiB";
}

void require(const std::string& flag) {
  const std::string why = unavailable_reason();
  if (!why.empty()) throw InputError(flag + ": " + why);
}

namespace {

float loss_scale(Reduction red, int64_t T, int64_t B) {
  switch (red) {
    case Reduction::mean:
      return 1.0f / static_cast<float>(T * B);
    case Reduction::sum:
      return 1.0f;
    case Reduction::batch_mean:
      return 1.0f / static_cast<float>(B);
  }
  return 1.0f;
}

template <class T>
void upload(DeviceBuffer<T>& d, const T* host, size_t n, cudaStream_t s) {
  d.grow(std::max<size_t>(n, 1));
  if (n) LSTMGRAD_CUDA(cudaMemcpyAsync(d.get(), host, n * sizeof(T), cudaMemcpyHostToDevice, s));
}

}  // namespace

struct LanguageModel::Impl {
  explicit Impl(const ModelConfig& c) : cfg(c), at(parameter_offsets(c)) {
    validate_config(cfg);
    device_info();
    LSTMGRAD_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    LSTMGRAD_CUBLAS(cublas().create(&blas));
    LSTMGRAD_CUBLAS(cublas().set_stream(blas, stream));
    // float32 arithmetic in every GEMM: the default math mode never uses TF32 for sgemm.
    LSTMGRAD_CUBLAS(cublas().set_math_mode(blas, CUBLAS_DEFAULT_MATH));
    stack.emplace(cfg.X, cfg.H, cfg.L, stream, blas);
    n_params = parameter_count(cfg);
    params.grow(n_params), grad.grow(n_params);
    LSTMGRAD_CUDA(cudaMemsetAsync(params.get(), 0, n_params * sizeof(float), stream));
    LSTMGRAD_CUDA(cudaMemsetAsync(grad.get(), 0, n_params * sizeof(float), stream));
    norm_partials.grow(kNormBlocks), norm2.grow(1), clip_scale.grow(1);
    embedding = at.encoder_weight.value_or(0);
    decoder_w = at.decoder_weight.value_or(0), decoder_b = at.decoder_bias.value_or(0);
  }
  ~Impl() {
    if (blas) cublas().destroy(blas);
    if (stream) cudaStreamDestroy(stream);
  }

  // Every layer's tensors in the flat parameters (View = LayerParams) or gradients
  // (View = LayerGrads).
  template <class View, class Ptr>
  std::vector<View> views(Ptr base) const {
    return layer_views<View>(at, base);
  }

  void sync() const { LSTMGRAD_CUDA(cudaStreamSynchronize(stream)); }

  double forward(const Batch<float>& b, Reduction r);
  void backward(float* dinput, float* dh0, float* ds0);
  void optimizer_step(double lr, double clip, bool adam, int64_t step);

  ModelConfig cfg;
  ParameterOffsets at;  // every tensor by name
  // Where the optional tensors start (0 where the model has none: never read then).
  size_t embedding = 0, decoder_w = 0, decoder_b = 0, n_params = 0;
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  std::optional<Stack> stack;
  DeviceBuffer<float> params, grad, adam_m, adam_v;
  DeviceBuffer<double> norm_partials, norm2;
  DeviceBuffer<float> clip_scale;
  // The last forward's batch and what it made.
  int64_t T = 0, B = 0;
  Reduction red = Reduction::mean;
  bool has_targets = false, soft = false, dense_input = false;
  DeviceBuffer<int64_t> tokens, target;
  DeviceBuffer<float> target_probs, dense, x0, dx0, logits, dh_top, row_loss, ones;
  DeviceBuffer<float> state_h, state_s, h0, s0, dh0_d, ds0_d;
  bool carry = false;
  int64_t carried_B = 0;
  double drop_p = 0;
  uint64_t drop_seed = 0;
  bool dropped = false;
  DeviceBuffer<float> drop_in, drop_top;  // mask [N,X] + dropped x [N,X]; mask [N,H] + dropped top
  mutable std::vector<float> h_n, s_n, probs, row_loss_host;
  mutable bool states_fresh = false;
  bool backward_done = false;  // backward turned the logits' memory into dL/dlogits
};

double LanguageModel::Impl::forward(const Batch<float>& b, Reduction r) {
  const int64_t N = b.T * b.B, H = cfg.H, X = cfg.X, V = cfg.V, L = cfg.L;
  T = b.T, B = b.B, red = r;
  has_targets = !b.target.empty() || !b.target_probs.empty();
  soft = !b.target_probs.empty();
  dense_input = cfg.input == InputKind::dense;
  states_fresh = false;
  backward_done = false;
  const float* x = nullptr;
  if (dense_input) {
    upload(dense, b.dense.data(), b.dense.size(), stream);
    x = dense.get();
  } else {
    upload(tokens, b.tokens.data(), b.tokens.size(), stream);
    x0.grow(static_cast<size_t>(N * X));
    gather_rows(x0.get(), params.get() + embedding, tokens.get(), N, X, stream);
    x = x0.get();
  }
  if (soft) {
    upload(target_probs, b.target_probs.data(), b.target_probs.size(), stream);
  } else if (!b.target.empty()) {
    upload(target, b.target.data(), b.target.size(), stream);
  }
  // The initial state: the batch's, else the carried one, else zeros.
  const float *h0p = nullptr, *s0p = nullptr;
  if (!b.h0.empty() || !b.s0.empty()) {
    if (!b.h0.empty()) upload(h0, b.h0.data(), b.h0.size(), stream), h0p = h0.get();
    if (!b.s0.empty()) upload(s0, b.s0.data(), b.s0.size(), stream), s0p = s0.get();
  } else if (carry && carried_B == b.B) {
    h0p = state_h.get(), s0p = state_s.get();
  }
  dropped = drop_p > 0;
  if (dropped) {  // site 0: the input of layer 0
    drop_in.grow(static_cast<size_t>(2 * N * X));
    dropout_mask(drop_in.get(), N * X, drop_p, cpu::dropout_base(drop_seed, 0), stream);
    multiply(drop_in.get() + N * X, x, drop_in.get(), N * X, stream);
    x = drop_in.get() + N * X;
  }
  stack->set_dropout(drop_p, drop_seed);
  const std::vector<LayerParams> w = views<LayerParams>(static_cast<const float*>(params.get()));
  stack->forward(x, w.data(), h0p, s0p, T, B);
  const float* top = stack->output();
  if (dropped) {  // site L: before the readout
    drop_top.grow(static_cast<size_t>(2 * N * H));
    dropout_mask(drop_top.get(), N * H, drop_p,
                 cpu::dropout_base(drop_seed, static_cast<uint64_t>(L)), stream);
    multiply(drop_top.get() + N * H, top, drop_top.get(), N * H, stream);
    top = drop_top.get() + N * H;
  }
  logits.grow(static_cast<size_t>(N * V));
  if (cfg.readout == Readout::linear) {
    broadcast_rows(logits.get(), params.get() + decoder_b, N, V, stream);
    gemm(blas, false, true, N, V, H, 1.0f, top, H, params.get() + decoder_w, H, 1.0f, logits.get(),
         V);
  } else {
    LSTMGRAD_CUDA(cudaMemcpyAsync(logits.get(), top, N * V * sizeof(float),
                                  cudaMemcpyDeviceToDevice, stream));
  }
  row_loss.grow(static_cast<size_t>(N));
  softmax_xent(logits.get(), soft || b.target.empty() ? nullptr : target.get(),
               soft ? target_probs.get() : nullptr, row_loss.get(), N, V, stream);
  row_loss_host.resize(static_cast<size_t>(N));
  LSTMGRAD_CUDA(cudaMemcpyAsync(row_loss_host.data(), row_loss.get(), N * sizeof(float),
                                cudaMemcpyDeviceToHost, stream));
  sync();
  double sum = 0;
  for (float l : row_loss_host) sum += l;  // in row order
  return has_targets ? sum * static_cast<double>(loss_scale(red, T, B)) : 0.0;
}

void LanguageModel::Impl::backward(float* dinput, float* dh0, float* ds0) {
  backward_done = true;
  const int64_t N = T * B, H = cfg.H, X = cfg.X, V = cfg.V, L = cfg.L, S = L * B * H;
  const float scale = loss_scale(red, T, B);
  const float* top = dropped ? drop_top.get() + N * H : stack->output();
  dh_top.grow(static_cast<size_t>(N * H));
  const int64_t* y = soft || !has_targets ? nullptr : target.get();
  const float* yp = soft ? target_probs.get() : nullptr;
  if (cfg.readout == Readout::linear) {
    // dlogits = p - y in place; the scale goes into the GEMMs.
    softmax_xent_grad(logits.get(), logits.get(), y, yp, 1.0f, N, V, stream);
    if (ones.size() < static_cast<size_t>(N)) {
      ones.grow(static_cast<size_t>(N));
      fill(ones.get(), 1.0f, N, stream);
    }
    gemm(blas, true, false, V, H, N, scale, logits.get(), V, top, H, 1.0f, grad.get() + decoder_w,
         H);
    column_sums(blas, N, V, scale, logits.get(), ones.get(), grad.get() + decoder_b);
    gemm(blas, false, false, N, H, V, scale, logits.get(), V, params.get() + decoder_w, H, 0.0f,
         dh_top.get(), H);
  } else {
    softmax_xent_grad(dh_top.get(), logits.get(), y, yp, scale, N, V, stream);
  }
  if (dropped) multiply(dh_top.get(), dh_top.get(), drop_top.get(), N * H, stream);
  const std::vector<LayerParams> w = views<LayerParams>(static_cast<const float*>(params.get()));
  const std::vector<LayerGrads> g = views<LayerGrads>(grad.get());
  const bool emb = cfg.input == InputKind::embedding;
  float* dx = nullptr;
  if (emb || dinput) dx0.grow(static_cast<size_t>(N * X)), dx = dx0.get();
  if (dh0 || ds0) dh0_d.grow(static_cast<size_t>(S)), ds0_d.grow(static_cast<size_t>(S));
  const float* x = dropped ? drop_in.get() + N * X : emb ? x0.get() : dense.get();
  stack->backward(dx, g.data(), dh_top.get(), x, w.data(), dh0 || ds0 ? dh0_d.get() : nullptr,
                  dh0 || ds0 ? ds0_d.get() : nullptr);
  if (dropped && dx) multiply(dx, dx, drop_in.get(), N * X, stream);
  if (emb) scatter_add_rows(grad.get() + embedding, dx, tokens.get(), N, X, stream);
  if (dinput && !emb)
    LSTMGRAD_CUDA(
        cudaMemcpyAsync(dinput, dx, N * X * sizeof(float), cudaMemcpyDeviceToHost, stream));
  if (dh0)
    LSTMGRAD_CUDA(
        cudaMemcpyAsync(dh0, dh0_d.get(), S * sizeof(float), cudaMemcpyDeviceToHost, stream));
  if (ds0)
    LSTMGRAD_CUDA(
        cudaMemcpyAsync(ds0, ds0_d.get(), S * sizeof(float), cudaMemcpyDeviceToHost, stream));
  if (dinput || dh0 || ds0) sync();
}

void LanguageModel::Impl::optimizer_step(double lr, double clip, bool adam, int64_t step) {
  const int64_t n = static_cast<int64_t>(n_params);
  grad_norm(grad.get(), n, norm_partials.get(), norm2.get(), clip_scale.get(), clip, stream);
  if (adam) {
    if (adam_m.size() < n_params) {
      adam_m.grow(n_params), adam_v.grow(n_params);
      LSTMGRAD_CUDA(cudaMemsetAsync(adam_m.get(), 0, n_params * sizeof(float), stream));
      LSTMGRAD_CUDA(cudaMemsetAsync(adam_v.get(), 0, n_params * sizeof(float), stream));
    }
    // torch.optim.Adam's defaults, as Optimizer<float>::step.
    const double b1 = 0.9, b2 = 0.999, td = static_cast<double>(step);
    adam_update(params.get(), grad.get(), adam_m.get(), adam_v.get(), n,
                static_cast<float>(lr / (1 - std::pow(b1, td))), static_cast<float>(b1),
                static_cast<float>(b2), static_cast<float>(std::sqrt(1 - std::pow(b2, td))), 1e-8f,
                clip_scale.get(), stream);
  } else {
    sgd_update(params.get(), grad.get(), n, static_cast<float>(lr), clip_scale.get(), stream);
  }
}

// ---------------------------------------------------------------------------------------------

LanguageModel::LanguageModel(const ModelConfig& cfg) {
  require();
  if (cfg.tie_weights)
    throw InputError(
        "--device cuda: the CUDA engine does not support --tie-weights yet (use --device cpu)");
  if (cfg.proj > 0)
    throw InputError(
        "--device cuda: the CUDA engine does not support --proj yet (use --device cpu)");
  if (!cfg.hidden.empty())
    throw InputError(

        "--device cuda: the CUDA engine does not support per-layer hidden sizes yet (use "
        "--device cpu)");
  if (cfg.layer_norm)
    throw InputError(
        "--device cuda: the CUDA engine does not support --layer-norm yet (use --device cpu)");
  if (cfg.zoneout())
    throw InputError(
        "--device cuda: the CUDA engine does not support zoneout yet (--zoneout-h, --zoneout-s; "
        "use --device cpu)");
  impl_ = std::make_unique<Impl>(cfg);
}
LanguageModel::~LanguageModel() = default;
LanguageModel::LanguageModel(LanguageModel&&) noexcept = default;
LanguageModel& LanguageModel::operator=(LanguageModel&&) noexcept = default;

const ModelConfig& LanguageModel::config() const {
  return impl_->cfg;
}
void LanguageModel::set_recurrence(Recurrence r) {
  impl_->stack->set_recurrence(r);
}
std::string LanguageModel::recurrence_used() const {
  return impl_->stack->persistent_used() ? "persistent" : "steps";
}

void LanguageModel::set_params(std::span<const float> p) {
  if (p.size() != impl_->n_params) throw std::invalid_argument("cuda::LanguageModel: params size");
  LSTMGRAD_CUDA(cudaMemcpyAsync(impl_->params.get(), p.data(), p.size() * sizeof(float),
                                cudaMemcpyHostToDevice, impl_->stream));
  impl_->sync();  // the caller may change its vector next
}
void LanguageModel::get_params(std::span<float> p) const {
  LSTMGRAD_CUDA(cudaMemcpyAsync(p.data(), impl_->params.get(), impl_->n_params * sizeof(float),
                                cudaMemcpyDeviceToHost, impl_->stream));
  impl_->sync();
}
void LanguageModel::get_grad(std::span<float> g) const {
  LSTMGRAD_CUDA(cudaMemcpyAsync(g.data(), impl_->grad.get(), impl_->n_params * sizeof(float),
                                cudaMemcpyDeviceToHost, impl_->stream));
  impl_->sync();
}
void LanguageModel::zero_grad() {
  LSTMGRAD_CUDA(
      cudaMemsetAsync(impl_->grad.get(), 0, impl_->n_params * sizeof(float), impl_->stream));
}
void LanguageModel::set_dropout(double p, uint64_t seed) {
  impl_->drop_p = p, impl_->drop_seed = seed;
}

double LanguageModel::forward(const Batch<float>& batch, Reduction red) {
  return impl_->forward(batch, red);
}
void LanguageModel::backward(float* dinput, float* dh0, float* ds0) {
  impl_->backward(dinput, dh0, ds0);
}

void LanguageModel::carry_state() {
  Impl& m = *impl_;
  const size_t S = static_cast<size_t>(m.cfg.L * m.B * m.cfg.H), s = S / m.cfg.L;
  m.state_h.grow(S), m.state_s.grow(S);
  for (int64_t k = 0; k < m.cfg.L; ++k) {
    LSTMGRAD_CUDA(cudaMemcpyAsync(m.state_h.get() + k * s, m.stack->h_last(k), s * sizeof(float),
                                  cudaMemcpyDeviceToDevice, m.stream));
    LSTMGRAD_CUDA(cudaMemcpyAsync(m.state_s.get() + k * s, m.stack->s_last(k), s * sizeof(float),
                                  cudaMemcpyDeviceToDevice, m.stream));
  }
  m.carry = true, m.carried_B = m.B;
}
void LanguageModel::reset_state() {
  impl_->carry = false;
}
void LanguageModel::set_carried_state(std::span<const float> h, std::span<const float> s,
                                      int64_t B) {
  Impl& m = *impl_;
  upload(m.state_h, h.data(), h.size(), m.stream);
  upload(m.state_s, s.data(), s.size(), m.stream);
  m.sync();
  m.carry = true, m.carried_B = B;
}

void LanguageModel::get_carried_state(std::span<float> h, std::span<float> s) const {
  const Impl& m = *impl_;
  if (!m.carry || m.state_h.size() < h.size()) {
    std::fill(h.begin(), h.end(), 0.0f), std::fill(s.begin(), s.end(), 0.0f);
    return;
  }
  LSTMGRAD_CUDA(cudaMemcpyAsync(h.data(), m.state_h.get(), h.size() * sizeof(float),
                                cudaMemcpyDeviceToHost, m.stream));
  LSTMGRAD_CUDA(cudaMemcpyAsync(s.data(), m.state_s.get(), s.size() * sizeof(float),
                                cudaMemcpyDeviceToHost, m.stream));
  m.sync();
}

double LanguageModel::forward(std::span<const float> params, const Batch<float>& batch,
                              Reduction red) {
  set_params(params);
  return forward(batch, red);
}

void LanguageModel::backward(std::span<float> grad, std::span<const float> params,
                             const Batch<float>& batch, float* dinput, float* dh0, float* ds0) {
  (void)params, (void)batch;  // those of the last forward, already on the device
  zero_grad();
  backward(dinput, dh0, ds0);
  std::vector<float> g(grad.size());
  get_grad(g);
  for (size_t k = 0; k < g.size(); ++k) grad[k] += g[k];
}

void LanguageModel::sgd_step(double lr, double clip) {
  impl_->optimizer_step(lr, clip, false, 0);
}
void LanguageModel::adam_step(double lr, double clip, int64_t step) {
  impl_->optimizer_step(lr, clip, true, step);
}
double LanguageModel::last_grad_norm() const {
  double norm2 = 0;
  LSTMGRAD_CUDA(cudaMemcpyAsync(&norm2, impl_->norm2.get(), sizeof(double), cudaMemcpyDeviceToHost,
                                impl_->stream));
  impl_->sync();
  return std::sqrt(norm2);
}
void LanguageModel::set_adam_moments(std::span<const float> m, std::span<const float> v) {
  Impl& i = *impl_;
  upload(i.adam_m, m.data(), m.size(), i.stream);
  upload(i.adam_v, v.data(), v.size(), i.stream);
  i.sync();
}
void LanguageModel::get_adam_moments(std::span<float> m, std::span<float> v) const {
  Impl& i = *impl_;
  if (i.adam_m.size() < i.n_params) {
    std::fill(m.begin(), m.end(), 0.0f), std::fill(v.begin(), v.end(), 0.0f);
    return;
  }
  LSTMGRAD_CUDA(cudaMemcpyAsync(m.data(), i.adam_m.get(), i.n_params * sizeof(float),
                                cudaMemcpyDeviceToHost, i.stream));
  LSTMGRAD_CUDA(cudaMemcpyAsync(v.data(), i.adam_v.get(), i.n_params * sizeof(float),
                                cudaMemcpyDeviceToHost, i.stream));
  i.sync();
}

std::span<const float> LanguageModel::h_n() const {
  Impl& m = *impl_;
  if (!m.states_fresh) {
    const size_t s = static_cast<size_t>(m.B * m.cfg.H);
    m.h_n.resize(s * m.cfg.L), m.s_n.resize(s * m.cfg.L);
    for (int64_t k = 0; k < m.cfg.L; ++k) {
      LSTMGRAD_CUDA(cudaMemcpyAsync(m.h_n.data() + k * s, m.stack->h_last(k), s * sizeof(float),
                                    cudaMemcpyDeviceToHost, m.stream));
      LSTMGRAD_CUDA(cudaMemcpyAsync(m.s_n.data() + k * s, m.stack->s_last(k), s * sizeof(float),
                                    cudaMemcpyDeviceToHost, m.stream));
    }
    m.sync();
    m.states_fresh = true;
  }
  return m.h_n;
}
std::span<const float> LanguageModel::s_n() const {
  h_n();
  return impl_->s_n;
}
std::span<const float> LanguageModel::probs() const {
  Impl& m = *impl_;
  if (m.backward_done)
    throw std::logic_error(
        "cuda::LanguageModel::probs(): p is gone after backward; take it before");
  const size_t n = static_cast<size_t>(m.T * m.B * m.cfg.V);
  m.probs.resize(n);
  LSTMGRAD_CUDA(cudaMemcpyAsync(m.probs.data(), m.logits.get(), n * sizeof(float),
                                cudaMemcpyDeviceToHost, m.stream));
  m.sync();
  return m.probs;
}
void LanguageModel::synchronize() const {
  impl_->sync();
}

}  // namespace lstmgrad::cuda
