// Per-channel batch statistics (mean, biased variance) of a kernel's output, in two stages, shared
// by the stats kernels of depthwise_conv2d.cu (its forward epilogue) and pointwise_conv2d.cu (a
// pass over the GEMM output):
//   stage 1: each thread keeps shifted sums of the values it sees (ShiftedSums), and each block
//            merges its threads' (count, mean, M2) with Chan's formula in a fixed tree and writes
//            one partial per (tile, channel) (block_merge_write);
//   stage 2: stats_finish_kernel merges the tiles per channel in a fixed order, in double.
// Fixed orders and no atomics: the statistics are bitwise deterministic for a given launch shape.
// NaN/Inf follow torch.var_mean: a NaN gives NaN mean and variance, a +-Inf (no NaN, one sign) a
// +-Inf mean and a NaN variance.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <limits>

#include "mk_cuda.cuh"

namespace mobilenet_kernels {
namespace cuda {

// Tile lanes per channel in stats_finish_kernel: up to 2048 tiles per channel, each merged by a
// chain of double-precision Chan merges (a division each); 8 lanes took ~19 us a launch in GPU run
// 6's profile (45 launches per V3-Large step), 32 cut each lane's chain by 4.
constexpr int kStatsFinishLanes = 32;

// Chan et al.: merges partial statistics (nb, mb, m2b) into (na, ma, m2a); counts are whole
// numbers, so n >= 1 whenever nb > 0. An empty side is exact. A non-finite mean (the part holds an
// Inf or a NaN) passes through as in a plain sum (+-Inf, or NaN for both signs) with a NaN M2, as
// torch.var_mean gives; the finite formula would turn Inf - Inf into a NaN mean.
template <typename T>
__device__ __forceinline__ void chan_merge(T& na, T& ma, T& m2a, T nb, T mb, T m2b) {
  if (nb == T(0)) return;
  if (!isfinite(ma) || !isfinite(mb)) {
    ma = na == T(0) ? mb : ma + mb;
    m2a = ::nan("");
    na += nb;
    return;
  }
  const T n = na + nb;
  const T d = mb - ma;
  const T f = nb * recip_ge1(n);
  ma += d * f;
  m2a += m2b + d * d * na * f;
  na = n;
}

// A thread's shifted sums of VEC channels: s1 = sum (y - K), s2 = sum (y - K)^2, K its first
// value (0 if not finite). The shift keeps s2 - s1^2 / n from cancelling when |mean| >> std (a
// per-value Welford update would too, but turns a +-Inf mean into NaN at the next value); an Inf
// makes s1 +-Inf (mean +-Inf) and s2 - s1^2 / n NaN, as in torch.
template <typename acc_t, int VEC>
struct ShiftedSums {
  acc_t k[VEC], s1[VEC], s2[VEC];
  int count = 0;
  __device__ __forceinline__ ShiftedSums() {
#pragma unroll
    for (int v = 0; v < VEC; ++v) k[v] = s1[v] = s2[v] = acc_t(0);
  }
  __device__ __forceinline__ void add(const acc_t (&y)[VEC]) {
    if (count == 0) {
#pragma unroll
      for (int v = 0; v < VEC; ++v) k[v] = finite_or_zero(y[v]);
    }
    ++count;
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      const acc_t d = y[v] - k[v];
      s1[v] += d;
      s2[v] += d * d;
    }
  }
  // (mean, M2) of lane v; count > 0.
  __device__ __forceinline__ void centred(int v, acc_t& mean, acc_t& m2) const {
    const acc_t inv = recip_ge1(static_cast<acc_t>(count));
    const acc_t d = s1[v] * inv;
    mean = k[v] + d;
    const acc_t q = s2[v] - s1[v] * d;
    m2 = q < acc_t(0) ? acc_t(0) : q;  // NaN stays NaN
  }
};

// The epilogue of the conv kernels: act(acc) rounded to scalar_t, stored as one vector at p; with
// kStats, the values as stored are added to the thread's sums.
template <bool kStats, typename scalar_t, typename acc_t, int VEC>
__device__ __forceinline__ void store_and_count(scalar_t* p, const acc_t (&acc)[VEC], Act act,
                                                ShiftedSums<acc_t, VEC>& stats) {
  Vec<scalar_t, VEC> o;
#pragma unroll
  for (int v = 0; v < VEC; ++v) o.v[v] = static_cast<scalar_t>(apply_activation(act, acc[v]));
  *reinterpret_cast<Vec<scalar_t, VEC>*>(p) = o;
  if constexpr (kStats) {
    acc_t s[VEC];
#pragma unroll
    for (int v = 0; v < VEC; ++v) s[v] = static_cast<acc_t>(o.v[v]);
    stats.add(s);
  }
}

// Merges the per-thread partials of a block over `lanes` threads (a power of two; thread tid and
// tid + h * lane_stride merge, in a fixed tree) and has lane 0 write them, if active, to
// part_*[tile * C + c0 + v], v < VEC. Every thread of the block must call it (it synchronizes);
// kMaxThreads bounds blockDim.x * blockDim.y (it sizes the shared buffers).
template <int kMaxThreads, typename acc_t, int VEC>
__device__ __forceinline__ void block_merge_write(const ShiftedSums<acc_t, VEC>& s, bool active, int lane, int lanes,
                                                  int lane_stride, int64_t tile, int64_t c0, int64_t C,
                                                  acc_t* __restrict__ part_n, acc_t* __restrict__ part_mean,
                                                  acc_t* __restrict__ part_m2) {
  __shared__ acc_t s_n[kMaxThreads];
  __shared__ acc_t s_mean[kMaxThreads * VEC];
  __shared__ acc_t s_m2[kMaxThreads * VEC];
  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
  s_n[tid] = active ? static_cast<acc_t>(s.count) : acc_t(0);
#pragma unroll
  for (int v = 0; v < VEC; ++v) {
    acc_t mean = 0, m2 = 0;
    if (active && s.count > 0) s.centred(v, mean, m2);
    s_mean[tid * VEC + v] = mean;
    s_m2[tid * VEC + v] = m2;
  }
  __syncthreads();
  for (int h = lanes / 2; h > 0; h /= 2) {
    if (lane < h) {
      const int o = tid + h * lane_stride;  // written last round, read-only now
      acc_t n = 0;
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        n = s_n[tid];
        chan_merge(n, s_mean[tid * VEC + v], s_m2[tid * VEC + v], s_n[o], s_mean[o * VEC + v], s_m2[o * VEC + v]);
      }
      s_n[tid] = n;
    }
    __syncthreads();
  }
  if (lane == 0 && active) {
    const int64_t base = tile * C + c0;
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      part_n[base + v] = s_n[tid];
      part_mean[base + v] = s_mean[tid * VEC + v];
      part_m2[base + v] = s_m2[tid * VEC + v];
    }
  }
}

// Stage 2: channel c = blockIdx.x * 32 + x; lane y merges tiles y, y + kStatsFinishLanes, ... in
// order, then a fixed tree over the lanes; all in double. Writes the mean and the biased variance.
template <typename acc_t>
__global__ void __launch_bounds__(32 * kStatsFinishLanes)
    stats_finish_kernel(const acc_t* __restrict__ part_n,     // (tiles, C)
                        const acc_t* __restrict__ part_mean,  // (tiles, C)
                        const acc_t* __restrict__ part_m2,    // (tiles, C)
                        int64_t tiles, int64_t C,
                        acc_t* __restrict__ mean,             // (C,)
                        acc_t* __restrict__ var) {            // (C,) biased
  constexpr int kLanes = kStatsFinishLanes;
  __shared__ double s_n[kLanes][32];
  __shared__ double s_mean[kLanes][32];
  __shared__ double s_m2[kLanes][32];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x;
  double n = 0, m = 0, m2 = 0;
  if (c < C) {
    // Lane y merges tiles y, y + kLanes, y + 2 kLanes, ... in that order; four tiles' loads are
    // issued ahead.
    int64_t t = threadIdx.y;
    for (; t + 3 * kLanes < tiles; t += 4 * kLanes) {
      double bn[4], bm[4], bm2[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const int64_t i = (t + k * kLanes) * C + c;
        bn[k] = part_n[i];
        bm[k] = part_mean[i];
        bm2[k] = part_m2[i];
      }
#pragma unroll
      for (int k = 0; k < 4; ++k) chan_merge<double>(n, m, m2, bn[k], bm[k], bm2[k]);
    }
#pragma unroll 1
    for (; t < tiles; t += kLanes) {
      const int64_t i = t * C + c;
      chan_merge<double>(n, m, m2, part_n[i], part_mean[i], part_m2[i]);
    }
  }
  s_n[threadIdx.y][threadIdx.x] = n;
  s_mean[threadIdx.y][threadIdx.x] = m;
  s_m2[threadIdx.y][threadIdx.x] = m2;
  __syncthreads();
  for (int s = kLanes / 2; s > 0; s /= 2) {
    if (threadIdx.y < s) {
      const int o = threadIdx.y + s;
      chan_merge<double>(s_n[threadIdx.y][threadIdx.x], s_mean[threadIdx.y][threadIdx.x],
                         s_m2[threadIdx.y][threadIdx.x], s_n[o][threadIdx.x], s_mean[o][threadIdx.x],
                         s_m2[o][threadIdx.x]);
    }
    __syncthreads();
  }
  if (threadIdx.y == 0 && c < C) {
    const double total = s_n[0][threadIdx.x];
    mean[c] = static_cast<acc_t>(s_mean[0][threadIdx.x]);
    const double v = total > 0 ? s_m2[0][threadIdx.x] * recip_ge1(total) : 0.0;
    var[c] = static_cast<acc_t>(v < 0 ? 0.0 : v);  // NaN stays NaN
  }
}

#ifndef MK_CUDA_EMULATION  // a kernel launch: nvcc only (the host emulation runs kernels itself)
// Launches stats_finish_kernel on `stream` over the (tiles, C) partials; `op` names the caller in
// the error message.
template <typename acc_t>
void launch_stats_finish(const acc_t* part_n, const acc_t* part_mean, const acc_t* part_m2, int64_t tiles, int64_t C,
                         acc_t* mean, acc_t* var, cudaStream_t stream, const char* op) {
  const int64_t blocks = ceil_div(C, 32);
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), op, " (CUDA): too many channels");
  stats_finish_kernel<acc_t><<<static_cast<unsigned>(blocks), dim3(32, kStatsFinishLanes), 0, stream>>>(
      part_n, part_mean, part_m2, tiles, C, mean, var);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
#endif  // MK_CUDA_EMULATION

}  // namespace cuda
}  // namespace mobilenet_kernels
