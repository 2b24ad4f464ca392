// inverted_residual_eval, C++ CPU kernel: the op and its registration. The kernel, and how it works,
// is in inverted_residual_kernels.h; it is instantiated one unit per activation
// (inverted_residual_<act>.cpp), compiled side by side.
#include "inverted_residual_kernels.h"

namespace mobilenet_kernels {
namespace {

at::Tensor inverted_residual_eval_cpu(const at::Tensor& input, const c10::optional<at::Tensor>& expand_weight,
                                      const c10::optional<at::Tensor>& expand_bias, const at::Tensor& dw_weight,
                                      const at::Tensor& dw_bias, const at::Tensor& project_weight,
                                      const at::Tensor& project_bias, int64_t stride, int64_t dilation,
                                      c10::string_view activation, bool residual,
                                      const c10::optional<at::Tensor>& se_fc1_weight,
                                      const c10::optional<at::Tensor>& se_fc1_bias,
                                      const c10::optional<at::Tensor>& se_fc2_weight,
                                      const c10::optional<at::Tensor>& se_fc2_bias, c10::string_view se_activation,
                                      c10::string_view se_scale_activation) {
  const auto a = prepare_inverted_residual(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight,
                                           project_bias, stride, dilation, std::string(activation), residual,
                                           se_fc1_weight, se_fc1_bias, se_fc2_weight, se_fc2_bias,
                                           std::string(se_activation), std::string(se_scale_activation));
  at::Tensor out = at::empty(a.output_sizes(), input.options().memory_format(a.format));
  if (out.numel() == 0) return out;
  MK_DISPATCH_ACTIVATION(a.act, [&] { cpu::inverted_residual_forward<kAct>(a, out); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mobilenet_kernels, CPU, m) { m.impl("inverted_residual_eval", &inverted_residual_eval_cpu); }

}  // namespace mobilenet_kernels
