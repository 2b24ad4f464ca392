// squeeze_excite, CUDA kernels (sm_80+).
//
// Three stages, the same as the CPU and Triton backends (math in csrc/squeeze_excite.h):
//   1. reduce:  sums over HW per (n, c): of x (forward; times 1/HW: pooled, the op's second
//               output) or of g * x (backward: ds). channels_last: a block (up to 1024 threads)
//               covers (n, a chunk of channel vectors), threadIdx.x owns a channel vector,
//               threadIdx.y splits the pixels, a fixed shared-memory tree over threadIdx.y combines
//               them. NCHW: a warp per (n, c) row of HW contiguous elements, a fixed shuffle tree.
//   2. excite:  one 1024-thread block per image: z1 = W1 p + b1 and z2 = W2 h + b2 as a warp per
//               output (lanes over the contiguous weight row, shuffle tree); h = act(z1) and
//               s = scale_act(z2). Backward also computes dz2 = ds * scale_act'(z2),
//               dz1 = (W2^T dz2) * act'(z1) and dpooled / HW = (W1^T dz1) / HW, the transposed
//               products as a thread per output looping over the weight column in order (adjacent
//               threads read adjacent weights). Every dot product keeps four accumulators (loads in
//               flight). Vectors the block shares live in dynamic shared memory: C + S (forward)
//               or 2C + 3S (backward) elements of the accumulation dtype.
//   3. scale:   y = x * s[n, c] (forward), grad_x = g * s[n, c] + dpooled[n, c] / HW (backward), a
//               flat grid-stride loop; (n, c) of an element from a multiply-high division.
//   Parameter grads are small ATen products on the (N, C) / (N, S) scratch tensors the excite
//   backward writes: grad_W2 = dz2^T h, grad_b2 = sum_n dz2, grad_W1 = dz1^T pooled,
//   grad_b1 = sum_n dz1 (at::mm: TF32 for float32 when the user enables TF32 matmuls).
// Layouts: NCHW and channels_last, both native; output in the input's memory format. 16-byte
//          vector loads when the innermost extent (C for channels_last, HW for NCHW) is a multiple
//          of the vector width and the pointers are 16-byte aligned, else a scalar path.
// dtypes: float64, float32, float16, bfloat16; parameters and every intermediate in the
//         accumulation dtype (float, double for float64); y and grad_x rounded once.
// Indexing: int64 memory offsets. Determinism: every sum has a fixed order that depends on the
//           shape (and vector path) only; no atomics.
// Activations: a uniform runtime switch in the excite kernel (its cost is O(S*C) per image), with
//              the formulas of mk_common.h written without IEEE division (x / 6 as x * (1/6),
//              sigmoid through an approximate reciprocal refined to within an ulp or two).
// Limits: the excite step's shared vectors must fit in a block's shared memory ((2C + 3S) * 4
//         bytes, float, at most ~227 KB on H100: C + 1.5 S up to ~29000). Each image's block
//         reads both weight matrices from L2 (no reuse across images), so for large C and small
//         planes the excite step is expected to dominate (not yet measured in a committed
//         benchmark; several images per block is the next step). Stage 1 has N * ceil(C / (32 VEC)) blocks
//         (channels_last) or N * C warps (NCHW), so small batches of large images use few SMs.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <initializer_list>
#include <limits>

#include "mk_cuda.cuh"
#include "squeeze_excite.h"

namespace mobilenet_kernels {
namespace {

constexpr int kThreads = 256;  // threads per block: NCHW reduce and scale kernels
constexpr int kWarps = kThreads / 32;
constexpr int kReduceThreads = 1024;  // at most, channels_last reduce: one block per (image, channel chunk)
constexpr int kExciteThreads = 1024;  // one block per image: all the memory parallelism an image gets
constexpr int kExciteWarps = kExciteThreads / 32;
constexpr int64_t kMaxGridX = std::numeric_limits<int32_t>::max();

using namespace cuda;  // Vec, Divider, load_vec, recip_ge1, the activations (mk_cuda.cuh)

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
  if (active) {
    const int64_t base = static_cast<int64_t>(n) * HW * C + c0;
    for (int64_t p = threadIdx.y; p < HW; p += blockDim.y) {
      acc_t va[VEC];
      load_vec<VEC>(a + base + p * C, va);
      if constexpr (kProduct) {
        acc_t vb[VEC];
        load_vec<VEC>(b + base + p * C, vb);
#pragma unroll
        for (int j = 0; j < VEC; ++j) acc[j] += va[j] * vb[j];
      } else {
#pragma unroll
        for (int j = 0; j < VEC; ++j) acc[j] += va[j];
      }
    }
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
// Stage 2, one block (kExciteThreads) per image n.

// Lane 0 returns sum_k w[k] * v[k], k < len (w: global, contiguous; v: shared memory). Four
// accumulators per lane (k = lane + 32 * (4 i + u) goes to u) keep four loads in flight.
template <typename acc_t>
__device__ __forceinline__ acc_t warp_dot(const acc_t* __restrict__ w, const acc_t* v, int len, int lane) {
  acc_t d[4] = {acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
  int k = lane;
  for (; k + 96 < len; k += 128) {
#pragma unroll
    for (int u = 0; u < 4; ++u) d[u] += w[k + 32 * u] * v[k + 32 * u];
  }
  for (; k < len; k += 32) d[0] += w[k] * v[k];
  return warp_sum((d[0] + d[1]) + (d[2] + d[3]));
}

// One thread's sum_k w[k * stride] * v[k], k < len (w: global, a weight column; v: shared memory),
// with four accumulators (k = 4 i + u goes to u).
template <typename acc_t>
__device__ __forceinline__ acc_t column_dot(const acc_t* __restrict__ w, int64_t stride, const acc_t* v, int len) {
  acc_t d[4] = {acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
  int k = 0;
  for (; k + 3 < len; k += 4) {
#pragma unroll
    for (int u = 0; u < 4; ++u) d[u] += w[(k + u) * stride] * v[k + u];
  }
  for (; k < len; ++k) d[0] += w[k * stride] * v[k];
  return (d[0] + d[1]) + (d[2] + d[3]);
}

// Both: p = pooled[n] and h = act(W1 p + b1) into shared memory.
template <typename acc_t>
__device__ __forceinline__ void excite_hidden(const acc_t* __restrict__ pooled, const acc_t* __restrict__ w1,
                                              const acc_t* __restrict__ b1, int64_t n, int C, int S, Act act,
                                              acc_t* p, acc_t* z1, acc_t* h) {
  for (int c = threadIdx.x; c < C; c += blockDim.x) p[c] = pooled[n * C + c];
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int j = warp; j < S; j += kExciteWarps) {
    const acc_t z = warp_dot(w1 + static_cast<int64_t>(j) * C, p, C, lane) + b1[j];
    if (lane == 0) {
      if (z1 != nullptr) z1[j] = z;
      h[j] = apply_activation(act, z);
    }
  }
  __syncthreads();
}

template <typename acc_t>
__global__ void __launch_bounds__(kExciteThreads)
    squeeze_excite_fwd_kernel(const acc_t* __restrict__ pooled,  // (N, C)
                              const acc_t* __restrict__ w1,      // (S, C)
                              const acc_t* __restrict__ b1,      // (S,)
                              const acc_t* __restrict__ w2,      // (C, S)
                              const acc_t* __restrict__ b2,      // (C,)
                              acc_t* __restrict__ scale,         // (N, C): out, scale_act(z2)
                              int C, int S, Act act, Act scale_act) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* p = reinterpret_cast<acc_t*>(smem_raw);  // (C,)
  acc_t* h = p + C;                               // (S,)
  const int64_t n = blockIdx.x;
  excite_hidden(pooled, w1, b1, n, C, S, act, p, static_cast<acc_t*>(nullptr), h);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int c = warp; c < C; c += kExciteWarps) {
    const acc_t z = warp_dot(w2 + static_cast<int64_t>(c) * S, h, S, lane) + b2[c];
    if (lane == 0) scale[n * C + c] = apply_activation(scale_act, z);
  }
}

template <typename acc_t>
__global__ void __launch_bounds__(kExciteThreads)
    squeeze_excite_bwd_kernel(const acc_t* __restrict__ pooled,  // (N, C)
                              const acc_t* __restrict__ ds,      // (N, C): sum_hw g * x
                              const acc_t* __restrict__ w1,      // (S, C)
                              const acc_t* __restrict__ b1,      // (S,)
                              const acc_t* __restrict__ w2,      // (C, S)
                              const acc_t* __restrict__ b2,      // (C,)
                              acc_t* __restrict__ scale,         // (N, C): out, scale_act(z2)
                              acc_t* __restrict__ dp_hw,         // (N, C): out, (W1^T dz1) / HW
                              acc_t* __restrict__ dz2_out,       // (N, C): out
                              acc_t* __restrict__ dz1_out,       // (N, S): out
                              acc_t* __restrict__ h_out,         // (N, S): out, act(z1)
                              int C, int S, Act act, Act scale_act, acc_t inv_hw) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* p = reinterpret_cast<acc_t*>(smem_raw);  // (C,)
  acc_t* dz2 = p + C;                             // (C,)
  acc_t* z1 = dz2 + C;                            // (S,)
  acc_t* h = z1 + S;                              // (S,)
  acc_t* dz1 = h + S;                             // (S,)
  const int64_t n = blockIdx.x;
  excite_hidden(pooled, w1, b1, n, C, S, act, p, z1, h);
  for (int j = threadIdx.x; j < S; j += blockDim.x) h_out[n * S + j] = h[j];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int c = warp; c < C; c += kExciteWarps) {
    const acc_t z = warp_dot(w2 + static_cast<int64_t>(c) * S, h, S, lane) + b2[c];
    if (lane == 0) {
      const acc_t d = ds[n * C + c] * activation_grad(scale_act, z);
      scale[n * C + c] = apply_activation(scale_act, z);
      dz2_out[n * C + c] = d;
      dz2[c] = d;
    }
  }
  __syncthreads();
  for (int j = threadIdx.x; j < S; j += blockDim.x) {  // dz1 = (W2^T dz2) * act'(z1)
    const acc_t d = column_dot(w2 + j, S, dz2, C) * activation_grad(act, z1[j]);
    dz1[j] = d;
    dz1_out[n * S + j] = d;
  }
  __syncthreads();
  for (int c = threadIdx.x; c < C; c += blockDim.x) {  // dpooled = W1^T dz1
    dp_hw[n * C + c] = column_dot(w1 + c, C, dz1, S) * inv_hw;
  }
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

// Dynamic shared memory of `bytes` for `kernel`, opted in above the default 48 KB.
template <typename Kernel>
void set_smem(Kernel kernel, size_t bytes, int64_t C, int64_t S) {
  const size_t limit = at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin;
  TORCH_CHECK(bytes <= limit, "squeeze_excite (CUDA): C = ", C, " and S = ", S, " need ", bytes,
              " bytes of shared memory per block; the device allows ", limit);
  if (bytes > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  }
}

void check_excite_size(int64_t N, int64_t C, int64_t S) {
  TORCH_CHECK(N <= kMaxGridX, "squeeze_excite (CUDA): too many images for one launch (", N, ")");
  TORCH_CHECK(C <= std::numeric_limits<int>::max() && S <= std::numeric_limits<int>::max(),
              "squeeze_excite (CUDA): too many channels");
}

template <typename acc_t>
void launch_excite_fwd(const SqueezeExciteArgs& a, const at::Tensor& pooled, at::Tensor& scale) {
  const int64_t N = a.layout.N, C = a.layout.C, S = a.S;
  check_excite_size(N, C, S);
  const size_t bytes = static_cast<size_t>(C + S) * sizeof(acc_t);
  const auto kernel = squeeze_excite_fwd_kernel<acc_t>;
  set_smem(kernel, bytes, C, S);
  kernel<<<static_cast<unsigned>(N), kExciteThreads, bytes, at::cuda::getCurrentCUDAStream()>>>(
      pooled.data_ptr<acc_t>(), a.w1.data_ptr<acc_t>(), a.b1.data_ptr<acc_t>(), a.w2.data_ptr<acc_t>(),
      a.b2.data_ptr<acc_t>(), scale.data_ptr<acc_t>(), static_cast<int>(C), static_cast<int>(S), a.act, a.scale_act);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

struct ExciteGrads {
  at::Tensor scale, dp_hw, dz2;  // (N, C)
  at::Tensor dz1, h;             // (N, S)
};

template <typename acc_t>
void launch_excite_bwd(const SqueezeExciteArgs& a, const at::Tensor& pooled, const at::Tensor& ds, ExciteGrads& e) {
  const int64_t N = a.layout.N, C = a.layout.C, S = a.S;
  check_excite_size(N, C, S);
  const size_t bytes = static_cast<size_t>(2 * C + 3 * S) * sizeof(acc_t);
  const auto kernel = squeeze_excite_bwd_kernel<acc_t>;
  set_smem(kernel, bytes, C, S);
  kernel<<<static_cast<unsigned>(N), kExciteThreads, bytes, at::cuda::getCurrentCUDAStream()>>>(
      pooled.data_ptr<acc_t>(), ds.data_ptr<acc_t>(), a.w1.data_ptr<acc_t>(), a.b1.data_ptr<acc_t>(),
      a.w2.data_ptr<acc_t>(), a.b2.data_ptr<acc_t>(), e.scale.data_ptr<acc_t>(), e.dp_hw.data_ptr<acc_t>(),
      e.dz2.data_ptr<acc_t>(), e.dz1.data_ptr<acc_t>(), e.h.data_ptr<acc_t>(), static_cast<int>(C),
      static_cast<int>(S), a.act, a.scale_act, static_cast<acc_t>(1.0 / static_cast<double>(a.layout.HW)));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
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
  at::Tensor scale = at::empty({L.N, L.C}, acc_opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "squeeze_excite_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x = a.input.data_ptr<scalar_t>();
    launch_reduce<scalar_t, false>(L, x, nullptr, pooled.data_ptr<acc_t>(),
                                   static_cast<acc_t>(1.0 / static_cast<double>(L.HW)));
    launch_excite_fwd<acc_t>(a, pooled, scale);
    launch_scale<scalar_t, false>(L, x, out.data_ptr<scalar_t>(), scale.data_ptr<acc_t>(), nullptr);
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
  at::Tensor ds = at::empty({L.N, L.C}, acc_opts);
  ExciteGrads e{at::empty({L.N, L.C}, acc_opts), at::empty({L.N, L.C}, acc_opts), at::empty({L.N, L.C}, acc_opts),
                at::empty({L.N, a.S}, acc_opts), at::empty({L.N, a.S}, acc_opts)};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "squeeze_excite_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* g = gy.data_ptr<scalar_t>();
    launch_reduce<scalar_t, true>(L, g, a.input.data_ptr<scalar_t>(), ds.data_ptr<acc_t>(), acc_t(1));
    launch_excite_bwd<acc_t>(a, p, ds, e);
    launch_scale<scalar_t, true>(L, g, grad_input.data_ptr<scalar_t>(), e.scale.data_ptr<acc_t>(),
                                 e.dp_hw.data_ptr<acc_t>());
  });
  const auto as_param = [](const at::Tensor& grad, const at::Tensor& param) {
    return grad.reshape(param.sizes()).to(param.scalar_type()).contiguous();
  };
  return {grad_input, as_param(at::mm(e.dz1.t(), p), fc1_weight), as_param(e.dz1.sum(0), fc1_bias),
          as_param(at::mm(e.dz2.t(), e.h), fc2_weight), as_param(e.dz2.sum(0), fc2_bias)};
}

}  // namespace

TORCH_LIBRARY_IMPL(mobilenet_kernels, CUDA, m) {
  m.impl("squeeze_excite", &squeeze_excite_cuda);
  m.impl("squeeze_excite_backward", &squeeze_excite_backward_cuda);
}

}  // namespace mobilenet_kernels
