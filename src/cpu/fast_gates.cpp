#include "cpu/fast_gates.hpp"

#include <algorithm>
#include <type_traits>
#include <utility>

#include "core/clones.hpp"
#include "core/gates.hpp"
#include "cpu/bf16.hpp"
#include "cpu/panel_gemm.hpp"
#include "cpu/panel_kernel.hpp"
#include "cpu/simd_math.hpp"

namespace lstmgrad::cpu {

namespace {

LSTMGRAD_AVX512 inline __m512 biased(__mmask16 m, const float* z, const float* b) {
  return _mm512_add_ps(_mm512_maskz_loadu_ps(m, z), _mm512_maskz_loadu_ps(m, b));
}

// The 16 units' CellUnit weights (core/cell_math.hpp) from a block laid out like a gate row: p_i,
// p_f, p_o at u, u + gs, u + 2 gs.
LSTMGRAD_AVX512_FLAT inline core::CellUnit<Vec16> unit16(__mmask16 m, const float* u, int64_t gs) {
  return {{_mm512_maskz_loadu_ps(m, u)},
          {_mm512_maskz_loadu_ps(m, u + gs)},
          {_mm512_maskz_loadu_ps(m, u + 2 * gs)}};
}

// The cell's forward (core::cell_forward) for 16 units of one row (lanes outside m untouched),
// from the four gates' pre-activations (bias included) and the units' weights (unit, may be
// null): the activated gates into z (gs apart), s and h.
LSTMGRAD_AVX512_FLAT inline void cell_forward16(__mmask16 m, const __m512* pre, const float* unit,
                                                float* z, int64_t gs, const float* s_prev, float* s,
                                                float* h) {
  core::CellGates<Vec16> g;
  Vec16 sv, hv;
  core::CellUnit<Vec16> u;
  if (unit) u = unit16(m, unit, gs);
  core::cell_forward(Avx512Math{}, Vec16{pre[0]}, Vec16{pre[1]}, Vec16{pre[2]}, Vec16{pre[3]},
                     Vec16{_mm512_maskz_loadu_ps(m, s_prev)}, unit ? &u : nullptr, g, sv, hv);
  _mm512_mask_storeu_ps(z, m, g.i.v);
  _mm512_mask_storeu_ps(z + gs, m, g.f.v);
  _mm512_mask_storeu_ps(z + 2 * gs, m, g.a.v);
  _mm512_mask_storeu_ps(z + 3 * gs, m, g.o.v);
  _mm512_mask_storeu_ps(s, m, sv.v);
  _mm512_mask_storeu_ps(h, m, hv.v);
}

// AVX-512: one pass per row over 16 units at a time, the four gates and the cell in registers
// (the tail masked), instead of five passes through the row.
LSTMGRAD_AVX512 void gates_forward16(float* z, int64_t ldz, int64_t gs, const float* bias,
                                     const float* unit, float* s, float* h, const float* s_prev,
                                     int64_t ld, int64_t B, int64_t n) {
  for (int64_t r = 0; r < B; ++r)
    for (int64_t j = 0; j < n; j += 16) {
      const __mmask16 m = first_lanes(n - j);
      float* zr = z + r * ldz + j;
      const __m512 pre[4] = {biased(m, zr, bias + j), biased(m, zr + gs, bias + gs + j),
                             biased(m, zr + 2 * gs, bias + 2 * gs + j),
                             biased(m, zr + 3 * gs, bias + 3 * gs + j)};
      cell_forward16(m, pre, unit ? unit + j : nullptr, zr, gs, s_prev + r * ld + j, s + r * ld + j,
                     h + r * ld + j);
    }
}

// The cell's backward for 16 units of one row (lanes outside m untouched): dh = dL/dh_t (all of
// it) in; the four gates' gradients (gs apart) into d, and ds (dL/ds_t in) becomes dL/ds_{t-1}.
// g: the row's saved gates; s, s_prev: this unit's cell state at t and t - 1; unit: the units'
// weights (may be null).
LSTMGRAD_AVX512_FLAT inline void cell_backward16(__mmask16 m, __m512 dh, const float* g, int64_t gs,
                                                 const float* s, const float* s_prev,
                                                 const float* unit, float* ds, float* d) {
  const core::CellGates<Vec16> gv{{_mm512_maskz_loadu_ps(m, g)},
                                  {_mm512_maskz_loadu_ps(m, g + gs)},
                                  {_mm512_maskz_loadu_ps(m, g + 2 * gs)},
                                  {_mm512_maskz_loadu_ps(m, g + 3 * gs)}};
  const Avx512Math math;
  Vec16 dsv{_mm512_maskz_loadu_ps(m, ds)};
  core::CellGates<Vec16> dz;
  core::CellUnit<Vec16> u;
  if (unit) u = unit16(m, unit, gs);
  core::cell_backward(math, gv, math.tanh(Vec16{_mm512_maskz_loadu_ps(m, s)}),
                      Vec16{_mm512_maskz_loadu_ps(m, s_prev)}, unit ? &u : nullptr, Vec16{dh}, dsv,
                      dz);
  _mm512_mask_storeu_ps(d, m, dz.i.v);
  _mm512_mask_storeu_ps(d + gs, m, dz.f.v);
  _mm512_mask_storeu_ps(d + 2 * gs, m, dz.a.v);
  _mm512_mask_storeu_ps(d + 3 * gs, m, dz.o.v);
  _mm512_mask_storeu_ps(ds, m, dsv.v);
}

LSTMGRAD_AVX512 void gates_backward16(float* dz, int64_t ldz, int64_t gs, float* ds,
                                      const float* dh_out, const float* dh_rec, const float* gates,
                                      const float* s, const float* s_prev, const float* unit,
                                      int64_t ld, int64_t B, int64_t n) {
  for (int64_t r = 0; r < B; ++r)
    for (int64_t j = 0; j < n; j += 16) {
      const __mmask16 m = first_lanes(n - j);
      const int64_t k = r * ld + j;
      __m512 dh = _mm512_maskz_loadu_ps(m, dh_rec + k);
      if (dh_out) dh = _mm512_add_ps(dh, _mm512_maskz_loadu_ps(m, dh_out + k));
      cell_backward16(m, dh, gates + r * ldz + j, gs, s + k, s_prev + k, unit ? unit + j : nullptr,
                      ds + k, dz + r * ldz + j);
    }
}

// acc[r][p] += sum over k < K of a[r * lda + k] times row k of panel p, for NP panels of
// [K][16] floats one after another (a group's packed weights): the fused steps' GEMM.
template <int MR, int NP>
LSTMGRAD_AVX512 inline void group_sums(int64_t K, const float* a, int64_t lda, const float* P,
                                       __m512 (&acc)[MR][NP]) {
  const float* panels[NP];
  for (int p = 0; p < NP; ++p) panels[p] = P + p * K * kPanelWidth;
  panel_sums<MR, NP, AForm::rows>(K, a, lda, panels, acc);
}

// group_sums for either operand type: float32 in registers; bf16 (cpu/bf16.hpp) by the bf16
// kernel, whose sums come back through a small block of L1 (its instructions need a target of
// their own), overwriting acc.
template <int MR, int NP, class Op>
LSTMGRAD_AVX512 inline void operand_sums(int64_t K, const Op* a, int64_t lda, const Op* P,
                                         __m512 (&acc)[MR][NP]) {
  if constexpr (std::is_same_v<Op, float>) {
    group_sums<MR, NP>(K, a, lda, P, acc);
  } else {
    alignas(64) float out[MR * NP * kPanelWidth];
    bf16_group_sums(MR, NP, K, a, lda, P, out);
#pragma GCC unroll 12
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
      for (int p = 0; p < NP; ++p) acc[r][p] = _mm512_load_ps(out + (r * NP + p) * kPanelWidth);
  }
}

// The fused step: MR rows of one group of up to 16 units, z = z_in + h_prev U^T for the four
// gates accumulated in registers over K, then the gate pass on those registers (bias, the
// nonlinearities, the cell), without z going through memory in between. Units: whether the cell
// has CellUnit weights (a template argument, so that the plain cell's tile has no test for them).
template <int MR, bool Units, class Op>
LSTMGRAD_AVX512 void step_tile(int64_t K, const Op* hp, int64_t ldh, const Op* P, float* z,
                               int64_t ldz, int64_t gs, const float* bias, const float* unit,
                               float* s, float* h, const float* s_prev, int64_t ld, __mmask16 m) {
  __m512 acc[MR][4];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int g = 0; g < 4; ++g) {
      acc[r][g] = _mm512_setzero_ps();
      // What the epilogue reads and writes, fetched while the K loop runs.
      __builtin_prefetch(z + r * ldz + g * gs, 1, 3);
    }
    __builtin_prefetch(s_prev + r * ld, 0, 3);
  }
  operand_sums<MR, 4>(K, hp, ldh, P, acc);
  __m512 b[4];
#pragma GCC unroll 4
  for (int g = 0; g < 4; ++g) b[g] = _mm512_maskz_loadu_ps(m, bias + g * gs);
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    float* zr = z + r * ldz;
    __m512 pre[4];
#pragma GCC unroll 4
    for (int g = 0; g < 4; ++g)
      pre[g] = _mm512_add_ps(_mm512_add_ps(acc[r][g], _mm512_maskz_loadu_ps(m, zr + g * gs)), b[g]);
    cell_forward16(m, pre, Units ? unit : nullptr, zr, gs, s_prev + r * ld, s + r * ld, h + r * ld);
  }
}

// The fused step with bf16 operands: MR rows (up to 12) of one group, the four gates' sums in
// two passes of the bf16 kernel's 12 x 2 tile (i, f; then a, o) into L1, then the gate pass as
// step_tile's. The sums cannot stay in registers across the kernel's own target, so the tile is
// the GEMM's best shape instead: each panel is read once per 12 rows, not per 5.
template <int MR, bool Units>
LSTMGRAD_AVX512 void step_tile_bf16(int64_t K, const bf16_t* hp, int64_t ldh, const bf16_t* P,
                                    float* z, int64_t ldz, int64_t gs, const float* bias,
                                    const float* unit, float* s, float* h, const float* s_prev,
                                    int64_t ld, __mmask16 m) {
  alignas(64) float sums[2][MR * 2 * kPanelWidth];  // [i f | a o][row][2 gates][16]
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int g = 0; g < 4; ++g) __builtin_prefetch(z + r * ldz + g * gs, 1, 3);
    __builtin_prefetch(s_prev + r * ld, 0, 3);
  }
  bf16_group_sums(MR, 2, K, hp, ldh, P, sums[0]);
  bf16_group_sums(MR, 2, K, hp, ldh, P + 2 * bf16_panel_size(K), sums[1]);
  __m512 b[4];
#pragma GCC unroll 4
  for (int g = 0; g < 4; ++g) b[g] = _mm512_maskz_loadu_ps(m, bias + g * gs);
  for (int r = 0; r < MR; ++r) {
    float* zr = z + r * ldz;
    __m512 pre[4];
#pragma GCC unroll 4
    for (int g = 0; g < 4; ++g)
      pre[g] =
          _mm512_add_ps(_mm512_add_ps(_mm512_load_ps(sums[g / 2] + (r * 2 + g % 2) * kPanelWidth),
                                      _mm512_maskz_loadu_ps(m, zr + g * gs)),
                        b[g]);
    cell_forward16(m, pre, Units ? unit : nullptr, zr, gs, s_prev + r * ld, s + r * ld, h + r * ld);
  }
}

// The fused backward step: MR rows of one group of up to 32 units (NP panels), dh_rec =
// dz_{t+1} U accumulated in registers over K = 4H, then gates_backward16's pass on those
// registers (plus dh_out) for the group's units. Units as in step_tile.
template <int MR, int NP, bool Units, class Op>
LSTMGRAD_AVX512 void step_tile_backward(int64_t K, const Op* dzn, int64_t ldz, const Op* P,
                                        float* dz, int64_t gs, float* ds, const float* dh_out,
                                        const float* gates, const float* s, const float* s_prev,
                                        const float* unit, const float* rec_mask, int64_t ld,
                                        const __mmask16* mask) {
  __m512 acc[MR][NP];
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
    for (int p = 0; p < NP; ++p) {
      acc[r][p] = _mm512_setzero_ps();
      // What the epilogue reads and writes, fetched while the K loop runs.
      const int64_t j = p * 16, k = r * ld + j;
      for (int g = 0; g < 4; ++g) {
        __builtin_prefetch(gates + r * ldz + g * gs + j, 0, 3);
        __builtin_prefetch(dz + r * ldz + g * gs + j, 1, 3);
      }
      if (dh_out) __builtin_prefetch(dh_out + k, 0, 3);
      if (rec_mask) __builtin_prefetch(rec_mask + k, 0, 3);
      __builtin_prefetch(s + k, 0, 3);
      __builtin_prefetch(s_prev + k, 0, 3);
      __builtin_prefetch(ds + k, 1, 3);
    }
  operand_sums<MR, NP>(K, dzn, ldz, P, acc);
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
    for (int p = 0; p < NP; ++p) {
      const __mmask16 m = mask[p];
      const int64_t j = p * 16, k = r * ld + j;
      __m512 dh = acc[r][p];
      if (rec_mask) dh = _mm512_mul_ps(dh, _mm512_maskz_loadu_ps(m, rec_mask + k));
      if (dh_out) dh = _mm512_add_ps(dh, _mm512_maskz_loadu_ps(m, dh_out + k));
      cell_backward16(m, dh, gates + r * ldz + j, gs, s + k, s_prev + k, Units ? unit + j : nullptr,
                      ds + k, dz + r * ldz + j);
    }
}

}  // namespace

namespace {

// Rows per tile for B rows in tiles of at most `most`: as even as whole tiles allow (B = 50 in
// five tiles of 10, not four of 12 and one of 2: each tile reads the group's panels once). A
// row's sums do not depend on its tile.
constexpr int64_t even_rows(int64_t B, int64_t most) {
  const int64_t tiles = (B + most - 1) / most;
  return tiles > 0 ? (B + tiles - 1) / tiles : most;
}

// f(std::integral_constant<int, mr>{}) for the row count mr in [1, N]: a tile template's
// instance chosen at run time.
template <int N, class F>
LSTMGRAD_AVX512 void with_rows(int64_t mr, F&& f) {
  [&]<int... I>(std::integer_sequence<int, I...>) {
    (void)((mr == I + 1 ? (f(std::integral_constant<int, I + 1>{}), true) : false) || ...);
  }
  (std::make_integer_sequence<int, N>{});
}

// Rows of 5 x 4 gates: 20 accumulators, 4 weight vectors and a broadcast in registers; per k,
// 9 loads for 20 FMAs.
// bf16: rows of 12 (step_tile_bf16).
template <class Op>
LSTMGRAD_AVX512 void step_forward_rows(int64_t B, const Op* h_prev, int64_t ldh, int64_t K,
                                       const Op* panels, float* z, int64_t ldz, int64_t gs,
                                       const float* bias, const float* unit, float* s, float* h,
                                       const float* s_prev, int64_t ld, int64_t n) {
  const __mmask16 m = first_lanes(n);
  if constexpr (std::is_same_v<Op, bf16_t>) {
    const int64_t rows = even_rows(B, 12);
    for (int64_t r = 0; r < B; r += rows)
      with_rows<12>(std::min<int64_t>(rows, B - r), [&](auto mr) {
        auto tile = unit ? &step_tile_bf16<mr, true> : &step_tile_bf16<mr, false>;
        tile(K, h_prev + r * ldh, ldh, panels, z + r * ldz, ldz, gs, bias, unit, s + r * ld,
             h + r * ld, s_prev + r * ld, ld, m);
      });
  } else {
    for (int64_t r = 0; r < B; r += 5)
      with_rows<5>(std::min<int64_t>(5, B - r), [&](auto mr) {
        auto tile = unit ? &step_tile<mr, true, Op> : &step_tile<mr, false, Op>;
        tile(K, h_prev + r * ldh, ldh, panels, z + r * ldz, ldz, gs, bias, unit, s + r * ld,
             h + r * ld, s_prev + r * ld, ld, m);
      });
  }
}

// Rows of 12 x 2 panels: 24 accumulators (the tile shape of panel_gemm); one panel when the
// group has 16 units or fewer.
template <class Op>
LSTMGRAD_AVX512 void step_backward_rows(int64_t B, const Op* dz_next, int64_t ldz, int64_t K,
                                        const Op* panels, float* dz, int64_t gs, float* ds,
                                        const float* dh_out, const float* gates, const float* s,
                                        const float* s_prev, const float* unit,
                                        const float* rec_mask, int64_t ld, int64_t n) {
  const __mmask16 mask[2] = {first_lanes(n), first_lanes(std::max<int64_t>(n - 16, 0))};
  const int64_t rows = even_rows(B, 12);
  for (int64_t r = 0; r < B; r += rows)
    with_rows<12>(std::min<int64_t>(rows, B - r), [&](auto mr) {
      const int64_t o = r * ld;
      const float* dho = dh_out ? dh_out + o : nullptr;
      auto tile = unit ? (n > 16 ? &step_tile_backward<mr, 2, true, Op>
                                 : &step_tile_backward<mr, 1, true, Op>)
                       : (n > 16 ? &step_tile_backward<mr, 2, false, Op>
                                 : &step_tile_backward<mr, 1, false, Op>);
      tile(K, dz_next + r * ldz, ldz, panels, dz + r * ldz, gs, ds + o, dho, gates + r * ldz, s + o,
           s_prev + o, unit, rec_mask ? rec_mask + o : nullptr, ld, mask);
    });
}

}  // namespace

void fused_step_forward(int64_t B, const float* h_prev, int64_t ldh, int64_t K, const float* panels,
                        float* z, int64_t ldz, int64_t gs, const float* bias, const float* unit,
                        float* s, float* h, const float* s_prev, int64_t ld, int64_t n) {
  step_forward_rows(B, h_prev, ldh, K, panels, z, ldz, gs, bias, unit, s, h, s_prev, ld, n);
}

void fused_step_forward(int64_t B, const bf16_t* h_prev, int64_t ldh, int64_t K,
                        const bf16_t* panels, float* z, int64_t ldz, int64_t gs, const float* bias,
                        const float* unit, float* s, float* h, const float* s_prev, int64_t ld,
                        int64_t n) {
  step_forward_rows(B, h_prev, ldh, K, panels, z, ldz, gs, bias, unit, s, h, s_prev, ld, n);
}

void fused_step_backward(int64_t B, const float* dz_next, int64_t ldz, int64_t K,
                         const float* panels, float* dz, int64_t gs, float* ds, const float* dh_out,
                         const float* gates, const float* s, const float* s_prev, const float* unit,
                         const float* rec_mask, int64_t ld, int64_t n) {
  step_backward_rows(B, dz_next, ldz, K, panels, dz, gs, ds, dh_out, gates, s, s_prev, unit,
                     rec_mask, ld, n);
}

void fused_step_backward(int64_t B, const bf16_t* dz_next, int64_t ldz, int64_t K,
                         const bf16_t* panels, float* dz, int64_t gs, float* ds,
                         const float* dh_out, const float* gates, const float* s,
                         const float* s_prev, const float* unit, const float* rec_mask, int64_t ld,
                         int64_t n) {
  step_backward_rows(B, dz_next, ldz, K, panels, dz, gs, ds, dh_out, gates, s, s_prev, unit,
                     rec_mask, ld, n);
}

using core::fast_sigmoid;
using core::fast_tanh;

// The cell's arithmetic for the portable kernels (core/cell_math.hpp's M): float32, the
// vectorisable core::fast_sigmoid / fast_tanh, each product and sum rounded on its own.
struct FastMath {
  float mul(float x, float y) const { return x * y; }
  float fma(float x, float y, float c) const { return x * y + c; }
  float one_minus_square(float y) const { return 1.0f - y * y; }
  float sigmoid_slope(float y) const { return y * (1.0f - y); }
  float sigmoid(float x) const { return fast_sigmoid(x); }
  float tanh(float x) const { return fast_tanh(x); }
};

// Simple loops, one function each, so that the compiler vectorises every one of them (a single
// loop with all five nonlinearities does not if-convert). A row's blocks stay in L1 between them.
inline void sigmoid_bias(float* __restrict v, const float* __restrict b, int64_t n) {
  for (int64_t j = 0; j < n; ++j) v[j] = fast_sigmoid(v[j] + b[j]);
}

inline void tanh_bias(float* __restrict v, const float* __restrict b, int64_t n) {
  for (int64_t j = 0; j < n; ++j) v[j] = fast_tanh(v[j] + b[j]);
}

// core::cell_state, then core::cell_output, over n units (two loops: each vectorises).
inline void cell_update(float* __restrict s, float* __restrict h, const float* __restrict i,
                        const float* __restrict f, const float* __restrict a,
                        const float* __restrict o, const float* __restrict sp, int64_t n) {
  const FastMath m;
  for (int64_t j = 0; j < n; ++j) core::cell_state(m, {i[j], f[j], a[j], o[j]}, sp[j], s[j]);
  for (int64_t j = 0; j < n; ++j)
    core::cell_output(m, {i[j], f[j], a[j], o[j]}, m.tanh(s[j]), h[j]);
}

// With CellUnit weights: the cell per unit (core::cell_forward as it is), one loop.
inline void cells_with_units(float* z, int64_t gs, const float* bias, const float* unit, float* s,
                             float* h, const float* sp, int64_t n) {
  const FastMath m;
  for (int64_t j = 0; j < n; ++j) {
    const core::CellUnit<float> u = core::unit_at(unit, gs, j);
    core::CellGates<float> g;
    core::cell_forward(m, z[j] + bias[j], z[gs + j] + bias[gs + j],
                       z[2 * gs + j] + bias[2 * gs + j], z[3 * gs + j] + bias[3 * gs + j], sp[j],
                       &u, g, s[j], h[j]);
    z[j] = g.i, z[gs + j] = g.f, z[2 * gs + j] = g.a, z[3 * gs + j] = g.o;
  }
}

LSTMGRAD_CLONES
void fast_gates_forward(float* z, int64_t ldz, int64_t gs, const float* bias, const float* unit,
                        float* s, float* h, const float* s_prev, int64_t ld, int64_t B, int64_t n) {
  if (panel_gemm_available())
    return gates_forward16(z, ldz, gs, bias, unit, s, h, s_prev, ld, B, n);
  for (int64_t r = 0; r < B; ++r) {
    if (unit) {
      cells_with_units(z + r * ldz, gs, bias, unit, s + r * ld, h + r * ld, s_prev + r * ld, n);
      continue;
    }
    float* zr = z + r * ldz;
    sigmoid_bias(zr, bias, n);
    sigmoid_bias(zr + gs, bias + gs, n);
    tanh_bias(zr + 2 * gs, bias + 2 * gs, n);
    sigmoid_bias(zr + 3 * gs, bias + 3 * gs, n);
    cell_update(s + r * ld, h + r * ld, zr, zr + gs, zr + 2 * gs, zr + 3 * gs, s_prev + r * ld, n);
  }
}

inline void tanh_of(float* __restrict out, const float* __restrict v, int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = fast_tanh(v[j]);
}

// d_i .. d_o out; d_i and d_f may hold dh and tanh(s) on entry (read before written at each j).
// unit: the units' CellUnit weights (may be null: one loop each way, so that the plain cell's
// vectorises as before).
inline void gate_grads(float* d_i, float* d_f, float* __restrict d_a, float* __restrict d_o,
                       float* __restrict ds, const float* dh, const float* ts,
                       const float* __restrict g, int64_t gs, const float* __restrict sp,
                       const float* __restrict unit, int64_t n) {
  auto cell = [&](int64_t j, const core::CellUnit<float>* u) {  // core::cell_backward
    const core::CellGates<float> gj{g[j], g[gs + j], g[2 * gs + j], g[3 * gs + j]};
    core::CellGates<float> dz;
    core::cell_backward(FastMath{}, gj, ts[j], sp[j], u, dh[j], ds[j], dz);
    d_i[j] = dz.i, d_f[j] = dz.f, d_a[j] = dz.a, d_o[j] = dz.o;
  };
  if (!unit) {
    for (int64_t j = 0; j < n; ++j) cell(j, nullptr);
    return;
  }
  for (int64_t j = 0; j < n; ++j) {
    const core::CellUnit<float> u = core::unit_at(unit, gs, j);
    cell(j, &u);
  }
}

LSTMGRAD_CLONES
void fast_gates_backward(float* dz, int64_t ldz, int64_t gs, float* ds, const float* dh_out,
                         const float* dh_rec, const float* gates, const float* s,
                         const float* s_prev, const float* unit, int64_t ld, int64_t B, int64_t n) {
  if (panel_gemm_available())
    return gates_backward16(dz, ldz, gs, ds, dh_out, dh_rec, gates, s, s_prev, unit, ld, B, n);
  for (int64_t r = 0; r < B; ++r) {
    const float* __restrict g = gates + r * ldz;
    float* d = dz + r * ldz;
    float* __restrict dsr = ds + r * ld;
    const float* __restrict dhr = dh_rec + r * ld;
    const float* __restrict sp = s_prev + r * ld;
    // The i and f blocks of the dz row hold dh and tanh(s) until the last loop overwrites them.
    float* __restrict dh = d;
    float* __restrict ts = d + gs;
    if (dh_out) {
      const float* __restrict dho = dh_out + r * ld;
      for (int64_t j = 0; j < n; ++j) dh[j] = dho[j] + dhr[j];
    } else {
      for (int64_t j = 0; j < n; ++j) dh[j] = dhr[j];
    }
    tanh_of(ts, s + r * ld, n);
    gate_grads(d, d + gs, d + 2 * gs, d + 3 * gs, dsr, dh, ts, g, gs, sp, unit, n);
  }
}

}  // namespace lstmgrad::cpu
