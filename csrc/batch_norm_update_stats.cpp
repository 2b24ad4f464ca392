// batch_norm_update_stats: the running-statistics update of BatchNorm in training, in place.
// Device-generic (a handful of per-channel ATen ops): one CompositeExplicitAutograd kernel serves
// the CPU (and any device); CUDA tensors get one kernel launch instead (csrc/cuda/batch_norm_act.cu:
// a training step has one update per BatchNorm layer). Every check runs before the first in-place
// write (check_update_stats), so a failed call leaves the running statistics untouched. ATen's
// formula: running = momentum * batch + (1 - momentum) * running (rounded in another order than
// ATen's fused kernels here: within an ulp).
#include <torch/library.h>

#include "batch_norm_act.h"

namespace mobilenet_kernels {

void update_stats_generic(at::Tensor& running_mean, at::Tensor& running_var, const at::Tensor& mean,
                          const at::Tensor& var, double unbias, double momentum) {
  if (running_mean.scalar_type() == mean.scalar_type() && running_var.scalar_type() == var.scalar_type()) {
    running_mean.mul_(1.0 - momentum).add_(mean, momentum);  // in place: two ops per statistic
    running_var.mul_(1.0 - momentum).add_(var, momentum * unbias);
    return;
  }
  // Running statistics in another dtype than the batch's (e.g. float16 buffers): computed in the
  // batch statistics' dtype, then stored.
  running_mean.copy_(mean * momentum + running_mean.to(mean.scalar_type()) * (1.0 - momentum));
  running_var.copy_(var * (momentum * unbias) + running_var.to(var.scalar_type()) * (1.0 - momentum));
}

namespace {

void batch_norm_update_stats(at::Tensor& running_mean, at::Tensor& running_var, const at::Tensor& mean,
                             const at::Tensor& var, int64_t count, double momentum) {
  const double unbias = check_update_stats(running_mean, running_var, mean, var, count);
  update_stats_generic(running_mean, running_var, mean, var, unbias, momentum);
}

}  // namespace

TORCH_LIBRARY_IMPL(mobilenet_kernels, CompositeExplicitAutograd, m) {
  m.impl("batch_norm_update_stats", &batch_norm_update_stats);
}

}  // namespace mobilenet_kernels
