// batch_norm_act (eval), CUDA kernels (sm_80+).
//
// Fuses: BatchNorm with running statistics (folded in-kernel to one per-channel scale/shift, in fp32)
//        + activation, forward; backward computes grad_input and the per-channel sums
//        sum(g * x_hat), sum(g) (g = grad_output * act'(z)) in one pass over grad_output and input.
// Layouts: NCHW (spatial dims flattened) and channels_last, both native; 16-byte vector loads when
//          the innermost extent (HW for NCHW, C for NHWC) is a multiple of the vector width and the
//          pointers are aligned, else a scalar path. Output keeps the input's memory format.
// dtypes: float64, float32, float16, bfloat16; accumulation in float (double for float64).
// Indexing: int64 throughout. Reductions: two-stage (per-tile partials, then a fixed-order sum per
//           channel); tile counts depend only on the shape, so results are bitwise deterministic.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "batch_norm_act.h"

namespace mobilenet_kernels {
namespace {

template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

constexpr int kThreads = 256;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename scalar_t>
int vector_width(const void* in, const void* out, int64_t inner) {
  constexpr int kVec = 16 / sizeof(scalar_t);
  const bool aligned = reinterpret_cast<uintptr_t>(in) % 16 == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0;
  return (kVec > 1 && aligned && inner % kVec == 0) ? kVec : 1;
}

// channels_last: threadIdx.x walks channel vectors (each thread folds its VEC channels' BN once),
// threadIdx.y and blockIdx.x walk rows (pixels).
template <typename scalar_t, typename acc_t, Act A, int VEC>
__global__ void batch_norm_act_eval_fwd_nhwc_kernel(const scalar_t* __restrict__ x,  // (M, C)
                                                    scalar_t* __restrict__ y,        // (M, C)
                                                    const acc_t* __restrict__ mean,  // (C,)
                                                    const acc_t* __restrict__ var, const acc_t* __restrict__ weight,
                                                    const acc_t* __restrict__ bias, acc_t eps, int64_t M, int64_t C) {
  const int64_t c0 = (static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x) * VEC;
  if (c0 >= C) return;
  acc_t scale[VEC], shift[VEC], rstd;
#pragma unroll
  for (int j = 0; j < VEC; ++j) bn_scale_shift<acc_t>(mean, var, weight, bias, eps, c0 + j, rstd, scale[j], shift[j]);
  for (int64_t m = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; m < M;
       m += static_cast<int64_t>(gridDim.x) * blockDim.y) {
    const int64_t i = m * C + c0;
    Vec<scalar_t, VEC> in = *reinterpret_cast<const Vec<scalar_t, VEC>*>(x + i), out;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      out.v[j] = static_cast<scalar_t>(act_forward<A>(static_cast<acc_t>(in.v[j]) * scale[j] + shift[j]));
    }
    *reinterpret_cast<Vec<scalar_t, VEC>*>(y + i) = out;
  }
}

// NCHW: a flat grid-stride loop over VEC-element vectors; HW % VEC == 0, so a vector never
// straddles two channels.
template <typename scalar_t, typename acc_t, Act A, int VEC>
__global__ void batch_norm_act_eval_fwd_nchw_kernel(const scalar_t* __restrict__ x,  // (N, C, HW)
                                                    scalar_t* __restrict__ y,        // (N, C, HW)
                                                    const acc_t* __restrict__ mean,  // (C,)
                                                    const acc_t* __restrict__ var, const acc_t* __restrict__ weight,
                                                    const acc_t* __restrict__ bias, acc_t eps, int64_t numel,
                                                    int64_t C, int64_t HW) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x * VEC;
  for (int64_t i = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * VEC; i < numel; i += stride) {
    acc_t scale, shift, rstd;
    bn_scale_shift<acc_t>(mean, var, weight, bias, eps, (i / HW) % C, rstd, scale, shift);
    Vec<scalar_t, VEC> in = *reinterpret_cast<const Vec<scalar_t, VEC>*>(x + i), out;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      out.v[j] = static_cast<scalar_t>(act_forward<A>(static_cast<acc_t>(in.v[j]) * scale + shift));
    }
    *reinterpret_cast<Vec<scalar_t, VEC>*>(y + i) = out;
  }
}

// The reduction extent (M = N*HW terms per channel) is cut into tiles by shape alone.
inline int64_t reduction_tiles(int64_t M) { return std::max<int64_t>(1, std::min<int64_t>(512, ceil_div(M, 1024))); }

// Stage 1, channels_last. Block (32 channels) x (8 row lanes); blockIdx.y is the row tile.
template <typename scalar_t, typename acc_t, Act A>
__global__ void batch_norm_act_eval_bwd_nhwc_kernel(
    const scalar_t* __restrict__ gy,  // (M, C)
    const scalar_t* __restrict__ x,   // (M, C)
    scalar_t* __restrict__ gx,        // (M, C)
    const acc_t* __restrict__ mean, const acc_t* __restrict__ var, const acc_t* __restrict__ weight,
    const acc_t* __restrict__ bias, acc_t eps, int64_t M, int64_t C, int64_t rows_per_tile,
    acc_t* __restrict__ partial_gxhat,  // (tiles, C)
    acc_t* __restrict__ partial_g) {    // (tiles, C)
  __shared__ acc_t s_gxhat[8][32];
  __shared__ acc_t s_g[8][32];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x;
  const int64_t m_begin = static_cast<int64_t>(blockIdx.y) * rows_per_tile;
  const int64_t m_end = std::min(M, m_begin + rows_per_tile);
  acc_t sum_gxhat = 0, sum_g = 0;
  if (c < C) {
    acc_t rstd, scale, shift;
    bn_scale_shift<acc_t>(mean, var, weight, bias, eps, c, rstd, scale, shift);
    const acc_t mu = mean[c];
    for (int64_t m = m_begin + threadIdx.y; m < m_end; m += 8) {
      const int64_t i = m * C + c;
      const acc_t xv = static_cast<acc_t>(x[i]);
      const acc_t g = static_cast<acc_t>(gy[i]) * act_derivative<A>(xv * scale + shift);
      gx[i] = static_cast<scalar_t>(g * scale);
      sum_g += g;
      sum_gxhat += g * (xv - mu) * rstd;
    }
  }
  s_gxhat[threadIdx.y][threadIdx.x] = sum_gxhat;
  s_g[threadIdx.y][threadIdx.x] = sum_g;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    acc_t a = 0, b = 0;
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      a += s_gxhat[k][threadIdx.x];
      b += s_g[k][threadIdx.x];
    }
    partial_gxhat[blockIdx.y * C + c] = a;
    partial_g[blockIdx.y * C + c] = b;
  }
}

// Stage 1, NCHW. blockIdx.x is the channel, blockIdx.y the tile of the channel's N*HW terms.
template <typename scalar_t, typename acc_t, Act A>
__global__ void batch_norm_act_eval_bwd_nchw_kernel(
    const scalar_t* __restrict__ gy,  // (N, C, HW)
    const scalar_t* __restrict__ x,   // (N, C, HW)
    scalar_t* __restrict__ gx,        // (N, C, HW)
    const acc_t* __restrict__ mean, const acc_t* __restrict__ var, const acc_t* __restrict__ weight,
    const acc_t* __restrict__ bias, acc_t eps, int64_t M, int64_t C, int64_t HW, int64_t terms_per_tile,
    acc_t* __restrict__ partial_gxhat,  // (tiles, C)
    acc_t* __restrict__ partial_g) {    // (tiles, C)
  __shared__ acc_t s_gxhat[kThreads];
  __shared__ acc_t s_g[kThreads];
  const int64_t c = blockIdx.x;
  acc_t rstd, scale, shift;
  bn_scale_shift<acc_t>(mean, var, weight, bias, eps, c, rstd, scale, shift);
  const acc_t mu = mean[c];
  const int64_t j_begin = static_cast<int64_t>(blockIdx.y) * terms_per_tile;
  const int64_t j_end = std::min(M, j_begin + terms_per_tile);
  acc_t sum_gxhat = 0, sum_g = 0;
  for (int64_t j = j_begin + threadIdx.x; j < j_end; j += kThreads) {
    const int64_t n = j / HW;
    const int64_t i = (n * C + c) * HW + (j - n * HW);
    const acc_t xv = static_cast<acc_t>(x[i]);
    const acc_t g = static_cast<acc_t>(gy[i]) * act_derivative<A>(xv * scale + shift);
    gx[i] = static_cast<scalar_t>(g * scale);
    sum_g += g;
    sum_gxhat += g * (xv - mu) * rstd;
  }
  s_gxhat[threadIdx.x] = sum_gxhat;
  s_g[threadIdx.x] = sum_g;
  __syncthreads();
  for (int width = kThreads / 2; width > 0; width /= 2) {  // fixed tree: deterministic
    if (threadIdx.x < width) {
      s_gxhat[threadIdx.x] += s_gxhat[threadIdx.x + width];
      s_g[threadIdx.x] += s_g[threadIdx.x + width];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    partial_gxhat[blockIdx.y * C + c] = s_gxhat[0];
    partial_g[blockIdx.y * C + c] = s_g[0];
  }
}

// Stage 2: one thread per channel sums the tiles in order.
template <typename acc_t>
__global__ void sum_tiles_kernel(const acc_t* __restrict__ partial_gxhat, const acc_t* __restrict__ partial_g,
                                 int64_t tiles, int64_t C, acc_t* __restrict__ sum_gxhat, acc_t* __restrict__ sum_g) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  double a = 0, b = 0;
  for (int64_t t = 0; t < tiles; ++t) {
    a += partial_gxhat[t * C + c];
    b += partial_g[t * C + c];
  }
  sum_gxhat[c] = static_cast<acc_t>(a);
  sum_g[c] = static_cast<acc_t>(b);
}

template <typename scalar_t, Act A>
void launch_forward(const BatchNormEvalArgs& a, at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const ChannelLayout& L = a.layout;
  const int64_t numel = a.input.numel();
  if (numel == 0) return;
  const auto stream = at::cuda::getCurrentCUDAStream();
  const scalar_t* x = a.input.data_ptr<scalar_t>();
  scalar_t* y = out.data_ptr<scalar_t>();
  const acc_t* mean = a.mean.data_ptr<acc_t>();
  const acc_t* var = a.var.data_ptr<acc_t>();
  const acc_t* w = data_or_null<acc_t>(a.weight);
  const acc_t* b = data_or_null<acc_t>(a.bias);
  const acc_t eps = static_cast<acc_t>(a.eps);
  constexpr int kVec = 16 / sizeof(scalar_t) > 1 ? 16 / sizeof(scalar_t) : 1;

  if (L.channels_last) {
    const int vec = vector_width<scalar_t>(x, y, L.C);
    const int64_t c_vectors = L.C / vec;
    const int tx = static_cast<int>(std::min<int64_t>(32, c_vectors));
    const int ty = kThreads / tx;
    const dim3 block(tx, ty);
    const dim3 grid(static_cast<unsigned>(std::min<int64_t>(ceil_div(L.rows(), ty * 4), 1 << 20)),
                    static_cast<unsigned>(ceil_div(c_vectors, tx)));
    TORCH_CHECK(grid.y <= 65535, "batch_norm_act: too many channels for one launch (", L.C, ")");
    if (vec == kVec) {
      batch_norm_act_eval_fwd_nhwc_kernel<scalar_t, acc_t, A, kVec>
          <<<grid, block, 0, stream>>>(x, y, mean, var, w, b, eps, L.rows(), L.C);
    } else {
      batch_norm_act_eval_fwd_nhwc_kernel<scalar_t, acc_t, A, 1>
          <<<grid, block, 0, stream>>>(x, y, mean, var, w, b, eps, L.rows(), L.C);
    }
  } else {
    const int vec = vector_width<scalar_t>(x, y, L.HW);
    const int64_t blocks = std::min<int64_t>(ceil_div(numel, static_cast<int64_t>(kThreads) * vec * 4), 1 << 20);
    if (vec == kVec) {
      batch_norm_act_eval_fwd_nchw_kernel<scalar_t, acc_t, A, kVec>
          <<<blocks, kThreads, 0, stream>>>(x, y, mean, var, w, b, eps, numel, L.C, L.HW);
    } else {
      batch_norm_act_eval_fwd_nchw_kernel<scalar_t, acc_t, A, 1>
          <<<blocks, kThreads, 0, stream>>>(x, y, mean, var, w, b, eps, numel, L.C, L.HW);
    }
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, Act A>
void launch_backward(const BatchNormEvalArgs& a, const at::Tensor& grad_out, at::Tensor& grad_in,
                     at::Tensor& sum_gxhat, at::Tensor& sum_g) {
  using acc_t = at::opmath_type<scalar_t>;
  const ChannelLayout& L = a.layout;
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t M = L.rows();
  const int64_t tiles = reduction_tiles(M);
  const int64_t per_tile = ceil_div(std::max<int64_t>(M, 1), tiles);
  at::Tensor partial = at::empty({2, tiles, L.C}, sum_g.options());
  acc_t* p_gxhat = partial[0].data_ptr<acc_t>();
  acc_t* p_g = partial[1].data_ptr<acc_t>();
  const acc_t* mean = a.mean.data_ptr<acc_t>();
  const acc_t* var = a.var.data_ptr<acc_t>();
  const acc_t* w = data_or_null<acc_t>(a.weight);
  const acc_t* b = data_or_null<acc_t>(a.bias);
  const acc_t eps = static_cast<acc_t>(a.eps);
  TORCH_CHECK(tiles <= 65535, "batch_norm_act: internal tile count out of range");
  if (L.channels_last) {
    const dim3 grid(static_cast<unsigned>(ceil_div(L.C, 32)), static_cast<unsigned>(tiles));
    batch_norm_act_eval_bwd_nhwc_kernel<scalar_t, acc_t, A><<<grid, dim3(32, 8), 0, stream>>>(
        grad_out.data_ptr<scalar_t>(), a.input.data_ptr<scalar_t>(), grad_in.data_ptr<scalar_t>(), mean, var, w, b,
        eps, M, L.C, per_tile, p_gxhat, p_g);
  } else {
    const dim3 grid(static_cast<unsigned>(L.C), static_cast<unsigned>(tiles));
    batch_norm_act_eval_bwd_nchw_kernel<scalar_t, acc_t, A><<<grid, kThreads, 0, stream>>>(
        grad_out.data_ptr<scalar_t>(), a.input.data_ptr<scalar_t>(), grad_in.data_ptr<scalar_t>(), mean, var, w, b,
        eps, M, L.C, L.HW, per_tile, p_gxhat, p_g);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  sum_tiles_kernel<acc_t><<<static_cast<unsigned>(ceil_div(L.C, kThreads)), kThreads, 0, stream>>>(
      p_gxhat, p_g, tiles, L.C, sum_gxhat.data_ptr<acc_t>(), sum_g.data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor batch_norm_act_eval_cuda(const at::Tensor& input, const at::Tensor& running_mean,
                                    const at::Tensor& running_var, const c10::optional<at::Tensor>& weight,
                                    const c10::optional<at::Tensor>& bias, double eps, c10::string_view activation) {
  check_batch_norm_eval(input, running_mean, running_var, weight, bias, eps, std::string(activation));
  const c10::cuda::CUDAGuard guard(input.device());
  const auto a = prepare_batch_norm_eval(input, running_mean, running_var, weight, bias, eps, std::string(activation));
  at::Tensor out = at::empty(input.sizes(), input.options().memory_format(a.format));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "batch_norm_act_eval_cuda", [&] {
    MK_DISPATCH_ACTIVATION(a.act, [&] { launch_forward<scalar_t, kAct>(a, out); });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_act_eval_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& running_mean,
    const at::Tensor& running_var, const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
    double eps, c10::string_view activation) {
  check_batch_norm_eval(input, running_mean, running_var, weight, bias, eps, std::string(activation));
  const c10::cuda::CUDAGuard guard(input.device());
  const auto a = prepare_batch_norm_eval(input, running_mean, running_var, weight, bias, eps, std::string(activation));
  TORCH_CHECK_VALUE(grad_output.sizes() == input.sizes(), "grad_output: expected shape ", input.sizes(), ", got ",
                    grad_output.sizes());
  TORCH_CHECK_TYPE(grad_output.scalar_type() == input.scalar_type(), "grad_output: expected dtype ",
                   input.scalar_type(), ", got ", grad_output.scalar_type());
  const at::Tensor gy = grad_output.contiguous(a.format);
  at::Tensor grad_in = at::empty(input.sizes(), input.options().memory_format(a.format));
  const auto acc_opts = input.options().dtype(acc_type_for(input.scalar_type()));
  at::Tensor sum_gxhat = at::zeros({a.layout.C}, acc_opts);
  at::Tensor sum_g = at::zeros({a.layout.C}, acc_opts);
  if (input.numel() == 0) return {grad_in, sum_gxhat, sum_g};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "batch_norm_act_eval_backward_cuda", [&] {
    MK_DISPATCH_ACTIVATION(a.act, [&] { launch_backward<scalar_t, kAct>(a, gy, grad_in, sum_gxhat, sum_g); });
  });
  return {grad_in, sum_gxhat, sum_g};
}

}  // namespace

TORCH_LIBRARY_IMPL(mobilenet_kernels, CUDA, m) {
  m.impl("batch_norm_act_eval", &batch_norm_act_eval_cuda);
  m.impl("batch_norm_act_eval_backward", &batch_norm_act_eval_backward_cuda);
}

}  // namespace mobilenet_kernels
