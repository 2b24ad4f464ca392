// batch_norm_act, CUDA kernels (sm_80+).
//
// Eval: BatchNorm with running statistics (folded in-kernel to one per-channel scale/shift, in fp32)
//       + activation, forward; backward computes grad_input and the per-channel sums
//       sum(g * x_hat), sum(g) (g = grad_output * act'(z)) in one pass over grad_output and input.
// Train: forward = one statistics pass (shifted sums) + the eval apply pass on the batch statistics;
//        backward = one reduction pass (the eval one, without grad_input) + one grad_input pass.
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

#include <limits>

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

// ---------------------------------------------------------------------------------------------
// Per-channel reductions over the M = N*HW terms of each channel, two-stage and deterministic.
// Stage 1 (reduce_*_kernel) runs a term functor over a tile of M per (tile, channel) and writes two
// partial sums; stage 2 (finish_kernel) merges the tiles of a channel in a fixed order, in double.
// A term functor provides begin(c) -> per-channel State and operator()(state, i, s0, s1), which
// adds element i's two terms (and may write element i of an output in the same pass).

// The reduction extent is cut into tiles by shape alone.
inline int64_t reduction_tiles(int64_t M) { return std::max<int64_t>(1, std::min<int64_t>(512, ceil_div(M, 1024))); }

// channels_last: block (32 channels) x (8 row lanes); blockIdx.x: channel block, blockIdx.y: row tile.
template <typename acc_t, typename Term>
__global__ void reduce_nhwc_kernel(Term term, int64_t M, int64_t C, int64_t rows_per_tile,
                                   acc_t* __restrict__ partial0,  // (tiles, C)
                                   acc_t* __restrict__ partial1) {  // (tiles, C)
  __shared__ acc_t s0[8][32];
  __shared__ acc_t s1[8][32];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x;
  const int64_t m_begin = static_cast<int64_t>(blockIdx.y) * rows_per_tile;
  const int64_t m_end = std::min(M, m_begin + rows_per_tile);
  acc_t a = 0, b = 0;
  if (c < C) {
    const auto state = term.begin(c);
    for (int64_t m = m_begin + threadIdx.y; m < m_end; m += 8) term(state, m * C + c, a, b);
  }
  s0[threadIdx.y][threadIdx.x] = a;
  s1[threadIdx.y][threadIdx.x] = b;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    a = 0;
    b = 0;
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      a += s0[k][threadIdx.x];
      b += s1[k][threadIdx.x];
    }
    partial0[blockIdx.y * C + c] = a;
    partial1[blockIdx.y * C + c] = b;
  }
}

// NCHW: blockIdx.x is the channel, blockIdx.y the tile of the channel's N*HW terms.
template <typename acc_t, typename Term>
__global__ void reduce_nchw_kernel(Term term, int64_t M, int64_t C, int64_t HW, int64_t terms_per_tile,
                                   acc_t* __restrict__ partial0,  // (tiles, C)
                                   acc_t* __restrict__ partial1) {  // (tiles, C)
  __shared__ acc_t s0[kThreads];
  __shared__ acc_t s1[kThreads];
  const int64_t c = blockIdx.x;
  const auto state = term.begin(c);
  const int64_t j_begin = static_cast<int64_t>(blockIdx.y) * terms_per_tile;
  const int64_t j_end = std::min(M, j_begin + terms_per_tile);
  acc_t a = 0, b = 0;
  for (int64_t j = j_begin + threadIdx.x; j < j_end; j += kThreads) {
    const int64_t n = j / HW;
    term(state, (n * C + c) * HW + (j - n * HW), a, b);
  }
  s0[threadIdx.x] = a;
  s1[threadIdx.x] = b;
  __syncthreads();
  for (int width = kThreads / 2; width > 0; width /= 2) {  // fixed tree: deterministic
    if (threadIdx.x < width) {
      s0[threadIdx.x] += s0[threadIdx.x + width];
      s1[threadIdx.x] += s1[threadIdx.x + width];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    partial0[blockIdx.y * C + c] = s0[0];
    partial1[blockIdx.y * C + c] = s1[0];
  }
}

// Stage 2: one thread per channel sums its tiles in order, in double, and hands the two totals
// to the epilogue functor.
template <typename acc_t, typename Finish>
__global__ void finish_kernel(const acc_t* __restrict__ partial0, const acc_t* __restrict__ partial1, int64_t tiles,
                              int64_t C, Finish finish) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  double a = 0, b = 0;
  for (int64_t t = 0; t < tiles; ++t) {
    a += partial0[t * C + c];
    b += partial1[t * C + c];
  }
  finish(c, a, b);
}

template <typename acc_t, typename Term, typename Finish>
void reduce_channels(const ChannelLayout& L, const at::TensorOptions& acc_opts, const Term& term, const Finish& finish) {
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t M = L.rows();
  const int64_t tiles = reduction_tiles(M);
  const int64_t per_tile = ceil_div(std::max<int64_t>(M, 1), tiles);
  at::Tensor partial = at::empty({2, tiles, L.C}, acc_opts);
  acc_t* p0 = partial[0].data_ptr<acc_t>();
  acc_t* p1 = partial[1].data_ptr<acc_t>();
  if (L.channels_last) {
    const dim3 grid(static_cast<unsigned>(ceil_div(L.C, 32)), static_cast<unsigned>(tiles));
    reduce_nhwc_kernel<acc_t><<<grid, dim3(32, 8), 0, stream>>>(term, M, L.C, per_tile, p0, p1);
  } else {
    const dim3 grid(static_cast<unsigned>(L.C), static_cast<unsigned>(tiles));
    reduce_nchw_kernel<acc_t><<<grid, kThreads, 0, stream>>>(term, M, L.C, L.HW, per_tile, p0, p1);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  finish_kernel<acc_t><<<static_cast<unsigned>(ceil_div(L.C, kThreads)), kThreads, 0, stream>>>(p0, p1, tiles, L.C,
                                                                                                  finish);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Terms of the backward: g * x_hat and g, g = grad_out * act'(z); in eval mode (kWriteGradInput)
// also grad_in = g * scale in the same pass.
template <typename scalar_t, typename acc_t, Act A, bool kWriteGradInput>
struct BackwardTerms {
  const scalar_t* __restrict__ gy;  // (N, C, HW) dense
  const scalar_t* __restrict__ x;   // (N, C, HW) dense
  scalar_t* __restrict__ gx;        // (N, C, HW) dense, or null
  const acc_t *mean, *var, *weight, *bias;
  acc_t eps;
  struct State {
    acc_t rstd, scale, shift, mu;
  };
  __device__ State begin(int64_t c) const {
    State s;
    bn_scale_shift<acc_t>(mean, var, weight, bias, eps, c, s.rstd, s.scale, s.shift);
    s.mu = mean[c];
    return s;
  }
  __device__ void operator()(const State& s, int64_t i, acc_t& sum_gxhat, acc_t& sum_g) const {
    const acc_t xv = static_cast<acc_t>(x[i]);
    const acc_t g = static_cast<acc_t>(gy[i]) * act_derivative<A>(xv * s.scale + s.shift);
    if constexpr (kWriteGradInput) gx[i] = static_cast<scalar_t>(g * s.scale);
    sum_g += g;
    sum_gxhat += g * (xv - s.mu) * s.rstd;
  }
};

template <typename acc_t>
struct StoreSums {
  acc_t *sum0, *sum1;
  __device__ void operator()(int64_t c, double a, double b) const {
    sum0[c] = static_cast<acc_t>(a);
    sum1[c] = static_cast<acc_t>(b);
  }
};

// Terms of the batch statistics: shifted sums of x - K_c and (x - K_c)^2, with K_c the channel's
// first element (finite_or_zero), so that a large mean does not cancel the variance away (mean 1e4,
// std 1 is fine). A NaN variance stays NaN.
template <typename scalar_t, typename acc_t>
struct ShiftedMomentTerms {
  const scalar_t* __restrict__ x;  // (N, C, HW) dense
  int64_t first_stride;            // offset of channel c's first element: c * first_stride
  __device__ acc_t begin(int64_t c) const { return finite_or_zero(static_cast<acc_t>(x[c * first_stride])); }
  __device__ void operator()(acc_t K, int64_t i, acc_t& s1, acc_t& s2) const {
    const acc_t d = static_cast<acc_t>(x[i]) - K;
    s1 += d;
    s2 += d * d;
  }
};

template <typename scalar_t, typename acc_t>
struct StoreMeanVar {
  const scalar_t* __restrict__ x;
  int64_t first_stride;
  double count;
  acc_t *mean, *var;  // (C,): batch mean and biased variance
  __device__ void operator()(int64_t c, double s1, double s2) const {
    const double K = static_cast<double>(finite_or_zero(static_cast<acc_t>(x[c * first_stride])));
    const double v = (s2 - s1 * s1 / count) / count;
    mean[c] = static_cast<acc_t>(K + s1 / count);
    var[c] = static_cast<acc_t>(v < 0 ? 0.0 : v);
  }
};

// Training backward, pass 2: grad_in = scale * (g - sum_g / M - x_hat * sum_gxhat / M).
// channels_last: threadIdx.x walks channels (coefficients folded once per thread), rows strided.
template <typename scalar_t, typename acc_t, Act A>
struct TrainInputGrad {
  const scalar_t* __restrict__ gy;
  const scalar_t* __restrict__ x;
  scalar_t* __restrict__ gx;
  const acc_t *mean, *var, *weight, *bias, *sum_gxhat, *sum_g;
  acc_t eps, inv_count;
  struct State {
    acc_t rstd, scale, shift, mu, mean_g, mean_gxhat;
  };
  __device__ State begin(int64_t c) const {
    State s;
    bn_scale_shift<acc_t>(mean, var, weight, bias, eps, c, s.rstd, s.scale, s.shift);
    s.mu = mean[c];
    s.mean_g = sum_g[c] * inv_count;
    s.mean_gxhat = sum_gxhat[c] * inv_count;
    return s;
  }
  __device__ void operator()(const State& s, int64_t i) const {
    const acc_t xv = static_cast<acc_t>(x[i]);
    const acc_t g = static_cast<acc_t>(gy[i]) * act_derivative<A>(xv * s.scale + s.shift);
    gx[i] = static_cast<scalar_t>(s.scale * (g - s.mean_g - (xv - s.mu) * s.rstd * s.mean_gxhat));
  }
};

template <typename Elementwise>
__global__ void per_channel_nhwc_kernel(Elementwise op, int64_t M, int64_t C) {
  const int64_t c = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const auto state = op.begin(c);
  for (int64_t m = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; m < M;
       m += static_cast<int64_t>(gridDim.x) * blockDim.y) {
    op(state, m * C + c);
  }
}

// NCHW: blockIdx.x is the (n, c) plane, blockIdx.y a chunk of its HW elements.
template <typename Elementwise>
__global__ void per_channel_nchw_kernel(Elementwise op, int64_t C, int64_t HW) {
  const int64_t plane = blockIdx.x;
  const auto state = op.begin(plane % C);
  for (int64_t p = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x; p < HW;
       p += static_cast<int64_t>(gridDim.y) * blockDim.x) {
    op(state, plane * HW + p);
  }
}

template <typename Elementwise>
void launch_per_channel(const ChannelLayout& L, const Elementwise& op) {
  const auto stream = at::cuda::getCurrentCUDAStream();
  if (L.channels_last) {
    const int tx = static_cast<int>(std::min<int64_t>(32, L.C));
    const int ty = kThreads / tx;
    const dim3 grid(static_cast<unsigned>(std::min<int64_t>(ceil_div(L.rows(), ty * 4), 1 << 20)),
                    static_cast<unsigned>(ceil_div(L.C, tx)));
    TORCH_CHECK(grid.y <= 65535, "batch_norm_act: too many channels for one launch (", L.C, ")");
    per_channel_nhwc_kernel<<<grid, dim3(tx, ty), 0, stream>>>(op, L.rows(), L.C);
  } else {
    const int64_t planes = L.N * L.C;
    TORCH_CHECK(planes < (int64_t(1) << 31), "batch_norm_act: too many (n, c) planes for one launch");
    const dim3 grid(static_cast<unsigned>(planes),
                    static_cast<unsigned>(std::min<int64_t>(ceil_div(L.HW, kThreads * 4), 65535)));
    per_channel_nchw_kernel<<<grid, kThreads, 0, stream>>>(op, L.C, L.HW);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
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

// Reduction pass of the backward (and, in eval mode, grad_input in the same pass).
template <typename scalar_t, Act A, bool kWriteGradInput>
void launch_backward_reduce(const BatchNormEvalArgs& a, const at::Tensor& grad_out, at::Tensor& grad_in,
                            at::Tensor& sum_gxhat, at::Tensor& sum_g) {
  using acc_t = at::opmath_type<scalar_t>;
  const BackwardTerms<scalar_t, acc_t, A, kWriteGradInput> terms{
      grad_out.data_ptr<scalar_t>(), a.input.data_ptr<scalar_t>(),
      kWriteGradInput ? grad_in.data_ptr<scalar_t>() : nullptr, a.mean.data_ptr<acc_t>(), a.var.data_ptr<acc_t>(),
      data_or_null<acc_t>(a.weight), data_or_null<acc_t>(a.bias), static_cast<acc_t>(a.eps)};
  reduce_channels<acc_t>(a.layout, sum_g.options(), terms,
                         StoreSums<acc_t>{sum_gxhat.data_ptr<acc_t>(), sum_g.data_ptr<acc_t>()});
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
  BackwardBuffers buf = prepare_backward(grad_output, input, a);
  const at::Tensor& gy = buf.grad_out;
  at::Tensor &grad_in = buf.grad_in, &sum_gxhat = buf.sum_gxhat, &sum_g = buf.sum_g;
  if (input.numel() == 0) return {grad_in, sum_gxhat, sum_g};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "batch_norm_act_eval_backward_cuda", [&] {
    MK_DISPATCH_ACTIVATION(a.act, [&] { launch_backward_reduce<scalar_t, kAct, true>(a, gy, grad_in, sum_gxhat, sum_g); });
  });
  return {grad_in, sum_gxhat, sum_g};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_act_train_cuda(const at::Tensor& input,
                                                                         const c10::optional<at::Tensor>& weight,
                                                                         const c10::optional<at::Tensor>& bias,
                                                                         double eps, c10::string_view activation) {
  check_batch_norm_train(input, weight, bias, eps, std::string(activation));
  const c10::cuda::CUDAGuard guard(input.device());
  const auto fmt = output_memory_format(input);
  const at::Tensor x = input.contiguous(fmt);
  const auto acc_opts = input.options().dtype(acc_type_for(input.scalar_type()));
  at::Tensor mean = at::empty({input.size(1)}, acc_opts);  // StoreMeanVar writes every channel
  at::Tensor var = at::empty({input.size(1)}, acc_opts);
  if (input.numel() == 0) {
    return {at::empty(input.sizes(), input.options().memory_format(fmt)), mean.zero_(), var.zero_()};
  }
  const ChannelLayout L = channel_layout(x, fmt);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "batch_norm_stats_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const int64_t first_stride = L.channels_last ? 1 : L.HW;
    reduce_channels<acc_t>(L, acc_opts, ShiftedMomentTerms<scalar_t, acc_t>{xp, first_stride},
                           StoreMeanVar<scalar_t, acc_t>{xp, first_stride, static_cast<double>(L.rows()),
                                                         mean.data_ptr<acc_t>(), var.data_ptr<acc_t>()});
  });
  return {batch_norm_act_eval_cuda(x, mean, var, weight, bias, eps, activation), mean, var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_act_train_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, const at::Tensor& mean, const at::Tensor& var, double eps,
    c10::string_view activation) {
  check_batch_norm_eval(input, mean, var, weight, bias, eps, std::string(activation));
  const c10::cuda::CUDAGuard guard(input.device());
  const auto a = prepare_batch_norm_eval(input, mean, var, weight, bias, eps, std::string(activation));
  BackwardBuffers buf = prepare_backward(grad_output, input, a);
  const at::Tensor& gy = buf.grad_out;
  at::Tensor &grad_in = buf.grad_in, &sum_gxhat = buf.sum_gxhat, &sum_g = buf.sum_g;
  if (input.numel() == 0) return {grad_in, sum_gxhat, sum_g};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "batch_norm_act_train_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    MK_DISPATCH_ACTIVATION(a.act, [&] {
      launch_backward_reduce<scalar_t, kAct, false>(a, gy, grad_in, sum_gxhat, sum_g);
      launch_per_channel(a.layout, TrainInputGrad<scalar_t, acc_t, kAct>{
          gy.data_ptr<scalar_t>(), a.input.data_ptr<scalar_t>(), grad_in.data_ptr<scalar_t>(),
          a.mean.data_ptr<acc_t>(), a.var.data_ptr<acc_t>(), data_or_null<acc_t>(a.weight),
          data_or_null<acc_t>(a.bias), sum_gxhat.data_ptr<acc_t>(), sum_g.data_ptr<acc_t>(),
          static_cast<acc_t>(a.eps), static_cast<acc_t>(1.0 / static_cast<double>(a.layout.rows()))});
    });
  });
  return {grad_in, sum_gxhat, sum_g};
}

// The running-statistics update in one launch (the generic op takes four: mul_ and add_ per
// statistic), in the batch statistics' dtype S (float, or double), stored in the buffers' T.
template <typename T, typename S>
__global__ void update_running_stats_kernel(T* __restrict__ running_mean, T* __restrict__ running_var,
                                            const S* __restrict__ mean, const S* __restrict__ var, int64_t C,
                                            S momentum, S var_weight) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  running_mean[c] = static_cast<T>(momentum * mean[c] + (S(1) - momentum) * static_cast<S>(running_mean[c]));
  running_var[c] = static_cast<T>(var_weight * var[c] + (S(1) - momentum) * static_cast<S>(running_var[c]));
}

void batch_norm_update_stats_cuda(at::Tensor& running_mean, at::Tensor& running_var, const at::Tensor& mean,
                                  const at::Tensor& var, int64_t count, double momentum) {
  const double unbias = check_update_stats(running_mean, running_var, mean, var, count);
  const bool one_kernel = running_mean.is_cuda() && running_var.device() == running_mean.device() &&
                          running_mean.scalar_type() == running_var.scalar_type() &&
                          mean.scalar_type() == var.scalar_type() &&
                          (mean.scalar_type() == at::kFloat || mean.scalar_type() == at::kDouble) &&
                          running_mean.is_contiguous() && running_var.is_contiguous() && mean.is_contiguous() &&
                          var.is_contiguous();
  if (!one_kernel) {  // mixed devices or dtypes, strided buffers: the generic update
    update_stats_generic(running_mean, running_var, mean, var, unbias, momentum);
    return;
  }
  const int64_t C = mean.numel();
  if (C == 0) return;
  const c10::cuda::CUDAGuard guard(running_mean.device());
  const int64_t blocks = ceil_div(C, kThreads);
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "batch_norm_update_stats (CUDA): too many channels");
  AT_DISPATCH_FLOATING_TYPES(mean.scalar_type(), "batch_norm_update_stats_cuda", [&] {
    using S = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, running_mean.scalar_type(),
                                    "batch_norm_update_stats_cuda", [&] {
      update_running_stats_kernel<scalar_t, S>
          <<<static_cast<unsigned>(blocks), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
              running_mean.data_ptr<scalar_t>(), running_var.data_ptr<scalar_t>(), mean.data_ptr<S>(),
              var.data_ptr<S>(), C, static_cast<S>(momentum), static_cast<S>(momentum * unbias));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(mobilenet_kernels, CUDA, m) {
  m.impl("batch_norm_update_stats", &batch_norm_update_stats_cuda);
  m.impl("batch_norm_act_eval", &batch_norm_act_eval_cuda);
  m.impl("batch_norm_act_eval_backward", &batch_norm_act_eval_backward_cuda);
  m.impl("batch_norm_act_train", &batch_norm_act_train_cuda);
  m.impl("batch_norm_act_train_backward", &batch_norm_act_train_backward_cuda);
}

}  // namespace mobilenet_kernels
