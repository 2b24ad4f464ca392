// depthwise_conv2d, C++ CPU kernels: the three ops and their registration. The kernels, and how
// they work, are in depthwise_conv2d_kernels.h; they are instantiated in their own units (the
// forward per activation, the statistics forward, grad_input, grad_weight), compiled side by side.
#include "depthwise_conv2d_kernels.h"

namespace mobilenet_kernels {

namespace {

at::Tensor depthwise_conv2d_cpu(const at::Tensor& input, const at::Tensor& weight,
                                const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                at::IntArrayRef padding, at::IntArrayRef dilation, c10::string_view activation) {
  const auto a = prepare_depthwise(input, weight, bias, stride, padding, dilation, std::string(activation));
  at::Tensor out = at::empty(a.output_sizes(), input.options().memory_format(a.format));
  if (out.numel() == 0) return out;
  MK_DISPATCH_ACTIVATION(a.act, [&] { cpu::depthwise_forward<kAct>(a, out); });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> depthwise_conv2d_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, std::array<bool, 3> output_mask) {
  const auto a = prepare_depthwise(input, weight, c10::nullopt, stride, padding, dilation);
  const at::Tensor go = prepare_depthwise_grad_output(grad_output, a, input);
  const auto acc_opts = input.options().dtype(acc_type_for(input.scalar_type()));
  at::Tensor grad_in = at::empty({0}, input.options());
  at::Tensor grad_w = at::empty({0}, input.options());
  at::Tensor grad_b = at::empty({0}, input.options());
  if (output_mask[0]) grad_in = at::empty(input.sizes(), input.options().memory_format(a.format));
  const bool want_wb = output_mask[1] || output_mask[2];
  at::Tensor gw_acc = want_wb ? at::zeros({a.C, a.kH * a.kW}, acc_opts) : at::Tensor();
  at::Tensor gb_acc = want_wb ? at::zeros({a.C}, acc_opts) : at::Tensor();
  if (go.numel() > 0) {
    if (output_mask[0]) cpu::depthwise_grad_input(a, go, grad_in);
    if (want_wb) cpu::depthwise_grad_weight_and_bias(a, go, gw_acc, gb_acc);
  }
  if (output_mask[1]) grad_w = gw_acc.to(weight.scalar_type()).view({a.C, 1, a.kH, a.kW});
  if (output_mask[2]) grad_b = gb_acc.to(input.scalar_type());
  return {grad_in, grad_w, grad_b};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> depthwise_conv2d_stats_cpu(const at::Tensor& input,
                                                                          const at::Tensor& weight,
                                                                          at::IntArrayRef stride,
                                                                          at::IntArrayRef padding,
                                                                          at::IntArrayRef dilation) {
  const auto a = prepare_depthwise(input, weight, c10::nullopt, stride, padding, dilation);
  check_stats_count(a);
  const auto acc_opts = input.options().dtype(acc_type_for(input.scalar_type()));
  at::Tensor out = at::empty(a.output_sizes(), input.options().memory_format(a.format));
  at::Tensor mean = at::zeros({a.C}, acc_opts);
  at::Tensor var = at::zeros({a.C}, acc_opts);
  if (out.numel() == 0) return {out, mean, var};
  cpu::depthwise_forward_stats(a, out, mean, var);
  return {out, mean, var};
}

}  // namespace

TORCH_LIBRARY_IMPL(mobilenet_kernels, CPU, m) {
  m.impl("depthwise_conv2d", &depthwise_conv2d_cpu);
  m.impl("depthwise_conv2d_backward", &depthwise_conv2d_backward_cpu);
  m.impl("depthwise_conv2d_stats", &depthwise_conv2d_stats_cpu);
}

}  // namespace mobilenet_kernels
