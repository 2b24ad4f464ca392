"""depthwise_conv2d: registration of fakes and the Triton kernels.

Schemas live in csrc/library.cpp; CPU and CUDA kernels in csrc/{cpu,cuda}/depthwise_conv2d.*;
Triton kernels in mobilenet_kernels/triton/depthwise_conv2d.py.

Three kernel ops and one composite:

* ``depthwise_conv2d`` (+ ``_backward``): ``act(conv2d(x, w, b, groups=C))``. The activation is the
  epilogue of eval-mode dw+BN+act with BN folded into ``w`` and ``b``. Its backward applies act'
  first: from the saved output for identity/relu/relu6 (y tells where z was clipped), by recomputing
  the pre-activation for the others (only reached when training through a frozen BatchNorm).
* ``depthwise_conv2d_stats``: the conv plus the per-channel batch mean and biased variance of its
  output from the kernel's epilogue, so BatchNorm's statistics pass never re-reads the output.
* ``depthwise_conv2d_bn_act_train``: dw conv + BatchNorm (batch statistics) + activation:
  ``stats`` then the BatchNorm apply kernel. A device-generic composite over the kernel ops of one
  backend. Its backward op ``depthwise_conv2d_bn_act_train_backward``: BatchNorm's reduction, then
  the conv's backward with BatchNorm's grad_input computed where the conv reads it (Triton; CUDA
  where its tiled kernel applies), else batch_norm_act_train_backward then depthwise_conv2d_backward.

Autocast: the functional layer casts input/weight/bias to the autocast dtype, as F.conv2d does
(``torch.library.register_autocast`` only knows one fixed dtype).
"""

from __future__ import annotations

import torch

from ..activations import check_activation
from ._common import (acc_dtype, check_floating, check_grad_output, check_per_channel, dense, empty_like_output,
                      like_weight, output_memory_format, register_conv_bn_act_train, register_conv_op)


def _pair(v, name: str, min_value: int) -> tuple[int, int]:
    if isinstance(v, int) and not isinstance(v, bool):
        v = (v, v)
    elif isinstance(v, (tuple, list, torch.Size)):
        v = tuple(v)
    else:
        raise TypeError(f"{name}: expected an int or a pair of ints, got {v!r}")
    if len(v) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        raise ValueError(f"{name}: expected an int or a pair of ints, got {v!r}")
    if min(v) < min_value:
        raise ValueError(f"{name}: expected values >= {min_value}, got {list(v)}")
    return v


def check_depthwise_args(input, weight, bias, stride, padding, dilation, activation="identity",
                         weight_name: str = "weight") -> tuple[int, int]:
    """The checks every backend runs before launching; returns the output size (OH, OW).
    ``weight_name``: the weight's argument name in the caller's errors.
    C++ twin: csrc/depthwise_conv2d.h::prepare_depthwise."""
    check_floating(input, "input")
    if input.dim() != 4:
        raise ValueError(f"input: expected a 4-D tensor (N, C, H, W), got shape {tuple(input.shape)}")
    check_floating(weight, weight_name)
    C = input.shape[1]
    if weight.dim() != 4 or weight.shape[0] != C or weight.shape[1] != 1:
        raise ValueError(f"{weight_name}: expected shape ({C}, 1, kH, kW) for a depthwise conv of {C} channels, got {tuple(weight.shape)}")
    if weight.shape[2] < 1 or weight.shape[3] < 1:
        raise ValueError(f"{weight_name}: expected a non-empty kernel, got {tuple(weight.shape)}")
    if weight.dtype != input.dtype:
        raise TypeError(f"{weight_name}: expected dtype {input.dtype} (the input's), got {weight.dtype}")
    if weight.device != input.device:
        raise ValueError(f"{weight_name}: expected device {input.device}, got {weight.device}")
    if bias is not None:
        check_per_channel(bias, "bias", input)
        if bias.dtype != input.dtype:
            raise TypeError(f"bias: expected dtype {input.dtype} (the input's), got {bias.dtype}")
    sH, sW = _pair(stride, "stride", 1)
    pH, pW = _pair(padding, "padding", 0)
    dH, dW = _pair(dilation, "dilation", 1)
    check_activation(activation)
    H, W = input.shape[2], input.shape[3]
    eff_h, eff_w = dH * (weight.shape[2] - 1) + 1, dW * (weight.shape[3] - 1) + 1
    if H + 2 * pH < eff_h or W + 2 * pW < eff_w:
        raise ValueError(
            f"input: spatial size ({H}, {W}) plus padding ({pH}, {pW}) is smaller than the dilated kernel ({eff_h}, {eff_w})"
        )
    return (H + 2 * pH - eff_h) // sH + 1, (W + 2 * pW - eff_w) // sW + 1


def check_stats_count(input, out_hw) -> None:
    """Training needs more than one value per channel (C++ twin: check_stats_count)."""
    N = input.shape[0]
    if N != 0 and N * out_hw[0] * out_hw[1] <= 1:
        raise ValueError(
            "input: Expected more than 1 value per channel when training, got a conv output of size "
            f"{(N, input.shape[1], *out_hw)}"
        )


def _output(input, out_hw, dtype=None):
    return torch.empty((input.shape[0], input.shape[1], *out_hw), dtype=dtype or input.dtype, device=input.device,
                       memory_format=output_memory_format(input))


# ----------------------------------------------------------------------------- fakes


def _fake(input, weight, bias, stride, padding, dilation, activation):
    return _output(input, check_depthwise_args(input, weight, bias, stride, padding, dilation, activation))


def _backward_fake(grad_output, input, weight, stride, padding, dilation, output_mask):
    out_hw = check_depthwise_args(input, weight, None, stride, padding, dilation)
    check_grad_output(grad_output, input, (*input.shape[:2], *out_hw))
    empty = input.new_empty(0)
    return (
        empty_like_output(input) if output_mask[0] else empty,
        torch.empty_like(weight, memory_format=torch.contiguous_format) if output_mask[1] else empty,
        input.new_empty(input.shape[1]) if output_mask[2] else empty,
    )


def _stats_fake(input, weight, stride, padding, dilation):
    out_hw = check_depthwise_args(input, weight, None, stride, padding, dilation)
    check_stats_count(input, out_hw)
    acc = acc_dtype(input.dtype)
    C = input.shape[1]
    return _output(input, out_hw), input.new_empty(C, dtype=acc), input.new_empty(C, dtype=acc)


register_conv_op("depthwise_conv2d", fake=_fake, backward_fake=_backward_fake, stats_fake=_stats_fake)


# ----------------------------------------------------------------------------- Triton


def _acc_weight(weight):
    return weight.reshape(weight.shape[0], weight.shape[2], weight.shape[3]).to(acc_dtype(weight.dtype)).contiguous()


@torch.library.register_kernel("mobilenet_kernels::depthwise_conv2d_triton", ("cpu", "cuda"))
def _triton_forward(input, weight, bias, stride, padding, dilation, activation):
    from ..triton.depthwise_conv2d import depthwise_conv2d_fwd

    check_depthwise_args(input, weight, bias, stride, padding, dilation, activation)
    b = None if bias is None else bias.to(acc_dtype(bias.dtype)).contiguous()
    return depthwise_conv2d_fwd(dense(input), _acc_weight(weight), b, tuple(stride), tuple(padding), tuple(dilation),
                                activation, output_memory_format(input))


@torch.library.register_kernel("mobilenet_kernels::depthwise_conv2d_backward_triton", ("cpu", "cuda"))
def _triton_backward(grad_output, input, weight, stride, padding, dilation, output_mask):
    from ..triton.depthwise_conv2d import depthwise_conv2d_bwd

    out_hw = check_depthwise_args(input, weight, None, stride, padding, dilation)
    check_grad_output(grad_output, input, (*input.shape[:2], *out_hw))
    fmt = output_memory_format(input)
    grad_input, grad_weight, grad_bias = depthwise_conv2d_bwd(
        grad_output.contiguous(memory_format=fmt), dense(input), _acc_weight(weight), tuple(stride), tuple(padding),
        tuple(dilation), fmt, tuple(bool(m) for m in output_mask),
    )
    if output_mask[1]:
        grad_weight = like_weight(grad_weight, weight)
    return grad_input, grad_weight, grad_bias


@torch.library.register_kernel("mobilenet_kernels::depthwise_conv2d_stats_triton", ("cpu", "cuda"))
def _triton_stats(input, weight, stride, padding, dilation):
    from ..triton.depthwise_conv2d import depthwise_conv2d_stats_fwd

    check_stats_count(input, check_depthwise_args(input, weight, None, stride, padding, dilation))
    return depthwise_conv2d_stats_fwd(dense(input), _acc_weight(weight), tuple(stride), tuple(padding), tuple(dilation),
                                      output_memory_format(input))


# ----------------------------------------------------------------------------- dw conv + BN + act, training


def check_depthwise_bn_train_args(input, conv_weight, weight, bias, stride, padding, dilation, eps, activation):
    out_hw = check_depthwise_args(input, conv_weight, None, stride, padding, dilation, activation)
    check_stats_count(input, out_hw)
    check_per_channel(weight, "weight", input)
    check_per_channel(bias, "bias", input)
    if eps < 0:
        raise ValueError(f"eps: expected a non-negative value, got {eps}")
    return out_hw



def _triton_bn_act_train_backward(grad_output, input, conv_weight, weight, bias, conv_out, mean, var, stride, padding,
                                  dilation, eps, activation, output_mask):
    """The fused backward (arguments checked by the caller, register_conv_bn_act_train): BatchNorm's
    reduction, then one depthwise backward kernel that computes BatchNorm's grad_input where it
    loads its grad_output (triton/depthwise_conv2d.py, BN_DX)."""
    from ..triton.batch_norm_act import TrainDx
    from ..triton.depthwise_conv2d import depthwise_conv2d_bwd

    fmt = output_memory_format(input)
    gy, z = grad_output.contiguous(memory_format=fmt), conv_out.contiguous(memory_format=fmt)
    dx = TrainDx(gy, z, mean, var, weight, bias, eps, activation)
    grad_input, grad_conv_weight = input.new_empty(0), input.new_empty(0)  # outputs must not alias
    if output_mask[0] or output_mask[1]:
        grad_input, grad_conv_weight, _ = depthwise_conv2d_bwd(
            gy, dense(input), _acc_weight(conv_weight), tuple(stride), tuple(padding), tuple(dilation), fmt,
            (bool(output_mask[0]), bool(output_mask[1]), False), bn_dx=(z, dx))
        if output_mask[1]:
            grad_conv_weight = like_weight(grad_conv_weight, conv_weight)
    return grad_input, grad_conv_weight, dx.sum_gxhat, dx.sum_g


register_conv_bn_act_train("depthwise_conv2d", check_depthwise_bn_train_args, _stats_fake,
                           fused_backward=_triton_bn_act_train_backward)
