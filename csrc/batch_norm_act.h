// batch_norm_act: argument checks and preparation shared by the CPU and CUDA implementations.
#pragma once

#include <utility>

#include "mk_common.h"

namespace mobilenet_kernels {

// Per-channel parameters converted once to the accumulation dtype (float, or double for double
// input), so the kernels read one dtype whatever mix of dtypes the caller passed (e.g. bf16
// activations with fp32 BatchNorm parameters under autocast).
struct BatchNormEvalArgs {
  at::Tensor input;  // dense in `format`
  at::MemoryFormat format;
  ChannelLayout layout;
  at::Tensor mean, var, weight, bias;  // (C,), acc dtype, contiguous; weight/bias may be undefined
  Act act;
  double eps;
};

inline at::ScalarType acc_type_for(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// Every check runs before anything touches a device, so a bad call modifies nothing.
inline void check_batch_norm_eval(const at::Tensor& input, const at::Tensor& running_mean,
                                  const at::Tensor& running_var, const c10::optional<at::Tensor>& weight,
                                  const c10::optional<at::Tensor>& bias, double eps, const std::string& activation) {
  check_floating(input, "input");
  TORCH_CHECK_VALUE(input.dim() >= 2, "input: expected a tensor of shape (N, C, ...), got ", input.sizes());
  check_per_channel(running_mean, "running_mean", input);
  check_per_channel(running_var, "running_var", input);
  check_per_channel(weight, "weight", input);
  check_per_channel(bias, "bias", input);
  TORCH_CHECK_VALUE(eps >= 0, "eps: expected a non-negative value, got ", eps);
  parse_activation(activation);
}

inline BatchNormEvalArgs prepare_batch_norm_eval(const at::Tensor& input, const at::Tensor& running_mean,
                                                 const at::Tensor& running_var,
                                                 const c10::optional<at::Tensor>& weight,
                                                 const c10::optional<at::Tensor>& bias, double eps,
                                                 const std::string& activation) {
  check_batch_norm_eval(input, running_mean, running_var, weight, bias, eps, activation);
  BatchNormEvalArgs a;
  a.act = parse_activation(activation);
  a.eps = eps;
  a.format = output_memory_format(input);
  a.input = input.contiguous(a.format);
  a.layout = channel_layout(a.input, a.format);
  const auto acc = acc_type_for(input.scalar_type());
  auto prep = [&](const at::Tensor& t) { return t.to(acc).contiguous(); };
  a.mean = prep(running_mean);
  a.var = prep(running_var);
  if (weight.has_value()) a.weight = prep(*weight);
  if (bias.has_value()) a.bias = prep(*bias);
  return a;
}

// Training mode: batch statistics. Checked like eval, plus PyTorch's "more than 1 value per channel".
inline void check_batch_norm_train(const at::Tensor& input, const c10::optional<at::Tensor>& weight,
                                   const c10::optional<at::Tensor>& bias, double eps, const std::string& activation) {
  check_floating(input, "input");
  TORCH_CHECK_VALUE(input.dim() >= 2, "input: expected a tensor of shape (N, C, ...), got ", input.sizes());
  check_per_channel(weight, "weight", input);
  check_per_channel(bias, "bias", input);
  TORCH_CHECK_VALUE(eps >= 0, "eps: expected a non-negative value, got ", eps);
  parse_activation(activation);
  TORCH_CHECK_VALUE(input.numel() == 0 || input.numel() / input.size(1) > 1,
                    "input: Expected more than 1 value per channel when training, got input size ", input.sizes());
}

// batch_norm_update_stats' checks, all before the first in-place write (a failed call leaves the
// running statistics untouched); returns the variance's unbiasing factor count / (count - 1).
inline double check_update_stats(const at::Tensor& running_mean, const at::Tensor& running_var,
                                 const at::Tensor& mean, const at::Tensor& var, int64_t count) {
  check_floating(running_mean, "running_mean");
  check_floating(running_var, "running_var");
  TORCH_CHECK_VALUE(running_mean.sizes() == mean.sizes(), "running_mean: expected shape ", mean.sizes(), ", got ",
                    running_mean.sizes());
  TORCH_CHECK_VALUE(running_var.sizes() == var.sizes(), "running_var: expected shape ", var.sizes(), ", got ",
                    running_var.sizes());
  TORCH_CHECK_VALUE(mean.device() == running_mean.device(), "mean: expected device ", running_mean.device(),
                    " (running_mean's), got ", mean.device());
  TORCH_CHECK_VALUE(var.device() == running_var.device(), "var: expected device ", running_var.device(),
                    " (running_var's), got ", var.device());
  TORCH_CHECK_VALUE(count > 1, "count: expected more than 1 value per channel, got ", count);
  return static_cast<double>(count) / static_cast<double>(count - 1);
}

// The device-generic update (a few ATen ops; csrc/batch_norm_update_stats.cpp), after the checks.
void update_stats_generic(at::Tensor& running_mean, at::Tensor& running_var, const at::Tensor& mean,
                          const at::Tensor& var, double unbias, double momentum);

// The backward's operands: grad_output checked against input and made dense in input's format,
// grad_input allocated in that format, and the two per-channel sums (accumulation dtype): every
// reduction kernel stores each channel's sums (no accumulation into them), so they are zeroed only
// for an empty input, which launches none.
struct BackwardBuffers {
  at::Tensor grad_out, grad_in, sum_gxhat, sum_g;
};

// grad_in is left undefined without `with_grad_in` (a backward that does not write it).
inline BackwardBuffers prepare_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                        const BatchNormEvalArgs& a, bool with_grad_in = true) {
  at::Tensor grad_out = dense_grad_output(grad_output, input.sizes(), input, a.format);
  const auto acc_opts = input.options().dtype(acc_type_for(input.scalar_type()));
  const auto sums = [&] {
    at::Tensor t = at::empty({a.layout.C}, acc_opts);
    return input.numel() == 0 ? t.zero_() : t;
  };
  return {std::move(grad_out),
          with_grad_in ? at::empty(input.sizes(), input.options().memory_format(a.format)) : at::Tensor(), sums(),
          sums()};
}

// A saved operand of a backward the size of a conv's output: out_sizes, the input's dtype and device.
inline void check_output_sized(const at::Tensor& input, const at::Tensor& t, const char* name,
                               at::IntArrayRef out_sizes) {
  TORCH_CHECK_VALUE(t.sizes() == out_sizes, name, ": expected shape ", out_sizes, " (the conv's output), got ",
                    t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == input.scalar_type(), name, ": expected dtype ", input.scalar_type(),
                   " (the input's), got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == input.device(), name, ": expected device ", input.device(), ", got ", t.device());
}

// A per-channel operand of a conv's output (a BatchNorm's statistic or parameter): (C_out,),
// floating, on the input's device.
inline void check_output_channels(const at::Tensor& input, const at::Tensor& t, const char* name, int64_t C_out) {
  check_floating(t, name);
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == C_out, name, ": expected shape (", C_out,
                    ",) to match the conv's output channels, got ", t.sizes());
  TORCH_CHECK_VALUE(t.device() == input.device(), name, ": expected device ", input.device(), ", got ", t.device());
}

// The BatchNorm operands of a conv + BatchNorm + activation training backward
// ({depthwise,pointwise}_conv2d_bn_act_train_backward; the conv's own are checked by its check):
// grad_output and conv_out of the conv output's sizes, the input's dtype and device; weight and
// bias (optional), mean and var of shape (C_out,), floating, on its device; eps >= 0; a known
// activation.
inline void check_conv_bn_backward_operands(const at::Tensor& input, at::IntArrayRef out_sizes,
                                            const at::Tensor& grad_output, const at::Tensor& conv_out,
                                            const c10::optional<at::Tensor>& weight,
                                            const c10::optional<at::Tensor>& bias, const at::Tensor& mean,
                                            const at::Tensor& var, double eps, const std::string& activation) {
  check_output_sized(input, grad_output, "grad_output", out_sizes);
  check_output_sized(input, conv_out, "conv_out", out_sizes);
  if (weight.has_value()) check_output_channels(input, *weight, "weight", out_sizes[1]);
  if (bias.has_value()) check_output_channels(input, *bias, "bias", out_sizes[1]);
  check_output_channels(input, mean, "mean", out_sizes[1]);
  check_output_channels(input, var, "var", out_sizes[1]);
  TORCH_CHECK_VALUE(eps >= 0, "eps: expected a non-negative value, got ", eps);
  parse_activation(activation);
}

namespace cuda {
// batch_norm_act_train_backward without its grad_input pass (csrc/cuda/batch_norm_act.cu): the
// reduction's (sum(g * x_hat), sum(g)) and the (kTrainDxRows, C) table of the grad_input pass's
// per-channel coefficients (channel_passes.cuh: TrainDxCoef, written by the reduction's finish
// kernel), for a kernel that computes grad_input where it reads it (the fused depthwise backward).
// Checks as the op; non-empty CUDA tensors.
std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_act_train_backward_sums(
    const at::Tensor& grad_output, const at::Tensor& input, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, const at::Tensor& mean, const at::Tensor& var, double eps,
    const std::string& activation);
}  // namespace cuda

template <typename acc_t>
inline const acc_t* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<acc_t>() : nullptr;
}

// scale = weight / sqrt(var + eps), shift = bias - mean * scale: the eval-mode BatchNorm as one
// per-channel affine map, evaluated in the accumulation dtype.
template <typename acc_t>
C10_HOST_DEVICE C10_ALWAYS_INLINE void bn_scale_shift(const acc_t* mean, const acc_t* var, const acc_t* weight,
                                                      const acc_t* bias, acc_t eps, int64_t c, acc_t& rstd,
                                                      acc_t& scale, acc_t& shift) {
  rstd = acc_t(1) / ::sqrt(var[c] + eps);
  const acc_t w = weight ? weight[c] : acc_t(1);
  const acc_t b = bias ? bias[c] : acc_t(0);
  scale = w * rstd;
  shift = b - mean[c] * scale;
}

}  // namespace mobilenet_kernels
