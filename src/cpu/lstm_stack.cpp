#include "cpu/lstm_stack.hpp"

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cpu/arena.hpp"
#include "cpu/blas.hpp"
#include "cpu/dropout.hpp"
#include "lstmgrad/error.hpp"

namespace lstmgrad::cpu {

template <class Real>
LstmStack<Real>::LstmStack(int64_t X, int64_t H, int64_t L)
    : LstmStack(X, std::vector<int64_t>(static_cast<size_t>(L), H)) {}

template <class Real>
LstmStack<Real>::LstmStack(int64_t X, std::vector<int64_t> widths, int64_t proj)
    : X_(X),
      H_(std::max(*std::max_element(widths.begin(), widths.end()), proj)),
      L_(static_cast<int64_t>(widths.size())),
      Hk_(std::move(widths)),
      proj_(proj),
      saved_(static_cast<size_t>(L_)),
      locked_(static_cast<size_t>(L_ - 1), nullptr),
      rec_(static_cast<size_t>(L_), nullptr),
      zone_h_(static_cast<size_t>(L_), nullptr),
      zone_s_(static_cast<size_t>(L_), nullptr) {}

template <class Real>
void LstmStack<Real>::set_precision(Precision p) {
  if (p == Precision::bf16) {
    if (!std::is_same_v<Real, float>)
      throw InputError("precision bf16: float32 engines only (float64 is the reference)");
    require_bf16();
  }
  precision_ = p;
}

template <class Real>
const Bf16Buffers* LstmStack<Real>::bf16_buffers(int64_t T, int64_t B) {
  if (precision_ != Precision::bf16) return nullptr;
  if (b16_arena_.empty() || T * B > b16_capN_ || B > b16_capB_) {
    b16_capN_ = std::max(T * B, b16_capN_), b16_capB_ = std::max(B, b16_capB_);
    const int64_t N = b16_capN_, H = H_, G = 4 * H, I = std::max(X_, H_);
    const int64_t wide = (H + kPanelWidth - 1) / kPanelWidth * kPanelWidth;  // H in whole panels
    const int64_t widei = (I + kPanelWidth - 1) / kPanelWidth * kPanelWidth;
    // The row layer's: W_hr^T [H, P] or W_hr [P, H] (P <= H_), a step's rows [B, 4H], dL/dh~^T
    // in blocks and o tanh s in panels (both over K = N)
    const int64_t rows = layer_norm_ || proj_ > 0 ? 1 : 0, projs = proj_ > 0 ? 1 : 0;
    const int64_t sizes[] = {
        std::max(wide * 4 * even(H), (wide + kPanelWidth) * G),  // u_panels: either way's groups
        std::max((G + kPanelWidth) * even(I), widei * G),        // w_panels
        N * std::max(even(I), G),                                // a_rows
        2 * b16_capB_ * even(H),                                 // h_ring
        (G + kBf16Rows) * even(N),                               // dz_blocks
        wide * even(N),                                          // h_panels
        widei * even(N),                                         // x_panels
        projs * (wide + kPanelWidth) * even(H),                  // r_panels
        rows * b16_capB_ * G,                                    // step_rows
        projs * (H + kBf16Rows) * even(N),                       // p_blocks
        projs * wide * even(N)};                                 // m_panels
    bf16_t** const slots[] = {&b16_.u_panels,  &b16_.w_panels, &b16_.a_rows,   &b16_.h_ring,
                              &b16_.dz_blocks, &b16_.h_panels, &b16_.x_panels, &b16_.r_panels,
                              &b16_.step_rows, &b16_.p_blocks, &b16_.m_panels};
    carve_bf16(b16_arena_, sizes, slots);
  }
  return &b16_;
}

template <class Real>
int LstmStack<Real>::threads(int64_t B) const {
  if (threads_ > 0) return threads_;
  const double step = 2.0 * static_cast<double>(B) * static_cast<double>(4 * H_ * H_);
  return team_size_for(step, omp_get_max_threads());
}

template <class Real>
void LstmStack<Real>::reserve(int64_t T, int64_t B) {
  T_ = T, B_ = B;
  if (!arena_.empty() && T * B <= capN_ && B <= capB_ && arena_precision_ == precision_) return;
  capN_ = std::max(T * B, capN_), capB_ = std::max(B, capB_), arena_precision_ = precision_;
  const int64_t N = capN_, H = H_, G = 4 * H;
  const int64_t S = N * H + capB_ * H;  // a state sequence h0..h_T
  // One allocation, sized up front; the time loops allocate nothing.
  const int64_t P = panel_room();
  arena_.assign(static_cast<size_t>(L_ * (N * G + 2 * S + 2 * G) + P), Real(0));
  Carver<Real> carve(arena_.data());
  Real* panels = nullptr;
  if (P > 0) {  // 64-byte aligned: the kernel's aligned panel loads
    Real* raw = carve(P);
    const auto skip = (64 - reinterpret_cast<uintptr_t>(raw) % 64) % 64 / sizeof(Real);
    panels = raw + skip;
  }
  for (auto& s : saved_) {
    s.gates = carve(N * G), s.bias = carve(G), s.dbias = carve(G);
    s.hseq = carve(S), s.sseq = carve(S), s.panels = panels;
    s.claims = fused() ? &claims_ : nullptr;
    s.step_barrier = fused() ? &step_barrier_ : nullptr;
  }
}

template <class Real>
void LstmStack<Real>::reserve_backward() {
  if (!grad_arena_.empty() && grad_capN_ == capN_ && grad_capB_ == capB_) return;
  grad_capN_ = capN_, grad_capB_ = capB_;
  const int64_t N = capN_, H = H_, G = 4 * H;
  // dL/d(input) of layers L-1 .. 1 in turn (at most H_ wide), ping-ponged: dh_a_ with two layers,
  // dh_b_ too with three or more (layer 0's goes to the caller's dx)
  const int64_t pings = std::min<int64_t>(L_ - 1, 2);
  grad_arena_.assign(static_cast<size_t>(N * G + pings * N * H + 2 * capB_ * H), Real(0));
  Carver<Real> carve(grad_arena_.data());
  dz_ = carve(N * G);
  dh_a_ = pings >= 1 ? carve(N * H) : nullptr;
  dh_b_ = pings >= 2 ? carve(N * H) : nullptr;
  dh_rec_ = carve(capB_ * H), ds_ = carve(capB_ * H);
}

template <class Real>
void LstmStack<Real>::forward(const Real* x, const LayerWeights<Real>* w, const Real* h0,
                              const Real* s0, int64_t T, int64_t B) {
  reserve(T, B);
  const int64_t H = H_;  // the widest layer: each layer's buffers have room for it
  const Bf16Buffers* b16 = bf16_buffers(T, B);
  for (int64_t k = 0; k < L_; ++k) {
    LayerSaved<Real>& sv = saved_[k];
    sv.b16 = b16;
    if (h0)
      std::copy_n(h0 + h_offset(k, B), B * out_width(k), sv.hseq);
    else
      std::fill_n(sv.hseq, B * out_width(k), Real(0));
    if (s0)
      std::copy_n(s0 + s_offset(k, B), B * width(k), sv.sseq);
    else
      std::fill_n(sv.sseq, B * width(k), Real(0));
  }
  const int64_t N = T * B;
  const bool rec = rec_[0] != nullptr;
  if (rec && rec_seq_.size() < static_cast<size_t>(L_ * N * H)) rec_seq_.resize(L_ * N * H);
  for (int64_t k = 0; k < L_; ++k) {
    saved_[k].rec_mask = rec ? rec_[static_cast<size_t>(k)] : nullptr;
    saved_[k].hdseq = rec ? rec_seq_.data() + k * N * H : nullptr;
  }
  const bool zoned = zone_p_h_ > 0 || zone_p_s_ > 0;
  if (zoned && zone_seq_.size() < static_cast<size_t>((L_ * N + 2 * B) * H))
    zone_seq_.resize(static_cast<size_t>((L_ * N + 2 * B) * H));
  for (int64_t k = 0; k < L_; ++k) {
    LayerSaved<Real>& sv = saved_[k];
    sv.zone_p_h = static_cast<Real>(zone_p_h_), sv.zone_p_s = static_cast<Real>(zone_p_s_);
    sv.zone_h = zoned ? zone_h_[static_cast<size_t>(k)] : nullptr;
    sv.zone_s = zoned ? zone_s_[static_cast<size_t>(k)] : nullptr;
    sv.zseq = zoned ? zone_seq_.data() + k * N * H : nullptr;
    sv.zone_dh = zoned ? zone_seq_.data() + L_ * N * H : nullptr;
    sv.zone_ds = zoned ? zone_seq_.data() + (L_ * N + B) * H : nullptr;
  }
  if (layer_norm_) {
    const int64_t per = 2 * N * 4 * H + N * H + 3 * N;
    const size_t need = static_cast<size_t>(L_ * per + N * 4 * H + N * H);
    if (ln_seq_.size() < need) ln_seq_.resize(need);
    Real* shared = ln_seq_.data() + L_ * per;
    for (int64_t k = 0; k < L_; ++k) {
      LayerSaved<Real>& sv = saved_[k];
      sv.ln_x = ln_seq_.data() + k * per;
      sv.ln_h = sv.ln_x + N * 4 * H, sv.ln_s = sv.ln_h + N * 4 * H, sv.ln_r = sv.ln_s + N * H;
      sv.ln_dzh = shared, sv.ln_dy = shared + N * 4 * H;
    }
  }
  if (proj_ > 0) {
    const size_t need = static_cast<size_t>(L_ * N * H + N * proj_ + N * H);
    if (proj_seq_.size() < need) proj_seq_.resize(need);
    Real* shared = proj_seq_.data() + L_ * N * H;
    for (int64_t k = 0; k < L_; ++k) {
      LayerSaved<Real>& sv = saved_[k];
      sv.proj = proj_, sv.mseq = proj_seq_.data() + k * N * H;
      sv.proj_dh = shared, sv.proj_dm = shared + N * proj_;
    }
  }
  locked_used_ = L_ > 1 && locked_[0] != nullptr;
  dropped_ = (drop_p_ > 0 || locked_used_) && L_ > 1;
  if (dropped_) {
    if (drop_.size() < static_cast<size_t>(2 * (L_ - 1) * N * H))
      drop_.resize(2 * (L_ - 1) * N * H);
    for (int64_t k = 0; k + 1 < L_ && !locked_used_; ++k)
      dropout_mask(drop_mask(k), T, B, out_width(k), shard_, drop_p_, drop_seed_,
                   static_cast<uint64_t>(k + 1));
  }
  const int S = team_ = threads(B);
  claims_.reserve(T + 1, S);
  BlasThreads one(1);  // the team is the parallelism; each GEMM inside runs one BLAS thread
  const TeamCall call(forward_tuner_, S, running_cap_, static_cast<double>(N));
  run_team(call.threads(), [&] {
    const TeamMember tm{team_thread(), team_threads(), S};
    const Real* xk = x;
    for (int64_t k = 0; k < L_; ++k) {
      const int64_t I = k == 0 ? X_ : out_width(k - 1), Hk = width(k), Pk = out_width(k);
      tm.for_shares(Hk, [&](const TeamSlice& ts) { layer_pack(saved_[k], w[k], ts, Hk); });
      layer_forward(saved_[k], xk, w[k], tm, T, B, I, Hk);
      xk = saved_[k].hseq + B * Pk;  // h_1 .. h_T [T,B,P_k] feed the next layer
      if (dropped_ && k + 1 < L_) {  // the next layer reads the dropped copy; h stays for s, h
        tm.for_shares(Hk, [&](const TeamSlice& ts) {
          apply_mask_rows(drop_input(k), xk, mask_of(k), Pk, mask_period(), ts.row0(N), ts.row1(N));
        });
        team_barrier();
        xk = drop_input(k);
      }
    }
  });
}

template <class Real>
void LstmStack<Real>::backward(Real* dx, const LayerGrads<Real>* g, const Real* dh_top,
                               const Real* x0, const LayerWeights<Real>* w, Real* dh0, Real* ds0,
                               const Real* dh_n, const Real* ds_n, const BackwardHooks* hooks) {
  const int64_t T = T_, B = B_;
  const int S = team_;  // the forward's shares (its claims are sized for them)
  reserve_backward();
  BlasThreads one(1);
  const TeamCall call(backward_tuner_, S, running_cap_, static_cast<double>(T * B));
  run_team(call.threads(), [&] {
    const TeamMember tm{team_thread(), team_threads(), S,
                        hooks && hooks->poll ? &hooks->poll : nullptr};
    const Real* dh_out = dh_top;
    Real* dx_buf = dh_a_;
    for (int64_t k = L_ - 1; k >= 0; --k) {
      const int64_t I = k == 0 ? X_ : out_width(k - 1), H = width(k), P = out_width(k);
      const int64_t h_at = h_offset(k, B), s_at = s_offset(k, B);
      const Real* x = k == 0 ? x0 : dropped_ ? drop_input(k - 1) : saved_[k - 1].hseq + B * I;
      Real* dxk = k > 0 ? dx_buf : dx;
      // dL/dh_T [B,P], dL/ds_T [B,H] from outside, or zeros; each share its units (without a
      // projection, P = H: the split the layer's own steps use)
      tm.for_shares(P, [&](const TeamSlice& ts) {
        for (int64_t r = 0; r < B; ++r) {
          if (dh_n)
            std::copy_n(dh_n + h_at + r * P + ts.j0, ts.n(), dh_rec_ + r * P + ts.j0);
          else
            std::fill_n(dh_rec_ + r * P + ts.j0, ts.n(), Real(0));
        }
      });
      tm.for_shares(H, [&](const TeamSlice& ts) {
        for (int64_t r = 0; r < B; ++r) {
          if (ds_n)
            std::copy_n(ds_n + s_at + r * H + ts.j0, ts.n(), ds_ + r * H + ts.j0);
          else
            std::fill_n(ds_ + r * H + ts.j0, ts.n(), Real(0));
        }
      });
      layer_backward(dxk, g[k], dz_, dh_rec_, ds_, dh_out, saved_[k], x, w[k], tm, T, B, I, H);
      tm.for_shares(P, [&](const TeamSlice& ts) {
        for (int64_t r = 0; r < B && dh0; ++r)
          std::copy_n(dh_rec_ + r * P + ts.j0, ts.n(), dh0 + h_at + r * P + ts.j0);
      });
      tm.for_shares(H, [&](const TeamSlice& ts) {
        for (int64_t r = 0; r < B && ds0; ++r)
          std::copy_n(ds_ + r * H + ts.j0, ts.n(), ds0 + s_at + r * H + ts.j0);
      });
      team_barrier();  // dx complete, dz free, before the layer below starts
      if (hooks && hooks->layer_done && tm.thread == 0) hooks->layer_done(k);
      if (dropped_ && k > 0) {  // d(dropped input) -> dL/dh of the layer below
        const int64_t N = T * B;
        tm.for_shares(I, [&](const TeamSlice& ts) {
          apply_mask_rows(dxk, dxk, mask_of(k - 1), I, mask_period(), ts.row0(N), ts.row1(N));
        });
        team_barrier();
      }
      dh_out = dxk;
      dx_buf = dx_buf == dh_a_ ? dh_b_ : dh_a_;
    }
  });
}

template <class Real>
void LstmStack<Real>::reserve_infer(int64_t T, int64_t B) {
  infer_T_ = T, infer_B_ = B;
  // The gates of a window of steps where every layer takes the claimed split (float32 on AVX-512
  // without layer norm or a projection, whose row split needs every row): the budget's rows, at
  // least the smallest window of this B (whole multiples of kWindowRows rows), at most all rows.
  const bool windows = fused() && !layer_norm_ && proj_ == 0;
  const int64_t least = std::min(T * B, window_steps(B) * B);
  if (!infer_arena_.empty() && T * B <= infer_capN_ && B <= infer_capB_ &&
      infer_precision_ == precision_ && infer_gate_rows_ >= least)
    return;
  infer_capN_ = std::max(T * B, infer_capN_), infer_capB_ = std::max(B, infer_capB_);
  infer_precision_ = precision_;
  const int64_t N = infer_capN_, H = H_, G = 4 * H, BH = infer_capB_ * H;
  const int64_t P = panel_room();
  const int64_t seqs = L_ > 1 ? 2 : 1;  // one h sequence feeds the next layer's
  infer_gate_rows_ = N;
  if (windows) {
    const int64_t budget =
        infer_budget_rows_ > 0 ? infer_budget_rows_ : kInferGateBytes / (G * int64_t{sizeof(Real)});
    infer_gate_rows_ = std::min(N, std::max(budget, least));
  }
  infer_arena_.assign(static_cast<size_t>(infer_gate_rows_ * G + G + 2 * BH + seqs * (N * H + BH) +
                                          2 * L_ * BH + P),
                      Real(0));
  Carver<Real> carve(infer_arena_.data());
  LayerSaved<Real>& sv = infer_layer_;
  sv.panels = nullptr;
  if (P > 0) {  // 64-byte aligned, as reserve's
    Real* raw = carve(P);
    sv.panels = raw + (64 - reinterpret_cast<uintptr_t>(raw) % 64) % 64 / sizeof(Real);
  }
  sv.gates = carve(infer_gate_rows_ * G), sv.bias = carve(G), sv.dbias = nullptr;
  sv.hseq = nullptr, sv.sseq = carve(2 * BH), sv.s_ring = true;
  sv.claims = fused() ? &claims_ : nullptr;
  sv.step_barrier = fused() ? &step_barrier_ : nullptr;
  infer_h_[0] = carve(N * H + BH), infer_h_[1] = L_ > 1 ? carve(N * H + BH) : nullptr;
  infer_last_ = carve(2 * L_ * BH);
}

template <class Real>
void LstmStack<Real>::infer(const Real* x, const LayerWeights<Real>* w, const Real* h0,
                            const Real* s0, int64_t T, int64_t B) {
  reserve_infer(T, B);
  const int64_t H = H_;  // the widest layer (buffer sizes)
  infer_layer_.b16 = bf16_buffers(T, B);
  if (layer_norm_ && infer_ln_.size() < static_cast<size_t>(T * B * (9 * H + 3)))
    infer_ln_.resize(static_cast<size_t>(T * B * (9 * H + 3)));
  if (proj_ > 0 && infer_proj_.size() < static_cast<size_t>(T * B * H))
    infer_proj_.resize(static_cast<size_t>(T * B * H));
  const int S = threads(B);  // forward's shares: the same split, the same bits
  claims_.reserve(T + 1, S);
  // The window: as many steps as the gates hold, whole multiples of the rows a window starts on.
  infer_layer_.window = 0;
  if (infer_gate_rows_ / B < T) {
    const int64_t align = window_steps(B);
    infer_layer_.window = infer_gate_rows_ / B / align * align;
  }
  BlasThreads one(1);
  const TeamCall call(infer_tuner_, S, running_cap_, static_cast<double>(T * B));
  run_team(call.threads(), [&] {
    const TeamMember tm{team_thread(), team_threads(), S};
    const Real* xk = x;
    for (int64_t k = 0; k < L_; ++k) {
      const int64_t Hk = width(k), Pk = out_width(k), BP = B * Pk;
      const int64_t h_at = h_offset(k, B), s_at = s_offset(k, B);
      LayerSaved<Real> sv = infer_layer_;
      sv.proj = proj_, sv.mseq = proj_ > 0 ? infer_proj_.data() : nullptr;
      sv.hseq = infer_h_[k % 2];
      // zoneout's expectation, in place (no zseq: nothing is kept for backward)
      sv.zone_p_h = static_cast<Real>(zone_p_h_), sv.zone_p_s = static_cast<Real>(zone_p_s_);
      if (layer_norm_) {  // one layer's buffers at a time
        const int64_t N = T * B;
        sv.ln_x = infer_ln_.data(), sv.ln_h = sv.ln_x + N * 4 * H;
        sv.ln_s = sv.ln_h + N * 4 * H, sv.ln_r = sv.ln_s + N * H;
      }
      // Each share its units of the bias, h0 and s0 (layer_forward's first barrier follows
      // before any step reads them); the layer before is done with all three (its last barrier).
      tm.for_shares(Hk, [&](const TeamSlice& ts) {
        layer_pack(sv, w[k], ts, Hk);
        for (int64_t r = 0; r < B; ++r) {
          Real* s = sv.sseq + r * Hk + ts.j0;
          if (s0)
            std::copy_n(s0 + s_at + r * Hk + ts.j0, ts.n(), s);
          else
            std::fill_n(s, ts.n(), Real(0));
        }
      });
      tm.for_shares(Pk, [&](const TeamSlice& ts) {
        for (int64_t r = 0; r < B; ++r) {
          Real* h = sv.hseq + r * Pk + ts.j0;
          if (h0)
            std::copy_n(h0 + h_at + r * Pk + ts.j0, ts.n(), h);
          else
            std::fill_n(h, ts.n(), Real(0));
        }
      });
      layer_forward(sv, xk, w[k], tm, T, B, k == 0 ? X_ : out_width(k - 1), Hk);
      Real* s_last = infer_last_ + h_offset(L_, B);
      tm.for_shares(Hk, [&](const TeamSlice& ts) {  // s_T before the next layer's s0
        const Real* s_T = cell_state_at(sv, T, B, Hk);
        for (int64_t r = 0; r < B; ++r)
          std::copy_n(s_T + r * Hk + ts.j0, ts.n(), s_last + s_at + r * Hk + ts.j0);
      });
      tm.for_shares(Pk, [&](const TeamSlice& ts) {  // h_T, before the next layer overwrites
        for (int64_t r = 0; r < B; ++r)
          std::copy_n(sv.hseq + T * BP + r * Pk + ts.j0, ts.n(),
                      infer_last_ + h_at + r * Pk + ts.j0);
      });
      // The next layer's s0 goes into the same ring, split by its own width: every copy first.
      team_barrier();
      xk = sv.hseq + BP;  // h_1 .. h_T [T,B,P_k] feed the next layer
    }
  });
}

template class LstmStack<float>;
template class LstmStack<double>;

}  // namespace lstmgrad::cpu
