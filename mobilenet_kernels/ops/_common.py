"""Helpers shared by the op registrations: memory formats, argument checks, registration."""

from __future__ import annotations

import os
from typing import Callable

import torch


def output_memory_format(t: torch.Tensor) -> torch.memory_format:
    """The format an op writes its output in; the C++ side uses the same rule
    (csrc/mk_common.h::output_memory_format), so fakes and kernels agree on strides."""
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def dense(t: torch.Tensor) -> torch.Tensor:
    """``t`` dense in the format the op writes (output_memory_format): what the kernels index."""
    return t.contiguous(memory_format=output_memory_format(t))


def empty_like_output(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    return torch.empty(t.shape, dtype=dtype or t.dtype, device=t.device, memory_format=output_memory_format(t))


def like_weight(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A kernel's weight gradient (any shape with weight's element count, any float dtype) as the
    gradient of ``weight``: its shape and dtype, contiguous."""
    return grad.reshape(weight.shape).to(weight.dtype).contiguous()


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of the kernels: float32, or float64 for float64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


_FLOAT_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


# Plain `if ...: raise` rather than torch._check(cond, lambda: msg): Dynamo cannot trace message
# closures that capture tensors, and these checks run inside torch.compile'd code.
def check_floating(t: torch.Tensor, name: str) -> None:
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name}: expected a floating-point tensor (float32, float64, float16 or bfloat16), got {t.dtype}")


def check_per_channel(t: torch.Tensor | None, name: str, input: torch.Tensor) -> None:
    """``t`` is None or a (C,) float tensor on input's device."""
    if t is None:
        return
    check_floating(t, name)
    if t.dim() != 1 or t.shape[0] != input.shape[1]:
        raise ValueError(f"{name}: expected shape ({input.shape[1]},) to match input channels, got {tuple(t.shape)}")
    if t.device != input.device:
        raise ValueError(f"{name}: expected device {input.device}, got {t.device}")


def register_twins(op: str, fake: Callable, backward_fake: Callable) -> None:
    """Register the fakes of ``op`` and of its ``_triton`` twin and of their backward ops. Both twins'
    autograd is C++ (csrc/autograd.cpp: one formula, no Python per call)."""
    for suffix in ("", "_triton"):
        torch.library.register_fake(f"mobilenet_kernels::{op}{suffix}", fake)
        torch.library.register_fake(f"mobilenet_kernels::{op}_backward{suffix}", backward_fake)


# ----------------------------------------------------------------------------- conv ops (depthwise, pointwise)
# The conv ops share one anatomy: ``{conv}(input, weight, bias, *geometry, ..., activation)``,
# ``{conv}_backward(grad, input, weight, *geometry, output_mask)``, ``{conv}_stats(input, weight,
# *geometry)`` and the composite ``{conv}_bn_act_train``; geometry is (stride, padding, dilation)
# for depthwise and empty for a 1x1 conv. The pieces below are written once for both.


def register_conv_op(conv: str, *, fake: Callable, backward_fake: Callable, stats_fake: Callable) -> None:
    """The fakes of ``{conv}``, ``{conv}_backward`` and ``{conv}_stats`` and of their ``_triton``
    twins. Their autograd is C++ (csrc/autograd.cpp), the stats ops' with the statistics as
    non-differentiable outputs (they feed BatchNorm, whose own backward accounts for them)."""
    for suffix in ("", "_triton"):
        for op, op_fake in ((conv, fake), (f"{conv}_backward", backward_fake), (f"{conv}_stats", stats_fake)):
            torch.library.register_fake(f"mobilenet_kernels::{op}{suffix}", op_fake)


def bn_dx_fused() -> bool:
    """Whether the training backwards fuse BatchNorm's grad_input into the conv's backward: yes,
    unless MK_DW_BN_FUSED=0 (read at every call, as the CUDA op reads it, so that a benchmark can
    time the two in one process: benchmarking/depthwise_conv2d.py), which runs the unfused sequence."""
    return os.environ.get("MK_DW_BN_FUSED") != "0"


def input_bn_fused() -> bool:
    """Whether pointwise_depthwise_bn_act_train's depthwise kernels apply the expand BatchNorm +
    activation where they load their input (never writing its output): yes, unless
    MK_DW_INPUT_BN=0 (read at every call, as the CUDA op reads it), which writes that output with
    the apply pass and runs the per-layer depthwise op on it. Its backward also needs bn_dx_fused:
    the kernels that apply the input BatchNorm in the backward are the fused training backward's."""
    return os.environ.get("MK_DW_INPUT_BN") != "0"


def check_like_input(t, name, input, shape, whose: str = "") -> None:
    """``t`` has ``shape`` (``whose``, e.g. " (the output's)", says what it must match in the error)
    and the input's dtype and device."""
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}{whose}, got {tuple(t.shape)}")
    if t.dtype != input.dtype:
        raise TypeError(f"{name}: expected dtype {input.dtype} (the input's), got {t.dtype}")
    if t.device != input.device:
        raise ValueError(f"{name}: expected device {input.device}, got {t.device}")


def check_grad_output(grad_output, input, out_shape) -> None:
    """A backward's grad_output: the forward output's shape ``out_shape``, the input's dtype and
    device. C++ twin: csrc/mk_common.h::dense_grad_output."""
    check_like_input(grad_output, "grad_output", input, out_shape)


def check_output_sized(input, t, name, out_shape) -> None:
    """A saved operand of a backward the size of a conv's output: out_shape, the input's dtype and
    device. C++ twin: csrc/batch_norm_act.h::check_output_sized."""
    check_like_input(t, name, input, out_shape, " (the conv's output)")


def check_output_channels(input, t, name, C_out) -> None:
    """A per-channel operand of a conv's output (a BatchNorm's statistic): (C_out,), floating, on
    the input's device. C++ twin: csrc/batch_norm_act.h::check_output_channels."""
    check_floating(t, name)
    if t.dim() != 1 or t.shape[0] != C_out:
        raise ValueError(f"{name}: expected shape ({C_out},) to match the conv's output channels, got "
                         f"{tuple(t.shape)}")
    if t.device != input.device:
        raise ValueError(f"{name}: expected device {input.device}, got {t.device}")


def register_conv_bn_act_train(conv: str, check_args: Callable, stats_fake: Callable,
                               fused_backward: Callable | None = None) -> None:
    """The composite ``{conv}_bn_act_train{,_triton}(input, conv_weight, weight, bias, *geometry,
    eps, activation) -> (out, conv_out, mean, var)``: act(BatchNorm(conv(input))) with batch
    statistics, as ``{conv}_stats`` (the statistics from the conv's epilogue) then the BatchNorm
    apply kernel; conv_out, mean and var are non-differentiable outputs kept for the backward and
    for the running statistics. Its backward is one op, ``{conv}_bn_act_train_backward{,_triton}
    (grad_output, input, conv_weight, weight, bias, conv_out, mean, var, *geometry, eps,
    activation, output_mask) -> (grad_input, grad_conv_weight, sum g * x_hat, sum g)``:
    batch_norm_act_train_backward then ``{conv}_backward``, or, for the ``_triton`` twin,
    ``fused_backward`` (same arguments) when given. Device-generic. Here: the fakes of all four ops
    and the ``_triton`` twin's backward kernel; the forward composites of both twins and their
    autograd are C++ (csrc/autograd.cpp: a Python composite with a Python autograd formula cost ~150
    us more per training call).

    ``check_args(input, conv_weight, weight, bias, *geometry, eps, activation)`` raises on bad input;
    ``stats_fake(input, conv_weight, *geometry)`` is the stats op's fake (the output's shape)."""
    ns = torch.ops.mobilenet_kernels

    def fake(input, conv_weight, weight, bias, *rest):
        check_args(input, conv_weight, weight, bias, *rest)
        conv_out, mean, var = stats_fake(input, conv_weight, *rest[:-2])
        return torch.empty_like(conv_out), conv_out, mean, var

    def check_backward_args(grad_output, input, conv_weight, weight, bias, conv_out, mean, var, *rest):
        """Every check of the backward op; returns the conv output's shape."""
        *geometry, eps, activation, _output_mask = rest
        check_args(input, conv_weight, weight, bias, *geometry, eps, activation)
        out_shape = stats_fake(input, conv_weight, *geometry)[0].shape
        check_output_sized(input, grad_output, "grad_output", out_shape)
        check_output_sized(input, conv_out, "conv_out", out_shape)
        check_output_channels(input, mean, "mean", out_shape[1])
        check_output_channels(input, var, "var", out_shape[1])
        return out_shape

    def backward_fake(grad_output, input, conv_weight, weight, bias, conv_out, mean, var, *rest):
        out_shape = check_backward_args(grad_output, input, conv_weight, weight, bias, conv_out, mean, var, *rest)
        output_mask, acc = rest[-1], acc_dtype(input.dtype)
        return (empty_like_output(input) if output_mask[0] else input.new_empty(0),
                torch.empty_like(conv_weight, memory_format=torch.contiguous_format) if output_mask[1]
                else input.new_empty(0),
                input.new_empty(out_shape[1], dtype=acc), input.new_empty(out_shape[1], dtype=acc))

    # The Triton twin's backward over its kernel ops.
    bn_backward = ns.batch_norm_act_train_backward_triton
    conv_backward = getattr(ns, f"{conv}_backward_triton")

    def composite_backward(grad_output, input, conv_weight, weight, bias, conv_out, mean, var, *rest):
        check_backward_args(grad_output, input, conv_weight, weight, bias, conv_out, mean, var, *rest)
        *geometry, eps, activation, output_mask = rest
        grad_conv_out, sum_g_xhat, sum_g = bn_backward(
            grad_output.contiguous(memory_format=output_memory_format(input)), conv_out, weight, bias, mean, var,
            eps, activation)
        grad_input, grad_conv_weight = input.new_empty(0), input.new_empty(0)  # two tensors: outputs must not alias
        if output_mask[0] or output_mask[1]:
            grad_input, grad_conv_weight, _ = conv_backward(grad_conv_out, input, conv_weight, *geometry,
                                                            [output_mask[0], output_mask[1], False])
        return grad_input, grad_conv_weight, sum_g_xhat, sum_g

    def kernel_backward(*args):
        if not bn_dx_fused():
            return composite_backward(*args)
        check_backward_args(*args)
        return fused_backward(*args)

    for suffix in ("", "_triton"):
        torch.library.register_fake(f"mobilenet_kernels::{conv}_bn_act_train{suffix}", fake)
        torch.library.register_fake(f"mobilenet_kernels::{conv}_bn_act_train_backward{suffix}", backward_fake)
    torch.library.register_kernel(f"mobilenet_kernels::{conv}_bn_act_train_backward_triton", ("cpu", "cuda"),
                                  composite_backward if fused_backward is None else kernel_backward)
