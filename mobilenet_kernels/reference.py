"""Pure-PyTorch references: the "torch" backend of every op, and the ground truth in tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from .activations import apply_activation
from .ops._common import output_memory_format


@contextlib.contextmanager
def ieee_fp32() -> Iterator[None]:
    """float32 convolutions in cuDNN with IEEE float32 arithmetic, not TF32, inside the block.

    PyTorch lets cuDNN run float32 convolutions in TF32 by default (torch.backends.cudnn.allow_tf32),
    ~1e-3 relative error: the "torch" backend's float32 1x1 convolutions on a GPU then miss a
    float32 tolerance against float64, although our own kernels (and cuBLAS, whose TF32 switch is
    off by default) compute in float32. Tests and the self-test compare float32 with float32.
    """
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = saved


def canonical_strides(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself, or where it is dense with an unusual stride on a size-1 dim (contiguity ignores
    such a stride), a view of the same elements with its format's standard strides. PyTorch's CPU
    F.batch_norm backward computes wrong input gradients for a channels_last tensor with one
    (torch 2.14.1: (2, 2, 1, 2) with H's stride 7919); our kernels never read those strides."""
    if t.dim() != 4 or 1 not in t.shape:
        return t
    fmt = output_memory_format(t)
    if not t.is_contiguous(memory_format=fmt):
        return t
    N, C, H, W = t.shape
    standard = (C * H * W, 1, W * C, C) if fmt == torch.channels_last else (C * H * W, H * W, W, 1)
    return t if t.stride() == standard else t.as_strided(t.shape, standard)


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
        input = canonical_strides(input)
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


def depthwise_conv2d_ref(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
    activation: str = "identity",
    *,
    upcast: bool = False,
) -> torch.Tensor:
    """``activation(F.conv2d(input, weight, bias, stride, padding, dilation, groups=C))``; with
    ``upcast`` computed in float64 and cast back (a high-precision reference). float16 on a CPU is
    computed in float32 and rounded once: PyTorch's CPU float16 depthwise conv segfaults where the
    padding reaches past the kernel (torch 2.14.1: (1, 6, 3, 1) input, 1x1 kernel, padding (0, 2),
    stride (2, 3), dilation 2), which would take the process down."""
    dtype = torch.float64 if upcast else input.dtype
    if dtype == torch.float16 and input.device.type == "cpu":
        dtype = torch.float32
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    out = F.conv2d(cast(input), cast(weight), cast(bias), stride, padding, dilation, groups=input.shape[1])
    return _in_layout_of(input, apply_activation(out, activation).to(input.dtype))


def pointwise_conv2d_ref(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    activation: str = "identity",
    *,
    upcast: bool = False,
) -> torch.Tensor:
    """``activation(F.conv2d(input, weight, bias)) + residual`` for a 1x1 ``weight``; with ``upcast``
    computed in float64 and cast back (a high-precision reference)."""
    dtype = torch.float64 if upcast else input.dtype
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    out = apply_activation(F.conv2d(cast(input), cast(weight), cast(bias)), activation)
    if residual is not None:
        out = out + cast(residual)
    return _in_layout_of(input, out.to(input.dtype))


def _in_layout_of(input: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out`` in the memory format our ops write for ``input`` (output_memory_format): F.conv2d
    chooses its own on some paths (float64 channels_last on CUDA comes back NCHW), and the "torch"
    backend keeps the promise every backend makes."""
    return out.contiguous(memory_format=output_memory_format(input))


def inverted_residual_eval_ref(
    input: torch.Tensor,
    expand_weight: torch.Tensor | None,
    expand_bias: torch.Tensor | None,
    dw_weight: torch.Tensor,
    dw_bias: torch.Tensor,
    project_weight: torch.Tensor,
    project_bias: torch.Tensor,
    stride: int = 1,
    dilation: int = 1,
    activation: str = "relu6",
    residual: bool = False,
    se_fc1_weight: torch.Tensor | None = None,
    se_fc1_bias: torch.Tensor | None = None,
    se_fc2_weight: torch.Tensor | None = None,
    se_fc2_bias: torch.Tensor | None = None,
    se_activation: str = "relu",
    se_scale_activation: str = "hardsigmoid",
    *,
    upcast: bool = False,
) -> torch.Tensor:
    """An inverted-residual block with its BatchNorms folded, op by op:
    ``project(se(act(dw(act(expand(x)))))) (+ x)``; with ``upcast`` in float64, cast back.
    The squeeze-excite (when its parameters are given) runs as our kernels run it: the mean and the
    excite step in the accumulation dtype (float64 with ``upcast``), one rounding of the scaled
    depthwise output to the input dtype."""
    h = input
    if expand_weight is not None:
        h = pointwise_conv2d_ref(h, expand_weight, expand_bias, None, activation, upcast=upcast)
    pad = (dw_weight.shape[-1] - 1) // 2 * dilation
    h = depthwise_conv2d_ref(h, dw_weight, dw_bias, stride, pad, dilation, activation, upcast=upcast)
    if se_fc1_weight is not None:
        acc = torch.float64 if upcast or h.dtype == torch.float64 else torch.float32
        pooled = h.to(acc).mean((2, 3), keepdim=True)
        z = apply_activation(F.conv2d(pooled, se_fc1_weight.to(acc), se_fc1_bias.to(acc)), se_activation)
        scale = apply_activation(F.conv2d(z, se_fc2_weight.to(acc), se_fc2_bias.to(acc)), se_scale_activation)
        h = (h.to(acc) * scale).to(h.dtype)
    return pointwise_conv2d_ref(h, project_weight, project_bias, input if residual else None, upcast=upcast)


def depthwise_conv2d_bn_act_ref(
    input: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    stride,
    padding,
    dilation,
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
    """The unfused sequence: depthwise conv, then BatchNorm + activation (``batch_norm_act_ref``)."""
    z = depthwise_conv2d_ref(input, conv_weight, conv_bias, stride, padding, dilation, upcast=upcast)
    return batch_norm_act_ref(z, running_mean, running_var, weight, bias, training, momentum, eps, activation,
                              upcast=upcast)


def squeeze_excite_ref(
    input: torch.Tensor,
    fc1_weight: torch.Tensor,
    fc1_bias: torch.Tensor,
    fc2_weight: torch.Tensor,
    fc2_bias: torch.Tensor,
    activation: str = "relu",
    scale_activation: str = "hardsigmoid",
) -> torch.Tensor:
    """torchvision.ops.SqueezeExcitation with these weights: pool, fc1, act, fc2, scale_act, scale.
    The excite step runs in the parameters' dtype (as eager torchvision does under AMP after its
    own casts, the pooled vector follows the input's dtype first)."""
    pooled = F.adaptive_avg_pool2d(input, 1)
    dtype = fc1_weight.dtype
    h = apply_activation(F.conv2d(pooled.to(dtype), fc1_weight, fc1_bias), activation)
    s = apply_activation(F.conv2d(h, fc2_weight, fc2_bias), scale_activation)
    return input * s.to(input.dtype)
