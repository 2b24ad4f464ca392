// Host emulation of the default CUDA depthwise_conv2d kernels (csrc/cuda/depthwise_kernels.cuh):
// depthwise_conv2d_fwd_kernel (plain and with statistics, the generic K = 0 kernel and the row-reuse
// K = 3/5/7 ones, 16-byte channel vectors and one channel per thread), stats_finish_kernel
// (chan_stats.cuh), depthwise_conv2d_bwd_input_kernel and the two weight-gradient kernels. g++
// compiles the very header against cuda_shim/ and runs the kernels on the CPU, so that the tests
// (python_tests/test_cuda_emulation.py) can check them against PyTorch without a GPU. Same
// structure as dw_tiled_host.cpp.
//
// A call does what the CUDA entry point (csrc/cuda/depthwise_conv2d.cu) does, on CPU tensors:
// prepare_depthwise (and prepare_depthwise_grad_output), the outputs allocated in the input's
// memory format, taps_major / fresh_copy, make_geom, set_items, can_vectorize and the launch plans
// of the header (plan_fwd, rotated_geom, plan_bwd_input, plan_bwd_weight), the template dispatch of
// launch_fwd_k; then the emulated launches (emulation.h), with every input inside NaN guard zones,
// the outputs (NaN) inside sentinel guard zones and the partials starting as NaN: a missed bounds
// check, an element left unwritten or a write outside an output shows. Two differences: the tiled
// kernels (taken at strides 1 and 2 by default, see MK_DW_TILED) are not (dw_tiled_host.cpp emulates
// them), and the row reuse switch (MK_DW_ROW_REUSE, read by the CUDA code) is an argument here, on
// by default as there. check_geometry's limits (2^30 pixels, 65534 taps) are not reached by the
// tests.
#include <torch/extension.h>

#include <ATen/OpMathType.h>

#include <algorithm>
#include <string>
#include <tuple>
#include <vector>

#include "emulation.h"  // the shim: after the PyTorch headers, before the kernels'
#include "cuda/depthwise_kernels.cuh"

namespace {

namespace mk = mobilenet_kernels;
namespace mkc = mobilenet_kernels::cuda;
namespace dw = mobilenet_kernels::cuda::dw;
using mk_emu::kNaN;

using mk_emu::guarded_in;
using mk_emu::guarded_out;

template <typename scalar_t>
struct FwdArgs {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x;
  scalar_t* y;
  const acc_t* w;
  const acc_t* bias;
  mk::Act act;
  acc_t *part_n, *part_mean, *part_m2;
};

template <typename scalar_t, int VEC, int K, bool kStats>
void launch_fwd(const FwdArgs<scalar_t>& L, const dw::Geom& g, const dw::FwdPlan& p) {
  using acc_t = at::opmath_type<scalar_t>;
  unsigned char* smem = nullptr;  // no dynamic shared memory
  for (int64_t cy0 = 0; cy0 < p.chunks; cy0 += dw::kMaxGridY) {
    const dim3 grid(static_cast<unsigned>(p.tiles), static_cast<unsigned>(std::min(dw::kMaxGridY, p.chunks - cy0)));
    mk_emu::launch_grid(grid, p.block, 0, smem, [&] {
      dw::depthwise_conv2d_fwd_kernel<scalar_t, acc_t, VEC, K, kStats>(L.x, L.y, L.w, L.bias, g, L.act, p.R, cy0,
                                                                      L.part_n, L.part_mean, L.part_m2);
    });
  }
}

// launch_fwd_k of depthwise_conv2d.cu (the same dispatch_fwd_k); returns the K it launched.
template <typename scalar_t, int VEC, bool kStats>
int launch_fwd_k(const FwdArgs<scalar_t>& L, const dw::Geom& g, const dw::FwdPlan& p, int K) {
  int launched = -1;
  dw::dispatch_fwd_k<scalar_t>(K, [&](auto k) {
    launched = decltype(k)::value;
    launch_fwd<scalar_t, VEC, decltype(k)::value, kStats>(L, g, p);
  });
  return launched;
}

// run_conv of depthwise_conv2d.cu. info: [vec, K as launched, R, tiles, block.x, block.y, chunks].
template <typename scalar_t, bool kStats>
at::Tensor run_conv(const at::Tensor& x, at::Tensor& y, const at::Tensor& w_taps, const at::Tensor& bias, dw::Geom g,
                    int64_t N, bool channels_last, mk::Act act, bool row_reuse, std::vector<int64_t>& info) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kVec = 16 / sizeof(scalar_t);
  dw::set_items(g, N, g.OH, g.OW);
  const int vec = dw::can_vectorize<scalar_t>(channels_last, g.C, {&x, &y}) ? kVec : 1;
  const dw::FwdPlan p = dw::plan_fwd(g, channels_last, vec, kStats, row_reuse, sizeof(scalar_t));
  FwdArgs<scalar_t> L{};
  L.x = x.data_ptr<scalar_t>();
  L.y = y.data_ptr<scalar_t>();
  L.w = w_taps.data_ptr<acc_t>();
  L.bias = bias.defined() ? bias.data_ptr<acc_t>() : nullptr;
  L.act = act;
  at::Tensor part;
  if constexpr (kStats) {
    part = at::full({3, p.tiles, g.C}, kNaN, x.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    L.part_n = part[0].data_ptr<acc_t>();
    L.part_mean = part[1].data_ptr<acc_t>();
    L.part_m2 = part[2].data_ptr<acc_t>();
  }
  const int K = vec == kVec && kVec > 1 ? launch_fwd_k<scalar_t, kVec, kStats>(L, g, p, p.K)
                                        : launch_fwd_k<scalar_t, 1, kStats>(L, g, p, p.K);
  info = {vec, K, p.R, p.tiles, p.block.x, p.block.y, p.chunks};
  return part;
}

std::vector<int64_t> as_vec(at::IntArrayRef v) { return std::vector<int64_t>(v.begin(), v.end()); }

// depthwise_conv2d_cuda (stats = false: y = act(conv(x) + bias); mean, var and the partials empty)
// and depthwise_conv2d_stats_cuda (stats = true: bias and activation must be absent / identity):
// returns (y, mean, var, partials (3, tiles, C), info).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, std::vector<int64_t>> forward(
    const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
    std::vector<int64_t> stride, std::vector<int64_t> padding, std::vector<int64_t> dilation,
    const std::string& activation, bool stats, bool row_reuse) {
  TORCH_CHECK(input.device().is_cpu(), "emulation: CPU tensors");
  TORCH_CHECK(!stats || (!bias.has_value() && activation == "identity"), "emulation: stats take no bias or activation");
  const mk::DepthwiseArgs a = mk::prepare_depthwise(input, weight, bias, stride, padding, dilation, activation);
  if (stats) mk::check_stats_count(a);
  const auto acc_opts = input.options().dtype(mk::acc_type_for(input.scalar_type()));
  const mk_emu::GuardedOutput out = guarded_out(at::empty(a.output_sizes(), input.options().memory_format(a.format)));
  const mk_emu::GuardedOutput mean = guarded_out(at::empty({a.C}, acc_opts));
  const mk_emu::GuardedOutput var = guarded_out(at::empty({a.C}, acc_opts));
  TORCH_CHECK(out.y.numel() > 0, "emulation: an empty output");
  at::Tensor y = out.y;
  at::Tensor part;
  std::vector<int64_t> info;
  const at::Tensor x = guarded_in(a.input);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "dw_default_host_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor w = guarded_in(dw::taps_major(a.weight));
    if (!stats) {
      const at::Tensor b = a.bias.defined() ? guarded_in(dw::fresh_copy(a.bias)) : at::Tensor();
      run_conv<scalar_t, false>(x, y, w, b, dw::make_geom(a, x, y), a.N, a.channels_last(), a.act, row_reuse, info);
      return;
    }
    part = run_conv<scalar_t, true>(x, y, w, at::Tensor(), dw::make_geom(a, x, y), a.N, a.channels_last(),
                                    mk::Act::kIdentity, row_reuse, info);
    // launch_stats_finish (chan_stats.cuh)
    const int64_t tiles = part.size(1);
    const acc_t* pn = part[0].data_ptr<acc_t>();
    const acc_t* pm = part[1].data_ptr<acc_t>();
    const acc_t* pm2 = part[2].data_ptr<acc_t>();
    acc_t* mp = mean.y.data_ptr<acc_t>();
    acc_t* vp = var.y.data_ptr<acc_t>();
    const int64_t C = a.C;
    unsigned char* smem = nullptr;
    mk_emu::launch_grid(dim3(static_cast<unsigned>(mkc::ceil_div(C, 32))), dim3(32, mkc::kStatsFinishLanes), 0, smem,
                        [&] { mkc::stats_finish_kernel<acc_t>(pn, pm, pm2, tiles, C, mp, vp); });
  });
  out.check();
  mean.check();
  var.check();
  if (!stats) return {y, at::Tensor(), at::Tensor(), at::Tensor(), info};
  return {y, mean.y, var.y, part, info};
}

// run_bwd_input of depthwise_conv2d.cu. info: [0 (stride 1: the forward kernel on grad_out) and
// run_conv's info, or 1 (the gather kernel), vec, R, tiles, block.x, block.y, chunks].
template <typename scalar_t>
void run_bwd_input(const mk::DepthwiseArgs& a, const at::Tensor& gy, at::Tensor& gx, bool row_reuse,
                   std::vector<int64_t>& info) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kVec = 16 / sizeof(scalar_t);
  const bool vec = dw::can_vectorize<scalar_t>(a.channels_last(), a.C, {&gy, &gx});
  const dw::Geom fg = dw::make_geom(a, a.input, gy);
  if (fg.sH == 1 && fg.sW == 1) {
    std::vector<int64_t> sub;
    run_conv<scalar_t, false>(gy, gx, guarded_in(dw::taps_major(a.weight.flip({1, 2}))), at::Tensor(),
                              dw::rotated_geom(fg), a.N, a.channels_last(), mk::Act::kIdentity, row_reuse, sub);
    info = {0};
    info.insert(info.end(), sub.begin(), sub.end());
    return;
  }
  const at::Tensor w = guarded_in(dw::taps_major(a.weight));
  dw::Geom g = dw::make_geom(a, gx, gy);
  const int v = vec && kVec > 1 ? kVec : 1;
  dw::set_items(g, a.N, g.H, g.W);  // launch_bwd_input
  const dw::BwdInputPlan p = dw::plan_bwd_input(g, a.channels_last(), v);
  info = {1, v, p.R, p.tiles, p.block.x, p.block.y, p.chunks};
  const scalar_t* gyp = gy.data_ptr<scalar_t>();
  scalar_t* gxp = gx.data_ptr<scalar_t>();
  const acc_t* wp = w.data_ptr<acc_t>();
  unsigned char* smem = nullptr;
  for (int64_t cy0 = 0; cy0 < p.chunks; cy0 += dw::kMaxGridY) {
    const dim3 grid(static_cast<unsigned>(p.tiles), static_cast<unsigned>(std::min(dw::kMaxGridY, p.chunks - cy0)));
    mk_emu::launch_grid(grid, p.block, 0, smem, [&] {
      if (v == kVec && kVec > 1) {
        dw::depthwise_conv2d_bwd_input_kernel<scalar_t, acc_t, kVec>(gyp, gxp, wp, g, static_cast<int>(p.R), cy0);
      } else {
        dw::depthwise_conv2d_bwd_input_kernel<scalar_t, acc_t, 1>(gyp, gxp, wp, g, static_cast<int>(p.R), cy0);
      }
    });
  }
}

// launch_bwd_weight of depthwise_conv2d.cu. info: [vec, tiles, chunks, tile_px, rows, block.x,
// block.y, cchunks, fblocks].
template <typename scalar_t, int VEC>
void launch_bwd_weight(const mk::DepthwiseArgs& a, const at::Tensor& gy, at::Tensor* grad_weight,
                       at::Tensor* grad_bias, std::vector<int64_t>& info) {
  using acc_t = at::opmath_type<scalar_t>;
  const dw::Geom g = dw::make_geom(a, a.input, gy);
  const dw::BwdWeightPlan p = dw::plan_bwd_weight(a, VEC, grad_weight != nullptr, grad_bias != nullptr);
  info = {VEC, p.tiles, p.chunks, p.tile_px, p.rows, p.block.x, p.block.y, p.cchunks, p.fblocks};
  at::Tensor part =
      at::full({p.tiles, p.rows, a.C}, kNaN, a.input.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  const scalar_t* gyp = gy.data_ptr<scalar_t>();
  const scalar_t* xp = a.input.data_ptr<scalar_t>();
  acc_t* partp = part.data_ptr<acc_t>();
  const mkc::Divider div_ohw = mkc::make_divider(a.OH * a.OW), div_ow = mkc::make_divider(a.OW);
  unsigned char* smem = nullptr;
  for (int64_t cy0 = 0; cy0 < p.cchunks; cy0 += dw::kMaxGridY) {
    const dim3 grid(static_cast<unsigned>(p.tiles * p.chunks),
                    static_cast<unsigned>(std::min(dw::kMaxGridY, p.cchunks - cy0)));
    mk_emu::launch_grid(grid, p.block, 0, smem, [&] {
      dw::depthwise_conv2d_bwd_weight_kernel<scalar_t, acc_t, VEC>(gyp, xp, g, div_ohw, div_ow, p.pixels, p.tile_px,
                                                                  p.chunks, p.taps, p.do_bias, p.rows, cy0, partp);
    });
  }
  TORCH_CHECK(!part.isnan().any().item<bool>() || !gy.isfinite().all().item<bool>() ||
                  !a.input.isfinite().all().item<bool>(),
              "emulation: weight-gradient partials left unwritten (NaN)");
  scalar_t* gwp = grad_weight != nullptr ? grad_weight->data_ptr<scalar_t>() : nullptr;
  scalar_t* gbp = grad_bias != nullptr ? grad_bias->data_ptr<scalar_t>() : nullptr;
  const int64_t tiles = p.tiles, C = a.C;
  const int rows = p.rows, taps = p.taps;
  const unsigned cblocks = static_cast<unsigned>(mkc::ceil_div(a.C, 32));
  mk_emu::launch_grid(dim3(static_cast<unsigned>(p.fblocks)), dim3(32, dw::kFinishLanes), 0, smem, [&] {
    dw::depthwise_conv2d_bwd_weight_finish_kernel<scalar_t, acc_t>(partp, tiles, rows, taps, C, cblocks, gwp, gbp);
  });
}

// depthwise_conv2d_backward_cuda: (grad_input, grad_weight, grad_bias, info_input, info_weight);
// a masked output is an empty tensor (and its info empty).
std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<int64_t>, std::vector<int64_t>> backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, std::vector<int64_t> stride,
    std::vector<int64_t> padding, std::vector<int64_t> dilation, std::vector<bool> output_mask, bool row_reuse) {
  TORCH_CHECK(input.device().is_cpu(), "emulation: CPU tensors");
  TORCH_CHECK(output_mask.size() == 3, "output_mask: 3 values");
  mk::DepthwiseArgs a = mk::prepare_depthwise(input, weight, c10::nullopt, stride, padding, dilation);
  const at::Tensor gy = guarded_in(mk::prepare_depthwise_grad_output(grad_output, a, input));
  a.input = guarded_in(a.input);
  TORCH_CHECK(a.N * a.OH * a.OW > 0 && a.C > 0 && input.numel() > 0, "emulation: empty tensors");
  const mk_emu::GuardedOutput gi = guarded_out(at::empty(input.sizes(), input.options().memory_format(a.format)));
  const mk_emu::GuardedOutput gw = guarded_out(at::empty({a.C, 1, a.kH, a.kW}, weight.options()));
  const mk_emu::GuardedOutput gb = guarded_out(at::empty({a.C}, input.options()));
  at::Tensor grad_input = gi.y, grad_weight = gw.y, grad_bias = gb.y;
  std::vector<int64_t> info_in, info_w;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "dw_default_host_backward", [&] {
    constexpr int kVec = 16 / sizeof(scalar_t);
    if (output_mask[0]) run_bwd_input<scalar_t>(a, gy, grad_input, row_reuse, info_in);
    if (output_mask[1] || output_mask[2]) {
      at::Tensor* gwp = output_mask[1] ? &grad_weight : nullptr;
      at::Tensor* gbp = output_mask[2] ? &grad_bias : nullptr;
      if (kVec > 1 && dw::can_vectorize<scalar_t>(a.channels_last(), a.C, {&a.input, &gy})) {
        launch_bwd_weight<scalar_t, kVec>(a, gy, gwp, gbp, info_w);
      } else {
        launch_bwd_weight<scalar_t, 1>(a, gy, gwp, gbp, info_w);
      }
    }
  });
  gi.check();
  gw.check();
  gb.check();
  const at::Tensor none = at::empty({0}, input.options());
  return {output_mask[0] ? grad_input : none, output_mask[1] ? grad_weight : none, output_mask[2] ? grad_bias : none,
          info_in, info_w};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "depthwise_conv2d_fwd_kernel (+ stats_finish_kernel) emulated on the host",
        py::arg("input"), py::arg("weight"), py::arg("bias"), py::arg("stride"), py::arg("padding"),
        py::arg("dilation"), py::arg("activation"), py::arg("stats"), py::arg("row_reuse") = true);
  m.def("backward", &backward, "the depthwise backward kernels emulated on the host", py::arg("grad_output"),
        py::arg("input"), py::arg("weight"), py::arg("stride"), py::arg("padding"), py::arg("dilation"),
        py::arg("output_mask"), py::arg("row_reuse") = true);
}
