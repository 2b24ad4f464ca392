// inverted_residual_eval, CUDA: the whole-block kernel and the host-side plan of its launch (tile,
// geometry, grid, dynamic shared memory). The algorithm, tiling, layouts and limits are described
// in the header comment of inverted_residual.cu, whose host entry point dispatches and launches it.
// This header has no kernel launch and no ATen CUDA include, so python_tests/cuda_emulation
// compiles it with g++ (-DMK_CUDA_EMULATION, cuda_shim/ first on the include path) and runs the
// kernel on the host (one std::thread per CUDA thread, a barrier for __syncthreads) after the very
// plan the launcher uses (plan_block), to check its index math on machines without a GPU.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "excite_gemm.cuh"
#include "inverted_residual.h"
#include "mk_cuda.cuh"

namespace mobilenet_kernels {
namespace cuda {
namespace ir_block {

constexpr int kThreads = 256;  // threads per block
constexpr int kBH = 32;        // hidden channels per chunk
constexpr int kBK = 16;        // input channels staged per expand step
constexpr int kXLd = kBK + 1;  // row stride of the staged input halo (conflict-free column reads)
constexpr int kWLd = kBH + 1;  // row stride of the staged W_e^T slice (conflict-free staging stores)
constexpr int kMaxHalo = 256;  // halo pixels of a tile
constexpr int kHaloLanes = kThreads / (kBH / 4);       // expand: 32 pixel lanes x 8 lanes of 4 channels
constexpr int kExpandPixels = kMaxHalo / kHaloLanes;  // 8 halo pixels per expand thread
constexpr int64_t kSpatialLimit = int64_t(1) << 30;  // H, W: tile coordinates are int

static_assert(kThreads == 64 * 4, "project lanes: 64 channels x 4 pixels");
static_assert(kThreads == kBH * 8, "depthwise lanes: kBH channels x 8 pixels");
static_assert(kHaloLanes * kExpandPixels == kMaxHalo, "expand lanes cover the halo");

// Per-thread project accumulators: PI pixels x NCO channel groups of 64, at most 32.
template <int NCO>
constexpr int pixel_rows() {
  return NCO <= 2 ? 16 : 32 / NCO;
}

struct BlockGeom {
  int64_t Cin, Chid, Cout;
  int H, W, OH, OW;
  int k, s, d, pad;
  int TH, TW;            // output tile
  int halo_w, halo_n;    // halo tile width and pixel count
  int tiles_h, tiles_w;  // tiles per image along each axis
  int64_t xsN, xsC, xsH, xsW;
  int64_t ysN, ysC, ysH, ysW;
  bool channels_last;
  bool has_expand;  // not `we != nullptr`: a (Chid, 0) weight (Cin = 0) has a null data pointer
  bool residual;
  Act act;
};

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t as_stored(acc_t v) {
  return static_cast<acc_t>(static_cast<scalar_t>(v));
}

// Shared memory of one block, in acc_t elements: staged input halo, W_e^T slice, E, D.
inline int64_t smem_elems(int halo_n, int P) {
  return static_cast<int64_t>(halo_n) * kXLd + kBK * kWLd + static_cast<int64_t>(halo_n) * kBH +
         static_cast<int64_t>(P) * kBH;
}

// The dynamic shared memory of the kernel (smem_elems acc_t elements, BlockPlan::smem_bytes).
MK_DYNAMIC_SMEM(mk_ir_block_smem, 16);

// kPool: pass 1 of a squeeze-excite block: steps 1 and 2 only, then each chunk's channel sums of D
// over the tile's output pixels into tile_sums[blockIdx.x] (Chid each); nothing projected or stored.
// Otherwise, with se_scale (N, Chid) non-null (pass 2), D is scaled per (image, hidden channel)
// before the projection, rounded again as the squeeze-excite op stores its output.
template <typename scalar_t, int NCO, bool kPool = false>
__global__ void __launch_bounds__(kThreads)
    inverted_residual_eval_kernel(const scalar_t* __restrict__ x,                        // (N, Cin, H, W)
                                  const at::opmath_type<scalar_t>* __restrict__ we,      // (Chid, Cin) or null
                                  const at::opmath_type<scalar_t>* __restrict__ be,      // (Chid,) or null
                                  const at::opmath_type<scalar_t>* __restrict__ wd_t,    // (k * k, Chid)
                                  const at::opmath_type<scalar_t>* __restrict__ bd,      // (Chid,)
                                  const at::opmath_type<scalar_t>* __restrict__ wp_t,    // (Chid, Cout)
                                  const at::opmath_type<scalar_t>* __restrict__ bp,      // (Cout,)
                                  scalar_t* __restrict__ y,                              // (N, Cout, OH, OW)
                                  const at::opmath_type<scalar_t>* __restrict__ se_scale,  // (N, Chid) or null
                                  at::opmath_type<scalar_t>* __restrict__ tile_sums,       // (blocks, Chid): kPool
                                  BlockGeom g) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int PI = pixel_rows<NCO>();
  constexpr int P = 4 * PI;
  acc_t* xs = reinterpret_cast<acc_t*>(mk_ir_block_smem);  // [halo_n][kXLd]
  acc_t* wes = xs + g.halo_n * kXLd;                 // [kBK][kWLd]
  acc_t* es = wes + kBK * kWLd;                      // [halo_n][kBH]
  acc_t* ds = es + g.halo_n * kBH;                   // [P][kBH]

  const int t = threadIdx.x;
  const int64_t tiles_per_image = static_cast<int64_t>(g.tiles_h) * g.tiles_w;
  const int64_t n = static_cast<int64_t>(blockIdx.x) / tiles_per_image;
  const int tile = static_cast<int>(static_cast<int64_t>(blockIdx.x) - n * tiles_per_image);
  const int oh0 = (tile / g.tiles_w) * g.TH;
  const int ow0 = (tile % g.tiles_w) * g.TW;
  const int ih0 = oh0 * g.s - g.pad;
  const int iw0 = ow0 * g.s - g.pad;
  const scalar_t* __restrict__ xn = x + n * g.xsN;

  // The halo pixel hp as (ih, iw), and whether it lies in the image.
  auto halo_pixel = [&](int hp, int& ih, int& iw) {
    ih = ih0 + hp / g.halo_w;
    iw = iw0 + hp % g.halo_w;
    return ih >= 0 && ih < g.H && iw >= 0 && iw < g.W;
  };
  // dst[hp * ld + j] = x[n, c0 + j, halo pixel hp] for j < width, 0 outside the image or past
  // channel c_end: the input halo of `width` channels. Consecutive threads take consecutive
  // channels (channels_last) or consecutive pixels (NCHW), the input's contiguous axis either way.
  auto stage_halo = [&](acc_t* dst, int ld, int width, int64_t c0, int64_t c_end) {
    for (int e = t; e < g.halo_n * width; e += kThreads) {
      const int hp = g.channels_last ? e / width : e % g.halo_n;
      const int j = g.channels_last ? e % width : e / g.halo_n;
      const int64_t c = c0 + j;
      int ih, iw;
      acc_t v = acc_t(0);
      if (c < c_end && halo_pixel(hp, ih, iw)) {
        v = static_cast<acc_t>(xn[c * g.xsC + static_cast<int64_t>(ih) * g.xsH + static_cast<int64_t>(iw) * g.xsW]);
      }
      dst[hp * ld + j] = v;
    }
  };

  const int co_lane = t % 64;
  const int p_lane = t / 64;
  acc_t acc[PI][NCO];
#pragma unroll
  for (int i = 0; i < PI; ++i) {
#pragma unroll
    for (int j = 0; j < NCO; ++j) acc[i][j] = acc_t(0);
  }

  for (int64_t h0 = 0; h0 < g.Chid; h0 += kBH) {
    // ---- 1. E = the chunk of the expanded tensor over the halo
    if (g.has_expand) {
      const int hq = (t % (kBH / 4)) * 4;  // hidden channels h0 + hq .. h0 + hq + 3
      const int hp_lane = t / (kBH / 4);   // halo pixels hp_lane + kHaloLanes i
      const int rows = (g.halo_n + kHaloLanes - 1) / kHaloLanes;  // halo rows per lane: block-uniform
      acc_t e[kExpandPixels][4];
#pragma unroll
      for (int i = 0; i < kExpandPixels; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) e[i][j] = acc_t(0);
      }
      for (int64_t k0 = 0; k0 < g.Cin; k0 += kBK) {
        stage_halo(xs, kXLd, kBK, k0, g.Cin);
        for (int idx = t; idx < kBK * kBH; idx += kThreads) {
          const int kk = idx % kBK;  // consecutive threads along Cin: W_e's contiguous axis
          const int h = idx / kBK;
          const int64_t c = k0 + kk;
          const int64_t hc = h0 + h;
          wes[kk * kWLd + h] = c < g.Cin && hc < g.Chid ? we[hc * g.Cin + c] : acc_t(0);
        }
        __syncthreads();
#pragma unroll 4
        for (int kk = 0; kk < kBK; ++kk) {
          acc_t w[4];
#pragma unroll
          for (int j = 0; j < 4; ++j) w[j] = wes[kk * kWLd + hq + j];
#pragma unroll
          for (int i = 0; i < kExpandPixels; ++i) {
            if (i >= rows) break;
            // a lane's last row may lie past the halo: it reads the halo's last pixel, never stored
            const acc_t xv = xs[min(hp_lane + kHaloLanes * i, g.halo_n - 1) * kXLd + kk];
#pragma unroll
            for (int j = 0; j < 4; ++j) e[i][j] += xv * w[j];
          }
        }
        __syncthreads();  // xs and wes are restaged by the next step
      }
#pragma unroll
      for (int i = 0; i < kExpandPixels; ++i) {
        const int hp = hp_lane + kHaloLanes * i;
        if (hp >= g.halo_n) break;
        int ih, iw;
        const bool inside = halo_pixel(hp, ih, iw);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int64_t hc = h0 + hq + j;
          acc_t v = acc_t(0);
          if (inside && hc < g.Chid) v = as_stored<scalar_t>(apply_activation(g.act, e[i][j] + be[hc]));
          es[hp * kBH + hq + j] = v;
        }
      }
    } else {
      stage_halo(es, kBH, kBH, h0, g.Chid);  // no expand conv: E is the input's halo (Chid = Cin)
    }
    __syncthreads();

    // ---- 2. D = act(dw(E) + b_d) at the tile's output pixels
    {
      const int h = t % kBH;
      const int q_lane = t / kBH;
      const int64_t hc = h0 + h;
      const bool h_ok = hc < g.Chid;
      const acc_t* __restrict__ wcol = wd_t + (h_ok ? hc : 0);  // tap t at wcol[t * Chid]
      const acc_t b = h_ok ? bd[hc] : acc_t(0);
#pragma unroll
      for (int i = 0; i < P / 8; ++i) {
        if (8 * i >= g.TH * g.TW) break;  // block-uniform: rows past the tile are never read
        const int q = q_lane + 8 * i;
        acc_t v = acc_t(0);
        if (h_ok && q < g.TH * g.TW) {
          const int qh = q / g.TW;
          const int qw = q % g.TW;
          acc_t a = b;
          for (int kh = 0; kh < g.k; ++kh) {
            const acc_t* erow = es + ((qh * g.s + kh * g.d) * g.halo_w + qw * g.s) * kBH + h;
            const acc_t* wtap = wcol + static_cast<int64_t>(kh) * g.k * g.Chid;
            for (int kw = 0; kw < g.k; ++kw) a += erow[kw * g.d * kBH] * wtap[kw * g.Chid];
          }
          v = as_stored<scalar_t>(apply_activation(g.act, a));
          if (!kPool && se_scale != nullptr) v = as_stored<scalar_t>(v * se_scale[n * g.Chid + hc]);
        }
        ds[q * kBH + h] = v;
      }
    }
    __syncthreads();

    if constexpr (kPool) {
      // ---- 3'. the chunk's channel sums over the tile's output pixels inside the image, in pixel order
      if (t < kBH && h0 + t < g.Chid) {
        acc_t sum = acc_t(0);
        for (int q = 0; q < g.TH * g.TW; ++q) {
          if (oh0 + q / g.TW < g.OH && ow0 + q % g.TW < g.OW) sum += ds[q * kBH + t];
        }
        tile_sums[static_cast<int64_t>(blockIdx.x) * g.Chid + h0 + t] = sum;
      }
      __syncthreads();  // D is rewritten by the next chunk
      continue;
    }
    // ---- 3. acc += D . W_p[chunk]^T
    const int hn = static_cast<int>(std::min<int64_t>(kBH, g.Chid - h0));
    for (int h = 0; h < hn; ++h) {
      const acc_t* __restrict__ wrow = wp_t + (h0 + h) * g.Cout;
      acc_t w[NCO];
#pragma unroll
      for (int j = 0; j < NCO; ++j) {
        const int64_t co = co_lane + 64 * j;
        w[j] = co < g.Cout ? wrow[co] : acc_t(0);
      }
#pragma unroll
      for (int i = 0; i < PI; ++i) {
        if (4 * i >= g.TH * g.TW) break;                   // block-uniform
        const acc_t dv = ds[(p_lane + 4 * i) * kBH + h];  // one address per warp: a broadcast
#pragma unroll
        for (int j = 0; j < NCO; ++j) acc[i][j] += dv * w[j];
      }
    }
    __syncthreads();  // E and D are rewritten by the next chunk
  }

  if constexpr (!kPool) {  // pass 1 stores nothing
    // ---- epilogue: + b_p (+ x), one store
#pragma unroll
    for (int i = 0; i < PI; ++i) {
      const int q = p_lane + 4 * i;
      if (q >= g.TH * g.TW) break;
      const int oh = oh0 + q / g.TW;
      const int ow = ow0 + q % g.TW;
      if (oh >= g.OH || ow >= g.OW) continue;
      const int64_t pix_y = n * g.ysN + static_cast<int64_t>(oh) * g.ysH + static_cast<int64_t>(ow) * g.ysW;
      const int64_t pix_x = static_cast<int64_t>(oh) * g.xsH + static_cast<int64_t>(ow) * g.xsW;
#pragma unroll
      for (int j = 0; j < NCO; ++j) {
        const int64_t co = co_lane + 64 * j;
        if (co >= g.Cout) continue;
        acc_t v = acc[i][j] + bp[co];
        if (g.residual) v += static_cast<acc_t>(xn[co * g.xsC + pix_x]);
        y[pix_y + co * g.ysC] = static_cast<scalar_t>(v);
      }
    }
  }
}

struct Tile {
  int th = 1, tw = 1, halo_w = 1, halo_n = 1;
  int64_t smem_bytes = 0;
};

// The largest candidate tile within P pixels, kMaxHalo halo pixels and the shared-memory limit.
inline Tile pick_tile(const InvertedResidualArgs& a, int P, int64_t acc_bytes, int64_t smem_limit) {
  static constexpr int kCandidates[][2] = {{8, 8}, {4, 8}, {4, 4}, {2, 4}, {2, 2}, {1, 2}, {1, 1}};
  Tile best;
  for (const auto& c : kCandidates) {
    Tile tl;
    tl.th = static_cast<int>(std::min<int64_t>(c[0], a.OH));
    tl.tw = static_cast<int>(std::min<int64_t>(c[1], a.OW));
    const int64_t halo_h = (tl.th - 1) * a.stride + (a.k - 1) * a.dilation + 1;
    const int64_t halo_w = (tl.tw - 1) * a.stride + (a.k - 1) * a.dilation + 1;
    tl.halo_w = static_cast<int>(halo_w);
    tl.halo_n = static_cast<int>(std::min<int64_t>(halo_h * halo_w, std::numeric_limits<int>::max()));
    tl.smem_bytes = smem_elems(tl.halo_n, P) * acc_bytes;
    best = tl;
    if (tl.th * tl.tw <= P && halo_h * halo_w <= kMaxHalo && tl.smem_bytes <= smem_limit) return tl;
  }
  // Even a single output pixel's halo does not fit: k and dilation beyond any MobileNet's.
  TORCH_CHECK_VALUE(false, "dw_weight, dilation: the CUDA whole-block kernel keeps the ((k - 1) * dilation + 1)^2 "
                    "input halo of an output pixel on chip (at most ", kMaxHalo, " pixels); k = ", a.k,
                    " and dilation = ", a.dilation, " need ", best.halo_n, ": run this block op by op");
  return best;
}

// Sizes the kernel takes: at most 512 output channels (8 groups of 64 per thread) and H, W up to
// kSpatialLimit. Checked by the launcher before it allocates the output.
inline void check_block_limits(const InvertedResidualArgs& a) {
  TORCH_CHECK_VALUE(a.Cout <= 512, "project_weight: the CUDA whole-block kernel takes at most 512 output channels, got ",
                    a.Cout);
  TORCH_CHECK_VALUE(a.H <= kSpatialLimit && a.W <= kSpatialLimit, "input: the CUDA whole-block kernel takes H and W up to ",
                    kSpatialLimit, ", got ", a.H, " x ", a.W);
}

// The NCO template argument (channel groups of 64 per thread) the launcher instantiates for Cout
// output channels: 1, 2, 4 or 8.
inline int nco_for(int64_t Cout) {
  const int64_t groups = ceil_div(Cout, 64);
  return groups == 1 ? 1 : groups == 2 ? 2 : groups <= 4 ? 4 : 8;
}

// One launch of inverted_residual_eval_kernel<scalar_t, NCO>: blocks x kThreads threads with
// smem_bytes of dynamic shared memory, and the kernel's geometry argument.
struct BlockPlan {
  BlockGeom g;
  int64_t blocks = 0;
  int64_t smem_bytes = 0;
};

// The plan for the prepared block `a` writing `out` (N, Cout, OH, OW) with `smem_limit` bytes of
// shared memory per block (the device's sharedMemPerBlockOptin).
template <typename scalar_t, int NCO>
BlockPlan plan_block(const InvertedResidualArgs& a, const at::Tensor& out, int64_t smem_limit) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int P = 4 * pixel_rows<NCO>();
  const Tile tl = pick_tile(a, P, sizeof(acc_t), smem_limit);
  BlockPlan plan;
  BlockGeom& g = plan.g;
  g.Cin = a.Cin;
  g.Chid = a.Chid;
  g.Cout = a.Cout;
  g.H = static_cast<int>(a.H);
  g.W = static_cast<int>(a.W);
  g.OH = static_cast<int>(a.OH);
  g.OW = static_cast<int>(a.OW);
  g.k = static_cast<int>(a.k);
  g.s = static_cast<int>(a.stride);
  g.d = static_cast<int>(a.dilation);
  g.pad = static_cast<int>(a.pad);
  g.TH = tl.th;
  g.TW = tl.tw;
  g.halo_w = tl.halo_w;
  g.halo_n = tl.halo_n;
  g.tiles_h = static_cast<int>(ceil_div(a.OH, tl.th));
  g.tiles_w = static_cast<int>(ceil_div(a.OW, tl.tw));
  g.xsN = a.input.stride(0);
  g.xsC = a.input.stride(1);
  g.xsH = a.input.stride(2);
  g.xsW = a.input.stride(3);
  g.ysN = out.stride(0);
  g.ysC = out.stride(1);
  g.ysH = out.stride(2);
  g.ysW = out.stride(3);
  g.channels_last = a.channels_last();
  g.has_expand = a.has_expand();
  g.residual = a.residual;
  g.act = a.act;
  plan.blocks = a.N * g.tiles_h * g.tiles_w;
  TORCH_CHECK(plan.blocks <= std::numeric_limits<int32_t>::max(), "inverted_residual_eval (CUDA): input too large (",
              plan.blocks, " tiles)");
  plan.smem_bytes = tl.smem_bytes;
  return plan;
}

// Squeeze-excite blocks: pooled[n, h] = (sum over the tiles of image n, in tile order, of
// tile_sums[n * tiles + tile, h]) * inv_count; one thread per (n, h), consecutive threads along h.
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    ir_block_pool_kernel(const acc_t* __restrict__ tile_sums, acc_t* __restrict__ pooled, int64_t N, int64_t tiles,
                         int64_t Chid, acc_t inv_count) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= N * Chid) return;
  const int64_t n = i / Chid;
  const acc_t* __restrict__ src = tile_sums + n * tiles * Chid + (i - n * Chid);
  acc_t sum = acc_t(0);
  for (int64_t j = 0; j < tiles; ++j) sum += src[j * Chid];
  pooled[i] = sum * inv_count;
}

// The block's weights as the kernel reads them (accumulation dtype): we, be null without an
// expand conv; wd_t (k * k, Chid) and wp_t (Chid, Cout) transposed by the launcher.
template <typename acc_t>
struct BlockWeights {
  const acc_t *we, *be, *wd_t, *bd, *wp_t, *bp;
};

// Accumulation-dtype scratch of a squeeze-excite block whose pass 1 runs `pool`: tile sums
// (blocks, Chid), pooled and scale (N, Chid), the excite's hidden layer (N, S).
inline int64_t se_scratch_elems(const InvertedResidualArgs& a, const BlockPlan& pool) {
  return pool.blocks * a.Chid + a.N * (2 * a.Chid + a.S);
}

// The op's launches through launch(kernel, grid, block, dynamic_smem_bytes, args...) (on a stream in
// inverted_residual.cu, on the host in the emulation). Without a squeeze-excite (se == nullptr):
// the block kernel after `main`. With one: pass 1 (the kernel with kPool after `pool`, a plan for
// NCO = 1), the merge of its tile sums (ir_block_pool_kernel), squeeze_excite's excite GEMMs
// (excite_gemm.cuh: 2 launches) and pass 2 (the block kernel scaling D); `scratch` holds
// se_scratch_elems(a, pool) elements. Five launches in all, each reading what the last wrote.
template <typename scalar_t, int NCO, typename Launch>
void forward_steps(const InvertedResidualArgs& a, const BlockWeights<at::opmath_type<scalar_t>>& w,
                   const se::ExciteParams<at::opmath_type<scalar_t>>* se_params, const scalar_t* x, scalar_t* y,
                   const BlockPlan& main, const BlockPlan& pool, at::opmath_type<scalar_t>* scratch,
                   const Launch& launch) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t* scale = nullptr;
  if (se_params != nullptr) {
    acc_t* tile_sums = scratch;
    acc_t* pooled = tile_sums + pool.blocks * a.Chid;
    acc_t* excite_scale = pooled + a.N * a.Chid;
    acc_t* hidden = excite_scale + a.N * a.Chid;
    launch(inverted_residual_eval_kernel<scalar_t, 1, true>, dim3(static_cast<unsigned>(pool.blocks)), dim3(kThreads),
           static_cast<size_t>(pool.smem_bytes), x, w.we, w.be, w.wd_t, w.bd, w.wp_t, w.bp, y,
           static_cast<const acc_t*>(nullptr), tile_sums, pool.g);
    const int64_t tiles = static_cast<int64_t>(pool.g.tiles_h) * pool.g.tiles_w;
    launch(ir_block_pool_kernel<acc_t>, dim3(static_cast<unsigned>(ceil_div(a.N * a.Chid, kThreads))),
           dim3(kThreads), size_t(0), static_cast<const acc_t*>(tile_sums), pooled, a.N, tiles, a.Chid,
           static_cast<acc_t>(1.0 / static_cast<double>(a.OH * a.OW)));
    se::excite_forward(*se_params, static_cast<const acc_t*>(pooled), hidden, excite_scale, launch);
    scale = excite_scale;
  }
  launch(inverted_residual_eval_kernel<scalar_t, NCO, false>, dim3(static_cast<unsigned>(main.blocks)),
         dim3(kThreads), static_cast<size_t>(main.smem_bytes), x, w.we, w.be, w.wd_t, w.bd, w.wp_t, w.bp, y, scale,
         static_cast<acc_t*>(nullptr), main.g);
}

}  // namespace ir_block
}  // namespace cuda
}  // namespace mobilenet_kernels
