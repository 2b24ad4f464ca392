// Host emulation of pointwise_gemm_kernel (csrc/cuda/pointwise_gemm.cuh), the tensor-core 1x1 conv
// with its epilogue (bias, activation, residual) or its statistics partials in the GEMM: g++
// compiles the very header against cuda_shim/ (its mma.h computes each wmma fragment's tile on the
// host; cp.async is a plain copy) and runs the kernel on the CPU, so that the tests
// (python_tests/test_cuda_emulation.py) can check its tiles, K steps, tails and epilogue against
// an fp64 reference without a GPU. Same structure as inverted_residual_host.cpp.
//
// A call does what try_pointwise_gemm (csrc/cuda/pointwise_gemm.cu) does, on CPU tensors:
// prepare_pointwise, pointwise_gemm_eligible (raises when the kernel would not take the conv),
// plan_gemm, dispatch_16bit, dispatch_bn; then the emulated launch (emulation.h) with the input, weight, bias and
// residual inside NaN guard zones, the output (NaN) inside sentinel guard zones and the partials
// starting as NaN: an unguarded tail read, an element left unwritten or a stray write shows.
#include <torch/extension.h>

#include <string>
#include <tuple>
#include <vector>

#include "emulation.h"  // the shim: after the PyTorch headers, before the kernel's
#include "cuda/pointwise_gemm.cuh"

namespace {

namespace mk = mobilenet_kernels;
namespace pwg = mobilenet_kernels::cuda::pw_gemm;
using mk_emu::guarded_nan;
using mk_emu::kGuardElems;
using mk_emu::kNaN;

template <typename scalar_t, bool kStats>
void launch(const mk::PointwiseArgs& a, const pwg::GemmPlan& p, at::Tensor& y, at::Tensor& part) {
  const pwg::GemmShape s = pwg::gemm_shape(a);
  const scalar_t* x = a.input.data_ptr<scalar_t>();
  const scalar_t* w = a.weight.data_ptr<scalar_t>();
  const float* bias = a.bias.defined() ? a.bias.data_ptr<float>() : nullptr;
  const scalar_t* res = a.residual.defined() ? a.residual.data_ptr<scalar_t>() : nullptr;
  scalar_t* yp = y.data_ptr<scalar_t>();
  float* pn = kStats ? part[0].data_ptr<float>() : nullptr;
  float* pm = kStats ? part[1].data_ptr<float>() : nullptr;
  float* pm2 = kStats ? part[2].data_ptr<float>() : nullptr;
  const dim3 grid = pwg::gemm_grid(p);
  pwg::dispatch_bn(p.bn, [&](auto bn) {
    constexpr int BN = decltype(bn)::value;
    mk_emu::launch_grid(grid, pwg::gemm_block(p), static_cast<size_t>(p.smem_bytes), pwg::mk_pw_gemm_smem, [&] {
      pwg::pointwise_gemm_kernel<scalar_t, BN, kStats>(x, w, bias, res, yp, s, a.act, pn, pm, pm2);
    });
  });
}

// pointwise_conv2d (stats: the bias-free GEMM and its partials) by the emulated kernel, with the
// op's arguments (CPU tensors). Returns (y, partials (3, tiles_m, Cout) or empty, plan) with plan =
// [BN, tiles_m, tiles_n, smem_bytes, block.x, block.y].
std::tuple<at::Tensor, at::Tensor, std::vector<int64_t>> run(const at::Tensor& input, const at::Tensor& weight,
                                                             const c10::optional<at::Tensor>& bias,
                                                             const c10::optional<at::Tensor>& residual,
                                                             const std::string& activation, bool stats) {
  TORCH_CHECK(input.device().is_cpu(), "emulation: expected CPU tensors");
  TORCH_CHECK(!stats || (!bias.has_value() && !residual.has_value() && activation == "identity"),
              "emulation: the statistics variant has no bias, residual or activation");
  mk::PointwiseArgs a = mk::prepare_pointwise(input, weight, bias, residual, activation);
  const at::Tensor like = at::empty(a.output_sizes(), input.options().memory_format(a.format));
  TORCH_CHECK(pwg::pointwise_gemm_eligible(a, like), "emulation: pointwise_gemm_eligible refuses this conv");
  const pwg::GemmPlan p = pwg::plan_gemm(pwg::gemm_shape(a), a.input.element_size());
  const mk_emu::GuardedOutput out(like, kGuardElems);
  at::Tensor y = out.y;
  a.input = mk_emu::in_guarded_buffer(a.input, kGuardElems, kNaN);
  a.weight = guarded_nan(a.weight);
  if (a.bias.defined()) a.bias = guarded_nan(a.bias);
  if (a.residual.defined()) a.residual = mk_emu::in_guarded_buffer(a.residual, kGuardElems, kNaN);
  at::Tensor part = stats ? at::full({3, p.tiles_m, a.Cout}, kNaN, input.options().dtype(at::kFloat))
                          : at::empty({0}, input.options().dtype(at::kFloat));
  pwg::dispatch_16bit(input.scalar_type(), [&](auto t) {
    stats ? launch<decltype(t), true>(a, p, y, part) : launch<decltype(t), false>(a, p, y, part);
  });
  out.check();
  const dim3 block = pwg::gemm_block(p);
  return {y, part, {p.bn, p.tiles_m, p.tiles_n, p.smem_bytes, block.x, block.y}};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("run", &run, "pointwise_gemm_kernel emulated on the host", py::arg("input"), py::arg("weight"),
        py::arg("bias"), py::arg("residual"), py::arg("activation"), py::arg("stats"));
}
