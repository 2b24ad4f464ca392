"""squeeze_excite: registration of fakes and the Triton kernels.

Schemas live in csrc/library.cpp; CPU and CUDA kernels in csrc/{cpu,cuda}/squeeze_excite.*;
Triton kernels in mobilenet_kernels/triton/squeeze_excite.py. Every backend runs the same three
stages (a per-(image, channel) reduction, a per-image excite step, an elementwise pass; see
csrc/squeeze_excite.h).

``squeeze_excite`` returns (output, pooled): pooled, the (N, C) mean of the input in the
accumulation dtype, is a non-differentiable output saved for the backward, which recomputes the
excite step from it instead of storing its intermediates.

Autocast: the functional layer casts the input to the autocast dtype and keeps float32
parameters, so the excite step runs in float32 (the kernels accept parameters in the input's
dtype or its accumulation dtype).
"""

from __future__ import annotations

import torch

from ..activations import check_activation
from ._common import (acc_dtype, check_floating, check_grad_output, empty_like_output, output_memory_format,
                      register_twins)


def check_squeeze_excite_args(input, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation="relu",
                              scale_activation="hardsigmoid") -> int:
    """The checks every backend runs before launching; returns the squeeze channels S.
    C++ twin: csrc/squeeze_excite.h::prepare_squeeze_excite."""
    check_floating(input, "input")
    if input.dim() != 4:
        raise ValueError(f"input: expected a 4-D tensor (N, C, H, W), got shape {tuple(input.shape)}")
    if input.shape[1] < 1 or input.shape[2] < 1 or input.shape[3] < 1:
        raise ValueError(f"input: expected at least one channel and a non-empty spatial size, got {tuple(input.shape)}")
    C = input.shape[1]
    if fc1_weight.dim() != 4 or fc1_weight.shape[1] != C or tuple(fc1_weight.shape[2:]) != (1, 1) or fc1_weight.shape[0] < 1:
        raise ValueError(f"fc1_weight: expected shape (S, {C}, 1, 1) for an input of {C} channels, got {tuple(fc1_weight.shape)}")
    S = fc1_weight.shape[0]
    acc = acc_dtype(input.dtype)
    for t, name, shape in ((fc1_weight, "fc1_weight", (S, C, 1, 1)), (fc1_bias, "fc1_bias", (S,)),
                           (fc2_weight, "fc2_weight", (C, S, 1, 1)), (fc2_bias, "fc2_bias", (C,))):
        check_floating(t, name)
        if tuple(t.shape) != shape:
            raise ValueError(f"{name}: expected shape {shape}, got {tuple(t.shape)}")
        if t.dtype not in (input.dtype, acc):
            expected = f"{input.dtype}" if acc == input.dtype else f"{input.dtype} (the input's) or {acc}"
            raise TypeError(f"{name}: expected dtype {expected}, got {t.dtype}")
        if t.device != input.device:
            raise ValueError(f"{name}: expected device {input.device}, got {t.device}")
    check_activation(activation, "activation")
    check_activation(scale_activation, "scale_activation")
    return S


def _check_backward_args(grad_output, input, pooled) -> None:
    check_grad_output(grad_output, input, input.shape)
    expected = (input.shape[0], input.shape[1])
    if tuple(pooled.shape) != expected:
        raise ValueError(f"pooled: expected shape {expected}, got {tuple(pooled.shape)}")
    if pooled.dtype != acc_dtype(input.dtype):
        raise TypeError(f"pooled: expected dtype {acc_dtype(input.dtype)}, got {pooled.dtype}")


# ----------------------------------------------------------------------------- fakes


def _fake(input, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation, scale_activation):
    check_squeeze_excite_args(input, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation, scale_activation)
    return empty_like_output(input), input.new_empty((input.shape[0], input.shape[1]), dtype=acc_dtype(input.dtype))


def _backward_fake(grad_output, input, pooled, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation, scale_activation):
    check_squeeze_excite_args(input, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation, scale_activation)
    _check_backward_args(grad_output, input, pooled)
    params = (fc1_weight, fc1_bias, fc2_weight, fc2_bias)
    return (empty_like_output(input), *(torch.empty_like(p, memory_format=torch.contiguous_format) for p in params))


register_twins("squeeze_excite", _fake, _backward_fake)


# ----------------------------------------------------------------------------- Triton


def _acc_params(input, fc1_weight, fc1_bias, fc2_weight, fc2_bias):
    acc = acc_dtype(input.dtype)
    S, C = fc1_weight.shape[0], fc1_weight.shape[1]
    return (fc1_weight.reshape(S, C).to(acc).contiguous(), fc1_bias.to(acc).contiguous(),
            fc2_weight.reshape(C, S).to(acc).contiguous(), fc2_bias.to(acc).contiguous())


@torch.library.register_kernel("mobilenet_kernels::squeeze_excite_triton", ("cpu", "cuda"))
def _triton_forward(input, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation, scale_activation):
    from ..triton.squeeze_excite import squeeze_excite_fwd

    check_squeeze_excite_args(input, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation, scale_activation)
    fmt = output_memory_format(input)
    return squeeze_excite_fwd(input.contiguous(memory_format=fmt),
                              *_acc_params(input, fc1_weight, fc1_bias, fc2_weight, fc2_bias),
                              activation, scale_activation, fmt)


@torch.library.register_kernel("mobilenet_kernels::squeeze_excite_backward_triton", ("cpu", "cuda"))
def _triton_backward(grad_output, input, pooled, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation,
                     scale_activation):
    from ..triton.squeeze_excite import squeeze_excite_bwd

    check_squeeze_excite_args(input, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation, scale_activation)
    _check_backward_args(grad_output, input, pooled)
    fmt = output_memory_format(input)
    grad_x, *grads = squeeze_excite_bwd(grad_output.contiguous(memory_format=fmt), input.contiguous(memory_format=fmt),
                                        pooled.contiguous(),
                                        *_acc_params(input, fc1_weight, fc1_bias, fc2_weight, fc2_bias),
                                        activation, scale_activation, fmt)
    params = (fc1_weight, fc1_bias, fc2_weight, fc2_bias)
    return (grad_x, *(g.reshape(p.shape).to(p.dtype).contiguous() for g, p in zip(grads, params)))
