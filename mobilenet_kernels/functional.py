"""The functional API: one function per op, each taking ``backend=`` by name.

Each function checks its arguments in Python first (errors name the argument; the C++ ops repeat
the checks for direct torch.ops calls), picks the backend (mobilenet_kernels.backends) and calls the
matching custom op; the "torch" backend runs the reference in mobilenet_kernels.reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import backends, ops, running_stats  # noqa: F401  (ops: registers fakes/autograd/Triton kernels)
from .ops.batch_norm_act import check_batch_norm_eval_args, check_batch_norm_train_args
from .ops._common import check_per_channel
from .ops.depthwise_conv2d import check_depthwise_args, check_depthwise_bn_train_args
from .ops.inverted_residual import check_inverted_residual_args
from .ops.pointwise_conv2d import (check_output_batch_norm, check_per_output_channel, check_pointwise_args,
                                   check_pointwise_bn_train_args)
from .ops.pointwise_depthwise import check_pointwise_depthwise_args
from .ops.squeeze_excite import check_squeeze_excite_args
from .reference import (
    batch_norm_act_ref,
    depthwise_conv2d_bn_act_ref,
    depthwise_conv2d_ref,
    inverted_residual_eval_ref,
    pointwise_conv2d_ref,
    squeeze_excite_ref,
)

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
        check_batch_norm_train_args(input, weight, bias, eps, activation)
        out, mean, var = _op("batch_norm_act_train", name)(input, weight, bias, eps, activation)
        if running_mean is not None and running_var is not None and input.numel() > 0:
            count = input.numel() // input.shape[1]
            running_stats.update(running_mean, running_var, mean, var, count, momentum or 0.0)
        return out
    if running_mean is None or running_var is None:
        raise ValueError("running_mean, running_var: required in eval mode (training=False)")
    check_batch_norm_eval_args(input, running_mean, running_var, weight, bias, eps, activation)
    return _op("batch_norm_act_eval", name)(input, running_mean, running_var, weight, bias, eps, activation)


def autocast_dtype(tensor: torch.Tensor) -> torch.dtype | None:
    """The dtype autocast runs our ops in on ``tensor``'s device, or None where autocast is off."""
    device_type = tensor.device.type
    if device_type in ("cuda", "cpu") and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def _autocast(*tensors):
    """Under autocast, cast floating tensors to the autocast dtype, as autocast does for F.conv2d
    (torch.library.register_autocast only knows one fixed dtype). A tensor already in that dtype is
    returned as it is (no copy, no launch)."""
    dtype = autocast_dtype(tensors[0])
    if dtype is None:
        return tensors
    return tuple(t if t is None or not t.is_floating_point() else t.to(dtype) for t in tensors)


def depthwise_conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    *,
    activation: str = "identity",
    backend: str | None = None,
) -> torch.Tensor:
    """``activation(F.conv2d(input, weight, bias, stride, padding, dilation, groups=C))`` for weight of
    shape (C, 1, kH, kW). stride/padding/dilation: an int or a pair. input, weight and bias share one
    dtype (under autocast all three are cast to the autocast dtype, as for F.conv2d); the output keeps
    the input's memory format (NCHW or channels_last).
    """
    input, weight, bias = _autocast(input, weight, bias)
    name = backends.resolve(backend, input)
    check_depthwise_args(input, weight, bias, stride, padding, dilation, activation)
    stride, padding, dilation = (_pair_list(v) for v in (stride, padding, dilation))
    if name == "torch":
        return depthwise_conv2d_ref(input, weight, bias, stride, padding, dilation, activation)
    return _op("depthwise_conv2d", name)(input, weight, bias, stride, padding, dilation, activation)


def fold_batch_norm(
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm folded into the conv before it, in float32 (float64 for float64 weights):
    ``w' = w * gamma * rstd``, ``b' = beta + (b - mean) * gamma * rstd``. Returned in float32/64;
    the caller casts to the input's dtype."""
    acc = torch.float64 if conv_weight.dtype == torch.float64 else torch.float32
    scale = (running_var.to(acc) + eps).rsqrt()
    if weight is not None:
        scale = scale * weight.to(acc)
    shift = -running_mean.to(acc) * scale
    if conv_bias is not None:
        shift = shift + conv_bias.to(acc) * scale
    if bias is not None:
        shift = shift + bias.to(acc)
    return conv_weight.to(acc) * scale.view(-1, 1, 1, 1), shift


def depthwise_conv2d_bn_act(
    input: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    stride: int | tuple[int, int],
    padding: int | tuple[int, int],
    dilation: int | tuple[int, int],
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
    folded: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``batch_norm_act(depthwise_conv2d(input, conv_weight, conv_bias, ...), running_mean, ...)`` in one op.

    Eval: BatchNorm folded into the conv (``fold_batch_norm``; pass ``folded`` to reuse a fold
    computed once for a frozen module), the activation in the conv's epilogue: one pass.
    Training: the conv kernel's epilogue emits the batch statistics, one apply pass follows;
    running stats are updated in place as nn.BatchNorm2d does (conv_bias shifts the running mean
    only: BatchNorm removes it from the output).
    """
    name = backends.resolve(backend, input)
    if not training:
        if running_mean is None or running_var is None:
            raise ValueError("running_mean, running_var: required in eval mode (training=False)")
        if folded is None or name == "torch":  # the torch reference runs the unfused sequence
            input, conv_weight, conv_bias = _autocast(input, conv_weight, conv_bias)
            check_depthwise_args(input, conv_weight, conv_bias, stride, padding, dilation, activation)
        else:  # from a given fold the conv's own weights are neither read nor cast (a fold cached in
            # the autocast dtype, as the modules keep it, costs no cast at all)
            input, w, b = _autocast(input, *folded)
            check_depthwise_args(input, w, b, stride, padding, dilation, activation)
        check_batch_norm_eval_args(input, running_mean, running_var, weight, bias, eps, activation)  # C is kept
        if name == "torch":
            return depthwise_conv2d_bn_act_ref(input, conv_weight, conv_bias, stride, padding, dilation, running_mean,
                                               running_var, weight, bias, training, momentum, eps, activation)
        if folded is None:
            w, b = (t.to(input.dtype) for t in fold_batch_norm(conv_weight, conv_bias, running_mean, running_var,
                                                                 weight, bias, eps))
        return _op("depthwise_conv2d", name)(input, w, b, _pair_list(stride), _pair_list(padding),
                                             _pair_list(dilation), activation)
    input, conv_weight, conv_bias = _autocast(input, conv_weight, conv_bias)
    if conv_bias is not None:
        check_depthwise_args(input, conv_weight, conv_bias, stride, padding, dilation, activation)
    for t, arg in ((running_mean, "running_mean"), (running_var, "running_var")):
        check_per_channel(t, arg, input)
    check_depthwise_bn_train_args(input, conv_weight, weight, bias, stride, padding, dilation, eps, activation)
    if name == "torch":
        return depthwise_conv2d_bn_act_ref(input, conv_weight, conv_bias, stride, padding, dilation, running_mean,
                                           running_var, weight, bias, training, momentum, eps, activation)
    out, _, mean, var = _op("depthwise_conv2d_bn_act_train", name)(
        input, conv_weight, weight, bias, _pair_list(stride), _pair_list(padding), _pair_list(dilation), eps, activation
    )
    if running_mean is not None and running_var is not None and input.numel() > 0:
        count = out.numel() // out.shape[1]
        if conv_bias is not None:
            mean = mean + conv_bias.to(mean.dtype)
        running_stats.update(running_mean, running_var, mean, var, count, momentum or 0.0)
    return out


def pointwise_conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    *,
    activation: str = "identity",
    backend: str | None = None,
) -> torch.Tensor:
    """``activation(F.conv2d(input, weight, bias)) + residual`` for a 1x1 weight (Cout, Cin, 1, 1),
    stride 1: one GEMM over the pixels with the bias, activation and residual add in its epilogue.
    input, weight, bias and residual share one dtype (under autocast all are cast to the autocast
    dtype, as for F.conv2d); the output keeps the input's memory format (NCHW or channels_last).
    """
    input, weight, bias, residual = _autocast(input, weight, bias, residual)
    name = backends.resolve(backend, input)
    check_pointwise_args(input, weight, bias, residual, activation)
    if name == "torch":
        return pointwise_conv2d_ref(input, weight, bias, residual, activation)
    return _op("pointwise_conv2d", name)(input, weight, bias, residual, activation)


def pointwise_conv2d_bn_act(
    input: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
    activation: str = "identity",
    residual: torch.Tensor | None = None,
    *,
    backend: str | None = None,
    folded: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``batch_norm_act(conv2d(input, conv_weight, conv_bias), running_mean, ...) + residual`` for a 1x1
    conv, the expand and project layers of an inverted-residual block.

    Eval: BatchNorm folded into the conv (``fold_batch_norm``; pass ``folded`` to reuse a fold), the
    activation and the residual add in the GEMM's epilogue: one pass.
    Training: the GEMM's epilogue emits the batch statistics, one apply pass follows (the residual,
    if any, is added after it); running stats are updated in place as nn.BatchNorm2d does.
    """
    name = backends.resolve(backend, input)
    if not training:
        if running_mean is None or running_var is None:
            raise ValueError("running_mean, running_var: required in eval mode (training=False)")
        if folded is None:
            input, conv_weight, conv_bias, residual = _autocast(input, conv_weight, conv_bias, residual)
            Co = check_pointwise_args(input, conv_weight, conv_bias, residual, activation)
        else:  # from a given fold the conv's own weights are neither read nor cast (a fold cached in
            # the autocast dtype, as the modules keep it, costs no cast at all)
            input, residual, w, b = _autocast(input, residual, *folded)
            Co = check_pointwise_args(input, w, b, residual, activation)
        check_output_batch_norm(input, Co, eps, running_mean=running_mean, running_var=running_var, weight=weight,
                                bias=bias)
        if folded is None:
            w, b = (t.to(input.dtype) for t in fold_batch_norm(conv_weight, conv_bias, running_mean, running_var,
                                                                 weight, bias, eps))
        if name == "torch":
            return pointwise_conv2d_ref(input, w, b, residual, activation)
        return _op("pointwise_conv2d", name)(input, w, b, residual, activation)
    input, conv_weight, conv_bias, residual = _autocast(input, conv_weight, conv_bias, residual)
    if conv_bias is not None or residual is not None:
        check_pointwise_args(input, conv_weight, conv_bias, residual, activation)
    Co = check_pointwise_bn_train_args(input, conv_weight, weight, bias, eps, activation)
    for t, arg in ((running_mean, "running_mean"), (running_var, "running_var")):
        check_per_output_channel(t, arg, Co, input)
    if name == "torch":
        z = F.conv2d(input, conv_weight, conv_bias)
        out = batch_norm_act_ref(z, running_mean, running_var, weight, bias, training, momentum, eps, activation)
        return out if residual is None else out + residual
    out, _, mean, var = _op("pointwise_conv2d_bn_act_train", name)(input, conv_weight, weight, bias, eps, activation)
    if running_mean is not None and running_var is not None and input.numel() > 0:
        count = out.numel() // out.shape[1]
        if conv_bias is not None:
            mean = mean + conv_bias.to(mean.dtype)
        running_stats.update(running_mean, running_var, mean, var, count, momentum or 0.0)
    return out if residual is None else out + residual


def pointwise_depthwise_bn_act_train(
    input: torch.Tensor,
    expand_weight: torch.Tensor,
    dw_weight: torch.Tensor,
    stride: int | tuple[int, int],
    padding: int | tuple[int, int],
    dilation: int | tuple[int, int],
    expand_running_mean: torch.Tensor | None,
    expand_running_var: torch.Tensor | None,
    expand_bn_weight: torch.Tensor | None,
    expand_bn_bias: torch.Tensor | None,
    dw_running_mean: torch.Tensor | None,
    dw_running_var: torch.Tensor | None,
    dw_bn_weight: torch.Tensor | None,
    dw_bn_bias: torch.Tensor | None,
    expand_momentum: float | None = 0.1,
    dw_momentum: float | None = 0.1,
    eps: float = 1e-5,
    activation: str = "identity",
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """The expanded side of an inverted-residual block in training mode (both BatchNorms on batch
    statistics): ``act(BN2(depthwise(act(BN1(conv1x1(input, expand_weight))), dw_weight, stride,
    padding, dilation)))``, as one op (ops/pointwise_depthwise.py) that keeps one expanded tensor
    less for backward than the two per-layer ops (BN1's output is recomputed, or, with Triton, never
    written). No conv biases; one ``eps`` and one ``activation`` for both BatchNorms. The running
    statistics (if given) are updated in place as nn.BatchNorm2d does, each with its momentum.
    """
    input, expand_weight, dw_weight = _autocast(input, expand_weight, dw_weight)
    name = backends.resolve(backend, input)
    hidden_shape, out_shape = check_pointwise_depthwise_args(
        input, expand_weight, expand_bn_weight, expand_bn_bias, dw_weight, dw_bn_weight, dw_bn_bias, stride, padding,
        dilation, eps, activation)
    running = ((expand_running_mean, expand_running_var, "expand_", hidden_shape, expand_momentum),
               (dw_running_mean, dw_running_var, "dw_", out_shape, dw_momentum))
    for running_mean, running_var, prefix, _, _ in running:
        check_per_output_channel(running_mean, f"{prefix}running_mean", hidden_shape[1], input)
        check_per_output_channel(running_var, f"{prefix}running_var", hidden_shape[1], input)
    if name == "torch":
        y1 = batch_norm_act_ref(F.conv2d(input, expand_weight), expand_running_mean, expand_running_var,
                                expand_bn_weight, expand_bn_bias, True, expand_momentum, eps, activation)
        return depthwise_conv2d_bn_act_ref(y1, dw_weight, None, stride, padding, dilation, dw_running_mean,
                                           dw_running_var, dw_bn_weight, dw_bn_bias, True, dw_momentum, eps, activation)
    out, _, mean1, var1, _, mean2, var2 = _op("pointwise_depthwise_bn_act_train", name)(
        input, expand_weight, expand_bn_weight, expand_bn_bias, dw_weight, dw_bn_weight, dw_bn_bias,
        _pair_list(stride), _pair_list(padding), _pair_list(dilation), eps, activation)
    for (running_mean, running_var, _, shape, momentum), mean, var in zip(running, (mean1, mean2), (var1, var2)):
        if running_mean is not None and running_var is not None and input.numel() > 0:
            running_stats.update(running_mean, running_var, mean, var, shape[0] * shape[2] * shape[3],
                                 momentum or 0.0)
    return out


def inverted_residual_eval(
    input: torch.Tensor,
    expand_weight: torch.Tensor | None,
    expand_bias: torch.Tensor | None,
    dw_weight: torch.Tensor,
    dw_bias: torch.Tensor,
    project_weight: torch.Tensor,
    project_bias: torch.Tensor,
    stride: int = 1,
    dilation: int = 1,
    *,
    activation: str = "relu6",
    residual: bool = False,
    se: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    se_activation: str = "relu",
    se_scale_activation: str = "hardsigmoid",
    backend: str | None = None,
) -> torch.Tensor:
    """An inverted-residual block in eval mode with its BatchNorms folded into the convs
    (``fold_batch_norm``): ``project(act(dw(act(expand(x) + b_e)) + b_d)) + b_p``, plus ``x`` if
    ``residual``. expand_weight (Chid, Cin, 1, 1) or None (no expand conv), dw_weight (Chid, 1, k, k)
    with odd k and "same" padding ``(k - 1) // 2 * dilation``, project_weight (Cout, Chid, 1, 1);
    weights and biases in the input's dtype (under autocast all are cast to the autocast dtype).
    Inference only (no gradient).

    ``se``: (fc1_weight, fc1_bias, fc2_weight, fc2_bias) of a squeeze-excite applied to the
    depthwise output before the projection (``squeeze_excite``'s parameters for Chid channels, in
    the input's dtype or float32; under autocast they are left as they are), with ``se_activation``
    and ``se_scale_activation``. Every backend then runs two passes of its block kernel: the first
    emits only the depthwise output's per-channel means, the second scales it by the excite step's
    output before projecting (ops/inverted_residual.py).

    Triton: one kernel per block that keeps the expanded tensor on chip. "cuda" on CPU tensors: the
    C++ whole-block kernel (csrc/cpu/inverted_residual.cpp: bands of output rows whose expanded rows
    stay in cache; float16/bfloat16 keep every intermediate in float and round once, where the op-by-op
    path rounds the expanded and depthwise tensors). "cuda" on CUDA tensors: the CUDA whole-block
    kernel (csrc/cuda/inverted_residual.cu: a tile of output pixels per thread block, the expanded
    halo tile and the depthwise output in shared memory). At most 512 output channels (every
    MobileNet block has at most 320).
    """
    tensors = _autocast(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias)
    input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias = tensors
    if se is not None and (not isinstance(se, (tuple, list)) or len(se) != 4):
        raise TypeError("se: expected a tuple (fc1_weight, fc1_bias, fc2_weight, fc2_bias) or None")
    se_args = (*(se if se is not None else (None,) * 4), se_activation, se_scale_activation)
    name = backends.resolve(backend, input)
    check_inverted_residual_args(*tensors, stride, dilation, activation, residual, *se_args)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (*tensors, *se_args[:4])):
        raise RuntimeError("inverted_residual_eval: inference only, but an input requires grad "
                           "(run it under torch.no_grad() or use the modules, which fall back to the op-by-op path)")
    if name == "torch":
        return inverted_residual_eval_ref(*tensors, stride, dilation, activation, residual, *se_args)
    return _op("inverted_residual_eval", name)(*tensors, stride, dilation, activation, residual, *se_args)


def squeeze_excite(
    input: torch.Tensor,
    fc1_weight: torch.Tensor,
    fc1_bias: torch.Tensor,
    fc2_weight: torch.Tensor,
    fc2_bias: torch.Tensor,
    *,
    activation: str = "relu",
    scale_activation: str = "hardsigmoid",
    backend: str | None = None,
) -> torch.Tensor:
    """``torchvision.ops.SqueezeExcitation`` with these weights:
    ``input * scale_activation(fc2(activation(fc1(mean_hw(input)))))``, fc weights of shape
    (S, C, 1, 1) and (C, S, 1, 1), biases (S,) and (C,).

    activation: relu | silu | hardswish (any known activation); scale_activation: hardsigmoid |
    sigmoid (likewise). One pooling pass, the excite step (both 1x1 layers in float32, or float64
    for float64 input; per image, or as small GEMMs over the batch on CUDA), one scaling pass; the
    output keeps the input's dtype and memory format. Parameters may be in the input's dtype or
    float32; under autocast the input is cast to the autocast dtype and float32 parameters stay
    float32.
    """
    if input.is_floating_point():
        (input,) = _autocast(input)
    name = backends.resolve(backend, input)
    check_squeeze_excite_args(input, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation, scale_activation)
    if name == "torch":
        return squeeze_excite_ref(input, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation, scale_activation)
    return _op("squeeze_excite", name)(input, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation,
                                       scale_activation)[0]


def _pair_list(v) -> list[int]:
    return [v, v] if isinstance(v, int) else [int(x) for x in v]
