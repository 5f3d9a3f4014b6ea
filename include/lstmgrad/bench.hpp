// lstmgrad: the CPU benchmark behind `lstmgrad bench` (docs/benchmarks.md).
// Presets are the shapes of the PyTorch comparison in bench/torch_lstm.py; everything is float32
// (BenchOptions::precision bf16: the GEMMs with bfloat16 operands).
// GFLOP/s counts 2*4H*(in+H) per token per layer for the forward pass (and inference) and three
// times that for forward+backward; the LM step also counts the readout, 2*V*H per token, times
// three.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "lstmgrad/precision.hpp"

namespace lstmgrad {

struct BenchPreset {
  std::string name;
  int64_t T, B, X, H, L;
  bool lm_step;  // the Zaremba presets also time the full language-model step (V = 10,000)
};

const std::vector<BenchPreset>& bench_presets();
inline constexpr int64_t kBenchVocabulary = 10000;

struct BenchOptions {
  int threads = 2;  // engine team and BLAS threads, pinned; 0: the default, adaptive team
  // The threads that run the shares (at most `threads` when that is set; 0: one per share where
  // `threads` pins them, else chosen by measuring). Fewer running threads than shares give the
  // same bits: the team a loaded machine falls back to.
  int running = 0;
  int warmup = 5;  // untimed runs first (the default team tries its neighbour after 5 calls)
  int runs = 7;    // timed runs; the median is reported
  // The GEMM operands of the stack and (lm_step) of the readout: f32, or bf16.
  Precision precision = Precision::f32;
};

// `warmup` untimed calls of `step`, then the median of `runs` timed ones, in milliseconds.
double median_ms(const std::function<void()>& step, int warmup, int runs);

struct BenchResult {
  std::string preset, mode;  // mode: fwd, infer, fwdbwd, fwdbwd_nodx, lm_step
  int threads = 0;
  int running = 0;  // BenchOptions::running
  Precision precision = Precision::f32;
  double ms = 0, tokens_per_s = 0, gflops = 0;
  double peak_rss_mb = 0;  // the process's peak resident memory while this case ran
};

// mode: "fwd" (the stack's forward, saving what backward needs), "infer" (its inference forward,
// LstmStack::infer), "fwdbwd" (the stack's forward and backward with dL/dx, as oneDNN and cuDNN
// compute it), "fwdbwd_nodx" (the same without dL/dx of layer 0: the fwdbwd of lstmgrad before
// issue 18), "lm_step" (embedding, stack, readout, softmax cross-entropy, backward, SGD update).
// Throws std::invalid_argument for an unknown mode.
BenchResult run_bench(const BenchPreset& p, const std::string& mode, const BenchOptions& o);

// The flops of one token in `mode` (the GFLOP/s of the tables): 2*4H*(in+H) per layer forward
// (and infer), three times that for fwdbwd (and fwdbwd_nodx, which skips 2*4H*X of it), and for
// lm_step three times (that plus 2*V*H of the readout).
double bench_flops_per_token(const BenchPreset& p, const std::string& mode);

// The BLAS's sgemm alone: C[M,N] = A[M,K] B[K,N] with `threads` BLAS threads (GEMM ceiling).
struct GemmResult {
  int64_t M = 0, N = 0, K = 0;
  int threads = 0;
  double ms = 0, gflops = 0;
};
GemmResult run_gemm(int64_t M, int64_t N, int64_t K, const BenchOptions& o);

// Peak resident memory of the process (VmHWM) in MiB, and its reset (/proc/self/clear_refs).
double peak_rss_mb();
void reset_peak_rss();

}  // namespace lstmgrad
