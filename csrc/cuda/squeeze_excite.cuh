// squeeze_excite's CUDA kernels and the launch sequence of its forward and backward, for
// squeeze_excite.cu (the ops) and the host emulation (python_tests/cuda_emulation/se_host.cpp),
// which runs this very sequence on the CPU. Three stages (math in csrc/squeeze_excite.h):
//   1. reduce:  sums over HW per (n, c): of x (forward; times 1/HW: pooled, the op's second
//               output) or of g * x (backward: ds). channels_last: a block (up to 1024 threads)
//               covers (n, a chunk of channel vectors), threadIdx.x owns a channel vector,
//               threadIdx.y splits the pixels (several pixels' loads in flight a thread), a fixed
//               shared-memory tree over threadIdx.y combines them. NCHW: a warp per (n, c) row of
//               HW contiguous elements, a fixed shuffle tree.
//   2. excite:  both 1x1 layers (and, backward, their gradients) as small tiled GEMMs over the N
//               images' (N, C) / (N, S) vectors with the activations in their epilogues, two
//               launches forward, six backward (excite_gemm.cuh).
//   3. scale:   y = x * s[n, c] (forward), grad_x = g * s[n, c] + dpooled[n, c] / HW (backward), a
//               flat grid-stride loop; (n, c) of an element from a multiply-high division.
// A launch goes through `launch(kernel, grid, block, dynamic_smem_bytes, args...)`: on a stream in
// squeeze_excite.cu, emulated in se_host.cpp.
#pragma once

#include <ATen/OpMathType.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "excite_gemm.cuh"
#include "mk_cuda.cuh"

namespace mobilenet_kernels {
namespace cuda {
namespace se {

constexpr int kPassThreads = 256;  // threads per block: NCHW reduce and scale kernels
constexpr int kWarps = kPassThreads / 32;
constexpr int kReduceThreads = 1024;  // at most, channels_last reduce: one block per (image, channel chunk)
constexpr int64_t kMaxGridX = std::numeric_limits<int32_t>::max();

// Lane 0 returns the sum of v over the warp (fixed tree); other lanes return partial sums.
template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}


// ---------------------------------------------------------------------------------------------
// Stage 1: out[n * C + c] = mul * sum_p term(n, c, p), term = a (kProduct false) or a * b.

// channels_last: block (tx channel vectors) x (ty pixel lanes, a power of two); blockIdx.x is
// n * chunks + chunk. Thread (x, y) adds pixels y, y + ty, ... in order, then a fixed tree over y.
template <typename scalar_t, typename acc_t, int VEC, bool kProduct>
__global__ void __launch_bounds__(kReduceThreads)
    squeeze_excite_reduce_nhwc_kernel(const scalar_t* __restrict__ a,  // (N, HW, C)
                                      const scalar_t* __restrict__ b,  // (N, HW, C), kProduct only
                                      acc_t* __restrict__ out,         // (N, C)
                                      int64_t HW, int64_t C, unsigned chunks, acc_t mul) {
  __shared__ acc_t red[kReduceThreads * VEC];
  const unsigned n = blockIdx.x / chunks;
  const unsigned chunk = blockIdx.x - n * chunks;
  const int64_t c0 = (static_cast<int64_t>(chunk) * blockDim.x + threadIdx.x) * VEC;
  const bool active = c0 < C;  // no early return: every thread joins the tree
  acc_t acc[VEC];
#pragma unroll
  for (int j = 0; j < VEC; ++j) acc[j] = acc_t(0);
  if (active) {  // 64 bytes of loads in flight a thread (for_rows_in_flight), added in pixel order
    const int64_t base = static_cast<int64_t>(n) * HW * C + c0;
    struct Pixel {
      Vec<scalar_t, VEC> a, b;
    };
    for_rows_in_flight<kProduct ? 2 : 4>(
        threadIdx.y, HW, blockDim.y,
        [&](int64_t p) {
          Pixel px;
          px.a = load_raw_vec<scalar_t, VEC>(a + base + p * C);
          if constexpr (kProduct) px.b = load_raw_vec<scalar_t, VEC>(b + base + p * C);
          return px;
        },
        [&](int64_t, const Pixel& px) {
#pragma unroll
          for (int j = 0; j < VEC; ++j) {
            const acc_t va = static_cast<acc_t>(px.a.v[j]);
            if constexpr (kProduct) {
              acc[j] += va * static_cast<acc_t>(px.b.v[j]);
            } else {
              acc[j] += va;
            }
          }
        });
  }
  block_sum_store<acc_t, VEC>(acc, red, active, out, static_cast<int64_t>(n) * C + c0, mul);
}

// NCHW: warp w of block b reduces row b * kWarps + w (row = n * C + c, its HW elements contiguous);
// lane l adds vectors l, l + 32, ... in order, then a fixed shuffle tree.
template <typename scalar_t, typename acc_t, int VEC, bool kProduct>
__global__ void __launch_bounds__(kPassThreads)
    squeeze_excite_reduce_nchw_kernel(const scalar_t* __restrict__ a,  // (N * C, HW)
                                      const scalar_t* __restrict__ b,  // (N * C, HW), kProduct only
                                      acc_t* __restrict__ out,         // (N * C,)
                                      int64_t rows, int64_t HW, acc_t mul) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;  // warp-uniform: the shuffles below involve this warp only
  const int64_t base = row * HW;
  acc_t acc = acc_t(0);
  for (int64_t v = lane; v < HW / VEC; v += 32) {
    acc_t va[VEC];
    load_vec<VEC>(a + base + v * VEC, va);
    if constexpr (kProduct) {
      acc_t vb[VEC];
      load_vec<VEC>(b + base + v * VEC, vb);
#pragma unroll
      for (int j = 0; j < VEC; ++j) acc += va[j] * vb[j];
    } else {
#pragma unroll
      for (int j = 0; j < VEC; ++j) acc += va[j];
    }
  }
  acc = warp_sum(acc);
  if (lane == 0) out[row] = acc * mul;
}

// ---------------------------------------------------------------------------------------------
// Stage 3: out = in * scale[q] (+ shift[q] with kBackward), q = n * C + c of the element. A vector
// never straddles two (n, c) rows (NCHW: HW % VEC == 0) or two pixels (channels_last: C % VEC == 0).
template <typename scalar_t, typename acc_t, int VEC, bool kChannelsLast, bool kBackward>
__global__ void __launch_bounds__(kPassThreads)
    squeeze_excite_scale_kernel(const scalar_t* __restrict__ in,  // x or grad_output, (N, C, H, W) dense
                                scalar_t* __restrict__ out,       // y or grad_input, same layout
                                const acc_t* __restrict__ scale,  // (N, C)
                                const acc_t* __restrict__ shift,  // (N, C), kBackward only
                                int64_t vectors, int64_t C, Divider div_c, Divider div_hw) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < vectors; v += stride) {
    const int64_t i = v * VEC;
    int64_t q;
    if constexpr (kChannelsLast) {
      const int64_t m = div_c.div(i);  // pixel row n * HW + hw
      q = div_hw.div(m) * C + (i - m * C);
    } else {
      q = div_hw.div(i);
    }
    const Vec<scalar_t, VEC> x = *reinterpret_cast<const Vec<scalar_t, VEC>*>(in + i);
    Vec<scalar_t, VEC> y;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const int64_t qj = kChannelsLast ? q + j : q;
      acc_t r = static_cast<acc_t>(x.v[j]) * scale[qj];
      if constexpr (kBackward) r += shift[qj];
      y.v[j] = static_cast<scalar_t>(r);
    }
    *reinterpret_cast<Vec<scalar_t, VEC>*>(out + i) = y;
  }
}

// ---------------------------------------------------------------------------------------------
// The launch sequence. Every step expects N * C > 0 (HW >= 1 always).

// out[n, c] = mul * sum_hw a (kProduct false) or a * b.
template <typename scalar_t, bool kProduct, typename Launch>
void reduce(const ChannelLayout& L, const scalar_t* a, const scalar_t* b, at::opmath_type<scalar_t>* out,
            at::opmath_type<scalar_t> mul, const Launch& launch) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kVec = 16 / sizeof(scalar_t);
  const int vec = vector_width<scalar_t>(L.channels_last ? L.C : L.HW, {a, kProduct ? b : a});
  const auto run = [&](auto vec_tag) {
    constexpr int V = decltype(vec_tag)::value;
    if (L.channels_last) {
      const int64_t cvecs = L.C / V;
      const int64_t tx = even_lanes(cvecs, 32);  // <= 32 channel vectors per block
      int64_t ty = 1;  // pixel lanes: as many as fit, but not past the first power of two >= HW
      while (ty * 2 * tx <= kReduceThreads && ty < L.HW) ty *= 2;
      const int64_t chunks = ceil_div(cvecs, tx);
      TORCH_CHECK(L.N * chunks <= kMaxGridX, "squeeze_excite (CUDA): too many images or channels for one launch");
      launch(squeeze_excite_reduce_nhwc_kernel<scalar_t, acc_t, V, kProduct>, dim3(static_cast<unsigned>(L.N * chunks)),
             dim3(static_cast<unsigned>(tx), static_cast<unsigned>(ty)), 0, a, b, out, L.HW, L.C,
             static_cast<unsigned>(chunks), mul);
    } else {
      const int64_t rows = L.N * L.C;
      const int64_t blocks = ceil_div(rows, kWarps);
      TORCH_CHECK(blocks <= kMaxGridX, "squeeze_excite (CUDA): too many (n, c) rows for one launch");
      launch(squeeze_excite_reduce_nchw_kernel<scalar_t, acc_t, V, kProduct>, dim3(static_cast<unsigned>(blocks)),
             dim3(kPassThreads), 0, a, b, out, rows, L.HW, mul);
    }
  };
  if (vec == kVec) {
    run(std::integral_constant<int, kVec>{});
  } else {
    run(std::integral_constant<int, 1>{});
  }
}

// out = in * scale (+ shift, backward) per (n, c); `resident` blocks of kPassThreads fill the GPU.
template <typename scalar_t, bool kBackward, typename Launch>
void scale_pass(const ChannelLayout& L, const scalar_t* in, scalar_t* out, const at::opmath_type<scalar_t>* scale,
                const at::opmath_type<scalar_t>* shift, int64_t resident, const Launch& launch) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kVec = 16 / sizeof(scalar_t);
  const bool vec = vector_width<scalar_t>(L.channels_last ? L.C : L.HW, {in, out}) == kVec;
  const auto run = [&](auto vec_tag, auto cl_tag) {
    constexpr int V = decltype(vec_tag)::value;
    const int64_t vectors = L.N * L.C * L.HW / V;
    const int64_t blocks = std::max<int64_t>(1, std::min(ceil_div(vectors, kPassThreads), resident));
    launch(squeeze_excite_scale_kernel<scalar_t, acc_t, V, decltype(cl_tag)::value, kBackward>,
           dim3(static_cast<unsigned>(blocks)), dim3(kPassThreads), 0, in, out, scale, shift, vectors, L.C,
           make_divider(L.C), make_divider(L.HW));
  };
  const auto with_layout = [&](auto vec_tag) {
    if (L.channels_last) {
      run(vec_tag, std::true_type{});
    } else {
      run(vec_tag, std::false_type{});
    }
  };
  if (vec) {
    with_layout(std::integral_constant<int, kVec>{});
  } else {
    with_layout(std::integral_constant<int, 1>{});
  }
}

// Elements of accumulation-dtype scratch the steps need: forward h (N, S) and scale (N, C);
// backward ds, dp_hw, scale, dz2 (N, C) and z1, h, dz1 (N, S).
inline int64_t forward_scratch(const ChannelLayout& L, int64_t S) { return L.N * (S + L.C); }
inline int64_t backward_scratch(const ChannelLayout& L, int64_t S) { return L.N * (4 * L.C + 3 * S); }

// The forward: pooled (N, C) and y = x * scale_act(fc2(act(fc1(pooled)))).
template <typename scalar_t, typename Launch>
void forward_steps(const ChannelLayout& L, const ExciteParams<at::opmath_type<scalar_t>>& p, const scalar_t* x,
                   scalar_t* y, at::opmath_type<scalar_t>* pooled, at::opmath_type<scalar_t>* scratch,
                   int64_t resident, const Launch& launch) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t* h = scratch;
  acc_t* scale = h + L.N * p.S;
  reduce<scalar_t, false>(L, x, nullptr, pooled, static_cast<acc_t>(1.0 / static_cast<double>(L.HW)), launch);
  excite_forward(p, pooled, h, scale, launch);
  scale_pass<scalar_t, false>(L, x, y, scale, nullptr, resident, launch);
}

// The backward: grad_input = g * s + dpooled / HW and the parameter gradients (accumulation dtype).
template <typename scalar_t, typename Launch>
void backward_steps(const ChannelLayout& L, const ExciteParams<at::opmath_type<scalar_t>>& p, const scalar_t* g,
                    const scalar_t* x, const at::opmath_type<scalar_t>* pooled, scalar_t* grad_input,
                    const ExciteParamGrads<at::opmath_type<scalar_t>>& grads, at::opmath_type<scalar_t>* scratch,
                    int64_t resident, const Launch& launch) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t NC = L.N * L.C, NS = L.N * p.S;
  acc_t* ds = scratch;
  acc_t* dp_hw = ds + NC;
  const ExciteBwdScratch<acc_t> t{/*z1=*/ds + 4 * NC, /*h=*/ds + 4 * NC + NS, /*dz1=*/ds + 4 * NC + 2 * NS,
                                  /*scale=*/ds + 2 * NC, /*dz2=*/ds + 3 * NC};
  reduce<scalar_t, true>(L, g, x, ds, acc_t(1), launch);
  excite_backward(p, pooled, ds, static_cast<acc_t>(1.0 / static_cast<double>(L.HW)), t, dp_hw, grads, launch);
  scale_pass<scalar_t, true>(L, g, grad_input, t.scale, dp_hw, resident, launch);
}

}  // namespace se
}  // namespace cuda
}  // namespace mobilenet_kernels
