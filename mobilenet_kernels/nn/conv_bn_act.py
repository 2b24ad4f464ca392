"""ConvBNAct (conv -> BatchNorm -> activation) and ``conv_bn_act``, the one forward of every such pair
in our models and blocks, with the BatchNorm folded into the conv in eval mode."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .. import functional as MF
from ..activations import apply_activation_
from .batch_norm_act import BatchNormAct2d


def _is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


def _is_pointwise(conv: nn.Conv2d) -> bool:
    return (conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding == (0, 0) and conv.groups == 1
            and conv.padding_mode == "zeros")


def folded_conv_weights(conv: nn.Conv2d, bn: BatchNormAct2d,
                        dtype: Optional[torch.dtype] = None) -> Optional[tuple[Tensor, Tensor]]:
    """``(weight, bias)`` of ``conv`` with the eval-mode ``bn`` folded in (``W * scale``,
    ``(b - mean) * scale + beta``, scale = ``gamma / sqrt(var + eps)``; functional.fold_batch_norm, in
    float32/float64, then cast to ``dtype``: the conv weight's by default, the autocast dtype where the
    caller runs under autocast), or None where folding does not apply: ``bn`` in training mode or
    without running statistics, or a gradient needed for a parameter or statistic of the pair (the
    unfused ops then carry autograd).

    Eager: computed once and kept on ``bn`` (a plain attribute, not in the state_dict) until a
    tensor of the pair changes: the key holds each tensor's identity, version counter (bumped by
    every in-place change: optimizer steps, load_state_dict, ``.copy_``), data pointer (``.data =``
    swaps), device and dtype. The cast to each ``dtype`` asked for is kept beside the fold, so an
    inference under autocast casts no weight (autocast casts torchvision's conv weights anew in every
    autocast region, i.e. every inference: a copy kernel and host time each). Under torch.compile the
    fold is traced into the graph instead.
    """
    if bn.training or bn.running_mean is None or bn.running_var is None:
        return None
    tensors = [t for t in (conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.weight, bn.bias)
               if t is not None]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return None

    dtype = dtype or conv.weight.dtype

    def fold() -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            w, b = MF.fold_batch_norm(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                                      bn.eps)
            return w.to(dtype), b.to(dtype)

    if torch.compiler.is_compiling():
        return fold()
    key = tuple((id(t), t._version, t.data_ptr(), t.device, t.dtype) for t in tensors) + (bn.eps,)
    cache = bn.__dict__.get("_conv_fold_cache")
    if cache is None or cache[0] != key:
        cache = (key, {})  # per dtype
        bn.__dict__["_conv_fold_cache"] = cache
    if dtype not in cache[1]:
        with torch.inference_mode(False):  # a fold made under inference_mode must serve later autograd calls too
            cache[1][dtype] = fold()
    return cache[1][dtype]


def conv_bn_act(conv: nn.Conv2d, bn: nn.BatchNorm2d, input: Tensor, residual: Optional[Tensor] = None) -> Tensor:
    """``bn(conv(input))`` (BatchNormAct2d: with its activation), plus ``residual`` if given.

    - A depthwise ``conv`` runs fused with ``bn`` (BatchNormAct2d.forward_after_depthwise: in eval
      mode the fold lives in the depthwise kernel's weights, the activation in its epilogue).
    - A 1x1 conv (stride 1, one group) runs fused with ``bn`` and the residual add
      (BatchNormAct2d.forward_after_pointwise, functional.pointwise_conv2d_bn_act): in eval mode
      the GEMM with the folded weights, the activation and the residual in its epilogue; in
      training the GEMM's epilogue emits the BatchNorm statistics.
    - Any other conv, where :func:`folded_conv_weights` applies (eval mode, no gradient needed):
      the conv with the folded weights and bias, then the activation and the residual add in place
      on its output: no BatchNorm pass and no second tensor (the linear projection is the conv
      alone).
    - Otherwise (training; gradients for the parameters; ``bn`` a plain BatchNorm, e.g. swapped in
      by the user): the conv, then ``bn`` itself.
    """
    if not isinstance(bn, BatchNormAct2d):
        out = bn(conv(input))
    elif _is_depthwise(conv):
        out = bn.forward_after_depthwise(conv, input)
    elif _is_pointwise(conv) and input.dim() == 4:
        return bn.forward_after_pointwise(conv, input, residual)
    else:
        folded = folded_conv_weights(conv, bn, MF.autocast_dtype(input))
        if folded is None:
            out = bn(conv(input))
        else:
            out = conv._conv_forward(input, folded[0], folded[1])  # the conv's own padding mode
            bn._check_input_dim(out)  # an unbatched input fails here as it does in the BatchNorm
            out = apply_activation_(out, bn.activation)
            if residual is not None and residual.dtype == out.dtype:
                return out.add_(residual)
    return out if residual is None else out + residual


class ConvBNAct(nn.Sequential):
    """``Sequential(Conv2d(bias=False), BatchNormAct2d(activation))``.

    Our counterpart of torchvision's ``Conv2dNormActivation`` (``Sequential(conv, bn, act)``): the
    activation has no state, so folding it into the BatchNorm keeps the state_dict keys ``0.weight``
    (conv) and ``1.weight``, ``1.bias``, ``1.running_mean``, ... (BatchNorm) unchanged.
    Padding is ``(kernel_size - 1) // 2 * dilation`` ("same" for odd kernels at stride 1).
    The forward is :func:`conv_bn_act`: a depthwise conv (``groups == in_channels == out_channels``)
    runs fused with its BatchNorm and activation (functional.depthwise_conv2d_bn_act); other convs
    run as nn.Conv2d, then the fused BatchNorm + activation, or, in eval mode with no gradient
    needed, as one conv with the BatchNorm folded into its weights.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        dilation: int = 1,
        activation: str = "relu",
        eps: float = 1e-5,
        momentum: float = 0.1,
        backend: Optional[str] = None,
    ) -> None:
        padding = (kernel_size - 1) // 2 * dilation
        super().__init__(
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=padding,
                dilation=dilation,
                groups=groups,
                bias=False,
            ),
            BatchNormAct2d(out_channels, eps=eps, momentum=momentum, activation=activation, backend=backend),
        )
        self.out_channels = out_channels
        self.depthwise = _is_depthwise(self[0])

    @classmethod
    def from_conv_bn(cls, conv: nn.Conv2d, bn: BatchNormAct2d, training: bool) -> "ConvBNAct":
        """A ConvBNAct holding these very ``conv`` and ``bn`` modules (no copy); ``training`` is the
        container's own mode (the two modules keep theirs)."""
        new = cls.__new__(cls)
        nn.Sequential.__init__(new, conv, bn)
        new.out_channels = conv.out_channels
        new.depthwise = _is_depthwise(conv)
        new.training = training
        return new

    def forward(self, input: Tensor) -> Tensor:
        conv, bn = self[0], self[1]
        if not isinstance(bn, BatchNormAct2d):  # e.g. nn.SyncBatchNorm.convert_sync_batchnorm swapped it
            raise TypeError(
                f"ConvBNAct: its BatchNorm was replaced by {type(bn).__name__}, which would drop the activation; "
                "convert with mobilenet_kernels.nn.convert_sync_batchnorm instead"
            )
        return conv_bn_act(conv, bn, input)


__all__ = ["ConvBNAct", "conv_bn_act", "folded_conv_weights"]
