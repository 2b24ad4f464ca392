// inverted_residual_eval, CUDA (sm_80+): a whole MobileNet inverted-residual block in eval mode with
// every BatchNorm folded in (checks and geometry: csrc/inverted_residual.h). The CUDA twin of the
// Triton kernel (mobilenet_kernels/triton/inverted_residual.py), the same algorithm (a tile of
// output pixels x all output channels, hidden channels in chunks); here the expanded tile lives in
// shared memory instead of a cached scratch, tiles shrink as the output channels grow (the
// register budget of the project accumulators), and the expanded tensor is rounded as stored.
//
// What is fused: y = project(act(dw(act(expand(x) + b_e)) + b_d)) + b_p [+ x]: the 1x1 expand GEMM
//   with its bias and activation, the k x k depthwise conv (stride, dilation, "same" zero padding)
//   with its bias and activation, the 1x1 project GEMM with its bias, and the residual add. The
//   expanded tensor (t times the input's channels) and the depthwise output never reach HBM: per
//   image, the input is read about once (plus the halo rows) and the output written once.
// Structure: one block of 256 threads per tile of TH x TW output pixels of one image and all the
//   output channels; it walks the hidden channels in chunks of kBH = 32:
//     1. expand: the tile's input halo, ((TH - 1) s + (k - 1) d + 1) rows by as many columns
//        (HN <= kMaxHalo pixels), times the chunk's rows of W_e, kBK input channels at a time
//        staged in shared memory (x halo and W_e^T slices); each thread holds up to 8 halo pixels
//        x 4 hidden channels in registers (only the rows the halo has are computed). Then + b_e, act, rounded to the input dtype (as the
//        op-by-op path stores the expanded tensor), into the shared halo tile E. Halo pixels
//        outside the image are 0: the dw conv's zero padding (not act(b_e)). Without an expand
//        conv, E is the input's halo itself.
//     2. depthwise: a thread owns one hidden channel of up to 8 output pixels; the taps read E
//        (the halo makes every tap exist: no bounds checks) and the tap-major weights (a warp
//        reads 32 consecutive channels), + b_d, act, rounded to the input dtype (as stored op by
//        op), into the shared tile D (P x kBH).
//     3. project: acc[p][co] += D[p][h] W_p[co][h] over the chunk; a thread owns PI pixels x NCO
//        output channels (co = lane + 64 j: a warp reads 32 consecutive W_p^T entries), kept in
//        registers across all chunks.
//   Then + b_p (+ the input at the output pixel) and one store per output value.
// Tiles: the largest of 8x8, 4x8, 4x4, 2x4, 2x2, 1x2, 1x1 (clipped to the image) with at most
//   P = 4 PI pixels (PI = 16 up to 128 output channels, 32 / NCO beyond: at most 32 project
//   accumulators per thread), a halo of at most kMaxHalo pixels, and shared memory within the
//   device's per-block limit.
// Arithmetic: CUDA-core FMAs in float (double for float64); no tensor cores. The weights arrive in
//   the accumulation dtype (prepare_inverted_residual).
// Layouts: NCHW or channels_last (any other strides are made dense first), through (n, c, h, w)
//   strides; the halo loads map consecutive threads to consecutive channels (channels_last) or
//   consecutive pixels (NCHW), so both read whole lines; the output store is coalesced along the
//   channels, so NCHW stores are strided (32 B sectors per warp) — a known cost of that layout.
// Determinism: every output value is computed by one thread in an order fixed by the shape; no
//   atomics.
// Indexing: int64 element offsets; spatial sizes in int.
// Limits: inference only (no autograd formula); no squeeze-excite (its pooling needs the whole dw
//   output: such blocks run op by op); output channels up to 512 (MobileNets have at most 320);
//   the halo rows are expanded once per tile (1.56x the expand FLOPs for 8x8 tiles at k3 s1);
//   W_p and W_e are re-read from L2 by every tile. Never run on a GPU yet at the commit that
//   added it: the CUDA tests of python_tests/test_inverted_residual_eval.py are its check.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>

#include "inverted_residual.h"
#include "mk_cuda.cuh"

namespace mobilenet_kernels {
namespace {

using namespace cuda;  // apply_activation, ceil_div, check_cuda (mk_cuda.cuh)

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

template <typename scalar_t, int NCO>
__global__ void __launch_bounds__(kThreads)
    inverted_residual_eval_kernel(const scalar_t* __restrict__ x,                        // (N, Cin, H, W)
                                  const at::opmath_type<scalar_t>* __restrict__ we,      // (Chid, Cin) or null
                                  const at::opmath_type<scalar_t>* __restrict__ be,      // (Chid,) or null
                                  const at::opmath_type<scalar_t>* __restrict__ wd_t,    // (k * k, Chid)
                                  const at::opmath_type<scalar_t>* __restrict__ bd,      // (Chid,)
                                  const at::opmath_type<scalar_t>* __restrict__ wp_t,    // (Chid, Cout)
                                  const at::opmath_type<scalar_t>* __restrict__ bp,      // (Cout,)
                                  scalar_t* __restrict__ y,                              // (N, Cout, OH, OW)
                                  BlockGeom g) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int PI = pixel_rows<NCO>();
  constexpr int P = 4 * PI;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* xs = reinterpret_cast<acc_t*>(smem_raw);  // [halo_n][kXLd]
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
        }
        ds[q * kBH + h] = v;
      }
    }
    __syncthreads();

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

struct Tile {
  int th = 1, tw = 1, halo_w = 1, halo_n = 1;
  int64_t smem_bytes = 0;
};

// The largest candidate tile within P pixels, kMaxHalo halo pixels and the shared-memory limit.
Tile pick_tile(const InvertedResidualArgs& a, int P, int64_t acc_bytes, int64_t smem_limit) {
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

template <typename scalar_t, int NCO>
void launch(const InvertedResidualArgs& a, at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int P = 4 * pixel_rows<NCO>();
  const auto* props = at::cuda::getCurrentDeviceProperties();
  const Tile tl = pick_tile(a, P, sizeof(acc_t), static_cast<int64_t>(props->sharedMemPerBlockOptin));
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
  const int64_t blocks = a.N * g.tiles_h * g.tiles_w;
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "inverted_residual_eval (CUDA): input too large (",
              blocks, " tiles)");
  const at::Tensor wp_t = a.project_weight.t().contiguous();  // (Chid, Cout): rows read along Cout
  const at::Tensor wd_t = a.dw_weight.t().contiguous();       // (k * k, Chid): taps read along Chid
  auto kernel = inverted_residual_eval_kernel<scalar_t, NCO>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(tl.smem_bytes)));
  kernel<<<static_cast<unsigned>(blocks), kThreads, static_cast<size_t>(tl.smem_bytes),
           at::cuda::getCurrentCUDAStream()>>>(
      a.input.data_ptr<scalar_t>(), a.has_expand() ? a.expand_weight.data_ptr<acc_t>() : nullptr,
      a.has_expand() ? a.expand_bias.data_ptr<acc_t>() : nullptr, wd_t.data_ptr<acc_t>(),
      a.dw_bias.data_ptr<acc_t>(), wp_t.data_ptr<acc_t>(), a.project_bias.data_ptr<acc_t>(),
      out.data_ptr<scalar_t>(), g);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor inverted_residual_eval_cuda(const at::Tensor& input, const c10::optional<at::Tensor>& expand_weight,
                                       const c10::optional<at::Tensor>& expand_bias, const at::Tensor& dw_weight,
                                       const at::Tensor& dw_bias, const at::Tensor& project_weight,
                                       const at::Tensor& project_bias, int64_t stride, int64_t dilation,
                                       c10::string_view activation, bool residual) {
  check_cuda(input);
  const c10::cuda::CUDAGuard guard(input.device());
  const InvertedResidualArgs a =
      prepare_inverted_residual(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias,
                                stride, dilation, std::string(activation), residual);
  TORCH_CHECK_VALUE(a.Cout <= 512, "project_weight: the CUDA whole-block kernel takes at most 512 output channels, got ",
                    a.Cout);
  TORCH_CHECK_VALUE(a.H <= kSpatialLimit && a.W <= kSpatialLimit, "input: the CUDA whole-block kernel takes H and W up to ",
                    kSpatialLimit, ", got ", a.H, " x ", a.W);
  at::Tensor out = at::empty(a.output_sizes(), input.options().memory_format(a.format));
  if (out.numel() == 0) return out;
  const int64_t groups = ceil_div(a.Cout, 64);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "inverted_residual_eval_cuda", [&] {
    if (groups == 1) {
      launch<scalar_t, 1>(a, out);
    } else if (groups == 2) {
      launch<scalar_t, 2>(a, out);
    } else if (groups <= 4) {
      launch<scalar_t, 4>(a, out);
    } else {
      launch<scalar_t, 8>(a, out);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mobilenet_kernels, CUDA, m) { m.impl("inverted_residual_eval", &inverted_residual_eval_cuda); }

}  // namespace mobilenet_kernels
