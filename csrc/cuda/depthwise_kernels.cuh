// The default CUDA depthwise_conv2d kernels (forward with and without statistics, grad_input,
// grad_weight / grad_bias) and the pure host-side planning that decides their launches; the entry
// points, dispatch and launches are in depthwise_conv2d.cu (see its header comment for the design).
// This header has no kernel launch and no ATen CUDA include, so python_tests/cuda_emulation
// compiles it with g++ (-DMK_CUDA_EMULATION, cuda_shim/ first on the include path) and runs the
// kernels on the host, after the same planning (dw_default_host.cpp).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <type_traits>

#include "chan_stats.cuh"
#include "depthwise_conv2d.h"
#include "mk_cuda.cuh"

namespace mobilenet_kernels {
namespace cuda {
namespace dw {


constexpr int kThreads = 256;       // threads per block (at most)
constexpr int kTW = 4;              // output columns per thread and work item
constexpr int kTapsPerBlock = 9;    // weight-gradient taps accumulated in registers by one block
constexpr int kFinishLanes = 8;     // tile lanes per channel in the weight-gradient stage 2
constexpr int64_t kMaxGridX = std::numeric_limits<int32_t>::max();
constexpr int64_t kMaxGridY = 65535;


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
// its threads per row with a fixed tree (block_sum_store, mk_cuda.cuh) and writes
// part[tile][row][c] (rows: taps, then bias).
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
// Host side: geometry and launch planning (plain ATen, shared with the host emulation).

// The forward conv x -> y of `a`; Q and items are set by the launcher.
inline Geom make_geom(const DepthwiseArgs& a, const at::Tensor& x, const at::Tensor& y) {
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

inline void set_items(Geom& g, int64_t N, int rows, int cols) {
  g.Q = static_cast<int>(ceil_div(cols, kTW));
  g.row_items = static_cast<int64_t>(rows) * g.Q;
  g.items = N * g.row_items;
  g.div_row_items = make_divider(std::max<int64_t>(1, g.row_items));
  g.div_q = make_divider(std::max(1, g.Q));
}

// channels_last: x walks channel vectors (at most 32, spread evenly over the chunks of C), y walks
// work items; NCHW: one channel per block, 256 threads along the items (weight reads broadcast).
inline dim3 block_shape(bool channels_last, int64_t cvecs) {
  TORCH_INTERNAL_ASSERT(cvecs >= 1);
  const int64_t tx = channels_last ? even_lanes(cvecs, 32) : 1;
  return dim3(static_cast<unsigned>(tx), static_cast<unsigned>(pow2_beside(tx, kThreads)));
}

inline int64_t channel_chunks(bool channels_last, int64_t C, int vec, const dim3& block) {
  return channels_last ? ceil_div(C / vec, block.x) : C;
}

// 16-byte channel vectors need: channels_last, C % VEC == 0, unit channel stride, every other
// stride a multiple of VEC, and 16-byte aligned base pointers.
template <typename scalar_t>
inline bool can_vectorize(bool channels_last, int64_t C, std::initializer_list<const at::Tensor*> tensors) {
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
inline at::Tensor taps_major(const at::Tensor& w) {
  const int64_t taps = w.size(1) * w.size(2);
  at::Tensor t = at::empty({taps, w.size(0)}, w.options());
  t.copy_(w.permute({1, 2, 0}).reshape({taps, w.size(0)}));
  TORCH_INTERNAL_ASSERT(reinterpret_cast<uintptr_t>(t.data_ptr()) % 32 == 0);
  return t;
}

inline at::Tensor fresh_copy(const at::Tensor& t) {
  at::Tensor c = at::empty_like(t, at::MemoryFormat::Contiguous);
  c.copy_(t);
  TORCH_INTERNAL_ASSERT(reinterpret_cast<uintptr_t>(c.data_ptr()) % 32 == 0);
  return c;
}


// The launch of the forward kernel (depthwise_conv2d_fwd_kernel) for the conv g, after set_items:
// block shape, channel chunks (grid y, split into launches of kMaxGridY), tiles (grid x), work
// items per thread R and the row-reuse specialization K (0: the generic kernel; float64 always
// takes it, see dispatch_fwd_k). vec: the channel vector (1 or 16 / sizeof(scalar_t)).
struct FwdPlan {
  dim3 block;
  int64_t chunks, tiles;
  int R, K;
};

inline FwdPlan plan_fwd(const Geom& g, bool channels_last, int vec, bool stats, bool row_reuse, int64_t elem_size) {
  FwdPlan p{};
  p.block = block_shape(channels_last, g.C / vec);
  p.chunks = channel_chunks(channels_last, g.C, vec, p.block);
  const int64_t ty = p.block.y;
  // Stats tiles hold >= 256 outputs per channel, and at most ~2048 tiles: partials stay ~1% of the
  // output and stage 2 short. Plain forward: one item per thread. Both depend on the shape only.
  int64_t R = stats ? std::max(ceil_div(g.items, ty * 2048), ceil_div(256, ty * kTW)) : 1;
  R = std::min(R, ceil_div(g.items, ty));
  R = std::max(R, ceil_div(g.items, ty * kMaxGridX));
  TORCH_CHECK(R <= std::numeric_limits<int>::max(), "depthwise_conv2d (CUDA): tensor too large");
  p.R = static_cast<int>(R);
  p.tiles = ceil_div(g.items, ty * R);
  // Row reuse needs adjacent columns per thread; with channels_last that spreads a warp's loads
  // over several pixels, which only costs nothing when one pixel's channels fill a 128-byte line.
  p.K = 0;
  if (row_reuse && g.sW == 1 && g.dW == 1 && (g.kW == 3 || g.kW == 5 || g.kW == 7) &&
      (!channels_last || g.C * elem_size >= 128)) {
    p.K = g.kW;
  }
  return p;
}

// Calls f(std::integral_constant<int, K>{}) with the K of the forward kernel instantiation that runs
// a conv planned with row-reuse width `K` (FwdPlan::K): 3, 5 or 7, else 0 (the generic kernel);
// always 0 for float64, whose row-reuse kernels are not instantiated. Shared by the CUDA launcher
// and the host emulation, so both pick the same kernel.
template <typename scalar_t, typename F>
void dispatch_fwd_k(int K, F&& f) {
  if constexpr (!std::is_same_v<scalar_t, double>) {
    switch (K) {
      case 3:
        return f(std::integral_constant<int, 3>{});
      case 5:
        return f(std::integral_constant<int, 5>{});
      case 7:
        return f(std::integral_constant<int, 7>{});
      default:
        break;
    }
  }
  f(std::integral_constant<int, 0>{});
}

// grad_input at stride 1 as a forward conv: grad_in = conv(grad_out, w rotated by 180 degrees,
// stride 1, padding (k-1)d - p, dilation d): output row ih, tap kh' = kH-1-kh reads grad_out row
// ih - ((kH-1)dH - pH) + kh'dH = ih + pH - kh*dH. fg: the forward conv's geometry.
inline Geom rotated_geom(const Geom& fg) {
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
  return g;
}

// The launch of depthwise_conv2d_bwd_input_kernel (stride > 1) for the geometry g, after
// set_items(g, N, H, W).
struct BwdInputPlan {
  dim3 block;
  int64_t chunks, tiles, R;
};

inline BwdInputPlan plan_bwd_input(const Geom& g, bool channels_last, int vec) {
  BwdInputPlan p{};
  p.block = block_shape(channels_last, g.C / vec);
  p.chunks = channel_chunks(channels_last, g.C, vec, p.block);
  p.R = std::max<int64_t>(1, ceil_div(g.items, static_cast<int64_t>(p.block.y) * kMaxGridX));
  p.tiles = ceil_div(g.items, p.block.y * p.R);
  return p;
}

// The two launches of the weight gradient: stage 1 (depthwise_conv2d_bwd_weight_kernel) on a grid
// (tiles * chunks, cchunks) of `block`, writing (tiles, rows, C) partials; stage 2
// (depthwise_conv2d_bwd_weight_finish_kernel) on fblocks blocks of (32, kFinishLanes).
struct BwdWeightPlan {
  int taps, rows, chunks;
  bool do_bias;
  int64_t pixels, tile_px, tiles, cchunks, fblocks;
  dim3 block;
};

inline BwdWeightPlan plan_bwd_weight(const DepthwiseArgs& a, int vec, bool want_weight, bool want_bias) {
  BwdWeightPlan p{};
  p.taps = want_weight ? static_cast<int>(a.kH * a.kW) : 0;
  p.do_bias = want_bias;
  p.rows = p.taps + (p.do_bias ? 1 : 0);
  p.pixels = a.N * a.OH * a.OW;
  // At most 1024 tiles; a tile holds at least 16 pixels per partial row, so partials stay <= ~6% of
  // grad_out. Shape-derived only.
  p.tile_px = std::max<int64_t>({256, 16 * static_cast<int64_t>(p.rows), ceil_div(p.pixels, 1024)});
  p.tiles = ceil_div(p.pixels, p.tile_px);
  p.chunks = p.taps > 0 ? static_cast<int>(ceil_div(p.taps, kTapsPerBlock)) : 1;
  TORCH_CHECK(p.tiles * p.chunks <= kMaxGridX, "depthwise_conv2d_backward (CUDA): too many weight-gradient blocks");
  p.block = block_shape(a.channels_last(), a.C / vec);
  p.cchunks = channel_chunks(a.channels_last(), a.C, vec, p.block);
  p.fblocks = ceil_div(a.C, 32) * p.rows;
  TORCH_CHECK(p.fblocks <= kMaxGridX, "depthwise_conv2d_backward (CUDA): too many channels");
  return p;
}

}  // namespace dw
}  // namespace cuda
}  // namespace mobilenet_kernels
