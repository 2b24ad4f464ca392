// depthwise_conv2d, C++ CPU kernels: grad_weight and grad_bias, every dtype. Kernels in
// depthwise_conv2d_kernels.h; ops in depthwise_conv2d.cpp.
#include "depthwise_conv2d_kernels.h"

namespace mobilenet_kernels {

void cpu::depthwise_grad_weight_and_bias(const DepthwiseArgs& a, const at::Tensor& go, at::Tensor& gw,
                                         at::Tensor& gb) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, go.scalar_type(), "depthwise_conv2d_grad_weight_cpu",
                                  [&] { grad_weight_and_bias<scalar_t>(a, go, gw, gb); });
}

}  // namespace mobilenet_kernels
