// depthwise_conv2d, CUDA kernels (sm_80+).
//
// Forward: act(conv2d(x, w, b, groups=C)), bias and activation in the epilogue. Stats variant: the
//          conv without bias/activation; the same epilogue feeds the output as stored (rounded to
//          its dtype) to per-thread shifted sums, merged per (tile, channel) into (count, mean, M2)
//          and then over the tiles by a second small kernel, in fixed orders with Chan's formula
//          (chan_stats.cuh, shared with pointwise_conv2d.cu; +-Inf gives torch's mean and variance).
// Backward: grad_input by gathering (stride 1: the forward kernel on grad_output with the filter
//          rotated 180 degrees and padding (k-1)d-p; stride > 1: a gather kernel); grad_weight and
//          grad_bias two-stage: fp32 partials[tile][tap (+bias)][C] from fixed pixel tiles, then a
//          fixed-order sum per (tap, channel). No atomics: results are bitwise deterministic.
// Layouts: channels_last and NCHW, both native. channels_last: a thread owns a vector of channels
//          (16-byte loads when C % VEC == 0, strides and pointers aligned; else one channel per
//          thread); NCHW: a block is one channel, threads walk output columns. Every thread
//          computes kTW output columns of one row, so each weight load serves kTW outputs; for
//          kW in {3, 5, 7}, stride_w == dilation_w == 1 the kTW columns are adjacent and each input
//          vector loaded serves every tap that reads it (row reuse in registers).
// dtypes: float64, float32, float16, bfloat16; accumulation in float (double for float64).
// Indexing: int64 memory offsets; spatial coordinates in int, with H + 2*pad and W + 2*pad checked
//          below 2^30 on the host. The activation is a uniform runtime switch in the epilogue (not a
//          template parameter) to keep the number of kernel instantiations, and build time, down.
// Tiled: with MK_DW_TILED=1, channels_last convs with 16-byte vectors, square K in {3, 5}, equal
//          strides 1 or 2 and dilation 1 (the forward, its statistics and grad_input at stride 1)
//          run the shared-memory tiled kernel of depthwise_tiled.cuh instead (off by default until
//          a GPU run has checked and timed it).
// Limits: without MK_DW_TILED, no shared-memory input tiles (reuse across rows comes from L1/L2);
//          grad_input at stride > 1 tests each tap for stride divisibility (no parity-phase split); the weight
//          gradient loads every tap from L1 (L1-bound for k5/k7); grad_input and grad_weight read
//          grad_output separately; at most 65534 kernel taps. Sums are deterministic for a given
//          shape and vector path (the path depends on C, strides and pointer alignment).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <initializer_list>
#include <limits>
#include <string>
#include <type_traits>

#include "chan_stats.cuh"
#include "depthwise_conv2d.h"
#include "depthwise_tiled.cuh"
#include "mk_cuda.cuh"

namespace mobilenet_kernels {
namespace {

constexpr int kThreads = 256;       // threads per block (at most)
constexpr int kTW = 4;              // output columns per thread and work item
constexpr int kTapsPerBlock = 9;    // weight-gradient taps accumulated in registers by one block
constexpr int kFinishLanes = 8;     // tile lanes per channel in the weight-gradient stage 2
constexpr int64_t kMaxGridX = std::numeric_limits<int32_t>::max();
constexpr int64_t kMaxGridY = 65535;
constexpr int64_t kSpatialLimit = int64_t(1) << 30;

using namespace cuda;  // Vec, Divider, load_vec, recip_ge1, apply_activation (mk_cuda.cuh); chan_stats.cuh

// Geometry of one launch: the kernel reads or writes x (N, C, H, W) and y (N, C, OH, OW) of the
// conv y = conv(x). Strides are in elements, read off the dense tensors.
struct Geom {
  int64_t C;
  int H, W, OH, OW;
  int kH, kW, sH, sW, pH, pW, dH, dW;  // padding may be negative (grad_input as a forward conv)
  int Q;                               // work items per row of the written tensor: ceil(width / kTW)
  int64_t row_items, items;            // Q * rows of one image; N * row_items
  Divider div_row_items, div_q;        // by row_items, by Q
  Divider div_sh, div_sw;              // by sH, by sW (grad_input's gather)
  int64_t xsN, xsC, xsH, xsW;          // x strides
  int64_t ysN, ysC, ysH, ysW;          // y strides
};

// Thread (x, y) of block (bx, by): channel vector (cy0 + by) * blockDim.x + x, work items
// bx * R * blockDim.y + r * blockDim.y + y for r < R. blockDim.y is a power of two (tree reductions).
__device__ __forceinline__ int64_t first_channel(int64_t cy0, int VEC) {
  return ((cy0 + blockIdx.y) * blockDim.x + threadIdx.x) * VEC;
}

// Work item -> (image n, row of the written tensor, column group q < Q), item < g.items.
struct WorkItem {
  int64_t n;
  int row, q;
};

__device__ __forceinline__ WorkItem split_item(const Geom& g, int64_t item) {
  const int64_t n = g.div_row_items.div(item);
  const int64_t rem = item - n * g.row_items;
  const int row = static_cast<int>(g.div_q.div(rem));
  return {n, row, static_cast<int>(rem - static_cast<int64_t>(row) * g.Q)};
}

// ---------------------------------------------------------------------------------------------
// Forward. A work item is (n, oh, owq): output row oh of image n, columns owq + j*Q (K == 0:
// strided, so adjacent threads write adjacent columns) or owq*kTW + j (K > 0: adjacent columns in
// one thread, for row reuse; requires kW == K, sW == dW == 1), j < kTW.

// __launch_bounds__(kThreads, 1): with an explicit minimum of one block, ptxas allocates the
// registers a kernel needs instead of spilling to reach a higher occupancy tier.
template <typename scalar_t, typename acc_t, int VEC, int K, bool kStats>
__global__ void __launch_bounds__(kThreads, 1)
    depthwise_conv2d_fwd_kernel(const scalar_t* __restrict__ x,   // (N, C, H, W)
                                scalar_t* __restrict__ y,         // (N, C, OH, OW)
                                const acc_t* __restrict__ w,      // (kH * kW, C)
                                const acc_t* __restrict__ bias,   // (C,) or null
                                Geom g, Act act, int R, int64_t cy0,
                                acc_t* __restrict__ part_n,       // (tiles, C), kStats only
                                acc_t* __restrict__ part_mean,    // (tiles, C), kStats only
                                acc_t* __restrict__ part_m2) {    // (tiles, C), kStats only
  static_assert(K == 0 || K == 3 || K == 5 || K == 7, "row reuse is specialized for kW in {3, 5, 7}");
  const int64_t c0 = first_channel(cy0, VEC);
  const bool active = c0 < g.C;  // no early return: the stats reduction needs every thread
  ShiftedSums<acc_t, VEC> stats;  // kStats: this thread's outputs, as stored

  if (active) {
    acc_t b[VEC];
#pragma unroll
    for (int v = 0; v < VEC; ++v) b[v] = acc_t(0);
    if (bias != nullptr) load_vec<VEC>(bias + c0, b);
    const int64_t first = static_cast<int64_t>(blockIdx.x) * R * blockDim.y + threadIdx.y;
    for (int r = 0; r < R; ++r) {
      const int64_t item = first + static_cast<int64_t>(r) * blockDim.y;
      if (item >= g.items) break;
      const auto [n, oh, owq] = split_item(g, item);

      acc_t acc[kTW][VEC];
#pragma unroll
      for (int j = 0; j < kTW; ++j) {
#pragma unroll
        for (int v = 0; v < VEC; ++v) acc[j][v] = b[v];
      }
      const scalar_t* xn = x + n * g.xsN + c0 * g.xsC;
      const int ih0 = oh * g.sH - g.pH;
      if constexpr (K == 0) {
        int iw0[kTW];
        bool ok[kTW];
#pragma unroll
        for (int j = 0; j < kTW; ++j) {
          const int ow = owq + j * g.Q;
          ok[j] = ow < g.OW;
          iw0[j] = ow * g.sW - g.pW;
        }
#pragma unroll 1
        for (int kh = 0; kh < g.kH; ++kh) {
          const int ih = ih0 + kh * g.dH;
          if (ih < 0 || ih >= g.H) continue;
          const scalar_t* xrow = xn + static_cast<int64_t>(ih) * g.xsH;
          for (int kw = 0; kw < g.kW; ++kw) {
            acc_t wv[VEC];
            load_vec<VEC>(w + (static_cast<int64_t>(kh) * g.kW + kw) * g.C + c0, wv);
#pragma unroll
            for (int j = 0; j < kTW; ++j) {
              const int iw = iw0[j] + kw * g.dW;
              if (ok[j] && iw >= 0 && iw < g.W) {
                acc_t xv[VEC];
                load_vec<VEC>(xrow + static_cast<int64_t>(iw) * g.xsW, xv);
#pragma unroll
                for (int v = 0; v < VEC; ++v) acc[j][v] += xv[v] * wv[v];
              }
            }
          }
        }
      } else {
        // Output column owq*kTW + j, tap kw reads input column iw_base + j + kw: input column
        // iw_base + i serves the pairs (j, kw = i - j). Columns past the last valid output are
        // still in bounds when loaded, and only feed accumulators that are never stored.
        const int iw_base = owq * kTW - g.pW;
#pragma unroll 1
        for (int kh = 0; kh < g.kH; ++kh) {
          const int ih = ih0 + kh * g.dH;
          if (ih < 0 || ih >= g.H) continue;
          const scalar_t* xrow = xn + static_cast<int64_t>(ih) * g.xsH;
          acc_t wr[K][VEC];
#pragma unroll
          for (int kw = 0; kw < K; ++kw) load_vec<VEC>(w + (static_cast<int64_t>(kh) * K + kw) * g.C + c0, wr[kw]);
#pragma unroll
          for (int i = 0; i < kTW + K - 1; ++i) {
            const int iw = iw_base + i;
            if (iw >= 0 && iw < g.W) {
              acc_t xv[VEC];
              load_vec<VEC>(xrow + static_cast<int64_t>(iw) * g.xsW, xv);
#pragma unroll
              for (int j = 0; j < kTW; ++j) {
                const int kw = i - j;
                if (kw >= 0 && kw < K) {
#pragma unroll
                  for (int v = 0; v < VEC; ++v) acc[j][v] += xv[v] * wr[kw][v];
                }
              }
            }
          }
        }
      }

      scalar_t* yrow = y + n * g.ysN + c0 * g.ysC + static_cast<int64_t>(oh) * g.ysH;
#pragma unroll
      for (int j = 0; j < kTW; ++j) {
        const int ow = K == 0 ? owq + j * g.Q : owq * kTW + j;
        if (ow < g.OW) store_and_count<kStats>(yrow + static_cast<int64_t>(ow) * g.ysW, acc[j], act, stats);
      }
    }
  }
  if constexpr (kStats) {
    block_merge_write<kThreads>(stats, active, threadIdx.y, blockDim.y, blockDim.x, blockIdx.x, c0, g.C, part_n,
                                part_mean, part_m2);
  }
}

// ---------------------------------------------------------------------------------------------
// grad_input for stride > 1, by gathering: a work item is (n, ih, iwq), input row ih, columns
// iwq + j*Q (j < kTW). grad_in[ih, iw] = sum over taps with oh*sH = ih + pH - kh*dH and
// ow*sW = iw + pW - kw*dW, 0 <= oh < OH, 0 <= ow < OW, of grad_out[oh, ow] * w[kh, kw].
template <typename scalar_t, typename acc_t, int VEC>
__global__ void __launch_bounds__(kThreads, 1)
    depthwise_conv2d_bwd_input_kernel(const scalar_t* __restrict__ gy,  // (N, C, OH, OW), y strides
                                      scalar_t* __restrict__ gx,        // (N, C, H, W), x strides
                                      const acc_t* __restrict__ w,      // (kH * kW, C)
                                      Geom g, int R, int64_t cy0) {
  const int64_t c0 = first_channel(cy0, VEC);
  if (c0 >= g.C) return;  // no block-level synchronization in this kernel
  const int64_t first = static_cast<int64_t>(blockIdx.x) * R * blockDim.y + threadIdx.y;
  for (int r = 0; r < R; ++r) {
    const int64_t item = first + static_cast<int64_t>(r) * blockDim.y;
    if (item >= g.items) break;
    const auto [n, ih, iwq] = split_item(g, item);

    int iw[kTW];
    bool ok[kTW];
#pragma unroll
    for (int j = 0; j < kTW; ++j) {
      iw[j] = iwq + j * g.Q;
      ok[j] = iw[j] < g.W;
    }
    acc_t acc[kTW][VEC];
#pragma unroll
    for (int j = 0; j < kTW; ++j) {
#pragma unroll
      for (int v = 0; v < VEC; ++v) acc[j][v] = acc_t(0);
    }
    const scalar_t* gyn = gy + n * g.ysN + c0 * g.ysC;
#pragma unroll 1
    for (int kh = 0; kh < g.kH; ++kh) {
      const int t = ih + g.pH - kh * g.dH;
      if (t < 0) continue;
      const int oh = static_cast<int>(g.div_sh.div(t));
      if (oh * g.sH != t || oh >= g.OH) continue;
      const scalar_t* gyrow = gyn + static_cast<int64_t>(oh) * g.ysH;
      for (int kw = 0; kw < g.kW; ++kw) {
        acc_t wv[VEC];
        load_vec<VEC>(w + (static_cast<int64_t>(kh) * g.kW + kw) * g.C + c0, wv);
#pragma unroll
        for (int j = 0; j < kTW; ++j) {
          const int u = iw[j] + g.pW - kw * g.dW;
          const int ow = u >= 0 ? static_cast<int>(g.div_sw.div(u)) : -1;
          if (ok[j] && u >= 0 && ow * g.sW == u && ow < g.OW) {
            acc_t gv[VEC];
            load_vec<VEC>(gyrow + static_cast<int64_t>(ow) * g.ysW, gv);
#pragma unroll
            for (int v = 0; v < VEC; ++v) acc[j][v] += gv[v] * wv[v];
          }
        }
      }
    }
    scalar_t* gxrow = gx + n * g.xsN + c0 * g.xsC + static_cast<int64_t>(ih) * g.xsH;
#pragma unroll
    for (int j = 0; j < kTW; ++j) {
      if (ok[j]) {
        Vec<scalar_t, VEC> o;
#pragma unroll
        for (int v = 0; v < VEC; ++v) o.v[v] = static_cast<scalar_t>(acc[j][v]);
        *reinterpret_cast<Vec<scalar_t, VEC>*>(gxrow + static_cast<int64_t>(iw[j]) * g.xsW) = o;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// grad_weight / grad_bias, stage 1. blockIdx.x = tile * chunks + chunk: the tile is output pixels
// [tile * tile_px, +tile_px) of the flattened (n, oh, ow), the chunk is taps [chunk * 9, +9) (chunk
// 0 also sums grad_out for the bias). Adjacent blocks share a tile, so the grad_out re-reads of
// the other chunks hit L2. Each thread walks pixels y, y + blockDim.y, ...; the block then sums
// its threads per row with a fixed tree and writes part[tile][row][c] (rows: taps, then bias).

// Sums `val` over threadIdx.y (fixed tree in `buf`); y == 0 threads with `store` write the sum to
// out[offset + v], v < VEC.
template <typename acc_t, int VEC>
__device__ void block_sum_store(const acc_t (&val)[VEC], acc_t* buf, bool store, acc_t* __restrict__ out,
                                int64_t offset) {
  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
#pragma unroll
  for (int v = 0; v < VEC; ++v) buf[tid * VEC + v] = val[v];
  __syncthreads();
  for (int s = blockDim.y / 2; s > 0; s /= 2) {
    if (threadIdx.y < s) {
      const int o = tid + s * blockDim.x;
#pragma unroll
      for (int v = 0; v < VEC; ++v) buf[tid * VEC + v] += buf[o * VEC + v];
    }
    __syncthreads();
  }
  if (threadIdx.y == 0 && store) {
#pragma unroll
    for (int v = 0; v < VEC; ++v) out[offset + v] = buf[tid * VEC + v];
  }
  __syncthreads();  // buf is rewritten by the next call
}

template <typename scalar_t, typename acc_t, int VEC>
__global__ void __launch_bounds__(kThreads, 2)
    depthwise_conv2d_bwd_weight_kernel(const scalar_t* __restrict__ gy,  // (N, C, OH, OW), y strides
                                       const scalar_t* __restrict__ x,   // (N, C, H, W), x strides
                                       Geom g, Divider div_ohw, Divider div_ow, int64_t pixels,
                                       int64_t tile_px, int chunks,
                                       int taps,      // kH * kW, or 0 when grad_weight is not wanted
                                       bool do_bias, int rows, int64_t cy0,
                                       acc_t* __restrict__ part) {  // (tiles, rows, C)
  __shared__ acc_t buf[kThreads * VEC];
  const int64_t c0 = first_channel(cy0, VEC);
  const bool active = c0 < g.C;  // no early return: block_sum_store needs every thread
  const int64_t tile = blockIdx.x / chunks;
  const int chunk = static_cast<int>(blockIdx.x - tile * chunks);
  const int tap0 = chunk * kTapsPerBlock;
  const int left = taps - tap0;
  const int ntaps = left <= 0 ? 0 : (left < kTapsPerBlock ? left : kTapsPerBlock);  // uniform over the block
  const bool bias_here = do_bias && chunk == 0;                          // uniform over the block

  int offh[kTapsPerBlock], offw[kTapsPerBlock];
#pragma unroll
  for (int t = 0; t < kTapsPerBlock; ++t) {
    const int tap = t < ntaps ? tap0 + t : 0;
    const int kh = tap / g.kW;
    offh[t] = kh * g.dH - g.pH;
    offw[t] = (tap - kh * g.kW) * g.dW - g.pW;
  }
  acc_t acc[kTapsPerBlock][VEC], accb[VEC];
#pragma unroll
  for (int v = 0; v < VEC; ++v) {
    accb[v] = acc_t(0);
#pragma unroll
    for (int t = 0; t < kTapsPerBlock; ++t) acc[t][v] = acc_t(0);
  }

  if (active) {
    const int64_t p_end = pixels < (tile + 1) * tile_px ? pixels : (tile + 1) * tile_px;
    for (int64_t p = tile * tile_px + threadIdx.y; p < p_end; p += blockDim.y) {
      const int64_t n = div_ohw.div(p);
      const int64_t rem = p - n * div_ohw.d;
      const int oh = static_cast<int>(div_ow.div(rem));
      const int ow = static_cast<int>(rem - static_cast<int64_t>(oh) * g.OW);
      acc_t gv[VEC];
      load_vec<VEC>(gy + n * g.ysN + c0 * g.ysC + static_cast<int64_t>(oh) * g.ysH + static_cast<int64_t>(ow) * g.ysW,
                    gv);
      if (bias_here) {
#pragma unroll
        for (int v = 0; v < VEC; ++v) accb[v] += gv[v];
      }
      const scalar_t* xn = x + n * g.xsN + c0 * g.xsC;
      const int ihb = oh * g.sH, iwb = ow * g.sW;
#pragma unroll
      for (int t = 0; t < kTapsPerBlock; ++t) {
        const int ih = ihb + offh[t], iw = iwb + offw[t];
        if (t < ntaps && ih >= 0 && ih < g.H && iw >= 0 && iw < g.W) {
          acc_t xv[VEC];
          load_vec<VEC>(xn + static_cast<int64_t>(ih) * g.xsH + static_cast<int64_t>(iw) * g.xsW, xv);
#pragma unroll
          for (int v = 0; v < VEC; ++v) acc[t][v] += gv[v] * xv[v];
        }
      }
    }
  }

  // Row r of this tile, channel c0: part[(tile * rows + r) * C + c0] (written by active threads only).
  const int64_t row0 = tile * rows;
#pragma unroll
  for (int t = 0; t < kTapsPerBlock; ++t) {
    if (t < ntaps) block_sum_store<acc_t, VEC>(acc[t], buf, active, part, (row0 + tap0 + t) * g.C + c0);
  }
  if (bias_here) block_sum_store<acc_t, VEC>(accb, buf, active, part, (row0 + taps) * g.C + c0);
}

// Stage 2: block = (row, 32 channels); lane y sums tiles y, y + 8, ... in order, then a fixed tree
// over the lanes, in double. Row r < taps goes to grad_weight (C, taps), row taps to grad_bias.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(32 * kFinishLanes)
    depthwise_conv2d_bwd_weight_finish_kernel(const acc_t* __restrict__ part,  // (tiles, rows, C)
                                              int64_t tiles, int rows, int taps, int64_t C,
                                              unsigned cblocks,                    // ceil(C / 32)
                                              scalar_t* __restrict__ grad_weight,  // (C, taps) or null
                                              scalar_t* __restrict__ grad_bias) {  // (C,) or null
  __shared__ double s[kFinishLanes][32];
  const int row = static_cast<int>(blockIdx.x / cblocks);
  const int64_t c = static_cast<int64_t>(blockIdx.x - row * cblocks) * 32 + threadIdx.x;
  double sum = 0;
  if (c < C) {
    // Lane y adds tiles y, y + 8, y + 16, ... in that order; four tiles' loads are issued ahead.
    int64_t t = threadIdx.y;
    for (; t + 3 * kFinishLanes < tiles; t += 4 * kFinishLanes) {
      double b[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) b[k] = part[((t + k * kFinishLanes) * rows + row) * C + c];
#pragma unroll
      for (int k = 0; k < 4; ++k) sum += b[k];
    }
#pragma unroll 1
    for (; t < tiles; t += kFinishLanes) sum += part[(t * rows + row) * C + c];
  }
  s[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  for (int k = kFinishLanes / 2; k > 0; k /= 2) {
    if (threadIdx.y < k) s[threadIdx.y][threadIdx.x] += s[threadIdx.y + k][threadIdx.x];
    __syncthreads();
  }
  if (threadIdx.y == 0 && c < C) {
    const scalar_t value = static_cast<scalar_t>(s[0][threadIdx.x]);
    if (row < taps) {
      grad_weight[c * taps + row] = value;
    } else {
      grad_bias[c] = value;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Host side.

// H + 2*pad < 2^30 bounds every spatial coordinate the kernels form in int (strides and dilations
// that matter are bounded by it too; the others are normalized to 1 in make_geom).
void check_geometry(const DepthwiseArgs& a) {
  TORCH_CHECK_VALUE(a.H + 2 * a.pH < kSpatialLimit && a.W + 2 * a.pW < kSpatialLimit,
                    "depthwise_conv2d (CUDA): spatial size plus padding must be below 2^30, got (", a.H, ", ", a.W,
                    ") with padding (", a.pH, ", ", a.pW, ")");
  TORCH_CHECK_VALUE(a.kH * a.kW < kMaxGridY, "depthwise_conv2d (CUDA): at most ", kMaxGridY - 1,
                    " kernel taps are supported, got ", a.kH, "x", a.kW);
}

// The forward conv x -> y of `a`; Q and items are set by the launcher.
Geom make_geom(const DepthwiseArgs& a, const at::Tensor& x, const at::Tensor& y) {
  Geom g{};
  g.C = a.C;
  g.H = static_cast<int>(a.H);
  g.W = static_cast<int>(a.W);
  g.OH = static_cast<int>(a.OH);
  g.OW = static_cast<int>(a.OW);
  g.kH = static_cast<int>(a.kH);
  g.kW = static_cast<int>(a.kW);
  // A stride with one output row (column), or a dilation with one tap, never multiplies a nonzero
  // index: use 1, which keeps it in int range and lets such convs take the row-reuse kernels.
  g.sH = a.OH == 1 ? 1 : static_cast<int>(a.sH);
  g.sW = a.OW == 1 ? 1 : static_cast<int>(a.sW);
  g.dH = a.kH == 1 ? 1 : static_cast<int>(a.dH);
  g.dW = a.kW == 1 ? 1 : static_cast<int>(a.dW);
  g.pH = static_cast<int>(a.pH);
  g.pW = static_cast<int>(a.pW);
  g.xsN = x.stride(0);
  g.xsC = x.stride(1);
  g.xsH = x.stride(2);
  g.xsW = x.stride(3);
  g.ysN = y.stride(0);
  g.ysC = y.stride(1);
  g.ysH = y.stride(2);
  g.ysW = y.stride(3);
  g.div_sh = make_divider(g.sH);
  g.div_sw = make_divider(g.sW);
  return g;
}

void set_items(Geom& g, int64_t N, int rows, int cols) {
  g.Q = static_cast<int>(ceil_div(cols, kTW));
  g.row_items = static_cast<int64_t>(rows) * g.Q;
  g.items = N * g.row_items;
  g.div_row_items = make_divider(std::max<int64_t>(1, g.row_items));
  g.div_q = make_divider(std::max(1, g.Q));
}

// channels_last: x walks channel vectors (at most 32, spread evenly over the chunks of C), y walks
// work items; NCHW: one channel per block, 256 threads along the items (weight reads broadcast).
dim3 block_shape(bool channels_last, int64_t cvecs) {
  TORCH_INTERNAL_ASSERT(cvecs >= 1);
  const int64_t tx = channels_last ? ceil_div(cvecs, ceil_div(cvecs, 32)) : 1;
  int64_t ty = 1;
  while (ty * 2 * tx <= kThreads) ty *= 2;
  return dim3(static_cast<unsigned>(tx), static_cast<unsigned>(ty));
}

int64_t channel_chunks(bool channels_last, int64_t C, int vec, const dim3& block) {
  return channels_last ? ceil_div(C / vec, block.x) : C;
}

// MK_DW_ROW_REUSE=0 (read once per process) sends stride-1 convs to the generic kernel instead of
// the row-reuse one: a switch for benchmarks/diag_depthwise.py to compare the two on a GPU.
bool row_reuse_enabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("MK_DW_ROW_REUSE");
    return v == nullptr || std::string(v) != "0";
  }();
  return enabled;
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// 16-byte channel vectors need: channels_last, C % VEC == 0, unit channel stride, every other
// stride a multiple of VEC, and 16-byte aligned base pointers.
template <typename scalar_t>
bool can_vectorize(bool channels_last, int64_t C, std::initializer_list<const at::Tensor*> tensors) {
  constexpr int kVec = 16 / sizeof(scalar_t);
  if (!channels_last || C % kVec != 0) return false;
  for (const at::Tensor* t : tensors) {
    if (t->stride(1) != 1 || t->stride(0) % kVec != 0 || t->stride(2) % kVec != 0 || t->stride(3) % kVec != 0 ||
        !aligned16(t->data_ptr())) {
      return false;
    }
  }
  return true;
}

// (C, kH, kW) -> a fresh (kH * kW, C) copy: one tap's channels are contiguous, so a thread's
// weights for a tap are one aligned vector (the allocator aligns fresh blocks to 512 bytes).
at::Tensor taps_major(const at::Tensor& w) {
  const int64_t taps = w.size(1) * w.size(2);
  at::Tensor t = at::empty({taps, w.size(0)}, w.options());
  t.copy_(w.permute({1, 2, 0}).reshape({taps, w.size(0)}));
  TORCH_INTERNAL_ASSERT(reinterpret_cast<uintptr_t>(t.data_ptr()) % 32 == 0);
  return t;
}

at::Tensor fresh_copy(const at::Tensor& t) {
  at::Tensor c = at::empty_like(t, at::MemoryFormat::Contiguous);
  c.copy_(t);
  TORCH_INTERNAL_ASSERT(reinterpret_cast<uintptr_t>(c.data_ptr()) % 32 == 0);
  return c;
}

template <typename scalar_t>
struct ConvLaunch {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x;
  scalar_t* y;
  const acc_t* w;     // (kH * kW, C), taps_major
  const acc_t* bias;  // (C,) or null
  Act act;
  acc_t *part_n, *part_mean, *part_m2;  // stats partials (tiles, C)
  dim3 block;
  int64_t tiles, chunks;
  int R;
};

template <typename scalar_t, int VEC, int K, bool kStats>
void launch_fwd(const ConvLaunch<scalar_t>& L, const Geom& g) {
  const auto stream = at::cuda::getCurrentCUDAStream();
  for (int64_t cy0 = 0; cy0 < L.chunks; cy0 += kMaxGridY) {
    const dim3 grid(static_cast<unsigned>(L.tiles), static_cast<unsigned>(std::min(kMaxGridY, L.chunks - cy0)));
    depthwise_conv2d_fwd_kernel<scalar_t, at::opmath_type<scalar_t>, VEC, K, kStats><<<grid, L.block, 0, stream>>>(
        L.x, L.y, L.w, L.bias, g, L.act, L.R, cy0, L.part_n, L.part_mean, L.part_m2);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <typename scalar_t, int VEC, bool kStats>
void launch_fwd_k(const ConvLaunch<scalar_t>& L, const Geom& g, int K) {
  if constexpr (!std::is_same_v<scalar_t, double>) {
    switch (K) {
      case 3:
        return launch_fwd<scalar_t, VEC, 3, kStats>(L, g);
      case 5:
        return launch_fwd<scalar_t, VEC, 5, kStats>(L, g);
      case 7:
        return launch_fwd<scalar_t, VEC, 7, kStats>(L, g);
      default:
        break;
    }
  }
  launch_fwd<scalar_t, VEC, 0, kStats>(L, g);
}

// Runs the conv x -> y described by g (x, y: dense tensors of N images). With kStats, returns the
// (3, tiles, C) partials (count, mean, M2); else an undefined tensor.
template <typename scalar_t, bool kStats>
at::Tensor run_conv(const at::Tensor& x, at::Tensor& y, const at::Tensor& w_taps, const at::Tensor& bias, Geom g,
                    int64_t N, bool channels_last, Act act) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kVec = 16 / sizeof(scalar_t);
  set_items(g, N, g.OH, g.OW);
  const int vec = can_vectorize<scalar_t>(channels_last, g.C, {&x, &y}) ? kVec : 1;
  if (vec == kVec && kVec > 1 && tiled_enabled() && g.kH == g.kW && g.dH == 1 && g.dW == 1 && g.sH == g.sW) {
    at::Tensor part;
    const TiledConv c{&x, &y, &w_taps, &bias, &part, act, N, g.C, g.H, g.W, g.OH, g.OW, g.kH, g.sH, g.pH, g.pW};
    if (run_tiled_conv<scalar_t, kStats>(c)) return part;
  }
  ConvLaunch<scalar_t> L{};
  L.x = x.data_ptr<scalar_t>();
  L.y = y.data_ptr<scalar_t>();
  L.w = w_taps.data_ptr<acc_t>();
  L.bias = bias.defined() ? bias.data_ptr<acc_t>() : nullptr;
  L.act = act;
  L.block = block_shape(channels_last, g.C / vec);
  L.chunks = channel_chunks(channels_last, g.C, vec, L.block);
  const int64_t ty = L.block.y;
  // Stats tiles hold >= 256 outputs per channel, and at most ~2048 tiles: partials stay ~1% of the
  // output and stage 2 short. Plain forward: one item per thread. Both depend on the shape only.
  int64_t R = kStats ? std::max(ceil_div(g.items, ty * 2048), ceil_div(256, ty * kTW)) : 1;
  R = std::min(R, ceil_div(g.items, ty));
  R = std::max(R, ceil_div(g.items, ty * kMaxGridX));
  TORCH_CHECK(R <= std::numeric_limits<int>::max(), "depthwise_conv2d (CUDA): tensor too large");
  L.R = static_cast<int>(R);
  L.tiles = ceil_div(g.items, ty * R);
  at::Tensor part;
  if constexpr (kStats) {
    part = at::empty({3, L.tiles, g.C}, x.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    L.part_n = part[0].data_ptr<acc_t>();
    L.part_mean = part[1].data_ptr<acc_t>();
    L.part_m2 = part[2].data_ptr<acc_t>();
  }
  // Row reuse needs adjacent columns per thread; with channels_last that spreads a warp's loads
  // over several pixels, which only costs nothing when one pixel's channels fill a 128-byte line.
  int K = 0;
  if (row_reuse_enabled() && g.sW == 1 && g.dW == 1 && (g.kW == 3 || g.kW == 5 || g.kW == 7) &&
      (!channels_last || g.C * static_cast<int64_t>(sizeof(scalar_t)) >= 128)) {
    K = g.kW;
  }
  if (vec == kVec && kVec > 1) {
    launch_fwd_k<scalar_t, kVec, kStats>(L, g, K);
  } else {
    launch_fwd_k<scalar_t, 1, kStats>(L, g, K);
  }
  return part;
}

template <typename scalar_t, int VEC>
void launch_bwd_input(const at::Tensor& gy, at::Tensor& gx, const at::Tensor& w_taps, Geom g, int64_t N,
                      bool channels_last) {
  using acc_t = at::opmath_type<scalar_t>;
  set_items(g, N, g.H, g.W);
  const dim3 block = block_shape(channels_last, g.C / VEC);
  const int64_t chunks = channel_chunks(channels_last, g.C, VEC, block);
  const int64_t R = std::max<int64_t>(1, ceil_div(g.items, static_cast<int64_t>(block.y) * kMaxGridX));
  const int64_t tiles = ceil_div(g.items, block.y * R);
  const auto stream = at::cuda::getCurrentCUDAStream();
  for (int64_t cy0 = 0; cy0 < chunks; cy0 += kMaxGridY) {
    const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(std::min(kMaxGridY, chunks - cy0)));
    depthwise_conv2d_bwd_input_kernel<scalar_t, acc_t, VEC><<<grid, block, 0, stream>>>(
        gy.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(), w_taps.data_ptr<acc_t>(), g, static_cast<int>(R), cy0);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <typename scalar_t>
void run_bwd_input(const DepthwiseArgs& a, const at::Tensor& gy, at::Tensor& gx) {
  constexpr int kVec = 16 / sizeof(scalar_t);
  const bool vec = can_vectorize<scalar_t>(a.channels_last(), a.C, {&gy, &gx});
  const Geom fg = make_geom(a, a.input, gy);
  if (fg.sH == 1 && fg.sW == 1) {
    // grad_in = conv(grad_out, w rotated by 180 degrees, stride 1, padding (k-1)d - p, dilation d):
    // output row ih, tap kh' = kH-1-kh reads grad_out row ih - ((kH-1)dH - pH) + kh'dH = ih + pH - kh*dH.
    Geom g = fg;
    g.H = fg.OH;
    g.W = fg.OW;
    g.OH = fg.H;
    g.OW = fg.W;
    g.pH = (fg.kH - 1) * fg.dH - fg.pH;
    g.pW = (fg.kW - 1) * fg.dW - fg.pW;
    std::swap(g.xsN, g.ysN);
    std::swap(g.xsC, g.ysC);
    std::swap(g.xsH, g.ysH);
    std::swap(g.xsW, g.ysW);
    run_conv<scalar_t, false>(gy, gx, taps_major(a.weight.flip({1, 2})), at::Tensor(), g, a.N, a.channels_last(),
                              Act::kIdentity);
  } else {
    const at::Tensor w = taps_major(a.weight);
    const Geom g = make_geom(a, gx, gy);
    if (vec && kVec > 1) {
      launch_bwd_input<scalar_t, kVec>(gy, gx, w, g, a.N, a.channels_last());
    } else {
      launch_bwd_input<scalar_t, 1>(gy, gx, w, g, a.N, a.channels_last());
    }
  }
}

template <typename scalar_t, int VEC>
void launch_bwd_weight(const DepthwiseArgs& a, const at::Tensor& gy, at::Tensor* grad_weight, at::Tensor* grad_bias) {
  using acc_t = at::opmath_type<scalar_t>;
  const Geom g = make_geom(a, a.input, gy);
  const int taps = grad_weight != nullptr ? static_cast<int>(a.kH * a.kW) : 0;
  const bool do_bias = grad_bias != nullptr;
  const int rows = taps + (do_bias ? 1 : 0);
  const int64_t pixels = a.N * a.OH * a.OW;
  // At most 1024 tiles; a tile holds at least 16 pixels per partial row, so partials stay <= ~6% of
  // grad_out. Shape-derived only.
  const int64_t tile_px = std::max<int64_t>({256, 16 * static_cast<int64_t>(rows), ceil_div(pixels, 1024)});
  const int64_t tiles = ceil_div(pixels, tile_px);
  const int chunks = taps > 0 ? static_cast<int>(ceil_div(taps, kTapsPerBlock)) : 1;
  TORCH_CHECK(tiles * chunks <= kMaxGridX, "depthwise_conv2d_backward (CUDA): too many weight-gradient blocks");
  const dim3 block = block_shape(a.channels_last(), a.C / VEC);
  const int64_t cchunks = channel_chunks(a.channels_last(), a.C, VEC, block);
  at::Tensor part = at::empty({tiles, rows, a.C}, a.input.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  const auto stream = at::cuda::getCurrentCUDAStream();
  for (int64_t cy0 = 0; cy0 < cchunks; cy0 += kMaxGridY) {
    const dim3 grid(static_cast<unsigned>(tiles * chunks), static_cast<unsigned>(std::min(kMaxGridY, cchunks - cy0)));
    depthwise_conv2d_bwd_weight_kernel<scalar_t, acc_t, VEC><<<grid, block, 0, stream>>>(
        gy.data_ptr<scalar_t>(), a.input.data_ptr<scalar_t>(), g, make_divider(a.OH * a.OW), make_divider(a.OW),
        pixels, tile_px, chunks, taps, do_bias, rows, cy0,
        part.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const int64_t fblocks = ceil_div(a.C, 32) * rows;
  TORCH_CHECK(fblocks <= kMaxGridX, "depthwise_conv2d_backward (CUDA): too many channels");
  depthwise_conv2d_bwd_weight_finish_kernel<scalar_t, acc_t>
      <<<static_cast<unsigned>(fblocks), dim3(32, kFinishLanes), 0, stream>>>(
          part.data_ptr<acc_t>(), tiles, rows, taps, a.C, static_cast<unsigned>(ceil_div(a.C, 32)),
          grad_weight != nullptr ? grad_weight->data_ptr<scalar_t>() : nullptr,
          grad_bias != nullptr ? grad_bias->data_ptr<scalar_t>() : nullptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor depthwise_conv2d_cuda(const at::Tensor& input, const at::Tensor& weight,
                                 const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation, c10::string_view activation) {
  check_cuda(input);
  const c10::cuda::CUDAGuard guard(input.device());
  const DepthwiseArgs a = prepare_depthwise(input, weight, bias, stride, padding, dilation, std::string(activation));
  check_geometry(a);
  at::Tensor out = at::empty(a.output_sizes(), input.options().memory_format(a.format));
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "depthwise_conv2d_cuda", [&] {
    const at::Tensor b = a.bias.defined() ? fresh_copy(a.bias) : at::Tensor();
    run_conv<scalar_t, false>(a.input, out, taps_major(a.weight), b, make_geom(a, a.input, out), a.N,
                              a.channels_last(), a.act);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> depthwise_conv2d_stats_cuda(const at::Tensor& input,
                                                                           const at::Tensor& weight,
                                                                           at::IntArrayRef stride,
                                                                           at::IntArrayRef padding,
                                                                           at::IntArrayRef dilation) {
  check_cuda(input);
  const c10::cuda::CUDAGuard guard(input.device());
  const DepthwiseArgs a = prepare_depthwise(input, weight, c10::nullopt, stride, padding, dilation);
  check_stats_count(a);
  check_geometry(a);
  const auto acc_opts = input.options().dtype(acc_type_for(input.scalar_type()));
  at::Tensor out = at::empty(a.output_sizes(), input.options().memory_format(a.format));
  at::Tensor mean = at::zeros({a.C}, acc_opts);
  at::Tensor var = at::zeros({a.C}, acc_opts);
  if (out.numel() == 0) return {out, mean, var};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "depthwise_conv2d_stats_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor part = run_conv<scalar_t, true>(a.input, out, taps_major(a.weight), at::Tensor(),
                                                     make_geom(a, a.input, out), a.N, a.channels_last(),
                                                     Act::kIdentity);
    launch_stats_finish<acc_t>(part[0].data_ptr<acc_t>(), part[1].data_ptr<acc_t>(), part[2].data_ptr<acc_t>(),
                               part.size(1), a.C, mean.data_ptr<acc_t>(), var.data_ptr<acc_t>(),
                               at::cuda::getCurrentCUDAStream(), "depthwise_conv2d_stats");
  });
  return {out, mean, var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> depthwise_conv2d_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, std::array<bool, 3> output_mask) {
  check_cuda(input);
  const c10::cuda::CUDAGuard guard(input.device());
  const DepthwiseArgs a = prepare_depthwise(input, weight, c10::nullopt, stride, padding, dilation);
  const at::Tensor gy = prepare_depthwise_grad_output(grad_output, a, input);
  check_geometry(a);
  const auto empty = [&] { return at::empty({0}, input.options()); };  // one per masked output: no aliasing
  at::Tensor grad_input = output_mask[0] ? at::empty(input.sizes(), input.options().memory_format(a.format)) : empty();
  at::Tensor grad_weight = output_mask[1] ? at::empty({a.C, 1, a.kH, a.kW}, weight.options()) : empty();
  at::Tensor grad_bias = output_mask[2] ? at::empty({a.C}, input.options()) : empty();
  const bool reduce = (output_mask[1] || output_mask[2]) && a.C > 0;
  if (reduce && a.N * a.OH * a.OW == 0) {  // an empty batch: the sums are zero
    if (output_mask[1]) grad_weight.zero_();
    if (output_mask[2]) grad_bias.zero_();
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "depthwise_conv2d_backward_cuda", [&] {
    constexpr int kVec = 16 / sizeof(scalar_t);
    if (output_mask[0] && grad_input.numel() > 0) run_bwd_input<scalar_t>(a, gy, grad_input);
    if (reduce && a.N * a.OH * a.OW > 0) {
      at::Tensor* gw = output_mask[1] ? &grad_weight : nullptr;
      at::Tensor* gb = output_mask[2] ? &grad_bias : nullptr;
      if (kVec > 1 && can_vectorize<scalar_t>(a.channels_last(), a.C, {&a.input, &gy})) {
        launch_bwd_weight<scalar_t, kVec>(a, gy, gw, gb);
      } else {
        launch_bwd_weight<scalar_t, 1>(a, gy, gw, gb);
      }
    }
  });
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(mobilenet_kernels, CUDA, m) {
  m.impl("depthwise_conv2d", &depthwise_conv2d_cuda);
  m.impl("depthwise_conv2d_backward", &depthwise_conv2d_backward_cuda);
  m.impl("depthwise_conv2d_stats", &depthwise_conv2d_stats_cuda);
}

}  // namespace mobilenet_kernels
