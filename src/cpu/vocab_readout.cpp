#include "cpu/vocab_readout.hpp"

// GCC 12's avx512fintrin.h builds the "undefined" pass-through vector of the unmasked min, max
// and roundscale by initialising a variable with itself, which -Wuninitialized reports at every
// inlined call; the vectors are never read.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "core/gates.hpp"
#include "cpu/panel_gemm.hpp"

namespace lstmgrad::cpu {

namespace {

#define LSTMGRAD_AVX512 __attribute__((target("avx512f,prfchw")))

constexpr int64_t kW = kPanelWidth;  // 16 positions per vector
// Vocabulary rows per chunk: the chunk's logits or G ([Np/16][kChunk][16], 150 KB at N = 400)
// stay in L2 next to the small operands (h panels, a thread's dh^T). Measured on PTB shapes.
constexpr int64_t kChunk = 96;
constexpr float kLowest = -3.0e38f;

// e^x, 16 lanes: core::fast_exp's algorithm and constants (clamped to [-87, 88]).
LSTMGRAD_AVX512 inline __m512 exp16(__m512 x) {
  using E = core::FastExp;
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(E::lo)), _mm512_set1_ps(E::hi));
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(E::inv_ln2)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(E::ln2_hi), x);  // x - k ln2 in two parts
  r = _mm512_fmadd_ps(k, _mm512_set1_ps(E::ln2_lo), r);
  __m512 p = _mm512_set1_ps(E::c[0]);
  for (int i = 1; i < 6; ++i) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(E::c[i]));
  p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, k);
}

int64_t split(int64_t n, int id, int nt) {
  return n * id / nt;
}

int64_t round_up(int64_t n, int64_t m) {
  return (n + m - 1) / m * m;
}

// Lanes of token panel p that are real positions (the last one may be partial).
__mmask16 real_lanes(int64_t N, int64_t p) {
  const int64_t width = std::min(kW, N - p * kW);
  return static_cast<__mmask16>((1u << width) - 1u);
}

// h [N,H] into token panels hT [Np/16][H][16] (h's rows are op(W)'s columns for pack_panels)
// and input panels hp [ceil(H/16)][Np][16], for the token panels [p0, p1). Padding lanes are 0.
void pack_h(const float* h, int64_t N, int64_t H, int64_t Np, int64_t p0, int64_t p1, float* hT,
            float* hp) {
  if (p1 <= p0) return;
  const int64_t n0 = p0 * kW, n1 = p1 * kW;
  pack_panels(hT + p0 * H * kW, h + n0 * H, H, true, {1, std::min(N, n1) - n0, 0, H});
  const int64_t Hq = (H + kW - 1) / kW;
  for (int64_t q = 0; q < Hq; ++q)
    for (int64_t n = n0; n < n1; ++n) {
      float* row = hp + (q * Np + n) * kW;
      for (int64_t l = 0; l < kW; ++l) {
        const int64_t j = q * kW + l;
        row[l] = n < N && j < H ? h[n * H + j] : 0.0f;
      }
    }
}

// Running max and sum of exp over rows [0, rows) of one token panel's chunk z ([rows][16]).
LSTMGRAD_AVX512 void chunk_stats(const float* z, int64_t rows, float* max, float* sum) {
  __m512 m0 = _mm512_set1_ps(kLowest), m1 = m0;
  int64_t v = 0;
  for (; v + 2 <= rows; v += 2) {
    m0 = _mm512_max_ps(m0, _mm512_loadu_ps(z + v * kW));
    m1 = _mm512_max_ps(m1, _mm512_loadu_ps(z + (v + 1) * kW));
  }
  if (v < rows) m0 = _mm512_max_ps(m0, _mm512_loadu_ps(z + v * kW));
  const __m512 old_m = _mm512_loadu_ps(max);
  const __m512 m = _mm512_max_ps(old_m, _mm512_max_ps(m0, m1));
  __m512 s0 = _mm512_mul_ps(_mm512_loadu_ps(sum), exp16(_mm512_sub_ps(old_m, m)));
  __m512 s1 = _mm512_setzero_ps();
  for (v = 0; v + 2 <= rows; v += 2) {
    s0 = _mm512_add_ps(s0, exp16(_mm512_sub_ps(_mm512_loadu_ps(z + v * kW), m)));
    s1 = _mm512_add_ps(s1, exp16(_mm512_sub_ps(_mm512_loadu_ps(z + (v + 1) * kW), m)));
  }
  if (v < rows) s0 = _mm512_add_ps(s0, exp16(_mm512_sub_ps(_mm512_loadu_ps(z + v * kW), m)));
  _mm512_storeu_ps(max, m);
  _mm512_storeu_ps(sum, _mm512_add_ps(s0, s1));
}

// G chunk: g[p][v][16] = scale * exp(z[p][v] - lse[p]) for rows [0, rows) (padding lanes 0), and
// dc[v] += the row's sum over all positions. z's panels are zs apart, g's gs apart.
// While it runs, the lines the chunk's GEMMs read next are fetched: rows of `width` floats of
// ahead0 (read) and ahead1 (written), W's and dW's rows of this chunk, one row per row of G.
LSTMGRAD_AVX512 void chunk_softmax(const float* z, int64_t zs, const float* lse, int64_t N,
                                   int64_t np, int64_t rows, float scale, float* g, int64_t gs,
                                   float* dc, const float* ahead0, const float* ahead1,
                                   int64_t width) {
  const __m512 sc = _mm512_set1_ps(scale);
  for (int64_t v = 0; v < rows; ++v) {
    for (int64_t j = 0; j < width; j += kW) {
      __builtin_prefetch(ahead0 + v * width + j, 0, 3);
      __builtin_prefetch(ahead1 + v * width + j, 1, 3);
    }
    for (int64_t p = 0; p < np; ++p)  // the next chunk's logits
      __builtin_prefetch(z + p * zs + (v + kChunk) * kW, 0, 2);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t p = 0; p < np; ++p) {
      const __m512 e =
          exp16(_mm512_sub_ps(_mm512_loadu_ps(z + p * zs + v * kW), _mm512_loadu_ps(lse + p * kW)));
      const __m512 gv = _mm512_maskz_mul_ps(real_lanes(N, p), e, sc);
      _mm512_store_ps(g + p * gs + v * kW, gv);
      acc = _mm512_add_ps(acc, gv);
    }
    alignas(64) float lanes[kW];
    _mm512_store_ps(lanes, acc);
    float row = 0;
    for (float x : lanes) row += x;
    dc[v] += row;
  }
}

}  // namespace

void VocabReadout::reserve(int64_t N, int64_t H, int64_t V, int threads) {
  const int64_t Np = round_up(N, kW), Hq = (H + kW - 1) / kW;
  const int64_t need = Np * H + Hq * Np * kW + Np * V + Np + 2 * threads * Np +
                       threads * (Np * kChunk + H * Np) + 8 * kW;  // + padding to align
  N_ = N, H_ = H, V_ = V, Np_ = Np;
  if (static_cast<size_t>(need) > mem_.size()) mem_.assign(static_cast<size_t>(need), 0.0f);
  float* p = mem_.data();
  auto carve = [&p](int64_t n) {  // 64-byte aligned blocks
    const auto addr = reinterpret_cast<uintptr_t>(p);
    float* q = p + ((64 - addr % 64) % 64) / sizeof(float);
    p = q + n;
    return q;
  };
  hT_ = carve(Np * H);
  hp_ = carve(Hq * Np * kW);
  Z_ = carve(Np * V);
  lse_ = carve(Np);
  max_ = carve(threads * Np);
  sum_ = carve(threads * Np);
  G_ = carve(threads * Np * kChunk);
  dhT_ = carve(threads * H * Np);
}

void VocabReadout::forward(int id, int nt, const float* h, const float* W, const float* c,
                           const int64_t* y, double* row_loss) {
  const int64_t N = N_, H = H_, V = V_, Np = Np_, np = Np / kW;
  pack_h(h, N, H, Np, split(np, id, nt), split(np, id + 1, nt), hT_, hp_);
  float* mx = max_ + id * Np;
  float* sm = sum_ + id * Np;
  std::fill_n(mx, Np, kLowest);
  std::fill_n(sm, Np, 0.0f);
#pragma omp barrier
  const int64_t v0 = split(V, id, nt), v1 = split(V, id + 1, nt);
  for (int64_t va = v0; va < v1; va += kChunk) {
    const int64_t rows = std::min(kChunk, v1 - va);
    // Z[p][v] = c[v] + W[v] . h_(16p..16p+15): A = W's rows, B = the token panels of h^T.
    panel_tiles(rows, H, AForm::rows, W + va * H, H, hT_, H * kW, Np, Z_ + va * kW, kW, V * kW,
                Start::row_bias, c + va);
    // The statistics, panel by panel; meanwhile the next chunk's rows of W are fetched, an
    // equal share of its lines per panel.
    const int64_t next = std::clamp<int64_t>(v1 - va - rows, 0, kChunk) * H;  // floats
    const int64_t share = (next + np * kW - 1) / (np * kW) * kW;
    for (int64_t p = 0; p < np; ++p) {
      for (int64_t f = p * share; f < std::min(next, (p + 1) * share); f += kW)
        __builtin_prefetch(W + (va + rows) * H + f, 0, 3);
      chunk_stats(Z_ + (p * V + va) * kW, rows, mx + p * kW, sm + p * kW);
    }
  }
#pragma omp barrier
  // log-sum-exp of each position from the threads' (max, sum), and its loss.
  const int64_t n0 = split(Np, id, nt), n1 = split(Np, id + 1, nt);
  for (int64_t n = n0; n < n1; ++n) {
    float m = kLowest;
    for (int t = 0; t < nt; ++t) m = std::max(m, max_[t * Np + n]);
    double s = 0;
    for (int t = 0; t < nt; ++t)
      s += static_cast<double>(sum_[t * Np + n]) *
           std::exp(static_cast<double>(max_[t * Np + n] - m));
    const double lse = static_cast<double>(m) + std::log(s);
    lse_[n] = static_cast<float>(lse);
    if (n < N) row_loss[n] = lse - static_cast<double>(Z_[((n / kW) * V + y[n]) * kW + n % kW]);
  }
}

void VocabReadout::backward(int id, int nt, float scale, const float* W, const int64_t* y,
                            float* dW, float* dc, float* dh) {
  const int64_t N = N_, H = H_, V = V_, Np = Np_, np = Np / kW;
  const int64_t gs = kChunk * kW;  // one token panel of a G chunk
  float* g = G_ + id * Np * kChunk;
  float* dhT = dhT_ + id * H * Np;
  const int64_t v0 = split(V, id, nt), v1 = split(V, id + 1, nt);
  if (v0 == v1) std::fill_n(dhT, H * Np, 0.0f);
  for (int64_t va = v0; va < v1; va += kChunk) {
    const int64_t rows = std::min(kChunk, v1 - va);
    chunk_softmax(Z_ + va * kW, V * kW, lse_, N, np, rows, scale, g, gs, dc + va, W + va * H,
                  dW + va * H, H);
    for (int64_t n = 0; n < N; ++n)  // - scale at each position's target
      if (y[n] >= va && y[n] < va + rows) {
        g[(n / kW) * gs + (y[n] - va) * kW + n % kW] -= scale;
        dc[y[n]] -= scale;
      }
    // dW[v] += sum_n G[n][v] h_n: A = the chunk of G (blocks of 16 positions), B = h's panels.
    panel_tiles(rows, Np, AForm::blocks, g, gs, hp_, Np * kW, H, dW + va * H, H, kW,
                Start::accumulate, nullptr);
    // dh^T[j][n] (+)= sum_v W[v][j] G[n][v]: A = W^T of the chunk, B = the chunk of G itself.
    panel_tiles(H, rows, AForm::cols, W + va * H, H, g, gs, Np, dhT, Np, kW,
                va == v0 ? Start::zero : Start::accumulate, nullptr);
  }
#pragma omp barrier
  const int64_t n0 = split(N, id, nt), n1 = split(N, id + 1, nt);
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t j = 0; j < H; ++j) {
      float s = dhT_[j * Np + n];
      for (int t = 1; t < nt; ++t) s += dhT_[(t * H + j) * Np + n];
      dh[n * H + j] = s;
    }
}

void VocabReadout::probs(float* out) const {
  for (int64_t n = 0; n < N_; ++n)
    for (int64_t v = 0; v < V_; ++v)
      out[n * V_ + v] = std::exp(Z_[((n / kW) * V_ + v) * kW + n % kW] - lse_[n]);
}

}  // namespace lstmgrad::cpu
