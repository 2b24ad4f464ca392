// Host emulation of the tiled depthwise kernels (csrc/cuda/depthwise_tiled.cuh: the forward, the
// stride-2 grad_input, the weight gradient's stage 1 and the fused stride-1 backward): g++
// compiles the very header against cuda_shim/ (dim3, threadIdx & co., __syncthreads as a block
// barrier, __shared__ as a static) and runs the kernel on the CPU, so that the tests
// (python_tests/test_cuda_emulation.py) can check its index math against PyTorch without a GPU.
//
// A call: plan_tiled_for as the CUDA host code calls it, then the emulated launch (emulation.h), with x
// inside NaN guard zones of an image and more, the output (NaN) inside sentinel guard zones and the
// statistics or weight-gradient partials starting as NaN: a missed bounds check, an element left
// unwritten or a write outside the output shows.
#include <torch/extension.h>

#include <algorithm>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "emulation.h"  // the shim: after the PyTorch headers, before the kernel's
#include "cuda/depthwise_tiled.cuh"

namespace {

namespace mk = mobilenet_kernels;
namespace mkc = mobilenet_kernels::cuda;
using mk_emu::kGuardElems;
using mk_emu::kNaN;

template <int N>
using Int = std::integral_constant<int, N>;

// f(scalar_t{}) for t float32, bfloat16 or float16; raises naming `name` otherwise.
template <typename F>
void dispatch_dtype(at::ScalarType t, const char* name, F&& f) {
  switch (t) {
    case at::kFloat:
      return f(float{});
    case at::kBFloat16:
      return f(c10::BFloat16{});
    case at::kHalf:
      return f(c10::Half{});
    default:
      TORCH_CHECK(false, name, ": expected float32, bfloat16 or float16, got ", t);
  }
}

// f(Int<K>{}, Int<S>{}) for K in {3, 5, 7} and S in {1, 2} (all the kernels' instantiations).
template <typename F>
void dispatch_k_s(int64_t K, int64_t S, F&& f) {
  TORCH_CHECK((K == 3 || K == 5 || K == 7) && (S == 1 || S == 2), "emulation: K must be 3, 5 or 7 and S 1 or 2, got K=",
              K, " S=", S);
  const auto with_s = [&](auto k) { S == 1 ? f(k, Int<1>{}) : f(k, Int<2>{}); };
  K == 3 ? with_s(Int<3>{}) : K == 5 ? with_s(Int<5>{}) : with_s(Int<7>{});
}

// kernel<<<plan's grid, plan's block, plan.smem>>>, emulated: `kernel()` calls the kernel.
template <typename Kernel>
void launch_planned(const mkc::TiledPlan& plan, const Kernel& kernel) {
  TORCH_CHECK(plan.tx * plan.ty <= static_cast<unsigned>(mkc::kTiledMaxThreads), "emulation: block too large");
  mk_emu::launch_grid(mkc::tiled_grid(plan), mkc::tiled_block(plan), plan.smem, mkc::mk_dw_tiled_smem, kernel);
}

// [TH, TW, strips, R, tiles, blocks_x, blocks_y, cbv, tx, ty, smem, stages]
std::vector<int64_t> plan_info(const mkc::TiledPlan& plan) {
  const mkc::TiledGeom& g = plan.g;
  return {g.TH, g.TW, g.strips, g.R, g.tiles, plan.blocks_x, plan.blocks_y, plan.cbv, plan.tx, plan.ty,
          static_cast<int64_t>(plan.smem), g.stages};
}

// An input of the kernels (4-d, channels_last, C a multiple of the 16-byte vector) copied into a
// NaN buffer with guard zones of an image (and more) on both sides; raises unless its data and
// strides allow 16-byte vectors (a size-1 dim's stride is never used: torch may set it to 1).
at::Tensor guarded_input(const at::Tensor& x_in, const char* name) {
  TORCH_CHECK(x_in.dim() == 4 && x_in.device().is_cpu(), name, ": expected a 4-d CPU tensor");
  TORCH_CHECK(x_in.stride(0) >= 0 && x_in.stride(2) >= 0 && x_in.stride(3) >= 0, name,
              ": expected non-negative strides");
  const at::Tensor x =
      mk_emu::in_guarded_buffer(x_in, x_in.numel() / std::max<int64_t>(x_in.size(0), 1) + 2 * kGuardElems, kNaN);
  TORCH_CHECK(x.stride(1) == 1, name, ": expected channels_last (channel stride 1)");
  const int vec = static_cast<int>(16 / x.element_size());
  TORCH_CHECK(x.size(1) % vec == 0, name, ": C must be a multiple of ", vec);
  bool aligned = reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0;
  for (int d : {0, 2, 3}) aligned = aligned && (x.size(d) == 1 || x.stride(d) % vec == 0);
  TORCH_CHECK(aligned, name, ": 16-byte vectors need aligned data and strides");
  return x;
}

void check_weight_taps(const at::Tensor& weight_taps, int64_t K, int64_t C) {
  TORCH_CHECK(weight_taps.scalar_type() == at::kFloat && weight_taps.is_contiguous() &&
                  weight_taps.sizes() == at::IntArrayRef({K * K, C}),
              "weight_taps: expected a contiguous float (K*K, C) tensor");
}

// The plan the CUDA launcher makes (plan_tiled_for) for the tiled launch x -> y (sizes from the two
// tensors, x read and y written) of a K x K conv with stride S and padding (pH, pW), with `stages`
// staging buffers (the launcher's tiled_stages(): MK_DW_STAGES) and, when min_blocks >= 0, that
// TiledWork::min_blocks instead of the work's and no multi_tile_max_stride limit (0: blocks of several
// tiles wherever min_outputs asks for them, also for the small shapes and strides of the
// tests); raises when plan_tiled rejects it.
mkc::TiledPlan plan_or_raise(const at::Tensor& x, const at::Tensor& y, int64_t K, int64_t S, int64_t pH, int64_t pW,
                             mkc::TiledWork work, int64_t stages, int64_t min_blocks) {
  work.stages = static_cast<int>(stages);
  if (min_blocks >= 0) {
    work.min_blocks = min_blocks;
    work.multi_tile_max_stride = 0;
  }
  const mkc::TiledShape shape{x.size(0),
                              x.size(1),
                              static_cast<int>(x.size(2)),
                              static_cast<int>(x.size(3)),
                              static_cast<int>(y.size(2)),
                              static_cast<int>(y.size(3)),
                              static_cast<int>(K),
                              static_cast<int>(S),
                              static_cast<int>(pH),
                              static_cast<int>(pW)};
  mkc::TiledPlan plan{};
  TORCH_CHECK(mkc::plan_tiled_for(x, y, shape, static_cast<int>(16 / x.element_size()), work, plan),
              "plan_tiled rejected the conv");
  return plan;
}

// The optional BatchNorm before the conv (TiledInputBn): x_bn a contiguous (4, C) float tensor of
// its mean, var, weight and bias rows; eps; act_code its activation. x is then that BatchNorm's input.
struct InputBnOperands {
  at::Tensor rows;
  float eps = 0.f;
  mk::Act act = mk::Act::kIdentity;
  mkc::TiledInputBn<float> kernel_arg() const {
    if (!rows.defined()) return {nullptr, nullptr, nullptr, nullptr, 0.f, act};
    const float* r = rows.data_ptr<float>();
    const int64_t C = rows.size(1);
    return {r, r + C, r + 2 * C, r + 3 * C, eps, act};
  }
};

InputBnOperands input_bn_operands(const c10::optional<at::Tensor>& x_bn, double eps, int64_t act_code, int64_t C) {
  TORCH_CHECK(act_code >= 0 && act_code <= 6, "x_bn_act out of range");
  InputBnOperands b;
  b.act = static_cast<mk::Act>(act_code);
  b.eps = static_cast<float>(eps);
  if (!x_bn.has_value()) return b;
  TORCH_CHECK(x_bn->scalar_type() == at::kFloat && x_bn->is_contiguous() && x_bn->sizes() == at::IntArrayRef({4, C}),
              "x_bn: expected a contiguous (4, C) float tensor");
  b.rows = *x_bn;
  return b;
}

// y = act(conv(x) + bias) by the emulated tiled kernel, with the per-block statistics partials
// when `stats`; stages and min_blocks as plan_or_raise takes them. Returns (y, part_n, part_mean,
// part_m2, plan) with plan = [TH, TW, strips, R, tiles, blocks_x, blocks_y, cbv, tx, ty, smem,
// stages]; the partials are empty without stats. Raises when plan_tiled rejects the conv.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, std::vector<int64_t>> run(
    const at::Tensor& x_in, const at::Tensor& weight_taps, const at::Tensor& bias, int64_t K, int64_t S, int64_t pH,
    int64_t pW, int64_t act_code, bool stats, int64_t stages, int64_t min_blocks,
    const c10::optional<at::Tensor>& x_bn, double x_bn_eps, int64_t x_bn_act) {
  const at::Tensor x = guarded_input(x_in, "x");
  const InputBnOperands xbn = input_bn_operands(x_bn, x_bn_eps, x_bn_act, x.size(1));
  TORCH_CHECK(act_code >= 0 && act_code <= 6, "act_code out of range");
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t OH = (H + 2 * pH - K) / S + 1;
  const int64_t OW = (W + 2 * pW - K) / S + 1;
  TORCH_CHECK(H + 2 * pH >= K && W + 2 * pW >= K, "emulation: empty output");
  check_weight_taps(weight_taps, K, C);
  const bool has_bias = bias.numel() > 0;
  TORCH_CHECK(!has_bias || (bias.scalar_type() == at::kFloat && bias.is_contiguous() && bias.numel() == C),
              "bias: expected a contiguous float (C,) tensor or an empty one");
  // y: channels_last, NaN, inside sentinel guard zones of an image and more (a tile's overhang).
  const mk_emu::GuardedOutput out(at::empty({N, C, OH, OW}, x.options().memory_format(at::MemoryFormat::ChannelsLast)),
                                  C * OH * OW + 2 * kGuardElems);
  at::Tensor y = out.y;
  const mkc::TiledPlan plan =
      plan_or_raise(x, y, K, S, pH, pW, stats ? mkc::kTiledStats : mkc::kTiledForward, stages, min_blocks);

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
  dispatch_dtype(x.scalar_type(), "x", [&](auto tag) {
    using scalar_t = decltype(tag);
    constexpr int VEC = 16 / sizeof(scalar_t);
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    dispatch_k_s(K, S, [&](auto k, auto s) {
      const auto go = [&](auto with_stats) {
        launch_planned(plan, [&] {
          mkc::depthwise_conv2d_fwd_tiled_kernel<scalar_t, float, VEC, decltype(k)::value, decltype(s)::value,
                                                 decltype(with_stats)::value>(xp, yp, wp, bp, plan.g, act, pnp, pmp,
                                                                              pm2p, xbn.kernel_arg());
        });
      };
      stats ? go(std::true_type{}) : go(std::false_type{});
    });
  });
  out.check();
  return {y, pn, pm, pm2, plan_info(plan)};
}

// The work plan_tiled is asked for: "forward", "stats", "wgrad", "dgrad_s2" or "bwd_fused" (of a
// K x K conv).
// The optional BatchNorm operands of the backward kernels (TiledBnDx): z, the kernel's
// grad_output tensor's sizes and strides (guarded like the inputs), and bn_table, a contiguous
// (5, C) float tensor of bn::TrainDxCoef's rows; act_code the activation (mk_common.h Act).
struct BnOperands {
  at::Tensor z, table;
  mk::Act act = mk::Act::kIdentity;
  template <typename scalar_t>
  mkc::TiledBnDx<scalar_t, float> kernel_arg() const {
    if (!z.defined()) return {nullptr, nullptr, act};
    return {z.data_ptr<scalar_t>(), table.data_ptr<float>(), act};
  }
};

BnOperands bn_operands(const c10::optional<at::Tensor>& z_in, const c10::optional<at::Tensor>& bn_table,
                       int64_t act_code, const at::Tensor& like) {
  TORCH_CHECK(z_in.has_value() == bn_table.has_value(), "z, bn_table: expected both or neither");
  TORCH_CHECK(act_code >= 0 && act_code <= 6, "act_code out of range");
  BnOperands bn;
  bn.act = static_cast<mk::Act>(act_code);
  if (!z_in.has_value()) return bn;
  bn.z = guarded_input(*z_in, "z");
  TORCH_CHECK(bn.z.scalar_type() == like.scalar_type() && bn.z.sizes() == like.sizes() &&
                  bn.z.strides() == like.strides(),
              "z: expected the dtype, sizes and strides of the grad_output it goes with");
  TORCH_CHECK(bn_table->scalar_type() == at::kFloat && bn_table->is_contiguous() &&
                  bn_table->sizes() == at::IntArrayRef({mkc::bn::kTrainDxRows, like.size(1)}),
              "bn_table: expected a contiguous (5, C) float tensor");
  bn.table = *bn_table;
  return bn;
}

mkc::TiledWork work_of(const std::string& kind, int64_t K) {
  if (kind == "forward") return mkc::kTiledForward;
  if (kind == "stats") return mkc::kTiledStats;
  if (kind == "dgrad_s2") return mkc::kTiledDgradS2;
  if (kind == "bwd_fused") return mkc::kTiledBwdFused;
  if (kind == "bwd_fused_bn") return mkc::kTiledBwdFusedBn;
  if (kind == "dgrad_s2_bn") return mkc::kTiledDgradS2Bn;
  TORCH_CHECK(kind == "wgrad", "kind: expected forward, stats, wgrad, dgrad_s2, dgrad_s2_bn, bwd_fused or ",
              "bwd_fused_bn, got ", kind);
  return mkc::tiled_wgrad_work(static_cast<int>(K));
}

// Stage 1 of the weight gradient by the emulated tiled kernel: x the conv's input, gy its
// grad_output (both channels_last). Returns (part, plan): part (blocks_x, K * K + bias, C) float
// partials whose sum over dim 0 is grad_weight's taps (then grad_bias), plan as run() returns it.
// With z, bn_table and act_code (bn_operands): gy is BatchNorm's grad_output, z its input.
std::tuple<at::Tensor, std::vector<int64_t>> wgrad(const at::Tensor& x_in, const at::Tensor& gy_in, int64_t K,
                                                   int64_t S, int64_t pH, int64_t pW, bool bias, int64_t stages,
                                                   const c10::optional<at::Tensor>& z_in,
                                                   const c10::optional<at::Tensor>& bn_table, int64_t act_code,
                                                   const c10::optional<at::Tensor>& x_bn, double x_bn_eps,
                                                   int64_t x_bn_act) {
  const at::Tensor x = guarded_input(x_in, "x");
  const at::Tensor gy = guarded_input(gy_in, "gy");
  const BnOperands bn = bn_operands(z_in, bn_table, act_code, gy);
  const InputBnOperands xbn = input_bn_operands(x_bn, x_bn_eps, x_bn_act, x.size(1));
  TORCH_CHECK(x.scalar_type() == gy.scalar_type(), "gy: expected x's dtype");
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t OH = (H + 2 * pH - K) / S + 1, OW = (W + 2 * pW - K) / S + 1;
  TORCH_CHECK(H + 2 * pH >= K && W + 2 * pW >= K, "emulation: empty output");
  TORCH_CHECK(gy.sizes() == at::IntArrayRef({N, C, OH, OW}), "gy: expected the conv's output shape");
  const mkc::TiledPlan plan =
      plan_or_raise(x, gy, K, S, pH, pW, mkc::tiled_wgrad_work(static_cast<int>(K)), stages, -1);
  // The partials inside sentinel guard zones, NaN: every (block, row, channel) must be written.
  const int64_t rows = K * K + (bias ? 1 : 0);
  const mk_emu::GuardedOutput out(at::empty({plan.blocks_x, rows, C}, x.options().dtype(at::kFloat)), kGuardElems);
  at::Tensor part = out.y;
  float* pp = part.data_ptr<float>();
  dispatch_dtype(x.scalar_type(), "x", [&](auto tag) {
    using scalar_t = decltype(tag);
    constexpr int VEC = 16 / sizeof(scalar_t);
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* gp = gy.data_ptr<scalar_t>();
    dispatch_k_s(K, S, [&](auto k, auto s) {
      launch_planned(plan, [&] {
        mkc::depthwise_conv2d_bwd_weight_tiled_kernel<scalar_t, float, VEC, decltype(k)::value, decltype(s)::value>(
            xp, gp, plan.g, bias, pp, bn.kernel_arg<scalar_t>(), xbn.kernel_arg());
      });
    });
  });
  out.check();
  return {part, plan_info(plan)};
}

// grad_input of a stride-2 conv (input H x W, padding pH, pW) by the emulated parity-split tiled
// kernel: gy its grad_output (channels_last), weight_taps the conv's (K * K, C) float taps (not
// rotated); stages and min_blocks as plan_or_raise takes them; with z, bn_table and act_code
// (bn_operands): gy is BatchNorm's grad_output, z its input. Returns (grad_input, plan), plan as
// run() returns it.
std::tuple<at::Tensor, std::vector<int64_t>> dgrad_s2(const at::Tensor& gy_in, const at::Tensor& weight_taps,
                                                      int64_t H, int64_t W, int64_t K, int64_t pH, int64_t pW,
                                                      int64_t stages, int64_t min_blocks,
                                                      const c10::optional<at::Tensor>& z_in,
                                                      const c10::optional<at::Tensor>& bn_table, int64_t act_code) {
  const at::Tensor gy = guarded_input(gy_in, "gy");
  const BnOperands bn = bn_operands(z_in, bn_table, act_code, gy);
  const int64_t N = gy.size(0), C = gy.size(1), OH = gy.size(2), OW = gy.size(3);
  TORCH_CHECK((H + 2 * pH - K) / 2 + 1 == OH && (W + 2 * pW - K) / 2 + 1 == OW && H + 2 * pH >= K &&
                  W + 2 * pW >= K,
              "gy: expected the output shape of the stride-2 conv of an H x W input");
  check_weight_taps(weight_taps, K, C);
  const mk_emu::GuardedOutput out(at::empty({N, C, H, W}, gy.options().memory_format(at::MemoryFormat::ChannelsLast)),
                                  C * H * W + 2 * kGuardElems);
  at::Tensor gx = out.y;
  const mkc::TiledPlan plan = plan_or_raise(gy, gx, K, 2, pH, pW, bn.z.defined() ? mkc::kTiledDgradS2Bn : mkc::kTiledDgradS2,
                                            stages, min_blocks);
  const float* wp = weight_taps.data_ptr<float>();
  dispatch_dtype(gy.scalar_type(), "gy", [&](auto tag) {
    using scalar_t = decltype(tag);
    constexpr int VEC = 16 / sizeof(scalar_t);
    const scalar_t* gp = gy.data_ptr<scalar_t>();
    scalar_t* xp = gx.data_ptr<scalar_t>();
    dispatch_k_s(K, 2, [&](auto k, auto) {
      launch_planned(plan, [&] {
        mkc::depthwise_conv2d_bwd_input_s2_tiled_kernel<scalar_t, float, VEC, decltype(k)::value>(
            gp, xp, wp, plan.g, bn.kernel_arg<scalar_t>());
      });
    });
  });
  out.check();
  return {gx, plan_info(plan)};
}

// grad_input and the weight gradient's stage-1 partials of a stride-1 "same" conv (padding
// (K - 1) / 2) by the emulated fused kernel: x the conv's input, gy its grad_output (both
// channels_last, the same sizes and strides), weight_taps the conv's (K * K, C) float taps.
// With z, bn_table and act_code (bn_operands): the fused BatchNorm backward, gy then BatchNorm's
// grad_output and z its input.
// Returns (grad_input, part (blocks_x, K * K + bias, C), plan), plan as run() returns it.
std::tuple<at::Tensor, at::Tensor, std::vector<int64_t>> bwd_fused(const at::Tensor& x_in, const at::Tensor& gy_in,
                                                                   const at::Tensor& weight_taps, int64_t K, bool bias,
                                                                   int64_t stages,
                                                                   const c10::optional<at::Tensor>& z_in,
                                                                   const c10::optional<at::Tensor>& bn_table,
                                                                   int64_t act_code,
                                                                   const c10::optional<at::Tensor>& x_bn,
                                                                   double x_bn_eps, int64_t x_bn_act) {
  const at::Tensor x = guarded_input(x_in, "x");
  const InputBnOperands xbn = input_bn_operands(x_bn, x_bn_eps, x_bn_act, x.size(1));
  const at::Tensor gy = guarded_input(gy_in, "gy");
  TORCH_CHECK(x.scalar_type() == gy.scalar_type() && x.sizes() == gy.sizes() && x.strides() == gy.strides(),
              "gy: expected x's dtype, sizes and strides");
  const BnOperands bn = bn_operands(z_in, bn_table, act_code, gy);
  TORCH_CHECK(K % 2 == 1, "K: expected an odd kernel size");
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), P = (K - 1) / 2;
  check_weight_taps(weight_taps, K, C);
  const mk_emu::GuardedOutput gx_out(
      at::empty({N, C, H, W}, x.options().memory_format(at::MemoryFormat::ChannelsLast)), C * H * W + 2 * kGuardElems);
  at::Tensor gx = gx_out.y;
  const mkc::TiledPlan plan =
      plan_or_raise(x, gx, K, 1, P, P, bn.z.defined() ? mkc::kTiledBwdFusedBn : mkc::kTiledBwdFused, stages, -1);
  const int64_t rows = K * K + (bias ? 1 : 0);
  const mk_emu::GuardedOutput part_out(at::empty({plan.blocks_x, rows, C}, x.options().dtype(at::kFloat)),
                                       kGuardElems);
  at::Tensor part = part_out.y;
  const float* wp = weight_taps.data_ptr<float>();
  float* pp = part.data_ptr<float>();
  dispatch_dtype(x.scalar_type(), "x", [&](auto tag) {
    using scalar_t = decltype(tag);
    constexpr int VEC = 16 / sizeof(scalar_t);
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* gp = gy.data_ptr<scalar_t>();
    scalar_t* gxp = gx.data_ptr<scalar_t>();
    dispatch_k_s(K, 1, [&](auto k, auto) {
      launch_planned(plan, [&] {
        mkc::depthwise_conv2d_bwd_fused_s1_tiled_kernel<scalar_t, float, VEC, decltype(k)::value>(
            xp, gp, gxp, wp, plan.g, bias, pp, bn.kernel_arg<scalar_t>(), xbn.kernel_arg());
      });
    });
  });
  gx_out.check();
  part_out.check();
  return {gx, part, plan_info(plan)};
}

// plan_tiled alone, for a conv of any size (nothing runs): the plan as run() returns it, or an
// empty list when plan_tiled rejects the conv. kind: "forward", "stats", "wgrad" (of the conv) or
// "dgrad_s2" (grad_input of the conv as the stride-2 kernel plans it: grad_output -> grad_input),
// "bwd_fused" (the stride-1 fused backward); "dgrad_s2_bn", "bwd_fused_bn": those two with
// BatchNorm's z staged too (TiledBnDx).
std::vector<int64_t> plan(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t S, int64_t pH, int64_t pW,
                          int64_t vec, const std::string& kind, int64_t stages) {
  int64_t OH = (H + 2 * pH - K) / S + 1, OW = (W + 2 * pW - K) / S + 1;
  if (kind.rfind("dgrad_s2", 0) == 0) {  // reads grad_output, writes grad_input
    std::swap(H, OH);
    std::swap(W, OW);
  }
  mkc::TiledPlan p{};
  mkc::TiledWork work = work_of(kind, K);
  work.stages = static_cast<int>(stages);
  if (!mkc::plan_tiled(N, C, static_cast<int>(H), static_cast<int>(W), static_cast<int>(OH), static_cast<int>(OW),
                       static_cast<int>(K), static_cast<int>(S), static_cast<int>(pH), static_cast<int>(pW),
                       static_cast<int>(vec), work, p)) {
    return {};
  }
  return plan_info(p);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("run", &run, "depthwise_conv2d_fwd_tiled_kernel emulated on the host", py::arg("x"), py::arg("weight_taps"),
        py::arg("bias"), py::arg("K"), py::arg("S"), py::arg("pH"), py::arg("pW"), py::arg("act_code"),
        py::arg("stats"), py::arg("stages") = 2, py::arg("min_blocks") = -1, py::arg("x_bn") = py::none(),
        py::arg("x_bn_eps") = 0.0, py::arg("x_bn_act") = 0);
  m.def("plan", &plan, "plan_tiled of a conv (nothing runs)", py::arg("N"), py::arg("C"), py::arg("H"), py::arg("W"),
        py::arg("K"), py::arg("S"), py::arg("pH"), py::arg("pW"), py::arg("vec"), py::arg("kind"),
        py::arg("stages") = 2);
  m.def("dgrad_s2", &dgrad_s2, "depthwise_conv2d_bwd_input_s2_tiled_kernel emulated on the host", py::arg("gy"),
        py::arg("weight_taps"), py::arg("H"), py::arg("W"), py::arg("K"), py::arg("pH"), py::arg("pW"),
        py::arg("stages") = 2, py::arg("min_blocks") = -1, py::arg("z") = py::none(), py::arg("bn_table") = py::none(),
        py::arg("act_code") = 0);
  m.def("bwd_fused", &bwd_fused, "depthwise_conv2d_bwd_fused_s1_tiled_kernel emulated on the host", py::arg("x"),
        py::arg("gy"), py::arg("weight_taps"), py::arg("K"), py::arg("bias"), py::arg("stages") = 2,
        py::arg("z") = py::none(), py::arg("bn_table") = py::none(), py::arg("act_code") = 0,
        py::arg("x_bn") = py::none(), py::arg("x_bn_eps") = 0.0, py::arg("x_bn_act") = 0);
  m.def("wgrad", &wgrad, "depthwise_conv2d_bwd_weight_tiled_kernel emulated on the host", py::arg("x"), py::arg("gy"),
        py::arg("K"), py::arg("S"), py::arg("pH"), py::arg("pW"), py::arg("bias"), py::arg("stages") = 2,
        py::arg("z") = py::none(), py::arg("bn_table") = py::none(), py::arg("act_code") = 0,
        py::arg("x_bn") = py::none(), py::arg("x_bn_eps") = 0.0, py::arg("x_bn_act") = 0);
}
