// One LSTM layer scanned over T steps (PyTorch ATen's cell -> layer -> stack split), run by a
// team of threads. Sizes: T steps, B rows, I input width, H hidden width, G = 4H.
//
// The per-step work (h_prev U^T and the gate pass in forward; dz U and the gate pass in backward)
// is split by hidden units, then one barrier per step (h_t complete in forward, dz_t complete in
// backward). Two ways:
//   - static (float64, or no AVX-512): share p of P owns units [j0, j1) of every gate; its thread
//     runs the share's four gates' GEMMs (the BLAS on one thread) and its slice of the gate pass.
//     Every scalar is computed by the same BLAS call shape whatever P is, so float64 results are
//     bit-identical for any thread count (tested).
//   - claimed (float32 with the packed kernel: LayerSaved::panels set, or b16 with its own bf16
//     panels): the units in groups (16 in
//     forward, 32 in backward), each group's recurrent weights packed together
//     (cpu/panel_gemm.hpp) at the start of the layer's forward and of its backward; at every step
//     each thread takes the groups of its own share in order and then those left in the others'
//     (cpu/steal_ranges.hpp), so a core that runs slower (a virtual machine's often does) takes
//     fewer. A group's arithmetic does not depend on who runs it: the same bits for any
//     interleaving (tested).
// The large GEMMs (input projection, dx) split the T*B rows by share; the weight gradients split
// the weight rows (the BLAS, one thread each: the packed kernel taking blocks of 48 rows the way
// the steps take groups measured 1-4% slower at PTB shapes, and no faster with one core disturbed).
#pragma once
#include <algorithm>
#include <cstdint>
#include <numeric>
#include <utility>

#include "cpu/bf16.hpp"
#include "cpu/spin_barrier.hpp"
#include "cpu/steal_ranges.hpp"
#include "cpu/team.hpp"

namespace lstmgrad::cpu {

template <class Real>
struct LayerWeights {
  const Real* W_ih;  // [G,I] rows [V_i; V_f; V_a; V_o]
  const Real* W_hh;  // [G,H] rows [U_i; U_f; U_a; U_o] ([G,P] with a projection)
  const Real* b_ih;  // [G]
  const Real* b_hh;  // [G]
  // [3H] the cell's CellUnit weights (core/cell_math.hpp) p_i, p_f, p_o, H apart (peepholes:
  // rnn.weight_peephole_l{k}); null: the plain cell.
  const Real* unit = nullptr;
  // [18H] layer norm's gains and biases (ModelConfig::layer_norm): ih weight, bias [4H], hh
  // weight, bias [4H], cell weight, bias [H], one after another; null: no layer norm.
  const Real* ln = nullptr;
  // [P,H] the projection (ModelConfig::proj; LayerSaved::proj is P): h = (o tanh s) W_hr^T;
  // null: none, h is the cell's own o tanh s.
  const Real* W_hr = nullptr;
};

template <class Real>
struct LayerGrads {  // accumulated (+=)
  Real* dW_ih;
  Real* dW_hh;
  Real* db_ih;
  Real* db_hh;
  Real* dunit = nullptr;  // [3H], with LayerWeights::unit
  Real* dln = nullptr;    // [18H], with LayerWeights::ln
  Real* dW_hr = nullptr;  // [P,H], with LayerWeights::W_hr
};

// The bf16 operands of the float32 claimed split (LstmStack::set_precision; cpu/bf16.hpp), shared
// by the layers (one runs at a time), each 64-byte aligned. N = T*B, I the widest input.
struct Bf16Buffers {
  bf16_t* u_panels;   // the recurrent weights in groups, as LayerSaved::panels
  bf16_t* w_panels;   // W_ih: forward, W_ih^T [I, 4H]; backward, W_ih [4H, I] (for dx)
  bf16_t* a_rows;     // rows-form A: forward x [N, even(I)]; backward dz [N, 4H] (steps, dx)
  bf16_t* h_ring;     // [2][B, even(H)] the product's input of steps t and t + 1
  bf16_t* dz_blocks;  // dz^T in blocks form (the weight gradients' A), rows of 12 gates
  bf16_t* h_panels;   // the product's inputs h [N, H] in panels over K = N
  bf16_t* x_panels;   // x [N, I] in panels over K = N
  // The row layer's (layer norm, projection; cpu/row_layer.hpp), empty for the others:
  bf16_t* r_panels;   // W_hr: forward W_hr^T [H, P]; backward W_hr [P, H]
  bf16_t* step_rows;  // [B, 4H] one step's A in rows form, each share its batch rows
  bf16_t* p_blocks;   // dL/dh~^T in blocks form (dW_hr's A), rows of 12 of the P
  bf16_t* m_panels;   // o tanh s [N, H] in panels over K = N (dW_hr's B)
};

// What forward saves for backward.
template <class Real>
struct LayerSaved {
  Real* gates;  // [T,B,G] i, f, a, o after activation
  Real* bias;   // [G] b_ih + b_hh (layer_pack)
  Real* dbias;  // [G] scratch: the bias gradient of one backward
  Real* hseq;   // [T+1,B,H] h0 (filled by the caller), then h_1 .. h_T
  Real* sseq;   // [T+1,B,H] s0 (filled by the caller), then s_1 .. s_T
  // float32 on AVX-512: the recurrent weights packed in groups of units for the claimed split,
  // 64-byte aligned; null: the static split, the BLAS every step, or bf16 (b16 set: the claimed
  // split with its own panels). Shared by all layers (each layer packs at the start of its
  // forward and of its backward).
  Real* panels;
  // With panels: the groups taken at each step, T + 1 sets for a team (reset by each pass), and
  // the barrier between steps.
  StealRanges* claims;
  SpinBarrier* step_barrier;
  // The inference forward (LstmStack::infer), which keeps nothing for backward: sseq is a ring
  // of two states [2,B,H], s_t in slot t % 2, and gates is scratch the next layer overwrites.
  bool s_ring = false;
  // Recurrent dropout (Gal and Ghahramani): the locked mask [B,H] on h_{t-1} where the step's
  // product reads it, and hdseq [T,B,H], h_0 .. h_{T-1} times the mask (what the product read);
  // rec_mask null: none, hdseq unused.
  const Real* rec_mask = nullptr;
  Real* hdseq = nullptr;
  // Zoneout (Krueger et al.): after the cell's s~ and h~, each unit keeps its previous value with
  // probability p: s_t = d_s s_{t-1} + (1 - d_s) s~_t, h_t = d_h h_{t-1} + (1 - d_h) h~_t, with
  // h~_t = o tanh(s~_t). zone_s, zone_h: the masks d [T,B,H] of 0 and 1 (a training forward), or
  // null: d is the rate itself (the expectation, as inference runs it). zoned: either rate > 0.
  Real zone_p_h = 0, zone_p_s = 0;
  const Real* zone_h = nullptr;
  const Real* zone_s = nullptr;
  // [T,B,H] s~_1 .. s~_T, which backward needs (the cell's own state, before zoneout); null: the
  // cell writes s~ where s_t goes and zoneout updates it in place (inference).
  Real* zseq = nullptr;
  // [B,H] each, backward's scratch with zoneout: d_h dL/dh_t carried to h_{t-1}, and d_s dL/ds_t.
  Real* zone_dh = nullptr;
  Real* zone_ds = nullptr;
  bool zoned() const { return zone_p_h > 0 || zone_p_s > 0; }
  // Layer norm (LayerWeights::ln; row_layer.hpp): the normalised pre-activations x^ of x W_ih^T
  // and of h_{t-1} W_hh^T [T,B,4H] (ln_x, ln_h), of s~_t [T,B,H] (ln_s), and each row's
  // 1/sigma for the three [3][T,B] (ln_r); backward's scratch d(h_{t-1} W_hh^T) [T,B,4H]
  // (ln_dzh) and dL/d(LN(s) gain-scaled) [T,B,H] (ln_dy).
  Real* ln_x = nullptr;
  Real* ln_h = nullptr;
  Real* ln_s = nullptr;
  Real* ln_r = nullptr;
  Real* ln_dzh = nullptr;
  Real* ln_dy = nullptr;
  // Projection (LayerWeights::W_hr; row_layer.hpp): the output width P, which hseq, hdseq and
  // zone_h then have in place of H (0: none); mseq [T,B,H] the cell's o tanh s, which the
  // projection reads; backward's scratch proj_dh [T,B,P] dL/dh~ (before the projection's backward,
  // for dW_hr) and proj_dm [T,B,H] dL/d(o tanh s).
  int64_t proj = 0;
  Real* mseq = nullptr;
  Real* proj_dh = nullptr;
  Real* proj_dm = nullptr;
  int64_t out_width(int64_t H) const { return proj > 0 ? proj : H; }
  // Inference on the claimed split: gates holds `window` steps, and the input projection runs
  // one window at a time (a multiple of kWindowRows rows); 0: gates holds all T steps.
  int64_t window = 0;
  // bf16 operands in every GEMM (float32 on AVX512_BF16, the claimed split; panels then null);
  // null: float32 operands.
  const Bf16Buffers* b16 = nullptr;
};

// Where layer_forward reads s_t and writes it: [B,H] at step t of sseq, or its ring slot.
template <class Real>
Real* cell_state_at(const LayerSaved<Real>& saved, int64_t t, int64_t B, int64_t H) {
  return saved.sseq + (saved.s_ring ? t % 2 : t) * B * H;
}

// Inference's windows of gates (LayerSaved::window) start on multiples of this many rows: whole
// tiles of the float32 GEMM (16 rows) and of the bf16 kernel (kBf16Rows = 12).
constexpr int64_t kWindowRows = 48;
// The steps of B rows in the smallest window: kWindowRows rows' worth, whole steps.
inline int64_t window_steps(int64_t B) {
  return kWindowRows / std::gcd(B, kWindowRows);
}

// Floats of LayerSaved::panels for hidden width H: 4 H by H rounded up to whole panels of 16,
// plus one panel's slack for the alignment.
template <class Real>
int64_t panel_floats(int64_t H);

// layer_forward and layer_backward are called by every thread of the team (inside run_team),
// each with its place in it (cpu/team.hpp: it runs its shares of every split); they synchronise
// with team_barrier() and the per-step barriers.

// saved.bias = b_ih + b_hh, one share's units.
template <class Real>
void layer_pack(const LayerSaved<Real>& saved, const LayerWeights<Real>& w, const TeamSlice& ts,
                int64_t H);

// x [T,B,I] in (complete before the call).
template <class Real>
void layer_forward(const LayerSaved<Real>& saved, const Real* x, const LayerWeights<Real>& w,
                   const TeamMember& tm, int64_t T, int64_t B, int64_t I, int64_t H);

// dx [T,B,I] out (may be null: not needed); grads accumulated; dz [T,B,G] scratch;
// dh_rec [B,H], ds [B,H]: in, dL/dh_T and dL/ds_T from outside (usually zeros); out, dL/dh0 and
// dL/ds0 (each share its units). dh_out [T,B,H]: dL/dh_t from the readout or the layer above.
template <class Real>
void layer_backward(Real* dx, const LayerGrads<Real>& g, Real* dz, Real* dh_rec, Real* ds,
                    const Real* dh_out, const LayerSaved<Real>& saved, const Real* x,
                    const LayerWeights<Real>& w, const TeamMember& tm, int64_t T, int64_t B,
                    int64_t I, int64_t H);

// The bf16 weight gradients' split of M rows (4H gates, P projections): whole blocks of kBf16Rows
// per share (the blocks form's), so that the share's blocks start at its first row times even(N).
std::pair<int64_t, int64_t> bf16_block_rows(int64_t M, const TeamSlice& ts);

// This share's part of op(W)'s bf16 panels, op(W) [K, cols] (`trans`: op(W) = W^T, W [cols, K];
// else W [K, cols]), at dst as pack_bf16_panels places them (a barrier must follow).
void bf16_pack_share(bf16_t* dst, const float* W, int64_t ldw, bool trans, int64_t K, int64_t cols,
                     const TeamSlice& ts);

// The input side's gradients once dz [T*B, 4H] is complete, this share's part: dW_ih += dz^T x
// (a range of the 4H gate rows) and dx = dz W_ih (a range of the T*B rows; dx may be null).
template <class Real>
void input_grads(Real* dx, Real* dW_ih, const Real* dz, const Real* x, const Real* W_ih,
                 const TeamSlice& ts, int64_t N, int64_t I, int64_t H);

}  // namespace lstmgrad::cpu
