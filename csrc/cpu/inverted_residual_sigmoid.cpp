// inverted_residual_eval, C++ CPU kernel: the whole block with sigmoid, every dtype (one unit per
// activation, compiled side by side). Kernel in inverted_residual_kernels.h; op in inverted_residual.cpp.
#include "inverted_residual_kernels.h"

namespace mobilenet_kernels {

template <>
void cpu::inverted_residual_forward<Act::kSigmoid>(const InvertedResidualArgs& a, at::Tensor& out) {
  run_every_dtype<Act::kSigmoid>(a, out);
}

}  // namespace mobilenet_kernels
