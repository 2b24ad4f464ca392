// batch_norm_act: argument checks and preparation shared by the CPU and CUDA implementations.
#pragma once

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

inline BackwardBuffers prepare_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                        const BatchNormEvalArgs& a) {
  TORCH_CHECK_VALUE(grad_output.sizes() == input.sizes(), "grad_output: expected shape ", input.sizes(), ", got ",
                    grad_output.sizes());
  TORCH_CHECK_TYPE(grad_output.scalar_type() == input.scalar_type(), "grad_output: expected dtype ",
                   input.scalar_type(), ", got ", grad_output.scalar_type());
  const auto acc_opts = input.options().dtype(acc_type_for(input.scalar_type()));
  const auto sums = [&] {
    at::Tensor t = at::empty({a.layout.C}, acc_opts);
    return input.numel() == 0 ? t.zero_() : t;
  };
  return {grad_output.contiguous(a.format), at::empty(input.sizes(), input.options().memory_format(a.format)), sums(),
          sums()};
}

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
