// Host emulation of pointwise_conv2d_stats's statistics pass on CUDA (csrc/cuda/pointwise_stats.cuh):
// the per-(tile, channel) partials of the stored output (channels_last: several rows in flight a
// thread; NCHW: a block per tile and channel), then stats_finish_kernel, with the very plan and
// launch sequence pointwise_conv2d.cu runs, each launch emulated on the CPU (emulation.h). The
// output sits in NaN guard zones; the partials, the mean and the variance start as NaN inside
// sentinel guard zones: a read past the output, a partial or a channel left unwritten shows.
#include <torch/extension.h>

#include <ATen/OpMathType.h>

#include <tuple>
#include <vector>

#include "emulation.h"  // the shim: after the PyTorch headers, before the kernels'
#include "cuda/pointwise_stats.cuh"

namespace {

namespace mk = mobilenet_kernels;
namespace pw = mobilenet_kernels::cuda::pw;

// (mean, biased var, [vec, tiles, tile_rows, tx, ty, tile_px]) of y (N, C, H, W), dense in its
// format (channels_last or contiguous), as pointwise_conv2d_stats computes them from its output.
std::tuple<at::Tensor, at::Tensor, std::vector<int64_t>> stats(const at::Tensor& y_in) {
  TORCH_CHECK(y_in.dim() == 4 && y_in.numel() > 0 && y_in.device().is_cpu(), "emulation: a non-empty 4-D CPU tensor");
  const auto fmt = mk::output_memory_format(y_in);
  const at::Tensor y = mk_emu::guarded_in(y_in.contiguous(fmt));
  const int64_t N = y.size(0), C = y.size(1), HW = y.size(2) * y.size(3);
  at::Tensor mean_out, var_out;
  std::vector<int64_t> info;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "pw_stats_host", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_opts = y.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    const mk_emu::GuardedOutput mean = mk_emu::guarded_out(at::empty({C}, acc_opts));
    const mk_emu::GuardedOutput var = mk_emu::guarded_out(at::empty({C}, acc_opts));
    const scalar_t* yp = y.data_ptr<scalar_t>();
    const pw::StatsPlan plan = pw::stats_plan(yp, N * HW, C, HW, fmt == at::MemoryFormat::ChannelsLast);
    const mk_emu::GuardedOutput part = mk_emu::guarded_out(at::empty({3, plan.tiles, C}, acc_opts));
    pw::stats_steps(plan, yp, part.y.data_ptr<acc_t>(), mean.y.data_ptr<acc_t>(), var.y.data_ptr<acc_t>(),
                    mk_emu::HostLaunch{});
    part.check();
    TORCH_CHECK(!part.y.isnan().any().item<bool>(), "emulation: a partial left unwritten");
    mean.check();
    var.check();
    mean_out = mean.y.clone();
    var_out = var.y.clone();
    info = {plan.vec, plan.tiles, plan.tile_rows, plan.tx, plan.ty, plan.tile_px};
  });
  return {mean_out, var_out, info};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("stats", &stats, "pointwise_conv2d_stats's statistics pass on CUDA, emulated on the host", py::arg("y"));
}
