// batch_norm_update_stats: the running-statistics update of BatchNorm in training, in place.
// Device-generic (a handful of per-channel ATen ops), so one CompositeExplicitAutograd kernel
// serves CPU and CUDA. Every check runs before the first in-place write, so a failed call leaves the
// running statistics untouched. ATen's formula: running = momentum * batch + (1 - momentum) * running
// (rounded in another order than ATen's fused kernels: within an ulp).
#include <torch/library.h>

#include "mk_common.h"

namespace mobilenet_kernels {
namespace {

void batch_norm_update_stats(at::Tensor& running_mean, at::Tensor& running_var, const at::Tensor& mean,
                             const at::Tensor& var, int64_t count, double momentum) {
  check_floating(running_mean, "running_mean");
  check_floating(running_var, "running_var");
  TORCH_CHECK_VALUE(running_mean.sizes() == mean.sizes(), "running_mean: expected shape ", mean.sizes(), ", got ",
                    running_mean.sizes());
  TORCH_CHECK_VALUE(running_var.sizes() == var.sizes(), "running_var: expected shape ", var.sizes(), ", got ",
                    running_var.sizes());
  TORCH_CHECK_VALUE(mean.device() == running_mean.device(), "mean: expected device ", running_mean.device(),
                    " (running_mean's), got ", mean.device());
  TORCH_CHECK_VALUE(var.device() == running_var.device(), "var: expected device ", running_var.device(),
                    " (running_var's), got ", var.device());
  TORCH_CHECK_VALUE(count > 1, "count: expected more than 1 value per channel, got ", count);
  const double unbias = static_cast<double>(count) / static_cast<double>(count - 1);
  if (running_mean.scalar_type() == mean.scalar_type() && running_var.scalar_type() == var.scalar_type()) {
    // In place: two launches per statistic on a GPU instead of four (a training step has one
    // update per BatchNorm layer).
    running_mean.mul_(1.0 - momentum).add_(mean, momentum);
    running_var.mul_(1.0 - momentum).add_(var, momentum * unbias);
    return;
  }
  // Running statistics in another dtype than the batch's (e.g. float16 buffers): computed in the
  // batch statistics' dtype, then stored.
  running_mean.copy_(mean * momentum + running_mean.to(mean.scalar_type()) * (1.0 - momentum));
  running_var.copy_(var * (momentum * unbias) + running_var.to(var.scalar_type()) * (1.0 - momentum));
}

}  // namespace

TORCH_LIBRARY_IMPL(mobilenet_kernels, CompositeExplicitAutograd, m) {
  m.impl("batch_norm_update_stats", &batch_norm_update_stats);
}

}  // namespace mobilenet_kernels
