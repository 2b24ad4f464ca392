// depthwise_conv2d, CUDA kernels (sm_80+).
//
// Forward: act(conv2d(x, w, b, groups=C)), bias and activation in the epilogue. Stats variant: the
//          conv without bias/activation; the same epilogue feeds the output as stored (rounded to
//          its dtype) to per-thread shifted sums, merged per (tile, channel) into (count, mean, M2)
//          and then over the tiles by a second small kernel, in fixed orders with Chan's formula
//          (chan_stats.cuh, shared with pointwise_conv2d.cu; +-Inf gives torch's mean and variance).
// Backward: grad_input by gathering (stride 1: the forward kernel on grad_output with the filter
//          rotated 180 degrees and padding (k-1)d-p; stride > 1: a gather kernel); grad_weight and
//          grad_bias two-stage: fp32 partials[tile][tap (+bias)][C] from fixed pixel tiles, then a
//          fixed-order sum per (tap, channel). No atomics: results are bitwise deterministic.
// dw conv + BatchNorm + activation, training backward (depthwise_conv2d_bn_act_train_backward):
//          BatchNorm's reduction, then the tiled backward kernels with BatchNorm's grad_input
//          computed where they stage or load grad_output (TiledBnDx), where they apply; else the
//          unfused sequence.
// Expand + depthwise layers of a block, training (pointwise_depthwise_bn_act_train and its
//          backward): the tiled statistics forward and the tiled backward apply the expand
//          BatchNorm + activation where they stage their input (TiledInputBn), so its output is
//          neither written nor read; where they do not apply, that output is computed by the apply
//          pass and the per-layer ops run.
// Layouts: channels_last and NCHW, both native. channels_last: a thread owns a vector of channels
//          (16-byte loads when C % VEC == 0, strides and pointers aligned; else one channel per
//          thread); NCHW: a block is one channel, threads walk output columns. Every thread
//          computes kTW output columns of one row, so each weight load serves kTW outputs; for
//          kW in {3, 5, 7}, stride_w == dilation_w == 1 the kTW columns are adjacent and each input
//          vector loaded serves every tap that reads it (row reuse in registers).
// dtypes: float64, float32, float16, bfloat16; accumulation in float (double for float64).
// Indexing: int64 memory offsets; spatial coordinates in int, with H + 2*pad and W + 2*pad checked
//          below 2^30 on the host. The activation is a uniform runtime switch in the epilogue (not a
//          template parameter) to keep the number of kernel instantiations, and build time, down.
// Tiled: channels_last convs with 16-byte vectors, square K in {3, 5}, equal strides 1 or 2
//          (none with MK_DW_TILED=0) and dilation 1 (the forward, its
//          statistics, grad_input: at stride 1 as a forward conv, at stride 2 split into parity
//          phases, and the weight gradient's stage 1; for stride-1 "same" convs grad_input and the
//          weight gradient in one pass) run the shared-memory tiled kernels of depthwise_tiled.cuh
//          instead: faster than the default kernels at both strides (GPU run 5, H200); their GPU
//          tests passed on an H200 (runs 3 and 5).
// Limits: the default kernels have no shared-memory input tiles (reuse across rows from L1/L2);
//          grad_input at stride > 1 tests each tap for stride divisibility (no parity-phase
//          split); the weight gradient loads every tap from L1 (L1-bound for k5/k7); grad_input
//          and grad_weight read grad_output separately; at most 65534 kernel taps. Sums are
//          deterministic for a given shape and vector path (the path depends on C, strides and
//          pointer alignment; for tiled convs also on whether grad_input is asked for with
//          grad_weight, which selects the fused backward).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <initializer_list>
#include <limits>
#include <optional>
#include <string>

#include "batch_norm_act.h"  // check_conv_bn_backward_operands, cuda::batch_norm_act_train_backward_sums
#include "chan_stats.cuh"
#include "depthwise_conv2d.h"
#include "depthwise_kernels.cuh"  // the kernels and their launch planning
#include "depthwise_tiled.cuh"
#include "mk_cuda.cuh"
#include "pointwise_depthwise.h"

namespace mobilenet_kernels {
namespace {

constexpr int64_t kSpatialLimit = int64_t(1) << 30;

using namespace cuda;      // Vec, Divider, load_vec, recip_ge1, apply_activation (mk_cuda.cuh); chan_stats.cuh
using namespace cuda::dw;  // the kernels, Geom and the launch planning (depthwise_kernels.cuh)

// ---------------------------------------------------------------------------------------------
// Host side.

// H + 2*pad < 2^30 bounds every spatial coordinate the kernels form in int (strides and dilations
// that matter are bounded by it too; the others are normalized to 1 in make_geom).
void check_geometry(const DepthwiseArgs& a) {
  TORCH_CHECK_VALUE(a.H + 2 * a.pH < kSpatialLimit && a.W + 2 * a.pW < kSpatialLimit,
                    "depthwise_conv2d (CUDA): spatial size plus padding must be below 2^30, got (", a.H, ", ", a.W,
                    ") with padding (", a.pH, ", ", a.pW, ")");
  TORCH_CHECK_VALUE(a.kH * a.kW < kMaxGridY, "depthwise_conv2d (CUDA): at most ", kMaxGridY - 1,
                    " kernel taps are supported, got ", a.kH, "x", a.kW);
}

// MK_DW_ROW_REUSE=0 (read once per process) sends stride-1 convs to the generic kernel instead of
// the row-reuse one: a switch for benchmarks/diag_depthwise.py to compare the two on a GPU.
bool row_reuse_enabled() {
  static const bool enabled = !env_is("MK_DW_ROW_REUSE", "0");
  return enabled;
}

template <typename scalar_t>
struct ConvLaunch {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x;
  scalar_t* y;
  const acc_t* w;     // (kH * kW, C), taps_major
  const acc_t* bias;  // (C,) or null
  Act act;
  acc_t *part_n, *part_mean, *part_m2;  // stats partials (tiles, C)
  dim3 block;
  int64_t tiles, chunks;
  int R;
};

template <typename scalar_t, int VEC, int K, bool kStats>
void launch_fwd(const ConvLaunch<scalar_t>& L, const Geom& g) {
  const auto stream = at::cuda::getCurrentCUDAStream();
  for (int64_t cy0 = 0; cy0 < L.chunks; cy0 += kMaxGridY) {
    const dim3 grid(static_cast<unsigned>(L.tiles), static_cast<unsigned>(std::min(kMaxGridY, L.chunks - cy0)));
    depthwise_conv2d_fwd_kernel<scalar_t, at::opmath_type<scalar_t>, VEC, K, kStats><<<grid, L.block, 0, stream>>>(
        L.x, L.y, L.w, L.bias, g, L.act, L.R, cy0, L.part_n, L.part_mean, L.part_m2);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <typename scalar_t, int VEC, bool kStats>
void launch_fwd_k(const ConvLaunch<scalar_t>& L, const Geom& g, int K) {
  dispatch_fwd_k<scalar_t>(K, [&](auto k) { launch_fwd<scalar_t, VEC, decltype(k)::value, kStats>(L, g); });
}

// Whether the tiled kernels (depthwise_tiled.cuh) may take the conv g: a square kernel, equal
// strides up to tiled_max_stride() (2, or 0 with MK_DW_TILED=0),
// dilation 1. Each run_tiled_* checks the rest (its K and stride, the plan).
bool tiled_candidate(const Geom& g) {
  return g.kH == g.kW && g.sH == g.sW && g.sH <= tiled_max_stride() && g.dH == 1 && g.dW == 1;
}

// Runs the conv x -> y described by g (x, y: dense tensors of N images). With kStats, returns the
// (3, tiles, C) partials (count, mean, M2); else an undefined tensor. With xbn (the statistics
// only), x is the input of that BatchNorm + activation, applied by the tiled kernel where it
// stages x (TiledInputBn); where the tiled kernel does not apply, nothing is launched and the
// partials come back undefined (the default kernels apply no input BatchNorm).
template <typename scalar_t, bool kStats>
at::Tensor run_conv(const at::Tensor& x, at::Tensor& y, const at::Tensor& w_taps, const at::Tensor& bias, Geom g,
                    int64_t N, bool channels_last, Act act, const InputBn* xbn = nullptr) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kVec = 16 / sizeof(scalar_t);
  set_items(g, N, g.OH, g.OW);
  const int vec = can_vectorize<scalar_t>(channels_last, g.C, {&x, &y}) ? kVec : 1;
  if (vec == kVec && kVec > 1 && tiled_candidate(g)) {
    at::Tensor part;
    TiledConv c{&x, &y, &w_taps, &bias, &part, act, {N, g.C, g.H, g.W, g.OH, g.OW, g.kH, g.sH, g.pH, g.pW}};
    c.xbn = xbn;
    if (run_tiled_conv<scalar_t, kStats>(c)) return part;
  }
  if (xbn != nullptr) return at::Tensor();
  const FwdPlan p = plan_fwd(g, channels_last, vec, kStats, row_reuse_enabled(), sizeof(scalar_t));
  ConvLaunch<scalar_t> L{};
  L.x = x.data_ptr<scalar_t>();
  L.y = y.data_ptr<scalar_t>();
  L.w = w_taps.data_ptr<acc_t>();
  L.bias = bias.defined() ? bias.data_ptr<acc_t>() : nullptr;
  L.act = act;
  L.block = p.block;
  L.chunks = p.chunks;
  L.R = p.R;
  L.tiles = p.tiles;
  at::Tensor part;
  if constexpr (kStats) {
    part = at::empty({3, L.tiles, g.C}, x.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    L.part_n = plane<acc_t>(part, 0);
    L.part_mean = plane<acc_t>(part, 1);
    L.part_m2 = plane<acc_t>(part, 2);
  }
  if (vec == kVec && kVec > 1) {
    launch_fwd_k<scalar_t, kVec, kStats>(L, g, p.K);
  } else {
    launch_fwd_k<scalar_t, 1, kStats>(L, g, p.K);
  }
  return part;
}

template <typename scalar_t, int VEC>
void launch_bwd_input(const at::Tensor& gy, at::Tensor& gx, const at::Tensor& w_taps, Geom g, int64_t N,
                      bool channels_last) {
  using acc_t = at::opmath_type<scalar_t>;
  set_items(g, N, g.H, g.W);
  const BwdInputPlan p = plan_bwd_input(g, channels_last, VEC);
  const auto stream = at::cuda::getCurrentCUDAStream();
  for (int64_t cy0 = 0; cy0 < p.chunks; cy0 += kMaxGridY) {
    const dim3 grid(static_cast<unsigned>(p.tiles), static_cast<unsigned>(std::min(kMaxGridY, p.chunks - cy0)));
    depthwise_conv2d_bwd_input_kernel<scalar_t, acc_t, VEC><<<grid, p.block, 0, stream>>>(
        gy.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(), w_taps.data_ptr<acc_t>(), g, static_cast<int>(p.R), cy0);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <typename scalar_t>
void run_bwd_input(const DepthwiseArgs& a, const at::Tensor& gy, at::Tensor& gx) {
  constexpr int kVec = 16 / sizeof(scalar_t);
  const bool vec = can_vectorize<scalar_t>(a.channels_last(), a.C, {&gy, &gx});
  const Geom fg = make_geom(a, a.input, gy);
  if (fg.sH == 1 && fg.sW == 1) {
    // grad_in = conv(grad_out, w rotated by 180 degrees, stride 1, padding (k-1)d - p, dilation d)
    // (rotated_geom, depthwise_kernels.cuh).
    run_conv<scalar_t, false>(gy, gx, taps_major(a.weight.flip({1, 2})), at::Tensor(), rotated_geom(fg), a.N,
                              a.channels_last(), Act::kIdentity);
  } else {
    const at::Tensor w = taps_major(a.weight);
    const Geom g = make_geom(a, gx, gy);
    if (vec && kVec > 1 && tiled_candidate(g)) {
      // grad_output -> grad_input: the tiled kernel reads gy (OH x OW) and writes gx (H x W).
      const TiledConv c{&gy, &gx, &w, nullptr, nullptr, Act::kIdentity,
                        {a.N, a.C, g.OH, g.OW, g.H, g.W, g.kH, g.sH, g.pH, g.pW}};
      if (run_tiled_bwd_input_s2<scalar_t>(c)) return;
    }
    if (vec && kVec > 1) {
      launch_bwd_input<scalar_t, kVec>(gy, gx, w, g, a.N, a.channels_last());
    } else {
      launch_bwd_input<scalar_t, 1>(gy, gx, w, g, a.N, a.channels_last());
    }
  }
}

// Tiled (tiled_candidate): grad_input and the weight gradient's stage-1 partials of a stride-1 "same"
// conv (channels_last, 16-byte vectors) in one pass, reading grad_output once; returns false
// (nothing launched) when the fused kernel does not apply.
template <typename scalar_t>
bool try_bwd_fused(const DepthwiseArgs& a, const at::Tensor& gy, at::Tensor& gx, bool want_bias, at::Tensor& part) {
  const Geom g = make_geom(a, a.input, gy);
  if (!tiled_candidate(g) || !can_vectorize<scalar_t>(a.channels_last(), a.C, {&a.input, &gy, &gx})) return false;
  const at::Tensor w = taps_major(a.weight);
  const TiledBwd c{&a.input, &gy, &gx, &w, &part, want_bias, {a.N, a.C, g.H, g.W, g.OH, g.OW, g.kH, g.sH, g.pH, g.pW}};
  return run_tiled_bwd_fused_s1<scalar_t>(c);
}

// grad_weight / grad_bias: stage 1 (unless `part`, the (tiles, rows, C) partials, comes from the
// fused backward already), then the fixed-order sum over the tiles.
template <typename scalar_t, int VEC>
void launch_bwd_weight(const DepthwiseArgs& a, const at::Tensor& gy, at::Tensor* grad_weight, at::Tensor* grad_bias,
                       at::Tensor part = at::Tensor()) {
  using acc_t = at::opmath_type<scalar_t>;
  const Geom g = make_geom(a, a.input, gy);
  const BwdWeightPlan p = plan_bwd_weight(a, VEC, grad_weight != nullptr, grad_bias != nullptr);
  const auto stream = at::cuda::getCurrentCUDAStream();
  if (!part.defined() && VEC > 1 && grad_weight != nullptr && tiled_candidate(g)) {
    const TiledWgrad c{&a.input, &gy, &part, grad_bias != nullptr,
                       {a.N, a.C, g.H, g.W, g.OH, g.OW, g.kH, g.sH, g.pH, g.pW}};
    run_tiled_bwd_weight<scalar_t>(c);  // leaves part undefined when it does not apply
  }
  if (!part.defined()) {
    part = at::empty({p.tiles, p.rows, a.C}, a.input.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    for (int64_t cy0 = 0; cy0 < p.cchunks; cy0 += kMaxGridY) {
      const dim3 grid(static_cast<unsigned>(p.tiles * p.chunks),
                      static_cast<unsigned>(std::min(kMaxGridY, p.cchunks - cy0)));
      depthwise_conv2d_bwd_weight_kernel<scalar_t, acc_t, VEC><<<grid, p.block, 0, stream>>>(
          gy.data_ptr<scalar_t>(), a.input.data_ptr<scalar_t>(), g, make_divider(a.OH * a.OW), make_divider(a.OW),
          p.pixels, p.tile_px, p.chunks, p.taps, p.do_bias, p.rows, cy0, part.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  }
  depthwise_conv2d_bwd_weight_finish_kernel<scalar_t, acc_t>
      <<<static_cast<unsigned>(p.fblocks), dim3(32, kFinishLanes), 0, stream>>>(
          part.data_ptr<acc_t>(), part.size(0), p.rows, p.taps, a.C, static_cast<unsigned>(ceil_div(a.C, 32)),
          grad_weight != nullptr ? grad_weight->data_ptr<scalar_t>() : nullptr,
          grad_bias != nullptr ? grad_bias->data_ptr<scalar_t>() : nullptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}


at::Tensor depthwise_conv2d_cuda(const at::Tensor& input, const at::Tensor& weight,
                                 const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation, c10::string_view activation) {
  check_cuda(input);
  const c10::cuda::CUDAGuard guard(input.device());
  const DepthwiseArgs a = prepare_depthwise(input, weight, bias, stride, padding, dilation, std::string(activation));
  check_geometry(a);
  at::Tensor out = at::empty(a.output_sizes(), input.options().memory_format(a.format));
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "depthwise_conv2d_cuda", [&] {
    const at::Tensor b = a.bias.defined() ? fresh_copy(a.bias) : at::Tensor();
    run_conv<scalar_t, false>(a.input, out, taps_major(a.weight), b, make_geom(a, a.input, out), a.N,
                              a.channels_last(), a.act);
  });
  return out;
}

using Stats = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// depthwise_conv2d_stats on prepared operands: (output, batch mean, biased variance). With xbn, the
// conv of act(BatchNorm(a.input)) (run_conv's input BatchNorm): nullopt, nothing launched, where
// the tiled statistics kernel does not apply.
std::optional<Stats> conv_stats(const DepthwiseArgs& a, const InputBn* xbn = nullptr) {
  const auto acc_opts = a.input.options().dtype(acc_type_for(a.input.scalar_type()));
  at::Tensor out = at::empty(a.output_sizes(), a.input.options().memory_format(a.format));
  at::Tensor mean = at::empty({a.C}, acc_opts);  // the finish kernel writes every channel
  at::Tensor var = at::empty({a.C}, acc_opts);
  if (out.numel() == 0) return Stats{out, mean.zero_(), var.zero_()};
  bool launched = false;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.input.scalar_type(), "depthwise_conv2d_stats_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor part = run_conv<scalar_t, true>(a.input, out, taps_major(a.weight), at::Tensor(),
                                                     make_geom(a, a.input, out), a.N, a.channels_last(),
                                                     Act::kIdentity, xbn);
    if (!part.defined()) return;
    launch_stats_finish<acc_t>(plane<acc_t>(part, 0), plane<acc_t>(part, 1), plane<acc_t>(part, 2),
                               part.size(1), a.C, mean.data_ptr<acc_t>(), var.data_ptr<acc_t>(),
                               at::cuda::getCurrentCUDAStream(), "depthwise_conv2d_stats");
    launched = true;
  });
  if (!launched) return std::nullopt;
  return Stats{out, mean, var};
}

Stats depthwise_conv2d_stats_cuda(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation) {
  check_cuda(input);
  const c10::cuda::CUDAGuard guard(input.device());
  const DepthwiseArgs a = prepare_depthwise(input, weight, c10::nullopt, stride, padding, dilation);
  check_stats_count(a);
  check_geometry(a);
  return *conv_stats(a);
}

// The backward on prepared operands (a, and gy dense in a.format with the conv output's sizes),
// for depthwise_conv2d_backward_cuda and the training backward's unfused sequence below.
std::tuple<at::Tensor, at::Tensor, at::Tensor> depthwise_backward(const DepthwiseArgs& a, const at::Tensor& gy,
                                                                  std::array<bool, 3> output_mask) {
  const at::Tensor& input = a.input;
  const auto empty = [&] { return at::empty({0}, input.options()); };  // one per masked output: no aliasing
  at::Tensor grad_input = output_mask[0] ? at::empty(input.sizes(), input.options().memory_format(a.format)) : empty();
  at::Tensor grad_weight = output_mask[1] ? at::empty({a.C, 1, a.kH, a.kW}, input.options()) : empty();
  at::Tensor grad_bias = output_mask[2] ? at::empty({a.C}, input.options()) : empty();
  const bool reduce = (output_mask[1] || output_mask[2]) && a.C > 0;
  if (reduce && a.N * a.OH * a.OW == 0) {  // an empty batch: the sums are zero
    if (output_mask[1]) grad_weight.zero_();
    if (output_mask[2]) grad_bias.zero_();
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "depthwise_conv2d_backward_cuda", [&] {
    constexpr int kVec = 16 / sizeof(scalar_t);
    at::Tensor part;  // the weight gradient's partials, when the fused backward computed them
    const bool fused = output_mask[0] && output_mask[1] && grad_input.numel() > 0 &&
                       try_bwd_fused<scalar_t>(a, gy, grad_input, output_mask[2], part);
    if (output_mask[0] && grad_input.numel() > 0 && !fused) run_bwd_input<scalar_t>(a, gy, grad_input);
    if (reduce && a.N * a.OH * a.OW > 0) {
      at::Tensor* gw = output_mask[1] ? &grad_weight : nullptr;
      at::Tensor* gb = output_mask[2] ? &grad_bias : nullptr;
      if (kVec > 1 && can_vectorize<scalar_t>(a.channels_last(), a.C, {&a.input, &gy})) {
        launch_bwd_weight<scalar_t, kVec>(a, gy, gw, gb, part);
      } else {
        launch_bwd_weight<scalar_t, 1>(a, gy, gw, gb, part);
      }
    }
  });
  return {grad_input, grad_weight, grad_bias};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> depthwise_conv2d_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, std::array<bool, 3> output_mask) {
  check_cuda(input);
  const c10::cuda::CUDAGuard guard(input.device());
  const DepthwiseArgs a = prepare_depthwise(input, weight, c10::nullopt, stride, padding, dilation);
  const at::Tensor gy = prepare_depthwise_grad_output(grad_output, a, input);
  check_geometry(a);
  return depthwise_backward(a, gy, output_mask);
}

// An op of the registry called through the dispatcher (its CUDA kernel, from another file).
template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

using Tensors4 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using OptionalTensor = c10::optional<at::Tensor>;

// batch_norm_act_eval: the BatchNorm apply pass (here on batch statistics).
at::Tensor bn_apply(const at::Tensor& input, const at::Tensor& mean, const at::Tensor& var, const OptionalTensor& weight,
                    const OptionalTensor& bias, double eps, const std::string& activation) {
  static const auto op = find_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                            const OptionalTensor&, const OptionalTensor&, double, c10::string_view)>(
      "mobilenet_kernels::batch_norm_act_eval");
  return op.call(input, mean, var, weight, bias, eps, activation);
}

// The BatchNorm before a conv, for the tiled kernels (TiledInputBn): its batch statistics and
// parameters in the accumulation dtype, kept alive here.
struct InputBnOperands {
  at::Tensor mean, var, weight, bias;
  InputBn bn;
  InputBnOperands(const at::Tensor& input, const at::Tensor& mean_, const at::Tensor& var_,
                  const OptionalTensor& weight_, const OptionalTensor& bias_, double eps, Act act) {
    const auto acc = acc_type_for(input.scalar_type());
    mean = mean_.to(acc).contiguous();
    var = var_.to(acc).contiguous();
    if (weight_.has_value()) weight = weight_->to(acc).contiguous();
    if (bias_.has_value()) bias = bias_->to(acc).contiguous();
    bn = {&mean, &var, weight.defined() ? &weight : nullptr, bias.defined() ? &bias : nullptr, eps, act};
  }
};

// Whether the training backward below fuses BatchNorm's grad_input into the conv's backward (and
// pointwise_depthwise_bn_act_train applies its expand BatchNorm where the depthwise kernels stage
// their input): yes, unless MK_DW_BN_FUSED=0, which runs the unfused sequence, to time the two
// against each other. Read at every call (a getenv, next to a dozen launches), as the Triton twin
// reads it, so that one benchmark process can time both
// (mobilenet_kernels/benchmarking/depthwise_conv2d.py).
bool bn_dx_fused() { return !env_is("MK_DW_BN_FUSED", "0"); }

// Whether pointwise_depthwise_bn_act_train's depthwise kernels apply the expand BatchNorm where
// they stage z1 (TiledInputBn): yes, unless MK_DW_INPUT_BN=0, which writes y1 with the apply pass
// (recomputed in the backward) and runs the per-layer depthwise op on it. The backward applies it
// only inside fused_train_backward, so it also needs bn_dx_fused(). Read at every call, as above.
bool input_bn_fused() { return !env_is("MK_DW_INPUT_BN", "0"); }

// The fused dw conv + BatchNorm + activation training backward on prepared operands (a, gy and z
// dense in a.format): BatchNorm's reduction (cuda::batch_norm_act_train_backward_sums: the two
// sums and the grad_input pass's coefficients), then, where the tiled backward kernels apply
// (channels_last with 16-byte vectors, k3/k5, stride 1 "same" or stride 2, both gradients asked
// for), the conv's backward with BatchNorm's grad_input computed where grad_output is staged or
// loaded (TiledBnDx): that tensor is neither written nor read back, 2 of the 8 passes over the
// conv output's size of the unfused sequence. With xbn, a.input is the input of the BatchNorm
// before the conv, applied where the kernels stage it (TiledInputBn). nullopt (nothing launched)
// where the tiled kernels do not apply.
std::optional<Tensors4> fused_train_backward(const DepthwiseArgs& a, const at::Tensor& gy, const at::Tensor& z,
                                             const OptionalTensor& weight, const OptionalTensor& bias,
                                             const at::Tensor& mean, const at::Tensor& var, double eps,
                                             const std::string& activation, const InputBn* xbn) {
  if (a.N * a.OH * a.OW == 0) return std::nullopt;
  std::optional<Tensors4> result;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.input.scalar_type(), "depthwise_fused_train_backward", [&] {
    constexpr int kVec = 16 / sizeof(scalar_t);
    at::Tensor grad_input = at::empty(a.input.sizes(), a.input.options().memory_format(a.format));
    const Geom g = make_geom(a, a.input, gy);
    if (!tiled_candidate(g) || !can_vectorize<scalar_t>(a.channels_last(), a.C, {&a.input, &gy, &z, &grad_input})) {
      return;
    }
    const at::Tensor w = taps_major(a.weight);
    at::Tensor part, table;
    const Act act = parse_activation(activation);
    const TiledShape shape{a.N, a.C, g.H, g.W, g.OH, g.OW, g.kH, g.sH, g.pH, g.pW};
    // Stride 1: grad_input and the weight gradient in one kernel. Stride 2: the parity-split
    // grad_input (grad_output -> grad_input) and the weight gradient, each with BatchNorm's z.
    const TiledBwd bwd_s1{&a.input, &gy, &grad_input, &w, &part, false, shape, &z, &table, act, xbn};
    const TiledConv dgrad{&gy, &grad_input, &w, nullptr, nullptr, Act::kIdentity,
                          {a.N, a.C, g.OH, g.OW, g.H, g.W, g.kH, g.sH, g.pH, g.pW}, &z, &table, act};
    const TiledWgrad wgrad{&a.input, &gy, &part, false, shape, &z, &table, act, xbn};
    TiledPlan plan{};
    const bool s1 = plan_tiled_bwd_fused_s1<scalar_t>(bwd_s1, plan);
    if (!s1 && !(plan_tiled_bwd_input_s2<scalar_t>(dgrad, plan) && plan_tiled_bwd_weight<scalar_t>(wgrad, plan))) {
      return;
    }
    auto [sum_g_xhat, sum_g, coefficients] =
        batch_norm_act_train_backward_sums(gy, z, weight, bias, mean, var, eps, activation);
    table = coefficients;
    const bool launched = s1 ? run_tiled_bwd_fused_s1<scalar_t>(bwd_s1)
                             : run_tiled_bwd_input_s2<scalar_t>(dgrad) && run_tiled_bwd_weight<scalar_t>(wgrad);
    TORCH_INTERNAL_ASSERT(launched, "a planned fused backward kernel did not launch");
    at::Tensor grad_weight = at::empty({a.C, 1, a.kH, a.kW}, a.input.options());
    launch_bwd_weight<scalar_t, kVec>(a, gy, &grad_weight, nullptr, part);  // stage 2 only: part is defined
    result = Tensors4{grad_input, grad_weight, sum_g_xhat, sum_g};
  });
  return result;
}

// The dw conv + BatchNorm + activation training backward: fused_train_backward where it applies,
// else the unfused sequence, batch_norm_act_train_backward then the conv's backward. Both round
// BatchNorm's grad_input to the input's dtype where the conv reads it: the same values.
Tensors4 depthwise_conv2d_bn_act_train_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& conv_weight, const OptionalTensor& weight,
    const OptionalTensor& bias, const at::Tensor& conv_out, const at::Tensor& mean, const at::Tensor& var,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, double eps,
    c10::string_view activation_view, std::array<bool, 2> output_mask) {
  check_cuda(input);
  const c10::cuda::CUDAGuard guard(input.device());
  const std::string activation(activation_view);
  const DepthwiseArgs a = prepare_depthwise(input, conv_weight, c10::nullopt, stride, padding, dilation);
  check_per_channel(weight, "weight", input);
  check_per_channel(bias, "bias", input);
  check_conv_bn_backward_operands(input, a.output_sizes(), grad_output, conv_out, weight, bias, mean, var, eps,
                                  activation);
  check_geometry(a);
  const at::Tensor gy = grad_output.contiguous(a.format);
  const at::Tensor z = conv_out.contiguous(a.format);
  if (bn_dx_fused() && output_mask[0] && output_mask[1]) {
    if (auto fused = fused_train_backward(a, gy, z, weight, bias, mean, var, eps, activation, nullptr)) return *fused;
  }
  static const auto bn_backward =
      find_op<std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                             const OptionalTensor&, const OptionalTensor&,
                                                             const at::Tensor&, const at::Tensor&, double,
                                                             c10::string_view)>(
          "mobilenet_kernels::batch_norm_act_train_backward");
  const auto [grad_z, sum_g_xhat, sum_g] = bn_backward.call(gy, z, weight, bias, mean, var, eps, activation);
  const auto [grad_input, grad_weight, unused] =
      depthwise_backward(a, grad_z.contiguous(a.format), {output_mask[0], output_mask[1], false});
  return {grad_input, grad_weight, sum_g_xhat, sum_g};
}

// ---------------------------------------------------------------------------------------------
// pointwise_depthwise_bn_act_train: an inverted residual's expand + depthwise layers in training,
// act(BN2(dw(act(BN1(expand(x)))))) (schema and semantics: csrc/library.cpp). BN1's output y1 is
// computed where the depthwise kernels stage their input (TiledInputBn), never written: in the
// forward by the tiled statistics kernel, in the backward by the tiled weight gradient (stride 2)
// or the stride-1 fused backward, as the apply pass would store it. Where those kernels do not
// apply (or with MK_DW_INPUT_BN=0, and in the backward MK_DW_BN_FUSED=0), the apply pass writes y1
// and the per-layer ops run.

using Tensors7 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

Tensors7 pointwise_depthwise_bn_act_train_cuda(const at::Tensor& input, const at::Tensor& expand_weight,
                                               const OptionalTensor& expand_bn_weight,
                                               const OptionalTensor& expand_bn_bias, const at::Tensor& dw_weight,
                                               const OptionalTensor& dw_bn_weight, const OptionalTensor& dw_bn_bias,
                                               at::IntArrayRef stride, at::IntArrayRef padding,
                                               at::IntArrayRef dilation, double eps, c10::string_view activation_view) {
  check_cuda(input);
  const c10::cuda::CUDAGuard guard(input.device());
  const std::string activation(activation_view);
  check_pointwise_depthwise(input, expand_weight, expand_bn_weight, expand_bn_bias, dw_weight, dw_bn_weight,
                            dw_bn_bias, stride, padding, dilation, eps, activation);
  static const auto pointwise_stats =
      find_op<Stats(const at::Tensor&, const at::Tensor&)>("mobilenet_kernels::pointwise_conv2d_stats");
  const auto [z1, mean1, var1] = pointwise_stats.call(input, expand_weight);
  const DepthwiseArgs a = prepare_depthwise(z1, dw_weight, c10::nullopt, stride, padding, dilation, "identity",
                                            "dw_weight");
  check_geometry(a);
  std::optional<Stats> dw;
  if (input_bn_fused()) {
    const InputBnOperands xbn(z1, mean1, var1, expand_bn_weight, expand_bn_bias, eps, parse_activation(activation));
    dw = conv_stats(a, &xbn.bn);
  }
  if (!dw) {
    const at::Tensor y1 = bn_apply(z1, mean1, var1, expand_bn_weight, expand_bn_bias, eps, activation);
    dw = depthwise_conv2d_stats_cuda(y1, dw_weight, stride, padding, dilation);
  }
  const auto& [z2, mean2, var2] = *dw;
  const at::Tensor out = bn_apply(z2, mean2, var2, dw_bn_weight, dw_bn_bias, eps, activation);
  return {out, z1, mean1, var1, z2, mean2, var2};
}

Tensors7 pointwise_depthwise_bn_act_train_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& expand_weight,
    const OptionalTensor& expand_bn_weight, const OptionalTensor& expand_bn_bias, const at::Tensor& expand_out,
    const at::Tensor& expand_mean, const at::Tensor& expand_var, const at::Tensor& dw_weight,
    const OptionalTensor& dw_bn_weight, const OptionalTensor& dw_bn_bias, const at::Tensor& dw_out,
    const at::Tensor& dw_mean, const at::Tensor& dw_var, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, double eps, c10::string_view activation_view, std::array<bool, 3> output_mask) {
  check_cuda(input);
  const c10::cuda::CUDAGuard guard(input.device());
  const std::string activation(activation_view);
  check_pointwise_depthwise_backward(grad_output, input, expand_weight, expand_bn_weight, expand_bn_bias, expand_out,
                                    expand_mean, expand_var, dw_weight, dw_bn_weight, dw_bn_bias, dw_out, dw_mean,
                                    dw_var, stride, padding, dilation, eps, activation);
  const DepthwiseArgs a = prepare_depthwise(expand_out, dw_weight, c10::nullopt, stride, padding, dilation,
                                            "identity", "dw_weight");
  check_geometry(a);
  const at::Tensor gy = grad_output.contiguous(a.format);
  const at::Tensor z2 = dw_out.contiguous(a.format);
  // The depthwise layer: grad_y1 (its grad_input, BN1's grad_output) and its weight's gradient.
  std::optional<Tensors4> dw;
  if (bn_dx_fused() && input_bn_fused() && output_mask[2]) {
    const InputBnOperands xbn(expand_out, expand_mean, expand_var, expand_bn_weight, expand_bn_bias, eps,
                              parse_activation(activation));
    dw = fused_train_backward(a, gy, z2, dw_bn_weight, dw_bn_bias, dw_mean, dw_var, eps, activation, &xbn.bn);
  }
  if (!dw) {
    const at::Tensor y1 = bn_apply(expand_out, expand_mean, expand_var, expand_bn_weight, expand_bn_bias, eps,
                                   activation);
    dw = depthwise_conv2d_bn_act_train_backward_cuda(gy, y1, dw_weight, dw_bn_weight, dw_bn_bias, z2, dw_mean, dw_var,
                                                     stride, padding, dilation, eps, activation, {true, output_mask[2]});
  }
  const auto& [grad_y1, grad_dw_weight, dw_sum_gxhat, dw_sum_g] = *dw;
  static const auto pointwise_backward =
      find_op<Tensors4(const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptionalTensor&,
                       const OptionalTensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, double,
                       c10::string_view, std::array<bool, 2>)>("mobilenet_kernels::pointwise_conv2d_bn_act_train_backward");
  const auto [grad_input, grad_expand_weight, expand_sum_gxhat, expand_sum_g] =
      pointwise_backward.call(grad_y1, input, expand_weight, expand_bn_weight, expand_bn_bias, expand_out, expand_mean,
                              expand_var, eps, activation, {output_mask[0], output_mask[1]});
  return {grad_input, grad_expand_weight, expand_sum_gxhat, expand_sum_g, grad_dw_weight, dw_sum_gxhat, dw_sum_g};
}

}  // namespace

TORCH_LIBRARY_IMPL(mobilenet_kernels, CUDA, m) {
  m.impl("depthwise_conv2d", &depthwise_conv2d_cuda);
  m.impl("depthwise_conv2d_bn_act_train_backward", &depthwise_conv2d_bn_act_train_backward_cuda);
  m.impl("depthwise_conv2d_backward", &depthwise_conv2d_backward_cuda);
  m.impl("depthwise_conv2d_stats", &depthwise_conv2d_stats_cuda);
  m.impl("pointwise_depthwise_bn_act_train", &pointwise_depthwise_bn_act_train_cuda);
  m.impl("pointwise_depthwise_bn_act_train_backward", &pointwise_depthwise_bn_act_train_backward_cuda);
}

}  // namespace mobilenet_kernels
