"""The functional API: one function per op, each taking ``backend=`` by name.

Each function checks its arguments once, in Python or in the C++ op (errors name the argument),
picks the backend (mobilenet_kernels.backends) and calls the matching custom op; the "torch"
backend runs the reference in mobilenet_kernels.reference.
"""

from __future__ import annotations

import torch

from . import backends, ops  # noqa: F401  (ops: registers fakes/autograd/Triton kernels)
from .ops.batch_norm_act import check_batch_norm_eval_args
from .reference import batch_norm_act_ref

_OPS = {"cuda": "{}", "triton": "{}_triton"}


def _op(name: str, backend: str):
    return getattr(torch.ops.mobilenet_kernels, _OPS[backend].format(name))


def batch_norm_act(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
    activation: str = "identity",
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """``activation(F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps))``.

    activation: identity | relu | relu6 | hardswish | hardsigmoid | sigmoid | silu.
    Eval mode (``training=False``) runs the fused kernels of the chosen backend. Training mode runs
    the torch reference for now (same semantics: batch statistics, running stats updated in place).
    Mixed dtypes are accepted (bf16/fp16 input with fp32 parameters); the output keeps the input's
    dtype and memory format.
    """
    name = backends.resolve(backend, input)
    fused = not training and running_mean is not None and running_var is not None and name != "torch"
    if not (fused and name == "cuda"):  # the C++ ops run these same checks themselves
        check_batch_norm_eval_args(input, running_mean, running_var, weight, bias, eps, activation)
    if not fused:
        return batch_norm_act_ref(input, running_mean, running_var, weight, bias, training, momentum, eps, activation)
    return _op("batch_norm_act_eval", name)(input, running_mean, running_var, weight, bias, eps, activation)
