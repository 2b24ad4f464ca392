// pointwise_conv2d_stats's statistics pass on CUDA: the batch mean and biased variance per channel
// of the stored GEMM output, in two stages (chan_stats.cuh): per-(tile, channel) centred partials
// (count, mean, M2) from per-thread shifted sums merged over a block by Chan's formula in a fixed
// tree, then stats_finish_kernel merging the tiles in a fixed order, in double. No atomics. The
// tiles depend on the shape alone. Shared by pointwise_conv2d.cu and the host emulation
// (python_tests/cuda_emulation/pw_stats_host.cpp), which runs this launch sequence on the CPU
// through the same `launch(kernel, grid, block, dynamic_smem_bytes, args...)`.
#pragma once

#include <ATen/OpMathType.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "chan_stats.cuh"
#include "mk_cuda.cuh"

namespace mobilenet_kernels {
namespace cuda {
namespace pw {

constexpr int kStatsThreads = 256;  // threads per block
constexpr int64_t kMaxGridX = std::numeric_limits<int32_t>::max();
constexpr int64_t kMaxGridY = 65535;

// Stage 1.
// channels_last: y (P, C). Block (tx, ty): thread x owns channels c0 .. c0 + VEC - 1, c0 =
// (blockIdx.y * tx + x) * VEC; rows tile * tile_rows + y, + ty, ... of its tile (blockIdx.x).
template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kStatsThreads)
    pointwise_stats_cl_kernel(const scalar_t* __restrict__ y, int64_t P, int64_t C, int64_t tile_rows,
                              at::opmath_type<scalar_t>* __restrict__ part_n,
                              at::opmath_type<scalar_t>* __restrict__ part_mean,
                              at::opmath_type<scalar_t>* __restrict__ part_m2) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t c0 = (static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x) * VEC;
  const bool active = c0 < C;
  const int64_t tile = blockIdx.x;
  const int64_t r0 = tile * tile_rows;
  const int64_t r1 = r0 + tile_rows < P ? r0 + tile_rows : P;
  ShiftedSums<acc_t, VEC> s;
  if (active) {  // four rows' loads in flight a thread (for_rows_in_flight), added in row order
    for_rows_in_flight<4>(
        r0 + threadIdx.y, r1, blockDim.y, [&](int64_t r) { return load_raw_vec<scalar_t, VEC>(y + r * C + c0); },
        [&](int64_t, const Vec<scalar_t, VEC>& raw) {
          acc_t v[VEC];
#pragma unroll
          for (int j = 0; j < VEC; ++j) v[j] = static_cast<acc_t>(raw.v[j]);
          s.add(v);
        });
  }
  block_merge_write<kStatsThreads>(s, active, threadIdx.y, blockDim.y, blockDim.x, tile, c0, C, part_n, part_mean,
                              part_m2);
}

// NCHW: y (N, C, HW). Block = (tile blockIdx.x, channel blockIdx.y), kStatsThreads threads in x; pixel
// p = (n, hw) of the flattened N*HW; thread x reads the vectors p = tile * tile_px + (x + k *
// kStatsThreads) * VEC (VEC > 1 needs HW % VEC == 0 and tile_px % VEC == 0: a vector stays in a
// plane).
template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kStatsThreads)
    pointwise_stats_nchw_kernel(const scalar_t* __restrict__ y, int64_t P, int64_t C, int64_t HW, Divider div_hw,
                                int64_t tile_px, int64_t cy0, at::opmath_type<scalar_t>* __restrict__ part_n,
                                at::opmath_type<scalar_t>* __restrict__ part_mean,
                                at::opmath_type<scalar_t>* __restrict__ part_m2) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t c = cy0 + blockIdx.y;
  const int64_t tile = blockIdx.x;
  const int64_t p0 = tile * tile_px;
  const int64_t p1 = p0 + tile_px < P ? p0 + tile_px : P;
  ShiftedSums<acc_t, 1> s;
  const int64_t step = static_cast<int64_t>(kStatsThreads) * VEC;
  for (int64_t p = p0 + static_cast<int64_t>(threadIdx.x) * VEC; p < p1; p += step) {
    const int64_t n = div_hw.div(p);
    acc_t v[VEC];
    load_vec<VEC>(y + (n * C + c) * HW + (p - n * HW), v);
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const acc_t one[1] = {v[j]};
      s.add(one);
    }
  }
  block_merge_write<kStatsThreads>(s, true, threadIdx.x, blockDim.x, 1, tile, c, C, part_n, part_mean, part_m2);
}

// The partials' tiles and the launch shape of a statistics pass over y (P = N * H * W pixels, C
// channels, dense in its format), from the shape (and y's alignment, for the vector width) alone.
struct StatsPlan {
  int64_t P, C, HW;
  bool channels_last, vec;
  int64_t tiles;
  int64_t tile_rows;  // channels_last: rows a tile (>= 256, at most ~2048 tiles)
  int64_t tx, ty;     // channels_last: channel vectors x row lanes a block
  int64_t tile_px;    // NCHW: pixels a tile per channel (>= 2048, at most ~1024 tiles, whole vectors)
};

template <typename scalar_t>
StatsPlan stats_plan(const scalar_t* y, int64_t P, int64_t C, int64_t HW, bool channels_last) {
  constexpr int kVec = 16 / sizeof(scalar_t);
  StatsPlan p{P, C, HW, channels_last, false, 0, 0, 0, 0, 0};
  if (channels_last) {
    p.vec = C % kVec == 0 && aligned16(y);
    const int64_t cvecs = ceil_div(C, p.vec ? kVec : 1);
    p.tx = even_lanes(cvecs, 32);  // <= 32 channel vectors per block
    p.ty = pow2_beside(p.tx, kStatsThreads);
    p.tile_rows = std::max<int64_t>(256, ceil_div(P, 2048));
    p.tiles = ceil_div(P, p.tile_rows);
    TORCH_CHECK(p.tiles <= kMaxGridX && ceil_div(cvecs, p.tx) <= kMaxGridY,
                "pointwise_conv2d_stats (CUDA): tensor too large");
  } else {
    p.vec = HW % kVec == 0 && aligned16(y);
    const int vw = p.vec ? kVec : 1;
    p.tile_px = ceil_div(std::max<int64_t>(2048, ceil_div(P, 1024)), vw) * vw;
    p.tiles = ceil_div(P, p.tile_px);
    TORCH_CHECK(p.tiles <= kMaxGridX, "pointwise_conv2d_stats (CUDA): tensor too large");
  }
  return p;
}

// The pass: the partials into part ((3, tiles, C): counts, means, M2s), then mean and var (C,).
template <typename scalar_t, typename Launch>
void stats_steps(const StatsPlan& p, const scalar_t* y, at::opmath_type<scalar_t>* part,
                 at::opmath_type<scalar_t>* mean, at::opmath_type<scalar_t>* var, const Launch& launch) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kVec = 16 / sizeof(scalar_t);
  acc_t* part_n = part;
  acc_t* part_mean = part + p.tiles * p.C;
  acc_t* part_m2 = part + 2 * p.tiles * p.C;
  const auto run = [&](auto vec_tag) {
    constexpr int V = decltype(vec_tag)::value;
    if (p.channels_last) {
      const dim3 grid(static_cast<unsigned>(p.tiles), static_cast<unsigned>(ceil_div(ceil_div(p.C, V), p.tx)));
      const dim3 block(static_cast<unsigned>(p.tx), static_cast<unsigned>(p.ty));
      launch(pointwise_stats_cl_kernel<scalar_t, V>, grid, block, 0, y, p.P, p.C, p.tile_rows, part_n, part_mean,
             part_m2);
    } else {
      const Divider div_hw = make_divider(p.HW);
      for (int64_t cy0 = 0; cy0 < p.C; cy0 += kMaxGridY) {
        const dim3 grid(static_cast<unsigned>(p.tiles), static_cast<unsigned>(std::min(kMaxGridY, p.C - cy0)));
        launch(pointwise_stats_nchw_kernel<scalar_t, V>, grid, dim3(kStatsThreads), 0, y, p.P, p.C, p.HW, div_hw,
               p.tile_px, cy0, part_n, part_mean, part_m2);
      }
    }
  };
  if (p.vec) {
    run(std::integral_constant<int, kVec>{});
  } else {
    run(std::integral_constant<int, 1>{});
  }
  const int64_t blocks = ceil_div(p.C, 32);
  TORCH_CHECK(blocks <= kMaxGridX, "pointwise_conv2d_stats (CUDA): too many channels");
  launch(stats_finish_kernel<acc_t>, dim3(static_cast<unsigned>(blocks)), dim3(32, kStatsFinishLanes), 0, part_n,
         part_mean, part_m2, p.tiles, p.C, mean, var);
}

}  // namespace pw
}  // namespace cuda
}  // namespace mobilenet_kernels
