// The CUDA engine's kernels. The cell's element math is core/cell_math.hpp (the definition the CPU
// reference uses); the dropout masks are cpu/dropout.hpp's entries, so both engines drop alike.
#include <cooperative_groups.h>

#include <algorithm>
#include <cmath>

#include "core/cell_math.hpp"
#include "cpu/dropout.hpp"
#include "cuda/device.hpp"
#include "cuda/kernels.cuh"

namespace lstmgrad::cuda {

namespace cg = cooperative_groups;

namespace {

constexpr int kThreads = 256;
constexpr unsigned kFullMask = 0xffffffffu;
// The cell's arithmetic (core/cell_math.hpp): the reference's formulas in float32; nvcc may fuse
// a product and a sum into one multiply-add.
using Math = core::ScalarMath<float>;

int grid_for(int64_t n) {
  return static_cast<int>(std::clamp<int64_t>((n + kThreads - 1) / kThreads, 1, 8 * 65535));
}

// Grid-stride loop over [0, n).
#define LSTMGRAD_FOR_EACH(k, n)                                                          \
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < (n); \
       k += static_cast<int64_t>(gridDim.x) * blockDim.x)

// Unit j's CellUnit weights from [3H] (zeros where there are none).
__device__ inline core::CellUnit<float> unit_of(const float* u, int H, int j) {
  if (!u) return {0, 0, 0};
  return {u[j], u[H + j], u[2 * H + j]};
}

__device__ inline float warp_sum(float v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFullMask, v, off);
  return v;
}

// ---------------------------------------------------------------------------------------------
// The persistent recurrence. Block c owns hidden units [c*NJ, c*NJ + NJ) of the layer (all four
// gates) for all T steps; its slice of U stays in shared memory. One grid-wide barrier per step:
// in forward, h_t complete before step t+1 reads it; in backward, dz_t complete before the blocks
// compute dL/dh_{t-1} = dz_t U for their units. Values written by other blocks during the kernel
// are read with __ldcg (L2, never a stale L1 line).
//
// Forward: a warp takes RB rows of the batch for all NJ units: each lane a stride of the H inputs,
// RB * 4 * NJ sums in registers, summed across the warp, then lane r*NJ + j runs the cell of row
// r, unit j.

template <int NJ, int RB>
__global__ void __launch_bounds__(kThreads) forward_persistent(RecurrentForward a) {
  extern __shared__ float smem[];
  float* Us = smem;  // [4][NJ][H]: U's rows g*H + j0 + jj
  cg::grid_group grid = cg::this_grid();
  const int H = a.H, B = a.B, G = 4 * H;
  const int j0 = blockIdx.x * NJ, nj = min(NJ, H - j0);
  for (int idx = threadIdx.x; idx < 4 * NJ * H; idx += blockDim.x) {
    const int row = idx / H, k = idx - row * H, g = row / NJ, jj = row - g * NJ;
    Us[idx] = jj < nj ? a.U[static_cast<size_t>(g * H + j0 + jj) * H + k] : 0.0f;
  }
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  const int tiles = (B + RB - 1) / RB;
  // The lane that runs a cell after the sums, and its bias.
  const int my_r = lane / NJ, my_jj = lane - my_r * NJ, my_j = j0 + my_jj;
  const bool runs_cell = lane < RB * NJ && my_jj < nj;
  float bias[4] = {0, 0, 0, 0};
  core::CellUnit<float> unit{0, 0, 0};
  if (runs_cell) {
    for (int g = 0; g < 4; ++g) bias[g] = a.b_ih[g * H + my_j] + a.b_hh[g * H + my_j];
    if (a.unit) unit = {a.unit[my_j], a.unit[H + my_j], a.unit[2 * H + my_j]};
  }
  for (int t = 0; t < a.T; ++t) {
    const float* hp = a.hseq + static_cast<size_t>(t) * B * H;
    for (int tile = warp; tile < tiles; tile += warps) {
      const int b0 = tile * RB, b = b0 + my_r;
      const bool cell = runs_cell && b < B;
      // The cell's operands that do not depend on h_{t-1}, loaded before the sums need the lane.
      const size_t row = (static_cast<size_t>(t) * B + b) * G;
      const size_t st = static_cast<size_t>(t) * B * H + static_cast<size_t>(b) * H + my_j;
      float xz[4] = {0, 0, 0, 0}, s_prev = 0.0f;
      if (cell) {
        for (int g = 0; g < 4; ++g) xz[g] = a.gx[row + g * H + my_j] + bias[g];
        s_prev = __ldcg(a.sseq + st);
      }
      float acc[RB][4][NJ];
#pragma unroll
      for (int r = 0; r < RB; ++r)
#pragma unroll
        for (int g = 0; g < 4; ++g)
#pragma unroll
          for (int jj = 0; jj < NJ; ++jj) acc[r][g][jj] = 0.0f;
#pragma unroll 2
      for (int k = lane; k < H; k += 32) {
        float hv[RB];
#pragma unroll
        for (int r = 0; r < RB; ++r)
          hv[r] = b0 + r < B ? __ldcg(hp + static_cast<size_t>(b0 + r) * H + k) : 0.0f;
#pragma unroll
        for (int g = 0; g < 4; ++g)
#pragma unroll
          for (int jj = 0; jj < NJ; ++jj) {
            const float u = Us[(g * NJ + jj) * H + k];
#pragma unroll
            for (int r = 0; r < RB; ++r) acc[r][g][jj] = fmaf(hv[r], u, acc[r][g][jj]);
          }
      }
      float z[4] = {0, 0, 0, 0};
#pragma unroll
      for (int r = 0; r < RB; ++r)
#pragma unroll
        for (int jj = 0; jj < NJ; ++jj)
#pragma unroll
          for (int g = 0; g < 4; ++g) {
            const float v = warp_sum(acc[r][g][jj]);
            if (lane == r * NJ + jj) z[g] = v;
          }
      if (cell) {
        for (int g = 0; g < 4; ++g) z[g] += xz[g];
        float s, h;
        core::CellGates<float> c;
        core::cell_forward(Math{}, z[0], z[1], z[2], z[3], s_prev, a.unit ? &unit : nullptr, c, s,
                           h);
        a.gates[row + my_j] = c.i, a.gates[row + H + my_j] = c.f;
        a.gates[row + 2 * H + my_j] = c.a, a.gates[row + 3 * H + my_j] = c.o;
        a.sseq[st + static_cast<size_t>(B) * H] = s;
        a.hseq[st + static_cast<size_t>(B) * H] = h;
      }
    }
    grid.sync();
  }
}

// Backward: phase A, each block the cell backward of its units (dL/dh_t = dh_out + the dhrec it
// computed itself at step t+1; ds carried in shared memory) writing dz_t; the barrier; phase B,
// dhrec = dz_t U for its units: a warp takes RB rows, each lane a stride of the G gate inputs.
template <int NJ, int RB>
__global__ void __launch_bounds__(kThreads) backward_persistent(RecurrentBackward a) {
  extern __shared__ float smem[];
  const int H = a.H, B = a.B, G = 4 * H;
  float* Ut = smem;            // [NJ][G]: Ut[jj][q] = U[q][j0 + jj]
  float* dhrec = Ut + NJ * G;  // [B][NJ]
  float* ds = dhrec + B * NJ;  // [B][NJ]
  cg::grid_group grid = cg::this_grid();
  const int j0 = blockIdx.x * NJ, nj = min(NJ, H - j0);
  for (int idx = threadIdx.x; idx < NJ * G; idx += blockDim.x) {
    const int jj = idx / G, q = idx - jj * G;
    Ut[idx] = jj < nj ? a.U[static_cast<size_t>(q) * H + j0 + jj] : 0.0f;
  }
  for (int idx = threadIdx.x; idx < B * NJ; idx += blockDim.x) dhrec[idx] = 0.0f, ds[idx] = 0.0f;
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  const int tiles = (B + RB - 1) / RB;
  for (int t = a.T - 1; t >= 0; --t) {
    for (int p = threadIdx.x; p < B * NJ; p += blockDim.x) {  // phase A
      const int b = p / NJ, jj = p - b * NJ, j = j0 + jj;
      if (jj >= nj) continue;
      const size_t row = (static_cast<size_t>(t) * B + b) * G;
      const size_t st = static_cast<size_t>(t) * B * H + static_cast<size_t>(b) * H + j;
      const core::CellGates<float> g{a.gates[row + j], a.gates[row + H + j],
                                     a.gates[row + 2 * H + j], a.gates[row + 3 * H + j]};
      const float dh = (a.dh_out ? a.dh_out[st] : 0.0f) + dhrec[p];
      float dsv = ds[p];
      core::CellGates<float> d;
      const core::CellUnit<float> u = unit_of(a.unit, H, j);
      core::cell_backward(Math{}, g, Math{}.tanh(a.sseq[st + static_cast<size_t>(B) * H]),
                          a.sseq[st], a.unit ? &u : nullptr, dh, dsv, d);
      ds[p] = dsv;
      a.dz[row + j] = d.i, a.dz[row + H + j] = d.f, a.dz[row + 2 * H + j] = d.a;
      a.dz[row + 3 * H + j] = d.o;
    }
    grid.sync();
    const float* dzt = a.dz + static_cast<size_t>(t) * B * G;
    for (int tile = warp; tile < tiles; tile += warps) {  // phase B
      const int b0 = tile * RB;
      float acc[RB][NJ];
#pragma unroll
      for (int r = 0; r < RB; ++r)
#pragma unroll
        for (int jj = 0; jj < NJ; ++jj) acc[r][jj] = 0.0f;
#pragma unroll 2
      for (int q = lane; q < G; q += 32) {
        float dv[RB];
#pragma unroll
        for (int r = 0; r < RB; ++r)
          dv[r] = b0 + r < B ? __ldcg(dzt + static_cast<size_t>(b0 + r) * G + q) : 0.0f;
#pragma unroll
        for (int jj = 0; jj < NJ; ++jj) {
          const float u = Ut[jj * G + q];
#pragma unroll
          for (int r = 0; r < RB; ++r) acc[r][jj] = fmaf(dv[r], u, acc[r][jj]);
        }
      }
#pragma unroll
      for (int r = 0; r < RB; ++r)
#pragma unroll
        for (int jj = 0; jj < NJ; ++jj) {
          const float v = warp_sum(acc[r][jj]);
          if (lane == 0 && b0 + r < B) dhrec[(b0 + r) * NJ + jj] = v;
        }
    }
    __syncthreads();
  }
  for (int p = threadIdx.x; p < B * NJ; p += blockDim.x) {
    const int b = p / NJ, jj = p - b * NJ;
    if (jj >= nj) continue;
    const size_t k = static_cast<size_t>(b) * H + j0 + jj;
    if (a.dh0) a.dh0[k] = dhrec[p];
    if (a.ds0) a.ds0[k] = ds[p];
  }
}

// Units per block the kernels are built for, and the rows per warp tile that go with them (the
// registers: RB * 4 * NJ sums per lane, at most 64).
constexpr int kUnitChoices[] = {1, 2, 3, 4, 6, 8};
constexpr int rows_per_tile(int nj) {
  return nj <= 4 ? 4 : 2;
}

template <int NJ>
void* forward_kernel() {
  return reinterpret_cast<void*>(&forward_persistent<NJ, rows_per_tile(NJ)>);
}
template <int NJ>
void* backward_kernel() {
  return reinterpret_cast<void*>(&backward_persistent<NJ, rows_per_tile(NJ)>);
}

void* pick(int nj, bool forward) {
  switch (nj) {
    case 1:
      return forward ? forward_kernel<1>() : backward_kernel<1>();
    case 2:
      return forward ? forward_kernel<2>() : backward_kernel<2>();
    case 3:
      return forward ? forward_kernel<3>() : backward_kernel<3>();
    case 4:
      return forward ? forward_kernel<4>() : backward_kernel<4>();
    case 6:
      return forward ? forward_kernel<6>() : backward_kernel<6>();
    case 8:
      return forward ? forward_kernel<8>() : backward_kernel<8>();
    default:
      return nullptr;
  }
}

// Whether `blocks` blocks of `kernel` with `smem` bytes each can all be resident at once.
bool co_resident(void* kernel, size_t smem, int blocks, const DeviceInfo& d) {
  if (smem > d.smem_optin) return false;
  LSTMGRAD_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     static_cast<int>(smem)));
  int per_sm = 0;
  LSTMGRAD_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem));
  return per_sm * d.sms >= blocks;
}

void launch_cooperative(void* kernel, int blocks, size_t smem, void* args, cudaStream_t stream) {
  void* params[] = {args};
  LSTMGRAD_CUDA(
      cudaLaunchCooperativeKernel(kernel, dim3(blocks), dim3(kThreads), params, smem, stream));
  LSTMGRAD_LAUNCHED();
}

// ---------------------------------------------------------------------------------------------
// The per-step path's element-wise kernels (one thread per (row, unit)).

__global__ void gates_forward_kernel(RecurrentForward a, int t) {
  const int H = a.H, B = a.B, G = 4 * H;
  LSTMGRAD_FOR_EACH(k, static_cast<int64_t>(B) * H) {
    const int b = static_cast<int>(k / H), j = static_cast<int>(k - static_cast<int64_t>(b) * H);
    const size_t row = (static_cast<size_t>(t) * B + b) * G;
    const size_t st = static_cast<size_t>(t) * B * H + k;
    float z[4];
    for (int g = 0; g < 4; ++g)
      z[g] = a.gx[row + g * H + j] + a.b_ih[g * H + j] + a.b_hh[g * H + j];
    float s, h;
    core::CellGates<float> c;
    const core::CellUnit<float> u = unit_of(a.unit, H, j);
    core::cell_forward(Math{}, z[0], z[1], z[2], z[3], a.sseq[st], a.unit ? &u : nullptr, c, s, h);
    a.gates[row + j] = c.i, a.gates[row + H + j] = c.f, a.gates[row + 2 * H + j] = c.a;
    a.gates[row + 3 * H + j] = c.o;
    a.sseq[st + static_cast<size_t>(B) * H] = s;
    a.hseq[st + static_cast<size_t>(B) * H] = h;
  }
}

__global__ void gates_backward_kernel(RecurrentBackward a, int t) {
  const int H = a.H, B = a.B, G = 4 * H;
  LSTMGRAD_FOR_EACH(k, static_cast<int64_t>(B) * H) {
    const int b = static_cast<int>(k / H), j = static_cast<int>(k - static_cast<int64_t>(b) * H);
    const size_t row = (static_cast<size_t>(t) * B + b) * G;
    const size_t st = static_cast<size_t>(t) * B * H + k;
    const core::CellGates<float> g{a.gates[row + j], a.gates[row + H + j], a.gates[row + 2 * H + j],
                                   a.gates[row + 3 * H + j]};
    const float dh = (a.dh_out ? a.dh_out[st] : 0.0f) + a.dhrec[k];
    float dsv = a.ds[k];
    core::CellGates<float> d;
    const core::CellUnit<float> u = unit_of(a.unit, H, j);
    core::cell_backward(Math{}, g, Math{}.tanh(a.sseq[st + static_cast<size_t>(B) * H]), a.sseq[st],
                        a.unit ? &u : nullptr, dh, dsv, d);
    a.ds[k] = dsv;
    a.dz[row + j] = d.i, a.dz[row + H + j] = d.f, a.dz[row + 2 * H + j] = d.a;
    a.dz[row + 3 * H + j] = d.o;
  }
}

__global__ void unit_grads_kernel(float* du, const float* dz, const float* sseq, int64_t N, int B,
                                  int H) {
  LSTMGRAD_FOR_EACH(j, H) {
    const int64_t h = H;
    const core::CellUnit<float> g =
        core::cell_unit_grads(dz + j, 4 * h, h, sseq + j, sseq + B * h + j, h, N);
    du[j] += g.p_i, du[H + j] += g.p_f, du[2 * H + j] += g.p_o;
  }
}

// ---------------------------------------------------------------------------------------------
// Embedding, dropout, fills.

__global__ void gather_kernel(float* out, const float* table, const int64_t* ids, int64_t N,
                              int64_t X) {
  LSTMGRAD_FOR_EACH(k, N * X) {
    const int64_t r = k / X;
    out[k] = table[ids[r] * X + (k - r * X)];
  }
}

// Atomic adds: the order among positions that share a token varies from run to run (float32
// rounding differences of the embedding gradient, nothing more).
__global__ void scatter_add_kernel(float* table, const float* rows, const int64_t* ids, int64_t N,
                                   int64_t X) {
  LSTMGRAD_FOR_EACH(k, N * X) {
    const int64_t r = k / X;
    atomicAdd(table + ids[r] * X + (k - r * X), rows[k]);
  }
}

__global__ void dropout_kernel(float* mask, int64_t n, double p, uint64_t base, float keep) {
  LSTMGRAD_FOR_EACH(k, n) mask[k] = cpu::dropout_entry(base, static_cast<uint64_t>(k), p, keep);
}

__global__ void multiply_kernel(float* y, const float* x, const float* m, int64_t n) {
  LSTMGRAD_FOR_EACH(k, n) y[k] = x[k] * m[k];
}

__global__ void fill_kernel(float* p, float v, int64_t n) {
  LSTMGRAD_FOR_EACH(k, n) p[k] = v;
}

__global__ void broadcast_kernel(float* out, const float* row, int64_t N, int64_t V) {
  LSTMGRAD_FOR_EACH(k, N * V) out[k] = row[k % V];
}

// ---------------------------------------------------------------------------------------------
// Softmax cross-entropy: one block per row.

__device__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read from the previous reduction
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = threadIdx.x < blockDim.x / 32 ? scratch[threadIdx.x] : 0.0f;
  return warp_sum(v);  // every thread of warp 0 holds it; broadcast below
}

__device__ float block_max(float v, float* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, off));
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = threadIdx.x < blockDim.x / 32 ? scratch[threadIdx.x] : -INFINITY;
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, off));
  return v;
}

__device__ float block_broadcast(float v, float* slot) {
  __syncthreads();
  if (threadIdx.x == 0) *slot = v;
  __syncthreads();
  return *slot;
}

__global__ void softmax_xent_kernel(float* z, const int64_t* y, const float* yp, float* row_loss,
                                    int64_t V) {
  __shared__ float scratch[33];
  const int64_t r = blockIdx.x;
  float* zr = z + r * V;
  float m = -INFINITY;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) m = fmaxf(m, zr[v]);
  m = block_broadcast(block_max(m, scratch), scratch + 32);
  float se = 0.0f;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) se += expf(zr[v] - m);
  const float lse = logf(block_broadcast(block_sum(se, scratch), scratch + 32)) + m;
  float loss = 0.0f;
  if (yp) {
    const float* yr = yp + r * V;
    float part = 0.0f;
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x)
      part += yr[v] > 0 ? yr[v] * (lse - zr[v]) : 0.0f;
    loss = block_broadcast(block_sum(part, scratch), scratch + 32);
  } else if (y) {
    loss = lse - zr[y[r]];
  }
  __syncthreads();  // every thread has read z[y] before it is overwritten
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) zr[v] = expf(zr[v] - lse);
  if (threadIdx.x == 0) row_loss[r] = loss;
}

__global__ void softmax_grad_kernel(float* dz, const float* p, const int64_t* y, const float* yp,
                                    float scale, int64_t N, int64_t V) {
  LSTMGRAD_FOR_EACH(k, N * V) {
    const int64_t r = k / V, v = k - r * V;
    const float target = yp ? yp[k] : (y && y[r] == v ? 1.0f : 0.0f);
    dz[k] = scale * (p[k] - target);
  }
}

// ---------------------------------------------------------------------------------------------
// Optimizer: the norm in two fixed-order passes, then the update.

__global__ void sumsq_kernel(const float* g, int64_t n, double* partials) {
  __shared__ double scratch[kThreads];
  double s = 0;
  LSTMGRAD_FOR_EACH(k, n) s += static_cast<double>(g[k]) * g[k];
  scratch[threadIdx.x] = s;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half >>= 1) {
    if (threadIdx.x < half) scratch[threadIdx.x] += scratch[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) partials[blockIdx.x] = scratch[0];
}

__global__ void norm_finish_kernel(const double* partials, int n, double* norm2, float* scale,
                                   double clip) {
  if (threadIdx.x != 0) return;
  double s = 0;
  for (int b = 0; b < n; ++b) s += partials[b];
  *norm2 = s;
  const double norm = sqrt(s);  // clip_factor (lstmgrad/optimizer.hpp)
  *scale = static_cast<float>(clip > 0 && norm > clip ? clip / (norm + 1e-6) : 1.0);
}

__global__ void sgd_kernel(float* p, float* g, int64_t n, float lr, const float* scale) {
  const float c = *scale;
  LSTMGRAD_FOR_EACH(k, n) {
    p[k] -= lr * (g[k] * c);
    g[k] = 0.0f;
  }
}

__global__ void adam_kernel(float* p, float* g, float* m, float* v, int64_t n, float step, float b1,
                            float b2, float bc2, float eps, const float* scale) {
  const float c = *scale;
  LSTMGRAD_FOR_EACH(k, n) {
    const float gk = g[k] * c;
    m[k] = b1 * m[k] + (1.0f - b1) * gk;
    v[k] = b2 * v[k] + (1.0f - b2) * gk * gk;
    p[k] -= step * m[k] / (sqrtf(v[k]) / bc2 + eps);
    g[k] = 0.0f;
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------

PersistentPlan plan_persistent(int B, int H) {
  const DeviceInfo& d = device_info();
  PersistentPlan p;
  if (!d.cooperative) return p;
  const int need = (H + d.sms - 1) / d.sms;
  for (int nj : kUnitChoices) {
    if (nj < need) continue;
    const int blocks = (H + nj - 1) / nj;
    const size_t fwd = sizeof(float) * 4 * static_cast<size_t>(nj) * H;
    const size_t bwd = fwd + sizeof(float) * 2 * static_cast<size_t>(B) * nj;
    if (co_resident(pick(nj, true), fwd, blocks, d) && co_resident(pick(nj, false), bwd, blocks, d))
      p = {nj, blocks, fwd, bwd};
    break;
  }
  return p;
}

void recurrent_forward_persistent(const RecurrentForward& a, const PersistentPlan& p,
                                  cudaStream_t stream) {
  RecurrentForward args = a;
  launch_cooperative(pick(p.units, true), p.blocks, p.smem_forward, &args, stream);
}

void recurrent_backward_persistent(const RecurrentBackward& a, const PersistentPlan& p,
                                   cudaStream_t stream) {
  RecurrentBackward args = a;
  launch_cooperative(pick(p.units, false), p.blocks, p.smem_backward, &args, stream);
}

void gates_forward_step(const RecurrentForward& a, int t, cudaStream_t stream) {
  gates_forward_kernel<<<grid_for(static_cast<int64_t>(a.B) * a.H), kThreads, 0, stream>>>(a, t);
  LSTMGRAD_LAUNCHED();
}

void gates_backward_step(const RecurrentBackward& a, int t, cudaStream_t stream) {
  gates_backward_kernel<<<grid_for(static_cast<int64_t>(a.B) * a.H), kThreads, 0, stream>>>(a, t);
  LSTMGRAD_LAUNCHED();
}

void unit_grads(float* du, const float* dz, const float* sseq, int64_t T, int64_t B, int64_t H,
                cudaStream_t stream) {
  unit_grads_kernel<<<grid_for(H), kThreads, 0, stream>>>(du, dz, sseq, T * B, static_cast<int>(B),
                                                          static_cast<int>(H));
  LSTMGRAD_LAUNCHED();
}

void gather_rows(float* out, const float* table, const int64_t* ids, int64_t N, int64_t X,
                 cudaStream_t stream) {
  gather_kernel<<<grid_for(N * X), kThreads, 0, stream>>>(out, table, ids, N, X);
  LSTMGRAD_LAUNCHED();
}

void scatter_add_rows(float* table, const float* rows, const int64_t* ids, int64_t N, int64_t X,
                      cudaStream_t stream) {
  scatter_add_kernel<<<grid_for(N * X), kThreads, 0, stream>>>(table, rows, ids, N, X);
  LSTMGRAD_LAUNCHED();
}

void dropout_mask(float* mask, int64_t n, double p, uint64_t base, cudaStream_t stream) {
  dropout_kernel<<<grid_for(n), kThreads, 0, stream>>>(mask, n, p, base,
                                                       static_cast<float>(1.0 / (1.0 - p)));
  LSTMGRAD_LAUNCHED();
}

void multiply(float* y, const float* x, const float* m, int64_t n, cudaStream_t stream) {
  multiply_kernel<<<grid_for(n), kThreads, 0, stream>>>(y, x, m, n);
  LSTMGRAD_LAUNCHED();
}

void fill(float* p, float v, int64_t n, cudaStream_t stream) {
  fill_kernel<<<grid_for(n), kThreads, 0, stream>>>(p, v, n);
  LSTMGRAD_LAUNCHED();
}

void broadcast_rows(float* out, const float* row, int64_t N, int64_t V, cudaStream_t stream) {
  broadcast_kernel<<<grid_for(N * V), kThreads, 0, stream>>>(out, row, N, V);
  LSTMGRAD_LAUNCHED();
}

void softmax_xent(float* z, const int64_t* y, const float* yp, float* row_loss, int64_t N,
                  int64_t V, cudaStream_t stream) {
  softmax_xent_kernel<<<static_cast<unsigned>(N), kThreads, 0, stream>>>(z, y, yp, row_loss, V);
  LSTMGRAD_LAUNCHED();
}

void softmax_xent_grad(float* dz, const float* p, const int64_t* y, const float* yp, float scale,
                       int64_t N, int64_t V, cudaStream_t stream) {
  softmax_grad_kernel<<<grid_for(N * V), kThreads, 0, stream>>>(dz, p, y, yp, scale, N, V);
  LSTMGRAD_LAUNCHED();
}

void grad_norm(const float* g, int64_t n, double* partials, double* norm2, float* scale,
               double clip, cudaStream_t stream) {
  sumsq_kernel<<<kNormBlocks, kThreads, 0, stream>>>(g, n, partials);
  LSTMGRAD_LAUNCHED();
  norm_finish_kernel<<<1, 32, 0, stream>>>(partials, kNormBlocks, norm2, scale, clip);
  LSTMGRAD_LAUNCHED();
}

void sgd_update(float* p, float* g, int64_t n, float lr, const float* scale, cudaStream_t stream) {
  sgd_kernel<<<grid_for(n), kThreads, 0, stream>>>(p, g, n, lr, scale);
  LSTMGRAD_LAUNCHED();
}

void adam_update(float* p, float* g, float* m, float* v, int64_t n, float step, float b1, float b2,
                 float bc2, float eps, const float* scale, cudaStream_t stream) {
  adam_kernel<<<grid_for(n), kThreads, 0, stream>>>(p, g, m, v, n, step, b1, b2, bc2, eps, scale);
  LSTMGRAD_LAUNCHED();
}

}  // namespace lstmgrad::cuda
