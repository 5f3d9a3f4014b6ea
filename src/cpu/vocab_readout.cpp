#include "cpu/vocab_readout.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "cpu/panel_gemm.hpp"
#include "cpu/simd_math.hpp"
#include "cpu/team.hpp"

namespace lstmgrad::cpu {

namespace {

constexpr int64_t kW = kPanelWidth;  // 16 positions per vector
// Vocabulary rows per chunk: the chunk's logits or G ([Np/16][kChunk][16], 150 KB at N = 400)
// stay in L2 next to the small operands (h panels, a group's dh^T partial). Measured on PTB
// shapes (64 and 128 no faster).
constexpr int64_t kChunk = 96;
// Backward's groups of chunks, each with its own dh^T partial (a fixed number, so that the sums
// do not depend on the team), few enough that the partials (16 x H x N floats, 5 MB at PTB) stay
// cheap to sum. Their sizes fall within each half (a team of two's shares: 8 large to 1 small):
// a thread that runs out of its own takes the other's smallest, so the two finish within about
// one small group of each other (equal groups left up to one large group, ~0.6 ms at PTB, of
// waiting).
constexpr int64_t kGroups = 16;

// Weight of the groups before group g: 8 - (i mod 8) each, in closed form.
int64_t weight_before(int64_t g) {
  const int64_t q = g / 8, r = g % 8;
  return 36 * q + 8 * r - r * (r - 1) / 2;
}

// The first chunk of group g of `groups` groups of `chunks` (g = groups: `chunks`): at least one
// chunk each, the rest shared by weight.
int64_t group_start(int64_t g, int64_t chunks, int64_t groups) {
  return g + (chunks - groups) * weight_before(g) / weight_before(groups);
}

constexpr float kLowest = -3.0e38f;

int64_t split(int64_t n, int id, int nt) {
  return n * id / nt;
}

int64_t round_up(int64_t n, int64_t m) {
  return (n + m - 1) / m * m;
}

// pack_h's bf16 operands: the token panels [p0, p1) of h^T over K = H, and the input panels
// [q0, q1) of h over K = N.
void pack_h16(const float* h, int64_t N, int64_t H, int64_t p0, int64_t p1, int64_t q0, int64_t q1,
              bf16_t* hT16, bf16_t* hp16) {
  if (p1 > p0) {
    const int64_t n0 = p0 * kW, tokens = std::min(N, p1 * kW) - n0;
    const PanelLayout layout{1, tokens, 0, H};
    pack_bf16_panels(hT16 + p0 * bf16_panel_size(H), h + n0 * H, H, true, layout, 0,
                     layout.panels());
  }
  pack_bf16_panels(hp16, h, H, false, {1, H, 0, N}, q0, q1);
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

// The max and the sum of exp(z - max) over rows [0, rows) of one token panel's chunk z
// ([rows][16]), per lane.
LSTMGRAD_AVX512 void chunk_stats(const float* z, int64_t rows, float* max, float* sum) {
  __m512 m0 = _mm512_set1_ps(kLowest), m1 = m0;
  int64_t v = 0;
  for (; v + 2 <= rows; v += 2) {
    m0 = _mm512_max_ps(m0, _mm512_loadu_ps(z + v * kW));
    m1 = _mm512_max_ps(m1, _mm512_loadu_ps(z + (v + 1) * kW));
  }
  if (v < rows) m0 = _mm512_max_ps(m0, _mm512_loadu_ps(z + v * kW));
  const __m512 m = _mm512_max_ps(m0, m1);
  __m512 s0 = _mm512_setzero_ps(), s1 = s0;
  for (v = 0; v + 2 <= rows; v += 2) {
    s0 = _mm512_add_ps(s0, exp16(_mm512_sub_ps(_mm512_loadu_ps(z + v * kW), m)));
    s1 = _mm512_add_ps(s1, exp16(_mm512_sub_ps(_mm512_loadu_ps(z + (v + 1) * kW), m)));
  }
  if (v < rows) s0 = _mm512_add_ps(s0, exp16(_mm512_sub_ps(_mm512_loadu_ps(z + v * kW), m)));
  _mm512_store_ps(max, m);
  _mm512_store_ps(sum, _mm512_add_ps(s0, s1));
}

// log sum exp of 16 positions from the chunks' statistics (max, sum at stride `stride`), taken
// in chunk order; the sum in double.
LSTMGRAD_AVX512 void combine_stats(const float* max, const float* sum, int64_t chunks,
                                   int64_t stride, float* lse) {
  __m512 m = _mm512_set1_ps(kLowest);
  for (int64_t c = 0; c < chunks; ++c) m = _mm512_max_ps(m, _mm512_load_ps(max + c * stride));
  __m512d lo = _mm512_setzero_pd(), hi = lo;
  for (int64_t c = 0; c < chunks; ++c) {
    const __m512 e = _mm512_mul_ps(_mm512_load_ps(sum + c * stride),
                                   exp16(_mm512_sub_ps(_mm512_load_ps(max + c * stride), m)));
    lo = _mm512_add_pd(lo, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
    hi = _mm512_add_pd(
        hi, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1))));
  }
  alignas(64) double s[kW];
  alignas(64) float mx[kW];
  _mm512_store_pd(s, lo);
  _mm512_store_pd(s + 8, hi);
  _mm512_store_ps(mx, m);
  for (int64_t l = 0; l < kW; ++l) lse[l] = static_cast<float>(mx[l] + std::log(s[l]));
}

// G chunk: g[p][v][16] = scale * exp(z[p][v] - lse[p]) for rows [0, rows) (lanes past position
// N - 1 are 0), and dc[v] += the row's sum over all positions. z's panels are zs apart, g's gs
// apart. While it runs, the lines the chunk's GEMMs read next are fetched: rows of `width` floats
// of ahead0 (read) and ahead1 (written), W's and dW's rows of this chunk, one row per row of G.
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
    for (int64_t p = 0; p < np; ++p)  // the next chunk's logits (right after this chunk's)
      __builtin_prefetch(z + (np + p) * zs + v * kW, 0, 2);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t p = 0; p < np; ++p) {
      const __m512 e =
          exp16(_mm512_sub_ps(_mm512_loadu_ps(z + p * zs + v * kW), _mm512_loadu_ps(lse + p * kW)));
      const __m512 gv = _mm512_maskz_mul_ps(first_lanes(N - p * kW), e, sc);
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

// The sum of squares of x [0, n), in double.
LSTMGRAD_AVX512 double sum_squares(const float* x, int64_t n) {
  __m512d lo = _mm512_setzero_pd(), hi = lo;
  for (int64_t i = 0; i < n; i += kW) {
    const __m512 v = _mm512_maskz_loadu_ps(first_lanes(n - i), x + i);
    const __m512d a = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
    const __m512d b =
        _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    lo = _mm512_fmadd_pd(a, a, lo);
    hi = _mm512_fmadd_pd(b, b, hi);
  }
  return _mm512_reduce_add_pd(_mm512_add_pd(lo, hi));
}

// dh [N,H] for the token panels [p0, p1) from `parts` partials of dh^T ([parts][H][Np]), summed
// in partial order: 16 inputs x 16 positions at a time, the sums through a small buffer (tmp,
// 256 floats) to transpose them.
LSTMGRAD_AVX512 void sum_transpose(const float* dhT, int64_t parts, int64_t H, int64_t Np,
                                   int64_t N, int64_t p0, int64_t p1, float* tmp, float* dh) {
  const int64_t part = H * Np;
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t n0 = p * kW, width = std::min(kW, N - n0);
    for (int64_t j0 = 0; j0 < H; j0 += kW) {
      const int64_t jw = std::min(kW, H - j0);
      for (int64_t j = 0; j < jw; ++j) {
        const float* in = dhT + (j0 + j) * Np + n0;
        __m512 acc = _mm512_load_ps(in);
        for (int64_t q = 1; q < parts; ++q) acc = _mm512_add_ps(acc, _mm512_load_ps(in + q * part));
        _mm512_store_ps(tmp + j * kW, acc);
      }
      for (int64_t l = 0; l < width; ++l)
        for (int64_t j = 0; j < jw; ++j) dh[(n0 + l) * H + j0 + j] = tmp[j * kW + l];
    }
  }
}

}  // namespace

void VocabReadout::reserve(int64_t N, int64_t H, int64_t V, int threads, bool backward) {
  const int64_t Np = round_up(N, kW), Hq = (H + kW - 1) / kW;
  const int64_t chunks = (V + kChunk - 1) / kChunk, groups = std::min(chunks, kGroups);
  const int64_t G = backward ? threads * Np * kChunk : 0, dhT = backward ? groups * H * Np : 0;
  const int64_t need = Np * H + Hq * Np * kW + chunks * Np * kChunk + Np + 2 * chunks * Np + G +
                       dhT + threads * kW * kW + 10 * kW;  // + alignment
  N_ = N, H_ = H, V_ = V, Np_ = Np, chunks_ = chunks, groups_ = groups;
  sumsq_.resize(static_cast<size_t>(chunks));  // each backward writes every entry
  work_.reserve(2, threads);
  if (static_cast<size_t>(need) > mem_.size()) mem_.assign(static_cast<size_t>(need), 0.0f);
  float* p = mem_.data();
  auto carve = [&p](int64_t n) {  // 64-byte aligned blocks
    const auto addr = reinterpret_cast<uintptr_t>(p);
    float* q = p + ((64 - addr % 64) % 64) / sizeof(float);
    p = q + n;
    return q;
  };
  if (bf16_) {
    const int64_t sizes[] = {(Np / kW) * bf16_panel_size(H),                  // hT16
                             Hq * bf16_panel_size(N),                         // hp16
                             threads * kChunk * even(H),                      // w16
                             threads * kChunk * H,                            // wp16
                             threads * Np * kChunk,                           // g16
                             threads * (Np / kW) * bf16_panel_size(kChunk)};  // gp16
    bf16_t** const slots[] = {&hT16_, &hp16_, &w16_, &wp16_, &g16_, &gp16_};
    carve_bf16(mem16_, sizes, slots);
  }
  hT_ = carve(Np * H);
  hp_ = carve(Hq * Np * kW);
  Z_ = carve(chunks * Np * kChunk);
  lse_ = carve(Np);
  max_ = carve(chunks * Np);
  sum_ = carve(chunks * Np);
  G_ = carve(G);  // backward's (empty without)
  dhT_ = carve(dhT);
  tmp_ = carve(threads * kW * kW);
}

void VocabReadout::forward(int id, int nt, const float* h, const float* W, const float* c,
                           const int64_t* y, double* row_loss) {
  const int64_t N = N_, H = H_, V = V_, Np = Np_, np = Np / kW, nc = chunks_;
  const int64_t Hq = (H + kW - 1) / kW, Hp = even(H);
  if (bf16_)
    pack_h16(h, N, H, split(np, id, nt), split(np, id + 1, nt), split(Hq, id, nt),
             split(Hq, id + 1, nt), hT16_, hp16_);
  else
    pack_h(h, N, H, Np, split(np, id, nt), split(np, id + 1, nt), hT_, hp_);
  bf16_t* w16 = bf16_ ? w16_ + id * kChunk * Hp : nullptr;
  work_.reset(0, id, nt, nc);
  team_barrier();
  // While a chunk's statistics run, the rows of W of the chunk after it (usually this thread's
  // next) are fetched, an equal share of its lines per token panel.
  for (int64_t ch = work_.take(0, id, nt); ch >= 0; ch = work_.take(0, id, nt)) {
    const int64_t va = ch * kChunk, rows = std::min(kChunk, V - va);
    // Z[p][v] = c[v] + W[v] . h_(16p..16p+15): A = W's rows, B = the token panels of h^T.
    float* z = Z_ + ch * Np * kChunk;  // this chunk's logits, [Np/16][kChunk][16]
    if (bf16_) {
      to_bf16_rows(w16, Hp, W + va * H, H, rows, 0, H, H);
      bf16_tiles(rows, H, PairForm::rows, w16, Hp, hT16_, bf16_panel_size(H), Np, z, kW,
                 kChunk * kW, Start::row_bias, c + va);
    } else {
      panel_tiles(rows, H, AForm::rows, W + va * H, H, hT_, H * kW, Np, z, kW, kChunk * kW,
                  Start::row_bias, c + va);
    }
    const int64_t next = std::clamp<int64_t>(V - va - rows, 0, kChunk) * H;  // floats
    const int64_t share = (next + np * kW - 1) / (np * kW) * kW;
    for (int64_t p = 0; p < np; ++p) {
      for (int64_t f = p * share; f < std::min(next, (p + 1) * share); f += kW)
        __builtin_prefetch(W + (va + rows) * H + f, 0, 3);
      chunk_stats(z + p * kChunk * kW, rows, max_ + ch * Np + p * kW, sum_ + ch * Np + p * kW);
    }
  }
  team_barrier();
  // log-sum-exp of each position over the chunks, and its loss.
  for (int64_t p = split(np, id, nt); p < split(np, id + 1, nt); ++p) {
    combine_stats(max_ + p * kW, sum_ + p * kW, nc, Np, lse_ + p * kW);
    for (int64_t n = p * kW; n < std::min(N, (p + 1) * kW); ++n)
      row_loss[n] = static_cast<double>(lse_[n]) - static_cast<double>(logit(n, y[n]));
  }
}

void VocabReadout::backward(int id, int nt, float scale, const float* W, const int64_t* y,
                            float* dW, float* dc, float* dh) {
  const int64_t N = N_, H = H_, V = V_, Np = Np_, np = Np / kW, nc = chunks_, ng = groups_;
  const int64_t gs = kChunk * kW;  // one token panel of a G chunk
  float* g = G_ + id * Np * kChunk;
  bf16_t* g16 = bf16_ ? g16_ + id * Np * kChunk : nullptr;
  bf16_t* gp16 = bf16_ ? gp16_ + id * np * bf16_panel_size(kChunk) : nullptr;
  bf16_t* wp16 = bf16_ ? wp16_ + id * kChunk * H : nullptr;
  work_.reset(1, id, nt, ng);  // this team's shares of the groups (forward's may have been another)
  team_barrier();
  for (int64_t grp = work_.take(1, id, nt); grp >= 0; grp = work_.take(1, id, nt)) {
    float* dhT = dhT_ + grp * H * Np;
    const int64_t c0 = group_start(grp, nc, ng), c1 = group_start(grp + 1, nc, ng);
    for (int64_t ch = c0; ch < c1; ++ch) {
      const int64_t va = ch * kChunk, rows = std::min(kChunk, V - va);
      chunk_softmax(Z_ + ch * Np * kChunk, kChunk * kW, lse_, N, np, rows, scale, g, gs, dc + va,
                    W + va * H, dW + va * H, H);
      for (int64_t n = 0; n < N; ++n)  // - scale at each position's target
        if (y[n] >= va && y[n] < va + rows) {
          g[(n / kW) * gs + (y[n] - va) * kW + n % kW] -= scale;
          dc[y[n]] -= scale;
        }
      if (bf16_) {  // G and W's chunk as bf16 operands: by lanes, in pair panels, in pairs
        for (int64_t p = 0; p < np; ++p) {
          to_bf16_rows(g16 + p * gs, kW, g + p * gs, kW, rows, 0, kW, kW);
          to_bf16_pairs(gp16 + p * bf16_panel_size(kChunk), 2 * kW, g + p * gs, kW, rows, 0, kW,
                        kW);
        }
        to_bf16_pairs(wp16, 2 * H, W + va * H, H, rows, 0, H, H);
      }
      // dW[v] += sum_n G[n][v] h_n: A = the chunk of G (blocks of 16 positions), B = h's panels.
      if (bf16_)
        bf16_tiles(rows, N, PairForm::lanes, g16, gs, hp16_, bf16_panel_size(N), H, dW + va * H, H,
                   kW, Start::accumulate, nullptr);
      else
        panel_tiles(rows, Np, AForm::blocks, g, gs, hp_, Np * kW, H, dW + va * H, H, kW,
                    Start::accumulate, nullptr);
      // The chunk's rows of dW and dc are final: their squares, while they are in cache.
      sumsq_[static_cast<size_t>(ch)] =
          sum_squares(dW + va * H, rows * H) + sum_squares(dc + va, rows);
      // dh^T[j][n] (+)= sum_v W[v][j] G[n][v]: A = W^T of the chunk, B = the chunk of G itself.
      const Start start = ch == c0 ? Start::zero : Start::accumulate;
      if (bf16_)
        bf16_tiles(H, rows, PairForm::pairs, wp16, 2 * H, gp16, bf16_panel_size(kChunk), Np, dhT,
                   Np, kW, start, nullptr);
      else
        panel_tiles(H, rows, AForm::cols, W + va * H, H, g, gs, Np, dhT, Np, kW, start, nullptr);
    }
  }
  team_barrier();
  // dh = the groups' dh^T summed in group order, this thread's token panels.
  sum_transpose(dhT_, ng, H, Np, N, split(np, id, nt), split(np, id + 1, nt), tmp_ + id * kW * kW,
                dh);
}

float VocabReadout::logit(int64_t n, int64_t v) const {
  const int64_t ch = v / kChunk;
  return Z_[((ch * (Np_ / kW) + n / kW) * kChunk + v % kChunk) * kW + n % kW];
}

double VocabReadout::grad_sumsq() const {
  double sum = 0;
  for (double x : sumsq_) sum += x;  // in chunk order
  return sum;
}

void VocabReadout::probs(float* out) const {
  for (int64_t n = 0; n < N_; ++n)
    for (int64_t v = 0; v < V_; ++v) out[n * V_ + v] = std::exp(logit(n, v) - lse_[n]);
}

}  // namespace lstmgrad::cpu
