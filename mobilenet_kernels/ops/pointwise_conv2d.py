"""pointwise_conv2d (1x1 conv): registration of fakes and the Triton kernels.

Schemas live in csrc/library.cpp; CPU and CUDA kernels in csrc/{cpu,cuda}/pointwise_conv2d.*;
Triton kernels in mobilenet_kernels/triton/pointwise_conv2d.py. The same three kernel ops and one
composite as depthwise_conv2d:

* ``pointwise_conv2d`` (+ ``_backward``): ``act(conv2d(x, w, b)) + residual``, one GEMM with an
  epilogue: the expand conv of an inverted-residual block (bias + activation) and its project conv
  (bias + residual) once BatchNorm is folded in. Backward applies act' first: from the saved output
  for relu/relu6 when there is no residual (y tells where z was clipped), else by recomputing the
  pre-activation (only reached when training through a frozen BatchNorm); residual's gradient is
  grad_output.
* ``pointwise_conv2d_stats``: the conv plus the per-channel batch mean and biased variance of its
  output from the GEMM's epilogue.
* ``pointwise_conv2d_bn_act_train``: 1x1 conv + BatchNorm (batch statistics) + activation: ``stats``
  then the BatchNorm apply kernel; backward = batch_norm_act_train_backward then
  pointwise_conv2d_backward. A device-generic composite over the kernel ops of one backend.

Autocast: the functional layer casts input/weight/bias/residual to the autocast dtype, as F.conv2d does.
"""

from __future__ import annotations

import torch

from ..activations import check_activation
from ._common import (acc_dtype, check_floating, check_grad_output, check_like_input, dense, empty_like_output,
                      like_weight, output_memory_format, register_conv_bn_act_train, register_conv_op)
from .depthwise_conv2d import check_stats_count


def check_pointwise_args(input, weight, bias=None, residual=None, activation="identity",
                         weight_name: str = "weight") -> int:
    """The checks every backend runs before launching; returns the output channels.
    ``weight_name``: the weight's argument name in the caller's errors.
    C++ twin: csrc/pointwise_conv2d.h::prepare_pointwise."""
    check_floating(input, "input")
    if input.dim() != 4:
        raise ValueError(f"input: expected a 4-D tensor (N, C, H, W), got shape {tuple(input.shape)}")
    check_floating(weight, weight_name)
    Ci = input.shape[1]
    if weight.dim() != 4 or weight.shape[1] != Ci or tuple(weight.shape[2:]) != (1, 1) or weight.shape[0] < 1:
        raise ValueError(f"{weight_name}: expected shape (Cout, {Ci}, 1, 1) for a 1x1 conv of {Ci} input channels, "
                         f"got {tuple(weight.shape)}")
    if weight.dtype != input.dtype:
        raise TypeError(f"{weight_name}: expected dtype {input.dtype} (the input's), got {weight.dtype}")
    if weight.device != input.device:
        raise ValueError(f"{weight_name}: expected device {input.device}, got {weight.device}")
    Co = weight.shape[0]
    if bias is not None:
        check_per_output_channel(bias, "bias", Co, input)
        if bias.dtype != input.dtype:
            raise TypeError(f"bias: expected dtype {input.dtype} (the input's), got {bias.dtype}")
    if residual is not None:
        check_floating(residual, "residual")
        check_like_input(residual, "residual", input, _output_shape(input, Co), " (the output's)")
    check_activation(activation)
    return Co


def check_per_output_channel(t, name, Co, input) -> None:
    """``t`` is None or a (Co,) float tensor on input's device (C++ twin: pointwise_conv2d.h)."""
    if t is None:
        return
    check_floating(t, name)
    if t.dim() != 1 or t.shape[0] != Co:
        raise ValueError(f"{name}: expected shape ({Co},) to match the output channels, got {tuple(t.shape)}")
    if t.device != input.device:
        raise ValueError(f"{name}: expected device {input.device}, got {t.device}")


def _output_shape(input, Co) -> tuple[int, int, int, int]:
    return input.shape[0], Co, input.shape[2], input.shape[3]


def _output(input, Co, dtype=None):
    return torch.empty(_output_shape(input, Co), dtype=dtype or input.dtype, device=input.device,
                       memory_format=output_memory_format(input))


def _spatial(input):
    return input.shape[2], input.shape[3]


# ----------------------------------------------------------------------------- fakes


def _fake(input, weight, bias, residual, activation):
    return _output(input, check_pointwise_args(input, weight, bias, residual, activation))


def _backward_fake(grad_output, input, weight, output_mask):
    Co = check_pointwise_args(input, weight)
    check_grad_output(grad_output, input, _output_shape(input, Co))
    return (
        empty_like_output(input) if output_mask[0] else input.new_empty(0),
        torch.empty_like(weight, memory_format=torch.contiguous_format) if output_mask[1] else input.new_empty(0),
        input.new_empty(Co) if output_mask[2] else input.new_empty(0),
    )


def _stats_fake(input, weight):
    Co = check_pointwise_args(input, weight)
    check_stats_count(input, _spatial(input))
    acc = acc_dtype(input.dtype)
    return _output(input, Co), input.new_empty(Co, dtype=acc), input.new_empty(Co, dtype=acc)


register_conv_op("pointwise_conv2d", fake=_fake, backward_fake=_backward_fake, stats_fake=_stats_fake)


# ----------------------------------------------------------------------------- Triton


def _matrix(weight):
    return weight.reshape(weight.shape[0], weight.shape[1]).contiguous()


@torch.library.register_kernel("mobilenet_kernels::pointwise_conv2d_triton", ("cpu", "cuda"))
def _triton_forward(input, weight, bias, residual, activation):
    from ..triton.pointwise_conv2d import pointwise_conv2d_fwd

    check_pointwise_args(input, weight, bias, residual, activation)
    fmt = output_memory_format(input)
    b = None if bias is None else bias.to(acc_dtype(bias.dtype)).contiguous()
    r = None if residual is None else residual.contiguous(memory_format=fmt)
    return pointwise_conv2d_fwd(dense(input), _matrix(weight), b, r, activation, fmt)


@torch.library.register_kernel("mobilenet_kernels::pointwise_conv2d_backward_triton", ("cpu", "cuda"))
def _triton_backward(grad_output, input, weight, output_mask):
    from ..triton.pointwise_conv2d import pointwise_conv2d_bwd

    Co = check_pointwise_args(input, weight)
    check_grad_output(grad_output, input, _output_shape(input, Co))
    fmt = output_memory_format(input)
    grad_input, grad_weight, grad_bias = pointwise_conv2d_bwd(grad_output.contiguous(memory_format=fmt), dense(input),
                                                              _matrix(weight), fmt, tuple(bool(m) for m in output_mask))
    if output_mask[1]:
        grad_weight = like_weight(grad_weight, weight)
    if output_mask[2]:
        grad_bias = grad_bias.to(input.dtype)
    return grad_input, grad_weight, grad_bias


@torch.library.register_kernel("mobilenet_kernels::pointwise_conv2d_stats_triton", ("cpu", "cuda"))
def _triton_stats(input, weight):
    from ..triton.pointwise_conv2d import pointwise_conv2d_stats_fwd

    check_pointwise_args(input, weight)
    check_stats_count(input, _spatial(input))
    return pointwise_conv2d_stats_fwd(dense(input), _matrix(weight), output_memory_format(input))


# ----------------------------------------------------------------------------- 1x1 conv + BN + act, training


def check_output_batch_norm(input, Co, eps, **per_channel) -> None:
    """The BatchNorm after a 1x1 conv: each of ``per_channel`` (name=tensor) None or (Co,) (the
    conv's output channels), eps >= 0."""
    for name, t in per_channel.items():
        check_per_output_channel(t, name, Co, input)
    if eps < 0:
        raise ValueError(f"eps: expected a non-negative value, got {eps}")


def check_pointwise_bn_train_args(input, conv_weight, weight, bias, eps, activation) -> int:
    Co = check_pointwise_args(input, conv_weight, None, None, activation)
    check_stats_count(input, _spatial(input))
    check_output_batch_norm(input, Co, eps, weight=weight, bias=bias)
    return Co



register_conv_bn_act_train("pointwise_conv2d", check_pointwise_bn_train_args, _stats_fake)
