// pointwise_depthwise_bn_act_train (an inverted residual's expand + depthwise layers in training):
// the argument checks of its CUDA implementation (csrc/cuda/depthwise_conv2d.cu), each error naming
// the op's own argument. The Python twin, which the CPU and Triton implementations run, is
// mobilenet_kernels/ops/pointwise_depthwise.py::check_pointwise_depthwise_args.
#pragma once

#include <vector>

#include "batch_norm_act.h"
#include "depthwise_conv2d.h"
#include "pointwise_conv2d.h"

namespace mobilenet_kernels {

// The sizes of the expand conv's output (N, hidden, H, W) and of the depthwise conv's.
struct PointwiseDepthwiseSizes {
  std::vector<int64_t> hidden, out;
};

inline PointwiseDepthwiseSizes check_pointwise_depthwise(
    const at::Tensor& input, const at::Tensor& expand_weight, const c10::optional<at::Tensor>& expand_bn_weight,
    const c10::optional<at::Tensor>& expand_bn_bias, const at::Tensor& dw_weight,
    const c10::optional<at::Tensor>& dw_bn_weight, const c10::optional<at::Tensor>& dw_bn_bias, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, double eps, const std::string& activation) {
  const PointwiseArgs p = check_pointwise(input, expand_weight, c10::nullopt, c10::nullopt, activation, "expand_weight");
  TORCH_CHECK_VALUE(p.N == 0 || p.pixels() > 1,
                    "input: Expected more than 1 value per channel when training, got input of size ", input.sizes());
  check_per_output_channel(expand_bn_weight, "expand_bn_weight", input, p.Cout);
  check_per_output_channel(expand_bn_bias, "expand_bn_bias", input, p.Cout);
  TORCH_CHECK_VALUE(eps >= 0, "eps: expected a non-negative value, got ", eps);
  // The expand conv's output as the depthwise checks see it (one element, expanded: no memory).
  const at::Tensor z1 = at::empty({}, input.options()).expand({p.N, p.Cout, p.H, p.W});
  const DepthwiseArgs d = check_depthwise(z1, dw_weight, c10::nullopt, stride, padding, dilation, activation,
                                          "dw_weight");
  check_stats_count(d);
  check_per_channel(dw_bn_weight, "dw_bn_weight", z1);
  check_per_channel(dw_bn_bias, "dw_bn_bias", z1);
  return {{p.N, p.Cout, p.H, p.W}, d.output_sizes()};
}

// ... and of its backward: the arguments as above, and the saved operands by name.
inline void check_pointwise_depthwise_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& expand_weight,
    const c10::optional<at::Tensor>& expand_bn_weight, const c10::optional<at::Tensor>& expand_bn_bias,
    const at::Tensor& expand_out, const at::Tensor& expand_mean, const at::Tensor& expand_var,
    const at::Tensor& dw_weight, const c10::optional<at::Tensor>& dw_bn_weight,
    const c10::optional<at::Tensor>& dw_bn_bias, const at::Tensor& dw_out, const at::Tensor& dw_mean,
    const at::Tensor& dw_var, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, double eps,
    const std::string& activation) {
  const PointwiseDepthwiseSizes s =
      check_pointwise_depthwise(input, expand_weight, expand_bn_weight, expand_bn_bias, dw_weight, dw_bn_weight,
                                dw_bn_bias, stride, padding, dilation, eps, activation);
  const int64_t C = s.hidden[1];
  check_output_sized(input, expand_out, "expand_out", s.hidden);
  check_output_channels(input, expand_mean, "expand_mean", C);
  check_output_channels(input, expand_var, "expand_var", C);
  check_output_sized(input, grad_output, "grad_output", s.out);
  check_output_sized(input, dw_out, "dw_out", s.out);
  check_output_channels(input, dw_mean, "dw_mean", C);
  check_output_channels(input, dw_var, "dw_var", C);
}

}  // namespace mobilenet_kernels
