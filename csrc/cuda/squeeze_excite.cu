// squeeze_excite, CUDA (sm_80+): the ops. The kernels and their launch sequence are in
// squeeze_excite.cuh (three stages: a reduction over HW per (n, c), the excite step as small tiled
// GEMMs over the batch (excite_gemm.cuh), a scaling pass), shared with the host emulation
// (python_tests/cuda_emulation/se_host.cpp), which runs the same sequence on the CPU.
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

#include "squeeze_excite.cuh"
#include "squeeze_excite.h"

namespace mobilenet_kernels {
namespace {

namespace se = cuda::se;

cuda::StreamLaunch stream_launch() { return cuda::StreamLaunch{at::cuda::getCurrentCUDAStream()}; }

// Blocks of the scaling pass that fill the device (a grid-stride loop covers the rest).
int64_t resident_pass_blocks() {
  const auto* prop = at::cuda::getCurrentDeviceProperties();
  return static_cast<int64_t>(prop->multiProcessorCount) * (prop->maxThreadsPerMultiProcessor / se::kPassThreads);
}

template <typename acc_t>
se::ExciteParams<acc_t> excite_params(const SqueezeExciteArgs& a) {
  TORCH_CHECK(se::excite_sizes_fit(a.layout.N, a.layout.C, a.S), "squeeze_excite (CUDA): too many images (",
              a.layout.N, ") or channels (", a.layout.C, ", ", a.S, ") for the excite step");
  return {a.w1.data_ptr<acc_t>(), a.b1.data_ptr<acc_t>(), a.w2.data_ptr<acc_t>(), a.b2.data_ptr<acc_t>(),
          static_cast<int>(a.layout.N), static_cast<int>(a.layout.C), static_cast<int>(a.S), a.act, a.scale_act};
}

std::tuple<at::Tensor, at::Tensor> squeeze_excite_cuda(const at::Tensor& input, const at::Tensor& fc1_weight,
                                                       const at::Tensor& fc1_bias, const at::Tensor& fc2_weight,
                                                       const at::Tensor& fc2_bias, c10::string_view activation,
                                                       c10::string_view scale_activation) {
  cuda::check_cuda(input);
  const c10::cuda::CUDAGuard guard(input.device());
  const SqueezeExciteArgs a = prepare_squeeze_excite(input, fc1_weight, fc1_bias, fc2_weight, fc2_bias,
                                                     std::string(activation), std::string(scale_activation));
  const ChannelLayout& L = a.layout;
  const auto acc_opts = input.options().dtype(acc_type_for(input.scalar_type()));
  at::Tensor out = at::empty(input.sizes(), input.options().memory_format(a.format));
  at::Tensor pooled = at::empty({L.N, L.C}, acc_opts);
  if (L.N * L.C == 0) return {out, pooled};
  at::Tensor scratch = at::empty({se::forward_scratch(L, a.S)}, acc_opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "squeeze_excite_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    se::forward_steps<scalar_t>(L, excite_params<acc_t>(a), a.input.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                                pooled.data_ptr<acc_t>(), scratch.data_ptr<acc_t>(), resident_pass_blocks(),
                                stream_launch());
  });
  return {out, pooled};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> squeeze_excite_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& pooled, const at::Tensor& fc1_weight,
    const at::Tensor& fc1_bias, const at::Tensor& fc2_weight, const at::Tensor& fc2_bias, c10::string_view activation,
    c10::string_view scale_activation) {
  cuda::check_cuda(input);
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
  at::Tensor scratch = at::empty({se::backward_scratch(L, a.S)}, acc_opts);
  at::Tensor gw1 = at::empty(fc1_weight.sizes(), acc_opts), gb1 = at::empty(fc1_bias.sizes(), acc_opts);
  at::Tensor gw2 = at::empty(fc2_weight.sizes(), acc_opts), gb2 = at::empty(fc2_bias.sizes(), acc_opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "squeeze_excite_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const se::ExciteParamGrads<acc_t> grads{gw1.data_ptr<acc_t>(), gb1.data_ptr<acc_t>(), gw2.data_ptr<acc_t>(),
                                            gb2.data_ptr<acc_t>()};
    se::backward_steps<scalar_t>(L, excite_params<acc_t>(a), gy.data_ptr<scalar_t>(), a.input.data_ptr<scalar_t>(),
                                 p.data_ptr<acc_t>(), grad_input.data_ptr<scalar_t>(), grads,
                                 scratch.data_ptr<acc_t>(), resident_pass_blocks(), stream_launch());
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
