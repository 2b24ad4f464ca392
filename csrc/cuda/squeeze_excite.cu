// squeeze_excite, CUDA kernels (sm_80+).
//
// Three stages, the same as the CPU and Triton backends (math in csrc/squeeze_excite.h):
//   1. reduce:  sums over HW per (n, c): of x (forward; times 1/HW: pooled, the op's second
//               output) or of g * x (backward: ds). channels_last: a block (up to 1024 threads)
//               covers (n, a chunk of channel vectors), threadIdx.x owns a channel vector,
//               threadIdx.y splits the pixels, a fixed shared-memory tree over threadIdx.y combines
//               them. NCHW: a warp per (n, c) row of HW contiguous elements, a fixed shuffle tree.
//   2. excite:  both 1x1 layers (and, backward, their gradients) as small tiled GEMMs over the N
//               images' (N, C) / (N, S) vectors with the activations in their epilogues, two
//               launches forward, six backward (excite_gemm.cuh): dz2 = ds * scale_act'(z2),
//               dz1 = (dz2 W2) * act'(z1), dpooled / HW = (dz1 W1) / HW, and the parameter
//               gradients (dz2^T h, dz1^T pooled, the bias gradients as a column of ones) in the
//               parameters' accumulation dtype, each sum over k in order, no atomics.
//   3. scale:   y = x * s[n, c] (forward), grad_x = g * s[n, c] + dpooled[n, c] / HW (backward), a
//               flat grid-stride loop; (n, c) of an element from a multiply-high division.
// Layouts: NCHW and channels_last, both native; output in the input's memory format. 16-byte
//          vector loads when the innermost extent (C for channels_last, HW for NCHW) is a multiple
//          of the vector width and the pointers are 16-byte aligned, else a scalar path.
// dtypes: float64, float32, float16, bfloat16; parameters and every intermediate in the
//         accumulation dtype (float, double for float64); y and grad_x rounded once.
// Indexing: int64 memory offsets. Determinism: every sum has a fixed order that depends on the
//           shape (and vector path) only; no atomics.
// Activations: a uniform runtime switch in the excite step's epilogues (N (S + C) evaluations), with
//              the formulas of mk_common.h written without IEEE division (x / 6 as x * (1/6),
//              sigmoid through an approximate reciprocal refined to within an ulp or two).
// Limits: N, C, S below 2^31 (int indexing in the excite step). Stage 1 has N * ceil(C / (32 VEC))
//         blocks (channels_last) or N * C warps (NCHW), so small batches of large images use few
//         SMs.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <initializer_list>
#include <limits>

#include "excite_gemm.cuh"
#include "mk_cuda.cuh"
#include "squeeze_excite.h"

namespace mobilenet_kernels {
namespace {

constexpr int kThreads = 256;  // threads per block: NCHW reduce and scale kernels
constexpr int kWarps = kThreads / 32;
constexpr int kReduceThreads = 1024;  // at most, channels_last reduce: one block per (image, channel chunk)
constexpr int64_t kMaxGridX = std::numeric_limits<int32_t>::max();

using namespace cuda;  // Vec, Divider, load_vec, recip_ge1, the activations (mk_cuda.cuh); se: the excite step

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
  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
#pragma unroll
  for (int j = 0; j < VEC; ++j) red[tid * VEC + j] = acc[j];
  __syncthreads();
  for (int s = blockDim.y / 2; s > 0; s /= 2) {
    if (threadIdx.y < s) {
      const int o = tid + s * blockDim.x;  // thread (x, y + s)
#pragma unroll
      for (int j = 0; j < VEC; ++j) red[tid * VEC + j] += red[o * VEC + j];
    }
    __syncthreads();
  }
  if (threadIdx.y == 0 && active) {
#pragma unroll
    for (int j = 0; j < VEC; ++j) out[static_cast<int64_t>(n) * C + c0 + j] = red[tid * VEC + j] * mul;
  }
}

// NCHW: warp w of block b reduces row b * kWarps + w (row = n * C + c, its HW elements contiguous);
// lane l adds vectors l, l + 32, ... in order, then a fixed shuffle tree.
template <typename scalar_t, typename acc_t, int VEC, bool kProduct>
__global__ void __launch_bounds__(kThreads)
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
__global__ void __launch_bounds__(kThreads)
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
// Launchers. Every launcher expects N * C > 0 (HW >= 1 always).

template <typename scalar_t, int VEC, bool kProduct>
void launch_reduce_vec(const ChannelLayout& L, const scalar_t* a, const scalar_t* b, at::opmath_type<scalar_t>* out,
                       at::opmath_type<scalar_t> mul) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto stream = at::cuda::getCurrentCUDAStream();
  if (L.channels_last) {
    const int64_t cvecs = L.C / VEC;
    const int64_t tx = ceil_div(cvecs, ceil_div(cvecs, 32));  // <= 32, channel vectors spread evenly
    int64_t ty = 1;
    while (ty * 2 * tx <= kReduceThreads && ty < L.HW) ty *= 2;
    const int64_t chunks = ceil_div(cvecs, tx);
    TORCH_CHECK(L.N * chunks <= kMaxGridX, "squeeze_excite (CUDA): too many images or channels for one launch");
    squeeze_excite_reduce_nhwc_kernel<scalar_t, acc_t, VEC, kProduct>
        <<<static_cast<unsigned>(L.N * chunks), dim3(static_cast<unsigned>(tx), static_cast<unsigned>(ty)), 0,
           stream>>>(a, b, out, L.HW, L.C, static_cast<unsigned>(chunks), mul);
  } else {
    const int64_t rows = L.N * L.C;
    const int64_t blocks = ceil_div(rows, kWarps);
    TORCH_CHECK(blocks <= kMaxGridX, "squeeze_excite (CUDA): too many (n, c) rows for one launch");
    squeeze_excite_reduce_nchw_kernel<scalar_t, acc_t, VEC, kProduct>
        <<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(a, b, out, rows, L.HW, mul);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// out[n, c] = mul * sum_hw a (kProduct false) or a * b.
template <typename scalar_t, bool kProduct>
void launch_reduce(const ChannelLayout& L, const scalar_t* a, const scalar_t* b, at::opmath_type<scalar_t>* out,
                   at::opmath_type<scalar_t> mul) {
  constexpr int kVec = 16 / sizeof(scalar_t);
  const int vec = vector_width<scalar_t>(L.channels_last ? L.C : L.HW, {a, kProduct ? b : a});
  if (vec == kVec) {
    launch_reduce_vec<scalar_t, kVec, kProduct>(L, a, b, out, mul);
  } else {
    launch_reduce_vec<scalar_t, 1, kProduct>(L, a, b, out, mul);
  }
}

// excite_gemm_kernel on the current stream: the launch excite_gemm.cuh's steps make.
struct StreamLaunch {
  cudaStream_t stream;
  template <typename acc_t, typename Epilogue>
  void operator()(dim3 grid, const se::Operand<acc_t>& a, const se::Operand<acc_t>& b, int R, int O, int K,
                  const Epilogue& epi) const {
    se::excite_gemm_kernel<acc_t, Epilogue><<<grid, dim3(se::kThreadsX, se::kThreadsY),
                                               se::excite_gemm_smem_bytes<acc_t>(), stream>>>(a, b, R, O, K, epi);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

template <typename acc_t>
se::ExciteParams<acc_t> excite_params(const SqueezeExciteArgs& a) {
  TORCH_CHECK(se::excite_sizes_fit(a.layout.N, a.layout.C, a.S), "squeeze_excite (CUDA): too many images (",
              a.layout.N, ") or channels (", a.layout.C, ", ", a.S, ") for the excite step");
  return {a.w1.data_ptr<acc_t>(), a.b1.data_ptr<acc_t>(), a.w2.data_ptr<acc_t>(), a.b2.data_ptr<acc_t>(),
          static_cast<int>(a.layout.N), static_cast<int>(a.layout.C), static_cast<int>(a.S), a.act, a.scale_act};
}

template <typename scalar_t, int VEC, bool kChannelsLast, bool kBackward>
void launch_scale_vec(const ChannelLayout& L, const scalar_t* in, scalar_t* out, const at::opmath_type<scalar_t>* scale,
                      const at::opmath_type<scalar_t>* shift) {
  const int64_t vectors = L.N * L.C * L.HW / VEC;
  const auto* prop = at::cuda::getCurrentDeviceProperties();
  const int64_t resident = static_cast<int64_t>(prop->multiProcessorCount) * (prop->maxThreadsPerMultiProcessor / kThreads);
  const int64_t blocks = std::max<int64_t>(1, std::min(ceil_div(vectors, kThreads), resident));
  squeeze_excite_scale_kernel<scalar_t, at::opmath_type<scalar_t>, VEC, kChannelsLast, kBackward>
      <<<static_cast<unsigned>(blocks), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          in, out, scale, shift, vectors, L.C, make_divider(L.C), make_divider(L.HW));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, bool kBackward>
void launch_scale(const ChannelLayout& L, const scalar_t* in, scalar_t* out, const at::opmath_type<scalar_t>* scale,
                  const at::opmath_type<scalar_t>* shift) {
  constexpr int kVec = 16 / sizeof(scalar_t);
  const bool vec = vector_width<scalar_t>(L.channels_last ? L.C : L.HW, {in, out}) == kVec;
  if (L.channels_last) {
    if (vec) {
      launch_scale_vec<scalar_t, kVec, true, kBackward>(L, in, out, scale, shift);
    } else {
      launch_scale_vec<scalar_t, 1, true, kBackward>(L, in, out, scale, shift);
    }
  } else {
    if (vec) {
      launch_scale_vec<scalar_t, kVec, false, kBackward>(L, in, out, scale, shift);
    } else {
      launch_scale_vec<scalar_t, 1, false, kBackward>(L, in, out, scale, shift);
    }
  }
}

std::tuple<at::Tensor, at::Tensor> squeeze_excite_cuda(const at::Tensor& input, const at::Tensor& fc1_weight,
                                                       const at::Tensor& fc1_bias, const at::Tensor& fc2_weight,
                                                       const at::Tensor& fc2_bias, c10::string_view activation,
                                                       c10::string_view scale_activation) {
  check_cuda(input);
  const c10::cuda::CUDAGuard guard(input.device());
  const SqueezeExciteArgs a = prepare_squeeze_excite(input, fc1_weight, fc1_bias, fc2_weight, fc2_bias,
                                                     std::string(activation), std::string(scale_activation));
  const ChannelLayout& L = a.layout;
  const auto acc_opts = input.options().dtype(acc_type_for(input.scalar_type()));
  at::Tensor out = at::empty(input.sizes(), input.options().memory_format(a.format));
  at::Tensor pooled = at::empty({L.N, L.C}, acc_opts);
  if (L.N * L.C == 0) return {out, pooled};
  at::Tensor scratch = at::empty({L.N * (a.S + L.C)}, acc_opts);  // h (N, S), scale (N, C)
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "squeeze_excite_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x = a.input.data_ptr<scalar_t>();
    acc_t* h = scratch.data_ptr<acc_t>();
    acc_t* scale = h + L.N * a.S;
    launch_reduce<scalar_t, false>(L, x, nullptr, pooled.data_ptr<acc_t>(),
                                   static_cast<acc_t>(1.0 / static_cast<double>(L.HW)));
    se::excite_forward(excite_params<acc_t>(a), pooled.data_ptr<acc_t>(), h, scale,
                       StreamLaunch{at::cuda::getCurrentCUDAStream()});
    launch_scale<scalar_t, false>(L, x, out.data_ptr<scalar_t>(), scale, nullptr);
  });
  return {out, pooled};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> squeeze_excite_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& pooled, const at::Tensor& fc1_weight,
    const at::Tensor& fc1_bias, const at::Tensor& fc2_weight, const at::Tensor& fc2_bias, c10::string_view activation,
    c10::string_view scale_activation) {
  check_cuda(input);
  const c10::cuda::CUDAGuard guard(input.device());
  const SqueezeExciteArgs a = prepare_squeeze_excite(input, fc1_weight, fc1_bias, fc2_weight, fc2_bias,
                                                     std::string(activation), std::string(scale_activation));
  const at::Tensor gy = prepare_se_grad_output(grad_output, a, input);
  const at::Tensor p = prepare_se_pooled(pooled, a);
  const ChannelLayout& L = a.layout;
  at::Tensor grad_input = at::empty(input.sizes(), input.options().memory_format(a.format));
  if (L.N * L.C == 0) {  // every per-image term is empty or zero: the parameter grads are zero
    return {grad_input, at::zeros(fc1_weight.sizes(), fc1_weight.options()),
            at::zeros(fc1_bias.sizes(), fc1_bias.options()), at::zeros(fc2_weight.sizes(), fc2_weight.options()),
            at::zeros(fc2_bias.sizes(), fc2_bias.options())};
  }
  const auto acc_opts = input.options().dtype(acc_type_for(input.scalar_type()));
  // ds, scale, dz2, dp_hw: (N, C); z1, h, dz1: (N, S)
  at::Tensor scratch = at::empty({L.N * (4 * L.C + 3 * a.S)}, acc_opts);
  at::Tensor gw1 = at::empty(fc1_weight.sizes(), acc_opts), gb1 = at::empty(fc1_bias.sizes(), acc_opts);
  at::Tensor gw2 = at::empty(fc2_weight.sizes(), acc_opts), gb2 = at::empty(fc2_bias.sizes(), acc_opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "squeeze_excite_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* g = gy.data_ptr<scalar_t>();
    const int64_t NC = L.N * L.C, NS = L.N * a.S;
    acc_t* ds = scratch.data_ptr<acc_t>();
    acc_t* dp_hw = ds + NC;
    const se::ExciteBwdScratch<acc_t> t{dp_hw + 3 * NC, dp_hw + 3 * NC + NS, dp_hw + 3 * NC + 2 * NS, dp_hw + NC,
                                        dp_hw + 2 * NC};  // z1, h, dz1, scale, dz2
    launch_reduce<scalar_t, true>(L, g, a.input.data_ptr<scalar_t>(), ds, acc_t(1));
    se::excite_backward(excite_params<acc_t>(a), p.data_ptr<acc_t>(), ds,
                        static_cast<acc_t>(1.0 / static_cast<double>(L.HW)), t, dp_hw,
                        se::ExciteParamGrads<acc_t>{gw1.data_ptr<acc_t>(), gb1.data_ptr<acc_t>(),
                                                    gw2.data_ptr<acc_t>(), gb2.data_ptr<acc_t>()},
                        StreamLaunch{at::cuda::getCurrentCUDAStream()});
    launch_scale<scalar_t, true>(L, g, grad_input.data_ptr<scalar_t>(), t.scale, dp_hw);
  });
  // In the parameters' dtype (a no-op unless they are float16 / bfloat16 with an input of theirs).
  return {grad_input, gw1.to(fc1_weight.scalar_type()), gb1.to(fc1_bias.scalar_type()),
          gw2.to(fc2_weight.scalar_type()), gb2.to(fc2_bias.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(mobilenet_kernels, CUDA, m) {
  m.impl("squeeze_excite", &squeeze_excite_cuda);
  m.impl("squeeze_excite_backward", &squeeze_excite_backward_cuda);
}

}  // namespace mobilenet_kernels
