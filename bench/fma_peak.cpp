// The CPU's arithmetic peak: how many float32 multiply-adds per second the cores can retire
// with the operands in registers, the bound no LSTM (lstmgrad's, oneDNN's) can pass. Each thread
// runs independent chains of fused multiply-adds (512-bit, or 256-bit), or of AVX512_BF16's
// vdpbf16ps (two bf16 products per float32 lane), a fixed number of times; the count is 2 FLOPs
// per multiply-add, as every GFLOP/s in docs/benchmarks.md.
//
// Usage: build/fma_peak [THREADS...]   (default: 1 and every core)
// Prints one line per instruction kind and thread count: GFLOP/s, the median of 5 runs.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

namespace {

constexpr long kIterations = 20'000'000;  // per run and thread, each of a kind's chains

__attribute__((target("avx512f"))) float sum_lanes(const __m512* acc, int n) {
  alignas(64) float out[16];
  __m512 s = acc[0];
  for (int i = 1; i < n; ++i) s = _mm512_add_ps(s, acc[i]);
  _mm512_store_ps(out, s);
  float r = 0;
  for (float v : out) r += v;
  return r;
}

// Each returns a value that depends on every chain, so that nothing is optimised away.
// 24 chains (as many as lstmgrad's 12 x 2 tiles hold): enough to cover the latency on two
// pipes, and with the operands they stay in the 32 registers. Bf16: vdpbf16ps, 32 bf16 products
// summed pairwise into 16 float32 lanes (64 FLOPs per instruction), else a 512-bit FMA (32).
// (The FMA variant is compiled for the bf16 target too but runs none of its instructions.)
template <bool Bf16>
__attribute__((target("avx512f,avx512bf16"))) float chains_512(long n) {
  __m512 acc[24];
  for (int i = 0; i < 24; ++i) acc[i] = _mm512_set1_ps(static_cast<float>(i) * 1e-3f);
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
  [[maybe_unused]] __m512bh ab;  // set only where the CPU has the bf16 instructions
  if constexpr (Bf16) ab = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3f), _mm512_set1_ps(1e-3f));
  for (long k = 0; k < n; ++k)
#pragma GCC unroll 24
    for (int i = 0; i < 24; ++i) {
      if constexpr (Bf16)
        acc[i] = _mm512_dpbf16_ps(acc[i], ab, ab);
      else
        acc[i] = _mm512_fmadd_ps(acc[i], a, b);
    }
  return sum_lanes(acc, 24);
}

// 12 chains: AVX2 has 16 registers, and 16 chains plus the two operands would spill.
__attribute__((target("avx2,fma"))) float chains_avx2(long n) {
  __m256 acc[12];
  for (int i = 0; i < 12; ++i) acc[i] = _mm256_set1_ps(static_cast<float>(i) * 1e-3f);
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
  for (long k = 0; k < n; ++k)
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
  __m256 s = acc[0];
  for (int i = 1; i < 12; ++i) s = _mm256_add_ps(s, acc[i]);
  alignas(32) float out[8];
  _mm256_store_ps(out, s);
  float r = 0;
  for (float v : out) r += v;
  return r;
}

struct Kind {
  const char* name;
  float (*run)(long);
  double flops_per_instruction;
  int chains;
  bool available;
};

double gflops(const Kind& kind, int threads) {
  std::vector<double> runs;
  float sink = 0;
  for (int r = 0; r < 5; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
    sink += kind.run(kIterations);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    runs.push_back(kind.flops_per_instruction * kind.chains * static_cast<double>(kIterations) *
                   threads / s / 1e9);
  }
  if (sink == 12345.0f) std::printf(" ");  // keeps the chains' results alive
  std::sort(runs.begin(), runs.end());
  return runs[runs.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> threads;
  for (int i = 1; i < argc; ++i) threads.push_back(std::max(1, std::atoi(argv[i])));
  if (threads.empty()) {
    threads.push_back(1);
    const int cores = static_cast<int>(std::thread::hardware_concurrency());
    if (cores > 1) threads.push_back(cores);
  }
  __builtin_cpu_init();
  const Kind kinds[] = {
      {"fp32 avx512 fma", chains_512<false>, 2.0 * 16, 24, __builtin_cpu_supports("avx512f") != 0},
      {"fp32 avx2 fma", chains_avx2, 2.0 * 8, 12, __builtin_cpu_supports("fma") != 0},
      {"bf16 vdpbf16ps", chains_512<true>, 2.0 * 32, 24, __builtin_cpu_supports("avx512bf16") != 0},
  };
  std::printf("%-18s %8s %10s\n", "instruction", "threads", "GFLOP/s");
  for (const Kind& k : kinds) {
    if (!k.available) {
      std::printf("%-18s %8s %10s\n", k.name, "-", "(not on this CPU)");
      continue;
    }
    for (int t : threads) std::printf("%-18s %8d %10.1f\n", k.name, t, gflops(k, t));
  }
  return 0;
}
