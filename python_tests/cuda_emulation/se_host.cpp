// Host emulation of squeeze_excite's CUDA op (csrc/cuda/squeeze_excite.cuh, excite_gemm.cuh): the
// whole forward and backward (the reduction over HW, the excite step's tiled GEMMs, the scaling
// pass) with the very launch sequence squeeze_excite.cu runs, and the excite step on its own (its
// two forward and six backward launches). Each launch is emulated on the CPU (emulation.h: one
// std::thread per CUDA thread, warps for the NCHW reduction's shuffles, the excite step's staged
// slices in NaN-poisoned dynamic shared memory). Inputs sit in NaN guard zones, outputs and scratch
// start as NaN inside sentinel guard zones: a read past an operand, an unstaged read or an output
// left unwritten shows in the results or fails check().
#include <torch/extension.h>

#include <ATen/OpMathType.h>

#include <string>
#include <tuple>
#include <vector>

#include "emulation.h"  // the shim: after the PyTorch headers, before the kernels'
#include "cuda/squeeze_excite.cuh"
#include "squeeze_excite.h"

namespace {

namespace mk = mobilenet_kernels;
namespace se = mobilenet_kernels::cuda::se;
using mk_emu::guarded_in;
using mk_emu::guarded_out;
using mk_emu::GuardedOutput;
using mk_emu::HostLaunch;

// The emulated launch of the sequence: the excite step's dynamic shared memory; counts launches.
HostLaunch counted(int* launches) { return {&se::mk_se_gemm_smem, launches}; }

// The parameters in guard zones, dense, as squeeze_excite.cu hands them over (prepare_squeeze_excite
// reshapes the weights to (S, C) and (C, S)).
struct Params {
  at::Tensor w1, b1, w2, b2;
  Params(const at::Tensor& w1_, const at::Tensor& b1_, const at::Tensor& w2_, const at::Tensor& b2_)
      : w1(guarded_in(w1_.contiguous())), b1(guarded_in(b1_.contiguous())), w2(guarded_in(w2_.contiguous())),
        b2(guarded_in(b2_.contiguous())) {}
  template <typename acc_t>
  se::ExciteParams<acc_t> get(int N, const std::string& act, const std::string& scale_act) const {
    return {w1.data_ptr<acc_t>(), b1.data_ptr<acc_t>(), w2.data_ptr<acc_t>(), b2.data_ptr<acc_t>(), N,
            static_cast<int>(w2.size(0)), static_cast<int>(w1.size(0)), mk::parse_activation(act, "activation"),
            mk::parse_activation(scale_act, "scale_activation")};
  }
};

void check_args(const at::Tensor& pooled, const at::Tensor& w1, const at::Tensor& w2) {
  TORCH_CHECK(pooled.dim() == 2 && w1.dim() == 2 && w2.dim() == 2 && w1.size(1) == pooled.size(1) &&
                  w2.size(0) == pooled.size(1) && w2.size(1) == w1.size(0) && pooled.size(0) >= 1,
              "emulation: pooled (N, C), w1 (S, C), w2 (C, S), N >= 1");
  TORCH_CHECK(se::excite_sizes_fit(pooled.size(0), pooled.size(1), w1.size(0)), "emulation: sizes");
}

// (scale (N, C), launches) of the forward.
std::tuple<at::Tensor, int> forward(const at::Tensor& pooled, const at::Tensor& w1, const at::Tensor& b1,
                                    const at::Tensor& w2, const at::Tensor& b2, const std::string& act,
                                    const std::string& scale_act) {
  check_args(pooled, w1, w2);
  const int64_t N = pooled.size(0), C = pooled.size(1), S = w1.size(0);
  const Params prm(w1, b1, w2, b2);
  const at::Tensor p = guarded_in(pooled.contiguous());
  const GuardedOutput h = guarded_out(at::empty({N, S}, pooled.options()));
  const GuardedOutput scale = guarded_out(at::empty({N, C}, pooled.options()));
  int launches = 0;
  AT_DISPATCH_FLOATING_TYPES(pooled.scalar_type(), "se_host_forward", [&] {
    se::excite_forward(prm.get<scalar_t>(static_cast<int>(N), act, scale_act), p.data_ptr<scalar_t>(),
                       h.y.data_ptr<scalar_t>(), scale.y.data_ptr<scalar_t>(), counted(&launches));
  });
  h.check();
  scale.check();
  return {scale.y.clone(), launches};
}

// (scale, dp_hw (N, C), grad w1 (S, C), grad b1, grad w2 (C, S), grad b2, launches) of the
// backward, ds = sum_hw grad_out * x per (n, c).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, int> backward(
    const at::Tensor& pooled, const at::Tensor& ds, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
    const at::Tensor& b2, const std::string& act, const std::string& scale_act, double inv_hw) {
  check_args(pooled, w1, w2);
  TORCH_CHECK(ds.sizes() == pooled.sizes(), "emulation: ds (N, C)");
  const int64_t N = pooled.size(0), C = pooled.size(1), S = w1.size(0);
  const Params prm(w1, b1, w2, b2);
  const at::Tensor p = guarded_in(pooled.contiguous());
  const at::Tensor d = guarded_in(ds.contiguous());
  const auto o = pooled.options();
  const GuardedOutput z1 = guarded_out(at::empty({N, S}, o)), h = guarded_out(at::empty({N, S}, o)),
                      dz1 = guarded_out(at::empty({N, S}, o)), scale = guarded_out(at::empty({N, C}, o)),
                      dz2 = guarded_out(at::empty({N, C}, o)), dp = guarded_out(at::empty({N, C}, o)),
                      gw1 = guarded_out(at::empty({S, C}, o)), gb1 = guarded_out(at::empty({S}, o)),
                      gw2 = guarded_out(at::empty({C, S}, o)), gb2 = guarded_out(at::empty({C}, o));
  int launches = 0;
  AT_DISPATCH_FLOATING_TYPES(pooled.scalar_type(), "se_host_backward", [&] {
    using acc_t = scalar_t;
    se::excite_backward(prm.get<acc_t>(static_cast<int>(N), act, scale_act), p.data_ptr<acc_t>(),
                        d.data_ptr<acc_t>(), static_cast<acc_t>(inv_hw),
                        se::ExciteBwdScratch<acc_t>{z1.y.data_ptr<acc_t>(), h.y.data_ptr<acc_t>(),
                                                    dz1.y.data_ptr<acc_t>(), scale.y.data_ptr<acc_t>(),
                                                    dz2.y.data_ptr<acc_t>()},
                        dp.y.data_ptr<acc_t>(),
                        se::ExciteParamGrads<acc_t>{gw1.y.data_ptr<acc_t>(), gb1.y.data_ptr<acc_t>(),
                                                    gw2.y.data_ptr<acc_t>(), gb2.y.data_ptr<acc_t>()},
                        counted(&launches));
  });
  for (const GuardedOutput* t : {&z1, &h, &dz1, &scale, &dz2, &dp, &gw1, &gb1, &gw2, &gb2}) t->check();
  return {scale.y.clone(), dp.y.clone(), gw1.y.clone(), gb1.y.clone(), gw2.y.clone(), gb2.y.clone(), launches};
}

constexpr int64_t kResident = 4;  // scaling-pass blocks: small, so that the grid-stride loop runs

// The op's arguments as squeeze_excite.cu prepares them, its input and parameters in guard zones.
struct Prepared {
  mk::SqueezeExciteArgs a;
  at::Tensor x;
  Params prm;
  at::TensorOptions acc_opts;
  Prepared(const at::Tensor& input, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
           const at::Tensor& b2, const std::string& act, const std::string& scale_act)
      : a(mk::prepare_squeeze_excite(input, w1, b1, w2, b2, act, scale_act)),
        x(guarded_in(a.input)),
        prm(a.w1, a.b1, a.w2, a.b2),
        acc_opts(input.options().dtype(mk::acc_type_for(input.scalar_type()))) {
    TORCH_CHECK(input.device().is_cpu() && a.layout.N * a.layout.C > 0, "emulation: a non-empty CPU tensor");
  }
};

// squeeze_excite_cuda, emulated: (out, pooled, launches).
std::tuple<at::Tensor, at::Tensor, int> op_forward(const at::Tensor& input, const at::Tensor& fc1_weight,
                                                   const at::Tensor& fc1_bias, const at::Tensor& fc2_weight,
                                                   const at::Tensor& fc2_bias, const std::string& act,
                                                   const std::string& scale_act) {
  const Prepared op(input, fc1_weight, fc1_bias, fc2_weight, fc2_bias, act, scale_act);
  const mk::ChannelLayout& L = op.a.layout;
  const GuardedOutput out = guarded_out(at::empty(input.sizes(), input.options().memory_format(op.a.format)));
  const GuardedOutput pooled = guarded_out(at::empty({L.N, L.C}, op.acc_opts));
  const GuardedOutput scratch = guarded_out(at::empty({se::forward_scratch(L, op.a.S)}, op.acc_opts));
  int launches = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "se_host_op_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    se::forward_steps<scalar_t>(L, op.prm.get<acc_t>(static_cast<int>(L.N), act, scale_act),
                                op.x.data_ptr<scalar_t>(), out.y.data_ptr<scalar_t>(), pooled.y.data_ptr<acc_t>(),
                                scratch.y.data_ptr<acc_t>(), kResident, counted(&launches));
  });
  out.check();
  pooled.check();
  scratch.check();
  TORCH_CHECK(!scratch.y.isnan().any().item<bool>(), "emulation: scratch left unwritten");
  return {out.y.clone(), pooled.y.clone(), launches};
}

// squeeze_excite_backward_cuda, emulated: (grad_input, grad fc1_weight (S, C), fc1_bias, grad
// fc2_weight (C, S), fc2_bias, launches), the gradients in the accumulation dtype.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, int> op_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& pooled_in, const at::Tensor& fc1_weight,
    const at::Tensor& fc1_bias, const at::Tensor& fc2_weight, const at::Tensor& fc2_bias, const std::string& act,
    const std::string& scale_act) {
  const Prepared op(input, fc1_weight, fc1_bias, fc2_weight, fc2_bias, act, scale_act);
  const mk::ChannelLayout& L = op.a.layout;
  const at::Tensor g = guarded_in(mk::prepare_se_grad_output(grad_output, op.a, input));
  const at::Tensor p = guarded_in(mk::prepare_se_pooled(pooled_in, op.a));
  const GuardedOutput gx = guarded_out(at::empty(input.sizes(), input.options().memory_format(op.a.format)));
  const GuardedOutput scratch = guarded_out(at::empty({se::backward_scratch(L, op.a.S)}, op.acc_opts));
  const int64_t S = op.a.S;
  const auto acc_out = [&](at::IntArrayRef sizes) { return guarded_out(at::empty(sizes, op.acc_opts)); };
  const GuardedOutput gw1 = acc_out({S, L.C}), gb1 = acc_out({S}), gw2 = acc_out({L.C, S}), gb2 = acc_out({L.C});
  int launches = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "se_host_op_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const se::ExciteParamGrads<acc_t> grads{gw1.y.data_ptr<acc_t>(), gb1.y.data_ptr<acc_t>(), gw2.y.data_ptr<acc_t>(),
                                            gb2.y.data_ptr<acc_t>()};
    se::backward_steps<scalar_t>(L, op.prm.get<acc_t>(static_cast<int>(L.N), act, scale_act), g.data_ptr<scalar_t>(),
                                 op.x.data_ptr<scalar_t>(), p.data_ptr<acc_t>(), gx.y.data_ptr<scalar_t>(), grads,
                                 scratch.y.data_ptr<acc_t>(), kResident, counted(&launches));
  });
  for (const GuardedOutput* t : {&gx, &scratch, &gw1, &gb1, &gw2, &gb2}) t->check();
  TORCH_CHECK(!scratch.y.isnan().any().item<bool>(), "emulation: scratch left unwritten");
  return {gx.y.clone(), gw1.y.clone(), gb1.y.clone(), gw2.y.clone(), gb2.y.clone(), launches};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("op_forward", &op_forward, "squeeze_excite_cuda emulated on the host", py::arg("input"), py::arg("w1"),
        py::arg("b1"), py::arg("w2"), py::arg("b2"), py::arg("act"), py::arg("scale_act"));
  m.def("op_backward", &op_backward, "squeeze_excite_backward_cuda emulated on the host", py::arg("grad_output"),
        py::arg("input"), py::arg("pooled"), py::arg("w1"), py::arg("b1"), py::arg("w2"), py::arg("b2"),
        py::arg("act"), py::arg("scale_act"));
  m.def("forward", &forward, "squeeze_excite's CUDA excite step, forward, emulated on the host", py::arg("pooled"),
        py::arg("w1"), py::arg("b1"), py::arg("w2"), py::arg("b2"), py::arg("act"), py::arg("scale_act"));
  m.def("backward", &backward, "squeeze_excite's CUDA excite step, backward, emulated on the host",
        py::arg("pooled"), py::arg("ds"), py::arg("w1"), py::arg("b1"), py::arg("w2"), py::arg("b2"), py::arg("act"),
        py::arg("scale_act"), py::arg("inv_hw"));
}
