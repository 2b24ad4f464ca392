"""DepthwiseConv2d: nn.Conv2d with groups == in_channels == out_channels, on our depthwise kernels."""

from __future__ import annotations

import torch
from torch import nn

from .. import functional as MF
from ..backends import check_backend


class DepthwiseConv2d(nn.Conv2d):
    """A depthwise ``nn.Conv2d`` (``groups == in_channels == out_channels``, zero padding given as
    numbers) whose forward is :func:`mobilenet_kernels.functional.depthwise_conv2d`.

    A subclass of nn.Conv2d with the same parameters and state_dict. ``backend`` picks the kernels
    by name (None: the fastest usable).
    """

    def __init__(self, channels: int, kernel_size, stride=1, padding=0, dilation=1, bias: bool = True,
                 device=None, dtype=None, *, backend: str | None = None) -> None:
        super().__init__(channels, channels, kernel_size, stride, padding, dilation, groups=channels, bias=bias,
                         device=device, dtype=dtype)
        self.backend = check_backend(backend)

    @staticmethod
    def supports(conv: nn.Module) -> bool:
        """Whether ``conv`` is a plain nn.Conv2d that this module can run."""
        return (
            type(conv) is nn.Conv2d
            and conv.groups > 1
            and conv.groups == conv.in_channels == conv.out_channels
            and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str)
        )

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, backend: str | None = None) -> "DepthwiseConv2d":
        """A DepthwiseConv2d sharing ``conv``'s Parameter objects (no copy), in the same mode."""
        if not cls.supports(conv):
            raise ValueError(f"conv: expected a depthwise nn.Conv2d with numeric zero padding, got {conv}")
        new = cls(conv.in_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.bias is not None,
                  device="meta", backend=backend)
        new._parameters.update(conv._parameters)
        new.train(conv.training)
        return new

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.depthwise_conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation,
                                   backend=self.backend)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, backend={self.backend}"
