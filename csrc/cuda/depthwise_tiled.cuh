// depthwise_conv2d forward, the shared-memory tiled kernel for channels_last (KERNELS.md §1).
//
// A thread block owns a TH x TW tile of output pixels of one image and cbv 16-byte vectors of
// channels (at most 8: 64 bf16 or 32 fp32 channels). It stages the tile's input
// footprint, ((TH - 1) S + K) x ((TW - 1) S + K) pixels x its channels, once in shared memory
// (positions outside the image stored as zeros: the conv's padding, so the taps need no bounds
// checks), then every thread computes kTiledRW adjacent output columns of one output row for
// kTiledCV = 4 channels (half a vector for 16-bit types: two lanes per vector, which halves the
// accumulators and weights a thread holds, hence its registers): for each kernel row it reads the
// (kTiledRW - 1) S + K input values its columns need once and feeds each to every (column, tap)
// pair that uses it, so shared memory serves ((kTiledRW - 1) S + K) / kTiledRW reads per output
// and kernel row instead of K.
// Threads: threadIdx.x = vector * lanes + lane, threadIdx.y = output row * strips + strip (a strip
// is kTiledRW columns; blockDim.y is a power of two >= TH * strips, the spare threads only stage).
// Each global input vector is read once per tile (plus the halo the neighbouring tiles share,
// from L2), instead of once per kernel row as in depthwise_conv2d_fwd_kernel
// (depthwise_kernels.cuh).
// A block walks R consecutive tiles of the same channels (R > 1 for the statistics, so that a
// partial covers enough outputs); the statistics epilogue is the one of the other kernels
// (ShiftedSums + block_merge_write, chan_stats.cuh), with one partial per block.
// Compile-time: K (3, 5, 7; depthwise_tiled.cu instantiates 3 and 5), S (1, 2), VEC (16 bytes of
// scalar_t); dilation 1 only. The host side (depthwise_conv2d.cu) sends other convs to the default
// kernels (depthwise_kernels.cuh).
// Indexing: int64 memory offsets, int spatial coordinates (H, W + padding checked below 2^30).
//
// The kernel's only CUDA-specific constructs are threadIdx/blockIdx/blockDim, __syncthreads and
// shared memory, so python_tests/cuda_emulation runs it on the host (one std::thread per CUDA
// thread, a barrier for __syncthreads) to check its index math on machines without a GPU.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "chan_stats.cuh"
#include "mk_cuda.cuh"

namespace mobilenet_kernels {
namespace cuda {

constexpr int kTiledRW = 4;             // output columns per thread
constexpr int kTiledCV = 4;             // channels per thread (at most: VEC for float64)
constexpr int kTiledMaxThreads = 256;   // threads per block, at most
constexpr int kTiledMaxVectors = 8;     // channel vectors per block, at most
constexpr int kTiledSmemBytes = 24 * 1024;  // staged tile, at most (kStats adds 9 KB static)

// The geometry of one tiled launch. Strides in elements; the channel stride is 1.
struct TiledGeom {
  int64_t C;
  int H, W, OH, OW;
  int pH, pW;              // padding (may be negative: grad_input as a forward conv)
  int TH, TW, strips;      // output tile (TW == strips * kTiledRW)
  int tiles_h, tiles_w;    // tiles per image
  int64_t tiles;           // N * tiles_h * tiles_w
  int R;                   // consecutive tiles per block
  int64_t xsN, xsH, xsW;   // x strides
  int64_t ysN, ysH, ysW;   // y strides
};

// The dynamic shared memory of the tiled kernel: the staged input tile. (The host emulation,
// python_tests/cuda_emulation, points it at a 16-byte aligned buffer of plan.smem bytes.)
#ifndef MK_CUDA_EMULATION
extern __shared__ __align__(16) unsigned char mk_dw_tiled_smem[];
#else
inline unsigned char* mk_dw_tiled_smem = nullptr;
#endif

// __launch_bounds__(256, 2): at most 128 registers, so two full blocks (16 warps) fit an SM.
// ptxas (CUDA 13, sm_90) gives 72-96 registers for 16-bit types, 80-110 for float, no spills.
template <typename scalar_t, typename acc_t, int VEC, int K, int S, bool kStats>
__global__ void __launch_bounds__(kTiledMaxThreads, 2)
    depthwise_conv2d_fwd_tiled_kernel(const scalar_t* __restrict__ x,   // (N, C, H, W), channels_last
                                      scalar_t* __restrict__ y,         // (N, C, OH, OW), channels_last
                                      const acc_t* __restrict__ w,      // (K * K, C)
                                      const acc_t* __restrict__ bias,   // (C,) or null
                                      TiledGeom g, Act act,
                                      acc_t* __restrict__ part_n,       // (gridDim.x, C), kStats only
                                      acc_t* __restrict__ part_mean,    // (gridDim.x, C), kStats only
                                      acc_t* __restrict__ part_m2) {    // (gridDim.x, C), kStats only
  static_assert(K == 3 || K == 5 || K == 7, "the tiled kernel is specialized for K in {3, 5, 7}");
  static_assert(S == 1 || S == 2, "the tiled kernel is specialized for stride 1 and 2");
  constexpr int CV = VEC < kTiledCV ? VEC : kTiledCV;  // channels a thread computes
  constexpr int kLanes = VEC / CV;                       // threads per channel vector
  using V = Vec<scalar_t, VEC>;
  using VC = Vec<scalar_t, CV>;
  constexpr int kSpan = (kTiledRW - 1) * S + K;  // input columns one thread's strip reads per row
  V* tile = reinterpret_cast<V*>(mk_dw_tiled_smem);  // [(IH * IW) pixels][cbv vectors]
  const int cbv = blockDim.x / kLanes;
  const int IH = (g.TH - 1) * S + K;
  const int IW = (g.TW - 1) * S + K;
  const int64_t cb = static_cast<int64_t>(blockIdx.y) * cbv * VEC;  // the block's first channel
  // Staging: vector sv of pixels p0, p0 + kLanes * blockDim.y, ...
  const int sv = threadIdx.x % cbv;
  const int p0 = threadIdx.y * kLanes + threadIdx.x / cbv;
  const bool stages = cb + sv * VEC < g.C;
  // Computing: channels c0, ..., c0 + CV - 1 (lane `lane` of vector `cv`).
  const int cv = threadIdx.x / kLanes;
  const int lane = threadIdx.x - cv * kLanes;
  const int64_t c0 = cb + cv * VEC + lane * CV;
  const bool active = c0 < g.C;  // no early return: every thread stages and syncs
  const int row = threadIdx.y / g.strips;            // output row within the tile
  const int col0 = (threadIdx.y - row * g.strips) * kTiledRW;  // first output column within the tile
  const bool computes = active && row < g.TH;
  ShiftedSums<acc_t, CV> stats;  // kStats: this thread's outputs, as stored

  acc_t b[CV];
#pragma unroll
  for (int v = 0; v < CV; ++v) b[v] = acc_t(0);
  if (bias != nullptr && active) load_vec<CV>(bias + c0, b);

  const int64_t per_image = static_cast<int64_t>(g.tiles_h) * g.tiles_w;
  const int64_t t_begin = static_cast<int64_t>(blockIdx.x) * g.R;
  const int64_t t_end = t_begin + g.R < g.tiles ? t_begin + g.R : g.tiles;
  for (int64_t t = t_begin; t < t_end; ++t) {  // uniform over the block
    const int64_t n = t / per_image;
    const int rem = static_cast<int>(t - n * per_image);
    const int th = rem / g.tiles_w;
    const int oh0 = th * g.TH;
    const int ow0 = (rem - th * g.tiles_w) * g.TW;
    const int ih0 = oh0 * S - g.pH;
    const int iw0 = ow0 * S - g.pW;

    // Stage the input footprint (a pixel's cbv vectors are adjacent in memory: coalesced).
    __syncthreads();  // the previous tile's reads are done
    const scalar_t* xn = x + n * g.xsN + cb + sv * VEC;
    for (int p = p0; p < IH * IW; p += kLanes * blockDim.y) {
      const int ph = p / IW;
      const int ih = ih0 + ph;
      const int iw = iw0 + (p - ph * IW);
      V val;
#pragma unroll
      for (int v = 0; v < VEC; ++v) val.v[v] = scalar_t(0);
      if (stages && ih >= 0 && ih < g.H && iw >= 0 && iw < g.W) {
        val = *reinterpret_cast<const V*>(xn + static_cast<int64_t>(ih) * g.xsH + static_cast<int64_t>(iw) * g.xsW);
      }
      tile[p * cbv + sv] = val;
    }
    __syncthreads();

    if (computes) {
      acc_t acc[kTiledRW][CV];
#pragma unroll
      for (int j = 0; j < kTiledRW; ++j) {
#pragma unroll
        for (int v = 0; v < CV; ++v) acc[j][v] = b[v];
      }
      // Output column col0 + j, tap kw reads tile column (col0 + j) S + kw = col0 S + i, i = j S + kw.
      // Kernel rows not unrolled: one row's K weight vectors live in registers at a time.
#pragma unroll 1
      for (int kh = 0; kh < K; ++kh) {
        acc_t wr[K][CV];
#pragma unroll
        for (int kw = 0; kw < K; ++kw) load_vec<CV>(w + static_cast<int64_t>(kh * K + kw) * g.C + c0, wr[kw]);
        // This thread's part of tile pixel q: VC element (q * cbv + cv) * kLanes + lane.
        const VC* src =
            reinterpret_cast<const VC*>(tile) + (((row * S + kh) * IW + col0 * S) * cbv + cv) * kLanes + lane;
#pragma unroll
        for (int i = 0; i < kSpan; ++i) {
          acc_t xv[CV];
          const VC in = src[i * cbv * kLanes];
#pragma unroll
          for (int v = 0; v < CV; ++v) xv[v] = static_cast<acc_t>(in.v[v]);
#pragma unroll
          for (int j = 0; j < kTiledRW; ++j) {
            const int kw = i - j * S;
            if (kw >= 0 && kw < K) {
#pragma unroll
              for (int v = 0; v < CV; ++v) acc[j][v] += xv[v] * wr[kw][v];
            }
          }
        }
      }
      const int oh = oh0 + row;
      if (oh < g.OH) {
        scalar_t* yrow = y + n * g.ysN + c0 + static_cast<int64_t>(oh) * g.ysH;
#pragma unroll
        for (int j = 0; j < kTiledRW; ++j) {
          const int ow = ow0 + col0 + j;
          if (ow < g.OW) store_and_count<kStats>(yrow + static_cast<int64_t>(ow) * g.ysW, acc[j], act, stats);
        }
      }
    }
  }
  if constexpr (kStats) {
    block_merge_write<kTiledMaxThreads>(stats, active, threadIdx.y, blockDim.y, blockDim.x, blockIdx.x, c0, g.C,
                                        part_n, part_mean, part_m2);
  }
}

// The launch of the tiled kernel for one conv, or false when it does not apply (a tile's footprint
// over the shared-memory budget even at one output row, or too many blocks). Host code, shared by
// depthwise_conv2d.cu and the host emulation. `vec` channels per 16-byte vector, C % vec == 0.
// Tile: up to 8 channel vectors (spread evenly over the channel blocks; `lanes` threads each; fewer
// where that gives more threads), 2 strips (8 columns) and as many rows as 256 threads allow,
// halved until the footprint fits kTiledSmemBytes; rows and strips clipped to the output.
// Statistics: R tiles per block, so a partial covers >= 256 outputs and there are at most ~2048
// partials per channel; shape-derived only (deterministic).
struct TiledPlan {
  TiledGeom g;
  unsigned cbv;                // channel vectors per block
  unsigned tx, ty;             // block (tx = cbv * lanes, ty)
  int64_t blocks_x, blocks_y;  // grid
  size_t smem;                 // dynamic shared memory, bytes
};

inline bool plan_tiled(int64_t N, int64_t C, int H, int W, int OH, int OW, int K, int S, int pH, int pW, int vec,
                       bool stats, TiledPlan& plan) {
  const int64_t cvecs = C / vec;
  if (N < 1 || cvecs < 1 || OH < 1 || OW < 1) return false;
  const int64_t lanes = vec / std::min(vec, kTiledCV);
  const int strips = OW > kTiledRW ? 2 : 1;
  const int TW = strips * kTiledRW;
  const auto bytes = [&](int th, int64_t cbv) {
    return static_cast<size_t>((th - 1) * S + K) * ((TW - 1) * S + K) * cbv * 16;
  };
  // Candidates: at most 8, 4, 2, 1 channel vectors per block; the one with the most threads wins
  // (ties: the most channels). A large footprint (stride 2, k5) makes the rows shrink at 8 vectors;
  // fewer vectors keep more rows, hence less halo per output and more threads per SM.
  int64_t cbv = 0;
  int TH = 0;
  unsigned ty = 0;
  for (int64_t cap = kTiledMaxVectors; cap >= 1; cap /= 2) {
    const int64_t c = ceil_div(cvecs, ceil_div(cvecs, cap));
    int ty_max = 1;
    while (ty_max * 2 * c * lanes <= kTiledMaxThreads) ty_max *= 2;
    int th = std::min(OH, std::max(1, ty_max / strips));
    while (th > 1 && bytes(th, c) > kTiledSmemBytes) th = (th + 1) / 2;
    if (bytes(th, c) > kTiledSmemBytes) continue;
    unsigned t = 1;
    while (t < static_cast<unsigned>(th * strips)) t *= 2;
    if (cbv == 0 || c * lanes * t > cbv * lanes * ty) {
      cbv = c;
      TH = th;
      ty = t;
    }
  }
  if (cbv == 0) return false;

  TiledGeom& g = plan.g;
  g.C = C;
  g.H = H;
  g.W = W;
  g.OH = OH;
  g.OW = OW;
  g.pH = pH;
  g.pW = pW;
  g.TH = TH;
  g.TW = TW;
  g.strips = strips;
  g.tiles_h = static_cast<int>(ceil_div(OH, TH));
  g.tiles_w = static_cast<int>(ceil_div(OW, TW));
  g.tiles = N * g.tiles_h * g.tiles_w;
  int64_t R = 1;
  if (stats) R = std::min(g.tiles, std::max(ceil_div(g.tiles, 2048), ceil_div(256, static_cast<int64_t>(TH) * TW)));
  if (R > (int64_t(1) << 30)) return false;
  g.R = static_cast<int>(R);
  plan.cbv = static_cast<unsigned>(cbv);
  plan.tx = static_cast<unsigned>(cbv * lanes);
  plan.ty = ty;
  plan.blocks_x = ceil_div(g.tiles, R);
  plan.blocks_y = ceil_div(cvecs, cbv);
  plan.smem = bytes(TH, cbv);
  return plan.blocks_x <= 2147483647 && plan.blocks_y <= 65535;
}

// One conv for run_tiled_conv (depthwise_tiled.cu): y = act(conv(x, w) + bias), x and y dense
// channels_last with 16-byte aligned vectors (can_vectorize), w_taps (K * K, C) and bias (C,) or
// undefined in the accumulation dtype; part receives the (3, blocks, C) statistics partials.
struct TiledConv {
  const at::Tensor* x;
  at::Tensor* y;
  const at::Tensor* w_taps;
  const at::Tensor* bias;
  at::Tensor* part;  // kStats only
  Act act;
  int64_t N, C;
  int H, W, OH, OW, K, S, pH, pW;
};

// MK_DW_TILED=1 (read once per process) lets run_conv use the tiled kernel: off by default until a
// GPU run has checked and timed it (benchmarks/diag_depthwise.py compares the two).
bool tiled_enabled();

// Runs the conv through the tiled kernel and returns true, or returns false (nothing launched) when
// it does not apply: float64, K not in {3, 5}, S not in {1, 2}, or no plan (plan_tiled).
template <typename scalar_t, bool kStats>
bool run_tiled_conv(const TiledConv& c);

}  // namespace cuda
}  // namespace mobilenet_kernels
