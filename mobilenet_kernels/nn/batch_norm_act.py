"""BatchNormAct2d: nn.BatchNorm2d followed by an activation, as one fused op."""

from __future__ import annotations

import torch
from torch import nn

from .. import functional as MF, running_stats
from ..activations import check_activation
from ..backends import check_backend


class BatchNormAct2d(nn.BatchNorm2d):
    """``activation(nn.BatchNorm2d(x))``.

    A subclass of nn.BatchNorm2d with the same parameters, buffers and state_dict, so weights
    load unchanged and ``isinstance(m, nn.BatchNorm2d)`` code (weight init, freezing, SyncBN
    conversion) keeps working. ``backend`` picks the kernels by name (None: the fastest usable).
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device=None,
        dtype=None,
        *,
        activation: str = "identity",
        backend: str | None = None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self.activation = check_activation(activation)
        self.backend = check_backend(backend)

    @classmethod
    def from_batch_norm(cls, bn: nn.BatchNorm2d, activation: str = "identity", backend: str | None = None) -> "BatchNormAct2d":
        """A BatchNormAct2d that shares ``bn``'s parameters and buffers (no copy), in the same mode."""
        new = cls(
            bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats, device="meta",
            activation=activation, backend=backend,
        )
        # The very same Parameter and buffer objects: optimizers and references into bn stay valid.
        new._parameters.update(bn._parameters)
        new._buffers.update(bn._buffers)
        new.train(bn.training)
        return new

    def _batch_norm_args(self) -> tuple[torch.Tensor | None, torch.Tensor | None, bool, float, bool]:
        """(running_mean, running_var, training, momentum, counts) for this call, with the bookkeeping
        of nn.modules.batchnorm._BatchNorm.forward (momentum=None: the cumulative average), except that
        num_batches_tracked is not incremented here: ``counts`` says whether the caller adds this batch
        (``_count_batch``) once the op has returned, so a call that fails its checks counts nothing."""
        exponential_average_factor = 0.0 if self.momentum is None else self.momentum
        counts = self.training and self.track_running_stats and self.num_batches_tracked is not None
        if counts and self.momentum is None:
            running_stats.settle(self.num_batches_tracked)  # a count still recorded is applied before it is read
            exponential_average_factor = 1.0 / float(self.num_batches_tracked + 1)
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        track = not self.training or self.track_running_stats
        return (self.running_mean if track else None, self.running_var if track else None, bn_training,
                exponential_average_factor, counts)

    def _count_batch(self, counts: bool) -> None:
        if counts:
            running_stats.count(self.num_batches_tracked)  # at once, or with the model's other counts

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        running_mean, running_var, training, momentum, counts = self._batch_norm_args()
        out = MF.batch_norm_act(input, running_mean, running_var, self.weight, self.bias, training, momentum, self.eps,
                                self.activation, backend=self.backend)
        self._count_batch(counts)
        return out

    def forward_after_depthwise(self, conv: nn.Conv2d, input: torch.Tensor) -> torch.Tensor:
        """``self(conv(input))`` for a depthwise ``conv``, as one fused op
        (functional.depthwise_conv2d_bn_act). In eval mode the folded conv weights are computed once
        and reused while no parameter or buffer changes and nothing needs a gradient."""
        from .conv_bn_act import folded_conv_weights

        running_mean, running_var, training, momentum, counts = self._batch_norm_args()
        folded = None if training else folded_conv_weights(conv, self, MF.autocast_dtype(input))
        out = MF.depthwise_conv2d_bn_act(
            input, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, running_mean, running_var,
            self.weight, self.bias, training, momentum, self.eps, self.activation, backend=self.backend, folded=folded,
        )
        self._count_batch(counts)
        return out

    def forward_after_pointwise(self, conv: nn.Conv2d, input: torch.Tensor,
                                residual: torch.Tensor | None = None) -> torch.Tensor:
        """``self(conv(input)) + residual`` for a 1x1 ``conv`` (stride 1, one group), as one fused op
        (functional.pointwise_conv2d_bn_act): in eval mode the GEMM with the folded weights, the
        activation and the residual in its epilogue; in training the GEMM's epilogue emits the batch
        statistics. ``folded`` is the cached fold (nn.conv_bn_act.folded_conv_weights) or None."""
        from .conv_bn_act import folded_conv_weights

        running_mean, running_var, training, momentum, counts = self._batch_norm_args()
        folded = None if training else folded_conv_weights(conv, self, MF.autocast_dtype(input))
        out = MF.pointwise_conv2d_bn_act(
            input, conv.weight, conv.bias, running_mean, running_var, self.weight, self.bias, training, momentum,
            self.eps, self.activation, residual, backend=self.backend, folded=folded,
        )
        self._count_batch(counts)
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, activation={self.activation}, backend={self.backend}"
