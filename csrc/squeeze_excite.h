// squeeze_excite: argument checks and preparation shared by the CPU and CUDA implementations.
// The Python twin of these checks is mobilenet_kernels/ops/squeeze_excite.py::check_squeeze_excite_args.
//
// Forward, per image n (all in the accumulation dtype acc_t: float, or double for double input):
//   pooled[c] = mean_hw x[n, c]                       (pass 1: a fixed-order reduction over HW)
//   z1 = W1 pooled + b1 (S),  h = act(z1)
//   z2 = W2 h + b2 (C),       s = scale_act(z2)        (the excite step, O(S*C) per image)
//   y[n, c, hw] = x[n, c, hw] * s[c], rounded once     (pass 2)
// Backward, per image n, g = grad_output:
//   ds[c] = sum_hw g * x                              (pass 1)
//   dz2 = ds * scale_act'(z2),  dz1 = (W2^T dz2) * act'(z1),  dpooled = W1^T dz1
//   grad_x = g * s[c] + dpooled[c] / HW                (pass 2)
//   grad_W2 = sum_n dz2 h^T, grad_b2 = sum_n dz2, grad_W1 = sum_n dz1 pooled^T, grad_b1 = sum_n dz1,
//   summed over n in a fixed order.
#pragma once

#include "batch_norm_act.h"  // acc_type_for
#include "mk_common.h"

namespace mobilenet_kernels {

struct SqueezeExciteArgs {
  at::Tensor input;   // (N, C, H, W), dense in `format`
  at::MemoryFormat format;
  ChannelLayout layout;  // N, C, HW
  int64_t S;             // squeeze channels
  at::Tensor w1;         // (S, C), acc dtype, contiguous
  at::Tensor b1;         // (S,)
  at::Tensor w2;         // (C, S)
  at::Tensor b2;         // (C,)
  Act act, scale_act;
  bool channels_last() const { return format == at::MemoryFormat::ChannelsLast; }
};

// A parameter: floating, on the input's device, in the input's dtype or its accumulation dtype.
inline void check_se_param(const at::Tensor& t, const char* name, const at::Tensor& input,
                           std::initializer_list<int64_t> shape) {
  check_floating(t, name);
  TORCH_CHECK_VALUE(t.sizes() == at::IntArrayRef(shape), name, ": expected shape ", at::IntArrayRef(shape),
                    ", got ", t.sizes());
  const auto acc = acc_type_for(input.scalar_type());
  TORCH_CHECK_TYPE(t.scalar_type() == input.scalar_type() || t.scalar_type() == acc, name, ": expected dtype ",
                   input.scalar_type(), acc == input.scalar_type() ? "" : " (the input's) or ",
                   acc == input.scalar_type() ? "" : c10::toString(acc), ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == input.device(), name, ": expected device ", input.device(), ", got ", t.device());
}

// Every check runs before anything touches a device, so a bad call modifies nothing.
inline SqueezeExciteArgs prepare_squeeze_excite(const at::Tensor& input, const at::Tensor& fc1_weight,
                                                const at::Tensor& fc1_bias, const at::Tensor& fc2_weight,
                                                const at::Tensor& fc2_bias, const std::string& activation,
                                                const std::string& scale_activation) {
  check_floating(input, "input");
  TORCH_CHECK_VALUE(input.dim() == 4, "input: expected a 4-D tensor (N, C, H, W), got shape ", input.sizes());
  TORCH_CHECK_VALUE(input.size(1) >= 1 && input.size(2) >= 1 && input.size(3) >= 1,
                    "input: expected at least one channel and a non-empty spatial size, got ", input.sizes());
  const int64_t C = input.size(1);
  TORCH_CHECK_VALUE(fc1_weight.dim() == 4 && fc1_weight.size(1) == C && fc1_weight.size(2) == 1 &&
                        fc1_weight.size(3) == 1 && fc1_weight.size(0) >= 1,
                    "fc1_weight: expected shape (S, ", C, ", 1, 1) for an input of ", C, " channels, got ",
                    fc1_weight.sizes());
  const int64_t S = fc1_weight.size(0);
  check_se_param(fc1_weight, "fc1_weight", input, {S, C, 1, 1});
  check_se_param(fc1_bias, "fc1_bias", input, {S});
  check_se_param(fc2_weight, "fc2_weight", input, {C, S, 1, 1});
  check_se_param(fc2_bias, "fc2_bias", input, {C});
  SqueezeExciteArgs a;
  a.act = parse_activation(activation, "activation");
  a.scale_act = parse_activation(scale_activation, "scale_activation");
  a.format = output_memory_format(input);
  a.input = input.contiguous(a.format);
  a.layout = channel_layout(a.input, a.format);
  a.S = S;
  const auto acc = acc_type_for(input.scalar_type());
  a.w1 = fc1_weight.reshape({S, C}).to(acc).contiguous();
  a.b1 = fc1_bias.to(acc).contiguous();
  a.w2 = fc2_weight.reshape({C, S}).to(acc).contiguous();
  a.b2 = fc2_bias.to(acc).contiguous();
  return a;
}

// The backward's grad_output (the input's shape and dtype, dense in its format) and pooled ((N, C),
// the accumulation dtype, contiguous).
inline at::Tensor prepare_se_grad_output(const at::Tensor& grad_output, const SqueezeExciteArgs& a,
                                         const at::Tensor& input) {
  return dense_grad_output(grad_output, input.sizes(), input, a.format);
}

inline at::Tensor prepare_se_pooled(const at::Tensor& pooled, const SqueezeExciteArgs& a) {
  const auto acc = acc_type_for(a.input.scalar_type());
  TORCH_CHECK_VALUE(pooled.dim() == 2 && pooled.size(0) == a.layout.N && pooled.size(1) == a.layout.C,
                    "pooled: expected shape (", a.layout.N, ", ", a.layout.C, "), got ", pooled.sizes());
  TORCH_CHECK_TYPE(pooled.scalar_type() == acc, "pooled: expected dtype ", acc, ", got ", pooled.scalar_type());
  TORCH_CHECK_VALUE(pooled.device() == a.input.device(), "pooled: expected device ", a.input.device(), ", got ",
                    pooled.device());
  return pooled.contiguous();
}

namespace cpu {
// The CPU excite step alone, for the whole-block kernel's squeeze-excite (csrc/cpu/inverted_residual*):
// scale (N, C) = scale_act(W2 act(W1 pooled + b1) + b2) from pooled (N, C), both dense in the
// accumulation dtype; a.layout's N and C, a.S, the parameters and the activations are read, not
// the input. Defined in csrc/cpu/squeeze_excite.cpp (the op's own excite GEMMs).
void squeeze_excite_scale(const SqueezeExciteArgs& a, const at::Tensor& pooled, at::Tensor& scale);
}  // namespace cpu

}  // namespace mobilenet_kernels
