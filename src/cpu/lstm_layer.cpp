#include "cpu/lstm_layer.hpp"

#include <algorithm>
#include <tuple>
#include <type_traits>
#include <utility>

#include "core/gates.hpp"
#include "cpu/blas.hpp"
#include "cpu/fast_gates.hpp"
#include "cpu/panel_gemm.hpp"
#include "cpu/row_layer.hpp"

namespace lstmgrad::cpu {

namespace {

// float32 takes the vectorised kernels; float64 stays the std:: reference.
template <class Real>
void step_forward(Real* z, int64_t ldz, int64_t gs, const Real* bias, const Real* unit, Real* s,
                  Real* h, const Real* s_prev, int64_t ld, int64_t B, int64_t n) {
  if constexpr (std::is_same_v<Real, float>) {
    fast_gates_forward(z, ldz, gs, bias, unit, s, h, s_prev, ld, B, n);
  } else {
    core::gates_forward(z, ldz, gs, bias, unit, s, h, s_prev, ld, B, n);
  }
}

template <class Real>
void step_backward(Real* dz, int64_t ldz, int64_t gs, Real* ds, const Real* dh_out,
                   const Real* dh_rec, const Real* gates, const Real* s, const Real* s_prev,
                   const Real* unit, int64_t ld, int64_t B, int64_t n) {
  if constexpr (std::is_same_v<Real, float>) {
    fast_gates_backward(dz, ldz, gs, ds, dh_out, dh_rec, gates, s, s_prev, unit, ld, B, n);
  } else {
    core::gates_backward(dz, ldz, gs, ds, dh_out, dh_rec, gates, s, s_prev, unit, ld, B, n);
  }
}

// Recurrent dropout: hd = h * mask over rows [0, B) and units [j, j + n) (row stride H).
template <class Real>
void mask_units(Real* hd, const Real* h, const Real* mask, int64_t B, int64_t H, int64_t j,
                int64_t n) {
  for (int64_t r = 0; r < B; ++r)
    for (int64_t c = j; c < j + n; ++c) hd[r * H + c] = h[r * H + c] * mask[r * H + c];
}

// Zoneout after step t's cell, rows [0, B) and units [j, j + n): the cell wrote s~ at st (zseq,
// or in place at s) and h~ at h; s = d_s s_prev + (1 - d_s) s~, h = d_h h_prev + (1 - d_h) h~.
// With masks of 0 and 1 the result is exactly one of the two.
template <class Real>
void zoneout_forward(const LayerSaved<Real>& sv, int64_t t, int64_t B, int64_t H, int64_t j,
                     int64_t n) {
  const int64_t BH = B * H;
  Real* s = cell_state_at(sv, t + 1, B, H);
  const Real* sp = cell_state_at(sv, t, B, H);
  const Real* st = sv.zseq ? sv.zseq + t * BH : s;
  Real* h = sv.hseq + (t + 1) * BH;
  const Real* hp = sv.hseq + t * BH;
  const Real* mh = sv.zone_h ? sv.zone_h + t * BH : nullptr;
  const Real* ms = sv.zone_s ? sv.zone_s + t * BH : nullptr;
  for (int64_t r = 0; r < B; ++r)
    for (int64_t i = r * H + j; i < r * H + j + n; ++i) {
      const Real ds = ms ? ms[i] : sv.zone_p_s, dh = mh ? mh[i] : sv.zone_p_h;
      s[i] = ds * sp[i] + (Real(1) - ds) * st[i];
      h[i] = dh * hp[i] + (Real(1) - dh) * h[i];
    }
}

// Where step t's cell writes its state: s_t, or s~_t with zoneout in a training forward.
template <class Real>
Real* cell_output_state(const LayerSaved<Real>& sv, int64_t t, int64_t B, int64_t H) {
  return sv.zseq ? sv.zseq + t * B * H : cell_state_at(sv, t + 1, B, H);
}

// Zoneout's backward around step t's cell, units [j, j + n) of every row. Before the cell's pass:
// dh (in: dL/dh_t without the zoneout path; out: what the cell's h~ gets) and ds (in: dL/ds_t;
// out: the cell's ds~) are split by the masks, the kept parts into zone_dh and zone_ds. dh_out
// is added in here (the cell's pass then gets none).
template <class Real>
void zoneout_backward_in(const LayerSaved<Real>& sv, int64_t t, Real* dh, const Real* dh_out,
                         Real* ds, int64_t B, int64_t H, int64_t j, int64_t n) {
  const int64_t BH = B * H;
  const Real* mh = sv.zone_h ? sv.zone_h + t * BH : nullptr;
  const Real* ms = sv.zone_s ? sv.zone_s + t * BH : nullptr;
  for (int64_t r = 0; r < B; ++r)
    for (int64_t i = r * H + j; i < r * H + j + n; ++i) {
      const Real d_h = mh ? mh[i] : sv.zone_p_h, d_s = ms ? ms[i] : sv.zone_p_s;
      // h_t = d_h h_{t-1} + (1 - d_h) h~_t: dL/dh_t in full, then its two shares
      const Real g = dh[i] + sv.zone_dh[i] + (dh_out ? dh_out[t * BH + i] : Real(0));
      sv.zone_dh[i] = d_h * g, dh[i] = (Real(1) - d_h) * g;
      sv.zone_ds[i] = d_s * ds[i], ds[i] = (Real(1) - d_s) * ds[i];
    }
}

// After the cell's pass: dL/ds_{t-1} = the cell's part + d_s dL/ds_t (kept = zone_ds); after
// the last step, dL/dh_0 = the product's part + d_h dL/dh_1 (kept = zone_dh).
template <class Real>
void zoneout_backward_out(const LayerSaved<Real>& sv, Real* d, int64_t B, int64_t H, int64_t j,
                          int64_t n, const Real* kept = nullptr) {
  if (!kept) kept = sv.zone_ds;
  for (int64_t r = 0; r < B; ++r)
    for (int64_t i = r * H + j; i < r * H + j + n; ++i) d[i] += kept[i];
}

// What step t's recurrent product reads: h_t, or h_t times the recurrent dropout mask.
template <class Real>
const Real* product_input(const LayerSaved<Real>& saved, int64_t t, int64_t B, int64_t H) {
  return (saved.rec_mask ? saved.hdseq : saved.hseq) + t * B * H;
}

// The claimed split (lstm_layer.hpp): forward, units in groups of 16 (four gates: two pairs of
// panels for the kernel); backward, groups of 32 (the columns of U: one pair of panels, not a
// single panel per tile). The last group may be narrower.
constexpr int64_t kForwardGroup = kPanelWidth, kBackwardGroup = 2 * kPanelWidth;

int64_t unit_groups(int64_t H, int64_t width) {
  return (H + width - 1) / width;
}

// Group u's packed weights, at panels + u * 4 H width: forward, the four gates' rows of its units
// ([4][H][16]); backward, its units' columns of U ([2][4H][16]).
PanelLayout group_forward(int64_t u, int64_t H) {
  return {4, std::min(kForwardGroup, H - u * kForwardGroup), H, H};
}
PanelLayout group_backward(int64_t u, int64_t H) {
  return {1, std::min(kBackwardGroup, H - u * kBackwardGroup), 0, 4 * H};
}

// bf16_t elements of one group's bf16 panels (Bf16Buffers::u_panels).
int64_t bf16_group_size(int64_t H, bool forward) {
  return forward ? 4 * bf16_panel_size(H) : 2 * bf16_panel_size(4 * H);
}

// Packs this thread's shares of the groups (in bf16 where saved.b16 is set, and then in forward
// also its units of h_0 into the ring) and resets its shares of the step sets; the caller's
// barrier follows before any group is taken.
void pack_groups(const LayerSaved<float>& saved, const float* W_hh, const TeamMember& tm, int64_t T,
                 int64_t B, int64_t H, bool forward) {
  const int64_t width = forward ? kForwardGroup : kBackwardGroup, per = 4 * H * width;
  const int64_t ng = unit_groups(H, width);
  const Bf16Buffers* b16 = saved.b16;
  tm.for_shares(H, [&](const TeamSlice& ts) {
    for (int64_t u = ng * ts.id / ts.size; u < ng * (ts.id + 1) / ts.size; ++u) {
      const PanelLayout layout = forward ? group_forward(u, H) : group_backward(u, H);
      const float* W = forward ? W_hh + u * width * H : W_hh + u * width;
      if (b16)
        pack_bf16_panels(b16->u_panels + u * bf16_group_size(H, forward), W, H, forward, layout, 0,
                         layout.panels());
      else
        pack_panels(saved.panels + u * per, W, H, forward, layout);
    }
    if (b16 && forward)
      to_bf16_rows(b16->h_ring, even(H), product_input(saved, 0, B, H), H, B, ts.j0, ts.j1, H);
    if (!forward)  // the bias gradient, summed by the steps (claimed_backward): its units
      for (int64_t q = 0; q < 4; ++q) std::fill_n(saved.dbias + q * H + ts.j0, ts.n(), 0.0f);
    for (int64_t t = 0; t <= T; ++t) saved.claims->reset(t, ts.id, ts.size, ng);
  });
}

// The groups this thread takes at step set s, until none is left: its own share's first (the
// share with its number), then those left in the others'.
template <class F>
void for_each_claimed(const LayerSaved<float>& saved, int64_t s, const TeamMember& tm, F&& run) {
  for (int64_t u = saved.claims->take(s, tm.thread, tm.shares); u >= 0;
       u = saved.claims->take(s, tm.thread, tm.shares))
    run(u);
}

// Steps [t0, t1) of layer_forward, claimed (the groups packed, z0 the gates of step t0 holding
// x W_ih^T): each group's h_prev U^T and its gate pass in one kernel, the sums in registers.
void claimed_steps(const LayerSaved<float>& saved, const LayerWeights<float>& w,
                   const TeamMember& tm, int64_t t0, int64_t t1, float* z0, int64_t T, int64_t B,
                   int64_t H) {
  const int64_t G = 4 * H, per = 4 * H * kForwardGroup, Hp = even(H);
  const Bf16Buffers* b16 = saved.b16;
  for (int64_t t = t0; t < t1; ++t) {
    float* zt = z0 + (t - t0) * B * G;
    const float* h_prev = product_input(saved, t, B, H);
    float* h = saved.hseq + (t + 1) * B * H;
    for_each_claimed(saved, t, tm, [&](int64_t u) {
      const int64_t j = u * kForwardGroup, n = std::min(kForwardGroup, H - j);
      auto step = [&](const auto* hp, int64_t ldh, const auto* panels) {
        fused_step_forward(B, hp, ldh, H, panels, zt + j, G, H, saved.bias + j,
                           w.unit ? w.unit + j : nullptr, cell_output_state(saved, t, B, H) + j,
                           h + j, cell_state_at(saved, t, B, H) + j, H, n);
      };
      if (b16)
        step(b16->h_ring + t % 2 * B * Hp, Hp, b16->u_panels + u * bf16_group_size(H, true));
      else
        step(h_prev, H, saved.panels + u * per);
      if (saved.zoned()) zoneout_forward(saved, t, B, H, j, n);
      if (saved.rec_mask && t + 1 < T)
        mask_units(saved.hdseq + (t + 1) * B * H, h, saved.rec_mask, B, H, j, n);
      if (b16 && t + 1 < T)  // the next step's operand, these units
        to_bf16_rows(b16->h_ring + (t + 1) % 2 * B * Hp, Hp, product_input(saved, t + 1, B, H), H,
                     B, j, j + n, H);
    });
    saved.step_barrier->wait(tm.threads);  // h_t complete before any thread's next GEMM reads it
  }
}

// layer_forward's steps, claimed (z holds x W_ih^T for this thread's rows; no barrier yet).
void claimed_forward(const LayerSaved<float>& saved, const LayerWeights<float>& w,
                     const TeamMember& tm, int64_t T, int64_t B, int64_t H) {
  pack_groups(saved, w.W_hh, tm, T, B, H, true);
  team_barrier();  // every row of z, every group packed, the shares reset
  claimed_steps(saved, w, tm, 0, T, saved.gates, T, B, H);
}

// layer_backward's steps, claimed: each group takes dh_rec (its units) = dz_{t+1} U and its gate
// pass at t in one kernel (the sums stay in registers), so the two never need a barrier between
// them. Each group also adds its dz_t into the bias gradient (saved.dbias, zeroed by
// pack_groups). Ends with dh_rec = dz_0 U (dL/dh0) and a barrier: dh_rec, ds and the bias
// gradient complete for the caller.
void claimed_backward(float* dz, float* dh_rec, float* ds, const float* dh_out,
                      const LayerSaved<float>& saved, const LayerWeights<float>& w,
                      const TeamMember& tm, int64_t T, int64_t B, int64_t H) {
  const int64_t G = 4 * H, per = 4 * H * kBackwardGroup;
  const Bf16Buffers* b16 = saved.b16;
  const int64_t per16 = bf16_group_size(H, false);
  pack_groups(saved, w.W_hh, tm, T, B, H, false);
  team_barrier();  // every group packed, dh_rec and ds set by the caller, the shares reset
  for (int64_t t = T - 1; t >= 0; --t) {
    tm.poll_outside();
    float* dzt = dz + t * B * G;
    const bf16_t* dzn16 = b16 ? b16->a_rows + (t + 1) * B * G : nullptr;  // dz_{t+1}
    for_each_claimed(saved, t, tm, [&](int64_t u) {
      const int64_t j = u * kBackwardGroup, n = std::min(kBackwardGroup, H - j);
      const float* dho = dh_out ? dh_out + t * B * H + j : nullptr;
      const float* gates = saved.gates + t * B * G + j;
      const float* s = saved.sseq + (t + 1) * B * H + j;
      const float* s_prev = saved.sseq + t * B * H + j;
      const float* unit = w.unit ? w.unit + j : nullptr;
      if (saved.zoned()) {  // dh_rec stored, split by zoneout's masks, then the cell's pass
        if (t + 1 < T) {
          if (b16)
            bf16_gemm(B, dzn16, G, b16->u_panels + u * per16, group_backward(u, H), dh_rec + j, H,
                      false);
          else
            panel_gemm(B, dzt + B * G, G, saved.panels + u * per, group_backward(u, H), dh_rec + j,
                       H, false);
          if (saved.rec_mask) mask_units(dh_rec, dh_rec, saved.rec_mask, B, H, j, n);
        }
        zoneout_backward_in(saved, t, dh_rec, dh_out, ds, B, H, j, n);
        fast_gates_backward(dzt + j, G, H, ds + j, nullptr, dh_rec + j, gates,
                            saved.zseq + t * B * H + j, s_prev, unit, H, B, n);
        zoneout_backward_out(saved, ds, B, H, j, n);
      } else if (t + 1 < T) {  // z_{t+1} = ... + h_t U^T: dh_rec = dz_{t+1} U, in registers
        auto step = [&](const auto* dzn, const auto* panels) {
          fused_step_backward(B, dzn, G, G, panels, dzt + j, H, ds + j, dho, gates, s, s_prev, unit,
                              saved.rec_mask ? saved.rec_mask + j : nullptr, H, n);
        };
        if (b16)
          step(dzn16, b16->u_panels + u * per16);
        else
          step(dzt + B * G, saved.panels + u * per);
      } else {  // dh_rec from the caller
        fast_gates_backward(dzt + j, G, H, ds + j, dho, dh_rec + j, gates, s, s_prev, unit, H, B,
                            n);
      }
      // z = ... + b_ih + b_hh: the bias gradient is the column sums of dz, added here while dz_t
      // is in cache (each column over t = T-1 .. 0, rows in order: the same for any team).
      for (int64_t q = 0; q < 4; ++q)
        for (int64_t r = 0; r < B; ++r) {
          const float* d = dzt + r * G + q * H + j;
          float* db = saved.dbias + q * H + j;
          for (int64_t i = 0; i < n; ++i) db[i] += d[i];
        }
      if (b16)  // dz_t of these units for the step before, dL/dh0 and dx
        for (int64_t q = 0; q < 4; ++q)
          to_bf16_rows(b16->a_rows + t * B * G + q * H, G, dzt + q * H, G, B, j, j + n, G);
    });
    saved.step_barrier->wait(tm.threads);  // dz_t complete before any thread's GEMM reads it
  }
  for_each_claimed(saved, T, tm, [&](int64_t u) {
    if (b16)
      bf16_gemm(B, b16->a_rows, G, b16->u_panels + u * per16, group_backward(u, H),
                dh_rec + u * kBackwardGroup, H, false);
    else
      panel_gemm(B, dz, G, saved.panels + u * per, group_backward(u, H),
                 dh_rec + u * kBackwardGroup, H, false);
    const int64_t j = u * kBackwardGroup, n = std::min(kBackwardGroup, H - j);
    if (saved.rec_mask) mask_units(dh_rec, dh_rec, saved.rec_mask, B, H, j, n);
    if (saved.zoned()) zoneout_backward_out(saved, dh_rec, B, H, j, n, saved.zone_dh);
  });
  team_barrier();  // dh_rec (dL/dh0) and ds (dL/ds0) complete
}

// layer_forward's input projection with bf16 operands: W_ih^T in panels and x in rows (each
// share its part), then z = x W_ih^T, each share its rows; the rows of h_0 * rec_mask as
// layer_forward's.
// Its operands: W_ih^T in panels and x in rows, each share its part (a barrier must follow).
void bf16_projection_operands(const LayerSaved<float>& saved, const float* x,
                              const LayerWeights<float>& w, const TeamSlice& ts, int64_t N,
                              int64_t B, int64_t I, int64_t H) {
  const int64_t G = 4 * H, Ip = even(I);
  const Bf16Buffers& b = *saved.b16;
  bf16_pack_share(b.w_panels, w.W_ih, I, true, I, G, ts);  // op(W) = W_ih^T: K = I, G columns
  const int64_t r0 = ts.row0(N), r1 = ts.row1(N);
  to_bf16_rows(b.a_rows + r0 * Ip, Ip, x + r0 * I, I, r1 - r0, 0, I, I);
  if (saved.rec_mask) mask_units(saved.hdseq, saved.hseq, saved.rec_mask, B, H, ts.j0, ts.n());
}

// Rows [r0, r1) of z = x W_ih^T into z (z's row r0 first) from the bf16 operands.
void bf16_projection_rows(const LayerSaved<float>& saved, float* z, int64_t r0, int64_t r1,
                          int64_t I, int64_t H) {
  const Bf16Buffers& b = *saved.b16;
  const int64_t Ip = even(I);
  if (r1 > r0)
    bf16_tiles(r1 - r0, I, PairForm::rows, b.a_rows + r0 * Ip, Ip, b.w_panels, bf16_panel_size(I),
               4 * H, z, 4 * H, kPanelWidth, Start::zero, nullptr);
}

void bf16_input_projection(const LayerSaved<float>& saved, const float* x,
                           const LayerWeights<float>& w, const TeamMember& tm, int64_t N, int64_t B,
                           int64_t I, int64_t H) {
  tm.for_shares(
      H, [&](const TeamSlice& ts) { bf16_projection_operands(saved, x, w, ts, N, B, I, H); });
  team_barrier();  // every panel of W_ih^T
  tm.for_shares(H, [&](const TeamSlice& ts) {
    const int64_t r0 = ts.row0(N), r1 = ts.row1(N);
    bf16_projection_rows(saved, saved.gates + r0 * 4 * H, r0, r1, I, H);
  });
}

// layer_forward for inference with a window of gates (LayerSaved::window steps): the input
// projection of one window's rows (each share its rows, then a barrier), then its steps, window
// after window. Windows start on multiples of kWindowRows rows, where the shares' row edges fall
// on multiples of 16 too: in bf16 every row goes through the same kernel tile as in the
// projection of all rows at once (the same bits as forward's); in float32 the BLAS may sum a row
// in another order when a call's rows change (OpenBLAS's Haswell kernels), so there the results
// agree with forward's to float32 rounding (docs/design.md, "The engines").
void windowed_forward(const LayerSaved<float>& saved, const float* x, const LayerWeights<float>& w,
                      const TeamMember& tm, int64_t T, int64_t B, int64_t I, int64_t H) {
  const int64_t G = 4 * H;
  if (saved.b16)
    tm.for_shares(
        H, [&](const TeamSlice& ts) { bf16_projection_operands(saved, x, w, ts, T * B, B, I, H); });
  pack_groups(saved, w.W_hh, tm, T, B, H, true);
  team_barrier();  // the operands and the groups packed, the shares reset
  for (int64_t t0 = 0; t0 < T; t0 += saved.window) {
    const int64_t t1 = std::min(T, t0 + saved.window), rows = (t1 - t0) * B, base = t0 * B;
    tm.for_shares(H, [&](const TeamSlice& ts) {
      const int64_t r0 = ts.row0(rows), r1 = ts.row1(rows);
      if (saved.b16)
        bf16_projection_rows(saved, saved.gates + r0 * G, base + r0, base + r1, I, H);
      else if (r1 > r0)
        gemm(Tr::N, Tr::T, r1 - r0, G, I, 1.0f, x + (base + r0) * I, I, w.W_ih, I, 0.0f,
             saved.gates + r0 * G, G);
    });
    team_barrier();  // the window's rows of z (the last window's steps are done: its barrier)
    claimed_steps(saved, w, tm, t0, t1, saved.gates, T, B, H);
  }
}

// layer_backward's operands for the weight gradients and dx in bf16, each share its part: the
// product's inputs h and x in panels over the N positions, W_ih's panels (dx) and dz^T's gate rows
// in blocks form (dz itself is in rows form already: the steps wrote it). The caller's barrier
// follows.
void bf16_grad_operands(const float* dz, bool dx, const LayerSaved<float>& saved, const float* x,
                        const LayerWeights<float>& w, const TeamSlice& ts, int64_t N, int64_t B,
                        int64_t I, int64_t H) {
  const int64_t G = 4 * H;
  const Bf16Buffers& b = *saved.b16;
  bf16_pack_share(b.h_panels, product_input(saved, 0, B, H), H, false, N, H, ts);
  bf16_pack_share(b.x_panels, x, I, false, N, I, ts);
  if (dx) bf16_pack_share(b.w_panels, w.W_ih, I, false, G, I, ts);
  const auto [g0, g1] = bf16_block_rows(G, ts);
  if (g1 > g0) to_bf16_blocks(b.dz_blocks + g0 * even(N), dz, G, N, g0, g1);
}

}  // namespace

void bf16_pack_share(bf16_t* dst, const float* W, int64_t ldw, bool trans, int64_t K, int64_t cols,
                     const TeamSlice& ts) {
  const PanelLayout layout{1, cols, 0, K};
  const int64_t np = layout.panels();
  pack_bf16_panels(dst, W, ldw, trans, layout, np * ts.id / ts.size, np * (ts.id + 1) / ts.size);
}

std::pair<int64_t, int64_t> bf16_block_rows(int64_t M, const TeamSlice& ts) {
  const int64_t nb = (M + kBf16Rows - 1) / kBf16Rows;
  return {std::min(M, kBf16Rows * split_edge(nb, ts.id, ts.size)),
          std::min(M, kBf16Rows * split_edge(nb, ts.id + 1, ts.size))};
}

template <class Real>
int64_t panel_floats(int64_t H) {
  if constexpr (!std::is_same_v<Real, float>) {
    return 0;
  } else {
    if (!panel_gemm_available()) return 0;
    const int64_t padded = (H + kPanelWidth - 1) / kPanelWidth * kPanelWidth;
    return 4 * H * padded + kPanelWidth;
  }
}

template <class Real>
void layer_pack(const LayerSaved<Real>& saved, const LayerWeights<Real>& w, const TeamSlice& ts,
                int64_t H) {
  for (int64_t q = 0; q < 4; ++q)
    for (int64_t j = q * H + ts.j0; j < q * H + ts.j1; ++j) saved.bias[j] = w.b_ih[j] + w.b_hh[j];
}

template <class Real>
void layer_forward(const LayerSaved<Real>& saved, const Real* x, const LayerWeights<Real>& w,
                   const TeamMember& tm, int64_t T, int64_t B, int64_t I, int64_t H) {
  if (w.ln || w.W_hr) return row_layer_forward(saved, x, w, tm, T, B, I, H);
  const int64_t G = 4 * H, N = T * B;
  Real* z = saved.gates;
  if constexpr (std::is_same_v<Real, float>) {
    if (saved.window > 0 && saved.window < T && (saved.panels || saved.b16))
      return windowed_forward(saved, x, w, tm, T, B, I, H);
    if (saved.b16) {
      bf16_input_projection(saved, x, w, tm, N, B, I, H);
      return claimed_forward(saved, w, tm, T, B, H);
    }
  }
  // z = x W_ih^T for all T*B positions at once (the hoisted input projection), each share's rows;
  // the bias is added in the gate pass.
  tm.for_shares(H, [&](const TeamSlice& ts) {
    const int64_t r0 = ts.row0(N), r1 = ts.row1(N);
    if (r1 > r0)
      gemm(Tr::N, Tr::T, r1 - r0, G, I, Real(1), x + r0 * I, I, w.W_ih, I, Real(0), z + r0 * G, G);
    if (saved.rec_mask) mask_units(saved.hdseq, saved.hseq, saved.rec_mask, B, H, ts.j0, ts.n());
  });
  if constexpr (std::is_same_v<Real, float>) {
    if (saved.panels) return claimed_forward(saved, w, tm, T, B, H);
  }
  team_barrier();  // every row of z complete
  for (int64_t t = 0; t < T; ++t) {
    Real* zt = z + t * B * G;
    const Real* h_prev = product_input(saved, t, B, H);
    tm.for_shares(H, [&](const TeamSlice& ts) {
      const int64_t n = ts.n(), j0 = ts.j0;
      if (n == 0) return;
      // z_q += h_prev U_q^T, the share's units of the four gates
      for (int64_t q = 0; q < 4; ++q)
        gemm(Tr::N, Tr::T, B, n, H, Real(1), h_prev, H, w.W_hh + (q * H + j0) * H, H, Real(1),
             zt + q * H + j0, G);
      step_forward(zt + j0, G, H, saved.bias + j0, w.unit ? w.unit + j0 : nullptr,
                   cell_output_state(saved, t, B, H) + j0, saved.hseq + (t + 1) * B * H + j0,
                   cell_state_at(saved, t, B, H) + j0, H, B, n);
      if (saved.zoned()) zoneout_forward(saved, t, B, H, j0, n);
      if (saved.rec_mask && t + 1 < T)
        mask_units(saved.hdseq + (t + 1) * B * H, saved.hseq + (t + 1) * B * H, saved.rec_mask, B,
                   H, j0, n);
    });
    team_barrier();  // h_t complete before any thread's next GEMM reads it
  }
}

template <class Real>
void layer_backward(Real* dx, const LayerGrads<Real>& g, Real* dz, Real* dh_rec, Real* ds,
                    const Real* dh_out, const LayerSaved<Real>& saved, const Real* x,
                    const LayerWeights<Real>& w, const TeamMember& tm, int64_t T, int64_t B,
                    int64_t I, int64_t H) {
  if (w.ln || w.W_hr)
    return row_layer_backward(dx, g, dz, dh_rec, ds, dh_out, saved, x, w, tm, T, B, I, H);
  const int64_t G = 4 * H, N = T * B;
  if (saved.zoned())  // nothing kept from a step after T yet
    tm.for_shares(H, [&](const TeamSlice& ts) {
      for (int64_t r = 0; r < B; ++r) std::fill_n(saved.zone_dh + r * H + ts.j0, ts.n(), Real(0));
    });
  bool claimed = false;
  if constexpr (std::is_same_v<Real, float>) {
    claimed = saved.panels != nullptr || saved.b16 != nullptr;
    if (claimed) claimed_backward(dz, dh_rec, ds, dh_out, saved, w, tm, T, B, H);
  }
  for (int64_t t = T - 1; t >= 0 && !claimed; --t) {
    tm.poll_outside();
    Real* dzt = dz + t * B * G;
    tm.for_shares(H, [&](const TeamSlice& ts) {
      const int64_t j0 = ts.j0, n = ts.n();
      if (n == 0) return;
      const Real* unit = w.unit ? w.unit + j0 : nullptr;
      if (saved.zoned()) {
        zoneout_backward_in(saved, t, dh_rec, dh_out, ds, B, H, j0, n);
        step_backward(dzt + j0, G, H, ds + j0, static_cast<const Real*>(nullptr), dh_rec + j0,
                      saved.gates + t * B * G + j0, saved.zseq + t * B * H + j0,
                      saved.sseq + t * B * H + j0, unit, H, B, n);
        zoneout_backward_out(saved, ds, B, H, j0, n);
      } else {
        step_backward(dzt + j0, G, H, ds + j0, dh_out ? dh_out + t * B * H + j0 : nullptr,
                      dh_rec + j0, saved.gates + t * B * G + j0, saved.sseq + (t + 1) * B * H + j0,
                      saved.sseq + t * B * H + j0, unit, H, B, n);
      }
    });
    team_barrier();  // dz_t complete before any thread's GEMM reads it
    // z_t = ... + h_{t-1} U^T: dh_{t-1} (recurrent part) = dz_t U, each share's columns.
    tm.for_shares(H, [&](const TeamSlice& ts) {
      if (ts.n() == 0) return;
      gemm(Tr::N, Tr::N, B, ts.n(), G, Real(1), dzt, G, w.W_hh + ts.j0, H, Real(0), dh_rec + ts.j0,
           H);
      // z_t reads h_{t-1} * mask: dh_{t-1} = (dz_t U) * mask
      if (saved.rec_mask) mask_units(dh_rec, dh_rec, saved.rec_mask, B, H, ts.j0, ts.n());
      // after the first step: dL/dh_0 also gets zoneout's kept share of dL/dh_1
      if (t == 0 && saved.zoned())
        zoneout_backward_out(saved, dh_rec, B, H, ts.j0, ts.n(), saved.zone_dh);
    });
  }
  bool b16 = false;
  if constexpr (std::is_same_v<Real, float>) {
    b16 = saved.b16 != nullptr;
    if (b16) {
      tm.for_shares(H, [&](const TeamSlice& ts) {
        bf16_grad_operands(dz, dx != nullptr, saved, x, w, ts, N, B, I, H);
      });
      team_barrier();  // every panel
    }
  }
  tm.for_shares(H, [&](const TeamSlice& ts) {
    // Weight gradients over all steps at once (dz is complete: the last barrier above), each
    // share a contiguous range of the 4H weight rows, one GEMM each (M = 4H / P rather than four
    // of H / P): dW_hh += dz^T h_prev (as the product read it); dW_ih and dx in input_grads.
    auto [g0, g1] = std::pair(split_edge(G, ts.id, ts.size), split_edge(G, ts.id + 1, ts.size));
    if constexpr (std::is_same_v<Real, float>) {
      if (b16) std::tie(g0, g1) = bf16_block_rows(G, ts);
    }
    if (g1 > g0) {
      if constexpr (std::is_same_v<Real, float>) {
        if (b16) {  // the same products with bf16 operands (bf16_grad_operands)
          const Bf16Buffers& b = *saved.b16;
          bf16_tiles(g1 - g0, N, PairForm::blocks, b.dz_blocks + g0 * even(N), bf16_block_size(N),
                     b.h_panels, bf16_panel_size(N), H, g.dW_hh + g0 * H, H, kPanelWidth,
                     Start::accumulate, nullptr);
          bf16_tiles(g1 - g0, N, PairForm::blocks, b.dz_blocks + g0 * even(N), bf16_block_size(N),
                     b.x_panels, bf16_panel_size(N), I, g.dW_ih + g0 * I, I, kPanelWidth,
                     Start::accumulate, nullptr);
        }
      }
      if (!b16)
        gemm(Tr::T, Tr::N, g1 - g0, H, N, Real(1), dz + g0, G, product_input(saved, 0, B, H), H,
             Real(1), g.dW_hh + g0 * H, H);
      // z = ... + b_ih + b_hh: both biases receive the same gradient, the column sums of dz
      // (the claimed steps summed them as they went).
      Real* db = saved.dbias + g0;
      if (!claimed) {
        std::fill_n(db, g1 - g0, Real(0));
        for (int64_t r = 0; r < N; ++r) {
          const Real* dzr = dz + r * G + g0;
          for (int64_t k = 0; k < g1 - g0; ++k) db[k] += dzr[k];
        }
      }
      for (int64_t k = 0; k < g1 - g0; ++k) g.db_ih[g0 + k] += db[k], g.db_hh[g0 + k] += db[k];
    }
    // The CellUnit weights' gradients (peepholes: z = ... + p s), the share's units, over all
    // positions in order: the same sums for any team size.
    if (w.unit && ts.n() > 0)
      core::unit_grads(g.dunit + ts.j0, H, dz + ts.j0, G, saved.sseq + ts.j0,
                       (saved.zseq ? saved.zseq : saved.sseq + B * H) + ts.j0, H, N, ts.n());
    if (!b16) {
      input_grads(dx, g.dW_ih, dz, x, w.W_ih, ts, N, I, H);  // all of dz: the last barrier above
      return;
    }
    if constexpr (std::is_same_v<Real, float>) {
      const int64_t r0 = ts.row0(N), r1 = ts.row1(N);
      if (dx && r1 > r0)
        bf16_tiles(r1 - r0, G, PairForm::rows, saved.b16->a_rows + r0 * G, G, saved.b16->w_panels,
                   bf16_panel_size(G), I, dx + r0 * I, I, kPanelWidth, Start::zero, nullptr);
    }
  });
}

template <class Real>
void input_grads(Real* dx, Real* dW_ih, const Real* dz, const Real* x, const Real* W_ih,
                 const TeamSlice& ts, int64_t N, int64_t I, int64_t H) {
  const int64_t G = 4 * H;
  const int64_t g0 = split_edge(G, ts.id, ts.size), g1 = split_edge(G, ts.id + 1, ts.size);
  if (g1 > g0)
    gemm(Tr::T, Tr::N, g1 - g0, I, N, Real(1), dz + g0, G, x, I, Real(1), dW_ih + g0 * I, I);
  const int64_t r0 = ts.row0(N), r1 = ts.row1(N);
  if (dx && r1 > r0)
    gemm(Tr::N, Tr::N, r1 - r0, I, G, Real(1), dz + r0 * G, G, W_ih, I, Real(0), dx + r0 * I, I);
}

#define LSTMGRAD_INSTANTIATE(Real)                                                          \
  template int64_t panel_floats<Real>(int64_t);                                             \
  template void layer_pack<Real>(const LayerSaved<Real>&, const LayerWeights<Real>&,        \
                                 const TeamSlice&, int64_t);                                \
  template void layer_forward<Real>(const LayerSaved<Real>&, const Real*,                   \
                                    const LayerWeights<Real>&, const TeamMember&, int64_t,  \
                                    int64_t, int64_t, int64_t);                             \
  template void layer_backward<Real>(Real*, const LayerGrads<Real>&, Real*, Real*, Real*,   \
                                     const Real*, const LayerSaved<Real>&, const Real*,     \
                                     const LayerWeights<Real>&, const TeamMember&, int64_t, \
                                     int64_t, int64_t, int64_t);                            \
  template void input_grads<Real>(Real*, Real*, const Real*, const Real*, const Real*,      \
                                  const TeamSlice&, int64_t, int64_t, int64_t);
LSTMGRAD_INSTANTIATE(float)
LSTMGRAD_INSTANTIATE(double)
#undef LSTMGRAD_INSTANTIATE

}  // namespace lstmgrad::cpu
