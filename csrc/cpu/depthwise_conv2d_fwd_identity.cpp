// depthwise_conv2d, C++ CPU kernels: the forward with identity, every dtype (one unit per activation,
// compiled side by side). Kernels in depthwise_conv2d_kernels.h; ops in depthwise_conv2d.cpp.
#include "depthwise_conv2d_kernels.h"

namespace mobilenet_kernels {

template <>
void cpu::depthwise_forward<Act::kIdentity>(const DepthwiseArgs& a, at::Tensor& out) {
  forward_every_dtype<Act::kIdentity>(a, out);
}

}  // namespace mobilenet_kernels
