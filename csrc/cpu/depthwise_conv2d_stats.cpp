// depthwise_conv2d, C++ CPU kernels: the forward with per-channel statistics (for a BatchNorm in
// training), every dtype. Kernels in depthwise_conv2d_kernels.h; ops in depthwise_conv2d.cpp.
#include "depthwise_conv2d_kernels.h"

namespace mobilenet_kernels {

void cpu::depthwise_forward_stats(const DepthwiseArgs& a, at::Tensor& out, at::Tensor& mean, at::Tensor& var) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "depthwise_conv2d_stats_cpu", [&] {
    forward<scalar_t, Act::kIdentity, true>(a, out, &mean, &var);
  });
}

}  // namespace mobilenet_kernels
