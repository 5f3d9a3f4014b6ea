// The L-layer LSTM stack scanned over T steps on the CPU (PyTorch ATen's cell -> layer -> stack).
// Owns every activation of the stack in one arena sized up front (grown only for a larger T*B),
// and the thread team that runs it (lstm_layer.hpp). Sizes: T steps, B rows, X input width, H
// hidden, L layers.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "cpu/dropout.hpp"
#include "cpu/lstm_layer.hpp"
#include "lstmgrad/model.hpp"
#include "lstmgrad/precision.hpp"

namespace lstmgrad::cpu {

// What the calling thread (the team's thread 0) runs during a backward besides its share:
// `poll` between time steps, `layer_done(k)` as soon as layer k's weight gradients are complete
// (the layers from the top down), while the other threads go on. Either may be empty.
struct BackwardHooks {
  std::function<void()> poll;
  std::function<void(int64_t)> layer_done;
};

template <class Real>
class LstmStack {
 public:
  LstmStack(int64_t X, int64_t H, int64_t L);
  // Per-layer widths (ModelConfig::hidden): layer k's cell is widths[k] wide; with proj > 0
  // (ModelConfig::proj) every layer's output h is (o tanh s) W_hr^T, proj wide. States are then
  // the layers' blocks one after another: h (h0, dh0, dh_n) [B, out_width(k)] blocks, s (s0, ds0,
  // ds_n) [B, H_k] blocks; the uniform case is the [L,B,H] above.
  LstmStack(int64_t X, std::vector<int64_t> widths, int64_t proj = 0);
  int64_t width(int64_t k) const { return Hk_[static_cast<size_t>(k)]; }
  int64_t out_width(int64_t k) const { return proj_ > 0 ? proj_ : width(k); }
  // Where layer k's block starts in a state of B rows (as ModelConfig's).
  int64_t h_offset(int64_t k, int64_t B) const {
    return block_offset(k, B, [this](int64_t j) { return out_width(j); });
  }
  int64_t s_offset(int64_t k, int64_t B) const {
    return block_offset(k, B, [this](int64_t j) { return width(j); });
  }

  // The stack's team (cpu/team.hpp). shares >= 1: the split (the results depend on it alone);
  // 0, the default: up to omp_get_max_threads(), fewer for small shapes (team_size_for the
  // per-step GEMM). running >= 1: the threads that run the shares (at most one per share); 0,
  // the default: chosen by measuring (TeamTuner, forward and backward apart).
  void set_team(int shares, int running) { threads_ = shares, running_cap_ = running; }
  void set_threads(int n) { set_team(n, n); }  // n shares run by n threads; 0: the defaults

  // The GEMMs' operands for the forward, backward and infer calls that follow (float32 only):
  // bf16 rounds them (cpu/bf16.hpp) and sums in float32. Throws InputError for bf16 where the
  // CPU has none (require_bf16) or in float64.
  void set_precision(Precision p);
  Precision precision() const { return precision_; }
  int threads(int64_t B) const;

  // x [T,B,X]; w [L]; h0, s0 [L,B,H] or null (zeros). Saves what backward needs.
  void forward(const Real* x, const LayerWeights<Real>* w, const Real* h0, const Real* s0,
               int64_t T, int64_t B);
  const Real* output() const {  // [T,B,out_width(L-1)] top h_1..h_T
    return saved_[L_ - 1].hseq + B_ * out_width(L_ - 1);
  }
  const Real* h_last(int64_t k) const {  // [B,out_width(k)]
    return saved_[k].hseq + T_ * B_ * out_width(k);
  }
  const Real* s_last(int64_t k) const { return saved_[k].sseq + T_ * B_ * width(k); }  // [B,H_k]

  // Backward of the last forward (same x and w). dh_top [T,B,H]: dL/dh_t from above the stack.
  // Gradients g [L] accumulated (+=). Optional outputs, overwritten: dx [T,B,X], dh0, ds0 [L,B,H].
  // Optional inputs dh_n, ds_n [L,B,H]: dL/dh_T, dL/ds_T of every layer from outside the stack
  // (null: zeros, nothing flows back from the final state).
  // `hooks` (or null): what the calling thread also runs during it.
  void backward(Real* dx, const LayerGrads<Real>* g, const Real* dh_top, const Real* x,
                const LayerWeights<Real>* w, Real* dh0, Real* ds0, const Real* dh_n = nullptr,
                const Real* ds_n = nullptr, const BackwardHooks* hooks = nullptr);

  size_t arena_bytes() const {
    return (arena_.size() + grad_arena_.size() + drop_.size() + rec_seq_.size() + zone_seq_.size() +
            ln_seq_.size() + proj_seq_.size()) *
               sizeof(Real) +
           b16_arena_.size() * sizeof(bf16_t);
  }

  // Inference: forward's arithmetic, the same bits of output and final states, keeping nothing
  // for backward, in an arena of its own (infer_bytes): the gates of one layer at a time (of a
  // window of steps on the claimed split where all of them exceed kInferGateBytes: the input
  // projection then runs window by window), the cell state of one step, and the h sequences of
  // two layers (one feeds the next). Dropout does not apply; backward() does not follow it.
  // Sizes and arguments as forward's.
  void infer(const Real* x, const LayerWeights<Real>* w, const Real* h0, const Real* s0, int64_t T,
             int64_t B);
  const Real* infer_output() const {  // [T,B,out_width(L-1)]
    return infer_h_[(L_ - 1) % 2] + infer_B_ * out_width(L_ - 1);
  }
  const Real* infer_h_last(int64_t k) const {  // [B,out_width(k)]
    return infer_last_ + h_offset(k, infer_B_);
  }
  const Real* infer_s_last(int64_t k) const {  // [B,H_k]
    return infer_last_ + h_offset(L_, infer_B_) + s_offset(k, infer_B_);
  }
  // The rows of gates infer keeps at most (tests: windows of a few steps on small shapes); 0, the
  // default: kInferGateBytes' worth. Takes effect at the next reserve of infer's arena.
  void set_infer_gate_budget(int64_t rows) { infer_budget_rows_ = rows, infer_arena_.clear(); }
  static constexpr int64_t kInferGateBytes = int64_t{8} << 20;
  size_t infer_bytes() const {
    return infer_arena_.size() * sizeof(Real) + b16_arena_.size() * sizeof(bf16_t);
  }

  // Dropout between layers (on layer k's output before layer k+1 reads it), for the forward
  // calls that follow; p = 0 turns it off. Masks come from (seed, site k+1, position).
  void set_dropout(double p, uint64_t seed) { drop_p_ = p, drop_seed_ = seed; }
  // The batch's streams are `shard` of a larger batch: the masks are that batch's (dropout.hpp).
  void set_stream_shard(StreamShard shard) { shard_ = shard; }
  // Locked dropout between layers for the next forward: masks[k] [B,H] on layer k's output
  // (k < L-1), the same at every step; null (or masks = null): none. Takes the place of
  // set_dropout's masks. The caller keeps the masks alive until backward is done.
  void set_locked_masks(const Real* const* masks) {
    for (int64_t k = 0; k + 1 < L_; ++k)
      locked_[static_cast<size_t>(k)] = masks ? masks[k] : nullptr;
  }

  // Recurrent dropout (Gal and Ghahramani) for the next forward: masks[k] [B,H] on h_{t-1}
  // where layer k's recurrent product reads it, the same at every step; null (or masks = null):
  // none. The caller keeps the masks alive until backward is done.
  void set_recurrent_masks(const Real* const* masks) {
    for (int64_t k = 0; k < L_; ++k) rec_[static_cast<size_t>(k)] = masks ? masks[k] : nullptr;
  }
  // Zoneout (Krueger et al.; lstm_layer.hpp): the rates of every layer, p_h on h and p_s on s,
  // in [0, 1); 0 and 0: none. A forward without masks, and infer, use the expectation.
  void set_zoneout(double p_h, double p_s) { zone_p_h_ = p_h, zone_p_s_ = p_s; }
  // Layer norm (cpu/row_layer.hpp): the forwards that follow keep its buffers; every layer's
  // LayerWeights::ln must then be set (and LayerGrads::dln in backward).
  void set_layer_norm(bool on) { layer_norm_ = on; }
  // Masks for the next forward: h[k], s[k] [T,B,H] of 0 and 1 (1: the unit keeps its previous
  // value) for layer k; null (or h = s = null): the expectation. Kept alive by the caller until
  // backward is done.
  void set_zoneout_masks(const Real* const* h, const Real* const* s) {
    for (int64_t k = 0; k < L_; ++k) {
      zone_h_[static_cast<size_t>(k)] = h ? h[k] : nullptr;
      zone_s_[static_cast<size_t>(k)] = s ? s[k] : nullptr;
    }
  }

 private:
  // The forward's arena (what backward reads), for T*B rows and B (grown only for more).
  void reserve(int64_t T, int64_t B);
  // backward's scratch, an arena of its own sized as the forward's: a forward alone (timing it,
  // or a model that only evaluates) never touches it.
  void reserve_backward();
  // With bf16: its buffers sized for T, B (grown only for larger ones) and returned; else null.
  const Bf16Buffers* bf16_buffers(int64_t T, int64_t B);
  Precision precision_ = Precision::f32;
  // The float32 panels of the fused split (lstm_layer.hpp), in the arenas only in float32: bf16
  // packs its own (Bf16Buffers::u_panels). Whether the fused split runs at all: fused().
  int64_t panel_room() const { return precision_ == Precision::bf16 ? 0 : panel_floats<Real>(H_); }
  bool fused() const { return panel_floats<Real>(H_) > 0; }
  Precision arena_precision_ = Precision::f32, infer_precision_ = Precision::f32;  // carved for
  ZeroedBuffer<bf16_t> b16_arena_;
  int64_t b16_capN_ = 0, b16_capB_ = 0;
  Bf16Buffers b16_{};

  int64_t X_, H_, L_;        // H_: the widest layer or projection (buffers are sized for it)
  std::vector<int64_t> Hk_;  // each layer's width
  int64_t proj_ = 0;         // the projection's width P; 0: none
  int threads_ = 0;
  int team_ = 1;         // the shares of the last forward
  int running_cap_ = 0;  // set_team's running
  TeamTuner forward_tuner_, backward_tuner_;
  int64_t T_ = 0, B_ = 0, capN_ = 0, capB_ = 0;
  std::vector<Real> arena_, grad_arena_;
  int64_t grad_capN_ = 0, grad_capB_ = 0;
  std::vector<LayerSaved<Real>> saved_;  // per layer
  StealRanges claims_;                   // the claimed split's T + 1 step sets (lstm_layer.hpp)
  SpinBarrier step_barrier_;             // and its barrier between steps
  Real* dz_ = nullptr;                   // [T,B,4H] scratch
  Real* dh_a_ = nullptr;                 // [T,B,H] gradient flowing down (ping; L >= 2)
  Real* dh_b_ = nullptr;                 // [T,B,H] (pong; L >= 3)
  Real* dh_rec_ = nullptr;               // [B,H]
  Real* ds_ = nullptr;                   // [B,H]
  double drop_p_ = 0;
  uint64_t drop_seed_ = 0;
  StreamShard shard_;
  bool dropped_ = false;    // whether the last forward used dropout
  std::vector<Real> drop_;  // per boundary k < L-1: mask [T,B,H], then the dropped input [T,B,H]
  Real* drop_mask(int64_t k) { return drop_.data() + 2 * k * T_ * B_ * H_; }
  Real* drop_input(int64_t k) { return drop_mask(k) + T_ * B_ * H_; }
  std::vector<const Real*> locked_;  // [L-1] set_locked_masks's, or null
  bool locked_used_ = false;         // the last forward used them
  std::vector<const Real*> rec_;     // [L] set_recurrent_masks's, or null
  std::vector<Real> rec_seq_;        // [L] of [T,B,H]: each layer's h_{t-1} * mask (hdseq)
  double zone_p_h_ = 0, zone_p_s_ = 0;
  std::vector<const Real*> zone_h_, zone_s_;  // [L] set_zoneout_masks's, or null
  // zoneout's buffers: [L] of [T,B,H] s~ (zseq), then [B,H] twice (zone_dh, zone_ds)
  std::vector<Real> zone_seq_;
  bool layer_norm_ = false;
  // layer norm's buffers: [L] of ln_x, ln_h [T,B,4H], ln_s [T,B,H], ln_r [3,T,B]; then ln_dzh
  // [T,B,4H] and ln_dy [T,B,H] shared by the layers (backward runs one at a time)
  std::vector<Real> ln_seq_;
  std::vector<Real> infer_ln_;  // infer's: one layer's ln_x, ln_h, ln_s, ln_r
  // the projection's buffers: [L] of mseq [T,B,H]; then proj_dh [T,B,P] and proj_dm [T,B,H]
  // shared by the layers (backward runs one at a time). infer_proj_: one layer's mseq.
  std::vector<Real> proj_seq_;
  std::vector<Real> infer_proj_;
  // Boundary k's mask and its period in rows (apply_mask_rows): locked [B,H] or per position.
  const Real* mask_of(int64_t k) {
    return locked_used_ ? locked_[static_cast<size_t>(k)] : drop_mask(k);
  }
  int64_t mask_period() const { return locked_used_ ? B_ : T_ * B_; }

  // infer's arena, one allocation grown only for a larger T*B: the layer being run (its gates
  // [T,B,G] or a window's [infer_gate_rows_,G] scratch, bias [G], the s ring [2,B,H], panels),
  // the h sequences [T+1,B,H] of layers k % 2 = 0 and 1 (one with one layer), and the final
  // states [2,L,B,H] (h_T of every layer, then s_T).
  void reserve_infer(int64_t T, int64_t B);
  std::vector<Real> infer_arena_;
  int64_t infer_T_ = 0, infer_B_ = 0, infer_capN_ = 0, infer_capB_ = 0;
  int64_t infer_gate_rows_ = 0, infer_budget_rows_ = 0;  // gates' rows; set_infer_gate_budget's
  LayerSaved<Real> infer_layer_{};                       // hseq set per layer
  Real* infer_h_[2] = {nullptr, nullptr};
  Real* infer_last_ = nullptr;
  TeamTuner infer_tuner_;
};

}  // namespace lstmgrad::cpu
