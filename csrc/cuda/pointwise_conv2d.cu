// pointwise_conv2d, CUDA (sm_80+).
//
// What runs, honestly: by default the GEMM is cuBLAS, called through ATen (at::mm_out / at::bmm_out
// into the output tensor), and the epilogue is a SECOND pass over the output, one fused vectorized
// kernel that rewrites it in place. With MK_PW_FUSED=1, float16/bfloat16 channels_last convs with
// whole 16-byte channel vectors run instead through our tensor-core GEMM with the epilogue (and the
// statistics) in it (pointwise_gemm.cuh: one pass, one rounding); opt-in: correct on an H200 (run
// 3), but its forward took 1.05x the time of cuBLAS + epilogue in run 4
// (benchmarks/results/pointwise_conv2d_fused_h200.json). The backward stays on cuBLAS.
//   channels_last: out (P = N*H*W, Cout) = x (P, Cin) . W^T, one at::mm_out on 2-D views;
//   NCHW:          out[n] (Cout, H*W) = W . x[n] (Cin, H*W), one at::bmm_out with W expanded over
//                  the batch (batch stride 0: ATen passes it to cublasGemmStridedBatched, no copy).
// Forward epilogue: y = act(y + bias) + residual, in place, 16-byte vectors when the channels
//   (channels_last) or the pixels of a plane (NCHW) come in whole vectors and the residual is
//   16-byte aligned; float arithmetic (double for float64). Skipped for identity without bias and
//   residual. Stats: the bias-free GEMM, then a partials kernel over the output as stored: per
//   (tile, channel) centred (count, mean, M2), from per-thread shifted sums (shift = the thread's
//   first value, 0 if not finite, so an Inf gives torch's +-Inf mean and NaN variance) merged over
//   the block's threads by Chan's formula in a fixed tree; a second kernel merges the tiles in a
//   fixed order, in double (pointwise_stats.cuh on chan_stats.cuh, shared with depthwise_conv2d.cu;
//   emulated on the host by the tests). No atomics.
// Backward (all cuBLAS through ATen, no kernel of ours): grad_input = g . W (at::mm_out /
//   at::bmm_out, as the forward); grad_weight = g^T . x over all N*H*W pixels as ONE GEMM
//   (channels_last: views; NCHW: g and x are first copied to (C, N*H*W), a transposed copy of each,
//   as torch.addbmm does); grad_bias = at::sum over (N, H, W) in float (double for float64), cast.
// Precision: cuBLAS accumulates float16/bfloat16 GEMMs in float (ATen asks for CUBLAS_COMPUTE_32F;
//   torch.backends.cuda.matmul.allow_fp16/bf16_reduced_precision_reduction may let cuBLAS reduce
//   split-K partials in half precision, as for torch.mm), but it ROUNDS the GEMM result to the
//   output dtype: for float16/bfloat16 the epilogue then adds the bias, applies the activation and
//   adds the residual in float and rounds again (two roundings, where the CPU path has one).
//   float32 GEMMs follow torch.backends.cuda.matmul's float32 precision setting (IEEE by default;
//   TF32 when allowed), as torch.mm does; F.conv2d follows cuDNN's (TF32 by default).
// Determinism: cuBLAS gives bitwise identical results run to run for a fixed shape, GPU model and
//   SM count (its split-K reductions go through a workspace, not atomics; torch documents setting
//   CUBLAS_WORKSPACE_CONFIG=:4096:8 for multi-stream use); at::sum is deterministic; our kernels
//   reduce in a fixed order. So grad_weight, grad_bias and the statistics are bitwise
//   reproducible.
// Indexing: int64 element offsets; division by a fixed divisor via mk_cuda.cuh's Divider.
// Limits: the epilogue costs one extra read and write of the output (plus the residual read);
//   NCHW grad_weight copies grad_output and input once (N > 1).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <limits>
#include <string>
#include <tuple>

#include "chan_stats.cuh"
#include "mk_cuda.cuh"
#include "pointwise_conv2d.h"
#include "pointwise_gemm.cuh"  // try_pointwise_gemm, try_pointwise_gemm_stats (MK_PW_FUSED=1)
#include "pointwise_stats.cuh"

namespace mobilenet_kernels {
namespace {

using namespace cuda;  // Vec, Divider, load_vec, recip_ge1, apply_activation (mk_cuda.cuh); chan_stats.cuh

constexpr int kThreads = 256;  // threads per block
namespace pw = cuda::pw;       // the statistics pass (pointwise_stats.cuh)

// ---------------------------------------------------------------------------------------------
// GEMM: y (N, C, H, W) = conv1x1(x (N, K, H, W), w (C, K)), x and y dense in one format.
void conv_gemm(const at::Tensor& x, const at::Tensor& w_ck, at::Tensor& y, bool channels_last) {
  const int64_t N = x.size(0), K = x.size(1), C = y.size(1), HW = x.size(2) * x.size(3);
  if (channels_last) {
    at::Tensor y2 = y.permute({0, 2, 3, 1}).view({N * HW, C});
    at::mm_out(y2, x.permute({0, 2, 3, 1}).view({N * HW, K}), w_ck.t());
  } else {
    at::Tensor y3 = y.view({N, C, HW});
    at::bmm_out(y3, w_ck.expand({N, C, K}), x.view({N, K, HW}));
  }
}

// ---------------------------------------------------------------------------------------------
// Forward epilogue, in place: y = act(y + bias[c]) + res, over VEC-element vectors i < nvec.
// channels_last: element e is channel e % C (VEC > 1 needs C % VEC == 0); NCHW: channel (e / HW) % C
// (VEC > 1 needs HW % VEC == 0, so a vector stays in one plane).
template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads)
    pointwise_epilogue_kernel(scalar_t* __restrict__ y, const scalar_t* __restrict__ res,
                              const at::opmath_type<scalar_t>* __restrict__ bias, int64_t nvec, int64_t C,
                              Divider div_inner, Divider div_c, bool channels_last, Act act) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < nvec; i += stride) {
    const int64_t e = i * VEC;
    int64_t c;
    if (channels_last) {
      c = e - div_inner.div(e) * C;
    } else {
      const int64_t q = div_inner.div(e);  // n * C + c
      c = q - div_c.div(q) * C;
    }
    acc_t z[VEC];
    load_vec<VEC>(y + e, z);
    acc_t r[VEC];
    if (res != nullptr) {
      load_vec<VEC>(res + e, r);
    } else {
#pragma unroll
      for (int v = 0; v < VEC; ++v) r[v] = acc_t(0);
    }
    acc_t b[VEC];
#pragma unroll
    for (int v = 0; v < VEC; ++v) b[v] = bias == nullptr ? acc_t(0) : bias[channels_last ? c + v : c];
    Vec<scalar_t, VEC> o;
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      acc_t t = apply_activation(act, z[v] + b[v]);
      if (res != nullptr) t += r[v];
      o.v[v] = static_cast<scalar_t>(t);
    }
    *reinterpret_cast<Vec<scalar_t, VEC>*>(y + e) = o;
  }
}

template <typename scalar_t>
void run_epilogue(const PointwiseArgs& a, at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kVec = 16 / sizeof(scalar_t);
  const bool cl = a.channels_last();
  const int64_t numel = out.numel();
  const scalar_t* res = a.residual.defined() ? a.residual.data_ptr<scalar_t>() : nullptr;
  const bool vec = (cl ? a.Cout % kVec == 0 : a.HW() % kVec == 0) && aligned16(out.data_ptr()) &&
                   (res == nullptr || aligned16(res));
  const int vw = vec ? kVec : 1;
  const int64_t nvec = numel / vw;
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t blocks = std::max<int64_t>(1, std::min(ceil_div(nvec, kThreads), sms * 16));
  const Divider div_inner = make_divider(cl ? a.Cout : a.HW());
  const Divider div_c = make_divider(std::max<int64_t>(1, a.Cout));
  const acc_t* bias = a.bias.defined() ? a.bias.data_ptr<acc_t>() : nullptr;
  const auto stream = at::cuda::getCurrentCUDAStream();
  if (vec) {
    pointwise_epilogue_kernel<scalar_t, kVec><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        out.data_ptr<scalar_t>(), res, bias, nvec, a.Cout, div_inner, div_c, cl, a.act);
  } else {
    pointwise_epilogue_kernel<scalar_t, 1><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        out.data_ptr<scalar_t>(), res, bias, nvec, a.Cout, div_inner, div_c, cl, a.act);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t>
void run_stats(const PointwiseArgs& a, const at::Tensor& out, at::Tensor& mean, at::Tensor& var) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* y = out.data_ptr<scalar_t>();
  const pw::StatsPlan plan = pw::stats_plan(y, a.pixels(), a.Cout, a.HW(), a.channels_last());
  const auto acc_opts = out.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  const at::Tensor part = at::empty({3, plan.tiles, a.Cout}, acc_opts);
  pw::stats_steps(plan, y, part.data_ptr<acc_t>(), mean.data_ptr<acc_t>(), var.data_ptr<acc_t>(),
                  StreamLaunch{at::cuda::getCurrentCUDAStream()});
}

// ---------------------------------------------------------------------------------------------
// ops

at::Tensor pointwise_conv2d_cuda(const at::Tensor& input, const at::Tensor& weight,
                                 const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& residual,
                                 c10::string_view activation) {
  check_cuda(input);
  const c10::cuda::CUDAGuard guard(input.device());
  const PointwiseArgs a = prepare_pointwise(input, weight, bias, residual, std::string(activation));
  const at::AutoDispatchBelowADInplaceOrView below_autograd;  // the ATen calls below are part of this kernel
  at::Tensor out = at::empty(a.output_sizes(), input.options().memory_format(a.format));
  if (out.numel() == 0 || try_pointwise_gemm(a, out)) return out;
  conv_gemm(a.input, a.weight, out, a.channels_last());
  if (a.act != Act::kIdentity || a.bias.defined() || a.residual.defined()) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "pointwise_conv2d_cuda",
                                    [&] { run_epilogue<scalar_t>(a, out); });
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pointwise_conv2d_stats_cuda(const at::Tensor& input,
                                                                           const at::Tensor& weight) {
  check_cuda(input);
  const c10::cuda::CUDAGuard guard(input.device());
  const PointwiseArgs a = prepare_pointwise(input, weight, c10::nullopt, c10::nullopt);
  check_pointwise_stats_count(a);
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const auto acc_opts = input.options().dtype(acc_type_for(input.scalar_type()));
  at::Tensor out = at::empty(a.output_sizes(), input.options().memory_format(a.format));
  at::Tensor mean = at::empty({a.Cout}, acc_opts);  // the statistics kernels write every channel
  at::Tensor var = at::empty({a.Cout}, acc_opts);
  if (out.numel() == 0) return {out, mean.zero_(), var.zero_()};
  if (try_pointwise_gemm_stats(a, out, mean, var)) return {out, mean, var};
  conv_gemm(a.input, a.weight, out, a.channels_last());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "pointwise_conv2d_stats_cuda",
                                  [&] { run_stats<scalar_t>(a, out, mean, var); });
  return {out, mean, var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pointwise_conv2d_backward_cuda(const at::Tensor& grad_output,
                                                                              const at::Tensor& input,
                                                                              const at::Tensor& weight,
                                                                              std::array<bool, 3> output_mask) {
  check_cuda(input);
  const c10::cuda::CUDAGuard guard(input.device());
  const PointwiseArgs a = prepare_pointwise(input, weight, c10::nullopt, c10::nullopt);
  const at::Tensor g = prepare_pointwise_grad_output(grad_output, a, input);
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const auto empty = [&] { return at::empty({0}, input.options()); };  // one per masked output: no aliasing
  at::Tensor grad_input = output_mask[0] ? at::empty(input.sizes(), input.options().memory_format(a.format)) : empty();
  at::Tensor grad_weight = output_mask[1] ? at::empty({a.Cout, a.Cin, 1, 1}, weight.options()) : empty();
  at::Tensor grad_bias = output_mask[2] ? at::empty({a.Cout}, input.options()) : empty();
  const int64_t P = a.pixels(), HW = a.HW();
  if (P == 0) {  // an empty batch: the sums are zero
    if (output_mask[1]) grad_weight.zero_();
    if (output_mask[2]) grad_bias.zero_();
    return {grad_input, grad_weight, grad_bias};
  }
  if (output_mask[0] && grad_input.numel() > 0) {
    // grad_input (P, Cin) = g (P, Cout) . W (Cout, Cin): the forward GEMM with W^T (Cin, Cout).
    conv_gemm(g, a.weight.t(), grad_input, a.channels_last());
  }
  if (output_mask[1]) {
    // grad_weight (Cout, Cin) = g^T (Cout, P) . x (P, Cin): one GEMM over every pixel.
    at::Tensor gw = grad_weight.view({a.Cout, a.Cin});
    if (a.channels_last()) {
      at::mm_out(gw, g.permute({0, 2, 3, 1}).reshape({P, a.Cout}).t(), a.input.permute({0, 2, 3, 1}).reshape({P, a.Cin}));
    } else {
      const at::Tensor g2 = g.view({a.N, a.Cout, HW}).transpose(0, 1).reshape({a.Cout, P});   // a copy when N > 1
      const at::Tensor x2 = a.input.view({a.N, a.Cin, HW}).transpose(0, 1).reshape({a.Cin, P});
      at::mm_out(gw, g2, x2.t());
    }
  }
  if (output_mask[2]) {
    const std::array<int64_t, 3> dims{0, 2, 3};
    grad_bias.copy_(at::sum(g, dims, false, acc_type_for(input.scalar_type())));
  }
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(mobilenet_kernels, CUDA, m) {
  m.impl("pointwise_conv2d", &pointwise_conv2d_cuda);
  m.impl("pointwise_conv2d_backward", &pointwise_conv2d_backward_cuda);
  m.impl("pointwise_conv2d_stats", &pointwise_conv2d_stats_cuda);
}

}  // namespace mobilenet_kernels
