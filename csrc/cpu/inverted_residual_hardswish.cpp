// inverted_residual_eval, C++ CPU kernel: the whole block with hardswish, every dtype (one unit per
// activation, compiled side by side). Kernel in inverted_residual_kernels.h; op in inverted_residual.cpp.
#include "inverted_residual_kernels.h"

namespace mobilenet_kernels {

template <>
void cpu::inverted_residual_forward<Act::kHardswish>(const InvertedResidualArgs& a, at::Tensor& out) {
  run_every_dtype<Act::kHardswish>(a, out);
}

}  // namespace mobilenet_kernels
