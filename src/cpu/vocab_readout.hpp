// The language model's readout, logits = h W^T + c, and its softmax cross-entropy over class
// targets, float32, fused and computed vocabulary-major.
//
// The readout is most of a word model's arithmetic (PTB: 3 GEMMs of 400 x 200 x 10,000 per
// update against 1.5 GFLOP for the whole LSTM stack). Through the BLAS each GEMM packs its large
// operand again (W, or the [N,V] probabilities transposed), and the [N,V] matrix goes through
// memory five times: the bias copied in, the GEMM's output, the softmax, and the two backward
// GEMMs. Here the logits are kept "panel-major", 16 tokens side by side in one vector, the packed
// operand format of panel_tiles, so nothing large is ever packed; chunk by chunk of the
// vocabulary ([chunk][N/16][96][16]: a chunk's logits are one contiguous stream):
//   forward   Z = W h^T + c in chunks of the vocabulary that stay in L2; each chunk's max and
//             sum of exponentials per token while it is in cache; then log-sum-exp over the
//             chunks and the loss per token;
//   backward  per chunk: G = scale (softmax - onehot(y)) in L2, the bias gradient (G's row sums),
//             dW += G h and dh^T += W^T G from that same chunk; dh^T is summed per group of
//             chunks, then over the groups.
//
// Each thread takes the chunks (forward) and groups of chunks (backward) of its own share in
// order and then those left in the others' (cpu/steal_ranges.hpp): on a machine whose cores run
// at different speeds (a virtual machine's cores often do, by tens of percent) a fixed split
// waits for the slowest. Every sum still has one fixed order
// (per-chunk statistics combined in chunk order, dh^T partials per fixed group summed in group
// order), so the results are the same bits for any team size and any interleaving (tested).
//
// AVX-512F only (panel_gemm_available()); elsewhere, and for float64 or soft targets, the
// language model uses the BLAS path. float32 tolerance: tests/test_vocab_readout.cpp.
//
// bf16 (set_bf16; cpu/bf16.hpp): the three products take bfloat16 operands with float32 sums, the
// rest (logits, softmax, G, the gradients) float32: W's chunk is rounded as it is taken (rows for
// the logits, pairs for dh^T), h into token panels and into panels over the positions once per
// forward, and each chunk of G twice (by lanes for dW, in pair panels for dh^T).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "cpu/bf16.hpp"
#include "cpu/steal_ranges.hpp"

namespace lstmgrad::cpu {

class VocabReadout {
 public:
  // Sizes the buffers for N positions, H inputs, V classes and a team of up to `threads`;
  // allocates only when one grows. backward = false: for a forward no backward follows (infer),
  // without backward's buffers.
  void reserve(int64_t N, int64_t H, int64_t V, int threads, bool backward = true);
  // bf16 operands for the calls that follow (before reserve; needs bf16_available()).
  void set_bf16(bool on) { bf16_ = on; }
  bool bf16() const { return bf16_; }

  // Both are called by every thread of one team (thread `id` of `nt`, nt <= the reserved team),
  // with the same arguments; they synchronise with team_barrier() inside (cpu/team.hpp). The
  // end of the calling run_team is the barrier after them. One object serves one team at a time.
  //
  // forward: h [N,H], W [V,H], c [V], y [N] class targets in [0, V). Writes row_loss[n] =
  // -log softmax(h_n W^T + c)[y_n] and keeps what backward and probs need.
  void forward(int id, int nt, const float* h, const float* W, const float* c, const int64_t* y,
               double* row_loss);
  // backward of the last forward (same W and y): dW [V,H] += scale G^T h, dc [V] += scale * the
  // column sums of G, dh [N,H] = scale G W, where G = softmax - onehot(y) [N,V].
  void backward(int id, int nt, float scale, const float* W, const int64_t* y, float* dW, float* dc,
                float* dh);

  // The last forward's probabilities, row-major [N,V] (not a hot path).
  void probs(float* out) const;

  // After backward: the sum of squares of dW and dc as they stand after it (their values, not
  // only what it added), taken per chunk while the chunk was in cache and summed in chunk order.
  // A gradient-norm pass can skip those two tensors.
  double grad_sumsq() const;

  size_t bytes() const { return mem_.size() * sizeof(float) + mem16_.size() * sizeof(bf16_t); }

 private:
  int64_t N_ = 0, H_ = 0, V_ = 0, Np_ = 0;  // Np_: N rounded up to whole panels of 16
  int64_t chunks_ = 0, groups_ = 0;         // vocabulary chunks; backward's groups of them
  std::vector<double> sumsq_;               // [chunks] each chunk's part of grad_sumsq()
  std::vector<float> mem_;                  // everything below, carved 64-byte aligned
  float* hT_ = nullptr;   // [Np/16][H][16] h^T in token panels (forward's B operand)
  float* hp_ = nullptr;   // [ceil(H/16)][Np][16] h in panels of 16 inputs (dW's B operand)
  float* Z_ = nullptr;    // [chunks][Np/16][kChunk][16] logits, panel-major within each chunk
  float* lse_ = nullptr;  // [Np] log sum exp of each position's logits
  float* max_ = nullptr;  // [chunks][Np] each chunk's max per position
  float* sum_ = nullptr;  // [chunks][Np] and its sum of exp(z - max)
  float* G_ = nullptr;    // [team][Np/16][kChunk][16] each thread's chunk of G
  float* dhT_ = nullptr;  // [groups][H][Np] each group's share of dh^T
  float* tmp_ = nullptr;  // [team][16][16] a thread's block of summed dh^T (transposed out)
  StealRanges work_;      // set 0: forward's chunks; set 1: backward's groups
  // bf16's operands (set_bf16), carved 64-byte aligned from mem16_
  bool bf16_ = false;
  ZeroedBuffer<bf16_t> mem16_;
  bf16_t* hT16_ = nullptr;  // [Np/16] token panels of h over K = H
  bf16_t* hp16_ = nullptr;  // [ceil(H/16)] panels of h over K = N (the positions)
  bf16_t* w16_ = nullptr;   // [team][kChunk][even(H)] a thread's chunk of W, rows form
  bf16_t* wp16_ = nullptr;  // [team][kChunk / 2][H][2] the same chunk in pairs form (dh^T's A)
  bf16_t* g16_ = nullptr;   // [team][Np/16][kChunk][16] a thread's chunk of G by lanes (dW's A)
  bf16_t* gp16_ = nullptr;  // [team][Np/16] its chunk of G in pair panels over v (dh^T's B)

  float logit(int64_t n, int64_t v) const;  // position n's logit of class v
};

}  // namespace lstmgrad::cpu
