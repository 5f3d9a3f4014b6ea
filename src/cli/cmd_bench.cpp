// `lstmgrad bench`: float32 speed of the LSTM stack (fwd, infer, fwdbwd with dL/dx, and on request
// fwdbwd_nodx) and of the language-model step (lm_step) on the PyTorch comparison's presets, and
// the BLAS's GEMM ceiling (--gemm).
// docs/benchmarks.md.
#include <fmt/format.h>
#include <omp.h>

#include <iostream>
#include <nlohmann/json.hpp>

#include "cli/commands.hpp"
#include "lstmgrad/bench.hpp"
#include "lstmgrad/cuda.hpp"
#include "lstmgrad/error.hpp"

namespace lstmgrad::cli {

namespace {

struct BenchCliOptions {
  BenchOptions o;
  std::string preset, mode = "all", device = "cpu", recurrence = "auto", precision = "f32";
  bool json = false, gemm = false;
};

// The presets of a device: the GPU's add big-batch, too large for a CPU run.
std::vector<BenchPreset> device_presets(const std::string& device) {
  std::vector<BenchPreset> all = bench_presets();
  if (device == "cuda") all.push_back({"big-batch", 100, 256, 1024, 1024, 2, false});
  return all;
}

std::vector<BenchPreset> chosen_presets(const std::string& name,
                                        const std::string& device = "cpu") {
  const std::vector<BenchPreset> all = device_presets(device);
  if (name.empty()) return all;
  for (const BenchPreset& p : all)
    if (p.name == name) return {p};
  std::string names;
  for (const BenchPreset& p : all) names += (names.empty() ? "" : ", ") + p.name;
  throw InputError("--preset: unknown preset '" + name + "' (one of " + names + ")");
}

// --device cuda: the same table, timed with CUDA events; fwdbwd includes dL/dx (as cuDNN's).
void run_cuda_cases(const BenchCliOptions& a) {
  cuda::require();
  const cuda::Recurrence rec = cuda::parse_recurrence(a.recurrence);
  nlohmann::json out = nlohmann::json::array();
  if (!a.json) {
    fmt::print("lstmgrad bench --device cuda: {}, recurrence {}\n", cuda::describe(), a.recurrence);
    fmt::print("{:<15} {:<8} {:>10} {:>12} {:>9}\n", "preset", "mode", "ms", "tokens/s", "GFLOP/s");
  }
  for (const BenchPreset& p : chosen_presets(a.preset, "cuda")) {
    for (const std::string mode : {"fwd", "fwdbwd", "lm_step"}) {
      if (a.mode != "all" && a.mode != mode) continue;
      if (mode == "lm_step" && !p.lm_step) continue;
      const double ms = cuda::bench_ms({p.T, p.B, p.X, p.H, p.L}, mode, kBenchVocabulary,
                                       a.o.warmup, a.o.runs, rec);
      const double flops = bench_flops_per_token(p, mode);
      const double tokens = static_cast<double>(p.T * p.B);
      const double tps = tokens / (ms / 1e3), gflops = flops * tokens / (ms / 1e3) / 1e9;
      if (a.json) {
        out.push_back({{"preset", p.name},
                       {"mode", mode},
                       {"device", "cuda"},
                       {"recurrence", a.recurrence},
                       {"ms", ms},
                       {"tokens_per_s", tps},
                       {"gflops", gflops}});
      } else {
        fmt::print("{:<15} {:<8} {:>10.3f} {:>12.0f} {:>9.1f}\n", p.name, mode, ms, tps, gflops);
        std::fflush(stdout);
      }
    }
  }
  if (a.json) std::cout << out.dump(1) << "\n";
}

void run_cases(const BenchCliOptions& a) {
  nlohmann::json out = nlohmann::json::array();
  if (!a.json)
    fmt::print("{:<15} {:<11} {:>7} {:>10} {:>12} {:>9} {:>9}\n", "preset", "mode", "threads", "ms",
               "tokens/s", "GFLOP/s", "peak MB");
  for (const BenchPreset& p : chosen_presets(a.preset)) {
    // fwdbwd_nodx only when asked for: it is fwdbwd's comparison with the previous benchmarks
    for (const std::string mode : {"fwd", "infer", "fwdbwd", "fwdbwd_nodx", "lm_step"}) {
      if (a.mode != mode && (a.mode != "all" || mode == "fwdbwd_nodx")) continue;
      if (mode == "lm_step" && !p.lm_step) continue;
      const BenchResult r = run_bench(p, mode, a.o);
      if (a.json) {
        out.push_back({{"preset", r.preset},
                       {"mode", r.mode},
                       {"threads", r.threads},
                       {"running", r.running},
                       {"precision", precision_name(a.o.precision)},
                       {"ms", r.ms},
                       {"tokens_per_s", r.tokens_per_s},
                       {"gflops", r.gflops},
                       {"peak_rss_mb", r.peak_rss_mb}});
      } else {
        std::string team = r.threads > 0 ? std::to_string(r.threads) : "auto";
        if (r.running > 0) team += fmt::format(" ({})", r.running);  // shares (running threads)
        fmt::print("{:<15} {:<11} {:>7} {:>10.2f} {:>12.0f} {:>9.1f} {:>9.1f}\n", r.preset, r.mode,
                   team, r.ms, r.tokens_per_s, r.gflops, r.peak_rss_mb);
        std::fflush(stdout);
      }
    }
  }
  if (a.json) std::cout << out.dump(1) << "\n";
}

// The GEMM ceiling: square 2048, then each preset's input projection (T*B rows) and recurrent
// GEMM (B rows), both C[M,4H] = A[M,K] W^T.
void run_gemms(const BenchCliOptions& a) {
  struct Shape {
    std::string name;
    int64_t M, N, K;
  };
  std::vector<Shape> shapes;
  if (a.preset.empty()) shapes.push_back({"square-2048", 2048, 2048, 2048});
  if (a.preset.empty() && a.device == "cuda") shapes.push_back({"square-8192", 8192, 8192, 8192});
  for (const BenchPreset& p : chosen_presets(a.preset, a.device)) {
    shapes.push_back({p.name + "/input", p.T * p.B, 4 * p.H, p.X});
    shapes.push_back({p.name + "/recurrent", p.B, 4 * p.H, p.H});
  }
  nlohmann::json out = nlohmann::json::array();
  if (!a.json)
    fmt::print("{:<26} {:>6} {:>6} {:>6} {:>7} {:>10} {:>9}\n", "gemm", "M", "N", "K", "threads",
               "ms", "GFLOP/s");
  for (const Shape& s : shapes) {
    GemmResult g;
    if (a.device == "cuda") {
      const double ms = cuda::bench_gemm_ms(s.M, s.N, s.K, a.o.warmup, a.o.runs);
      g = {s.M,
           s.N,
           s.K,
           0,
           ms,
           2.0 * static_cast<double>(s.M) * static_cast<double>(s.N) * static_cast<double>(s.K) /
               (ms / 1e3) / 1e9};
    } else {
      g = run_gemm(s.M, s.N, s.K, a.o);
    }
    if (a.json) {
      out.push_back({{"gemm", s.name},
                     {"M", g.M},
                     {"N", g.N},
                     {"K", g.K},
                     {"threads", g.threads},
                     {"ms", g.ms},
                     {"gflops", g.gflops}});
    } else {
      fmt::print("{:<26} {:>6} {:>6} {:>6} {:>7} {:>10.4f} {:>9.1f}\n", s.name, g.M, g.N, g.K,
                 g.threads, g.ms, g.gflops);
      std::fflush(stdout);
    }
  }
  if (a.json) std::cout << out.dump(1) << "\n";
}

void register_bench(CLI::App& app) {
  auto a = std::make_shared<BenchCliOptions>();
  a->o.threads = 0;
  CLI::App* cmd = app.add_subcommand(
      "bench", "float32 (or bf16) speed: LSTM stack fwd / fwd+bwd, LM step, GEMM ceiling (--gemm)");
  cmd->add_option("--preset", a->preset,
                  "One preset: zaremba-small, zaremba-medium, char-rnn, throughput, large");
  cmd->add_option("--mode", a->mode,
                  "fwd (forward saving what backward needs), infer (inference forward), fwdbwd "
                  "(forward + backward with dL/dx), fwdbwd_nodx (without dL/dx), lm_step, or all "
                  "(every one but fwdbwd_nodx)")
      ->check(CLI::IsMember({"all", "fwd", "infer", "fwdbwd", "fwdbwd_nodx", "lm_step"}))
      ->capture_default_str();
  cmd->add_option("--threads", a->o.threads,
                  "Threads, pinned (engine team and BLAS); 0: as training runs, up to every core, "
                  "the team adapting to the machine's load")
      ->check(CLI::Range(0, 1024))
      ->capture_default_str();
  cmd->add_option("--running", a->o.running,
                  "Threads that run the --threads shares (fewer: the same bits, the team a busy "
                  "machine falls back to); 0: one per share where --threads pins them, else as the "
                  "default team chooses")
      ->check(CLI::Range(0, 1024))
      ->capture_default_str();
  cmd->add_option("--runs", a->o.runs, "Timed runs (the median is reported)")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  cmd->add_option("--warmup", a->o.warmup, "Untimed runs first")
      ->check(CLI::Range(0, 1000))
      ->capture_default_str();
  cmd->add_option("--precision", a->precision,
                  "f32, or bf16: bfloat16 GEMM operands with float32 sums (AVX512_BF16)")
      ->check(CLI::IsMember({"f32", "bf16"}))
      ->capture_default_str();
  cmd->add_flag("--json", a->json, "A JSON list instead of the table");
  cmd->add_flag("--gemm", a->gemm, "The BLAS's sgemm alone (the GEMM ceiling)");
  add_device_option(cmd, a->device, "cpu, or cuda (CUDA events; adds the big-batch preset)");
  add_recurrence_option(cmd, a->recurrence);
  cmd->callback([a] {
    if (a->o.running > 0) {
      if (a->device == "cuda" || a->gemm)
        throw InputError(
            "--running: the CPU engine's team only (not with --device cuda or --gemm)");
      if (a->o.threads > 0 && a->o.running > a->o.threads)
        throw InputError(
            fmt::format("--running {}: at most --threads ({})", a->o.running, a->o.threads));
    }
    if (a->device == "cuda") {
      cuda::require();
      if (a->mode == "infer" || a->mode == "fwdbwd_nodx")
        throw InputError("--mode " + a->mode +
                         ": the CPU's only (--device cuda times fwd, "
                         "fwdbwd with dL/dx, lm_step)");
      a->gemm ? run_gemms(*a) : run_cuda_cases(*a);
      return;
    }
    a->o.precision = parse_precision(a->precision);
    if (a->o.precision == Precision::bf16) {
      require_bf16();
      if (a->gemm) throw InputError("--precision bf16: not with --gemm (the BLAS's sgemm)");
    }
    a->gemm ? run_gemms(*a) : run_cases(*a);
  });
}

}  // namespace

const CommandRegistrar kBenchRegistrar(70, register_bench);

}  // namespace lstmgrad::cli
