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
#include "pointwise_gemm.cuh"  // MmaType, and mma.h

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
  int64_t chid_p = 0, cout_p = 0;  // the tensor-core kernel's padded weights: round_up(Chid, 32), round_up(Cout, 16)
};

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t as_stored(acc_t v) {
  return static_cast<acc_t>(static_cast<scalar_t>(v));
}

// The weights as the kernels read them: in the accumulation dtype (we, be null without an expand
// conv; wd_t (k * k, Chid) and wp_t (Chid, Cout) transposed by the launcher) and, for the
// tensor-core kernel only (null otherwise), W_e^T and W_p^T in the 16-bit input dtype, zero-padded
// to (round_up(Cin, 16), chid_p) and (chid_p, cout_p) (BlockGeom) so that every 16 x 16 MMA tile
// exists and is 32-byte aligned.
template <typename scalar_t>
struct BlockWeights {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t *we, *be, *wd_t, *bd, *wp_t, *bp;
  const scalar_t *we16_t, *wp16_t;
};

// What both block kernels share: the tile of this thread block (image n, output pixels from
// (oh0, ow0), input halo from (ih0, iw0)), the halo staging, the depthwise step and the
// squeeze-excite pass-1 sums.
template <typename scalar_t>
struct TileCtx {
  using acc_t = at::opmath_type<scalar_t>;
  const BlockGeom& g;
  int64_t n;
  int oh0, ow0, ih0, iw0;
  const scalar_t* __restrict__ xn;

  __device__ TileCtx(const BlockGeom& geom, const scalar_t* x) : g(geom) {
    const int64_t tiles_per_image = static_cast<int64_t>(g.tiles_h) * g.tiles_w;
    n = static_cast<int64_t>(blockIdx.x) / tiles_per_image;
    const int tile = static_cast<int>(static_cast<int64_t>(blockIdx.x) - n * tiles_per_image);
    oh0 = (tile / g.tiles_w) * g.TH;
    ow0 = (tile % g.tiles_w) * g.TW;
    ih0 = oh0 * g.s - g.pad;
    iw0 = ow0 * g.s - g.pad;
    xn = x + n * g.xsN;
  }

  // The halo pixel hp as (ih, iw), and whether it lies in the image.
  __device__ __forceinline__ bool halo_pixel(int hp, int& ih, int& iw) const {
    ih = ih0 + hp / g.halo_w;
    iw = iw0 + hp % g.halo_w;
    return ih >= 0 && ih < g.H && iw >= 0 && iw < g.W;
  }

  // dst[hp * ld + j] = x[n, c0 + j, halo pixel hp] for hp < rows, j < width; 0 outside the image,
  // past channel c_end or past the halo (rows may pad it): the input halo of `width` channels.
  // Consecutive threads take consecutive channels (channels_last) or consecutive pixels (NCHW), the
  // input's contiguous axis either way.
  template <typename dst_t>
  __device__ __forceinline__ void stage_halo(dst_t* dst, int ld, int rows, int width, int64_t c0,
                                             int64_t c_end) const {
    for (int e = threadIdx.x; e < rows * width; e += kThreads) {
      const int hp = g.channels_last ? e / width : e % rows;
      const int j = g.channels_last ? e % width : e / rows;
      const int64_t c = c0 + j;
      int ih, iw;
      acc_t v = acc_t(0);
      if (hp < g.halo_n && c < c_end && halo_pixel(hp, ih, iw)) {
        v = static_cast<acc_t>(xn[c * g.xsC + static_cast<int64_t>(ih) * g.xsH + static_cast<int64_t>(iw) * g.xsW]);
      }
      dst[hp * ld + j] = static_cast<dst_t>(v);
    }
  }

  // ---- 2. D[q][h] = act(dw(E) + b_d) for the tile's output pixels q < P and the chunk's hidden
  // channels h0 + h, rounded to the input dtype (as stored op by op), then with se_scale (N, Chid)
  // non-null scaled and rounded again (as the squeeze-excite op stores it); 0 past the tile or
  // Chid. E: the chunk over the halo, [halo pixel][e_ld] in acc_t. D: [q][d_ld] in d_t. A thread
  // owns one hidden channel of P / 8 output pixels; the halo makes every tap exist.
  template <int P, typename d_t>
  __device__ __forceinline__ void depthwise(const acc_t* es, int e_ld, const acc_t* __restrict__ wd_t,
                                            const acc_t* __restrict__ bd, const acc_t* __restrict__ se_scale,
                                            int64_t h0, d_t* ds, int d_ld) const {
    const int h = threadIdx.x % kBH;
    const int q_lane = threadIdx.x / kBH;
    const int64_t hc = h0 + h;
    const bool h_ok = hc < g.Chid;
    const acc_t* __restrict__ wcol = wd_t + (h_ok ? hc : 0);  // tap t at wcol[t * Chid]
    const acc_t b = h_ok ? bd[hc] : acc_t(0);
    const acc_t sc = h_ok && se_scale != nullptr ? se_scale[n * g.Chid + hc] : acc_t(1);
#pragma unroll
    for (int i = 0; i < P / 8; ++i) {
      const int q = q_lane + 8 * i;
      acc_t v = acc_t(0);
      if (h_ok && q < g.TH * g.TW) {
        const int qh = q / g.TW;
        const int qw = q % g.TW;
        acc_t a = b;
        for (int kh = 0; kh < g.k; ++kh) {
          const acc_t* erow = es + ((qh * g.s + kh * g.d) * g.halo_w + qw * g.s) * e_ld + h;
          const acc_t* wtap = wcol + static_cast<int64_t>(kh) * g.k * g.Chid;
          for (int kw = 0; kw < g.k; ++kw) a += erow[kw * g.d * e_ld] * wtap[kw * g.Chid];
        }
        v = as_stored<scalar_t>(apply_activation(g.act, a));
        if (se_scale != nullptr) v = as_stored<scalar_t>(v * sc);
      }
      ds[q * d_ld + h] = static_cast<d_t>(v);
    }
  }

  // Whether output pixel q of the tile lies in the image (the last tiles may overhang it).
  __device__ __forceinline__ bool in_image(int q) const { return oh0 + q / g.TW < g.OH && ow0 + q % g.TW < g.OW; }

  // ---- 3'. squeeze-excite pass 1: the chunk's channel sums of D over the tile's output pixels
  // inside the image, in pixel order, into tile_sums[blockIdx.x * Chid + h0 + h].
  template <typename d_t>
  __device__ __forceinline__ void pool_sums(const d_t* ds, int d_ld, int64_t h0, acc_t* __restrict__ tile_sums) const {
    const int h = threadIdx.x;
    if (h < kBH && h0 + h < g.Chid) {
      acc_t sum = acc_t(0);
      for (int q = 0; q < g.TH * g.TW; ++q) {
        if (in_image(q)) sum += static_cast<acc_t>(ds[q * d_ld + h]);
      }
      tile_sums[static_cast<int64_t>(blockIdx.x) * g.Chid + h0 + h] = sum;
    }
  }

  // ---- epilogue: y[n, co, output pixel q] = v (the projection with its bias) + x there if
  // residual, rounded once; nothing for a pixel outside the image.
  __device__ __forceinline__ void store_output(scalar_t* __restrict__ y, int q, int64_t co, acc_t v) const {
    if (!in_image(q)) return;
    const int64_t oh = oh0 + q / g.TW, ow = ow0 + q % g.TW;
    if (g.residual) v += static_cast<acc_t>(xn[co * g.xsC + oh * g.xsH + ow * g.xsW]);
    y[n * g.ysN + co * g.ysC + oh * g.ysH + ow * g.ysW] = static_cast<scalar_t>(v);
  }
};

// Shared memory of one block of the CUDA-core kernel, in acc_t elements: staged input halo, W_e^T
// slice, E, D.
inline int64_t smem_elems(int halo_n, int P) {
  return static_cast<int64_t>(halo_n) * kXLd + kBK * kWLd + static_cast<int64_t>(halo_n) * kBH +
         static_cast<int64_t>(P) * kBH;
}

// The dynamic shared memory of both kernels (BlockKernel::smem_bytes).
MK_DYNAMIC_SMEM(mk_ir_block_smem, 128);

// The CUDA-core kernel (every dtype). kPool: pass 1 of a squeeze-excite block: steps 1 and 2 only,
// then each chunk's channel sums of D over the tile's output pixels into tile_sums[blockIdx.x]
// (Chid each); nothing projected or stored. Otherwise, with se_scale (N, Chid) non-null (pass 2),
// D is scaled per (image, hidden channel) before the projection.
template <typename scalar_t, int NCO, bool kPool = false>
__global__ void __launch_bounds__(kThreads)
    inverted_residual_eval_kernel(const scalar_t* __restrict__ x,  // (N, Cin, H, W)
                                  BlockWeights<scalar_t> w,
                                  scalar_t* __restrict__ y,        // (N, Cout, OH, OW)
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
  const TileCtx<scalar_t> tc(g, x);
  const int t = threadIdx.x;

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
        tc.stage_halo(xs, kXLd, g.halo_n, kBK, k0, g.Cin);
        for (int idx = t; idx < kBK * kBH; idx += kThreads) {
          const int kk = idx % kBK;  // consecutive threads along Cin: W_e's contiguous axis
          const int h = idx / kBK;
          const int64_t c = k0 + kk;
          const int64_t hc = h0 + h;
          wes[kk * kWLd + h] = c < g.Cin && hc < g.Chid ? w.we[hc * g.Cin + c] : acc_t(0);
        }
        __syncthreads();
#pragma unroll 4
        for (int kk = 0; kk < kBK; ++kk) {
          acc_t wv[4];
#pragma unroll
          for (int j = 0; j < 4; ++j) wv[j] = wes[kk * kWLd + hq + j];
#pragma unroll
          for (int i = 0; i < kExpandPixels; ++i) {
            if (i >= rows) break;
            // a lane's last row may lie past the halo: it reads the halo's last pixel, never stored
            const acc_t xv = xs[min(hp_lane + kHaloLanes * i, g.halo_n - 1) * kXLd + kk];
#pragma unroll
            for (int j = 0; j < 4; ++j) e[i][j] += xv * wv[j];
          }
        }
        __syncthreads();  // xs and wes are restaged by the next step
      }
#pragma unroll
      for (int i = 0; i < kExpandPixels; ++i) {
        const int hp = hp_lane + kHaloLanes * i;
        if (hp >= g.halo_n) break;
        int ih, iw;
        const bool inside = tc.halo_pixel(hp, ih, iw);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int64_t hc = h0 + hq + j;
          acc_t v = acc_t(0);
          if (inside && hc < g.Chid) v = as_stored<scalar_t>(apply_activation(g.act, e[i][j] + w.be[hc]));
          es[hp * kBH + hq + j] = v;
        }
      }
    } else {
      tc.stage_halo(es, kBH, g.halo_n, kBH, h0, g.Chid);  // no expand conv: E is the input's halo (Chid = Cin)
    }
    __syncthreads();

    // ---- 2. D = act(dw(E) + b_d) at the tile's output pixels (scaled in squeeze-excite pass 2)
    tc.template depthwise<P>(es, kBH, w.wd_t, w.bd, kPool ? nullptr : se_scale, h0, ds, kBH);
    __syncthreads();

    if constexpr (kPool) {
      tc.pool_sums(ds, kBH, h0, tile_sums);
    } else {
      // ---- 3. acc += D . W_p[chunk]^T
      const int hn = static_cast<int>(std::min<int64_t>(kBH, g.Chid - h0));
      for (int h = 0; h < hn; ++h) {
        const acc_t* __restrict__ wrow = w.wp_t + (h0 + h) * g.Cout;
        acc_t wv[NCO];
#pragma unroll
        for (int j = 0; j < NCO; ++j) {
          const int64_t co = co_lane + 64 * j;
          wv[j] = co < g.Cout ? wrow[co] : acc_t(0);
        }
#pragma unroll
        for (int i = 0; i < PI; ++i) {
          if (4 * i >= g.TH * g.TW) break;                   // block-uniform
          const acc_t dv = ds[(p_lane + 4 * i) * kBH + h];  // one address per warp: a broadcast
#pragma unroll
          for (int j = 0; j < NCO; ++j) acc[i][j] += dv * wv[j];
        }
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
#pragma unroll
      for (int j = 0; j < NCO; ++j) {
        const int64_t co = co_lane + 64 * j;
        if (co < g.Cout) tc.store_output(y, q, co, acc[i][j] + w.bp[co]);
      }
    }
  }
}

// ----------------------------------------------------------------------------- tensor cores
// The tensor-core kernel (float16/bfloat16, sm_80+, Cout <= kTcMaxCout): the same tiles, chunks
// and steps, with both 1x1 GEMMs as wmma 16x16x16 MMAs (fp32 accumulators) on the 16-bit weights
// (BlockWeights::we16_t, wp16_t: the op's weights arrive in the input dtype, so these are exact):
//   1. expand: the tile's whole input halo (halo_p = halo_n rounded up to 16 rows, cin_p = Cin
//      rounded up to 16 channels) is staged once per tile in shared memory as the input dtype (the
//      CUDA-core kernel restages it per chunk); per chunk, warp w owns M tiles w and w + 8 x the
//      chunk's two N tiles of 16 hidden channels and walks K in MMA steps of 16 with no barrier, B
//      read straight from W_e^T in global memory (L2-resident); the accumulators go to the shared
//      E tile, then + b_e, act, rounding and the zero padding outside the image as in the
//      CUDA-core kernel.
//   2. depthwise (TileCtx::depthwise) into D, stored in the input dtype: the A operand of
//   3. project: 64 output pixels x cout_p channels in fp32 accumulator fragments, warp w owning M
//      tile w % 4 and N tiles w / 4 + 2 f (f < NF), kept across all chunks (the chunks are the K
//      loop); B from W_p^T in global memory.
//   Epilogue: the fragments to shared memory (over E and D), then + b_p (+ x) and one store per
//   output value, consecutive threads along the output's contiguous axis.
constexpr int kTcP = 64;              // output pixels per tile (4 M tiles)
constexpr int kTcXPad = 8;            // staged halo pitch: cin_p + 8 16-bit elements
constexpr int kTcELd = kBH + 4;       // E pitch (floats)
constexpr int kTcDLd = kBH + 8;       // D pitch (16-bit elements): 80 bytes
// 10 N tiles: NF = 5 accumulator fragments per warp (40 registers). NF = 10 (Cout 320, V2's last
// block) spilled ~470 bytes per thread under ptxas (sm_90, 128 registers): such blocks stay on
// the CUDA-core kernel.
constexpr int64_t kTcMaxCout = 160;

__host__ __device__ inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// The shared memory of one block of the tensor-core kernel, for the kernel's pointers and the
// plan's byte count alike: halo_n halo pixels, cin_p padded input channels (0 without an expand
// conv), cout_p padded output channels (0 for pass 1). The staged halo [halo_p][xld], E
// [halo_p][kTcELd] and D [kTcP][kTcDLd] during the chunks (each 128-byte aligned), the accumulator
// tile [kTcP][cout_p + 4] floats over them after.
struct TcSmem {
  int64_t halo_p, xld, es_off, ds_off, bytes;
  __host__ __device__ TcSmem(int halo_n, int64_t cin_p, int64_t cout_p)
      : halo_p(round_up(halo_n, 16)),
        xld(cin_p + kTcXPad),
        es_off(cin_p > 0 ? round_up(halo_p * xld * 2, 128) : 0),
        ds_off(es_off + round_up(halo_p * kTcELd * 4, 128)) {
    const int64_t chunks = ds_off + int64_t(kTcP) * kTcDLd * 2;
    const int64_t cs = int64_t(kTcP) * (cout_p + 4) * 4;
    bytes = chunks > cs ? chunks : cs;
  }
};

template <typename scalar_t, int NF, bool kPool = false>
__global__ void __launch_bounds__(kThreads)
    inverted_residual_eval_tc_kernel(const scalar_t* __restrict__ x, BlockWeights<scalar_t> w,
                                     scalar_t* __restrict__ y, const float* __restrict__ se_scale,
                                     float* __restrict__ tile_sums, BlockGeom g) {
#if defined(MK_CUDA_EMULATION) || !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  namespace wmma = nvcuda::wmma;
  using mma_t = typename pw_gemm::MmaType<scalar_t>::type;
  using frag_acc = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;
  using frag_a = wmma::fragment<wmma::matrix_a, 16, 16, 16, mma_t, wmma::row_major>;
  using frag_b = wmma::fragment<wmma::matrix_b, 16, 16, 16, mma_t, wmma::row_major>;
  const int cin_p = g.has_expand ? static_cast<int>(round_up(g.Cin, 16)) : 0;
  const TcSmem layout(g.halo_n, cin_p, kPool ? 0 : g.cout_p);
  const int halo_p = static_cast<int>(layout.halo_p);
  const int xld = static_cast<int>(layout.xld);
  unsigned char* smem = mk_ir_block_smem;
  scalar_t* xs = reinterpret_cast<scalar_t*>(smem);                    // [halo_p][xld]
  float* es = reinterpret_cast<float*>(smem + layout.es_off);         // [halo_p][kTcELd]
  scalar_t* ds = reinterpret_cast<scalar_t*>(smem + layout.ds_off);   // [kTcP][kTcDLd]
  const TileCtx<scalar_t> tc(g, x);
  const int t = threadIdx.x;
  const int warp = t / 32;
  const int m_tiles = halo_p / 16;
  const int n_tiles = static_cast<int>(g.cout_p / 16);

  frag_acc acc[NF];
#pragma unroll
  for (int f = 0; f < NF; ++f) wmma::fill_fragment(acc[f], 0.0f);
  if (g.has_expand) {  // the whole input halo, once: every chunk's expand reads it
    tc.stage_halo(xs, xld, halo_p, cin_p, 0, g.Cin);
    __syncthreads();
  }

  for (int64_t h0 = 0; h0 < g.Chid; h0 += kBH) {
    // ---- 1. E = the chunk of the expanded tensor over the halo
    if (g.has_expand) {
      frag_acc e[2][2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        wmma::fill_fragment(e[i][0], 0.0f);
        wmma::fill_fragment(e[i][1], 0.0f);
      }
      for (int k0 = 0; k0 < cin_p; k0 += 16) {
        frag_b b[2];
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          wmma::load_matrix_sync(b[j], reinterpret_cast<const mma_t*>(w.we16_t) + k0 * g.chid_p + h0 + 16 * j,
                                 static_cast<unsigned>(g.chid_p));
        }
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          const int m = warp + 8 * i;
          if (m >= m_tiles) break;  // warp-uniform
          frag_a a;
          wmma::load_matrix_sync(a, reinterpret_cast<const mma_t*>(xs) + m * 16 * xld + k0, xld);
          wmma::mma_sync(e[i][0], a, b[0], e[i][0]);
          wmma::mma_sync(e[i][1], a, b[1], e[i][1]);
        }
      }
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int m = warp + 8 * i;
        if (m >= m_tiles) break;
        wmma::store_matrix_sync(es + m * 16 * kTcELd, e[i][0], kTcELd, wmma::mem_row_major);
        wmma::store_matrix_sync(es + m * 16 * kTcELd + 16, e[i][1], kTcELd, wmma::mem_row_major);
      }
      __syncthreads();
      for (int idx = t; idx < g.halo_n * kBH; idx += kThreads) {
        const int hp = idx / kBH, h = idx % kBH;
        const int64_t hc = h0 + h;
        int ih, iw;
        float v = 0.0f;
        if (hc < g.Chid && tc.halo_pixel(hp, ih, iw)) {
          v = as_stored<scalar_t>(apply_activation(g.act, es[hp * kTcELd + h] + w.be[hc]));
        }
        es[hp * kTcELd + h] = v;
      }
    } else {
      tc.stage_halo(es, kTcELd, g.halo_n, kBH, h0, g.Chid);  // no expand conv: E is the input's halo
    }
    __syncthreads();

    // ---- 2. D = act(dw(E) + b_d), in the input dtype (scaled in squeeze-excite pass 2)
    tc.template depthwise<kTcP>(es, kTcELd, w.wd_t, w.bd, kPool ? nullptr : se_scale, h0, ds, kTcDLd);
    __syncthreads();

    if constexpr (kPool) {
      tc.pool_sums(ds, kTcDLd, h0, tile_sums);
    } else {
      // ---- 3. acc += D . W_p[chunk]^T on tensor cores
      const int wm = warp % 4;
#pragma unroll
      for (int kk = 0; kk < kBH; kk += 16) {
        frag_a a;
        wmma::load_matrix_sync(a, reinterpret_cast<const mma_t*>(ds) + wm * 16 * kTcDLd + kk, kTcDLd);
#pragma unroll
        for (int f = 0; f < NF; ++f) {
          const int nt = warp / 4 + 2 * f;
          if (nt >= n_tiles) break;  // warp-uniform
          frag_b b;
          wmma::load_matrix_sync(b, reinterpret_cast<const mma_t*>(w.wp16_t) + (h0 + kk) * g.cout_p + nt * 16,
                                 static_cast<unsigned>(g.cout_p));
          wmma::mma_sync(acc[f], a, b, acc[f]);
        }
      }
    }
    __syncthreads();  // E and D are rewritten by the next chunk
  }

  if constexpr (!kPool) {
    // ---- epilogue: the accumulators to shared memory, then + b_p (+ x), one store per value
    float* cs = reinterpret_cast<float*>(smem);
    const int ldc = static_cast<int>(g.cout_p) + 4;
    const int wm = warp % 4;
#pragma unroll
    for (int f = 0; f < NF; ++f) {
      const int nt = warp / 4 + 2 * f;
      if (nt >= n_tiles) break;
      wmma::store_matrix_sync(cs + wm * 16 * ldc + nt * 16, acc[f], ldc, wmma::mem_row_major);
    }
    __syncthreads();
    const int pq = g.TH * g.TW;
    const int64_t total = pq * g.Cout;
    for (int64_t e = t; e < total; e += kThreads) {
      const int q = static_cast<int>(g.channels_last ? e / g.Cout : e % pq);
      const int64_t co = g.channels_last ? e % g.Cout : e / pq;
      tc.store_output(y, q, co, cs[q * ldc + co] + w.bp[co]);
    }
  }
#endif
}

// The NF template argument (accumulator fragments per warp) the launcher instantiates for Cout <=
// kTcMaxCout output channels: ceil(ceil(Cout / 16) / 2) rounded up to 1, 2, 3 or 5.
inline int nf_for(int64_t Cout) {
  const int64_t nf = ceil_div(ceil_div(Cout, 16), 2);
  return nf <= 1 ? 1 : nf <= 2 ? 2 : nf <= 3 ? 3 : 5;
}

struct Tile {
  int th = 1, tw = 1, halo_w = 1, halo_n = 1;
  int64_t smem_bytes = 0;
};

// The largest candidate tile within P pixels, kMaxHalo halo pixels and the shared-memory limit;
// smem_bytes(halo_n) is the kernel's shared memory for a tile with that halo.
template <typename SmemBytes>
Tile pick_tile(const InvertedResidualArgs& a, int P, const SmemBytes& smem_bytes, int64_t smem_limit) {
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
    tl.smem_bytes = smem_bytes(tl.halo_n);
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

// Whether the tensor-core kernel takes the prepared block `a` on a device of compute capability
// `major`: float16/bfloat16, sm_80+, at most kTcMaxCout output channels.
inline bool tensor_cores_for(const InvertedResidualArgs& a, int major) {
  const auto dt = a.input.scalar_type();
  return (dt == at::kHalf || dt == at::kBFloat16) && major >= 8 && a.Cout <= kTcMaxCout;
}

// The kernel every launch of a block takes: its pointer, grid, dynamic shared memory and geometry.
template <typename scalar_t>
struct BlockKernel {
  using acc_t = at::opmath_type<scalar_t>;
  void (*kernel)(const scalar_t*, BlockWeights<scalar_t>, scalar_t*, const acc_t*, acc_t*, BlockGeom) = nullptr;
  BlockGeom g;
  int64_t blocks = 0;
  int64_t smem_bytes = 0;
};

// The geometry of `a` writing `out` with tile tl (chid_p, cout_p left 0).
inline BlockGeom block_geom(const InvertedResidualArgs& a, const at::Tensor& out, const Tile& tl) {
  BlockGeom g;
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
  return g;
}

template <typename scalar_t>
BlockKernel<scalar_t> finish_plan(const InvertedResidualArgs& a, const at::Tensor& out, const Tile& tl) {
  BlockKernel<scalar_t> k;
  k.g = block_geom(a, out, tl);
  k.blocks = a.N * k.g.tiles_h * k.g.tiles_w;
  TORCH_CHECK(k.blocks <= std::numeric_limits<int32_t>::max(), "inverted_residual_eval (CUDA): input too large (",
              k.blocks, " tiles)");
  k.smem_bytes = tl.smem_bytes;
  return k;
}

// inverted_residual_eval_kernel<scalar_t, NCO, kPool> for `a` writing `out` with `smem_limit` bytes
// of shared memory per block (the device's sharedMemPerBlockOptin).
template <typename scalar_t, int NCO, bool kPool>
BlockKernel<scalar_t> plan_cuda_cores(const InvertedResidualArgs& a, const at::Tensor& out, int64_t smem_limit) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int P = 4 * pixel_rows<NCO>();
  const auto bytes = [](int halo_n) { return smem_elems(halo_n, P) * static_cast<int64_t>(sizeof(acc_t)); };
  BlockKernel<scalar_t> k = finish_plan<scalar_t>(a, out, pick_tile(a, P, bytes, smem_limit));
  k.kernel = inverted_residual_eval_kernel<scalar_t, NCO, kPool>;
  return k;
}

// inverted_residual_eval_tc_kernel<scalar_t, NF, kPool> likewise (16-bit scalar_t).
template <typename scalar_t, int NF, bool kPool>
BlockKernel<scalar_t> plan_tensor_cores(const InvertedResidualArgs& a, const at::Tensor& out, int64_t smem_limit) {
  const int64_t cout_p = round_up(a.Cout, 16);
  const int64_t cin_p = a.has_expand() ? round_up(a.Cin, 16) : 0;
  const auto bytes = [&](int halo_n) { return TcSmem(halo_n, cin_p, kPool ? 0 : cout_p).bytes; };
  BlockKernel<scalar_t> k = finish_plan<scalar_t>(a, out, pick_tile(a, kTcP, bytes, smem_limit));
  k.g.chid_p = round_up(a.Chid, kBH);
  k.g.cout_p = cout_p;
  if constexpr (std::is_same_v<scalar_t, at::Half> || std::is_same_v<scalar_t, at::BFloat16>) {
    k.kernel = inverted_residual_eval_tc_kernel<scalar_t, NF, kPool>;
  } else {
    TORCH_CHECK(false, "inverted_residual_eval (CUDA): tensor cores take float16 or bfloat16");
  }
  return k;
}

// The two kernels of the op: `main` (the block; pass 2 with a squeeze-excite) and `pool` (pass 1,
// planned only when the block has a squeeze-excite): the tensor-core kernel where
// tensor_cores_for(a, major), else the CUDA-core one, with the template argument for a.Cout
// (nf_for, nco_for). The launcher and the emulation alike.
template <typename scalar_t>
struct BlockKernels {
  BlockKernel<scalar_t> main, pool;
  bool tensor_cores = false;
};

template <typename scalar_t>
BlockKernels<scalar_t> plan_block(const InvertedResidualArgs& a, const at::Tensor& out, int64_t smem_limit,
                                  int major) {
  BlockKernels<scalar_t> ks;
  ks.tensor_cores = tensor_cores_for(a, major);
  if (ks.tensor_cores) {
    switch (nf_for(a.Cout)) {
      case 1: ks.main = plan_tensor_cores<scalar_t, 1, false>(a, out, smem_limit); break;
      case 2: ks.main = plan_tensor_cores<scalar_t, 2, false>(a, out, smem_limit); break;
      case 3: ks.main = plan_tensor_cores<scalar_t, 3, false>(a, out, smem_limit); break;
      default: ks.main = plan_tensor_cores<scalar_t, 5, false>(a, out, smem_limit);
    }
    if (a.has_se()) ks.pool = plan_tensor_cores<scalar_t, 1, true>(a, out, smem_limit);
  } else {
    switch (nco_for(a.Cout)) {
      case 1: ks.main = plan_cuda_cores<scalar_t, 1, false>(a, out, smem_limit); break;
      case 2: ks.main = plan_cuda_cores<scalar_t, 2, false>(a, out, smem_limit); break;
      case 4: ks.main = plan_cuda_cores<scalar_t, 4, false>(a, out, smem_limit); break;
      default: ks.main = plan_cuda_cores<scalar_t, 8, false>(a, out, smem_limit);
    }
    if (a.has_se()) ks.pool = plan_cuda_cores<scalar_t, 1, true>(a, out, smem_limit);
  }
  return ks;
}

// The 16-bit weights of the tensor-core kernel: W_e^T (round_up(Cin, 16), chid_p) and W_p^T
// (chid_p, cout_p), zero-padded, in the input dtype (exact: the op's weights arrive in it).
inline std::pair<at::Tensor, at::Tensor> tensor_core_weights(const InvertedResidualArgs& a, const BlockGeom& g) {
  const auto opts = a.input.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor we = at::zeros({round_up(std::max<int64_t>(a.Cin, 1), 16), g.chid_p}, opts);
  at::Tensor wp = at::zeros({g.chid_p, g.cout_p}, opts);
  if (a.has_expand()) we.narrow(0, 0, a.Cin).narrow(1, 0, a.Chid).copy_(a.expand_weight.t());
  wp.narrow(0, 0, a.Chid).narrow(1, 0, a.Cout).copy_(a.project_weight.t());
  return {we, wp};
}

// The kernels' view of the prepared block's weights: wd_t, wp_t the launcher's transposes; we16,
// wp16 tensor_core_weights' copies, or undefined for the CUDA-core kernel.
template <typename scalar_t>
BlockWeights<scalar_t> block_weights(const InvertedResidualArgs& a, const at::Tensor& wd_t, const at::Tensor& wp_t,
                                     const at::Tensor& we16, const at::Tensor& wp16) {
  using acc_t = at::opmath_type<scalar_t>;
  return {a.has_expand() ? a.expand_weight.data_ptr<acc_t>() : nullptr,
          a.has_expand() ? a.expand_bias.data_ptr<acc_t>() : nullptr,
          wd_t.data_ptr<acc_t>(),
          a.dw_bias.data_ptr<acc_t>(),
          wp_t.data_ptr<acc_t>(),
          a.project_bias.data_ptr<acc_t>(),
          we16.defined() ? we16.data_ptr<scalar_t>() : nullptr,
          wp16.defined() ? wp16.data_ptr<scalar_t>() : nullptr};
}

// The excite step's parameters of a squeeze-excite block (a.has_se()).
template <typename acc_t>
se::ExciteParams<acc_t> excite_params(const InvertedResidualArgs& a) {
  TORCH_CHECK_VALUE(se::excite_sizes_fit(a.N, a.Chid, a.S), "input: the excite step takes int sizes, got N = ", a.N,
                    ", ", a.Chid, " hidden and ", a.S, " squeeze channels");
  return {a.se_w1.data_ptr<acc_t>(), a.se_b1.data_ptr<acc_t>(), a.se_w2.data_ptr<acc_t>(), a.se_b2.data_ptr<acc_t>(),
          static_cast<int>(a.N), static_cast<int>(a.Chid), static_cast<int>(a.S), a.se_act, a.se_scale_act};
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

// Accumulation-dtype scratch of a squeeze-excite block whose pass 1 runs `pool`: tile sums
// (blocks, Chid), pooled and scale (N, Chid), the excite's hidden layer (N, S).
template <typename scalar_t>
int64_t se_scratch_elems(const InvertedResidualArgs& a, const BlockKernel<scalar_t>& pool) {
  return pool.blocks * a.Chid + a.N * (2 * a.Chid + a.S);
}

// The op's launches through launch(kernel, grid, block, dynamic_smem_bytes, args...) (on a stream in
// inverted_residual.cu, on the host in the emulation). Without a squeeze-excite (se == nullptr):
// ks.main. With one: pass 1 (ks.pool), the merge of its tile sums (ir_block_pool_kernel),
// squeeze_excite's excite GEMMs (excite_gemm.cuh: 2 launches) and pass 2 (ks.main scaling D);
// `scratch` holds se_scratch_elems(a, ks.pool) elements. Five launches in all, each reading what
// the last wrote.
template <typename scalar_t, typename Launch>
void forward_steps(const InvertedResidualArgs& a, const BlockKernels<scalar_t>& ks, const BlockWeights<scalar_t>& w,
                   const se::ExciteParams<at::opmath_type<scalar_t>>* se_params, const scalar_t* x, scalar_t* y,
                   at::opmath_type<scalar_t>* scratch, const Launch& launch) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t* scale = nullptr;
  if (se_params != nullptr) {
    const BlockKernel<scalar_t>& pool = ks.pool;
    acc_t* tile_sums = scratch;
    acc_t* pooled = tile_sums + pool.blocks * a.Chid;
    acc_t* excite_scale = pooled + a.N * a.Chid;
    acc_t* hidden = excite_scale + a.N * a.Chid;
    launch(pool.kernel, dim3(static_cast<unsigned>(pool.blocks)), dim3(kThreads), static_cast<size_t>(pool.smem_bytes),
           x, w, y, static_cast<const acc_t*>(nullptr), tile_sums, pool.g);
    const int64_t tiles = static_cast<int64_t>(pool.g.tiles_h) * pool.g.tiles_w;
    launch(ir_block_pool_kernel<acc_t>, dim3(static_cast<unsigned>(ceil_div(a.N * a.Chid, kThreads))),
           dim3(kThreads), size_t(0), static_cast<const acc_t*>(tile_sums), pooled, a.N, tiles, a.Chid,
           static_cast<acc_t>(1.0 / static_cast<double>(a.OH * a.OW)));
    se::excite_forward(*se_params, static_cast<const acc_t*>(pooled), hidden, excite_scale, launch);
    scale = excite_scale;
  }
  launch(ks.main.kernel, dim3(static_cast<unsigned>(ks.main.blocks)), dim3(kThreads),
         static_cast<size_t>(ks.main.smem_bytes), x, w, y, scale, static_cast<acc_t*>(nullptr), ks.main.g);
}

}  // namespace ir_block
}  // namespace cuda
}  // namespace mobilenet_kernels
