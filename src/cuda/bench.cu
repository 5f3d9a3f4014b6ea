// lstmgrad bench --device cuda: the CUDA engine timed with CUDA events (warm-up, then the median).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <random>
#include <vector>

#include "cuda/device.hpp"
#include "cuda/stack.hpp"
#include "lstmgrad/cuda.hpp"

namespace lstmgrad::cuda {

namespace {

std::vector<float> uniform(size_t n, float a, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> d(-a, a);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// Median milliseconds of `step(run)` on `stream`, timed by events around each run.
double median_ms(const std::function<void(int)>& step, cudaStream_t stream, int warmup, int runs) {
  for (int i = 0; i < warmup; ++i) step(i);
  LSTMGRAD_CUDA(cudaStreamSynchronize(stream));
  cudaEvent_t a, b;
  LSTMGRAD_CUDA(cudaEventCreate(&a));
  LSTMGRAD_CUDA(cudaEventCreate(&b));
  std::vector<double> ms;
  for (int i = 0; i < std::max(runs, 1); ++i) {
    LSTMGRAD_CUDA(cudaEventRecord(a, stream));
    step(i);
    LSTMGRAD_CUDA(cudaEventRecord(b, stream));
    LSTMGRAD_CUDA(cudaEventSynchronize(b));
    float t = 0;
    LSTMGRAD_CUDA(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::nth_element(ms.begin(), ms.begin() + static_cast<long>(ms.size() / 2), ms.end());
  return ms[ms.size() / 2];
}

template <class T>
DeviceBuffer<T> to_device(const std::vector<T>& v) {
  DeviceBuffer<T> d;
  d.grow(v.size());
  LSTMGRAD_CUDA(cudaMemcpy(d.get(), v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}

constexpr int kInputSets = 3;  // rotated, so that no run reads what the last left in L2

double time_stack(const CudaBenchShape& p, bool backward, int warmup, int runs, Recurrence rec) {
  std::mt19937_64 rng(5);
  const int64_t G = 4 * p.H, N = p.T * p.B;
  cudaStream_t stream;
  LSTMGRAD_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cublasHandle_t blas;
  LSTMGRAD_CUBLAS(cublas().create(&blas));
  LSTMGRAD_CUBLAS(cublas().set_stream(blas, stream));
  LSTMGRAD_CUBLAS(cublas().set_math_mode(blas, CUBLAS_DEFAULT_MATH));
  std::vector<DeviceBuffer<float>> weights, grads;
  std::vector<LayerParams> w;
  std::vector<LayerGrads> g;
  const float a = 1.0f / std::sqrt(static_cast<float>(p.H));
  for (int64_t k = 0; k < p.L; ++k) {
    const int64_t I = k == 0 ? p.X : p.H;
    const size_t n = static_cast<size_t>(G * I + G * p.H + 2 * G);
    weights.push_back(to_device(uniform(n, a, rng)));
    grads.push_back(to_device(std::vector<float>(n, 0.0f)));
    const float* wk = weights.back().get();
    float* dk = grads.back().get();
    w.push_back({wk, wk + G * I, wk + G * (I + p.H), wk + G * (I + p.H) + G});
    g.push_back({dk, dk + G * I, dk + G * (I + p.H), dk + G * (I + p.H) + G});
  }
  std::vector<DeviceBuffer<float>> xs, dhs;
  for (int i = 0; i < kInputSets; ++i) {
    xs.push_back(to_device(uniform(static_cast<size_t>(N * p.X), 1.0f, rng)));
    dhs.push_back(to_device(uniform(static_cast<size_t>(N * p.H), 1.0f, rng)));
  }
  DeviceBuffer<float> dx;
  dx.grow(static_cast<size_t>(N * p.X));
  double ms = 0;
  {
    Stack stack(p.X, p.H, p.L, stream, blas);
    stack.set_recurrence(rec);
    ms = median_ms(
        [&](int i) {
          const float* x = xs[i % kInputSets].get();
          stack.forward(x, w.data(), nullptr, nullptr, p.T, p.B);
          if (backward)  // with dL/dx, as cuDNN's backward computes it
            stack.backward(dx.get(), g.data(), dhs[i % kInputSets].get(), x, w.data(), nullptr,
                           nullptr);
        },
        stream, warmup, runs);
  }
  cublas().destroy(blas);
  cudaStreamDestroy(stream);
  return ms;
}

double time_lm_step(const CudaBenchShape& p, int64_t V, int warmup, int runs, Recurrence rec) {
  ModelConfig cfg;
  cfg.input = InputKind::embedding, cfg.readout = Readout::linear;
  cfg.V = V, cfg.X = p.X, cfg.H = p.H, cfg.L = p.L;
  std::mt19937_64 rng(7);
  LanguageModel lm(cfg);
  lm.set_recurrence(rec);
  lm.set_params(uniform(parameter_count(cfg), 0.1f, rng));
  std::uniform_int_distribution<int64_t> tok(0, V - 1);
  std::vector<Batch<float>> batches(kInputSets);
  for (Batch<float>& b : batches) {
    b.T = p.T, b.B = p.B;
    for (int64_t r = 0; r < p.T * p.B; ++r)
      b.tokens.push_back(tok(rng)), b.target.push_back(tok(rng));
  }
  // The whole update as the trainer runs it: the loss comes back to the host at every step.
  auto step = [&](int i) {
    lm.forward(batches[static_cast<size_t>(i % kInputSets)], Reduction::mean);
    lm.backward();
    lm.sgd_step(1e-3, 0.0);
  };
  for (int i = 0; i < warmup; ++i) step(i);
  std::vector<double> ms;
  for (int i = 0; i < std::max(runs, 1); ++i) {
    lm.synchronize();
    const auto t0 = std::chrono::steady_clock::now();
    step(i);
    lm.synchronize();
    ms.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::nth_element(ms.begin(), ms.begin() + static_cast<long>(ms.size() / 2), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace

double bench_ms(const CudaBenchShape& s, const std::string& mode, int64_t V, int warmup, int runs,
                Recurrence rec) {
  require();
  if (mode == "fwd") return time_stack(s, false, warmup, runs, rec);
  if (mode == "fwdbwd") return time_stack(s, true, warmup, runs, rec);
  if (mode == "lm_step") return time_lm_step(s, V, warmup, runs, rec);
  throw std::invalid_argument("bench: unknown mode '" + mode + "' (fwd, fwdbwd, lm_step)");
}

double bench_gemm_ms(int64_t M, int64_t N, int64_t K, int warmup, int runs) {
  require();
  std::mt19937_64 rng(3);
  DeviceBuffer<float> A = to_device(uniform(static_cast<size_t>(M * K), 1.0f, rng));
  DeviceBuffer<float> B = to_device(uniform(static_cast<size_t>(N * K), 1.0f, rng));
  DeviceBuffer<float> C;
  C.grow(static_cast<size_t>(M * N));
  cublasHandle_t blas;
  LSTMGRAD_CUBLAS(cublas().create(&blas));
  LSTMGRAD_CUBLAS(cublas().set_math_mode(blas, CUBLAS_DEFAULT_MATH));
  const double ms = median_ms(
      [&](int) {
        gemm(blas, false, true, M, N, K, 1.0f, A.get(), K, B.get(), K, 0.0f, C.get(), N);
      },
      nullptr, warmup, runs);
  cublas().destroy(blas);
  return ms;
}

}  // namespace lstmgrad::cuda
