"""pointwise_depthwise_bn_act_train: the expanded side of an inverted-residual block in training, as
one op with its fakes and kernels (schemas in csrc/library.cpp; autograd: csrc/autograd.cpp).

``act(BN2(dw(act(BN1(expand(x))))))``, both BatchNorms on batch statistics. Per layer, the ops
pointwise_conv2d_bn_act_train and depthwise_conv2d_bn_act_train would keep for backward, besides
the convs' outputs z1 and z2, BN1's output y1 (the depthwise conv's input, for its weight gradient).
Here y1 is recomputed from z1 where it is needed, so a block keeps one expanded tensor less:

* forward: pointwise_conv2d_stats (z1 and its statistics from the GEMM's epilogue), BN1 + act, the
  depthwise conv with its statistics (depthwise_conv2d_stats), the BN2 apply pass;
* backward: depthwise_conv2d_bn_act_train_backward (BN2's reduction, then the conv's backward) on
  the recomputed y1, then pointwise_conv2d_bn_act_train_backward (BN1, then the expand GEMMs) on its
  grad_input.

The ``_triton`` twin never writes y1: the depthwise kernels apply BN1 + act where they load z1, in
the forward and in the weight gradient (triton/depthwise_conv2d.py, X_BN), rounded to z1's dtype as
the apply kernel stores y1, so the values are those of the sequence above; in the forward that
saves the apply pass (a read and a write of the expanded tensor) and the conv's read of y1 becomes a
read of z1. Two switches, read at every call, run parts of the sequence above instead, for
benchmarks: MK_DW_INPUT_BN=0 (y1 written by the apply pass in the forward and recomputed in the
backward) and MK_DW_BN_FUSED=0 (BN2's grad_input by its own pass, and so the backward's sequence:
the input BatchNorm in the backward comes only with the fused backward's kernels).
The C++-backed op ("cuda" backend): on CUDA tensors a C++ kernel (csrc/cuda/depthwise_conv2d.cu)
whose tiled depthwise kernels apply BN1 + act where they stage z1 (TiledInputBn), likewise, with
the sequence above where they do not apply (NCHW, channel counts without 16-byte vectors, k7,
dilation); on CPU tensors the sequence above, which saves the memory and costs one apply pass in
backward.

The autograd of both twins is C++ (csrc/autograd.cpp, as every op's), which costs no Python per call.
"""

from __future__ import annotations

import torch

from ._common import (acc_dtype, bn_dx_fused, check_output_channels, check_output_sized, check_per_channel, dense,
                      input_bn_fused, like_weight, output_memory_format)
from .depthwise_conv2d import _acc_weight, check_depthwise_args, check_stats_count
from .pointwise_conv2d import check_output_batch_norm, check_pointwise_args


def check_pointwise_depthwise_args(input, expand_weight, expand_bn_weight, expand_bn_bias, dw_weight, dw_bn_weight,
                                   dw_bn_bias, stride, padding, dilation, eps, activation):
    """The checks every backend runs before launching, each naming its argument; returns
    (the expanded tensor's shape, the output's shape)."""
    hidden = check_pointwise_args(input, expand_weight, activation=activation, weight_name="expand_weight")
    N, _, H, W = input.shape
    if N != 0 and N * H * W <= 1:  # the expand BatchNorm's count (C++ twin: check_pointwise_depthwise)
        raise ValueError(f"input: Expected more than 1 value per channel when training, got input of size "
                         f"{tuple(input.shape)}")
    check_output_batch_norm(input, hidden, eps, expand_bn_weight=expand_bn_weight, expand_bn_bias=expand_bn_bias)
    z1 = input.new_empty(()).expand(N, hidden, H, W)  # the expand conv's output, as the checks see it
    out_hw = check_depthwise_args(z1, dw_weight, None, stride, padding, dilation, activation, weight_name="dw_weight")
    check_stats_count(z1, out_hw)
    check_per_channel(dw_bn_weight, "dw_bn_weight", z1)
    check_per_channel(dw_bn_bias, "dw_bn_bias", z1)
    return (N, hidden, H, W), (N, hidden, *out_hw)


def _empty(input, shape, dtype=None):
    return torch.empty(shape, dtype=dtype or input.dtype, device=input.device, memory_format=output_memory_format(input))


def _fake(input, expand_weight, expand_bn_weight, expand_bn_bias, dw_weight, dw_bn_weight, dw_bn_bias, *rest):
    hidden_shape, out_shape = check_pointwise_depthwise_args(input, expand_weight, expand_bn_weight, expand_bn_bias,
                                                             dw_weight, dw_bn_weight, dw_bn_bias, *rest)
    acc, C = acc_dtype(input.dtype), hidden_shape[1]
    stats = lambda: (input.new_empty(C, dtype=acc), input.new_empty(C, dtype=acc))  # noqa: E731
    return (_empty(input, out_shape), _empty(input, hidden_shape), *stats(), _empty(input, out_shape), *stats())


def _check_backward_args(grad_output, input, expand_weight, expand_bn_weight, expand_bn_bias, expand_out,
                         expand_mean, expand_var, dw_weight, dw_bn_weight, dw_bn_bias, dw_out, dw_mean, dw_var,
                         stride, padding, dilation, eps, activation, output_mask):
    hidden_shape, out_shape = check_pointwise_depthwise_args(input, expand_weight, expand_bn_weight, expand_bn_bias,
                                                             dw_weight, dw_bn_weight, dw_bn_bias, stride, padding,
                                                             dilation, eps, activation)
    check_output_sized(input, expand_out, "expand_out", hidden_shape)
    check_output_channels(input, expand_mean, "expand_mean", hidden_shape[1])
    check_output_channels(input, expand_var, "expand_var", hidden_shape[1])
    check_output_sized(input, grad_output, "grad_output", out_shape)
    check_output_sized(input, dw_out, "dw_out", out_shape)
    check_output_channels(input, dw_mean, "dw_mean", out_shape[1])
    check_output_channels(input, dw_var, "dw_var", out_shape[1])
    return hidden_shape


def _backward_fake(grad_output, input, expand_weight, expand_bn_weight, expand_bn_bias, expand_out, expand_mean,
                   expand_var, dw_weight, *rest):
    _check_backward_args(grad_output, input, expand_weight, expand_bn_weight, expand_bn_bias, expand_out, expand_mean,
                         expand_var, dw_weight, *rest)
    output_mask, acc, C = rest[-1], acc_dtype(input.dtype), expand_weight.shape[0]
    like = lambda t, wanted, fmt=torch.contiguous_format: (  # noqa: E731
        torch.empty_like(t, memory_format=fmt) if wanted else input.new_empty(0))
    sums = lambda: (input.new_empty(C, dtype=acc), input.new_empty(C, dtype=acc))  # noqa: E731
    return (like(input, output_mask[0], output_memory_format(input)), like(expand_weight, output_mask[1]), *sums(),
            like(dw_weight, output_mask[2]), *sums())


# ----------------------------------------------------------------------------- the kernels of each twin


def _ops(suffix: str):
    ns = torch.ops.mobilenet_kernels
    return (getattr(ns, f"pointwise_conv2d_stats{suffix}"), getattr(ns, f"batch_norm_act_eval{suffix}"),
            getattr(ns, f"depthwise_conv2d_stats{suffix}"), getattr(ns, f"depthwise_conv2d_bn_act_train_backward{suffix}"),
            getattr(ns, f"pointwise_conv2d_bn_act_train_backward{suffix}"))


def _make_kernels(suffix: str):
    """(forward, backward) of the ``suffix`` twin as the sequence of its per-layer ops."""
    pw_stats, bn_apply, dw_stats, dw_backward, pw_backward = _ops(suffix)

    def forward(input, expand_weight, expand_bn_weight, expand_bn_bias, dw_weight, dw_bn_weight, dw_bn_bias, stride,
                padding, dilation, eps, activation):
        check_pointwise_depthwise_args(input, expand_weight, expand_bn_weight, expand_bn_bias, dw_weight, dw_bn_weight,
                                       dw_bn_bias, stride, padding, dilation, eps, activation)
        z1, mean1, var1 = pw_stats(input, expand_weight)
        y1 = bn_apply(z1, mean1, var1, expand_bn_weight, expand_bn_bias, eps, activation)
        z2, mean2, var2 = dw_stats(y1, dw_weight, stride, padding, dilation)
        del y1  # not kept: the backward recomputes it
        out = bn_apply(z2, mean2, var2, dw_bn_weight, dw_bn_bias, eps, activation)
        return out, z1, mean1, var1, z2, mean2, var2

    def backward(grad_output, input, expand_weight, expand_bn_weight, expand_bn_bias, expand_out, expand_mean,
                 expand_var, dw_weight, dw_bn_weight, dw_bn_bias, dw_out, dw_mean, dw_var, stride, padding, dilation,
                 eps, activation, output_mask):
        _check_backward_args(grad_output, input, expand_weight, expand_bn_weight, expand_bn_bias, expand_out,
                             expand_mean, expand_var, dw_weight, dw_bn_weight, dw_bn_bias, dw_out, dw_mean, dw_var,
                             stride, padding, dilation, eps, activation, output_mask)
        y1 = bn_apply(expand_out, expand_mean, expand_var, expand_bn_weight, expand_bn_bias, eps, activation)
        grad_y1, grad_dw_weight, dw_sum_gxhat, dw_sum_g = dw_backward(
            grad_output, y1, dw_weight, dw_bn_weight, dw_bn_bias, dw_out, dw_mean, dw_var, stride, padding, dilation,
            eps, activation, [True, output_mask[2]])
        del y1
        grad_input, grad_expand_weight, expand_sum_gxhat, expand_sum_g = pw_backward(
            grad_y1, input, expand_weight, expand_bn_weight, expand_bn_bias, expand_out, expand_mean, expand_var, eps,
            activation, [output_mask[0], output_mask[1]])
        return grad_input, grad_expand_weight, expand_sum_gxhat, expand_sum_g, grad_dw_weight, dw_sum_gxhat, dw_sum_g

    return forward, backward


_forward, _backward = _make_kernels("")
_sequence_forward_triton, _sequence_backward_triton = _make_kernels("_triton")


def _triton_forward(input, expand_weight, expand_bn_weight, expand_bn_bias, dw_weight, dw_bn_weight, dw_bn_bias,
                    stride, padding, dilation, eps, activation):
    """The forward with BN1 + act applied where the depthwise kernel loads z1 (X_BN): y1 is never
    written."""
    if not input_bn_fused():
        return _sequence_forward_triton(input, expand_weight, expand_bn_weight, expand_bn_bias, dw_weight,
                                        dw_bn_weight, dw_bn_bias, stride, padding, dilation, eps, activation)
    from ..triton.batch_norm_act import Apply
    from ..triton.depthwise_conv2d import depthwise_conv2d_stats_fwd

    check_pointwise_depthwise_args(input, expand_weight, expand_bn_weight, expand_bn_bias, dw_weight, dw_bn_weight,
                                   dw_bn_bias, stride, padding, dilation, eps, activation)
    ns = torch.ops.mobilenet_kernels
    z1, mean1, var1 = ns.pointwise_conv2d_stats_triton(input, expand_weight)
    x_bn = Apply(z1, mean1, var1, expand_bn_weight, expand_bn_bias, eps, activation)
    z2, mean2, var2 = depthwise_conv2d_stats_fwd(dense(z1), _acc_weight(dw_weight), tuple(stride), tuple(padding),
                                                 tuple(dilation), output_memory_format(z1), x_bn=x_bn)
    out = ns.batch_norm_act_eval_triton(z2, mean2, var2, dw_bn_weight, dw_bn_bias, eps, activation)
    return out, z1, mean1, var1, z2, mean2, var2


def _triton_backward(grad_output, input, expand_weight, expand_bn_weight, expand_bn_bias, expand_out, expand_mean,
                     expand_var, dw_weight, dw_bn_weight, dw_bn_bias, dw_out, dw_mean, dw_var, stride, padding,
                     dilation, eps, activation, output_mask):
    """The backward with BN2's grad_input computed where the depthwise backward loads its
    grad_output (BN_DX) and BN1 + act applied where its weight gradient loads z1 (X_BN)."""
    args = (grad_output, input, expand_weight, expand_bn_weight, expand_bn_bias, expand_out, expand_mean, expand_var,
            dw_weight, dw_bn_weight, dw_bn_bias, dw_out, dw_mean, dw_var, stride, padding, dilation, eps, activation,
            output_mask)
    if not (bn_dx_fused() and input_bn_fused()):
        return _sequence_backward_triton(*args)
    from ..triton.batch_norm_act import Apply, TrainDx
    from ..triton.depthwise_conv2d import depthwise_conv2d_bwd

    _check_backward_args(*args)
    fmt = output_memory_format(expand_out)
    gy, z2, z1 = (t.contiguous(memory_format=fmt) for t in (grad_output, dw_out, expand_out))
    dx = TrainDx(gy, z2, dw_mean, dw_var, dw_bn_weight, dw_bn_bias, eps, activation)
    x_bn = Apply(z1, expand_mean, expand_var, expand_bn_weight, expand_bn_bias, eps, activation)
    grad_y1, grad_dw_weight, _ = depthwise_conv2d_bwd(
        gy, z1, _acc_weight(dw_weight), tuple(stride), tuple(padding), tuple(dilation), fmt,
        (True, bool(output_mask[2]), False), bn_dx=(z2, dx), x_bn=x_bn)
    if output_mask[2]:
        grad_dw_weight = like_weight(grad_dw_weight, dw_weight)
    grad_input, grad_expand_weight, expand_sum_gxhat, expand_sum_g = \
        torch.ops.mobilenet_kernels.pointwise_conv2d_bn_act_train_backward_triton(
            grad_y1, input, expand_weight, expand_bn_weight, expand_bn_bias, expand_out, expand_mean, expand_var, eps,
            activation, [output_mask[0], output_mask[1]])
    return (grad_input, grad_expand_weight, expand_sum_gxhat, expand_sum_g, grad_dw_weight, dx.sum_gxhat, dx.sum_g)


# The C++-backed op's CUDA kernels are C++ (csrc/cuda/depthwise_conv2d.cu); its CPU kernels and the
# Triton twin's are these.
for _suffix, _kernels, _devices in (("", (_forward, _backward), ("cpu",)),
                                    ("_triton", (_triton_forward, _triton_backward), ("cpu", "cuda"))):
    _name = f"mobilenet_kernels::pointwise_depthwise_bn_act_train{_suffix}"
    torch.library.register_fake(_name, _fake)
    torch.library.register_fake(f"mobilenet_kernels::pointwise_depthwise_bn_act_train_backward{_suffix}",
                                _backward_fake)
    torch.library.register_kernel(_name, _devices, _kernels[0])
    torch.library.register_kernel(f"mobilenet_kernels::pointwise_depthwise_bn_act_train_backward{_suffix}",
                                  _devices, _kernels[1])
