"""Pure-PyTorch references: the "torch" backend of every op, and the ground truth in tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .activations import apply_activation


def batch_norm_act_ref(
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
    upcast: bool = False,
) -> torch.Tensor:
    """``activation(F.batch_norm(...))``.

    Training mode is F.batch_norm itself (``momentum=None``, a cumulative average, arrives here with
    1/num_batches_tracked already folded in by the caller, as nn.BatchNorm2d does). Eval mode is
    written out as the per-channel affine map the kernels compute, in float32 (float64 for float64
    input), so that it is differentiable with respect to the running statistics too. With
    ``upcast`` everything runs in float64 and is cast back: a high-precision reference.
    """
    if training:
        dtype = torch.float64 if upcast else input.dtype
        params = (running_mean, running_var, weight, bias)
        same = input.dtype == dtype and all(p is None or p.dtype == dtype for p in params)
        # F.batch_norm itself takes bf16/fp16 input with fp32 parameters (as under autocast), but
        # no other mix (e.g. fp64 input with fp32 running stats on CPU): cast those to one dtype.
        native_mix = not upcast and dtype in (torch.float16, torch.bfloat16) and all(
            p is None or p.dtype == torch.float32 for p in params
        )
        if same or native_mix:
            out = F.batch_norm(input, running_mean, running_var, weight, bias, True, momentum or 0.0, eps)
            return apply_activation(out, activation)
        cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
        mean_c, var_c = cast(running_mean), cast(running_var)
        out = F.batch_norm(cast(input), mean_c, var_c, cast(weight), cast(bias), True, momentum or 0.0, eps)
        if running_mean is not None:
            with torch.no_grad():
                running_mean.copy_(mean_c)
                running_var.copy_(var_c)
        return apply_activation(out, activation).to(input.dtype)
    if running_mean is None or running_var is None:
        raise ValueError("running_mean, running_var: required in eval mode (training=False)")
    acc = torch.float64 if upcast or input.dtype == torch.float64 else torch.float32
    shape = (1, -1) + (1,) * (input.dim() - 2)
    rstd = (running_var.to(acc) + eps).rsqrt()
    scale = rstd if weight is None else weight.to(acc) * rstd
    shift = -running_mean.to(acc) * scale
    if bias is not None:
        shift = shift + bias.to(acc)
    out = input.to(acc) * scale.view(shape) + shift.view(shape)
    return apply_activation(out, activation).to(input.dtype)
