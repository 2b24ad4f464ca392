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
#include "channel_passes.cuh"

namespace mobilenet_kernels {
namespace {

namespace bn = cuda::bn;
using bn::kThreads;
using cuda::ceil_div;
using cuda::Vec;
using cuda::plane;
using cuda::vector_width;

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
      out.v[j] = static_cast<scalar_t>(bn::apply_value<A>(static_cast<acc_t>(in.v[j]), scale, shift));
    }
    *reinterpret_cast<Vec<scalar_t, VEC>*>(y + i) = out;
  }
}

// ---------------------------------------------------------------------------------------------
// The per-channel passes (reductions and elementwise) live in channel_passes.cuh, shared with the
// host emulation; here their launches on the current stream.

// A reduction over L: stage 1 with `vec` channels per thread (channels_last), then finish_kernel.
template <typename acc_t, typename Term, typename Finish>
void reduce_channels(const ChannelLayout& L, int vec, const at::TensorOptions& acc_opts, const Term& term,
                     const Finish& finish) {
  const auto stream = at::cuda::getCurrentCUDAStream();
  const bn::PassPlan p = bn::plan_reduction(L, vec);
  at::Tensor partial = at::empty({2, p.tiles, L.C}, acc_opts);
  acc_t* p0 = plane<acc_t>(partial, 0);
  acc_t* p1 = plane<acc_t>(partial, 1);
  constexpr int kVec = 16 / sizeof(typename Term::Scalar);
  if (!L.channels_last) {
    bn::reduce_nchw_kernel<acc_t><<<p.grid, p.block, 0, stream>>>(term, L.rows(), L.C, L.HW, p.per_tile, p0, p1);
  } else if (vec == kVec && kVec > 1) {
    bn::reduce_nhwc_kernel<acc_t, kVec><<<p.grid, p.block, 0, stream>>>(term, L.rows(), L.C, p.per_tile, p0, p1);
  } else {
    bn::reduce_nhwc_kernel<acc_t, 1><<<p.grid, p.block, 0, stream>>>(term, L.rows(), L.C, p.per_tile, p0, p1);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  bn::finish_kernel<acc_t><<<p.finish_grid, p.finish_block, 0, stream>>>(p0, p1, p.tiles, L.C, finish);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// An elementwise pass over L with `vec` channels per thread (channels_last).
template <typename Elementwise>
void launch_per_channel(const ChannelLayout& L, int vec, const Elementwise& op) {
  const auto stream = at::cuda::getCurrentCUDAStream();
  const bn::PassPlan p = bn::plan_per_channel(L, vec);
  TORCH_CHECK(bn::channel_grid_fits(L, p), "batch_norm_act: too many channels or (n, c) planes for one launch (",
              L.N, " x ", L.C, ")");
  constexpr int kVec = 16 / sizeof(typename Elementwise::Scalar);
  if (!L.channels_last) {
    bn::per_channel_nchw_kernel<<<p.grid, p.block, 0, stream>>>(op, L.C, L.HW);
  } else if (vec == kVec && kVec > 1) {
    bn::per_channel_nhwc_kernel<kVec><<<p.grid, p.block, 0, stream>>>(op, L.rows(), L.C);
  } else {
    bn::per_channel_nhwc_kernel<1><<<p.grid, p.block, 0, stream>>>(op, L.rows(), L.C);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The forward, y = act(BN(x)): channels_last as a per-channel pass (EvalApply), NCHW as a flat pass.
template <typename scalar_t, Act A>
void launch_forward(const BatchNormEvalArgs& a, at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const ChannelLayout& L = a.layout;
  const int64_t numel = a.input.numel();
  if (numel == 0) return;
  const scalar_t* x = a.input.data_ptr<scalar_t>();
  scalar_t* y = out.data_ptr<scalar_t>();
  const acc_t* mean = a.mean.data_ptr<acc_t>();
  const acc_t* var = a.var.data_ptr<acc_t>();
  const acc_t* w = data_or_null<acc_t>(a.weight);
  const acc_t* b = data_or_null<acc_t>(a.bias);
  const acc_t eps = static_cast<acc_t>(a.eps);
  if (L.channels_last) {
    const bn::EvalApply<scalar_t, acc_t, A> op{x, y, mean, var, w, b, eps};
    launch_per_channel(L, vector_width<scalar_t>(L.C, {x, y}), op);
    return;
  }
  constexpr int kVec = 16 / sizeof(scalar_t) > 1 ? 16 / sizeof(scalar_t) : 1;
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int vec = vector_width<scalar_t>(L.HW, {x, y});
  const int64_t blocks = std::min<int64_t>(ceil_div(numel, static_cast<int64_t>(kThreads) * vec * 4), 1 << 20);
  if (vec == kVec) {
    batch_norm_act_eval_fwd_nchw_kernel<scalar_t, acc_t, A, kVec>
        <<<blocks, kThreads, 0, stream>>>(x, y, mean, var, w, b, eps, numel, L.C, L.HW);
  } else {
    batch_norm_act_eval_fwd_nchw_kernel<scalar_t, acc_t, A, 1>
        <<<blocks, kThreads, 0, stream>>>(x, y, mean, var, w, b, eps, numel, L.C, L.HW);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Reduction pass of the backward (and, in eval mode, grad_input in the same pass).
template <typename scalar_t, Act A, bool kWriteGradInput>
void launch_backward_reduce(const BatchNormEvalArgs& a, const at::Tensor& grad_out, at::Tensor& grad_in,
                            at::Tensor& sum_gxhat, at::Tensor& sum_g, at::Tensor* dx_table = nullptr) {
  using acc_t = at::opmath_type<scalar_t>;
  const bn::BackwardTerms<scalar_t, acc_t, A, kWriteGradInput> terms{
      grad_out.data_ptr<scalar_t>(), a.input.data_ptr<scalar_t>(),
      kWriteGradInput ? grad_in.data_ptr<scalar_t>() : nullptr, a.mean.data_ptr<acc_t>(), a.var.data_ptr<acc_t>(),
      data_or_null<acc_t>(a.weight), data_or_null<acc_t>(a.bias), static_cast<acc_t>(a.eps)};
  const int vec = vector_width<scalar_t>(a.layout.C, {terms.gy, terms.x, terms.gx});
  if (dx_table == nullptr) {
    reduce_channels<acc_t>(a.layout, vec, sum_g.options(), terms,
                           bn::StoreSums<acc_t>{sum_gxhat.data_ptr<acc_t>(), sum_g.data_ptr<acc_t>()});
  } else {  // the sums and the grad_input pass's coefficients (batch_norm_act_train_backward_sums)
    reduce_channels<acc_t>(
        a.layout, vec, sum_g.options(), terms,
        bn::StoreSumsAndDxTable<acc_t>{sum_gxhat.data_ptr<acc_t>(), sum_g.data_ptr<acc_t>(), a.mean.data_ptr<acc_t>(),
                                       a.var.data_ptr<acc_t>(), data_or_null<acc_t>(a.weight),
                                       data_or_null<acc_t>(a.bias), static_cast<acc_t>(a.eps),
                                       static_cast<acc_t>(1.0 / static_cast<double>(a.layout.rows())), a.layout.C,
                                       dx_table->data_ptr<acc_t>()});
  }
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
    reduce_channels<acc_t>(L, vector_width<scalar_t>(L.C, {xp}), acc_opts,
                           bn::ShiftedMomentTerms<scalar_t, acc_t>{xp, first_stride},
                           bn::StoreMeanVar<scalar_t, acc_t>{xp, first_stride, static_cast<double>(L.rows()),
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
      const bn::TrainInputGrad<scalar_t, acc_t, kAct> op{
          gy.data_ptr<scalar_t>(), a.input.data_ptr<scalar_t>(), grad_in.data_ptr<scalar_t>(),
          a.mean.data_ptr<acc_t>(), a.var.data_ptr<acc_t>(), data_or_null<acc_t>(a.weight),
          data_or_null<acc_t>(a.bias), sum_gxhat.data_ptr<acc_t>(), sum_g.data_ptr<acc_t>(),
          static_cast<acc_t>(a.eps), static_cast<acc_t>(1.0 / static_cast<double>(a.layout.rows()))};
      launch_per_channel(a.layout, vector_width<scalar_t>(a.layout.C, {op.gy, op.x, op.gx}), op);
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

namespace cuda {

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_act_train_backward_sums(
    const at::Tensor& grad_output, const at::Tensor& input, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, const at::Tensor& mean, const at::Tensor& var, double eps,
    const std::string& activation) {
  check_batch_norm_eval(input, mean, var, weight, bias, eps, activation);
  TORCH_CHECK(input.numel() > 0, "batch_norm_act_train_backward_sums: expected a non-empty input");
  const c10::cuda::CUDAGuard guard(input.device());
  const auto a = prepare_batch_norm_eval(input, mean, var, weight, bias, eps, activation);
  BackwardBuffers buf = prepare_backward(grad_output, input, a, /*with_grad_in=*/false);
  at::Tensor table = at::empty({bn::kTrainDxRows, a.layout.C}, buf.sum_g.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "batch_norm_act_train_backward_sums", [&] {
    MK_DISPATCH_ACTIVATION(a.act, [&] {
      launch_backward_reduce<scalar_t, kAct, false>(a, buf.grad_out, buf.grad_in, buf.sum_gxhat, buf.sum_g, &table);
    });
  });
  return {buf.sum_gxhat, buf.sum_g, table};
}

}  // namespace cuda

TORCH_LIBRARY_IMPL(mobilenet_kernels, CUDA, m) {
  m.impl("batch_norm_update_stats", &batch_norm_update_stats_cuda);
  m.impl("batch_norm_act_eval", &batch_norm_act_eval_cuda);
  m.impl("batch_norm_act_eval_backward", &batch_norm_act_eval_backward_cuda);
  m.impl("batch_norm_act_train", &batch_norm_act_train_cuda);
  m.impl("batch_norm_act_train_backward", &batch_norm_act_train_backward_cuda);
}

}  // namespace mobilenet_kernels
