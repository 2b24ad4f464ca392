// Host emulation of depthwise_conv2d_fwd_tiled_kernel (csrc/cuda/depthwise_tiled.cuh): g++
// compiles the very header against cuda_shim/ (dim3, threadIdx & co., __syncthreads as a block
// barrier, __shared__ as a static) and runs the kernel on the CPU, so that the tests
// (python_tests/test_cuda_emulation.py) can check its index math against PyTorch without a GPU.
//
// A call: plan_tiled as the CUDA host code calls it, then the emulated launch (emulation.h), with x
// inside NaN guard zones of an image and more, the output (NaN) inside sentinel guard zones and the
// statistics partials starting as NaN: a missed bounds check, an element left unwritten or a write
// outside the output shows.
#include <torch/extension.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "emulation.h"  // the shim: after the PyTorch headers, before the kernel's
#include "cuda/depthwise_tiled.cuh"

namespace {

namespace mk = mobilenet_kernels;
namespace mkc = mobilenet_kernels::cuda;
using mk_emu::kGuardElems;
using mk_emu::kNaN;

template <typename scalar_t, int K, int S, bool kStats>
void launch(const at::Tensor& x, at::Tensor& y, const float* w, const float* bias, const mkc::TiledPlan& plan,
            mk::Act act, float* part_n, float* part_mean, float* part_m2) {
  constexpr int VEC = 16 / sizeof(scalar_t);
  TORCH_CHECK(plan.tx * plan.ty <= static_cast<unsigned>(mkc::kTiledMaxThreads), "emulation: block too large");
  const scalar_t* xp = x.data_ptr<scalar_t>();
  scalar_t* yp = y.data_ptr<scalar_t>();
  mk_emu::launch_grid(dim3(static_cast<unsigned>(plan.blocks_x), static_cast<unsigned>(plan.blocks_y)),
                      dim3(plan.tx, plan.ty), plan.smem, mkc::mk_dw_tiled_smem, [&] {
                        mkc::depthwise_conv2d_fwd_tiled_kernel<scalar_t, float, VEC, K, S, kStats>(
                            xp, yp, w, bias, plan.g, act, part_n, part_mean, part_m2);
                      });
}

template <typename scalar_t, int K, int S>
void dispatch_stats(bool stats, const at::Tensor& x, at::Tensor& y, const float* w, const float* bias,
                    const mkc::TiledPlan& plan, mk::Act act, float* pn, float* pm, float* pm2) {
  if (stats) {
    launch<scalar_t, K, S, true>(x, y, w, bias, plan, act, pn, pm, pm2);
  } else {
    launch<scalar_t, K, S, false>(x, y, w, bias, plan, act, pn, pm, pm2);
  }
}

template <typename scalar_t>
void dispatch(int K, int S, bool stats, const at::Tensor& x, at::Tensor& y, const float* w, const float* bias,
              const mkc::TiledPlan& plan, mk::Act act, float* pn, float* pm, float* pm2) {
#define MK_EMU_CASE(KK, SS)                                                              \
  if (K == KK && S == SS) {                                                              \
    return dispatch_stats<scalar_t, KK, SS>(stats, x, y, w, bias, plan, act, pn, pm, pm2); \
  }
  MK_EMU_CASE(3, 1)
  MK_EMU_CASE(3, 2)
  MK_EMU_CASE(5, 1)
  MK_EMU_CASE(5, 2)
  MK_EMU_CASE(7, 1)
  MK_EMU_CASE(7, 2)
#undef MK_EMU_CASE
  TORCH_CHECK(false, "emulation: K must be 3, 5 or 7 and S 1 or 2, got K=", K, " S=", S);
}

// [TH, TW, strips, R, tiles, blocks_x, blocks_y, cbv, tx, ty, smem]
std::vector<int64_t> plan_info(const mkc::TiledPlan& plan) {
  const mkc::TiledGeom& g = plan.g;
  return {g.TH, g.TW, g.strips, g.R, g.tiles, plan.blocks_x, plan.blocks_y, plan.cbv, plan.tx, plan.ty,
          static_cast<int64_t>(plan.smem)};
}

// y = act(conv(x) + bias) by the emulated tiled kernel, with the per-block statistics partials
// when `stats`. Returns (y, part_n, part_mean, part_m2, plan) with plan = [TH, TW, strips, R,
// tiles, blocks_x, blocks_y, cbv, tx, ty, smem]; the partials are empty without stats. Raises when
// plan_tiled rejects the conv.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, std::vector<int64_t>> run(
    const at::Tensor& x_in, const at::Tensor& weight_taps, const at::Tensor& bias, int64_t K, int64_t S, int64_t pH,
    int64_t pW, int64_t act_code, bool stats) {
  TORCH_CHECK(x_in.dim() == 4 && x_in.device().is_cpu(), "x: expected a 4-d CPU tensor");
  TORCH_CHECK(x_in.stride(0) >= 0 && x_in.stride(2) >= 0 && x_in.stride(3) >= 0, "x: expected non-negative strides");
  // x in a NaN buffer with guard zones of an image (and more) on both sides.
  const at::Tensor x =
      mk_emu::in_guarded_buffer(x_in, x_in.numel() / std::max<int64_t>(x_in.size(0), 1) + 2 * kGuardElems, kNaN);
  TORCH_CHECK(x.stride(1) == 1, "x: expected channels_last (channel stride 1)");
  TORCH_CHECK(act_code >= 0 && act_code <= 6, "act_code out of range");
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t OH = (H + 2 * pH - K) / S + 1;
  const int64_t OW = (W + 2 * pW - K) / S + 1;
  TORCH_CHECK(H + 2 * pH >= K && W + 2 * pW >= K, "emulation: empty output");
  TORCH_CHECK(weight_taps.scalar_type() == at::kFloat && weight_taps.is_contiguous() &&
                  weight_taps.sizes() == at::IntArrayRef({K * K, C}),
              "weight_taps: expected a contiguous float (K*K, C) tensor");
  const bool has_bias = bias.numel() > 0;
  TORCH_CHECK(!has_bias || (bias.scalar_type() == at::kFloat && bias.is_contiguous() && bias.numel() == C),
              "bias: expected a contiguous float (C,) tensor or an empty one");
  const int vec = static_cast<int>(16 / x.element_size());
  TORCH_CHECK(C % vec == 0, "C must be a multiple of ", vec);
  // 16-byte vectors: aligned data and strides (a size-1 dim's stride is never used: torch may set it to 1)
  bool aligned = reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0;
  for (int d : {0, 2, 3}) aligned = aligned && (x.size(d) == 1 || x.stride(d) % vec == 0);
  TORCH_CHECK(aligned, "x: 16-byte vectors need aligned data and strides");

  mkc::TiledPlan plan{};
  TORCH_CHECK(mkc::plan_tiled(N, C, static_cast<int>(H), static_cast<int>(W), static_cast<int>(OH),
                              static_cast<int>(OW), static_cast<int>(K), static_cast<int>(S), static_cast<int>(pH),
                              static_cast<int>(pW), vec, stats, plan),
              "plan_tiled rejected the conv");
  // y: channels_last, NaN, inside sentinel guard zones of an image and more (a tile's overhang).
  const mk_emu::GuardedOutput out(at::empty({N, C, OH, OW}, x.options().memory_format(at::MemoryFormat::ChannelsLast)),
                                  C * OH * OW + 2 * kGuardElems);
  at::Tensor y = out.y;
  plan.g.xsN = x.stride(0);
  plan.g.xsH = x.stride(2);
  plan.g.xsW = x.stride(3);
  plan.g.ysN = y.stride(0);
  plan.g.ysH = y.stride(2);
  plan.g.ysW = y.stride(3);

  at::Tensor pn, pm, pm2;
  if (stats) {
    const auto fopt = x.options().dtype(at::kFloat);
    pn = at::full({plan.blocks_x, C}, kNaN, fopt);
    pm = at::full({plan.blocks_x, C}, kNaN, fopt);
    pm2 = at::full({plan.blocks_x, C}, kNaN, fopt);
  } else {
    pn = pm = pm2 = at::empty({0}, x.options().dtype(at::kFloat));
  }
  float* pnp = stats ? pn.data_ptr<float>() : nullptr;
  float* pmp = stats ? pm.data_ptr<float>() : nullptr;
  float* pm2p = stats ? pm2.data_ptr<float>() : nullptr;
  const float* wp = weight_taps.data_ptr<float>();
  const float* bp = has_bias ? bias.data_ptr<float>() : nullptr;
  const auto act = static_cast<mk::Act>(act_code);
  const int k = static_cast<int>(K), s = static_cast<int>(S);
  switch (x.scalar_type()) {
    case at::kFloat:
      dispatch<float>(k, s, stats, x, y, wp, bp, plan, act, pnp, pmp, pm2p);
      break;
    case at::kBFloat16:
      dispatch<c10::BFloat16>(k, s, stats, x, y, wp, bp, plan, act, pnp, pmp, pm2p);
      break;
    case at::kHalf:
      dispatch<c10::Half>(k, s, stats, x, y, wp, bp, plan, act, pnp, pmp, pm2p);
      break;
    default:
      TORCH_CHECK(false, "x: expected float32, bfloat16 or float16, got ", x.scalar_type());
  }
  out.check();
  return {y, pn, pm, pm2, plan_info(plan)};
}

// plan_tiled alone, for a conv of any size (nothing runs): the plan as run() returns it, or an
// empty list when plan_tiled rejects the conv.
std::vector<int64_t> plan(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t S, int64_t pH, int64_t pW,
                          int64_t vec, bool stats) {
  const int64_t OH = (H + 2 * pH - K) / S + 1, OW = (W + 2 * pW - K) / S + 1;
  mkc::TiledPlan p{};
  if (!mkc::plan_tiled(N, C, static_cast<int>(H), static_cast<int>(W), static_cast<int>(OH), static_cast<int>(OW),
                       static_cast<int>(K), static_cast<int>(S), static_cast<int>(pH), static_cast<int>(pW),
                       static_cast<int>(vec), stats, p)) {
    return {};
  }
  return plan_info(p);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("run", &run, "depthwise_conv2d_fwd_tiled_kernel emulated on the host", py::arg("x"), py::arg("weight_taps"),
        py::arg("bias"), py::arg("K"), py::arg("S"), py::arg("pH"), py::arg("pW"), py::arg("act_code"),
        py::arg("stats"));
  m.def("plan", &plan, "plan_tiled of a conv (nothing runs)", py::arg("N"), py::arg("C"), py::arg("H"), py::arg("W"),
        py::arg("K"), py::arg("S"), py::arg("pH"), py::arg("pW"), py::arg("vec"), py::arg("stats"));
}
