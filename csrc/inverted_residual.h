// inverted_residual_eval: argument checks and geometry shared by the C++ implementations.
// The Python twin of these checks is
// mobilenet_kernels/ops/inverted_residual.py::check_inverted_residual_args (same argument names and
// exception types: TORCH_CHECK_VALUE -> ValueError, TORCH_CHECK_TYPE -> TypeError).
//
// The block, eval mode, every BatchNorm folded into the convs:
//   y = project(act(dw(act(expand(x) + expand_bias)) + dw_bias)) + project_bias [+ x if residual]
// expand_weight (Chid, Cin, 1, 1) or None (no expand conv: Chid = Cin), dw_weight (Chid, 1, k, k)
// with odd k, stride s, dilation d and "same" padding (k - 1) / 2 * d, project_weight
// (Cout, Chid, 1, 1); every weight and bias in the input's dtype; residual needs s = 1, Cout = Cin.
// With a squeeze-excite (V3's blocks), between the depthwise conv and the projection, on the
// depthwise output D (N, Chid, OH, OW):
//   D' = D * scale_act(W2 act(W1 mean_hw(D) + b1) + b2)   per (image, hidden channel)
// se_fc1_weight (S, Chid, 1, 1), se_fc1_bias (S,), se_fc2_weight (Chid, S, 1, 1), se_fc2_bias
// (Chid,), in the input's dtype or its accumulation dtype (squeeze_excite.h's rules).
#pragma once

#include <vector>

#include "batch_norm_act.h"  // acc_type_for
#include "mk_common.h"
#include "squeeze_excite.h"  // check_se_param

namespace mobilenet_kernels {

// Everything a whole-block kernel needs: dense operands in the accumulation dtype (float64 for
// float64, else float32) except the input, and the sizes (int64).
struct InvertedResidualArgs {
  at::Tensor input;           // (N, Cin, H, W) in its own dtype, dense in `format`
  at::Tensor expand_weight;   // (Chid, Cin) accumulation dtype, contiguous; undefined without expand
  at::Tensor expand_bias;     // (Chid,) accumulation dtype; undefined without expand
  at::Tensor dw_weight;       // (Chid, k * k) accumulation dtype, contiguous
  at::Tensor dw_bias;         // (Chid,)
  at::Tensor project_weight;  // (Cout, Chid) accumulation dtype, contiguous
  at::Tensor project_bias;    // (Cout,)
  at::Tensor se_w1, se_b1;    // (S, Chid), (S,) accumulation dtype, contiguous; undefined without SE
  at::Tensor se_w2, se_b2;    // (Chid, S), (Chid,)
  at::MemoryFormat format;
  int64_t N = 0, Cin = 0, Chid = 0, Cout = 0, H = 0, W = 0, OH = 0, OW = 0;
  int64_t k = 1, stride = 1, dilation = 1, pad = 0;
  int64_t S = 0;  // squeeze channels
  Act act = Act::kIdentity, se_act = Act::kRelu, se_scale_act = Act::kHardsigmoid;
  bool residual = false;
  bool has_expand() const { return expand_weight.defined(); }
  bool has_se() const { return se_w1.defined(); }
  bool channels_last() const { return format == at::MemoryFormat::ChannelsLast; }
  std::vector<int64_t> output_sizes() const { return {N, Cout, OH, OW}; }
};

// A weight or bias of the block: floating, the given shape, the input's dtype and device.
inline void check_inverted_residual_param(const at::Tensor& t, const char* name, at::IntArrayRef shape,
                                          const at::Tensor& input) {
  check_floating(t, name);
  TORCH_CHECK_VALUE(t.sizes() == shape, name, ": expected shape ", shape, ", got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == input.scalar_type(), name, ": expected dtype ", input.scalar_type(),
                   " (the input's), got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == input.device(), name, ": expected device ", input.device(), ", got ", t.device());
}

// Output size of the "same"-padded depthwise conv along one axis: floor((L + 2p - d(k-1) - 1) / s) + 1,
// floored as Python does (L = 0 gives 0).
inline int64_t inverted_residual_out_size(int64_t L, int64_t k, int64_t s, int64_t d, int64_t p) {
  const int64_t num = L + 2 * p - d * (k - 1) - 1;
  return num >= 0 ? num / s + 1 : -((-num + s - 1) / s) + 1;
}

// Every check runs before any work, so a bad call computes nothing.
inline InvertedResidualArgs prepare_inverted_residual(
    const at::Tensor& input, const c10::optional<at::Tensor>& expand_weight,
    const c10::optional<at::Tensor>& expand_bias, const at::Tensor& dw_weight, const at::Tensor& dw_bias,
    const at::Tensor& project_weight, const at::Tensor& project_bias, int64_t stride, int64_t dilation,
    const std::string& activation, bool residual, const c10::optional<at::Tensor>& se_fc1_weight = c10::nullopt,
    const c10::optional<at::Tensor>& se_fc1_bias = c10::nullopt,
    const c10::optional<at::Tensor>& se_fc2_weight = c10::nullopt,
    const c10::optional<at::Tensor>& se_fc2_bias = c10::nullopt, const std::string& se_activation = "relu",
    const std::string& se_scale_activation = "hardsigmoid") {
  check_floating(input, "input");
  TORCH_CHECK_VALUE(input.dim() == 4, "input: expected a 4-D tensor (N, C, H, W), got shape ", input.sizes());
  const int64_t Cin = input.size(1);
  TORCH_CHECK_VALUE(Cin >= 1, "input: expected at least one channel, got shape ", input.sizes());
  TORCH_CHECK_VALUE(expand_weight.has_value() == expand_bias.has_value(),
                    "expand_weight, expand_bias: expected both or neither");
  int64_t Chid = Cin;
  if (expand_weight.has_value()) {
    const at::Tensor& we = *expand_weight;
    TORCH_CHECK_VALUE(we.dim() == 4 && we.size(1) == Cin && we.size(2) == 1 && we.size(3) == 1,
                      "expand_weight: expected shape (Chid, ", Cin, ", 1, 1), got ", we.sizes());
    Chid = we.size(0);
    check_inverted_residual_param(we, "expand_weight", {Chid, Cin, 1, 1}, input);
    check_inverted_residual_param(*expand_bias, "expand_bias", {Chid}, input);
  }
  TORCH_CHECK_VALUE(dw_weight.dim() == 4 && dw_weight.size(0) == Chid && dw_weight.size(1) == 1,
                    "dw_weight: expected shape (", Chid, ", 1, k, k), got ", dw_weight.sizes());
  const int64_t k = dw_weight.size(2);
  TORCH_CHECK_VALUE(dw_weight.size(3) == k && k % 2 == 1,
                    "dw_weight: expected a square kernel of odd size, got ", dw_weight.sizes());
  check_inverted_residual_param(dw_weight, "dw_weight", {Chid, 1, k, k}, input);
  check_inverted_residual_param(dw_bias, "dw_bias", {Chid}, input);
  TORCH_CHECK_VALUE(project_weight.dim() == 4 && project_weight.size(1) == Chid && project_weight.size(2) == 1 &&
                        project_weight.size(3) == 1,
                    "project_weight: expected shape (Cout, ", Chid, ", 1, 1), got ", project_weight.sizes());
  const int64_t Cout = project_weight.size(0);
  check_inverted_residual_param(project_weight, "project_weight", {Cout, Chid, 1, 1}, input);
  check_inverted_residual_param(project_bias, "project_bias", {Cout}, input);
  TORCH_CHECK_VALUE(stride >= 1, "stride: expected an int >= 1, got ", stride);
  TORCH_CHECK_VALUE(dilation >= 1, "dilation: expected an int >= 1, got ", dilation);
  InvertedResidualArgs a;
  a.act = parse_activation(activation);
  const int given = se_fc1_weight.has_value() + se_fc1_bias.has_value() + se_fc2_weight.has_value() +
                    se_fc2_bias.has_value();
  TORCH_CHECK_VALUE(given == 0 || given == 4,
                    "se_fc1_weight, se_fc1_bias, se_fc2_weight, se_fc2_bias: expected all four or none");
  int64_t S = 0;
  if (given == 4) {
    const at::Tensor& w1 = *se_fc1_weight;
    TORCH_CHECK_VALUE(w1.dim() == 4 && w1.size(1) == Chid && w1.size(2) == 1 && w1.size(3) == 1 && w1.size(0) >= 1,
                      "se_fc1_weight: expected shape (S, ", Chid, ", 1, 1) for ", Chid, " hidden channels, got ",
                      w1.sizes());
    S = w1.size(0);
    check_se_param(w1, "se_fc1_weight", input, {S, Chid, 1, 1});
    check_se_param(*se_fc1_bias, "se_fc1_bias", input, {S});
    check_se_param(*se_fc2_weight, "se_fc2_weight", input, {Chid, S, 1, 1});
    check_se_param(*se_fc2_bias, "se_fc2_bias", input, {Chid});
    a.se_act = parse_activation(se_activation, "se_activation");
    a.se_scale_act = parse_activation(se_scale_activation, "se_scale_activation");
  }
  TORCH_CHECK_VALUE(!residual || (stride == 1 && Cout == Cin),
                    "residual: needs stride 1 and as many output as input channels, got stride ", stride, ", ", Cin,
                    " -> ", Cout, " channels");
  a.N = input.size(0);
  a.Cin = Cin;
  a.Chid = Chid;
  a.Cout = Cout;
  a.H = input.size(2);
  a.W = input.size(3);
  a.k = k;
  a.stride = stride;
  a.dilation = dilation;
  a.pad = (k - 1) / 2 * dilation;
  a.OH = inverted_residual_out_size(a.H, k, stride, dilation, a.pad);
  a.OW = inverted_residual_out_size(a.W, k, stride, dilation, a.pad);
  a.residual = residual;
  a.format = output_memory_format(input);
  a.input = input.contiguous(a.format);
  const auto acc = acc_type_for(input.scalar_type());
  if (expand_weight.has_value()) {
    a.expand_weight = expand_weight->reshape({Chid, Cin}).to(acc).contiguous();
    a.expand_bias = expand_bias->to(acc).contiguous();
  }
  a.dw_weight = dw_weight.reshape({Chid, k * k}).to(acc).contiguous();
  a.dw_bias = dw_bias.to(acc).contiguous();
  a.project_weight = project_weight.reshape({Cout, Chid}).to(acc).contiguous();
  a.project_bias = project_bias.to(acc).contiguous();
  if (given == 4) {
    a.S = S;
    a.se_w1 = se_fc1_weight->reshape({S, Chid}).to(acc).contiguous();
    a.se_b1 = se_fc1_bias->to(acc).contiguous();
    a.se_w2 = se_fc2_weight->reshape({Chid, S}).to(acc).contiguous();
    a.se_b2 = se_fc2_bias->to(acc).contiguous();
  }
  return a;
}

}  // namespace mobilenet_kernels
