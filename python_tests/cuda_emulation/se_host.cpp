// Host emulation of squeeze_excite's excite step on CUDA (csrc/cuda/excite_gemm.cuh): the
// forward (the hidden layer, then the scale) and the backward (the recomputed hidden layer and
// scale with dz2, dz1, dpooled / HW and the parameter gradients), with the very launch sequence
// squeeze_excite.cu runs, each launch of excite_gemm_kernel emulated on the CPU (emulation.h: one
// std::thread per CUDA thread, the staged slices in NaN-poisoned dynamic shared memory). Inputs sit
// in NaN guard zones, outputs start as NaN inside sentinel guard zones: a read past an operand, an
// unstaged read or an output left unwritten shows in the results or fails check().
#include <torch/extension.h>

#include <string>
#include <tuple>
#include <vector>

#include "emulation.h"  // the shim: after the PyTorch headers, before the kernels'
#include "cuda/excite_gemm.cuh"

namespace {

namespace mk = mobilenet_kernels;
namespace se = mobilenet_kernels::cuda::se;
using mk_emu::guarded_in;
using mk_emu::guarded_out;
using mk_emu::GuardedOutput;

// The launch excite_gemm.cuh's steps make, emulated; counts the launches.
struct HostLaunch {
  int* launches;
  template <typename acc_t, typename Epilogue>
  void operator()(dim3 grid, const se::Operand<acc_t>& a, const se::Operand<acc_t>& b, int R, int O, int K,
                  const Epilogue& epi) const {
    mk_emu::launch_grid(grid, dim3(se::kThreadsX, se::kThreadsY), se::excite_gemm_smem_bytes<acc_t>(),
                        se::mk_se_gemm_smem, [&] { se::excite_gemm_kernel<acc_t, Epilogue>(a, b, R, O, K, epi); });
    ++*launches;
  }
};

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
                       h.y.data_ptr<scalar_t>(), scale.y.data_ptr<scalar_t>(), HostLaunch{&launches});
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
                        HostLaunch{&launches});
  });
  for (const GuardedOutput* t : {&z1, &h, &dz1, &scale, &dz2, &dp, &gw1, &gb1, &gw2, &gb2}) t->check();
  return {scale.y.clone(), dp.y.clone(), gw1.y.clone(), gb1.y.clone(), gw2.y.clone(), gb2.y.clone(), launches};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "squeeze_excite's CUDA excite step, forward, emulated on the host", py::arg("pooled"),
        py::arg("w1"), py::arg("b1"), py::arg("w2"), py::arg("b2"), py::arg("act"), py::arg("scale_act"));
  m.def("backward", &backward, "squeeze_excite's CUDA excite step, backward, emulated on the host",
        py::arg("pooled"), py::arg("ds"), py::arg("w1"), py::arg("b1"), py::arg("w2"), py::arg("b2"), py::arg("act"),
        py::arg("scale_act"), py::arg("inv_hw"));
}
