// depthwise_conv2d: argument checks and geometry shared by the CPU and CUDA implementations.
// The Python twin of these checks is mobilenet_kernels/ops/depthwise_conv2d.py::check_depthwise_args.
#pragma once

#include <ATen/core/List.h>

#include "batch_norm_act.h"  // acc_type_for
#include "mk_common.h"

namespace mobilenet_kernels {

// Everything a depthwise kernel needs: dense operands and the conv geometry. Sizes are int64.
struct DepthwiseArgs {
  at::Tensor input;   // (N, C, H, W), dense in `format`
  at::Tensor weight;  // (C, kH, kW) in the accumulation dtype, contiguous
  at::Tensor bias;    // (C,) in the accumulation dtype, or undefined
  at::MemoryFormat format;
  int64_t N, C, H, W, OH, OW, kH, kW, sH, sW, pH, pW, dH, dW;
  Act act = Act::kIdentity;
  bool channels_last() const { return format == at::MemoryFormat::ChannelsLast; }
  std::vector<int64_t> output_sizes() const { return {N, C, OH, OW}; }
};

inline void check_pair(at::IntArrayRef v, const char* name, int64_t min_value) {
  TORCH_CHECK_VALUE(v.size() == 2, name, ": expected 2 values, got ", v.size());
  for (const int64_t x : v) {
    TORCH_CHECK_VALUE(x >= min_value, name, ": expected values >= ", min_value, ", got ", v);
  }
}

// Every check runs before anything touches a device, so a bad call modifies nothing.
// The checks and the geometry (every field but the tensors): no copy, nothing launched.
// weight_name: the weight's argument name in the errors (the caller's own, e.g. "dw_weight").
inline DepthwiseArgs check_depthwise(const at::Tensor& input, const at::Tensor& weight,
                                     const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                     at::IntArrayRef padding, at::IntArrayRef dilation,
                                     const std::string& activation = "identity",
                                     const char* weight_name = "weight") {
  check_floating(input, "input");
  TORCH_CHECK_VALUE(input.dim() == 4, "input: expected a 4-D tensor (N, C, H, W), got shape ", input.sizes());
  check_floating(weight, weight_name);
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(0) == input.size(1) && weight.size(1) == 1,
                    weight_name, ": expected shape (", input.size(1), ", 1, kH, kW) for a depthwise conv of ", input.size(1),
                    " channels, got ", weight.sizes());
  TORCH_CHECK_VALUE(weight.size(2) >= 1 && weight.size(3) >= 1, weight_name, ": expected a non-empty kernel, got ",
                    weight.sizes());
  TORCH_CHECK_TYPE(weight.scalar_type() == input.scalar_type(), weight_name, ": expected dtype ", input.scalar_type(),
                   " (the input's), got ", weight.scalar_type());
  TORCH_CHECK_VALUE(weight.device() == input.device(), weight_name, ": expected device ", input.device(), ", got ",
                    weight.device());
  if (bias.has_value()) {
    check_per_channel(bias, "bias", input);
    TORCH_CHECK_TYPE(bias->scalar_type() == input.scalar_type(), "bias: expected dtype ", input.scalar_type(),
                     " (the input's), got ", bias->scalar_type());
  }
  check_pair(stride, "stride", 1);
  check_pair(padding, "padding", 0);
  check_pair(dilation, "dilation", 1);
  DepthwiseArgs a;
  a.act = parse_activation(activation);
  a.N = input.size(0);
  a.C = input.size(1);
  a.H = input.size(2);
  a.W = input.size(3);
  a.kH = weight.size(2);
  a.kW = weight.size(3);
  a.sH = stride[0];
  a.sW = stride[1];
  a.pH = padding[0];
  a.pW = padding[1];
  a.dH = dilation[0];
  a.dW = dilation[1];
  const int64_t eff_h = a.dH * (a.kH - 1) + 1, eff_w = a.dW * (a.kW - 1) + 1;
  TORCH_CHECK_VALUE(a.H + 2 * a.pH >= eff_h && a.W + 2 * a.pW >= eff_w, "input: spatial size (", a.H, ", ", a.W,
                    ") plus padding (", a.pH, ", ", a.pW, ") is smaller than the dilated kernel (", eff_h, ", ",
                    eff_w, ")");
  a.OH = (a.H + 2 * a.pH - eff_h) / a.sH + 1;
  a.OW = (a.W + 2 * a.pW - eff_w) / a.sW + 1;
  a.format = output_memory_format(input);
  return a;
}

// check_depthwise, then the operands as the kernels take them.
inline DepthwiseArgs prepare_depthwise(const at::Tensor& input, const at::Tensor& weight,
                                       const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                       at::IntArrayRef padding, at::IntArrayRef dilation,
                                       const std::string& activation = "identity",
                                       const char* weight_name = "weight") {
  DepthwiseArgs a = check_depthwise(input, weight, bias, stride, padding, dilation, activation, weight_name);
  a.input = input.contiguous(a.format);
  const auto acc = acc_type_for(input.scalar_type());
  a.weight = weight.reshape({a.C, a.kH, a.kW}).to(acc).contiguous();
  if (bias.has_value()) a.bias = bias->to(acc).contiguous();
  return a;
}

// The backward's grad_output: shape (N, C, OH, OW) and the input's dtype, dense in the input's format.
inline at::Tensor prepare_depthwise_grad_output(const at::Tensor& grad_output, const DepthwiseArgs& a,
                                                const at::Tensor& input) {
  return dense_grad_output(grad_output, at::IntArrayRef(a.output_sizes()), input, a.format);
}

// Training needs more than one value per channel, as nn.BatchNorm2d does.
inline void check_stats_count(const DepthwiseArgs& a) {
  const int64_t count = a.N * a.OH * a.OW;
  TORCH_CHECK_VALUE(a.N == 0 || count > 1, "input: Expected more than 1 value per channel when training, got ",
                    "a conv output of size ", at::IntArrayRef(a.output_sizes()));
}

}  // namespace mobilenet_kernels
