#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <cassert>
#include <cstring>
#include <stdexcept>
#include <type_traits>

#include "cpu/arena.hpp"
#include "cpu/blas.hpp"
#include "cpu/dropout.hpp"
#include "cpu/lstm_stack.hpp"
#include "cpu/panel_gemm.hpp"
#include "cpu/vocab_readout.hpp"
#include "lstmgrad/error.hpp"
#include "lstmgrad/loss.hpp"
#include "lstmgrad/lstm.hpp"

namespace lstmgrad {

using cpu::gemm;
using cpu::Tr;

namespace {

// The bias gradient of the readout, dc = scale * column sums of (p - y) over the T*B rows, is
// summed while each row of p is still in cache after its softmax: one partial sum per block of
// kColsumRows rows (thread boundaries are multiples of 16, so every block belongs to one thread),
// then the blocks in order in backward. Same sums for any thread count; no pass over [T*B,V].
constexpr int64_t kColsumRows = 16;

int64_t colsum_blocks(int64_t N) {
  return (N + kColsumRows - 1) / kColsumRows;
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

// The fused float32 readout over a team of P threads (float64 never takes it).
template <class Real>
void fused_forward(cpu::VocabReadout& r, int P, const Real* h, const Real* W, const Real* c,
                   const int64_t* y, double* row_loss) {
  if constexpr (std::is_same_v<Real, float>) {
    cpu::run_team(
        P, [&] { r.forward(cpu::team_thread(), cpu::team_threads(), h, W, c, y, row_loss); });
  }
}

template <class Real>
void fused_backward(cpu::VocabReadout& r, int P, Real scale, const Real* W, const int64_t* y,
                    Real* dW, Real* dc, Real* dh) {
  if constexpr (std::is_same_v<Real, float>) {
    cpu::run_team(
        P, [&] { r.backward(cpu::team_thread(), cpu::team_threads(), scale, W, y, dW, dc, dh); });
  }
}

}  // namespace

// The model's state: the stack, the readout, and the buffers of the last forward.
template <class Real>
struct LanguageModel<Real>::Impl {
  explicit Impl(const ModelConfig& cfg)
      : cfg_(cfg),
        offsets_((validate_config(cfg), parameter_offsets(cfg))),
        n_params_(parameter_count(cfg)),
        stack_(std::make_unique<cpu::LstmStack<Real>>(cfg.X, widths(cfg), cfg.proj)) {
    stack_->set_zoneout(cfg.zoneout_h, cfg.zoneout_s);
    stack_->set_layer_norm(cfg.layer_norm);
  }

  static std::vector<int64_t> widths(const ModelConfig& cfg) {
    std::vector<int64_t> w;
    for (int64_t k = 0; k < cfg.L; ++k) w.push_back(cfg.width(k));
    return w;
  }
  // Layer k's weight_hh [4 H_k, out_width(k)], its size; where its block starts in the
  // weight-drop buffers wd_, wd_grad_.
  size_t hh_size(int64_t k) const {
    return static_cast<size_t>(4 * cfg_.width(k) * cfg_.out_width(k));
  }
  size_t hh_offset(int64_t k) const {
    size_t o = 0;
    for (int64_t j = 0; j < k; ++j) o += hh_size(j);
    return o;
  }

  void reserve(int64_t T, int64_t B);
  bool fuses_readout(const Batch<Real>& batch) const;
  const Real* readout_input();
  // keep = false: infer (LanguageModel::infer), nothing kept for backward.
  double forward(std::span<const Real> params, const Batch<Real>& batch, Reduction red,
                 bool keep = true);
  void backward(std::span<Real> grad, std::span<const Real> params, const Batch<Real>& batch,
                Real* dinput, Real* dh0, Real* ds0);
  std::span<const Real> probs() const;
  // The regularisers of a forward that keeps activations: its masks (drawn or explicit), checked.
  void prepare_regularization(int64_t B, const Real* P);
  // The layers' weights in `P`, weight_hh replaced by its dropped copy U' = U * M when weight drop
  // applies to the last forward.
  std::vector<cpu::LayerWeights<Real>> layer_weights(const Real* P) const;
  double regularizer_terms();                 // AR + TAR of the last forward
  void regularizer_grad(Real* dtop_dropped);  // AR's part, dL/d(dropped top)
  void tar_grad(Real* dtop);                  // TAR's part, dL/d(top before dropout)

  ModelConfig cfg_;
  ParameterOffsets offsets_;  // every tensor by name
  size_t n_params_ = 0;
  int64_t T_ = 0, B_ = 0;        // shape of the last forward
  int64_t capT_ = 0, capB_ = 0;  // shape the arena is sized for (T*B positions, B rows)
  Reduction red_ = Reduction::mean;
  int threads_ = 0, running_ = 0;                // set_team's shares and running threads
  std::unique_ptr<cpu::LstmStack<Real>> stack_;  // the layers' activations and thread team
  // The readout's shares are the threads asked for (or team_size_for its GEMM); the threads that
  // run them, pinned or chosen by these (cpu/team.hpp).
  int readout_shares(int64_t N) const;
  cpu::TeamTuner readout_forward_, readout_backward_;
  // float32, linear readout, class targets, AVX-512: the fused readout (vocab_fused_ says the last
  // forward used it; probs() then converts its logits into probs_ on demand).
  std::unique_ptr<cpu::VocabReadout> vocab_;
  bool vocab_fused_ = false;
  Precision precision_ = Precision::f32;  // set_precision's
  bool readout_sumsq_ = false;            // the last backward took the fused readout's grad_sumsq
  bool backward_done_ = false;  // the last forward's p is gone (dL/dlogits took its place)
  bool inferred_ = false;       // the last forward was infer: the stack kept nothing
  GradientListener* listener_ = nullptr;  // set_gradient_listener's, or none
  cpu::BackwardHooks hooks_;              // what the stack's backward runs for this model
  std::vector<Real> infer_x0_;            // [T,B,X] infer's embedded input (embedding only)
  // [T,B,V]: the logits, then p (what probs() returns), then in backward dL/dlogits; sized on use
  mutable std::vector<Real> probs_;
  // The BLAS readout (linear): [ceil(T*B/16),V] per 16-row block, the column sums of p - y
  // (sized on use, like probs_; the fused readout needs neither).
  std::vector<Real> colsum_;
  std::vector<Real> arena_;       // the buffers below, carved from one allocation
  std::vector<Real> h_n_, s_n_;   // the layers' [B,H_k] blocks
  std::vector<double> row_loss_;  // [T*B] the loss of each position (summed in order)
  double drop_p_ = 0;
  uint64_t drop_seed_ = 0;
  cpu::StreamShard shard_;
  bool dropped_ = false;  // whether the last forward used dropout (set_dropout's)
  // set_regularization / set_masks
  Regularization reg_;
  uint64_t reg_seed_ = 0;
  bool explicit_masks_ = false;
  bool training_ = false;              // set_regularization was called: zoneout draws masks
  bool reg_on_ = false;                // the last forward applied them
  bool wdropped_ = false;              // ... and weight drop
  double ce_ = 0;                      // the last forward's cross-entropy
  Masks<Real> masks_;                  // the masks of the last forward (reused storage)
  std::vector<Real> wd_;               // the layers' [4H_k,H_k]: U' = U * M, then
  std::vector<Real> wd_grad_;          // the same: dL/dU' in backward
  std::vector<const Real*> hid_ptrs_;  // [L-1] into masks_.hid
  std::vector<const Real*> rec_ptrs_;  // [L] into masks_.rec
  std::vector<const Real*> zone_h_ptrs_, zone_s_ptrs_;  // [L] into masks_.zone_h, zone_s
  // The masks the last forward applied at the input and before the readout, and their period
  // in rows (cpu::apply_mask_rows: T*B per position, B locked); null: none.
  const Real* in_mask_ = nullptr;
  const Real* out_mask_ = nullptr;
  int64_t in_period_ = 1, out_period_ = 1;
  // With dropout, one allocation grown on demand (never inside the time loop): the input mask
  // and the dropped input [T,B,X] each, then the top mask, the dropped top and dL/d(top) [T,B,H]
  // each. The views below name them.
  std::vector<Real> drop_;
  bool readout_dropped_ = false;  // the top mask of the current forward is made
  Real* input_mask() { return drop_.data(); }
  Real* dropped_input() { return input_mask() + T_ * B_ * cfg_.X; }
  Real* top_mask() { return dropped_input() + T_ * B_ * cfg_.X; }
  Real* dropped_top() { return top_mask() + T_ * B_ * cfg_.H; }
  Real* top_grad() { return dropped_top() + T_ * B_ * cfg_.H; }
  struct Buffers {
    Real* x0;   // [T,B,X] embedded input (embedding only)
    Real* dh;   // [T,B,H] dL/dh of the top layer (linear readout)
    Real* dx0;  // [T,B,X] dL/dx of the embedded input (embedding only)
  } buf_{};
};

template <class Real>
LanguageModel<Real>::LanguageModel(const ModelConfig& cfg) : impl_(std::make_unique<Impl>(cfg)) {}

template <class Real>
LanguageModel<Real>::~LanguageModel() = default;
template <class Real>
LanguageModel<Real>::LanguageModel(LanguageModel&&) noexcept = default;
template <class Real>
LanguageModel<Real>& LanguageModel<Real>::operator=(LanguageModel&&) noexcept = default;

template <class Real>
const ModelConfig& LanguageModel<Real>::config() const {
  return impl_->cfg_;
}

template <class Real>
void LanguageModel<Real>::set_team(int shares, int running) {
  impl_->threads_ = shares, impl_->running_ = running;
  impl_->stack_->set_team(shares, running);
}

template <class Real>
void LanguageModel<Real>::set_precision(Precision p) {
  impl_->stack_->set_precision(p);  // refuses what cannot run it
  impl_->precision_ = p;
}

template <class Real>
Precision LanguageModel<Real>::precision() const {
  return impl_->precision_;
}

template <class Real>
void LanguageModel<Real>::set_threads(int n) {
  set_team(n, n);
}

template <class Real>
void LanguageModel<Real>::set_dropout(double p, uint64_t seed) {
  impl_->drop_p_ = p, impl_->drop_seed_ = seed;
  impl_->stack_->set_dropout(p, seed);
}

template <class Real>
void LanguageModel<Real>::set_stream_shard(int64_t first, int64_t total) {
  impl_->shard_ = {first, total};
  impl_->stack_->set_stream_shard({first, total});
}

template <class Real>
void LanguageModel<Real>::set_regularization(const Regularization& r, uint64_t seed) {
  validate_regularization(r, impl_->cfg_);
  impl_->reg_ = r, impl_->reg_seed_ = seed, impl_->explicit_masks_ = false;
  impl_->training_ = true;
}

template <class Real>
void LanguageModel<Real>::set_masks(const Masks<Real>& m) {
  impl_->masks_ = m, impl_->explicit_masks_ = true;
}

template <class Real>
void LanguageModel<Real>::set_gradient_listener(GradientListener* listener) {
  impl_->listener_ = listener;
}

template <class Real>
double LanguageModel<Real>::cross_entropy() const {
  return impl_->ce_;
}

template <class Real>
int LanguageModel<Real>::threads() const {
  return impl_->threads_ > 0 ? impl_->threads_ : omp_get_max_threads();
}

template <class Real>
size_t LanguageModel<Real>::arena_bytes() const {
  return (impl_->arena_.size() + impl_->infer_x0_.size()) * sizeof(Real) +
         impl_->stack_->arena_bytes() + impl_->stack_->infer_bytes();
}

template <class Real>
std::span<const Real> LanguageModel<Real>::top_output() const {
  const Impl& m = *impl_;
  if (m.T_ == 0) return {};  // no forward yet
  const Real* top = m.inferred_ ? m.stack_->infer_output() : m.stack_->output();
  return {top, static_cast<size_t>(m.T_ * m.B_ * m.cfg_.H)};
}

template <class Real>
std::span<const Real> LanguageModel<Real>::h_n() const {
  return impl_->h_n_;
}

template <class Real>
std::span<const Real> LanguageModel<Real>::s_n() const {
  return impl_->s_n_;
}

template <class Real>
double LanguageModel<Real>::forward(std::span<const Real> params, const Batch<Real>& batch,
                                    Reduction red) {
  return impl_->forward(params, batch, red);
}

template <class Real>
double LanguageModel<Real>::infer(std::span<const Real> params, const Batch<Real>& batch,
                                  Reduction red) {
  return impl_->forward(params, batch, red, false);
}

template <class Real>
void LanguageModel<Real>::backward(std::span<Real> grad, std::span<const Real> params,
                                   const Batch<Real>& batch, Real* dinput, Real* dh0, Real* ds0) {
  impl_->backward(grad, params, batch, dinput, dh0, ds0);
}

template <class Real>
std::span<const Real> LanguageModel<Real>::probs() const {
  return impl_->probs();
}

template <class Real>
void LanguageModel<Real>::Impl::reserve(int64_t T, int64_t B) {
  if (T * B <= capT_ * capB_) return;
  capT_ = T, capB_ = B;
  const int64_t N = T * B, X = cfg_.X;
  const bool emb = cfg_.input == InputKind::embedding;
  const bool lin = cfg_.readout == Readout::linear;
  // Sized once: nothing is allocated again while the batch shape stays.
  arena_.assign(static_cast<size_t>((emb ? 2 * N * X : 0) + (lin ? N * cfg_.H : 0)), Real(0));
  cpu::Carver<Real> carve(arena_.data());
  buf_.x0 = emb ? carve(N * X) : nullptr;
  buf_.dx0 = emb ? carve(N * X) : nullptr;
  buf_.dh = lin ? carve(N * cfg_.H) : nullptr;
}

// What the readout reads: the top layer's h_1 .. h_T [T,B,H], or its dropped copy (site L).
template <class Real>
const Real* LanguageModel<Real>::Impl::readout_input() {
  const Real* top = inferred_ ? stack_->infer_output() : stack_->output();
  if (!out_mask_) return top;
  Real* top_d = dropped_top();
  if (!readout_dropped_) {
    cpu::apply_mask_rows(top_d, top, out_mask_, cfg_.H, out_period_, 0, T_ * B_);
    readout_dropped_ = true;
  }
  return top_d;
}

template <class Real>
std::optional<double> LanguageModel<Real>::readout_grad_sumsq() const {
  if (!impl_->readout_sumsq_) return std::nullopt;
  return impl_->vocab_->grad_sumsq();
}

template <class Real>
std::span<const Real> LanguageModel<Real>::Impl::probs() const {
  if (backward_done_)
    throw std::logic_error("LanguageModel::probs(): p is gone after backward; take it before");
  const size_t n = static_cast<size_t>(T_ * B_ * cfg_.V);
  if (probs_.size() < n) probs_.resize(n);
  if constexpr (std::is_same_v<Real, float>)
    if (vocab_fused_) vocab_->probs(probs_.data());
  return {probs_.data(), n};
}

template <class Real>
int LanguageModel<Real>::Impl::readout_shares(int64_t N) const {
  return threads_ > 0 ? threads_
                      : cpu::team_size_for(
                            2.0 * static_cast<double>(N) * static_cast<double>(cfg_.V * cfg_.H),
                            omp_get_max_threads());
}

// Whether forward takes the fused float32 readout (cpu/vocab_readout.hpp).
template <class Real>
bool LanguageModel<Real>::Impl::fuses_readout(const Batch<Real>& batch) const {
  return std::is_same_v<Real, float> && cfg_.readout == Readout::linear && !batch.target.empty() &&
         batch.target_probs.empty() && cpu::panel_gemm_available();
}

template <class Real>
double LanguageModel<Real>::Impl::forward(std::span<const Real> params, const Batch<Real>& batch,
                                          Reduction red, bool keep) {
  const int64_t T = batch.T, B = batch.B, N = T * B, H = cfg_.H, X = cfg_.X, V = cfg_.V;
  assert(params.size() == n_params_ && T >= 1 && B >= 1);
  assert(cfg_.input == InputKind::embedding ? batch.tokens.size() == static_cast<size_t>(N)
                                            : batch.dense.size() == static_cast<size_t>(N * X));
  backward_done_ = false;
  inferred_ = !keep;
  if (keep) {
    reserve(T, B);
  } else if (cfg_.input == InputKind::embedding && infer_x0_.size() < static_cast<size_t>(N * X)) {
    infer_x0_.resize(static_cast<size_t>(N * X));
  }
  T_ = T, B_ = B, red_ = red;
  readout_dropped_ = false;
  const Real* P = params.data();
  const Real* x = batch.dense.data();
  dropped_ = keep && drop_p_ > 0;
  reg_on_ = keep && (explicit_masks_ || reg_.any() || (training_ && cfg_.zoneout()));
  in_mask_ = out_mask_ = nullptr;
  wdropped_ = false;
  if (reg_on_) prepare_regularization(B, P);
  if (dropped_ || reg_on_) {
    if (drop_.size() < static_cast<size_t>(2 * N * X + 3 * N * H))
      drop_.resize(static_cast<size_t>(2 * N * X + 3 * N * H));
  }
  if (cfg_.input == InputKind::embedding) {  // x_t = encoder.weight[token]
    const Real* E = P + *offsets_.encoder_weight;
    Real* x0 = keep ? buf_.x0 : infer_x0_.data();
    const int64_t* tok = batch.tokens.data();
    const Real* me = reg_on_ && !masks_.emb.empty() ? masks_.emb.data() : nullptr;
    for (int64_t r = 0; r < N; ++r) {
      if (!me) {
        std::copy_n(E + tok[r] * X, X, x0 + r * X);
      } else {  // embedding dropout: the row times its mask entry (0 or 1/(1-p))
        const Real m = me[tok[r]];
        for (int64_t j = 0; j < X; ++j) x0[r * X + j] = E[tok[r] * X + j] * m;
      }
    }
    x = x0;
  }
  if (dropped_) {  // site 0: the input of layer 0
    cpu::dropout_mask(input_mask(), batch.T, batch.B, X, shard_, drop_p_, drop_seed_, 0);
    in_mask_ = input_mask(), in_period_ = N;
    cpu::dropout_mask(top_mask(), T, B, H, shard_, drop_p_, drop_seed_,
                      static_cast<uint64_t>(cfg_.L));  // site L: before the readout
    out_mask_ = top_mask(), out_period_ = N;
  } else if (reg_on_) {  // locked masks [B,W], the same at every step
    if (!masks_.in.empty()) in_mask_ = masks_.in.data(), in_period_ = B;
    if (!masks_.out.empty()) out_mask_ = masks_.out.data(), out_period_ = B;
  }
  if (in_mask_) {
    cpu::apply_mask_rows(dropped_input(), x, in_mask_, X, in_period_, 0, N);
    x = dropped_input();
  }
  if (keep) {
    const bool hid = reg_on_ && !masks_.hid.empty();
    for (size_t k = 0; hid && k < masks_.hid.size(); ++k) hid_ptrs_[k] = masks_.hid[k].data();
    stack_->set_locked_masks(hid ? hid_ptrs_.data() : nullptr);
    const bool rec = reg_on_ && !masks_.rec.empty();
    for (size_t k = 0; rec && k < masks_.rec.size(); ++k) rec_ptrs_[k] = masks_.rec[k].data();
    stack_->set_recurrent_masks(rec ? rec_ptrs_.data() : nullptr);
    // zoneout: the masks where there are, else the expectation
    const bool zh = reg_on_ && !masks_.zone_h.empty(), zs = reg_on_ && !masks_.zone_s.empty();
    for (size_t k = 0; zh && k < masks_.zone_h.size(); ++k)
      zone_h_ptrs_[k] = masks_.zone_h[k].data();
    for (size_t k = 0; zs && k < masks_.zone_s.size(); ++k)
      zone_s_ptrs_[k] = masks_.zone_s[k].data();
    stack_->set_zoneout_masks(zh ? zone_h_ptrs_.data() : nullptr,
                              zs ? zone_s_ptrs_.data() : nullptr);
  }
  const auto w = layer_weights(P);
  const Real* h0 = batch.h0.empty() ? nullptr : batch.h0.data();
  const Real* s0 = batch.s0.empty() ? nullptr : batch.s0.data();
  if (keep)
    stack_->forward(x, w.data(), h0, s0, T, B);
  else
    stack_->infer(x, w.data(), h0, s0, T, B);
  h_n_.resize(static_cast<size_t>(cfg_.h_offset(cfg_.L, B)));
  s_n_.resize(static_cast<size_t>(cfg_.s_offset(cfg_.L, B)));
  for (int64_t k = 0; k < cfg_.L; ++k) {
    std::copy_n(keep ? stack_->h_last(k) : stack_->infer_h_last(k), B * cfg_.out_width(k),
                h_n_.data() + cfg_.h_offset(k, B));
    std::copy_n(keep ? stack_->s_last(k) : stack_->infer_s_last(k), B * cfg_.width(k),
                s_n_.data() + cfg_.s_offset(k, B));
  }
  const Real* top = readout_input();
  const int64_t* y_class = batch.target.empty() ? nullptr : batch.target.data();
  const Real* y_probs = batch.target_probs.empty() ? nullptr : batch.target_probs.data();
  const bool lin = cfg_.readout == Readout::linear;
  row_loss_.resize(static_cast<size_t>(N));
  double* row_loss = row_loss_.data();
  vocab_fused_ = fuses_readout(batch);
  readout_sumsq_ = false;
  const int S = readout_shares(N);
  const cpu::TeamCall call(readout_forward_, S, running_, static_cast<double>(N));
  if (vocab_fused_) {  // the same bits for any team (vocab_readout.hpp): the shares are moot
    if (!vocab_) vocab_ = std::make_unique<cpu::VocabReadout>();
    vocab_->set_bf16(precision_ == Precision::bf16);
    vocab_->reserve(N, H, V, S, keep);
    fused_forward(*vocab_, call.threads(), top, P + *offsets_.decoder_weight,
                  P + *offsets_.decoder_bias, y_class, row_loss);
  } else {
    if (probs_.size() < static_cast<size_t>(N * V)) probs_.resize(static_cast<size_t>(N * V));
    if (lin && colsum_.size() < static_cast<size_t>(colsum_blocks(N) * V))
      colsum_.resize(static_cast<size_t>(colsum_blocks(N) * V));
    Real* logits = probs_.data();
    cpu::BlasThreads one(1);
    // Each share its rows: logits = h W^T + c (or h), then the softmax. Every row is computed
    // alike whatever the shares (bit-identical float64 for any thread count).
    cpu::run_team(call.threads(), [&] {
      const cpu::TeamMember tm{cpu::team_thread(), cpu::team_threads(), S};
      tm.for_shares(0, [&](const cpu::TeamSlice& ts) {
        const int64_t r0 = ts.row0(N), r1 = ts.row1(N);
        if (lin) {
          const Real* c = P + *offsets_.decoder_bias;
          for (int64_t r = r0; r < r1; ++r) std::copy_n(c, V, logits + r * V);
          if (r1 > r0)
            gemm(Tr::N, Tr::T, r1 - r0, V, H, Real(1), top + r0 * H, H,
                 P + *offsets_.decoder_weight, H, Real(1), logits + r0 * V, V);
        } else {
          std::copy_n(top + r0 * V, (r1 - r0) * V, logits + r0 * V);
        }
        for (int64_t r = r0; r < r1; ++r) {
          Real* p = logits + r * V;
          const Real* y = y_probs ? y_probs + r * V : nullptr;
          row_loss[r] = softmax_xent_forward(p, p, y, y_class ? y_class + r : nullptr, 1, V);
          // No targets (sampling) or infer: no gradient follows.
          if (!lin || (!y && !y_class) || !keep) continue;
          Real* cs = colsum_.data() + (r / kColsumRows) * V;  // this block's sum of p - y
          if (r % kColsumRows == 0)
            std::copy_n(p, V, cs);
          else
            for (int64_t v = 0; v < V; ++v) cs[v] += p[v];
          if (y_class) {
            cs[y_class[r]] -= Real(1);
          } else {
            for (int64_t v = 0; v < V; ++v) cs[v] -= y[v];
          }
        }
      });
    });
  }
  double sum = 0;
  for (int64_t r = 0; r < N; ++r) sum += row_loss[r];  // in row order: reproducible
  ce_ = sum * static_cast<double>(loss_scale<Real>(red, T, B));
  return reg_on_ ? ce_ + regularizer_terms() : ce_;
}

template <class Real>
void LanguageModel<Real>::Impl::prepare_regularization(int64_t B, const Real* P) {
  const int64_t H = cfg_.H, L = cfg_.L;
  if (drop_p_ > 0 && (reg_.dropout_in > 0 || reg_.dropout_hid > 0 || reg_.dropout_out > 0))
    throw InputError(
        "--dropout (a mask per position) and --dropout-in/--dropout-hid/--dropout-out (locked "
        "masks) drop at the same sites: give one or the other");
  if (!explicit_masks_) {
    draw_masks(masks_, cfg_, reg_, B, reg_seed_, shard_.first, shard_.total);
    draw_zoneout(masks_, cfg_, T_, B, reg_seed_, shard_.first, shard_.total);
  } else {
    auto need = [](const std::vector<Real>& v, int64_t n, const char* what) {
      if (!v.empty() && v.size() != static_cast<size_t>(n))
        throw std::invalid_argument(
            fmt::format("LanguageModel::set_masks: {} has {} entries, the "
                        "model and batch need {}",
                        what, v.size(), n));
    };
    need(masks_.emb, cfg_.input == InputKind::embedding ? cfg_.V : -1, "emb");
    need(masks_.in, B * cfg_.X, "in");
    need(masks_.out, B * H, "out");
    if (!masks_.hid.empty() && masks_.hid.size() != static_cast<size_t>(L - 1))
      throw std::invalid_argument("LanguageModel::set_masks: hid needs L-1 masks");
    for (size_t k = 0; k < masks_.hid.size(); ++k)
      need(masks_.hid[k], B * cfg_.out_width(k), "hid[k]");
    if (!masks_.rec.empty() && masks_.rec.size() != static_cast<size_t>(L))
      throw std::invalid_argument("LanguageModel::set_masks: rec needs L masks");
    for (size_t k = 0; k < masks_.rec.size(); ++k)
      need(masks_.rec[k], B * cfg_.out_width(k), "rec[k]");
    for (const auto* zone : {&masks_.zone_h, &masks_.zone_s}) {
      if (!zone->empty() && zone->size() != static_cast<size_t>(L))
        throw std::invalid_argument("LanguageModel::set_masks: zone_h and zone_s need L masks");
      for (size_t k = 0; k < zone->size(); ++k)  // zone_h on h, zone_s on s
        need((*zone)[k], T_ * B * (zone == &masks_.zone_h ? cfg_.out_width(k) : cfg_.width(k)),
             "zone_h[k] or zone_s[k]");
    }
    if (!masks_.weight.empty() && masks_.weight.size() != static_cast<size_t>(L))
      throw std::invalid_argument("LanguageModel::set_masks: weight needs L masks");
    for (size_t k = 0; k < masks_.weight.size(); ++k)
      need(masks_.weight[k], static_cast<int64_t>(hh_size(k)), "weight[k]");
  }
  hid_ptrs_.resize(static_cast<size_t>(std::max<int64_t>(L - 1, 0)));
  rec_ptrs_.resize(static_cast<size_t>(L));
  zone_h_ptrs_.resize(static_cast<size_t>(L)), zone_s_ptrs_.resize(static_cast<size_t>(L));
  if (!masks_.weight.empty()) {  // U' = U * M per layer, into a buffer kept between forwards
    if (wd_.size() < hh_offset(L)) wd_.resize(hh_offset(L));
    for (int64_t k = 0; k < L; ++k) {
      const Real* U = P + offsets_.layers[static_cast<size_t>(k)].weight_hh;
      const Real* M = masks_.weight[static_cast<size_t>(k)].data();
      Real* Ud = wd_.data() + hh_offset(k);
      for (size_t i = 0; i < hh_size(k); ++i) Ud[i] = U[i] * M[i];
    }
    wdropped_ = true;
  }
}

template <class Real>
std::vector<cpu::LayerWeights<Real>> LanguageModel<Real>::Impl::layer_weights(const Real* P) const {
  auto w = layer_views<cpu::LayerWeights<Real>>(offsets_, P);
  if (wdropped_)
    for (size_t k = 0; k < w.size(); ++k)
      w[k].W_hh = wd_.data() + hh_offset(static_cast<int64_t>(k));
  for (size_t k = 0; k < w.size(); ++k) {
    if (offsets_.layers[k].layer_norm) w[k].ln = P + *offsets_.layers[k].layer_norm;
    if (offsets_.layers[k].weight_hr) w[k].W_hr = P + *offsets_.layers[k].weight_hr;
  }
  return w;
}

// AR: ar * mean over [T,B,H] of the readout's input squared (after the output mask); TAR: tar *
// mean over [T-1,B,H] of (h_{t+1} - h_t)^2 of the top layer before it (0 when T = 1).
template <class Real>
double LanguageModel<Real>::Impl::regularizer_terms() {
  const int64_t N = T_ * B_, H = cfg_.H, BH = B_ * H;
  double out = 0;
  if (reg_.ar > 0) {
    const Real* o = readout_input();
    double sq = 0;
    for (int64_t k = 0; k < N * H; ++k) sq += static_cast<double>(o[k]) * static_cast<double>(o[k]);
    out += reg_.ar * sq / static_cast<double>(N * H);
  }
  if (reg_.tar > 0 && T_ > 1) {
    const Real* h = stack_->output();
    double sq = 0;
    for (int64_t k = BH; k < N * H; ++k) {
      const double d = static_cast<double>(h[k]) - static_cast<double>(h[k - BH]);
      sq += d * d;
    }
    out += reg_.tar * sq / static_cast<double>((T_ - 1) * BH);
  }
  return out;
}

template <class Real>
void LanguageModel<Real>::Impl::regularizer_grad(Real* dtop) {
  if (reg_.ar <= 0) return;
  const int64_t N = T_ * B_, H = cfg_.H;
  const Real c = static_cast<Real>(2 * reg_.ar / static_cast<double>(N * H));
  const Real* o = readout_input();
  for (int64_t k = 0; k < N * H; ++k) dtop[k] += c * o[k];
}

template <class Real>
void LanguageModel<Real>::Impl::tar_grad(Real* dtop) {
  if (reg_.tar <= 0 || T_ < 2) return;
  const int64_t N = T_ * B_, BH = B_ * cfg_.H;
  const Real c = static_cast<Real>(2 * reg_.tar / static_cast<double>((T_ - 1) * BH));
  const Real* h = stack_->output();
  // d/dh_t of sum_t (h_{t+1} - h_t)^2 = 2 (h_t - h_{t-1}) [t > 0] - 2 (h_{t+1} - h_t) [t < T-1]
  for (int64_t k = 0; k < N * cfg_.H; ++k) {
    Real g = 0;
    if (k >= BH) g += h[k] - h[k - BH];
    if (k + BH < N * cfg_.H) g -= h[k + BH] - h[k];
    dtop[k] += c * g;
  }
}

template <class Real>
void LanguageModel<Real>::Impl::backward(std::span<Real> grad, std::span<const Real> params,
                                         const Batch<Real>& batch, Real* dinput, Real* dh0,
                                         Real* ds0) {
  const int64_t T = T_, B = B_, N = T * B, H = cfg_.H, X = cfg_.X, V = cfg_.V;
  assert(grad.size() == n_params_ && params.size() == n_params_ && batch.T == T && batch.B == B);
  assert(grad.data() != params.data());
  if (inferred_)
    throw std::logic_error(
        "LanguageModel::backward: the last forward was infer(), which keeps "
        "nothing for backward");
  backward_done_ = true;
  const int S = readout_shares(N);
  const Real* P = params.data();
  Real* D = grad.data();
  const int64_t* y_class = batch.target.empty() ? nullptr : batch.target.data();
  const Real* y_probs = batch.target_probs.empty() ? nullptr : batch.target_probs.data();
  const Real scale = loss_scale<Real>(red_, T, B);
  Real* dlogits = probs_.data();  // dL/dlogits = scale * (p - y), in place over p
  Real* dh_top = dlogits;         // identity readout: dL/dh = dL/dlogits
  if (vocab_fused_) {
    const cpu::TeamCall call(readout_backward_, S, running_, static_cast<double>(N));
    fused_backward(*vocab_, call.threads(), scale, P + *offsets_.decoder_weight, y_class,
                   D + *offsets_.decoder_weight, D + *offsets_.decoder_bias, buf_.dh);
    dh_top = buf_.dh;
    readout_sumsq_ = !cfg_.tie_weights;  // tied: the embedding's rows add into it below
  } else if (cfg_.readout == Readout::linear) {
    // p - y in place; the scale goes into the GEMMs' alpha (one pass over [N,V] saved). For class
    // targets p - y touches one entry per row.
    if (y_class) {
      for (int64_t r = 0; r < N; ++r) dlogits[r * V + y_class[r]] -= Real(1);
    } else {
      softmax_xent_backward(dlogits, dlogits, y_probs, y_class, Real(1), N, V);
    }
    const Real* top = readout_input();
    const Real* Wd = P + *offsets_.decoder_weight;
    Real* dWd = D + *offsets_.decoder_weight;
    Real* dc = D + *offsets_.decoder_bias;
    Real* dh = buf_.dh;
    cpu::BlasThreads one(1);
    const cpu::TeamCall call(readout_backward_, S, running_, static_cast<double>(N));
    cpu::run_team(call.threads(), [&] {
      const cpu::TeamMember tm{cpu::team_thread(), cpu::team_threads(), S};
      tm.for_shares(0, [&](const cpu::TeamSlice& ts) {
        const int64_t v0 = cpu::split_edge(V, ts.id, ts.size),
                      v1 = cpu::split_edge(V, ts.id + 1, ts.size);
        const int64_t r0 = ts.row0(N), r1 = ts.row1(N);
        // logits = h W^T + c: dc += scale * column sums of (p - y) (the blocks' sums, in block
        // order, accumulated into block 0), dW += scale (p - y)^T h.
        Real* cs0 = colsum_.data();
        for (int64_t b = 1; b < colsum_blocks(N); ++b) {
          const Real* cs = colsum_.data() + b * V;
          for (int64_t v = v0; v < v1; ++v) cs0[v] += cs[v];
        }
        for (int64_t v = v0; v < v1; ++v) dc[v] += scale * cs0[v];
        if (v1 > v0)
          gemm(Tr::T, Tr::N, v1 - v0, H, N, scale, dlogits + v0, V, top, H, Real(1), dWd + v0 * H,
               H);
        if (r1 > r0)  // dh = scale (p - y) W
          gemm(Tr::N, Tr::N, r1 - r0, H, V, scale, dlogits + r0 * V, V, Wd, H, Real(0), dh + r0 * H,
               H);
      });
    });
    dh_top = buf_.dh;
  } else {
    softmax_xent_backward(dlogits, dlogits, y_probs, y_class, scale, N, V);
  }
  if (listener_ && offsets_.decoder_bias)  // the readout's tensors (tied: its weight is not)
    listener_->final_from(cfg_.tie_weights ? *offsets_.decoder_bias : *offsets_.decoder_weight);
  if (reg_on_) regularizer_grad(dh_top);  // AR, on the readout's input
  if (out_mask_) {  // the readout saw top * mask: dL/dtop = dL/d(dropped top) * mask
    cpu::apply_mask_rows(top_grad(), dh_top, out_mask_, H, out_period_, 0, N);
    dh_top = top_grad();
  }
  if (reg_on_) tar_grad(dh_top);  // TAR, on the top layer's output before the mask
  const bool emb = cfg_.input == InputKind::embedding;
  const auto w = layer_weights(P);
  auto g = layer_views<cpu::LayerGrads<Real>>(offsets_, D);
  for (size_t k = 0; k < g.size(); ++k) {
    if (offsets_.layers[k].layer_norm) g[k].dln = D + *offsets_.layers[k].layer_norm;
    if (offsets_.layers[k].weight_hr) g[k].dW_hr = D + *offsets_.layers[k].weight_hr;
  }
  const size_t all_hh = hh_offset(cfg_.L);
  if (wdropped_) {  // dL/dU' into scratch, then dL/dU += dL/dU' * M
    if (wd_grad_.size() < all_hh) wd_grad_.resize(all_hh);
    std::fill_n(wd_grad_.data(), all_hh, Real(0));
    for (size_t k = 0; k < g.size(); ++k)
      g[k].dW_hh = wd_grad_.data() + hh_offset(static_cast<int64_t>(k));
  }
  const Real* x = in_mask_ ? dropped_input() : emb ? buf_.x0 : batch.dense.data();
  // As each layer's backward ends (on this thread): weight drop's dL/dU += dL/dU' * M, and the
  // listener told that the layer's gradient is final.
  hooks_.layer_done = [this, D](int64_t k) {
    if (wdropped_) {
      Real* dU = D + offsets_.layers[static_cast<size_t>(k)].weight_hh;
      const Real* dUd = wd_grad_.data() + hh_offset(k);
      const Real* M = masks_.weight[static_cast<size_t>(k)].data();
      for (size_t i = 0; i < hh_size(k); ++i) dU[i] += dUd[i] * M[i];
    }
    if (listener_) listener_->final_from(offsets_.layers[static_cast<size_t>(k)].weight_ih);
  };
  hooks_.poll = nullptr;
  if (listener_) hooks_.poll = [this] { listener_->poll(); };
  stack_->backward(emb ? buf_.dx0 : dinput, g.data(), dh_top, x, w.data(), dh0, ds0, nullptr,
                   nullptr, &hooks_);
  Real* dx = emb ? buf_.dx0 : dinput;
  if (in_mask_ && dx) cpu::apply_mask_rows(dx, dx, in_mask_, X, in_period_, 0, N);
  if (emb) {  // x_t = encoder.weight[token]: scatter-add the rows of dx (only the rows used)
    Real* dE = D + *offsets_.encoder_weight;
    const Real* me = reg_on_ && !masks_.emb.empty() ? masks_.emb.data() : nullptr;
    for (int64_t r = 0; r < N; ++r) {
      Real* row = dE + batch.tokens[r] * X;
      const Real* src = buf_.dx0 + r * X;
      if (!me) {
        for (int64_t j = 0; j < X; ++j) row[j] += src[j];
      } else {  // through the embedding mask: the row's entry (0 or 1/(1-p))
        const Real m = me[batch.tokens[r]];
        if (m != Real(0))
          for (int64_t j = 0; j < X; ++j) row[j] += src[j] * m;
      }
    }
  }
}

template class LanguageModel<float>;
template class LanguageModel<double>;

}  // namespace lstmgrad
