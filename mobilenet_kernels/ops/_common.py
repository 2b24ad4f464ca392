"""Helpers shared by the op registrations: memory formats, argument checks, registration."""

from __future__ import annotations

from typing import Callable

import torch


def output_memory_format(t: torch.Tensor) -> torch.memory_format:
    """The format an op writes its output in; the C++ side uses the same rule
    (csrc/mk_common.h::output_memory_format), so fakes and kernels agree on strides."""
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def empty_like_output(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    return torch.empty(t.shape, dtype=dtype or t.dtype, device=t.device, memory_format=output_memory_format(t))


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


def register_twins(op: str, fake: Callable, backward_fake: Callable, backward: Callable, setup_context: Callable) -> None:
    """Register the fakes of ``op`` and of its ``_triton`` twin, and the twin's autograd formula.

    ``backward(backward_op)`` builds the autograd backward from the matching backward op. The
    C++-backed op's autograd is the same formula in C++ (csrc/autograd.cpp: no Python per call).
    """
    for suffix in ("", "_triton"):
        torch.library.register_fake(f"mobilenet_kernels::{op}{suffix}", fake)
        torch.library.register_fake(f"mobilenet_kernels::{op}_backward{suffix}", backward_fake)
    torch.library.register_autograd(
        f"mobilenet_kernels::{op}_triton",
        backward(getattr(torch.ops.mobilenet_kernels, f"{op}_backward_triton")),
        setup_context=setup_context,
    )
