// One LSTM layer scanned over T steps (PyTorch ATen's cell -> layer -> stack split), run by a
// team of threads. Sizes: T steps, B rows, I input width, H hidden width, G = 4H.
//
// The per-step work (h_prev U^T and the gate pass in forward; dz U and the gate pass in backward)
// is split by hidden units, then one barrier per step (h_t complete in forward, dz_t complete in
// backward). Two ways:
//   - static (float64, or no AVX-512): thread p of P owns units [j0, j1) of every gate and runs
//     its four gates' GEMMs (the BLAS on one thread) and its slice of the gate pass. Every scalar
//     is computed by the same BLAS call shape whatever P is, so float64 results are bit-identical
//     for any thread count (tested).
//   - claimed (float32 with the packed kernel, LayerSaved::panels set): the units in groups (16 in
//     forward, 32 in backward), each group's recurrent weights packed together
//     (cpu/panel_gemm.hpp) at the start of the layer's forward and of its backward; at every step
//     each thread takes the groups of its share in order and then those left in the others'
//     (cpu/steal_ranges.hpp), so a core that runs slower (a virtual machine's often does) takes
//     fewer. A group's arithmetic does not depend on who runs it: the same bits for any
//     interleaving (tested).
// The large GEMMs (input projection, dx) split the T*B rows; the weight gradients split the
// weight rows (the BLAS, one thread each: the packed kernel taking blocks of 48 rows the way the
// steps take groups measured 1-4% slower at PTB shapes, and no faster with one core disturbed).
#pragma once
#include <algorithm>
#include <cstdint>

#include "cpu/spin_barrier.hpp"
#include "cpu/steal_ranges.hpp"

namespace lstmgrad::cpu {

template <class Real>
struct LayerWeights {
  const Real* W_ih;  // [G,I] rows [V_i; V_f; V_a; V_o]
  const Real* W_hh;  // [G,H] rows [U_i; U_f; U_a; U_o]
  const Real* b_ih;  // [G]
  const Real* b_hh;  // [G]
  // [3H] the cell's CellUnit weights (core/cell_math.hpp) p_i, p_f, p_o, H apart (peepholes:
  // rnn.weight_peephole_l{k}); null: the plain cell.
  const Real* unit = nullptr;
};

template <class Real>
struct LayerGrads {  // accumulated (+=)
  Real* dW_ih;
  Real* dW_hh;
  Real* db_ih;
  Real* db_hh;
  Real* dunit = nullptr;  // [3H], with LayerWeights::unit
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
  // 64-byte aligned; null: the static split, the BLAS every step. Shared by all layers (each
  // layer packs at the start of its forward and of its backward).
  Real* panels;
  // With panels: the groups taken at each step, T + 1 sets for a team (reset by each pass), and
  // the barrier between steps.
  StealRanges* claims;
  SpinBarrier* step_barrier;
};

// Floats of LayerSaved::panels for hidden width H: 4 H by H rounded up to whole panels of 16,
// plus one panel's slack for the alignment.
template <class Real>
int64_t panel_floats(int64_t H);

// Boundary p of `total` split among `size` threads, on a multiple of 16 (0 and total at the ends).
// The BLAS treats an edge of fewer rows or columns with other kernels (another order of the
// same sums), so every boundary sits where a one-thread call would have a kernel edge too.
inline int64_t split_edge(int64_t total, int p, int size) {
  if (p <= 0) return 0;
  if (p >= size) return total;
  return std::min(total, (total * p / size + 8) / 16 * 16);
}

// The team size for work of `flops` between two barriers: one thread per ~2 MFLOP (tens of
// microseconds), at most `max_threads`; tiny models run on one thread, where a barrier would
// cost more than the step.
inline int team_size_for(double flops, int max_threads) {
  return std::max(1, std::min(max_threads, static_cast<int>(flops / 2e6)));
}

// This thread's share of the hidden units [j0, j1) (whole vectors for the gate pass too), and of
// the rows [row0, row1) of N for the row-split GEMMs.
struct TeamSlice {
  int id = 0, size = 1;
  int64_t j0 = 0, j1 = 0;  // hidden units [j0, j1)
  int64_t n() const { return j1 - j0; }
  int64_t row0(int64_t N) const { return split_edge(N, id, size); }
  int64_t row1(int64_t N) const { return split_edge(N, id + 1, size); }
};
TeamSlice team_slice(int id, int size, int64_t H);

// Every function below is called by every thread of the team (inside `omp parallel`), each with
// its own slice; they synchronise with `omp barrier`.

// saved.bias = b_ih + b_hh, this thread's units.
template <class Real>
void layer_pack(const LayerSaved<Real>& saved, const LayerWeights<Real>& w, const TeamSlice& ts,
                int64_t H);

// x [T,B,I] in (complete before the call).
template <class Real>
void layer_forward(const LayerSaved<Real>& saved, const Real* x, const LayerWeights<Real>& w,
                   const TeamSlice& ts, int64_t T, int64_t B, int64_t I, int64_t H);

// dx [T,B,I] out (may be null: not needed); grads accumulated; dz [T,B,G] scratch;
// dh_rec [B,H], ds [B,H]: in, dL/dh_T and dL/ds_T from outside (usually zeros); out, dL/dh0 and
// dL/ds0 (each thread its slice). dh_out [T,B,H]: dL/dh_t from the readout or the layer above.
template <class Real>
void layer_backward(Real* dx, const LayerGrads<Real>& g, Real* dz, Real* dh_rec, Real* ds,
                    const Real* dh_out, const LayerSaved<Real>& saved, const Real* x,
                    const LayerWeights<Real>& w, const TeamSlice& ts, int64_t T, int64_t B,
                    int64_t I, int64_t H);

}  // namespace lstmgrad::cpu
