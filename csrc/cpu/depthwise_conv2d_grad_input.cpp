// depthwise_conv2d, C++ CPU kernels: grad_input, every dtype. Kernels in
// depthwise_conv2d_kernels.h; ops in depthwise_conv2d.cpp.
#include "depthwise_conv2d_kernels.h"

namespace mobilenet_kernels {

void cpu::depthwise_grad_input(const DepthwiseArgs& a, const at::Tensor& go, at::Tensor& grad_in) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, go.scalar_type(), "depthwise_conv2d_grad_input_cpu",
                                  [&] { grad_input<scalar_t>(a, go, grad_in); });
}

}  // namespace mobilenet_kernels
