#include "cpu/ln_layer.hpp"

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "core/gates.hpp"
#include "cpu/blas.hpp"

namespace lstmgrad::cpu {

namespace {

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

// The layer norm parameters inside LayerWeights::ln (and their gradients inside dln).
template <class P>
struct LnParams {
  P gx, bx, gh, bh, gc, bc;
  LnParams(P base, int64_t H)
      : gx(base),
        bx(base + 4 * H),
        gh(base + 8 * H),
        bh(base + 12 * H),
        gc(base + 16 * H),
        bc(base + 17 * H) {}
};

}  // namespace

template <class Real>
void ln_layer_forward(const LayerSaved<Real>& sv, const Real* x, const LayerWeights<Real>& w,
                      const TeamMember& tm, int64_t T, int64_t B, int64_t I, int64_t H) {
  const int64_t G = 4 * H, N = T * B, BH = B * H;
  const LnParams<const Real*> p(w.ln, H);
  Real* rx = sv.ln_r;
  Real* rh = sv.ln_r + N;
  Real* rs = sv.ln_r + 2 * N;
  // x^ = LN(x W_ih^T) for all T*B rows at once, each share's rows
  tm.for_shares(H, [&](const TeamSlice& ts) {
    const int64_t r0 = ts.row0(N), r1 = ts.row1(N);
    if (r1 <= r0) return;
    gemm(Tr::N, Tr::T, r1 - r0, G, I, Real(1), x + r0 * I, I, w.W_ih, I, Real(0), sv.ln_x + r0 * G,
         G);
    for (int64_t r = r0; r < r1; ++r) rx[r] = normalize(sv.ln_x + r * G, G);
  });
#pragma omp barrier  // every row of x^, the packed bias, h0 and s0 complete
  // The steps: each share its rows of the batch, every unit, no barrier between steps.
  tm.for_shares(H, [&](const TeamSlice& ts) {
    const int64_t b0 = ts.row0(B), b1 = ts.row1(B), nb = b1 - b0;
    if (nb <= 0) return;
    for (int64_t t = 0; t < T; ++t) {
      const Real* hp = sv.hseq + t * BH + b0 * H;
      if (sv.rec_mask) {  // the product reads h_{t-1} * mask (hdseq, for dW_hh)
        Real* hd = sv.hdseq + t * BH + b0 * H;
        for (int64_t i = 0; i < nb * H; ++i) hd[i] = hp[i] * sv.rec_mask[b0 * H + i];
        hp = hd;
      }
      gemm(Tr::N, Tr::T, nb, G, H, Real(1), hp, H, w.W_hh, H, Real(0), sv.ln_h + (t * B + b0) * G,
           G);
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t row = t * B + b;
        Real* hh = sv.ln_h + row * G;
        rh[row] = normalize(hh, G);
        const Real* xh = sv.ln_x + row * G;
        Real* z = sv.gates + row * G;
        for (int64_t q = 0; q < G; ++q)
          z[q] = (xh[q] * p.gx[q] + p.bx[q]) + (hh[q] * p.gh[q] + p.bh[q]) + sv.bias[q];
        // one loop per nonlinearity, so that each vectorises: i, f (sigmoid), a (tanh), o
        for (int64_t j = 0; j < 2 * H; ++j) z[j] = sigmoid(z[j]);
        for (int64_t j = 2 * H; j < 3 * H; ++j) z[j] = tanh_(z[j]);
        for (int64_t j = 3 * H; j < G; ++j) z[j] = sigmoid(z[j]);
        const Real* sp = cell_state_at(sv, t, B, H) + b * H;
        Real* st = (sv.zseq ? sv.zseq + t * BH : cell_state_at(sv, t + 1, B, H)) + b * H;
        Real* sh = sv.ln_s + row * H;
        for (int64_t j = 0; j < H; ++j)
          st[j] = z[H + j] * sp[j] + z[j] * z[2 * H + j], sh[j] = st[j];
        rs[row] = normalize(sh, H);
        Real* h = sv.hseq + (t + 1) * BH + b * H;
        for (int64_t j = 0; j < H; ++j) h[j] = z[3 * H + j] * tanh_(sh[j] * p.gc[j] + p.bc[j]);
        if (sv.zoned()) {  // as lstm_layer.cpp's zoneout_forward, for this row
          Real* s = cell_state_at(sv, t + 1, B, H) + b * H;
          const Real* h_prev = sv.hseq + t * BH + b * H;
          const int64_t at = t * BH + b * H;
          for (int64_t j = 0; j < H; ++j) {
            const Real ds = sv.zone_s ? sv.zone_s[at + j] : sv.zone_p_s;
            const Real dh = sv.zone_h ? sv.zone_h[at + j] : sv.zone_p_h;
            s[j] = ds * sp[j] + (Real(1) - ds) * st[j];
            h[j] = dh * h_prev[j] + (Real(1) - dh) * h[j];
          }
        }
      }
    }
  });
#pragma omp barrier  // every row of h before the next layer reads it
}

template <class Real>
void ln_layer_backward(Real* dx, const LayerGrads<Real>& g, Real* dz, Real* dh_rec, Real* ds,
                       const Real* dh_out, const LayerSaved<Real>& sv, const Real* x,
                       const LayerWeights<Real>& w, const TeamMember& tm, int64_t T, int64_t B,
                       int64_t I, int64_t H) {
  const int64_t G = 4 * H, N = T * B, BH = B * H;
  const LnParams<const Real*> p(w.ln, H);
  const Real* rx = sv.ln_r;
  const Real* rh = sv.ln_r + N;
  const Real* rs = sv.ln_r + 2 * N;
#pragma omp barrier  // dh_rec and ds from the caller (set by units) before rows read them
  tm.for_shares(H, [&](const TeamSlice& ts) {
    const int64_t b0 = ts.row0(B), b1 = ts.row1(B), nb = b1 - b0;
    if (nb <= 0) return;
    if (sv.zoned()) std::fill_n(sv.zone_dh + b0 * H, nb * H, Real(0));
    for (int64_t t = T - 1; t >= 0; --t) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t row = t * B + b, at = t * BH + b * H;
        const Real* z = sv.gates + row * G;
        Real* dp = dz + row * G;  // dL/dz, z the sum of both layer norms and the biases
        const Real* sh = sv.ln_s + row * H;
        const Real* sp = sv.sseq + t * BH + b * H;
        Real* dh = dh_rec + b * H;
        Real* dsr = ds + b * H;
        Real* dy = sv.ln_dy + row * H;
        // dL/dh_t in full, then zoneout's split (h_t = d h_{t-1} + (1 - d) h~_t, s alike)
        for (int64_t j = 0; j < H; ++j) {
          Real full = dh[j] + (dh_out ? dh_out[row * H + j] : Real(0));
          if (sv.zoned()) {
            const Real d_h = sv.zone_h ? sv.zone_h[at + j] : sv.zone_p_h;
            const Real d_s = sv.zone_s ? sv.zone_s[at + j] : sv.zone_p_s;
            full += sv.zone_dh[b * H + j];
            sv.zone_dh[b * H + j] = d_h * full, full *= Real(1) - d_h;
            sv.zone_ds[b * H + j] = d_s * dsr[j], dsr[j] *= Real(1) - d_s;
          }
          dh[j] = full;  // dL/dh~_t
        }
        // h = o tanh(y), y = s^ g_c + b_c
        for (int64_t j = 0; j < H; ++j) {
          const Real o = z[3 * H + j], ty = tanh_(sh[j] * p.gc[j] + p.bc[j]);
          dp[3 * H + j] = dh[j] * ty * o * (Real(1) - o);
          dy[j] = dh[j] * o * (Real(1) - ty * ty);
        }
        normalize_backward(dh, dy, p.gc, sh, rs[row], H);  // dL/ds~ through LN(s), into dh
        // s~ = f s_prev + i a, with the carried dL/ds~ from step t+1
        for (int64_t j = 0; j < H; ++j) {
          const Real dst = dh[j] + dsr[j];
          const Real i = z[j], f = z[H + j], a = z[2 * H + j];
          dp[j] = dst * a * i * (Real(1) - i);
          dp[H + j] = dst * sp[j] * f * (Real(1) - f);
          dp[2 * H + j] = dst * i * (Real(1) - a * a);
          dsr[j] = dst * f + (sv.zoned() ? sv.zone_ds[b * H + j] : Real(0));
        }
        // d(h_{t-1} W_hh^T) through LN(.; g_hh)
        normalize_backward(sv.ln_dzh + row * G, dp, p.gh, sv.ln_h + row * G, rh[row], G);
      }
      // dL/dh_{t-1} (recurrent part) = d(h_{t-1} W_hh^T) W_hh, times the recurrent mask
      gemm(Tr::N, Tr::N, nb, H, G, Real(1), sv.ln_dzh + (t * B + b0) * G, G, w.W_hh, H, Real(0),
           dh_rec + b0 * H, H);
      if (sv.rec_mask)
        for (int64_t i = b0 * H; i < b1 * H; ++i) dh_rec[i] *= sv.rec_mask[i];
      if (t == 0 && sv.zoned())  // dL/dh_0 also gets zoneout's kept share of dL/dh_1
        for (int64_t i = b0 * H; i < b1 * H; ++i) dh_rec[i] += sv.zone_dh[i];
    }
  });
#pragma omp barrier  // every row's dL/dz and d(h W_hh^T)
  const LnParams<Real*> dl(g.dln, H);
  tm.for_shares(H, [&](const TeamSlice& ts) {
    // Each share a range of the 4H gate rows: dW_hh, the biases and the two 4H layer norms'
    // parameters (sums over every row in order: the same for any team).
    const int64_t g0 = split_edge(G, ts.id, ts.size), g1 = split_edge(G, ts.id + 1, ts.size);
    if (g1 > g0) {
      const Real* hd = (sv.rec_mask ? sv.hdseq : sv.hseq);
      gemm(Tr::T, Tr::N, g1 - g0, H, N, Real(1), sv.ln_dzh + g0, G, hd, H, Real(1),
           g.dW_hh + g0 * H, H);
      Real* db = sv.dbias;
      std::fill(db + g0, db + g1, Real(0));
      for (int64_t r = 0; r < N; ++r) {
        const Real* dp = dz + r * G;
        const Real* xh = sv.ln_x + r * G;
        const Real* hh = sv.ln_h + r * G;
        for (int64_t q = g0; q < g1; ++q) {
          db[q] += dp[q];
          dl.gx[q] += dp[q] * xh[q], dl.bx[q] += dp[q];
          dl.gh[q] += dp[q] * hh[q], dl.bh[q] += dp[q];
        }
      }
      for (int64_t q = g0; q < g1; ++q) g.db_ih[q] += db[q], g.db_hh[q] += db[q];
    }
    // The cell's layer norm, a range of the H units.
    const int64_t c0 = split_edge(H, ts.id, ts.size), c1 = split_edge(H, ts.id + 1, ts.size);
    for (int64_t r = 0; r < N; ++r)
      for (int64_t j = c0; j < c1; ++j) {
        const Real dy = sv.ln_dy[r * H + j];
        dl.gc[j] += dy * sv.ln_s[r * H + j], dl.bc[j] += dy;
      }
  });
#pragma omp barrier  // dL/dz read by every share above before it is overwritten below
  // d(x W_ih^T) through LN(.; g_ih), in place of dL/dz, each share's rows
  tm.for_shares(H, [&](const TeamSlice& ts) {
    for (int64_t r = ts.row0(N); r < ts.row1(N); ++r)
      normalize_backward(dz + r * G, dz + r * G, p.gx, sv.ln_x + r * G, rx[r], G);
  });
#pragma omp barrier
  tm.for_shares(H,
                [&](const TeamSlice& ts) { input_grads(dx, g.dW_ih, dz, x, w.W_ih, ts, N, I, H); });
}

#define LSTMGRAD_INSTANTIATE(Real)                                                             \
  template void ln_layer_forward<Real>(const LayerSaved<Real>&, const Real*,                   \
                                       const LayerWeights<Real>&, const TeamMember&, int64_t,  \
                                       int64_t, int64_t, int64_t);                             \
  template void ln_layer_backward<Real>(Real*, const LayerGrads<Real>&, Real*, Real*, Real*,   \
                                        const Real*, const LayerSaved<Real>&, const Real*,     \
                                        const LayerWeights<Real>&, const TeamMember&, int64_t, \
                                        int64_t, int64_t, int64_t);
LSTMGRAD_INSTANTIATE(float)
LSTMGRAD_INSTANTIATE(double)
#undef LSTMGRAD_INSTANTIATE

}  // namespace lstmgrad::cpu
