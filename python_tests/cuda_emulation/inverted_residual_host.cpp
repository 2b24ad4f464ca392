// Host emulation of inverted_residual_eval_kernel (csrc/cuda/inverted_residual_block.cuh), the CUDA
// whole-block kernel of inverted_residual_eval: g++ compiles the very header against cuda_shim/
// (dim3, threadIdx & co., __syncthreads as a block barrier) and runs the kernel on the CPU, so that
// the tests (python_tests/test_cuda_emulation.py) can check its index math against the op-by-op
// reference without a GPU. Same structure as dw_tiled_host.cpp.
//
// A call does what the CUDA entry point (csrc/cuda/inverted_residual.cu) does, on CPU tensors:
// prepare_inverted_residual (checks, dense input in its format, weights in the accumulation dtype),
// check_block_limits, the output allocated in the input's memory format, nco_for, plan_block with
// the given shared-memory limit (the device's sharedMemPerBlockOptin), the W_p / W_d transposes,
// for a squeeze-excite block the pass-1 plan and the scratch (NaN); then forward_steps, the
// launcher's own sequence, through the emulated launch (emulation.h). The input and every weight
// sit inside NaN guard zones (an image and more for the input) and the output (NaN) inside
// sentinel guard zones: a missed bounds check, an element left unwritten or a write outside the
// output shows.
#include <torch/extension.h>

#include <string>
#include <tuple>
#include <vector>

#include "emulation.h"  // the shim: after the PyTorch headers, before the kernel's
#include "cuda/inverted_residual_block.cuh"

namespace {

namespace mk = mobilenet_kernels;
namespace irb = mobilenet_kernels::cuda::ir_block;
using mk_emu::guarded_nan;
using mk_emu::kGuardElems;
using mk_emu::kNaN;

template <typename scalar_t>
std::vector<int64_t> launch(const mk::InvertedResidualArgs& a, at::Tensor& y, const at::Tensor& wd_t,
                            const at::Tensor& wp_t, int64_t smem_limit, int64_t major) {
  using acc_t = at::opmath_type<scalar_t>;
  const irb::BlockKernels<scalar_t> ks = irb::plan_block<scalar_t>(a, y, smem_limit, static_cast<int>(major));
  for (const irb::BlockKernel<scalar_t>* k : {&ks.main, &ks.pool}) {
    if (k->kernel == nullptr) continue;
    TORCH_CHECK(k->smem_bytes > 0 && k->smem_bytes <= smem_limit, "emulation: plan with ", k->smem_bytes,
                " bytes of shared memory, limit ", smem_limit);
  }
  // As the launcher does (inverted_residual.cu): the 16-bit weights, and for a squeeze-excite block
  // the scratch, here as NaN.
  at::Tensor we16, wp16;
  if (ks.tensor_cores) {
    std::tie(we16, wp16) = irb::tensor_core_weights(a, ks.main.g);
    we16 = mk_emu::in_guarded_buffer(we16, kGuardElems, kNaN);
    wp16 = mk_emu::in_guarded_buffer(wp16, kGuardElems, kNaN);
  }
  const irb::BlockWeights<scalar_t> w = irb::block_weights<scalar_t>(a, wd_t, wp_t, we16, wp16);
  at::Tensor scratch;
  mk::cuda::se::ExciteParams<acc_t> excite{};
  if (a.has_se()) {
    excite = irb::excite_params<acc_t>(a);
    scratch = guarded_nan(at::empty({irb::se_scratch_elems(a, ks.pool)}, a.se_w1.options()));
  }
  int launches = 0;
  irb::forward_steps<scalar_t>(a, ks, w, a.has_se() ? &excite : nullptr, a.input.data_ptr<scalar_t>(),
                               y.data_ptr<scalar_t>(), scratch.defined() ? scratch.data_ptr<acc_t>() : nullptr,
                               mk_emu::HostLaunch{&irb::mk_ir_block_smem, &launches, &mk::cuda::se::mk_se_gemm_smem});
  const irb::BlockGeom& g = ks.main.g;
  const int64_t per_thread = ks.tensor_cores ? irb::nf_for(a.Cout) : irb::nco_for(a.Cout);
  return {g.TH, g.TW, g.halo_w, g.halo_n, g.tiles_h, g.tiles_w, ks.main.blocks, ks.main.smem_bytes, per_thread,
          launches, ks.tensor_cores};
}

// inverted_residual_eval by the emulated CUDA kernel, with the op's arguments (CPU tensors) and the
// device's per-block shared-memory limit in bytes. Returns (y, plan) with plan = [TH, TW, halo_w,
// halo_n, tiles_h, tiles_w, blocks, smem_bytes, NCO or NF, launches, tensor_cores] (empty when the
// output is) for the main kernel; `major` is the device's compute capability (the tensor-core
// kernel needs 8 or more).
std::tuple<at::Tensor, std::vector<int64_t>> run(const at::Tensor& input, const c10::optional<at::Tensor>& expand_weight,
                                                 const c10::optional<at::Tensor>& expand_bias,
                                                 const at::Tensor& dw_weight, const at::Tensor& dw_bias,
                                                 const at::Tensor& project_weight, const at::Tensor& project_bias,
                                                 int64_t stride, int64_t dilation, const std::string& activation,
                                                 bool residual, int64_t smem_limit,
                                                 const c10::optional<at::Tensor>& se_fc1_weight,
                                                 const c10::optional<at::Tensor>& se_fc1_bias,
                                                 const c10::optional<at::Tensor>& se_fc2_weight,
                                                 const c10::optional<at::Tensor>& se_fc2_bias,
                                                 const std::string& se_activation,
                                                 const std::string& se_scale_activation, int64_t major) {
  TORCH_CHECK(input.device().is_cpu(), "emulation: expected CPU tensors");
  mk::InvertedResidualArgs a = mk::prepare_inverted_residual(
      input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias, stride, dilation, activation,
      residual, se_fc1_weight, se_fc1_bias, se_fc2_weight, se_fc2_bias, se_activation, se_scale_activation);
  irb::check_block_limits(a);
  // The output as the launcher allocates it (its strides), as NaN inside sentinel guard zones of an
  // image and more (a tile's overhang).
  const at::Tensor like = at::empty(a.output_sizes(), input.options().memory_format(a.format));
  if (like.numel() == 0) return {like, {}};
  const mk_emu::GuardedOutput out(like, like.numel() / std::max<int64_t>(a.N, 1) + 2 * kGuardElems);
  at::Tensor y = out.y;

  // Every operand in a NaN buffer with guard zones: the input with an image and more on both sides.
  a.input = mk_emu::in_guarded_buffer(a.input, a.input.numel() / std::max<int64_t>(a.N, 1) + 2 * kGuardElems, kNaN);
  if (a.has_expand()) {
    a.expand_weight = guarded_nan(a.expand_weight);
    a.expand_bias = guarded_nan(a.expand_bias);
  }
  a.dw_bias = guarded_nan(a.dw_bias);
  a.project_bias = guarded_nan(a.project_bias);
  if (a.has_se()) {
    a.se_w1 = guarded_nan(a.se_w1);
    a.se_b1 = guarded_nan(a.se_b1);
    a.se_w2 = guarded_nan(a.se_w2);
    a.se_b2 = guarded_nan(a.se_b2);
  }
  const at::Tensor wp_t = guarded_nan(a.project_weight.t().contiguous());  // as the launcher: (Chid, Cout)
  const at::Tensor wd_t = guarded_nan(a.dw_weight.t().contiguous());       // as the launcher: (k * k, Chid)

  std::vector<int64_t> info;
  switch (input.scalar_type()) {
    case at::kFloat:
      info = launch<float>(a, y, wd_t, wp_t, smem_limit, major);
      break;
    case at::kDouble:
      info = launch<double>(a, y, wd_t, wp_t, smem_limit, major);
      break;
    case at::kBFloat16:
      info = launch<c10::BFloat16>(a, y, wd_t, wp_t, smem_limit, major);
      break;
    case at::kHalf:
      info = launch<c10::Half>(a, y, wd_t, wp_t, smem_limit, major);
      break;
    default:
      TORCH_CHECK(false, "input: expected a floating dtype, got ", input.scalar_type());
  }
  out.check();
  return {y, info};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("run", &run, "inverted_residual_eval_kernel emulated on the host", py::arg("input"),
        py::arg("expand_weight"), py::arg("expand_bias"), py::arg("dw_weight"), py::arg("dw_bias"),
        py::arg("project_weight"), py::arg("project_bias"), py::arg("stride"), py::arg("dilation"),
        py::arg("activation"), py::arg("residual"), py::arg("smem_limit"), py::arg("se_fc1_weight") = py::none(),
        py::arg("se_fc1_bias") = py::none(), py::arg("se_fc2_weight") = py::none(),
        py::arg("se_fc2_bias") = py::none(), py::arg("se_activation") = "relu",
        py::arg("se_scale_activation") = "hardsigmoid", py::arg("major") = 9);
}
