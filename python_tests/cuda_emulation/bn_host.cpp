// Host emulation of batch_norm_act's per-channel CUDA passes (csrc/cuda/channel_passes.cuh): the
// channels_last forward (EvalApply: eval, and training's apply pass), the training statistics
// (ShiftedMomentTerms + StoreMeanVar), the eval backward (BackwardTerms writing grad_input in the
// reduction pass) and the training backward (the reduction, then TrainInputGrad),
// with the kernels, launch plans and vector widths of batch_norm_act.cu. g++ compiles the very
// header against cuda_shim/ and runs the kernels on the CPU (emulation.h), so that the tests
// (python_tests/test_cuda_emulation.py) can check them against PyTorch without a GPU. Same
// structure as dw_default_host.cpp: every input inside NaN guard zones (16-byte aligned, so the
// vector path runs where the CUDA code takes it), every output NaN inside sentinel guard zones, the
// partials NaN: a missed bounds check, an element left unwritten or a write outside an output shows.
#include <torch/extension.h>

#include <ATen/OpMathType.h>

#include <string>
#include <tuple>
#include <vector>

#include "emulation.h"  // the shim: after the PyTorch headers, before the kernels'
#include "cuda/channel_passes.cuh"

namespace {

namespace mk = mobilenet_kernels;
namespace mkc = mobilenet_kernels::cuda;
namespace bn = mobilenet_kernels::cuda::bn;
using mk_emu::kNaN;

using mk_emu::guarded_in;
using mk_emu::guarded_out;

// [vec, grid.x, grid.y, block.x, block.y, tiles] of a plan.
std::vector<int64_t> info_of(int vec, const bn::PassPlan& p) {
  return {vec, p.grid.x, p.grid.y, p.block.x, p.block.y, p.tiles};
}

// reduce_channels of batch_norm_act.cu, emulated; the partials start as NaN.
template <typename acc_t, typename Term, typename Finish>
std::vector<int64_t> reduce_channels(const mk::ChannelLayout& L, int vec, const Term& term, const Finish& finish) {
  const bn::PassPlan p = bn::plan_reduction(L, vec);
  const at::Tensor partial = at::full({2, p.tiles, L.C}, kNaN, at::TensorOptions().dtype(c10::CppTypeToScalarType<acc_t>::value));
  acc_t* p0 = partial[0].data_ptr<acc_t>();
  acc_t* p1 = partial[1].data_ptr<acc_t>();
  constexpr int kVec = 16 / sizeof(typename Term::Scalar);
  unsigned char* smem = nullptr;  // no dynamic shared memory
  mk_emu::launch_grid(p.grid, p.block, 0, smem, [&] {
    if (!L.channels_last) {
      bn::reduce_nchw_kernel<acc_t>(term, L.rows(), L.C, L.HW, p.per_tile, p0, p1);
    } else if (vec == kVec && kVec > 1) {
      bn::reduce_nhwc_kernel<acc_t, kVec>(term, L.rows(), L.C, p.per_tile, p0, p1);
    } else {
      bn::reduce_nhwc_kernel<acc_t, 1>(term, L.rows(), L.C, p.per_tile, p0, p1);
    }
  });
  TORCH_CHECK(!partial.isnan().any().item<bool>(), "emulation: a partial left unwritten");
  mk_emu::launch_grid(p.finish_grid, p.finish_block, 0, smem,
                      [&] { bn::finish_kernel<acc_t>(p0, p1, p.tiles, L.C, finish); });
  return info_of(vec, p);
}

// launch_per_channel of batch_norm_act.cu, emulated.
template <typename Elementwise>
std::vector<int64_t> per_channel(const mk::ChannelLayout& L, int vec, const Elementwise& op) {
  const bn::PassPlan p = bn::plan_per_channel(L, vec);
  TORCH_CHECK(bn::channel_grid_fits(L, p), "emulation: grid too large");
  constexpr int kVec = 16 / sizeof(typename Elementwise::Scalar);
  unsigned char* smem = nullptr;
  mk_emu::launch_grid(p.grid, p.block, 0, smem, [&] {
    if (!L.channels_last) {
      bn::per_channel_nchw_kernel(op, L.C, L.HW);
    } else if (vec == kVec && kVec > 1) {
      bn::per_channel_nhwc_kernel<kVec>(op, L.rows(), L.C);
    } else {
      bn::per_channel_nhwc_kernel<1>(op, L.rows(), L.C);
    }
  });
  return info_of(vec, p);
}

template <typename acc_t>
const acc_t* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<acc_t>() : nullptr;
}

// batch_norm_act_train_cuda's statistics: (mean, biased var, info) of a non-empty input.
std::tuple<at::Tensor, at::Tensor, std::vector<int64_t>> train_stats(const at::Tensor& input) {
  TORCH_CHECK(input.device().is_cpu() && input.numel() > 0, "emulation: a non-empty CPU tensor");
  const auto fmt = mk::output_memory_format(input);
  const at::Tensor x = guarded_in(input.contiguous(fmt));
  const mk::ChannelLayout L = mk::channel_layout(x, fmt);
  const auto acc_opts = input.options().dtype(mk::acc_type_for(input.scalar_type()));
  const mk_emu::GuardedOutput mean = guarded_out(at::empty({L.C}, acc_opts));
  const mk_emu::GuardedOutput var = guarded_out(at::empty({L.C}, acc_opts));
  std::vector<int64_t> info;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "bn_host_train_stats", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const int64_t first_stride = L.channels_last ? 1 : L.HW;
    info = reduce_channels<acc_t>(L, mkc::vector_width<scalar_t>(L.C, {xp}),
                                  bn::ShiftedMomentTerms<scalar_t, acc_t>{xp, first_stride},
                                  bn::StoreMeanVar<scalar_t, acc_t>{xp, first_stride, static_cast<double>(L.rows()),
                                                                    mean.y.data_ptr<acc_t>(), var.y.data_ptr<acc_t>()});
  });
  mean.check();
  var.check();
  return {mean.y.clone(), var.y.clone(), info};
}

// a0 with its input and parameters inside guard zones.
mk::BatchNormEvalArgs guarded_args(const mk::BatchNormEvalArgs& a0) {
  const auto guard = [](const at::Tensor& t) { return t.defined() ? guarded_in(t) : t; };
  mk::BatchNormEvalArgs a = a0;
  a.input = guarded_in(a0.input);
  a.mean = guard(a0.mean);
  a.var = guard(a0.var);
  a.weight = guard(a0.weight);
  a.bias = guard(a0.bias);
  return a;
}

// batch_norm_act_eval_cuda's channels_last forward (launch_forward: EvalApply as a per-channel pass)
// on a non-empty channels_last input: (output, plan info).
std::tuple<at::Tensor, std::vector<int64_t>> eval_forward(const at::Tensor& input, const at::Tensor& mean,
                                                          const at::Tensor& var,
                                                          const c10::optional<at::Tensor>& weight,
                                                          const c10::optional<at::Tensor>& bias, double eps,
                                                          const std::string& activation) {
  TORCH_CHECK(input.device().is_cpu() && input.numel() > 0, "emulation: a non-empty CPU tensor");
  const mk::BatchNormEvalArgs a0 = mk::prepare_batch_norm_eval(input, mean, var, weight, bias, eps, activation);
  TORCH_CHECK(a0.layout.channels_last, "emulation: the NCHW forward is a flat kernel of batch_norm_act.cu");
  const mk::BatchNormEvalArgs a = guarded_args(a0);
  const mk_emu::GuardedOutput y = guarded_out(at::empty(input.sizes(), input.options().memory_format(a.format)));
  std::vector<int64_t> info;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "bn_host_eval_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    MK_DISPATCH_ACTIVATION(a.act, [&] {
      const bn::EvalApply<scalar_t, acc_t, kAct> op{a.input.data_ptr<scalar_t>(), y.y.data_ptr<scalar_t>(),
                                                    a.mean.data_ptr<acc_t>(), a.var.data_ptr<acc_t>(),
                                                    data_or_null<acc_t>(a.weight), data_or_null<acc_t>(a.bias),
                                                    static_cast<acc_t>(a.eps)};
      info = per_channel(a.layout, mkc::vector_width<scalar_t>(a.layout.C, {op.x, op.y}), op);
    });
  });
  y.check();
  return {y.y.clone(), info};
}

// batch_norm_act_eval_backward_cuda (training = false: grad_input written by the reduction pass)
// and batch_norm_act_train_backward_cuda (training = true: the reduction, then TrainInputGrad), on
// a non-empty input: (grad_input, sum_gxhat, sum_g, reduction info, grad_input pass info (empty in
// eval)).
std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<int64_t>, std::vector<int64_t>> backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& mean, const at::Tensor& var,
    const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias, double eps,
    const std::string& activation, bool training) {
  TORCH_CHECK(input.device().is_cpu() && input.numel() > 0, "emulation: a non-empty CPU tensor");
  const mk::BatchNormEvalArgs a0 = mk::prepare_batch_norm_eval(input, mean, var, weight, bias, eps, activation);
  const mk::BatchNormEvalArgs a = guarded_args(a0);
  const mk::BackwardBuffers buf = mk::prepare_backward(grad_output, input, a0);
  const at::Tensor gy = guarded_in(buf.grad_out);
  const mk_emu::GuardedOutput gx = guarded_out(buf.grad_in);
  const mk_emu::GuardedOutput sum_gxhat = guarded_out(buf.sum_gxhat);
  const mk_emu::GuardedOutput sum_g = guarded_out(buf.sum_g);
  std::vector<int64_t> info_reduce, info_grad;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "bn_host_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    MK_DISPATCH_ACTIVATION(a.act, [&] {
      const auto reduce = [&](auto write_grad_input) {
        constexpr bool kWrite = decltype(write_grad_input)::value;
        const bn::BackwardTerms<scalar_t, acc_t, kAct, kWrite> terms{
            gy.data_ptr<scalar_t>(), a.input.data_ptr<scalar_t>(), kWrite ? gx.y.data_ptr<scalar_t>() : nullptr,
            a.mean.data_ptr<acc_t>(), a.var.data_ptr<acc_t>(), data_or_null<acc_t>(a.weight),
            data_or_null<acc_t>(a.bias), static_cast<acc_t>(a.eps)};
        info_reduce = reduce_channels<acc_t>(
            a.layout, mkc::vector_width<scalar_t>(a.layout.C, {terms.gy, terms.x, terms.gx}), terms,
            bn::StoreSums<acc_t>{sum_gxhat.y.data_ptr<acc_t>(), sum_g.y.data_ptr<acc_t>()});
      };
      if (!training) {
        reduce(std::true_type{});
        return;
      }
      reduce(std::false_type{});
      const bn::TrainInputGrad<scalar_t, acc_t, kAct> op{
          gy.data_ptr<scalar_t>(), a.input.data_ptr<scalar_t>(), gx.y.data_ptr<scalar_t>(),
          a.mean.data_ptr<acc_t>(), a.var.data_ptr<acc_t>(), data_or_null<acc_t>(a.weight),
          data_or_null<acc_t>(a.bias), sum_gxhat.y.data_ptr<acc_t>(), sum_g.y.data_ptr<acc_t>(),
          static_cast<acc_t>(a.eps), static_cast<acc_t>(1.0 / static_cast<double>(a.layout.rows()))};
      info_grad = per_channel(a.layout, mkc::vector_width<scalar_t>(a.layout.C, {op.gy, op.x, op.gx}), op);
    });
  });
  gx.check();
  sum_gxhat.check();
  sum_g.check();
  return {gx.y.clone(), sum_gxhat.y.clone(), sum_g.y.clone(), info_reduce, info_grad};
}

// cuda::batch_norm_act_train_backward_sums' reduction (the fused depthwise backward's first step),
// on a non-empty input: (sum_gxhat, sum_g, the (5, C) table its finish functor writes,
// StoreSumsAndDxTable).
std::tuple<at::Tensor, at::Tensor, at::Tensor> train_sums_table(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& mean, const at::Tensor& var,
    const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias, double eps,
    const std::string& activation) {
  TORCH_CHECK(input.device().is_cpu() && input.numel() > 0, "emulation: a non-empty CPU tensor");
  const mk::BatchNormEvalArgs a0 = mk::prepare_batch_norm_eval(input, mean, var, weight, bias, eps, activation);
  const mk::BatchNormEvalArgs a = guarded_args(a0);
  const mk::BackwardBuffers buf = mk::prepare_backward(grad_output, input, a0, /*with_grad_in=*/false);
  const at::Tensor gy = guarded_in(buf.grad_out);
  const mk_emu::GuardedOutput sum_gxhat = guarded_out(buf.sum_gxhat);
  const mk_emu::GuardedOutput sum_g = guarded_out(buf.sum_g);
  const mk_emu::GuardedOutput table = guarded_out(at::empty({mkc::bn::kTrainDxRows, a.layout.C}, buf.sum_g.options()));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "bn_host_train_sums_table", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    MK_DISPATCH_ACTIVATION(a.act, [&] {
      const bn::BackwardTerms<scalar_t, acc_t, kAct, false> terms{
          gy.data_ptr<scalar_t>(), a.input.data_ptr<scalar_t>(), nullptr, a.mean.data_ptr<acc_t>(),
          a.var.data_ptr<acc_t>(), data_or_null<acc_t>(a.weight), data_or_null<acc_t>(a.bias),
          static_cast<acc_t>(a.eps)};
      reduce_channels<acc_t>(
          a.layout, mkc::vector_width<scalar_t>(a.layout.C, {terms.gy, terms.x}), terms,
          bn::StoreSumsAndDxTable<acc_t>{sum_gxhat.y.data_ptr<acc_t>(), sum_g.y.data_ptr<acc_t>(),
                                         a.mean.data_ptr<acc_t>(), a.var.data_ptr<acc_t>(),
                                         data_or_null<acc_t>(a.weight), data_or_null<acc_t>(a.bias),
                                         static_cast<acc_t>(a.eps),
                                         static_cast<acc_t>(1.0 / static_cast<double>(a.layout.rows())), a.layout.C,
                                         table.y.data_ptr<acc_t>()});
    });
  });
  sum_gxhat.check();
  sum_g.check();
  table.check();
  return {sum_gxhat.y.clone(), sum_g.y.clone(), table.y.clone()};
}

// bn::plan_reduction / plan_per_channel of a shape (nothing runs): the info lists above.
std::vector<int64_t> plan(int64_t N, int64_t C, int64_t HW, bool channels_last, int64_t vec, bool reduction) {
  const mk::ChannelLayout L{N, C, HW, channels_last};
  return reduction ? info_of(static_cast<int>(vec), bn::plan_reduction(L, static_cast<int>(vec)))
                   : info_of(static_cast<int>(vec), bn::plan_per_channel(L, static_cast<int>(vec)));
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("eval_forward", &eval_forward, "batch_norm_act_eval_cuda's channels_last forward, emulated on the host",
        py::arg("input"), py::arg("mean"), py::arg("var"), py::arg("weight"), py::arg("bias"), py::arg("eps"),
        py::arg("activation"));
  m.def("train_stats", &train_stats, "batch_norm_act_train_cuda's statistics, emulated on the host", py::arg("input"));
  m.def("backward", &backward, "batch_norm_act's eval / training backward passes, emulated on the host",
        py::arg("grad_output"), py::arg("input"), py::arg("mean"), py::arg("var"), py::arg("weight"), py::arg("bias"),
        py::arg("eps"), py::arg("activation"), py::arg("training"));
  m.def("train_sums_table", &train_sums_table, "batch_norm_act_train_backward_sums' reduction, emulated",
        py::arg("grad_output"), py::arg("input"), py::arg("mean"), py::arg("var"), py::arg("weight"), py::arg("bias"),
        py::arg("eps"), py::arg("activation"));
  m.def("plan", &plan, "the launch plan of a per-channel pass (nothing runs)", py::arg("N"), py::arg("C"),
        py::arg("HW"), py::arg("channels_last"), py::arg("vec"), py::arg("reduction"));
}
