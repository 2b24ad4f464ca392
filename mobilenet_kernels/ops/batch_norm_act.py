"""batch_norm_act: registration of fakes and the Triton kernels, eval and training.

Schemas live in csrc/library.cpp; CPU and CUDA kernels in csrc/{cpu,cuda}/batch_norm_act.*.
Autocast policy: none registered on purpose. The op accepts mixed dtypes (bf16/fp16 input with
fp32 BatchNorm parameters, as autocast produces) and keeps the input's dtype, like F.batch_norm.
"""

from __future__ import annotations

import torch

from ..activations import check_activation
from ._common import (acc_dtype, check_floating, check_grad_output, check_per_channel, empty_like_output,
                      output_memory_format, register_twins)


def check_batch_norm_eval_args(input, running_mean, running_var, weight, bias, eps, activation) -> None:
    """The checks every backend runs before launching (C++ repeats them for direct op calls)."""
    check_floating(input, "input")
    if input.dim() < 2:
        raise ValueError(f"input: expected a tensor of shape (N, C, ...), got {tuple(input.shape)}")
    for t, name in ((running_mean, "running_mean"), (running_var, "running_var"), (weight, "weight"), (bias, "bias")):
        check_per_channel(t, name, input)
    if eps < 0:
        raise ValueError(f"eps: expected a non-negative value, got {eps}")
    check_activation(activation)


def _fake(input, running_mean, running_var, weight, bias, eps, activation):
    check_batch_norm_eval_args(input, running_mean, running_var, weight, bias, eps, activation)
    return empty_like_output(input)


def _backward_fake(grad_output, input, running_mean, running_var, weight, bias, eps, activation):
    check_batch_norm_eval_args(input, running_mean, running_var, weight, bias, eps, activation)
    acc = acc_dtype(input.dtype)
    C = input.shape[1]
    return empty_like_output(input), input.new_empty((C,), dtype=acc), input.new_empty((C,), dtype=acc)


register_twins("batch_norm_act_eval", _fake, _backward_fake)


# ----------------------------------------------------------------------------- training mode


def check_batch_norm_train_args(input, weight, bias, eps, activation) -> None:
    check_floating(input, "input")
    if input.dim() < 2:
        raise ValueError(f"input: expected a tensor of shape (N, C, ...), got {tuple(input.shape)}")
    check_per_channel(weight, "weight", input)
    check_per_channel(bias, "bias", input)
    if eps < 0:
        raise ValueError(f"eps: expected a non-negative value, got {eps}")
    check_activation(activation)
    if input.numel() != 0 and input.numel() // input.shape[1] <= 1:
        raise ValueError(f"input: Expected more than 1 value per channel when training, got input size {tuple(input.shape)}")


def _train_fake(input, weight, bias, eps, activation):
    check_batch_norm_train_args(input, weight, bias, eps, activation)
    acc = acc_dtype(input.dtype)
    C = input.shape[1]
    return empty_like_output(input), input.new_empty((C,), dtype=acc), input.new_empty((C,), dtype=acc)


def _train_backward_fake(grad_output, input, weight, bias, mean, var, eps, activation):
    check_batch_norm_train_args(input, weight, bias, eps, activation)
    acc = acc_dtype(input.dtype)
    C = input.shape[1]
    return empty_like_output(input), input.new_empty((C,), dtype=acc), input.new_empty((C,), dtype=acc)


register_twins("batch_norm_act_train", _train_fake, _train_backward_fake)


@torch.library.register_kernel("mobilenet_kernels::batch_norm_act_train_triton", ("cpu", "cuda"))
def _triton_train_forward(input, weight, bias, eps, activation):
    from ..triton.batch_norm_act import batch_norm_act_eval_fwd, batch_stats

    check_batch_norm_train_args(input, weight, bias, eps, activation)
    fmt = output_memory_format(input)
    x = input.contiguous(memory_format=fmt)
    mean, var = batch_stats(x)
    return batch_norm_act_eval_fwd(x, mean, var, weight, bias, eps, activation, fmt), mean, var


@torch.library.register_kernel("mobilenet_kernels::batch_norm_act_train_backward_triton", ("cpu", "cuda"))
def _triton_train_backward(grad_output, input, weight, bias, mean, var, eps, activation):
    from ..triton.batch_norm_act import batch_norm_act_train_bwd

    check_batch_norm_train_args(input, weight, bias, eps, activation)
    check_grad_output(grad_output, input, input.shape)
    fmt = output_memory_format(input)
    return batch_norm_act_train_bwd(
        grad_output.contiguous(memory_format=fmt), input.contiguous(memory_format=fmt),
        mean, var, weight, bias, eps, activation, fmt,
    )


# ----------------------------------------------------------------------------- Triton, eval mode


@torch.library.register_kernel("mobilenet_kernels::batch_norm_act_eval_triton", ("cpu", "cuda"))
def _triton_forward(input, running_mean, running_var, weight, bias, eps, activation):
    from ..triton.batch_norm_act import batch_norm_act_eval_fwd

    check_batch_norm_eval_args(input, running_mean, running_var, weight, bias, eps, activation)
    fmt = output_memory_format(input)
    return batch_norm_act_eval_fwd(input.contiguous(memory_format=fmt), running_mean, running_var, weight, bias, eps, activation, fmt)


@torch.library.register_kernel("mobilenet_kernels::batch_norm_act_eval_backward_triton", ("cpu", "cuda"))
def _triton_backward(grad_output, input, running_mean, running_var, weight, bias, eps, activation):
    from ..triton.batch_norm_act import batch_norm_act_eval_bwd

    check_batch_norm_eval_args(input, running_mean, running_var, weight, bias, eps, activation)
    check_grad_output(grad_output, input, input.shape)
    fmt = output_memory_format(input)
    return batch_norm_act_eval_bwd(
        grad_output.contiguous(memory_format=fmt), input.contiguous(memory_format=fmt),
        running_mean, running_var, weight, bias, eps, activation, fmt,
    )
