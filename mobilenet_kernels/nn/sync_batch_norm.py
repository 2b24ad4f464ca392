"""SyncBatchNormAct2d: BatchNormAct2d with batch statistics over every process of a group.

``nn.SyncBatchNorm.convert_sync_batchnorm`` must not be used on our models: it would replace each
BatchNormAct2d (a BatchNorm2d subclass that also applies the activation after it) by a plain
SyncBatchNorm and silently drop the activation. :func:`convert_sync_batchnorm` here is its
counterpart.

Training forward (``world_size > 1``):

1. per process, the per-channel count, mean and biased variance of the input, in float32
   (float64 for float64 input);
2. one ``all_reduce`` of a (world_size, 2C + 1) table in which each process fills its own row with
   (mean, M2 = count * var, count): every process then holds every process's statistics (the
   traffic of nn.SyncBatchNorm's all_gather), merged by Chan et al.'s pairwise formula
   ``M2 = sum(M2_r) + sum(n_r (mean_r - mean)^2)``, which stays exact where the
   ``E[x^2] - E[x]^2`` shortcut cancels (a channel with mean 1e4 and std 1). The all_reduce is
   differentiable: its backward all-reduces the gradient of the table, so each process's input
   gradient includes what every process's loss owes to the global statistics (an all_gather's
   backward would need a reduce_scatter, which gloo lacks);
3. the fused eval-mode op with the global mean and variance; its autograd returns the gradients
   of the mean and variance too, which flow back through step 2 and step 1;
4. the running statistics updated with the global mean and the unbiased global variance, as
   nn.SyncBatchNorm does (``momentum=None``: the cumulative average).

Eval mode, or a process group of one (or no initialised process group), runs BatchNormAct2d's
own forward.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .. import functional as MF
from ..ops._common import acc_dtype
from .batch_norm_act import BatchNormAct2d

__all__ = ["SyncBatchNormAct2d", "convert_sync_batchnorm"]


class _LocalStats(torch.autograd.Function):
    """Per-channel mean and biased variance of an (N, C, H, W) input, in the accumulation dtype.

    Differentiating ``torch.var_mean(input.float())`` directly would save the float32 copy: under
    AMP, a second copy of every BatchNorm input kept until the backward pass. This saves the input
    as it is (the apply op saves it anyway) and recomputes ``x - mean`` in the backward.
    """

    @staticmethod
    def forward(ctx, input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        var, mean = torch.var_mean(input.to(acc_dtype(input.dtype)), dim=(0, 2, 3), correction=0)
        ctx.save_for_backward(input, mean)
        return mean, var

    @staticmethod
    def backward(ctx, grad_mean: torch.Tensor, grad_var: torch.Tensor) -> torch.Tensor:
        input, mean = ctx.saved_tensors
        count = input.numel() // input.shape[1]
        # d mean / dx = 1 / count,  d var / dx = 2 (x - mean) / count
        scale = (2.0 / count) * grad_var.view(1, -1, 1, 1)
        shift = grad_mean.view(1, -1, 1, 1) / count - scale * mean.view(1, -1, 1, 1)
        return (input.to(mean.dtype) * scale + shift).to(input.dtype)


class _AllReduceSum(torch.autograd.Function):
    """``all_reduce(SUM)`` whose backward all-reduces the gradient: each process's input feeds the
    sum on every process, so its gradient is the sum of every process's output gradient. (What
    ``torch.distributed.nn.functional.all_reduce`` does; that API warns of its deprecation.)"""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def global_batch_stats(
    input: torch.Tensor, process_group: dist.ProcessGroup | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, biased variance, count) per channel of ``input`` over every process of
    ``process_group`` (default: the world), differentiable with respect to ``input``.

    A collective: every process of the group must call it, in the same order. count is a (C,)
    tensor (the same value in every entry), so nothing here waits for the device.
    """
    group = process_group if process_group is not None else dist.group.WORLD
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    C = input.shape[1]
    acc = acc_dtype(input.dtype)
    count = input.numel() // C
    if count > 0:
        mean, var = _LocalStats.apply(input)
    else:  # an empty shard adds nothing (var_mean would give NaN)
        mean = var = input.new_zeros(C, dtype=acc)
    row = torch.cat([mean, var * count, mean.new_full((1,), count)])  # (2C + 1,)
    own_row = torch.zeros(world, 1, dtype=acc, device=input.device)
    own_row[rank] = 1
    table = _AllReduceSum.apply(own_row * row, group)  # (world, 2C + 1): every process's row
    means, m2s, counts = table[:, :C], table[:, C : 2 * C], table[:, 2 * C :]
    n = counts.sum(0)
    mean = (counts * means).sum(0) / n
    m2 = m2s.sum(0) + (counts * (means - mean).square()).sum(0)
    return mean, m2 / n, n.expand(C)


class SyncBatchNormAct2d(BatchNormAct2d):
    """``activation(nn.SyncBatchNorm(x))`` for (N, C, H, W) input: BatchNormAct2d whose training-mode
    statistics span every process of ``process_group`` (default: the world).

    Same parameters, buffers and state_dict as BatchNormAct2d (and so as nn.BatchNorm2d). Build it
    with :func:`convert_sync_batchnorm`, or directly with nn.SyncBatchNorm's arguments plus
    ``activation`` and ``backend``.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: dist.ProcessGroup | None = None,
        device=None,
        dtype=None,
        *,
        activation: str = "identity",
        backend: str | None = None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype,
                         activation=activation, backend=backend)
        self.process_group = process_group

    def _syncs(self) -> bool:
        """Whether this call uses statistics over several processes (nn.SyncBatchNorm's rule)."""
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return False
        group = self.process_group if self.process_group is not None else dist.group.WORLD
        return dist.get_world_size(group) > 1

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self._syncs():
            return super().forward(input)
        self._check_input_dim(input)
        running_mean, running_var, _, momentum, counts = self._batch_norm_args()
        mean, var, count = global_batch_stats(input, self.process_group)
        self._count_batch(counts)
        if running_mean is not None and running_var is not None:
            with torch.no_grad():
                unbiased = var * count / (count - 1)
                running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
                running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
        return MF.batch_norm_act(input, mean, var, self.weight, self.bias, False, 0.0, self.eps, self.activation,
                                 backend=self.backend)

    def forward_after_depthwise(self, conv: nn.Conv2d, input: torch.Tensor) -> torch.Tensor:
        """``self(conv(input))`` for ConvBNAct: fused like BatchNormAct2d's when not synchronising;
        otherwise our depthwise kernel, then the synchronised BatchNorm + activation (the fused
        training kernel takes statistics of one process's output only)."""
        if not self._syncs():
            return super().forward_after_depthwise(conv, input)
        out = MF.depthwise_conv2d(input, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation,
                                  backend=self.backend)
        return self(out)

    def forward_after_pointwise(self, conv: nn.Conv2d, input: torch.Tensor,
                                residual: torch.Tensor | None = None) -> torch.Tensor:
        """``self(conv(input)) + residual`` for a 1x1 conv: fused like BatchNormAct2d's when not
        synchronising; otherwise our 1x1 GEMM, then the synchronised BatchNorm + activation (the
        GEMM epilogue's statistics are those of one process's output only)."""
        if not self._syncs():
            return super().forward_after_pointwise(conv, input, residual)
        out = self(MF.pointwise_conv2d(input, conv.weight, conv.bias, backend=self.backend))
        return out if residual is None else out + residual

    def extra_repr(self) -> str:
        group = "" if self.process_group is None else f", process_group={self.process_group}"
        return super().extra_repr() + group


def convert_sync_batchnorm(module: nn.Module, process_group: dist.ProcessGroup | None = None) -> nn.Module:
    """Replace every BatchNormAct2d and every nn.BatchNorm2d in ``module`` by a SyncBatchNormAct2d
    with the same activation (``identity`` for a plain BatchNorm2d) and backend; the counterpart of
    ``nn.SyncBatchNorm.convert_sync_batchnorm``, which would drop BatchNormAct2d's activation.

    The new modules share the replaced ones' Parameter and buffer objects (an optimizer built before
    keeps working) and train/eval mode. Other BatchNorms (1d, 3d) go to
    ``nn.SyncBatchNorm.convert_sync_batchnorm``; existing SyncBatchNormAct2d modules get
    ``process_group``. Returns ``module``, or the new module if ``module`` itself is a BatchNorm2d.
    """
    if isinstance(module, SyncBatchNormAct2d):
        module.process_group = process_group
        return module
    if isinstance(module, nn.BatchNorm2d):
        activation = module.activation if isinstance(module, BatchNormAct2d) else "identity"
        backend = module.backend if isinstance(module, BatchNormAct2d) else None
        new = SyncBatchNormAct2d.from_batch_norm(module, activation, backend)
        new.process_group = process_group
        if hasattr(module, "qconfig"):
            new.qconfig = module.qconfig
        return new
    if isinstance(module, _BatchNorm) and not isinstance(module, nn.SyncBatchNorm):
        return nn.SyncBatchNorm.convert_sync_batchnorm(module, process_group)
    for name, child in module.named_children():
        new_child = convert_sync_batchnorm(child, process_group)
        if new_child is not child:
            module._modules[name] = new_child
    return module
