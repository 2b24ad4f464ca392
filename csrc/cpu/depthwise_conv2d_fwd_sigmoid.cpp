// depthwise_conv2d, C++ CPU kernels: the forward with sigmoid, every dtype (one unit per activation,
// compiled side by side). Kernels in depthwise_conv2d_kernels.h; ops in depthwise_conv2d.cpp.
#include "depthwise_conv2d_kernels.h"

namespace mobilenet_kernels {

template <>
void cpu::depthwise_forward<Act::kSigmoid>(const DepthwiseArgs& a, at::Tensor& out) {
  forward_every_dtype<Act::kSigmoid>(a, out);
}

}  // namespace mobilenet_kernels
