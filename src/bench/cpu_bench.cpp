#include <omp.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>

#include "cpu/blas.hpp"
#include "cpu/lstm_stack.hpp"
#include "cpu/team.hpp"
#include "lstmgrad/bench.hpp"
#include "lstmgrad/lstm.hpp"
#include "lstmgrad/threads.hpp"

namespace lstmgrad {

const std::vector<BenchPreset>& bench_presets() {
  static const std::vector<BenchPreset> presets = {
      {"zaremba-small", 35, 20, 200, 200, 2, true}, {"zaremba-medium", 35, 20, 650, 650, 2, true},
      {"char-rnn", 50, 50, 65, 512, 2, false},      {"throughput", 100, 64, 512, 512, 1, false},
      {"large", 50, 128, 1024, 1024, 1, false},
  };
  return presets;
}

double peak_rss_mb() {
  std::ifstream f("/proc/self/status");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;  // kB
  return 0;
}

void reset_peak_rss() {
  std::ofstream f("/proc/self/clear_refs");
  f << "5";  // resets VmHWM to the current RSS (Linux >= 4.0); harmless where unsupported
}

double median_ms(const std::function<void()>& step, int warmup, int runs) {
  for (int i = 0; i < warmup; ++i) step();
  std::vector<double> ms;
  for (int i = 0; i < std::max(runs, 1); ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    step();
    ms.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::nth_element(ms.begin(), ms.begin() + static_cast<long>(ms.size() / 2), ms.end());
  return ms[ms.size() / 2];
}

namespace {

double median_ms(const std::function<void()>& step, const BenchOptions& o) {
  return lstmgrad::median_ms(step, o.warmup, o.runs);
}

using Clock = std::chrono::steady_clock;

void fill_uniform(std::vector<float>& v, float a, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> d(-a, a);
  for (float& x : v) x = d(rng);
}

// 2*4H*(in+H) per token per layer (the forward pass).
double stack_flops_per_token(const BenchPreset& p) {
  double f = 0;
  for (int64_t k = 0; k < p.L; ++k)
    f += 2.0 * 4 * static_cast<double>(p.H) * static_cast<double>((k == 0 ? p.X : p.H) + p.H);
  return f;
}

// mode: fwd (the forward that saves what backward needs), infer (LstmStack::infer), fwdbwd
// (forward, backward with dL/dx, as oneDNN's and cuDNN's), fwdbwd_nodx (without dL/dx: layer 0's
// dx GEMM skipped, as a model whose input needs no gradient).
double time_stack(const BenchPreset& p, const std::string& mode, const BenchOptions& o) {
  std::mt19937_64 rng(5);
  const int64_t G = 4 * p.H, N = p.T * p.B;
  // What the mode uses and no more (each mode's peak memory is reported): gradients and dL/dh
  // only where a backward runs.
  const bool backward = mode == "fwdbwd" || mode == "fwdbwd_nodx";
  std::vector<std::vector<float>> weights(static_cast<size_t>(p.L)), grads(weights.size());
  std::vector<cpu::LayerWeights<float>> w;
  std::vector<cpu::LayerGrads<float>> g;
  const float a = 1.0f / std::sqrt(static_cast<float>(p.H));
  for (int64_t k = 0; k < p.L; ++k) {
    const int64_t I = k == 0 ? p.X : p.H;
    auto& wk = weights[k];
    wk.resize(static_cast<size_t>(G * I + G * p.H + 2 * G));
    fill_uniform(wk, a, rng);
    w.push_back(
        {wk.data(), wk.data() + G * I, wk.data() + G * (I + p.H), wk.data() + G * (I + p.H) + G});
    if (!backward) continue;
    grads[k].assign(wk.size(), 0.0f);
    float* d = grads[k].data();
    g.push_back({d, d + G * I, d + G * (I + p.H), d + G * (I + p.H) + G});
  }
  std::vector<float> x(static_cast<size_t>(N * p.X)),
      dh(static_cast<size_t>(backward ? N * p.H : 0)), dx(mode == "fwdbwd" ? x.size() : 0);
  fill_uniform(x, 1.0f, rng);
  fill_uniform(dh, 1.0f, rng);
  cpu::LstmStack<float> stack(p.X, p.H, p.L);
  stack.set_team(o.threads, o.running > 0 ? o.running : o.threads);
  stack.set_precision(o.precision);
  if (mode == "infer")
    return median_ms([&] { stack.infer(x.data(), w.data(), nullptr, nullptr, p.T, p.B); }, o);
  return median_ms(
      [&] {
        stack.forward(x.data(), w.data(), nullptr, nullptr, p.T, p.B);
        if (mode == "fwd") return;
        for (auto& gk : grads) std::fill(gk.begin(), gk.end(), 0.0f);
        stack.backward(dx.empty() ? nullptr : dx.data(), g.data(), dh.data(), x.data(), w.data(),
                       nullptr, nullptr);
      },
      o);
}

double time_lm_step(const BenchPreset& p, const BenchOptions& o) {
  ModelConfig cfg;
  cfg.input = InputKind::embedding, cfg.readout = Readout::linear;
  cfg.V = kBenchVocabulary, cfg.X = p.X, cfg.H = p.H, cfg.L = p.L;
  std::mt19937_64 rng(7);
  std::vector<float> params(parameter_count(cfg)), grad(params.size());
  fill_uniform(params, 0.1f, rng);
  Batch<float> b;
  b.T = p.T, b.B = p.B;
  std::uniform_int_distribution<int64_t> tok(0, cfg.V - 1);
  for (int64_t r = 0; r < p.T * p.B; ++r)
    b.tokens.push_back(tok(rng)), b.target.push_back(tok(rng));
  LanguageModel<float> lm(cfg);
  lm.set_team(o.threads, o.running > 0 ? o.running : o.threads);
  lm.set_precision(o.precision);
  cpu::TeamTuner sgd_tuner;  // the update's team, as the trainer's optimizer chooses it
  const float lr = 1e-3f;
  return median_ms(
      [&] {
        std::fill(grad.begin(), grad.end(), 0.0f);
        lm.forward(params, b, Reduction::mean);
        lm.backward(grad, params, b);
        const size_t n = params.size();
        float* P = params.data();
        const float* D = grad.data();
        const cpu::TeamCall team(sgd_tuner, o.threads > 0 ? o.threads : omp_get_max_threads(),
                                 o.running > 0 ? o.running : o.threads, static_cast<double>(n));
        cpu::run_team(team.threads(), [&] {
          const size_t nt = static_cast<size_t>(cpu::team_threads()),
                       id = static_cast<size_t>(cpu::team_thread());
          for (size_t i = n * id / nt; i < n * (id + 1) / nt; ++i)
            P[i] -= lr * D[i];  // SGD: p -= lr g
        });
      },
      o);
}

}  // namespace

double bench_flops_per_token(const BenchPreset& p, const std::string& mode) {
  const double fwd = stack_flops_per_token(p);
  if (mode == "fwdbwd" || mode == "fwdbwd_nodx") return 3 * fwd;
  if (mode == "lm_step") return 3 * (fwd + 2.0 * static_cast<double>(kBenchVocabulary * p.H));
  return fwd;
}

BenchResult run_bench(const BenchPreset& p, const std::string& mode, const BenchOptions& o) {
  set_threads(o.threads);
  reset_peak_rss();
  BenchResult r;
  r.preset = p.name, r.mode = mode, r.threads = o.threads, r.running = o.running;
  r.precision = o.precision;
  const double flops = bench_flops_per_token(p, mode);
  if (mode == "fwd" || mode == "infer" || mode == "fwdbwd" || mode == "fwdbwd_nodx") {
    r.ms = time_stack(p, mode, o);
  } else if (mode == "lm_step") {
    r.ms = time_lm_step(p, o);
  } else {
    throw std::invalid_argument("bench: unknown mode '" + mode +
                                "' (fwd, infer, fwdbwd, fwdbwd_nodx, lm_step)");
  }
  const double tokens = static_cast<double>(p.T * p.B);
  r.tokens_per_s = tokens / (r.ms / 1e3);
  r.gflops = flops * tokens / (r.ms / 1e3) / 1e9;
  r.peak_rss_mb = peak_rss_mb();
  return r;
}

GemmResult run_gemm(int64_t M, int64_t N, int64_t K, const BenchOptions& o) {
  set_threads(o.threads);
  std::mt19937_64 rng(3);
  // C = A B^T with B stored [N,K], the layout of every weight GEMM in the engine (h W^T).
  std::vector<float> A(static_cast<size_t>(M * K)), B(static_cast<size_t>(K * N)),
      C(static_cast<size_t>(M * N));
  fill_uniform(A, 1.0f, rng);
  fill_uniform(B, 1.0f, rng);
  GemmResult g{M, N, K, o.threads, 0, 0};
  // Enough repetitions per timed run that small shapes are not lost in the clock.
  const double flops =
      2.0 * static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(K);
  const int reps = std::max(1, static_cast<int>(2e9 / flops));
  g.ms = median_ms(
             [&] {
               for (int i = 0; i < reps; ++i)
                 cpu::gemm(cpu::Tr::N, cpu::Tr::T, M, N, K, 1.0f, A.data(), K, B.data(), K, 0.0f,
                           C.data(), N);
             },
             o) /
         reps;
  g.gflops = flops / (g.ms / 1e3) / 1e9;
  return g;
}

}  // namespace lstmgrad
