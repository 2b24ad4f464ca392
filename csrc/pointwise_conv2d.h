// pointwise_conv2d: argument checks and geometry shared by the CPU and CUDA implementations.
// The Python twin of these checks is mobilenet_kernels/ops/pointwise_conv2d.py::check_pointwise_args.
//
// What is fused: a 1x1 conv (stride 1, one group) is a GEMM over the N*H*W pixels,
//   out[p, co] = sum_ci x[p, ci] * w[co, ci], followed by an epilogue on each output value:
//   y = act(out + bias[co]) + residual[p, co] (forward), or, for the stats variant (no bias, no
//   activation, no residual), per-channel centred partials (count, mean, M2) of the values as stored,
//   merged in a fixed order by Chan's formula into the batch mean and biased variance.
// Layouts: input NCHW or channels_last (any other strides are made dense first, in the format
//   output_memory_format picks); the output, grad_input and the residual are dense in that format.
//   channels_last: x is a row-major (N*H*W, Cin) matrix and out (N*H*W, Cout) = x . W^T;
//   NCHW: per image out[n] (Cout, H*W) = W . x[n] (Cin, H*W).
// Accumulation: float32 for float32/float16/bfloat16, float64 for float64 (the GEMM and the
//   epilogue); the statistics' merge in float64. Where each backend rounds: see its file header.
// Limits: only 1x1 kernels with stride 1, no padding, no groups (a strided 1x1 conv is a
//   subsampling followed by this op); at least one output channel; weight, bias and residual must
//   share the input's dtype.
#pragma once

#include <vector>

#include "batch_norm_act.h"  // acc_type_for
#include "mk_common.h"

namespace mobilenet_kernels {

// Everything a pointwise kernel needs: dense operands and the sizes. Sizes are int64.
struct PointwiseArgs {
  at::Tensor input;     // (N, Cin, H, W), dense in `format`
  at::Tensor weight;    // (Cout, Cin) in the input's dtype, contiguous (a view of the caller's when it can be)
  at::Tensor bias;      // (Cout,) in the accumulation dtype, contiguous, or undefined
  at::Tensor residual;  // (N, Cout, H, W) in the input's dtype, dense in `format`, or undefined
  at::MemoryFormat format;
  int64_t N = 0, Cin = 0, Cout = 0, H = 0, W = 0;
  Act act = Act::kIdentity;
  bool channels_last() const { return format == at::MemoryFormat::ChannelsLast; }
  int64_t HW() const { return H * W; }
  int64_t pixels() const { return N * H * W; }
  std::vector<int64_t> output_sizes() const { return {N, Cout, H, W}; }
};

// `t` absent or a (Cout,) float tensor on input's device: a per-output-channel operand.
inline void check_per_output_channel(const c10::optional<at::Tensor>& t, const char* name, const at::Tensor& input,
                                     int64_t Cout) {
  if (!t.has_value()) return;
  check_floating(*t, name);
  TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == Cout, name, ": expected shape (", Cout,
                    ",) to match the output channels, got ", t->sizes());
  TORCH_CHECK_VALUE(t->device() == input.device(), name, ": expected device ", input.device(), ", got ",
                    t->device());
}

// Every check runs before anything touches a device, so a bad call modifies nothing.
// The checks and the sizes (every field but the tensors): no copy, nothing launched.
// weight_name: the weight's argument name in the errors (the caller's own, e.g. "expand_weight").
inline PointwiseArgs check_pointwise(const at::Tensor& input, const at::Tensor& weight,
                                     const c10::optional<at::Tensor>& bias,
                                     const c10::optional<at::Tensor>& residual,
                                     const std::string& activation = "identity",
                                     const char* weight_name = "weight") {
  check_floating(input, "input");
  TORCH_CHECK_VALUE(input.dim() == 4, "input: expected a 4-D tensor (N, C, H, W), got shape ", input.sizes());
  check_floating(weight, weight_name);
  const int64_t Cin = input.size(1);
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(1) == Cin && weight.size(2) == 1 && weight.size(3) == 1 &&
                        weight.size(0) >= 1,
                    weight_name, ": expected shape (Cout, ", Cin, ", 1, 1) for a 1x1 conv of ", Cin,
                    " input channels, got ", weight.sizes());
  TORCH_CHECK_TYPE(weight.scalar_type() == input.scalar_type(), weight_name, ": expected dtype ", input.scalar_type(),
                   " (the input's), got ", weight.scalar_type());
  TORCH_CHECK_VALUE(weight.device() == input.device(), weight_name, ": expected device ", input.device(), ", got ",
                    weight.device());
  const int64_t Cout = weight.size(0);
  if (bias.has_value()) {
    check_per_output_channel(bias, "bias", input, Cout);
    TORCH_CHECK_TYPE(bias->scalar_type() == input.scalar_type(), "bias: expected dtype ", input.scalar_type(),
                     " (the input's), got ", bias->scalar_type());
  }
  const std::vector<int64_t> out_sizes{input.size(0), Cout, input.size(2), input.size(3)};
  if (residual.has_value()) {
    check_floating(*residual, "residual");
    TORCH_CHECK_VALUE(residual->sizes() == at::IntArrayRef(out_sizes), "residual: expected shape ",
                      at::IntArrayRef(out_sizes), " (the output's), got ", residual->sizes());
    TORCH_CHECK_TYPE(residual->scalar_type() == input.scalar_type(), "residual: expected dtype ",
                     input.scalar_type(), " (the input's), got ", residual->scalar_type());
    TORCH_CHECK_VALUE(residual->device() == input.device(), "residual: expected device ", input.device(), ", got ",
                      residual->device());
  }
  PointwiseArgs a;
  a.act = parse_activation(activation);
  a.N = input.size(0);
  a.Cin = Cin;
  a.Cout = Cout;
  a.H = input.size(2);
  a.W = input.size(3);
  a.format = output_memory_format(input);
  return a;
}

// check_pointwise, then the operands as the kernels take them.
inline PointwiseArgs prepare_pointwise(const at::Tensor& input, const at::Tensor& weight,
                                       const c10::optional<at::Tensor>& bias,
                                       const c10::optional<at::Tensor>& residual,
                                       const std::string& activation = "identity") {
  PointwiseArgs a = check_pointwise(input, weight, bias, residual, activation);
  const int64_t Cout = a.Cout, Cin = a.Cin;
  a.input = input.contiguous(a.format);
  a.weight = weight.reshape({Cout, Cin}).contiguous();
  if (bias.has_value()) a.bias = bias->to(acc_type_for(input.scalar_type())).contiguous();
  if (residual.has_value()) a.residual = residual->contiguous(a.format);
  return a;
}

// The backward's grad_output: shape (N, Cout, H, W) and the input's dtype, dense in the input's format.
inline at::Tensor prepare_pointwise_grad_output(const at::Tensor& grad_output, const PointwiseArgs& a,
                                                const at::Tensor& input) {
  return dense_grad_output(grad_output, at::IntArrayRef(a.output_sizes()), input, a.format);
}

// Training needs more than one value per channel, as nn.BatchNorm2d does (an empty batch passes,
// as in depthwise_conv2d_stats: its statistics come back as zeros).
inline void check_pointwise_stats_count(const PointwiseArgs& a) {
  TORCH_CHECK_VALUE(a.N == 0 || a.pixels() > 1, "input: Expected more than 1 value per channel when training, got ",
                    "a conv output of size ", at::IntArrayRef(a.output_sizes()));
}

}  // namespace mobilenet_kernels
