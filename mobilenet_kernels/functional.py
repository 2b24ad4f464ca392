"""The functional API: one function per op, each taking ``backend=`` by name.

Each function checks its arguments once, in Python or in the C++ op (errors name the argument),
picks the backend (mobilenet_kernels.backends) and calls the matching custom op; the "torch"
backend runs the reference in mobilenet_kernels.reference.
"""

from __future__ import annotations

import torch

from . import backends, ops  # noqa: F401  (ops: registers fakes/autograd/Triton kernels)
from .ops.batch_norm_act import check_batch_norm_eval_args, check_batch_norm_train_args
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
    Eval mode (``training=False``): the running statistics, folded into one per-channel scale and
    shift. Training mode: the batch statistics (mean, biased variance) from one fused statistics
    pass, then one apply pass; running_mean/running_var (if given) are updated in place with
    ``momentum`` and the unbiased variance, as nn.BatchNorm2d does (``momentum=None``, the
    cumulative average, arrives here as 1/num_batches_tracked; None itself counts as 0).
    weight/bias may be None (affine=False). Mixed dtypes are accepted (bf16/fp16 input with fp32
    parameters and statistics); the output keeps the input's dtype and memory format.
    """
    name = backends.resolve(backend, input)
    if name == "torch":
        check_batch_norm_eval_args(input, running_mean, running_var, weight, bias, eps, activation)
        return batch_norm_act_ref(input, running_mean, running_var, weight, bias, training, momentum, eps, activation)
    if training:
        if running_mean is not None or running_var is not None:
            check_batch_norm_eval_args(input, running_mean, running_var, weight, bias, eps, activation)
        if name != "cuda":  # the C++ ops run these same checks themselves
            check_batch_norm_train_args(input, weight, bias, eps, activation)
        out, mean, var = _op("batch_norm_act_train", name)(input, weight, bias, eps, activation)
        if running_mean is not None and running_var is not None and input.numel() > 0:
            count = input.numel() // input.shape[1]
            torch.ops.mobilenet_kernels.batch_norm_update_stats(running_mean, running_var, mean, var, count, momentum or 0.0)
        return out
    if running_mean is None or running_var is None:
        raise ValueError("running_mean, running_var: required in eval mode (training=False)")
    if name != "cuda":  # the C++ ops run these same checks themselves
        check_batch_norm_eval_args(input, running_mean, running_var, weight, bias, eps, activation)
    return _op("batch_norm_act_eval", name)(input, running_mean, running_var, weight, bias, eps, activation)
