// pointwise_conv2d on tensor cores with the epilogue in the GEMM (sm_80+, float16/bfloat16,
// channels_last): out (P = N*H*W, Cout) = x (P, Cin) . W^T, then per output value
//   y = act(out + bias[co]) + residual[p, co], rounded once to the output dtype,
// and, for the statistics variant (no bias, activation or residual), per-(M tile, channel) centred
// partials (count, mean, M2) of the values as stored (chan_stats.cuh's ShiftedSums and
// block_merge_write; stats_finish_kernel merges the tiles), so neither the epilogue nor the
// statistics read the output again: I + O bytes instead of cuBLAS + epilogue's I + 3O (+ O for the
// statistics). KERNELS.md §2 ("the epilogue emits per-(tile, channel) partial stats").
//
// Block: kThreads = 256 threads (8 warps), one kBM x BN output tile (kBM = 128 pixels, BN = 32, 64
// or 128 output channels: plan_gemm). K loop: kBK = 32 input channels per step, two shared-memory
// stages filled by 16-byte cp.async copies (zero-filled past P, Cin and Cout, so the tails need no
// other predicate), while the warps run wmma 16x16x16 MMAs (mma.sync; fp32 accumulators) on the
// other stage. Warps tile the block as (8 / (BN/32)) x (BN/32), each owning (kBM / warps_m) x 32
// outputs: FM x 2 accumulator fragments. Epilogue: the accumulators go to shared memory (fp32, over
// the operand stages), then thread (x, y) of the (BN/8) x (256 / (BN/8)) block owns channel vector x
// (8 channels, one 16-byte store) and rows y, y + 256/(BN/8), ... of the tile, which keeps the
// stores coalesced and hands block_merge_write its (lane = y) layout.
// Requires (pointwise_gemm_eligible): channels_last (or 1x1 images) dense x / residual / y,
// Cin % 8 == 0 and Cout % 8 == 0 (whole 16-byte vectors), 16-byte aligned pointers. Indexing: int64
// row offsets.
// Precision: each product of two 16-bit values is exact in fp32 and the MMAs accumulate in fp32
// (the order within an MMA is the hardware's); bias, activation and residual are applied in fp32 to
// the accumulator and rounded once, where cuBLAS + epilogue rounds twice.
// Determinism: no atomics; a fixed tile -> block map and a fixed merge tree: bitwise repeatable.
// Host emulation: python_tests/cuda_emulation/pw_gemm_host.cpp compiles this header with g++
// against cuda_shim/ (its mma.h computes each fragment's whole tile per thread, lane 0 stores it;
// cp.async copies land at their wait) and checks the kernel against an fp64 reference on CPU boxes.
#pragma once

#include <ATen/ATen.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "chan_stats.cuh"
#include "mk_cuda.cuh"
#include "pointwise_conv2d.h"

namespace mobilenet_kernels {
namespace cuda {
namespace pw_gemm {

constexpr int kThreads = 256;
constexpr int kBM = 128;      // pixels per tile
constexpr int kBK = 32;       // input channels per K step
constexpr int kLd = kBK + 8;  // operand row pitch (elements): 80 bytes, so 8 rows hit 8 distinct bank groups
constexpr int kVec = 8;       // channels per 16-byte vector of a 16-bit type

// The shape of the GEMM: x (P, Cin) row-major, W (Cout, Cin) row-major, y (P, Cout) row-major.
struct GemmShape {
  int64_t P = 0;
  int Cin = 0, Cout = 0;
};

// The launch: BN, a 1-D grid of tiles_m * tiles_n blocks (gemm_grid) of (BN / 8, 256 / (BN / 8))
// threads and smem_bytes of dynamic shared memory. Block b takes M tile b / tiles_n and N tile
// b % tiles_n: the blocks that read the same input rows run side by side, so that the rows come
// from HBM once and from L2 for the other N tiles.
struct GemmPlan {
  int bn = 0;
  int64_t tiles_m = 0, tiles_n = 0;
  int64_t smem_bytes = 0;
};

template <int BN>
constexpr int64_t smem_bytes_for(int64_t elem_bytes) {
  const int64_t stages = 2 * (kBM + BN) * kLd * elem_bytes;     // A and B, double-buffered
  const int64_t c_tile = int64_t(kBM) * (BN + 4) * 4;            // fp32 accumulators, padded rows
  return stages > c_tile ? stages : c_tile;
}

// BN: the widest of 128, 64, 32 whose padding of Cout stays within a quarter of Cout (fewer N
// tiles re-read the A rows fewer times); 32 otherwise.
inline int pick_bn(int64_t Cout) {
  for (int bn : {128, 64}) {
    if (ceil_div(Cout, bn) * bn - Cout <= Cout / 4) return bn;
  }
  return 32;
}

// f(std::integral_constant<int, BN>{}) for BN in {128, 64, 32}: plan_gemm, the launcher and the
// emulation dispatch alike.
template <typename F>
void dispatch_bn(int bn, const F& f) {
  switch (bn) {
    case 128:
      f(std::integral_constant<int, 128>{});
      break;
    case 64:
      f(std::integral_constant<int, 64>{});
      break;
    default:
      f(std::integral_constant<int, 32>{});
  }
}

// f(scalar_t{}) for float16 / bfloat16 (an eligible conv has one of these): the launcher and the
// emulation dispatch alike.
template <typename F>
void dispatch_16bit(at::ScalarType dt, const F& f) {
  if (dt == at::kHalf) {
    f(at::Half{});
  } else {
    f(at::BFloat16{});
  }
}

inline GemmPlan plan_gemm(const GemmShape& s, int64_t elem_bytes) {
  GemmPlan p;
  p.bn = pick_bn(s.Cout);
  p.tiles_m = ceil_div(s.P, kBM);
  p.tiles_n = ceil_div(s.Cout, p.bn);
  dispatch_bn(p.bn, [&](auto bn) { p.smem_bytes = smem_bytes_for<decltype(bn)::value>(elem_bytes); });
  return p;
}

// Whether the kernel takes the prepared conv `a` writing `out` (the device aside: the launcher
// checks sm_80+ and its shared memory): float16/bfloat16, channels_last (or one pixel per image,
// where NCHW is the same memory), whole 16-byte channel vectors, 16-byte aligned operands, a
// non-empty output and int-sized channel counts.
inline bool pointwise_gemm_eligible(const PointwiseArgs& a, const at::Tensor& out) {
  const auto dt = a.input.scalar_type();
  return (dt == at::kHalf || dt == at::kBFloat16) && (a.channels_last() || a.HW() == 1) && a.pixels() > 0 &&
         a.Cin % kVec == 0 && a.Cout % kVec == 0 && a.Cin <= std::numeric_limits<int>::max() &&
         ceil_div(a.pixels(), kBM) * ceil_div(a.Cout, 32) <= std::numeric_limits<int32_t>::max() &&
         aligned16(a.input.data_ptr()) && aligned16(a.weight.data_ptr()) && aligned16(out.data_ptr()) &&
         (!a.residual.defined() || aligned16(a.residual.data_ptr()));
}

inline GemmShape gemm_shape(const PointwiseArgs& a) {
  return GemmShape{a.pixels(), static_cast<int>(a.Cin), static_cast<int>(a.Cout)};
}

inline dim3 gemm_grid(const GemmPlan& p) { return dim3(static_cast<unsigned>(p.tiles_m * p.tiles_n)); }

inline dim3 gemm_block(const GemmPlan& p) {
  const unsigned tx = static_cast<unsigned>(p.bn / kVec);
  return dim3(tx, kThreads / tx);
}

// The wmma element type of a 16-bit ATen type (the same bits).
template <typename scalar_t>
struct MmaType;
template <>
struct MmaType<at::Half> {
  using type = __half;
};
template <>
struct MmaType<at::BFloat16> {
  using type = __nv_bfloat16;
};

// The dynamic shared memory (GemmPlan::smem_bytes): the operand stages, then the accumulator tile.
MK_DYNAMIC_SMEM(mk_pw_gemm_smem, 128);

// One K step's operands into a stage: A rows m0.. of x (kBM x kBK), B rows n0.. of W (BN x kBK).
template <typename scalar_t, int BN>
__device__ __forceinline__ void load_stage(scalar_t* as, scalar_t* bs, const scalar_t* __restrict__ x,
                                           const scalar_t* __restrict__ w, const GemmShape& s, int64_t m0, int n0,
                                           int k0, int tid) {
  constexpr int kChunks = kBK / kVec;  // 16-byte chunks per row
#pragma unroll
  for (int i = tid; i < kBM * kChunks; i += kThreads) {
    const int r = i / kChunks, c = i % kChunks * kVec;
    const bool valid = m0 + r < s.P && k0 + c < s.Cin;  // Cin % 8 == 0: a chunk is all in or all out
    copy16_async(as + r * kLd + c, valid ? x + (m0 + r) * s.Cin + k0 + c : x, valid);
  }
#pragma unroll
  for (int i = tid; i < BN * kChunks; i += kThreads) {
    const int r = i / kChunks, c = i % kChunks * kVec;
    const bool valid = n0 + r < s.Cout && k0 + c < s.Cin;
    copy16_async(bs + r * kLd + c, valid ? w + static_cast<int64_t>(n0 + r) * s.Cin + k0 + c : w, valid);
  }
}

// y = act(x . W^T + bias) + res (kStats: y = x . W^T and the partials of y as stored, part_* of
// (tiles_m, Cout)). Grid gemm_grid(plan), blockDim gemm_block(plan).
template <typename scalar_t, int BN, bool kStats>
__global__ void __launch_bounds__(kThreads)
    pointwise_gemm_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ w,
                          const float* __restrict__ bias, const scalar_t* __restrict__ res, scalar_t* __restrict__ y,
                          GemmShape s, Act act, float* __restrict__ part_n, float* __restrict__ part_mean,
                          float* __restrict__ part_m2) {
#if defined(MK_CUDA_EMULATION) || !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  namespace wmma = nvcuda::wmma;
  using mma_t = typename MmaType<scalar_t>::type;
  constexpr int kWarpsN = BN / 32, kWarpsM = (kThreads / 32) / kWarpsN;
  constexpr int kFM = kBM / kWarpsM / 16, kFN = 2;  // fragments per warp: (kFM x 16) x 32 outputs
  constexpr int kStage = (kBM + BN) * kLd;         // elements per stage
  constexpr int kLdc = BN + 4;                     // accumulator tile pitch (floats)

  scalar_t* smem = reinterpret_cast<scalar_t*>(mk_pw_gemm_smem);
  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
  const int warp = tid / 32;
  const int wm = warp / kWarpsN, wn = warp % kWarpsN;
  const int tiles_n = (s.Cout + BN - 1) / BN;
  const int64_t tile_m = blockIdx.x / tiles_n;
  const int64_t m0 = tile_m * kBM;
  const int n0 = static_cast<int>(blockIdx.x - tile_m * tiles_n) * BN;

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[kFM][kFN];
#pragma unroll
  for (int i = 0; i < kFM; ++i) {
#pragma unroll
    for (int j = 0; j < kFN; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
  }

  const int k_steps = (s.Cin + kBK - 1) / kBK;
  load_stage<scalar_t, BN>(smem, smem + kBM * kLd, x, w, s, m0, n0, 0, tid);
  copy_async_commit();
  for (int kt = 0; kt < k_steps; ++kt) {
    if (kt + 1 < k_steps) {  // prefetch the next step into the other stage, then wait for this one
      scalar_t* next = smem + ((kt + 1) & 1) * kStage;
      load_stage<scalar_t, BN>(next, next + kBM * kLd, x, w, s, m0, n0, (kt + 1) * kBK, tid);
      copy_async_commit();
      copy_async_wait<1>();
    } else {
      copy_async_wait<0>();
    }
    __syncthreads();
    const mma_t* as = reinterpret_cast<const mma_t*>(smem + (kt & 1) * kStage);
    const mma_t* bs = as + kBM * kLd;
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, mma_t, wmma::row_major> fa[kFM];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, mma_t, wmma::col_major> fb[kFN];
#pragma unroll
      for (int i = 0; i < kFM; ++i) wmma::load_matrix_sync(fa[i], as + ((wm * kFM + i) * 16) * kLd + kk, kLd);
#pragma unroll
      for (int j = 0; j < kFN; ++j) wmma::load_matrix_sync(fb[j], bs + ((wn * kFN + j) * 16) * kLd + kk, kLd);
#pragma unroll
      for (int i = 0; i < kFM; ++i) {
#pragma unroll
        for (int j = 0; j < kFN; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
      }
    }
    __syncthreads();  // the stage is refilled by the next step's prefetch
  }

  // Accumulators -> shared memory (over the operand stages, free now), then the epilogue by vectors.
  float* cs = reinterpret_cast<float*>(mk_pw_gemm_smem);
#pragma unroll
  for (int i = 0; i < kFM; ++i) {
#pragma unroll
    for (int j = 0; j < kFN; ++j) {
      wmma::store_matrix_sync(cs + ((wm * kFM + i) * 16) * kLdc + (wn * kFN + j) * 16, acc[i][j], kLdc,
                              wmma::mem_row_major);
    }
  }
  __syncthreads();

  const int cx = threadIdx.x * kVec;  // the thread's channel vector within the tile
  const int64_t c0 = n0 + cx;
  const bool active = c0 < s.Cout;  // Cout % 8 == 0: the whole vector is in
  const int rows = static_cast<int>(s.P - m0 < kBM ? s.P - m0 : kBM);
  float b[kVec];
#pragma unroll
  for (int v = 0; v < kVec; ++v) b[v] = (bias != nullptr && active) ? bias[c0 + v] : 0.0f;
  ShiftedSums<float, kVec> stats;
  if (active) {
    for (int r = threadIdx.y; r < rows; r += blockDim.y) {
      const int64_t e = (m0 + r) * s.Cout + c0;
      float t[kVec];
#pragma unroll
      for (int v = 0; v < kVec; ++v) t[v] = apply_activation(act, cs[r * kLdc + cx + v] + b[v]);
      if (res != nullptr) {
        float rv[kVec];
        load_vec<kVec>(res + e, rv);
#pragma unroll
        for (int v = 0; v < kVec; ++v) t[v] += rv[v];
      }
      store_and_count<kStats>(y + e, t, Act::kIdentity, stats);
    }
  }
  if constexpr (kStats) {
    block_merge_write<kThreads>(stats, active, threadIdx.y, blockDim.y, blockDim.x, tile_m, c0, s.Cout, part_n,
                                part_mean, part_m2);
  }
#endif
}

}  // namespace pw_gemm

// With MK_PW_FUSED=1 (read once per process), pointwise_conv2d and pointwise_conv2d_stats run
// through pointwise_gemm_kernel where it applies (pointwise_gemm_eligible, an sm_80+ device with
// the shared memory); with MK_PW_FUSED=auto only the convs of at most 2^20 output elements
// (batch-1 sizes) do: off by default, no faster than cuBLAS + epilogue in GPU run 4 (see
// pointwise_conv2d.cu), auto untimed. Each returns true when it ran the conv into `out` (dense, the output's
// sizes and format), false when nothing was launched.
bool try_pointwise_gemm(const PointwiseArgs& a, at::Tensor& out);
bool try_pointwise_gemm_stats(const PointwiseArgs& a, at::Tensor& out, at::Tensor& mean, at::Tensor& var);

}  // namespace cuda
}  // namespace mobilenet_kernels
