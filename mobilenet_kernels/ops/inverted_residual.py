"""inverted_residual_eval: a whole inverted-residual block (eval, BatchNorm folded) as one kernel.

Schema in csrc/library.cpp; Triton kernel in mobilenet_kernels/triton/inverted_residual.py; the
C++-backed op's kernels in csrc/cpu/inverted_residual.cpp and csrc/cuda/inverted_residual.cu (their
checks, the twin of check_inverted_residual_args, in csrc/inverted_residual.h). The op-by-op sequence
(pointwise_conv2d, depthwise_conv2d, pointwise_conv2d with the residual) is the reference
(reference.inverted_residual_eval_ref).

With the four ``se_*`` parameters the block holds a squeeze-excite between the depthwise conv and
the projection (MobileNetV3's blocks). Its pooling needs the whole depthwise output before the
first projection, so every backend runs two passes of the block kernel: pass 1 computes the expanded
tensor and the depthwise output tile by tile and writes only per-tile channel sums, which are
merged in a fixed order into the (N, Chid) means; the excite step (squeeze_excite's) turns them
into the (N, Chid) scale; pass 2 is the block with the depthwise output scaled before the
projection. Bytes (Triton, CUDA): twice the input read, the output written once; the hidden
tensors never reach memory (op by op, they are written three times and read four). The C++ CPU
kernel keeps pass 1's depthwise output and reads it back in pass 2 instead of recomputing it (a
CPU is compute-bound there: csrc/cpu/inverted_residual_kernels.h).

Inference only: the op has no autograd formula; the modules call it only when no gradient is
needed (nn.inverted_residual).
"""

from __future__ import annotations

import torch

from ..activations import check_activation
from ._common import acc_dtype, check_floating, output_memory_format


def _check_param(t, name, shape, input, dtypes=None) -> None:
    check_floating(t, name)
    if tuple(t.shape) != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {tuple(t.shape)}")
    if dtypes is None and t.dtype != input.dtype:
        raise TypeError(f"{name}: expected dtype {input.dtype} (the input's), got {t.dtype}")
    if dtypes is not None and t.dtype not in dtypes:
        expected = " or ".join(str(d) for d in dtypes)
        raise TypeError(f"{name}: expected dtype {expected} (the input's or its accumulation dtype), got {t.dtype}")
    if t.device != input.device:
        raise ValueError(f"{name}: expected device {input.device}, got {t.device}")


def check_inverted_residual_args(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias,
                                 stride, dilation, activation, residual, se_fc1_weight=None, se_fc1_bias=None,
                                 se_fc2_weight=None, se_fc2_bias=None, se_activation="relu",
                                 se_scale_activation="hardsigmoid") -> tuple[int, int]:
    """The checks every backend runs before launching; returns the output's (OH, OW).
    C++ twin: csrc/inverted_residual.h::prepare_inverted_residual."""
    check_floating(input, "input")
    if input.dim() != 4:
        raise ValueError(f"input: expected a 4-D tensor (N, C, H, W), got shape {tuple(input.shape)}")
    N, Cin, H, W = input.shape
    if Cin < 1:
        raise ValueError(f"input: expected at least one channel, got shape {tuple(input.shape)}")
    if (expand_weight is None) != (expand_bias is None):
        raise ValueError("expand_weight, expand_bias: expected both or neither")
    if expand_weight is not None:
        if expand_weight.dim() != 4 or expand_weight.shape[1] != Cin or tuple(expand_weight.shape[2:]) != (1, 1):
            raise ValueError(f"expand_weight: expected shape (Chid, {Cin}, 1, 1), got {tuple(expand_weight.shape)}")
        Chid = expand_weight.shape[0]
        _check_param(expand_weight, "expand_weight", (Chid, Cin, 1, 1), input)
        _check_param(expand_bias, "expand_bias", (Chid,), input)
    else:
        Chid = Cin
    if dw_weight.dim() != 4 or dw_weight.shape[0] != Chid or dw_weight.shape[1] != 1:
        raise ValueError(f"dw_weight: expected shape ({Chid}, 1, k, k), got {tuple(dw_weight.shape)}")
    k = dw_weight.shape[2]
    if dw_weight.shape[3] != k or k % 2 == 0:
        raise ValueError(f"dw_weight: expected a square kernel of odd size, got {tuple(dw_weight.shape)}")
    _check_param(dw_weight, "dw_weight", (Chid, 1, k, k), input)
    _check_param(dw_bias, "dw_bias", (Chid,), input)
    if project_weight.dim() != 4 or project_weight.shape[1] != Chid or tuple(project_weight.shape[2:]) != (1, 1):
        raise ValueError(f"project_weight: expected shape (Cout, {Chid}, 1, 1), got {tuple(project_weight.shape)}")
    Cout = project_weight.shape[0]
    _check_param(project_weight, "project_weight", (Cout, Chid, 1, 1), input)
    _check_param(project_bias, "project_bias", (Cout,), input)
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride: expected an int >= 1, got {stride!r}")
    if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f"dilation: expected an int >= 1, got {dilation!r}")
    check_activation(activation)
    _check_se(input, Chid, se_fc1_weight, se_fc1_bias, se_fc2_weight, se_fc2_bias, se_activation, se_scale_activation)
    if residual and (stride != 1 or Cout != Cin):
        raise ValueError(f"residual: needs stride 1 and as many output as input channels, got stride {stride}, "
                         f"{Cin} -> {Cout} channels")
    pad = (k - 1) // 2 * dilation
    return (H + 2 * pad - dilation * (k - 1) - 1) // stride + 1, (W + 2 * pad - dilation * (k - 1) - 1) // stride + 1


def _check_se(input, Chid, w1, b1, w2, b2, se_activation, se_scale_activation) -> None:
    """The squeeze-excite parameters: all four or none; (S, Chid, 1, 1), (S,), (Chid, S, 1, 1),
    (Chid,), in the input's dtype or its accumulation dtype (autocast keeps them float32)."""
    given = [t is not None for t in (w1, b1, w2, b2)]
    if any(given) and not all(given):
        raise ValueError("se_fc1_weight, se_fc1_bias, se_fc2_weight, se_fc2_bias: expected all four or none")
    if not any(given):
        return
    if w1.dim() != 4 or w1.shape[1] != Chid or tuple(w1.shape[2:]) != (1, 1) or w1.shape[0] < 1:
        raise ValueError(f"se_fc1_weight: expected shape (S, {Chid}, 1, 1) for {Chid} hidden channels, "
                         f"got {tuple(w1.shape)}")
    S = w1.shape[0]
    dtypes = (input.dtype,) if acc_dtype(input.dtype) == input.dtype else (input.dtype, acc_dtype(input.dtype))
    for t, name, shape in ((w1, "se_fc1_weight", (S, Chid, 1, 1)), (b1, "se_fc1_bias", (S,)),
                           (w2, "se_fc2_weight", (Chid, S, 1, 1)), (b2, "se_fc2_bias", (Chid,))):
        _check_param(t, name, shape, input, dtypes)
    check_activation(se_activation, "se_activation")
    check_activation(se_scale_activation, "se_scale_activation")


def _fake(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias, stride, dilation,
          activation, residual, *se):
    OH, OW = check_inverted_residual_args(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight,
                                          project_bias, stride, dilation, activation, residual, *se)
    return torch.empty((input.shape[0], project_weight.shape[0], OH, OW), dtype=input.dtype, device=input.device,
                       memory_format=output_memory_format(input))


for _suffix in ("", "_triton"):
    torch.library.register_fake(f"mobilenet_kernels::inverted_residual_eval{_suffix}", _fake)


@torch.library.register_kernel("mobilenet_kernels::inverted_residual_eval_triton", ("cpu", "cuda"))
def _triton_forward(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias, stride,
                    dilation, activation, residual, se_fc1_weight=None, se_fc1_bias=None, se_fc2_weight=None,
                    se_fc2_bias=None, se_activation="relu", se_scale_activation="hardsigmoid"):
    from ..triton.inverted_residual import inverted_residual_eval_fwd

    se = (se_fc1_weight, se_fc1_bias, se_fc2_weight, se_fc2_bias)
    check_inverted_residual_args(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias,
                                 stride, dilation, activation, residual, *se, se_activation, se_scale_activation)
    fmt = output_memory_format(input)
    acc = acc_dtype(input.dtype)
    matrix_t = lambda w: w.reshape(w.shape[0], w.shape[1]).t().contiguous()  # noqa: E731  (K, N) for the dots
    we = None if expand_weight is None else matrix_t(expand_weight)
    be = None if expand_bias is None else expand_bias.to(acc).contiguous()
    excite = None
    if se_fc1_weight is not None:  # (S, Chid), (S,), (Chid, S), (Chid,) in the accumulation dtype
        excite = tuple(t.reshape(t.shape[:2]).to(acc).contiguous() for t in se) + (se_activation, se_scale_activation)
    return inverted_residual_eval_fwd(input.contiguous(memory_format=fmt), we, be, dw_weight,
                                      dw_bias.to(acc).contiguous(),
                                      matrix_t(project_weight), project_bias.to(acc).contiguous(), stride, dilation,
                                      activation, residual, fmt, excite)
