#include "cpu/row_layer.hpp"

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <utility>

#include "core/gates.hpp"
#include "cpu/bf16.hpp"
#include "cpu/blas.hpp"

namespace lstmgrad::cpu {

namespace {

// The batch rows a share runs through every step: in float32 as evenly as they go (the share with
// the most rows sets the pace); in float64 on the edges every split shares (TeamSlice::row0), so
// that its results depend on no split.
template <class Real>
int64_t step_row0(const TeamSlice& ts, int64_t B) {
  return std::is_same_v<Real, float> ? ts.even0(B) : ts.row0(B);
}
template <class Real>
int64_t step_row1(const TeamSlice& ts, int64_t B) {
  return std::is_same_v<Real, float> ? ts.even1(B) : ts.row1(B);
}

// v [n] <- (v - mean v) / sqrt(var v + eps); returns 1 / sqrt(var v + eps). Two passes, summed
// in double.
template <class Real>
Real normalize(Real* v, int64_t n) {
  double mean = 0, var = 0;
  for (int64_t j = 0; j < n; ++j) mean += v[j];
  mean /= static_cast<double>(n);
  for (int64_t j = 0; j < n; ++j) var += (v[j] - mean) * (v[j] - mean);
  var /= static_cast<double>(n);
  const double r = 1.0 / std::sqrt(var + kLayerNormEps);
  for (int64_t j = 0; j < n; ++j) v[j] = static_cast<Real>((v[j] - mean) * r);
  return static_cast<Real>(r);
}

// normalize's backward: with u = dL/dv^ = dy * gain (v^ = xh, r = 1/sigma),
//   dL/dv = r (u - mean(u) - v^ mean(u v^)),
// into out (which may be dy itself: each entry is read before it is written).
template <class Real>
void normalize_backward(Real* out, const Real* dy, const Real* gain, const Real* xh, Real r,
                        int64_t n) {
  double m1 = 0, m2 = 0;
  for (int64_t j = 0; j < n; ++j) {
    const double u = static_cast<double>(dy[j]) * gain[j];
    m1 += u, m2 += u * xh[j];
  }
  m1 /= static_cast<double>(n), m2 /= static_cast<double>(n);
  for (int64_t j = 0; j < n; ++j)
    out[j] = static_cast<Real>(r * (static_cast<double>(dy[j]) * gain[j] - m1 - xh[j] * m2));
}

// float32 takes the vectorisable core::fast_sigmoid / fast_tanh (as the other float32 kernels);
// float64 stays std::exp / std::tanh, the reference.
template <class Real>
Real sigmoid(Real v) {
  if constexpr (std::is_same_v<Real, float>)
    return core::fast_sigmoid(v);
  else
    return Real(1) / (Real(1) + std::exp(-v));
}

template <class Real>
Real tanh_(Real v) {
  if constexpr (std::is_same_v<Real, float>)
    return core::fast_tanh(v);
  else
    return std::tanh(v);
}

// The layer norm parameters inside LayerWeights::ln (and their gradients inside dln); all null
// without layer norm.
template <class P>
struct LnParams {
  P gx{}, bx{}, gh{}, bh{}, gc{}, bc{};
  LnParams(P base, int64_t H) {
    if (!base) return;
    gx = base, bx = base + 4 * H, gh = base + 8 * H, bh = base + 12 * H;
    gc = base + 16 * H, bc = base + 17 * H;
  }
};

// bf16 (float32 with LayerSaved::b16; LstmStack::set_precision): every product's operands rounded
// to bfloat16 and summed in float32 (cpu/bf16.hpp), as in the fused layers: the input projection,
// each step's h_{t-1} W_hh^T and m W_hr^T and their backward products, the weight gradients and
// dx. The weights go into panels at the start of each pass; the A operands are rounded where they
// are read. Layer norm, the cell, the biases' sums and every gradient stay float32.

// C [M, cols] = A [M, K] op(W), or C += (beta 1): with b16, A's rows rounded into a16 (row
// stride even(K)) and op(W) from its panels `packed`; else the BLAS with op(W) = W^T (`tw`
// Tr::T) or W.
template <class Real>
void product(const Bf16Buffers* b16, bf16_t* a16, const bf16_t* packed, int64_t M, int64_t cols,
             int64_t K, const Real* A, int64_t lda, Tr tw, const Real* W, int64_t ldw, Real beta,
             Real* C, int64_t ldc) {
  if (M <= 0) return;
  if constexpr (std::is_same_v<Real, float>) {
    if (b16) {
      to_bf16_rows(a16, even(K), A, lda, M, 0, K, K);
      bf16_tiles(M, K, PairForm::rows, a16, even(K), packed, bf16_panel_size(K), cols, C, ldc,
                 kPanelWidth, beta == 0 ? Start::zero : Start::accumulate, nullptr);
      return;
    }
  }
  gemm(Tr::N, tw, M, cols, K, Real(1), A, lda, W, ldw, beta, C, ldc);
}

// The weight gradient's rows [m0, m1): dW [M, cols] += A^T Bm over the N positions, A [N, M]
// (lda) and Bm [N, cols] (ldb); with b16 from A^T's blocks and Bm's panels over K = N, made by
// the caller before a barrier.
template <class Real>
void weight_grad(const Bf16Buffers* b16, const bf16_t* a_blocks, const bf16_t* b_panels, int64_t m0,
                 int64_t m1, int64_t cols, int64_t N, const Real* A, int64_t lda, const Real* Bm,
                 int64_t ldb, Real* dW) {
  if (m1 <= m0) return;
  if constexpr (std::is_same_v<Real, float>) {
    if (b16) {
      bf16_tiles(m1 - m0, N, PairForm::blocks, a_blocks + m0 * even(N), bf16_block_size(N),
                 b_panels, bf16_panel_size(N), cols, dW + m0 * cols, cols, kPanelWidth,
                 Start::accumulate, nullptr);
      return;
    }
  }
  gemm(Tr::T, Tr::N, m1 - m0, cols, N, Real(1), A + m0, lda, Bm, ldb, Real(1), dW + m0 * cols,
       cols);
}

// A share's rows of a weight gradient: whole blocks of the bf16 kernel's rows with b16, else
// the even split.
std::pair<int64_t, int64_t> grad_rows(const Bf16Buffers* b16, int64_t M, const TeamSlice& ts) {
  if (b16) return bf16_block_rows(M, ts);
  return {split_edge(M, ts.id, ts.size), split_edge(M, ts.id + 1, ts.size)};
}

// bf16: the blocks of A^T's rows [m0, m1) (A [N, M], lda) and this share's part of Bm's panels
// (Bm [N, cols]) for weight_grad; nothing in float32 and float64.
template <class Real>
void grad_operands(const Bf16Buffers* b16, bf16_t* a_blocks, bf16_t* b_panels, int64_t m0,
                   int64_t m1, int64_t cols, int64_t N, const Real* A, int64_t lda, const Real* Bm,
                   int64_t ldb, const TeamSlice& ts) {
  if constexpr (std::is_same_v<Real, float>) {
    if (!b16) return;
    if (m1 > m0) to_bf16_blocks(a_blocks + m0 * even(N), A, lda, N, m0, m1);
    if (b_panels) bf16_pack_share(b_panels, Bm, ldb, false, N, cols, ts);
  }
}

}  // namespace

template <class Real>
void row_layer_forward(const LayerSaved<Real>& sv, const Real* x, const LayerWeights<Real>& w,
                       const TeamMember& tm, int64_t T, int64_t B, int64_t I, int64_t H) {
  const int64_t G = 4 * H, N = T * B, BH = B * H, P = sv.out_width(H), BP = B * P;
  const bool ln = w.ln != nullptr;
  const LnParams<const Real*> p(w.ln, H);
  Real* rx = ln ? sv.ln_r : nullptr;
  Real* rh = ln ? sv.ln_r + N : nullptr;
  Real* rs = ln ? sv.ln_r + 2 * N : nullptr;
  // x W_ih^T for all T*B rows at once, each share's rows: normalised into x^ (layer norm), or
  // into the gates, where each step adds its recurrent product
  Real* zx = ln ? sv.ln_x : sv.gates;
  const Bf16Buffers* b16 = sv.b16;
  if constexpr (std::is_same_v<Real, float>) {
    if (b16) {  // op(W) = W^T of W_ih [G, I], W_hh [G, P], W_hr [P, H] in panels
      tm.for_shares(H, [&](const TeamSlice& ts) {
        bf16_pack_share(b16->w_panels, w.W_ih, I, true, I, G, ts);
        bf16_pack_share(b16->u_panels, w.W_hh, P, true, P, G, ts);
        if (w.W_hr) bf16_pack_share(b16->r_panels, w.W_hr, H, true, H, P, ts);
      });
      team_barrier();
    }
  }
  // a step's A operand in bf16: the share's batch rows of step_rows
  auto step16 = [&](int64_t b0) { return b16 ? b16->step_rows + b0 * G : nullptr; };
  tm.for_shares(H, [&](const TeamSlice& ts) {
    const int64_t r0 = ts.row0(N), r1 = ts.row1(N);
    if (r1 <= r0) return;
    product(b16, b16 ? b16->a_rows + r0 * even(I) : nullptr, b16 ? b16->w_panels : nullptr, r1 - r0,
            G, I, x + r0 * I, I, Tr::T, w.W_ih, I, Real(0), zx + r0 * G, G);
    for (int64_t r = r0; r < r1 && ln; ++r) rx[r] = normalize(zx + r * G, G);
  });
  team_barrier();  // every row of x W_ih^T, the packed bias, h0 and s0 complete
  // The steps: each share its rows of the batch, every unit, no barrier between steps.
  tm.for_shares(H, [&](const TeamSlice& ts) {
    const int64_t b0 = step_row0<Real>(ts, B), b1 = step_row1<Real>(ts, B), nb = b1 - b0;
    if (nb <= 0) return;
    for (int64_t t = 0; t < T; ++t) {
      const Real* hp = sv.hseq + t * BP + b0 * P;
      if (sv.rec_mask) {  // the product reads h_{t-1} * mask (hdseq, for dW_hh)
        Real* hd = sv.hdseq + t * BP + b0 * P;
        for (int64_t i = 0; i < nb * P; ++i) hd[i] = hp[i] * sv.rec_mask[b0 * P + i];
        hp = hd;
      }
      const int64_t first = t * B + b0;  // the block's first row
      const bf16_t* u16 = b16 ? b16->u_panels : nullptr;
      if (ln)
        product(b16, step16(b0), u16, nb, G, P, hp, P, Tr::T, w.W_hh, P, Real(0),
                sv.ln_h + first * G, G);
      else
        product(b16, step16(b0), u16, nb, G, P, hp, P, Tr::T, w.W_hh, P, Real(1),
                sv.gates + first * G, G);
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t row = t * B + b;
        Real* z = sv.gates + row * G;
        if (ln) {
          Real* hh = sv.ln_h + row * G;
          rh[row] = normalize(hh, G);
          const Real* xh = sv.ln_x + row * G;
          for (int64_t q = 0; q < G; ++q)
            z[q] = (xh[q] * p.gx[q] + p.bx[q]) + (hh[q] * p.gh[q] + p.bh[q]) + sv.bias[q];
        } else {
          for (int64_t q = 0; q < G; ++q) z[q] += sv.bias[q];
        }
        // one loop per nonlinearity, so that each vectorises: i, f (sigmoid), a (tanh), o
        for (int64_t j = 0; j < 2 * H; ++j) z[j] = sigmoid(z[j]);
        for (int64_t j = 2 * H; j < 3 * H; ++j) z[j] = tanh_(z[j]);
        for (int64_t j = 3 * H; j < G; ++j) z[j] = sigmoid(z[j]);
        const Real* sp = cell_state_at(sv, t, B, H) + b * H;
        Real* st = (sv.zseq ? sv.zseq + t * BH : cell_state_at(sv, t + 1, B, H)) + b * H;
        for (int64_t j = 0; j < H; ++j) st[j] = z[H + j] * sp[j] + z[j] * z[2 * H + j];
        // m = o tanh(LN(s~) or s~): h itself, or what the projection reads
        Real* m = sv.proj > 0 ? sv.mseq + row * H : sv.hseq + (t + 1) * BP + b * P;
        if (ln) {
          Real* sh = sv.ln_s + row * H;
          std::copy_n(st, H, sh);
          rs[row] = normalize(sh, H);
          for (int64_t j = 0; j < H; ++j) m[j] = z[3 * H + j] * tanh_(sh[j] * p.gc[j] + p.bc[j]);
        } else {
          for (int64_t j = 0; j < H; ++j) m[j] = z[3 * H + j] * tanh_(st[j]);
        }
        if (sv.zoned()) {  // zoneout on s (as lstm_layer.cpp's zoneout_forward, for this row)
          Real* s = cell_state_at(sv, t + 1, B, H) + b * H;
          for (int64_t j = 0; j < H; ++j) {
            const Real d = sv.zone_s ? sv.zone_s[t * BH + b * H + j] : sv.zone_p_s;
            s[j] = d * sp[j] + (Real(1) - d) * st[j];
          }
        }
      }
      Real* h = sv.hseq + (t + 1) * BP + b0 * P;  // the block's rows of h_t
      if (sv.proj > 0)                            // h~ = m W_hr^T
        product(b16, step16(b0), b16 ? b16->r_panels : nullptr, nb, P, H, sv.mseq + first * H, H,
                Tr::T, w.W_hr, H, Real(0), h, P);
      if (sv.zoned()) {  // and on h: h = d h_{t-1} + (1 - d) h~
        const Real* h_prev = sv.hseq + t * BP + b0 * P;
        const Real* mask = sv.zone_h ? sv.zone_h + t * BP + b0 * P : nullptr;
        for (int64_t i = 0; i < nb * P; ++i) {
          const Real d = mask ? mask[i] : sv.zone_p_h;
          h[i] = d * h_prev[i] + (Real(1) - d) * h[i];
        }
      }
    }
  });
  team_barrier();  // every row of h before the next layer reads it
}

template <class Real>
void row_layer_backward(Real* dx, const LayerGrads<Real>& g, Real* dz, Real* dh_rec, Real* ds,
                        const Real* dh_out, const LayerSaved<Real>& sv, const Real* x,
                        const LayerWeights<Real>& w, const TeamMember& tm, int64_t T, int64_t B,
                        int64_t I, int64_t H) {
  const int64_t G = 4 * H, N = T * B, BH = B * H, P = sv.out_width(H), BP = B * P;
  const bool ln = w.ln != nullptr;
  const LnParams<const Real*> p(w.ln, H);
  const Real* rh = ln ? sv.ln_r + N : nullptr;
  const Real* rs = ln ? sv.ln_r + 2 * N : nullptr;
  // what dW_hh and the recurrent gradient read: d(h_{t-1} W_hh^T), through its layer norm
  // (ln_dzh), or dL/dz itself
  Real* dzh = ln ? sv.ln_dzh : dz;
  const Bf16Buffers* b16 = sv.b16;
  auto step16 = [&](int64_t b0) { return b16 ? b16->step_rows + b0 * G : nullptr; };
  team_barrier();  // dh_rec and ds from the caller (set by units) before rows read them; the
                   // layer above done with the panels
  if constexpr (std::is_same_v<Real, float>) {
    if (b16) {  // op(W) = W of W_hh [G, P], W_hr [P, H] and W_ih [G, I] (dx) in panels
      tm.for_shares(H, [&](const TeamSlice& ts) {
        bf16_pack_share(b16->u_panels, w.W_hh, P, false, G, P, ts);
        if (w.W_hr) bf16_pack_share(b16->r_panels, w.W_hr, H, false, P, H, ts);
        if (dx) bf16_pack_share(b16->w_panels, w.W_ih, I, false, G, I, ts);
      });
      team_barrier();
    }
  }
  tm.for_shares(H, [&](const TeamSlice& ts) {
    const int64_t b0 = step_row0<Real>(ts, B), b1 = step_row1<Real>(ts, B), nb = b1 - b0;
    if (nb <= 0) return tm.poll_outside();  // no steps of its own to poll between
    if (sv.zoned()) std::fill_n(sv.zone_dh + b0 * P, nb * P, Real(0));
    for (int64_t t = T - 1; t >= 0; --t) {
      tm.poll_outside();
      const int64_t first = t * B + b0;
      // dL/dh_t in full, then zoneout's split (h_t = d h_{t-1} + (1 - d) h~_t, s alike):
      // dh_rec's rows become dL/dh~_t
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t row = t * B + b;
        Real* dh = dh_rec + b * P;
        for (int64_t j = 0; j < P; ++j) {
          Real full = dh[j] + (dh_out ? dh_out[row * P + j] : Real(0));
          if (sv.zoned()) {
            const Real d = sv.zone_h ? sv.zone_h[t * BP + b * P + j] : sv.zone_p_h;
            full += sv.zone_dh[b * P + j];
            sv.zone_dh[b * P + j] = d * full, full *= Real(1) - d;
          }
          dh[j] = full;
        }
        Real* dsr = ds + b * H;
        for (int64_t j = 0; j < H && sv.zoned(); ++j) {
          const Real d = sv.zone_s ? sv.zone_s[t * BH + b * H + j] : sv.zone_p_s;
          sv.zone_ds[b * H + j] = d * dsr[j], dsr[j] *= Real(1) - d;
        }
      }
      // dL/dm: through the projection (dh~ W_hr; dh~ kept for dW_hr), or dL/dh~ itself
      Real* dm_block = dh_rec + b0 * P;
      if (sv.proj > 0) {
        std::copy_n(dh_rec + b0 * P, nb * P, sv.proj_dh + first * P);
        dm_block = sv.proj_dm + first * H;
        product(b16, step16(b0), b16 ? b16->r_panels : nullptr, nb, H, P, dh_rec + b0 * P, P, Tr::N,
                w.W_hr, H, Real(0), dm_block, H);
      }
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t row = t * B + b;
        const Real* z = sv.gates + row * G;
        Real* dp = dz + row * G;  // dL/dz, z the sum of both products (or layer norms) and biases
        const Real* sp = sv.sseq + t * BH + b * H;
        Real* dm = dm_block + (b - b0) * H;  // becomes dL/ds~ from m, in place
        Real* dsr = ds + b * H;
        if (ln) {  // m = o tanh(y), y = s^ g_c + b_c
          const Real* sh = sv.ln_s + row * H;
          Real* dy = sv.ln_dy + row * H;
          for (int64_t j = 0; j < H; ++j) {
            const Real o = z[3 * H + j], ty = tanh_(sh[j] * p.gc[j] + p.bc[j]);
            dp[3 * H + j] = dm[j] * ty * o * (Real(1) - o);
            dy[j] = dm[j] * o * (Real(1) - ty * ty);
          }
          normalize_backward(dm, dy, p.gc, sh, rs[row], H);  // dL/ds~ through LN(s)
        } else {                                             // m = o tanh(s~)
          const Real* st = (sv.zseq ? sv.zseq + t * BH : sv.sseq + (t + 1) * BH) + b * H;
          for (int64_t j = 0; j < H; ++j) {
            const Real o = z[3 * H + j], ts_ = tanh_(st[j]);
            dp[3 * H + j] = dm[j] * ts_ * o * (Real(1) - o);
            dm[j] = dm[j] * o * (Real(1) - ts_ * ts_);
          }
        }
        // s~ = f s_prev + i a, with the carried dL/ds~ from step t+1
        for (int64_t j = 0; j < H; ++j) {
          const Real dst = dm[j] + dsr[j];
          const Real i = z[j], f = z[H + j], a = z[2 * H + j];
          dp[j] = dst * a * i * (Real(1) - i);
          dp[H + j] = dst * sp[j] * f * (Real(1) - f);
          dp[2 * H + j] = dst * i * (Real(1) - a * a);
          dsr[j] = dst * f + (sv.zoned() ? sv.zone_ds[b * H + j] : Real(0));
        }
        if (ln)  // d(h_{t-1} W_hh^T) through LN(.; g_hh)
          normalize_backward(sv.ln_dzh + row * G, dp, p.gh, sv.ln_h + row * G, rh[row], G);
      }
      // dL/dh_{t-1} (recurrent part) = d(h_{t-1} W_hh^T) W_hh, times the recurrent mask
      product(b16, step16(b0), b16 ? b16->u_panels : nullptr, nb, P, G, dzh + first * G, G, Tr::N,
              w.W_hh, P, Real(0), dh_rec + b0 * P, P);
      if (sv.rec_mask)
        for (int64_t i = b0 * P; i < b1 * P; ++i) dh_rec[i] *= sv.rec_mask[i];
      if (t == 0 && sv.zoned())  // dL/dh_0 also gets zoneout's kept share of dL/dh_1
        for (int64_t i = b0 * P; i < b1 * P; ++i) dh_rec[i] += sv.zone_dh[i];
    }
  });
  team_barrier();  // every row's dL/dz and d(h W_hh^T)
  const LnParams<Real*> dl(g.dln, H);
  const Real* hd = (sv.rec_mask ? sv.hdseq : sv.hseq);  // h_{t-1} as the product read it
  if (b16) {                                            // dW_hh's and dW_hr's operands
    tm.for_shares(H, [&](const TeamSlice& ts) {
      const auto [g0, g1] = grad_rows(b16, G, ts);
      grad_operands(b16, b16->dz_blocks, b16->h_panels, g0, g1, P, N, dzh, G, hd, P, ts);
      if (sv.proj == 0) return;
      const auto [p0, p1] = grad_rows(b16, P, ts);
      grad_operands(b16, b16->p_blocks, b16->m_panels, p0, p1, H, N, sv.proj_dh, P, sv.mseq, H, ts);
    });
    team_barrier();
  }
  tm.for_shares(H, [&](const TeamSlice& ts) {
    // Each share a range of the 4H gate rows: dW_hh, the biases and the two 4H layer norms'
    // parameters (sums over every row in order: the same for any team).
    const auto [g0, g1] = grad_rows(b16, G, ts);
    if (g1 > g0) {
      weight_grad(b16, b16 ? b16->dz_blocks : nullptr, b16 ? b16->h_panels : nullptr, g0, g1, P, N,
                  dzh, G, hd, P, g.dW_hh);
      Real* db = sv.dbias;
      std::fill(db + g0, db + g1, Real(0));
      for (int64_t r = 0; r < N; ++r) {
        const Real* dp = dz + r * G;
        for (int64_t q = g0; q < g1; ++q) db[q] += dp[q];
        if (!ln) continue;
        const Real* xh = sv.ln_x + r * G;
        const Real* hh = sv.ln_h + r * G;
        for (int64_t q = g0; q < g1; ++q) {
          dl.gx[q] += dp[q] * xh[q], dl.bx[q] += dp[q];
          dl.gh[q] += dp[q] * hh[q], dl.bh[q] += dp[q];
        }
      }
      for (int64_t q = g0; q < g1; ++q) g.db_ih[q] += db[q], g.db_hh[q] += db[q];
    }
    if (ln) {  // the cell's layer norm, a range of the H units
      const int64_t c0 = split_edge(H, ts.id, ts.size), c1 = split_edge(H, ts.id + 1, ts.size);
      for (int64_t r = 0; r < N; ++r)
        for (int64_t j = c0; j < c1; ++j) {
          const Real dy = sv.ln_dy[r * H + j];
          dl.gc[j] += dy * sv.ln_s[r * H + j], dl.bc[j] += dy;
        }
    }
    if (sv.proj > 0) {  // dW_hr += dh~^T m, a range of its P rows
      const auto [p0, p1] = grad_rows(b16, P, ts);
      weight_grad(b16, b16 ? b16->p_blocks : nullptr, b16 ? b16->m_panels : nullptr, p0, p1, H, N,
                  sv.proj_dh, P, sv.mseq, H, g.dW_hr);
    }
  });
  team_barrier();  // dL/dz read by every share above before it is overwritten below
  if (ln) {        // d(x W_ih^T) through LN(.; g_ih), in place of dL/dz, each share's rows
    tm.for_shares(H, [&](const TeamSlice& ts) {
      for (int64_t r = ts.row0(N); r < ts.row1(N); ++r)
        normalize_backward(dz + r * G, dz + r * G, p.gx, sv.ln_x + r * G, sv.ln_r[r], G);
    });
    team_barrier();
  }
  if (!b16) {
    tm.for_shares(
        H, [&](const TeamSlice& ts) { input_grads(dx, g.dW_ih, dz, x, w.W_ih, ts, N, I, H); });
    return;
  }
  // bf16: dW_ih += dz^T x (dz^T's blocks again where layer norm changed dz) and dx = dz W_ih
  tm.for_shares(H, [&](const TeamSlice& ts) {
    const auto [g0, g1] = grad_rows(b16, G, ts);
    grad_operands(b16, ln ? b16->dz_blocks : nullptr, b16->x_panels, ln ? g0 : 0, ln ? g1 : 0, I, N,
                  dz, G, x, I, ts);
  });
  team_barrier();  // every panel of x
  tm.for_shares(H, [&](const TeamSlice& ts) {
    const auto [g0, g1] = grad_rows(b16, G, ts);
    weight_grad(b16, b16->dz_blocks, b16->x_panels, g0, g1, I, N, dz, G, x, I, g.dW_ih);
    const int64_t r0 = ts.row0(N), r1 = ts.row1(N);
    if (dx)
      product(b16, b16->a_rows + r0 * G, b16->w_panels, r1 - r0, I, G, dz + r0 * G, G, Tr::N,
              w.W_ih, I, Real(0), dx + r0 * I, I);
  });
}

#define LSTMGRAD_INSTANTIATE(Real)                                                              \
  template void row_layer_forward<Real>(const LayerSaved<Real>&, const Real*,                   \
                                        const LayerWeights<Real>&, const TeamMember&, int64_t,  \
                                        int64_t, int64_t, int64_t);                             \
  template void row_layer_backward<Real>(Real*, const LayerGrads<Real>&, Real*, Real*, Real*,   \
                                         const Real*, const LayerSaved<Real>&, const Real*,     \
                                         const LayerWeights<Real>&, const TeamMember&, int64_t, \
                                         int64_t, int64_t, int64_t);
LSTMGRAD_INSTANTIATE(float)
LSTMGRAD_INSTANTIATE(double)
#undef LSTMGRAD_INSTANTIATE

}  // namespace lstmgrad::cpu
