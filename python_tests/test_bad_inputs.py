"""Bad input (issue 9): the functional ops, the kernel ops called directly, the modules, the models
and convert() reject malformed arguments with an exception whose message names the argument, on
every backend where the case applies and before any kernel runs; a failing call modifies nothing
(running statistics included) and never takes the process down. NaN/Inf propagate as in PyTorch;
an empty batch works for every op and for a model forward.

The second device of the device-mismatch cases is "meta" next to CPU tensors (every check runs
before any kernel, so a meta tensor is rejected like one on another GPU) and "cpu" next to CUDA
tensors.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.ops import SqueezeExcitation as TVSqueezeExcitation

import mobilenet_kernels as mk
import mobilenet_kernels.functional as MF
from mobilenet_kernels import _extension, backends
from mobilenet_kernels.activations import ACTIVATIONS, apply_activation
from mobilenet_kernels.models._layers import ConvBNAct
from mobilenet_kernels.nn import BatchNormAct2d, DepthwiseConv2d, SqueezeExcitation

from conftest import BACKENDS, skip_unless_usable

ns = torch.ops.mobilenet_kernels
C = 4  # channels of every op case
BUILDERS = [mk.mobilenet_v1, mk.mobilenet_v2, mk.mobilenet_v3_large, mk.mobilenet_v3_small]


def other_device(device: str) -> str:
    return "meta" if device == "cpu" else "cpu"


def watchable(tensors) -> list[torch.Tensor]:
    """The tensors whose values a failing call must leave alone (meta tensors have none)."""
    return [t for t in tensors if isinstance(t, torch.Tensor) and t.device.type != "meta"]


def assert_raises_and_modifies_nothing(call, watched, exc, match):
    before = [t.detach().clone() for t in watched]
    with pytest.raises(exc, match=match):
        call()
    for i, (t, b) in enumerate(zip(watched, before)):
        assert torch.equal(t, b), f"argument {i} (shape {tuple(t.shape)}) was modified by the failing call"


# ----------------------------------------------------------------------------- the functional ops
#
# Each op has a set of good arguments; a case overrides some of them. ``kind`` picks the op (and
# for the BatchNorm ops, the mode); the override is a function of (device, other device).


def good_args(kind: str, device: str) -> dict:
    g = torch.Generator().manual_seed(0)
    r = lambda *shape: torch.randn(*shape, generator=g).to(device)  # noqa: E731
    bn = dict(running_mean=r(C) * 0.1, running_var=torch.rand(C, generator=g).to(device) + 0.5,
              weight=torch.rand(C, generator=g).to(device) + 0.5, bias=r(C), eps=1e-5, activation="relu")
    if kind in ("bn_eval", "bn_train"):
        return dict(input=r(2, C, 3, 3), **bn)
    conv = dict(input=r(2, C, 5, 5), conv_weight=r(C, 1, 3, 3), conv_bias=r(C), stride=1, padding=1, dilation=1)
    if kind == "dw":
        return dict(conv, activation="relu")
    if kind in ("dwbn_eval", "dwbn_train"):
        return dict(conv, **bn)
    assert kind == "se"
    return dict(input=r(2, C, 3, 3), fc1_weight=r(2, C, 1, 1), fc1_bias=r(2), fc2_weight=r(C, 2, 1, 1), fc2_bias=r(C),
                activation="relu", scale_activation="hardsigmoid")


def call_op(kind: str, a: dict, backend: str):
    if kind in ("bn_eval", "bn_train"):
        return MF.batch_norm_act(a["input"], a["running_mean"], a["running_var"], a["weight"], a["bias"],
                                 kind == "bn_train", 0.1, a["eps"], a["activation"], backend=backend)
    if kind == "dw":
        return MF.depthwise_conv2d(a["input"], a["conv_weight"], a["conv_bias"], a["stride"], a["padding"],
                                   a["dilation"], activation=a["activation"], backend=backend)
    if kind in ("dwbn_eval", "dwbn_train"):
        return MF.depthwise_conv2d_bn_act(a["input"], a["conv_weight"], a["conv_bias"], a["stride"], a["padding"],
                                          a["dilation"], a["running_mean"], a["running_var"], a["weight"], a["bias"],
                                          kind == "dwbn_train", 0.1, a["eps"], a["activation"], backend=backend)
    return MF.squeeze_excite(a["input"], a["fc1_weight"], a["fc1_bias"], a["fc2_weight"], a["fc2_bias"],
                             activation=a["activation"], scale_activation=a["scale_activation"], backend=backend)


Z = lambda **kw: (lambda d, o: kw)  # noqa: E731  (a device-independent override)

# (kind, id, override(device, other device), exception, message pattern, {backend: xfail reason})
OP_CASES = [
    # --- batch_norm_act, eval and training
    ("bn_eval", "input-rank-1", lambda d, o: dict(input=torch.randn(C, device=d)), ValueError, "input", {}),
    ("bn_train", "input-rank-1", lambda d, o: dict(input=torch.randn(C, device=d)), ValueError, "input", {}),
    ("bn_eval", "input-int", lambda d, o: dict(input=torch.randint(0, 3, (2, C, 3, 3), device=d)), TypeError, "input", {}),
    ("bn_train", "input-bool", lambda d, o: dict(input=torch.ones(2, C, 3, 3, device=d, dtype=torch.bool)), TypeError,
     "input", {}),
    ("bn_eval", "input-complex", lambda d, o: dict(input=torch.randn(2, C, 3, 3, device=d, dtype=torch.complex64)),
     TypeError, "input", {}),
    ("bn_eval", "channel-mismatch", lambda d, o: dict(input=torch.randn(2, C + 1, 3, 3, device=d)), ValueError,
     "running_mean", {}),
    ("bn_train", "channel-mismatch", lambda d, o: dict(input=torch.randn(2, C + 1, 3, 3, device=d)), ValueError,
     "running_mean", {}),
    ("bn_eval", "running_mean-size", lambda d, o: dict(running_mean=torch.zeros(C + 1, device=d)), ValueError,
     "running_mean", {}),
    ("bn_train", "running_var-size", lambda d, o: dict(running_var=torch.ones(C - 1, device=d)), ValueError,
     "running_var", {}),
    ("bn_train", "running_mean-2d", lambda d, o: dict(running_mean=torch.zeros(2, 2, device=d)), ValueError,
     "running_mean", {}),
    ("bn_train", "weight-size", lambda d, o: dict(weight=torch.ones(C + 2, device=d)), ValueError, "weight", {}),
    ("bn_eval", "bias-size", lambda d, o: dict(bias=torch.zeros(C - 1, device=d)), ValueError, "bias", {}),
    ("bn_train", "bias-size", lambda d, o: dict(bias=torch.zeros(C - 1, device=d)), ValueError, "bias", {}),
    ("bn_eval", "weight-int", lambda d, o: dict(weight=torch.ones(C, device=d, dtype=torch.int64)), TypeError, "weight", {}),
    ("bn_train", "running_mean-int", lambda d, o: dict(running_mean=torch.zeros(C, device=d, dtype=torch.int64)),
     TypeError, "running_mean", {}),
    ("bn_eval", "running_mean-device", lambda d, o: dict(running_mean=torch.zeros(C, device=o)), ValueError,
     "running_mean", {}),
    ("bn_train", "running_var-device", lambda d, o: dict(running_var=torch.ones(C, device=o)), ValueError,
     "running_var", {}),
    ("bn_train", "weight-device", lambda d, o: dict(weight=torch.ones(C, device=o)), ValueError, "weight", {}),
    ("bn_eval", "eps-negative", Z(eps=-1e-3), ValueError, "eps", {}),
    ("bn_train", "eps-negative", Z(eps=-1e-3), ValueError, "eps", {}),
    ("bn_eval", "activation-unknown", Z(activation="gelu"), ValueError, "activation", {}),
    ("bn_train", "activation-unknown", Z(activation="ReLU"), ValueError, "activation", {}),
    ("bn_eval", "running-stats-missing", Z(running_mean=None, running_var=None), ValueError, "running_mean", {}),
    ("bn_train", "one-value-per-channel", lambda d, o: dict(input=torch.randn(1, C, 1, 1, device=d)), ValueError,
     "more than 1 value per channel", {}),
    # --- depthwise_conv2d
    ("dw", "input-rank-3", lambda d, o: dict(input=torch.randn(C, 5, 5, device=d)), ValueError, "input", {}),
    ("dw", "input-rank-5", lambda d, o: dict(input=torch.randn(1, C, 5, 5, 1, device=d)), ValueError, "input", {}),
    ("dw", "input-int", lambda d, o: dict(input=torch.randint(0, 3, (2, C, 5, 5), device=d)), TypeError, "input", {}),
    ("dw", "input-bool", lambda d, o: dict(input=torch.zeros(2, C, 5, 5, device=d, dtype=torch.bool)), TypeError,
     "input", {}),
    ("dw", "input-complex", lambda d, o: dict(input=torch.randn(2, C, 5, 5, device=d, dtype=torch.complex64)),
     TypeError, "input", {}),
    ("dw", "weight-not-depthwise", lambda d, o: dict(conv_weight=torch.randn(C, 2, 3, 3, device=d)), ValueError,
     "weight", {}),
    ("dw", "weight-rank-3", lambda d, o: dict(conv_weight=torch.randn(C, 3, 3, device=d)), ValueError, "weight", {}),
    ("dw", "weight-empty-kernel", lambda d, o: dict(conv_weight=torch.randn(C, 1, 0, 3, device=d)), ValueError,
     "weight", {}),
    ("dw", "channel-mismatch", lambda d, o: dict(input=torch.randn(2, C + 1, 5, 5, device=d)), ValueError,
     "weight", {}),
    ("dw", "bias-size", lambda d, o: dict(conv_bias=torch.randn(C + 1, device=d)), ValueError, "bias", {}),
    ("dw", "weight-dtype-mismatch", lambda d, o: dict(conv_weight=torch.randn(C, 1, 3, 3, device=d, dtype=torch.float64)),
     TypeError, "weight", {}),
    ("dw", "bias-dtype-mismatch", lambda d, o: dict(conv_bias=torch.randn(C, device=d, dtype=torch.float16)),
     TypeError, "bias", {}),
    ("dw", "weight-int", lambda d, o: dict(conv_weight=torch.ones(C, 1, 3, 3, device=d, dtype=torch.int32)), TypeError,
     "weight", {}),
    ("dw", "weight-device", lambda d, o: dict(conv_weight=torch.randn(C, 1, 3, 3, device=o)), ValueError, "weight", {}),
    ("dw", "bias-device", lambda d, o: dict(conv_bias=torch.randn(C, device=o)), ValueError, "bias", {}),
    ("dw", "stride-0", Z(stride=0), ValueError, "stride", {}),
    ("dw", "stride-negative", Z(stride=(1, -2)), ValueError, "stride", {}),
    ("dw", "stride-3-values", Z(stride=(1, 1, 1)), ValueError, "stride", {}),
    ("dw", "stride-float", Z(stride=1.5), (TypeError, ValueError), "stride",
     {}),
    ("dw", "dilation-0", Z(dilation=0), ValueError, "dilation", {}),
    ("dw", "dilation-negative", Z(dilation=(-1, 1)), ValueError, "dilation", {}),
    ("dw", "padding-negative", Z(padding=-1), ValueError, "padding", {}),
    ("dw", "padding-negative-w", Z(padding=(0, -3)), ValueError, "padding", {}),
    ("dw", "input-smaller-than-kernel", lambda d, o: dict(input=torch.randn(2, C, 2, 2, device=d), padding=0),
     ValueError, "input", {}),
    ("dw", "input-smaller-than-dilated-kernel", lambda d, o: dict(input=torch.randn(2, C, 4, 9, device=d), padding=0,
                                                                  dilation=(2, 1)), ValueError, "input", {}),
    ("dw", "input-zero-height", lambda d, o: dict(input=torch.randn(2, C, 0, 5, device=d), padding=0), ValueError,
     "input", {}),
    ("dw", "activation-unknown", Z(activation="tanh"), ValueError, "activation", {}),
    # --- depthwise_conv2d + BatchNorm + activation, eval and training
    ("dwbn_eval", "conv-weight-shape", lambda d, o: dict(conv_weight=torch.randn(C, 2, 3, 3, device=d)), ValueError,
     "weight", {}),
    ("dwbn_train", "conv-weight-shape", lambda d, o: dict(conv_weight=torch.randn(C + 1, 1, 3, 3, device=d)),
     ValueError, "weight", {}),
    ("dwbn_train", "conv-bias-size", lambda d, o: dict(conv_bias=torch.randn(C + 1, device=d)), ValueError, "bias", {}),
    ("dwbn_eval", "running_mean-size", lambda d, o: dict(running_mean=torch.zeros(C + 1, device=d)), ValueError,
     "running_mean", {}),
    ("dwbn_train", "running_mean-size", lambda d, o: dict(running_mean=torch.zeros(C + 1, device=d)),
     (ValueError, RuntimeError), "running_mean", {}),
    ("dwbn_train", "running_var-size", lambda d, o: dict(running_var=torch.ones(C - 1, device=d)), (ValueError, RuntimeError),
     "running_var", {}),
    ("dwbn_eval", "weight-size", lambda d, o: dict(weight=torch.ones(C + 1, device=d)), ValueError, "weight", {}),
    ("dwbn_train", "weight-size", lambda d, o: dict(weight=torch.ones(C + 1, device=d)), (ValueError, RuntimeError),
     "weight", {}),
    ("dwbn_eval", "bias-size", lambda d, o: dict(bias=torch.zeros(C - 1, device=d)), ValueError, "bias", {}),
    ("dwbn_train", "bias-size", lambda d, o: dict(bias=torch.zeros(C - 1, device=d)), (ValueError, RuntimeError),
     "bias", {}),
    ("dwbn_eval", "running_mean-int", lambda d, o: dict(running_mean=torch.zeros(C, device=d, dtype=torch.int64)),
     TypeError, "running_mean", {}),
    ("dwbn_train", "running_mean-int", lambda d, o: dict(running_mean=torch.zeros(C, device=d, dtype=torch.int64)),
     TypeError, "running_mean", {}),
    ("dwbn_eval", "running_var-device", lambda d, o: dict(running_var=torch.ones(C, device=o)), ValueError,
     "running_var", {}),
    ("dwbn_train", "running_mean-device", lambda d, o: dict(running_mean=torch.zeros(C, device=o)), ValueError,
     "running_mean", {}),
    ("dwbn_train", "weight-device", lambda d, o: dict(weight=torch.ones(C, device=o)), ValueError, "weight", {}),
    ("dwbn_eval", "eps-negative", Z(eps=-1.0), ValueError, "eps", {}),
    ("dwbn_train", "eps-negative", Z(eps=-1.0), ValueError, "eps", {}),
    ("dwbn_train", "stride-0", Z(stride=(0, 1)), ValueError, "stride", {}),
    ("dwbn_eval", "dilation-0", Z(dilation=0), ValueError, "dilation", {}),
    ("dwbn_train", "padding-negative", Z(padding=-2), ValueError, "padding", {}),
    ("dwbn_train", "input-smaller-than-kernel", lambda d, o: dict(input=torch.randn(2, C, 1, 5, device=d), padding=0),
     ValueError, "input", {}),
    ("dwbn_train", "input-int", lambda d, o: dict(input=torch.randint(0, 3, (2, C, 5, 5), device=d)), TypeError,
     "input", {}),
    ("dwbn_train", "conv-weight-dtype-mismatch",
     lambda d, o: dict(conv_weight=torch.randn(C, 1, 3, 3, device=d, dtype=torch.float64)), TypeError, "weight", {}),
    ("dwbn_eval", "activation-unknown", Z(activation="gelu"), ValueError, "activation", {}),
    ("dwbn_train", "activation-unknown", Z(activation="swish"), ValueError, "activation", {}),
    ("dwbn_eval", "running-stats-missing", Z(running_mean=None, running_var=None), ValueError, "running_mean", {}),
    ("dwbn_train", "one-value-per-channel", lambda d, o: dict(input=torch.randn(1, C, 3, 3, device=d), padding=0),
     ValueError, "more than 1 value per channel", {}),
    # --- squeeze_excite
    ("se", "input-rank-3", lambda d, o: dict(input=torch.randn(C, 3, 3, device=d)), ValueError, "input", {}),
    ("se", "input-int", lambda d, o: dict(input=torch.randint(0, 3, (2, C, 3, 3), device=d)), TypeError, "input", {}),
    ("se", "input-bool", lambda d, o: dict(input=torch.ones(2, C, 3, 3, device=d, dtype=torch.bool)), TypeError,
     "input", {}),
    ("se", "input-complex", lambda d, o: dict(input=torch.randn(2, C, 3, 3, device=d, dtype=torch.complex64)),
     TypeError, "input", {}),
    ("se", "input-empty-spatial", lambda d, o: dict(input=torch.randn(2, C, 3, 0, device=d)), ValueError, "input", {}),
    ("se", "input-no-channels", lambda d, o: dict(input=torch.randn(2, 0, 3, 3, device=d),
                                                  fc1_weight=torch.randn(2, 0, 1, 1, device=d),
                                                  fc2_weight=torch.randn(0, 2, 1, 1, device=d),
                                                  fc2_bias=torch.randn(0, device=d)), ValueError, "input", {}),
    ("se", "channel-mismatch", lambda d, o: dict(input=torch.randn(2, C + 1, 3, 3, device=d)), ValueError,
     "fc1_weight", {}),
    ("se", "fc1-fc2-squeeze-mismatch", lambda d, o: dict(fc2_weight=torch.randn(C, 3, 1, 1, device=d)), ValueError,
     "fc2_weight", {}),
    ("se", "fc2-channel-mismatch", lambda d, o: dict(fc2_weight=torch.randn(C + 1, 2, 1, 1, device=d)), ValueError,
     "fc2_weight", {}),
    ("se", "fc1-not-1x1", lambda d, o: dict(fc1_weight=torch.randn(2, C, 3, 3, device=d)), ValueError, "fc1_weight", {}),
    ("se", "fc1_bias-size", lambda d, o: dict(fc1_bias=torch.randn(3, device=d)), ValueError, "fc1_bias", {}),
    ("se", "fc2_bias-size", lambda d, o: dict(fc2_bias=torch.randn(C + 1, device=d)), ValueError, "fc2_bias", {}),
    ("se", "param-dtype-mismatch", lambda d, o: dict(fc1_weight=torch.randn(2, C, 1, 1, device=d, dtype=torch.float16)),
     TypeError, "fc1_weight", {}),
    ("se", "input-float64-params-float32", lambda d, o: dict(input=torch.randn(2, C, 3, 3, device=d, dtype=torch.float64)),
     TypeError, "fc1_weight", {}),
    ("se", "fc2_bias-int", lambda d, o: dict(fc2_bias=torch.zeros(C, device=d, dtype=torch.int64)), TypeError,
     "fc2_bias", {}),
    ("se", "fc2_bias-device", lambda d, o: dict(fc2_bias=torch.randn(C, device=o)), ValueError, "fc2_bias", {}),
    ("se", "fc1_weight-device", lambda d, o: dict(fc1_weight=torch.randn(2, C, 1, 1, device=o)), ValueError,
     "fc1_weight", {}),
    ("se", "activation-unknown", Z(activation="gelu"), ValueError, "activation", {}),
    ("se", "scale_activation-unknown", Z(scale_activation="softmax"), ValueError, "scale_activation", {}),
]


def _op_params():
    for kind, name, override, exc, match, xfails in OP_CASES:
        for backend in BACKENDS:
            marks = [pytest.mark.xfail(strict=True, reason=xfails[backend])] if backend in xfails else []
            yield pytest.param(kind, override, exc, match, backend, id=f"{kind}-{name}-{backend}", marks=marks)


@pytest.mark.parametrize("kind, override, exc, match, backend", list(_op_params()))
def test_functional_op_rejects_bad_argument(kind, override, exc, match, backend, device):
    """The error names the argument; nothing passed in (running statistics included) is modified."""
    skip_unless_usable(backend, device)
    args = {**good_args(kind, device), **override(device, other_device(device))}
    assert_raises_and_modifies_nothing(lambda: call_op(kind, args, backend), watchable(args.values()), exc, match)


@pytest.mark.parametrize("kind", ["bn_eval", "bn_train", "dw", "dwbn_eval", "dwbn_train", "se"])
@pytest.mark.parametrize("backend", ["gpu", "cudnn", "Triton", ""])
def test_functional_op_rejects_unknown_backend(kind, backend):
    args = good_args(kind, "cpu")
    assert_raises_and_modifies_nothing(lambda: call_op(kind, args, backend), watchable(args.values()), ValueError,
                                       "backend")


@pytest.mark.parametrize("kind", ["bn_eval", "bn_train", "dw", "dwbn_eval", "dwbn_train", "se"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_functional_op_rejects_input_on_an_unsupported_device(kind, backend):
    """Input on the meta device: a RuntimeError naming the backend and the device type."""
    args = good_args(kind, "cpu")
    args = {k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    with pytest.raises(RuntimeError, match=f"backend '{backend}'.*meta"):
        call_op(kind, args, backend)


@pytest.mark.parametrize("kind", ["bn_eval", "dw", "se"])
def test_functional_op_without_the_cpu_kernels(kind, monkeypatch):
    """A build without the C++ CPU kernels (MK_SKIP_CPU_KERNELS=1, the GPU suite's): the "cuda"
    backend refuses CPU tensors with a RuntimeError saying why, and backend=None runs the torch
    reference there instead of reaching a missing kernel."""
    monkeypatch.setattr(_extension, "CPU_BUILT", False)
    args = good_args(kind, "cpu")
    assert "cuda" not in backends.available("cpu")
    with pytest.raises(RuntimeError, match=re.escape("backend 'cuda' cannot run on cpu tensors here: the C++ CPU "
                                                     "kernels were not built (MK_SKIP_CPU_KERNELS=1")):
        call_op(kind, args, "cuda")
    assert backends.resolve(None, args["input"]) == "torch"
    torch.testing.assert_close(call_op(kind, args, None), call_op(kind, args, "torch"), rtol=0, atol=0)


# ----------------------------------------------------------------------------- the kernel ops, called directly
#
# torch.ops.mobilenet_kernels.* (C++ TORCH_CHECKs for the C++ ops, the same Python checks for the
# _triton twins) check their own arguments: the backward ops and the running-stats update, which
# the functional layer never calls with user arguments, included.


def _direct_cases(device, suffix):
    """(id, call, watched, exception, pattern, xfail reason or None) for direct op calls."""
    o = other_device(device)
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g).to(device)  # noqa: E731
    x, w = r(2, C, 5, 5), r(C, 1, 3, 3)
    rm, rv, gw, gb = r(C) * 0.1, torch.rand(C, generator=g).to(device) + 0.5, torch.rand(C, generator=g).to(device) + 0.5, r(C)
    se_params = (r(2, C, 1, 1), r(2), r(C, 2, 1, 1), r(C))
    op = lambda name: getattr(ns, name + suffix)  # noqa: E731
    one, mask = [1, 1], [True, True, True]
    cases = [
        ("bn_eval_backward-grad-shape", lambda: op("batch_norm_act_eval_backward")(r(2, C, 5, 4), x, rm, rv, gw, gb, 1e-5, "relu"),
         ValueError, "grad_output"),
        ("bn_eval_backward-grad-dtype", lambda: op("batch_norm_act_eval_backward")(x.double(), x, rm, rv, gw, gb, 1e-5, "relu"),
         TypeError, "grad_output"),
        ("bn_eval_backward-running_var-size", lambda: op("batch_norm_act_eval_backward")(x, x, rm, rv[:2], gw, gb, 1e-5, "relu"),
         ValueError, "running_var"),
        ("bn_train-weight-size", lambda: op("batch_norm_act_train")(x, gw[:3], gb, 1e-5, "relu"), ValueError, "weight"),
        ("bn_train-input-int", lambda: op("batch_norm_act_train")(x.long(), gw, gb, 1e-5, "relu"), TypeError, "input"),
        ("bn_train-bias-device", lambda: op("batch_norm_act_train")(x, gw, gb.to(o), 1e-5, "relu"), ValueError, "bias"),
        ("bn_train-one-value", lambda: op("batch_norm_act_train")(r(1, C, 1, 1), gw, gb, 1e-5, "relu"), ValueError,
         "more than 1 value per channel"),
        ("bn_train_backward-grad-shape", lambda: op("batch_norm_act_train_backward")(x[:1], x, gw, gb, rm, rv, 1e-5, "relu"),
         ValueError, "grad_output"),
        ("bn_train_backward-activation", lambda: op("batch_norm_act_train_backward")(x, x, gw, gb, rm, rv, 1e-5, "elu"),
         ValueError, "activation"),
        ("dw_backward-grad-shape", lambda: op("depthwise_conv2d_backward")(r(2, C, 4, 4), x, w, one, one, one, mask),
         ValueError, "grad_output"),
        ("dw_backward-grad-dtype", lambda: op("depthwise_conv2d_backward")(x.double(), x, w, one, one, one, mask),
         TypeError, "grad_output"),
        ("dw_backward-stride-0", lambda: op("depthwise_conv2d_backward")(x, x, w, [0, 1], one, one, mask), ValueError,
         "stride"),
        ("dw_backward-weight-channels", lambda: op("depthwise_conv2d_backward")(x, x, w[:3], one, one, one, mask),
         ValueError, "weight"),
        ("dw_stats-padding-negative", lambda: op("depthwise_conv2d_stats")(x, w, one, [-1, 1], one), ValueError, "padding"),
        ("dw_stats-dilation-0", lambda: op("depthwise_conv2d_stats")(x, w, one, one, [1, 0]), ValueError, "dilation"),
        ("dw_stats-one-value", lambda: op("depthwise_conv2d_stats")(r(1, C, 3, 3), w, one, [0, 0], one), ValueError,
         "more than 1 value per channel"),
        ("dw-weight-device", lambda: op("depthwise_conv2d")(x, w.to(o), None, one, one, one, "relu"), ValueError, "weight"),
        ("dwbn_train-weight-size", lambda: op("depthwise_conv2d_bn_act_train")(x, w, gw[:3], gb, one, one, one, 1e-5, "relu"),
         ValueError, "weight"),
        ("dwbn_train-eps", lambda: op("depthwise_conv2d_bn_act_train")(x, w, gw, gb, one, one, one, -1.0, "relu"),
         ValueError, "eps"),
        ("dwbn_train-activation", lambda: op("depthwise_conv2d_bn_act_train")(x, w, gw, gb, one, one, one, 1e-5, "gelu"),
         ValueError, "activation"),
        ("dwbn_train_backward-conv_out-shape", lambda: op("depthwise_conv2d_bn_act_train_backward")(
            x, x, w, gw, gb, x[:, :, :4], rm, rv, one, one, one, 1e-5, "relu", [True, True]), ValueError, "conv_out"),
        ("dwbn_train_backward-mean-size", lambda: op("depthwise_conv2d_bn_act_train_backward")(
            x, x, w, gw, gb, x, rm[:3], rv, one, one, one, 1e-5, "relu", [True, True]), ValueError, "mean"),
        ("dwbn_train_backward-grad-device", lambda: op("depthwise_conv2d_bn_act_train_backward")(
            x.to(o), x, w, gw, gb, x, rm, rv, one, one, one, 1e-5, "relu", [True, True]), ValueError, "grad_output"),
        ("pwbn_train_backward-var-dtype", lambda: op("pointwise_conv2d_bn_act_train_backward")(
            x, x, r(C, C, 1, 1), gw, gb, x, rm, rv.long(), 1e-5, "relu", [True, True]), TypeError, "var"),
        ("se_backward-pooled-shape", lambda: op("squeeze_excite_backward")(x, x, r(2, 3), *se_params, "relu", "hardsigmoid"),
         ValueError, "pooled"),
        ("se_backward-grad-shape", lambda: op("squeeze_excite_backward")(x[:1], x, r(2, C), *se_params, "relu", "hardsigmoid"),
         ValueError, "grad_output"),
        ("se-fc2_bias-size", lambda: op("squeeze_excite")(x, *se_params[:3], r(C + 1), "relu", "hardsigmoid"),
         ValueError, "fc2_bias"),
    ]
    out = [(name, call, [x, w, rm, rv, gw, gb, *se_params], exc, match, None) for name, call, exc, match in cases]
    if suffix == "":  # batch_norm_update_stats has no _triton twin
        upd = ns.batch_norm_update_stats
        out += [
            ("update_stats-mean-size", lambda: upd(rm, rv, r(C + 1), rv.clone(), 10, 0.1), [rm, rv], ValueError,
             "running_mean", None),
            ("update_stats-count-1", lambda: upd(rm, rv, r(C), rv.clone(), 1, 0.1), [rm, rv], ValueError, "count", None),
            ("update_stats-count-0", lambda: upd(rm, rv, r(C), rv.clone(), 0, 0.1), [rm, rv], ValueError, "count", None),
            ("update_stats-running_var-int", lambda: upd(rm, rv.long(), r(C), rv.clone(), 10, 0.1), [rm, rv], TypeError,
             "running_var", None),
            ("update_stats-var-device", lambda: upd(rm, rv, r(C), torch.rand(C, device=o), 10, 0.1), [rm, rv],
             ValueError, "var", None),
        ]
    return out


_DIRECT_IDS = [case[0] for case in _direct_cases("cpu", "")]
_DIRECT_TRITON_IDS = [case[0] for case in _direct_cases("cpu", "_triton")]


def _direct_params():
    for suffix, backend, ids in (("", "cuda", _DIRECT_IDS), ("_triton", "triton", _DIRECT_TRITON_IDS)):
        for i, name in enumerate(ids):
            yield pytest.param(suffix, backend, i, id=f"{name}-{backend}")


@pytest.mark.parametrize("suffix, backend, index", list(_direct_params()))
def test_kernel_op_called_directly_rejects_bad_argument(suffix, backend, index, device):
    skip_unless_usable(backend, device)
    name, call, watched, exc, match, _ = _direct_cases(device, suffix)[index]
    assert_raises_and_modifies_nothing(call, watchable(watched), exc, match)


_CRASH_PROBE = """
import sys, torch, mobilenet_kernels
ns = torch.ops.mobilenet_kernels
for d in sys.argv[1:]:
    x, w = torch.randn(2, 4, 5, 5, device=d), torch.randn(4, 1, 3, 3, device=d)
    m, v = torch.zeros(4, device=d), torch.ones(4, device=d)
    ns.depthwise_conv2d(x, w, None, [1, 1], [1, 1], [1, 1], "relu")  # a kernel launch first
    calls = {
        "bn_eval-running_mean": lambda: ns.batch_norm_act_eval(x, m[:3], v, None, None, 1e-5, "relu"),
        "bn_train-activation": lambda: ns.batch_norm_act_train(x, None, None, 1e-5, "gelu"),
        "bn_train_backward-grad": lambda: ns.batch_norm_act_train_backward(x[:1], x, None, None, m, v, 1e-5, "relu"),
        "update_stats-count": lambda: ns.batch_norm_update_stats(m.clone(), v.clone(), m, v, 1, 0.1),
        "dw-stride": lambda: ns.depthwise_conv2d(x, w, None, [0, 1], [1, 1], [1, 1], "relu"),
        "dw-input-int": lambda: ns.depthwise_conv2d(x.long(), w, None, [1, 1], [1, 1], [1, 1], "relu"),
        "dw_backward-grad": lambda: ns.depthwise_conv2d_backward(x[:, :, :2], x, w, [1, 1], [1, 1], [1, 1], [True] * 3),
        "dwbn_train-eps": lambda: ns.depthwise_conv2d_bn_act_train(x, w, None, None, [1, 1], [1, 1], [1, 1], -1.0, "relu"),
        "dwbn_train_backward-mean": lambda: ns.depthwise_conv2d_bn_act_train_backward(
            x, x, w, None, None, x, m[:3], v, [1, 1], [1, 1], [1, 1], 1e-5, "relu", [True, True]),
        "se-fc1": lambda: ns.squeeze_excite(x, w, m[:1], w, m, "relu", "sigmoid"),
    }
    for name, call in calls.items():
        try:
            call()
            print(d, name, "NO ERROR")
        except (ValueError, TypeError, RuntimeError, IndexError) as e:
            print(d, name, "raised", type(e).__name__, str(e).splitlines()[0][:120])
    ns.depthwise_conv2d(x, w, None, [1, 1], [1, 1], [1, 1], "relu")  # and the process still launches
    if d == "cuda":
        torch.cuda.synchronize()
print("alive")
"""


@pytest.mark.gpu_suite
def test_failing_kernel_op_calls_do_not_take_the_process_down():
    """In a fresh interpreter (a crash there cannot take this test run down with it): C++ argument
    checks that throw, on CPU tensors (where the C++ CPU kernels are built) and on CUDA tensors
    where there is a GPU, after a kernel launch, all arrive as Python exceptions, and the process
    goes on launching kernels."""
    devices = [d for d in ("cpu", "cuda") if backends.unusable_reason("cuda", d) is None
               and (d == "cpu" or torch.cuda.is_available())]
    if not devices:
        skip_unless_usable("cuda", "cpu")  # says why
    result = subprocess.run([sys.executable, "-c", _CRASH_PROBE, *devices], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f"the probe died with {result.returncode}: {result.stderr[-3000:]}"
    lines = result.stdout.strip().splitlines()
    assert lines and lines[-1] == "alive", result.stdout[-3000:]
    assert not [line for line in lines if line.endswith("NO ERROR")], result.stdout
    # The message is whole: the numbers c10::str formats come out (a static libstdc++ copy in _C
    # cut it short at the first integer, or crashed there; see setup.py).
    expected = "bn_eval-running_mean raised ValueError running_mean: expected shape (4,) to match input channels, got [3]"
    assert f"{devices[0]} {expected}" in lines, result.stdout


@pytest.mark.gpu_suite
def test_extension_uses_the_cxx_runtime_torch_loaded():
    """_C resolves the C++ runtime (__cxa_throw, the personality routine) in the libstdc++ that
    libtorch uses, not in a copy linked into itself: a static copy whose functions run on the shared
    copy's data crashed the first error message that formatted an integer (GPU run 4)."""
    if not _extension.LOADED:
        pytest.skip(f"mobilenet_kernels._C failed to load: {_extension.LOAD_ERROR}")
    if not sys.platform.startswith("linux"):
        pytest.skip("dladdr and the ELF C++ runtime: Linux only")
    from mobilenet_kernels import _C

    for symbol in ("__cxa_throw", "__gxx_personality_v0"):
        where = _extension.library_defining(symbol)
        assert where is not None and "libstdc++" in os.path.basename(where), (symbol, where, _C.__file__)


# ----------------------------------------------------------------------------- modules


def _bn_module(backend, device, training=True):
    m = BatchNormAct2d(C, activation="hardswish", backend=backend).to(device).train(training)
    with torch.no_grad():
        m.running_mean.normal_()
        m.running_var.uniform_(0.5, 1.5)
    return m


def _conv_bn_act(backend, device, training=True):
    m = ConvBNAct(C, C, kernel_size=3, groups=C, activation="relu6", backend=backend).to(device).train(training)
    with torch.no_grad():
        m[1].running_mean.normal_()
    return m


def _module_cases():
    """(id, build(backend, device) -> (module, input), exception, pattern)."""
    return [
        ("BatchNormAct2d-input-rank-3", lambda b, d: (_bn_module(b, d), torch.randn(C, 3, 3, device=d)), ValueError, "input"),
        ("BatchNormAct2d-channel-mismatch-train", lambda b, d: (_bn_module(b, d), torch.randn(2, C + 1, 3, 3, device=d)),
         (ValueError, RuntimeError), "running_mean"),
        ("BatchNormAct2d-channel-mismatch-eval", lambda b, d: (_bn_module(b, d, False), torch.randn(2, C - 1, 3, 3, device=d)),
         (ValueError, RuntimeError), "running_mean"),
        ("BatchNormAct2d-one-value-per-channel", lambda b, d: (_bn_module(b, d), torch.randn(1, C, 1, 1, device=d)),
         ValueError, "more than 1 value per channel"),
        ("BatchNormAct2d-input-int", lambda b, d: (_bn_module(b, d), torch.ones(2, C, 3, 3, device=d, dtype=torch.int64)),
         TypeError, "input"),
        ("ConvBNAct-channel-mismatch-train", lambda b, d: (_conv_bn_act(b, d), torch.randn(2, C + 1, 5, 5, device=d)),
         (ValueError, RuntimeError), "weight|running_mean|input"),
        ("ConvBNAct-channel-mismatch-eval", lambda b, d: (_conv_bn_act(b, d, False), torch.randn(2, C + 1, 5, 5, device=d)),
         (ValueError, RuntimeError), "weight|running_mean|input"),
        ("ConvBNAct-one-value-per-channel", lambda b, d: (_conv_bn_act(b, d), torch.randn(1, C, 1, 1, device=d)),
         ValueError, "more than 1 value per channel"),
        ("ConvBNAct-input-smaller-than-kernel", lambda b, d: (_conv_bn_act_no_pad(b, d), torch.randn(2, C, 2, 2, device=d)),
         ValueError, "input"),
        ("DepthwiseConv2d-channel-mismatch", lambda b, d: (DepthwiseConv2d(C, 3, 1, 1, backend=b).to(d),
                                                           torch.randn(2, C + 2, 5, 5, device=d)), ValueError, "weight"),
        ("DepthwiseConv2d-stride-0", lambda b, d: (DepthwiseConv2d(C, 3, stride=0, padding=1, backend=b).to(d),
                                                   torch.randn(2, C, 5, 5, device=d)), ValueError, "stride"),
        ("DepthwiseConv2d-input-smaller-than-kernel", lambda b, d: (DepthwiseConv2d(C, 5, backend=b).to(d),
                                                                    torch.randn(2, C, 4, 4, device=d)), ValueError, "input"),
        ("DepthwiseConv2d-input-float64", lambda b, d: (DepthwiseConv2d(C, 3, backend=b).to(d),
                                                        torch.randn(2, C, 5, 5, device=d, dtype=torch.float64)),
         TypeError, "weight"),
        ("SqueezeExcitation-channel-mismatch", lambda b, d: (SqueezeExcitation(C, 2, backend=b).to(d),
                                                             torch.randn(2, C + 1, 3, 3, device=d)), ValueError, "fc1_weight"),
        ("SqueezeExcitation-input-float64", lambda b, d: (SqueezeExcitation(C, 2, backend=b).to(d),
                                                          torch.randn(2, C, 3, 3, device=d, dtype=torch.float64)),
         TypeError, "fc1_weight"),
        ("SqueezeExcitation-input-rank-2", lambda b, d: (SqueezeExcitation(C, 2, backend=b).to(d),
                                                         torch.randn(2, C, device=d)), ValueError, "input"),
    ]


def _conv_bn_act_no_pad(backend, device):
    m = _conv_bn_act(backend, device)
    m[0].padding = (0, 0)
    return m


_MODULE_IDS = [c[0] for c in _module_cases()]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("index", range(len(_MODULE_IDS)), ids=_MODULE_IDS)
def test_module_rejects_bad_input_and_keeps_its_state(backend, index, device):
    """A failing forward leaves parameters and running statistics (not num_batches_tracked: see
    test_failed_training_call_leaves_num_batches_tracked) as they were."""
    skip_unless_usable(backend, device)
    _, build, exc, match = _module_cases()[index]
    module, x = build(backend, device)
    watched = [t for name, t in module.state_dict(keep_vars=True).items() if not name.endswith("num_batches_tracked")]
    assert_raises_and_modifies_nothing(lambda: module(x), watched, exc, match)


@pytest.mark.parametrize("backend", ["torch", "cuda"])
@pytest.mark.parametrize("module", ["BatchNormAct2d", "ConvBNAct"])
def test_failed_training_call_leaves_num_batches_tracked(backend, module, device):
    """A call that fails its checks counts no batch (nn.BatchNorm2d would count it: with momentum=None
    that skews every later cumulative average); a call that succeeds counts one."""
    skip_unless_usable(backend, device)
    m = _bn_module(backend, device) if module == "BatchNormAct2d" else _conv_bn_act(backend, device)
    bn = m if module == "BatchNormAct2d" else m[1]
    with pytest.raises((ValueError, RuntimeError)):
        m(torch.randn(2, C + 1, 5, 5, device=device))
    assert bn.num_batches_tracked.item() == 0
    m(torch.randn(2, C, 5, 5, device=device))
    assert bn.num_batches_tracked.item() == 1


def test_module_constructors_reject_bad_names():
    with pytest.raises(ValueError, match="activation"):
        BatchNormAct2d(C, activation="gelu")
    with pytest.raises(ValueError, match="backend"):
        BatchNormAct2d(C, backend="cudnn")
    with pytest.raises(ValueError, match="backend"):
        DepthwiseConv2d(C, 3, backend="gpu")
    with pytest.raises(ValueError, match="activation"):
        SqueezeExcitation(C, 2, activation="tanh")
    with pytest.raises(ValueError, match="scale_activation"):
        SqueezeExcitation(C, 2, scale_activation="softmax")
    with pytest.raises(ValueError, match="backend"):
        SqueezeExcitation(C, 2, backend="opencl")
    with pytest.raises(ValueError, match="activation"):
        ConvBNAct(C, C, activation="mish")


def test_module_converters_reject_unsupported_modules():
    with pytest.raises(ValueError, match="conv"):
        DepthwiseConv2d.from_conv(nn.Conv2d(C, 2 * C, 3, groups=C))
    with pytest.raises(ValueError, match="conv"):
        DepthwiseConv2d.from_conv(nn.Conv2d(C, C, 3, groups=C, padding="same"))
    with pytest.raises(ValueError, match="module"):
        SqueezeExcitation.from_torchvision(TVSqueezeExcitation(C, 2, activation=nn.GELU))
    with pytest.raises(ValueError, match="module"):
        SqueezeExcitation.from_torchvision(nn.Conv2d(C, C, 1))


# ----------------------------------------------------------------------------- models and convert()


@pytest.mark.parametrize("builder", BUILDERS, ids=lambda b: b.__name__)
@pytest.mark.parametrize("width_mult", [0, 0.0, -0.5, float("nan"), float("-inf"), "1.0", None, True])
def test_builder_rejects_bad_width_mult(builder, width_mult):
    with pytest.raises(ValueError, match="width_mult"):
        builder(width_mult=width_mult)


@pytest.mark.parametrize("builder", BUILDERS, ids=lambda b: b.__name__)
def test_builder_rejects_unknown_backend(builder):
    with pytest.raises(ValueError, match="backend"):
        builder(width_mult=0.25, backend="fast")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("builder", BUILDERS, ids=lambda b: b.__name__)
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_model_rejects_an_input_with_the_wrong_number_of_channels(builder, backend, training, device):
    """The first conv rejects it, naming the input, before any BatchNorm ran: no state changes."""
    skip_unless_usable(backend, device)
    model = builder(width_mult=0.25, num_classes=10, backend=backend).to(device).train(training)
    state = list(model.state_dict(keep_vars=True).values())
    for channels in (1, 4):
        x = torch.randn(2, channels, 32, 32, device=device)
        assert_raises_and_modifies_nothing(lambda: model(x), state, RuntimeError, r"input.*3 channels")


@pytest.mark.parametrize("backend", ["torch", "cuda"])
@pytest.mark.parametrize("builder", BUILDERS, ids=lambda b: b.__name__)
def test_model_rejects_an_unbatched_input(builder, backend, device):
    skip_unless_usable(backend, device)
    model = builder(width_mult=0.25, num_classes=10, backend=backend).to(device).eval()
    with pytest.raises(ValueError, match="input"):
        model(torch.randn(3, 32, 32, device=device))


def test_convert_rejects_unknown_backend_and_changes_nothing():
    model = torchvision.models.mobilenet_v3_small(num_classes=10)
    structure = [(name, type(m)) for name, m in model.named_modules()]
    for backend in ("gpu", "Torch", ""):
        with pytest.raises(ValueError, match="backend"):
            mk.convert(model, backend=backend)
    assert [(name, type(m)) for name, m in model.named_modules()] == structure


def test_convert_rejects_a_non_module():
    with pytest.raises(TypeError, match="model"):
        mk.convert("mobilenet_v2", backend="torch")


@pytest.mark.parametrize("backend", ["torch", "cuda"])
def test_converted_model_rejects_bad_input(backend, device):
    skip_unless_usable(backend, device)
    model = mk.convert(torchvision.models.mobilenet_v2(width_mult=0.25, num_classes=10), backend=backend).to(device)
    state = list(model.state_dict(keep_vars=True).values())
    assert_raises_and_modifies_nothing(lambda: model(torch.randn(2, 4, 32, 32, device=device)), state, RuntimeError,
                                       r"input.*3 channels")


# ----------------------------------------------------------------------------- NaN and Inf


def _specials(shape, device, seed=0):
    """Random values with NaN, +Inf and -Inf scattered in (about 3% each), channel 0 left finite."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    u = torch.rand(shape, generator=g, dtype=torch.float64)
    x[u < 0.03] = float("nan")
    x[(u >= 0.03) & (u < 0.06)] = float("inf")
    x[(u >= 0.06) & (u < 0.09)] = -float("inf")
    x[:, 0] = torch.randn(x[:, 0].shape, generator=g, dtype=torch.float64)
    return x.float().to(device)


def assert_same_specials(actual, expected, what):
    assert actual.shape == expected.shape, what
    for name, mask in (("NaN", torch.isnan), ("+Inf", torch.isposinf), ("-Inf", torch.isneginf)):
        a, e = mask(actual), mask(expected)
        assert torch.equal(a, e), f"{what}: {name} at {int((a != e).sum())} positions where PyTorch differs"


NAN_BACKENDS = ["torch", "cuda"]


@pytest.mark.parametrize("backend", NAN_BACKENDS)
def test_batch_norm_act_eval_propagates_nan_and_inf_like_torch(backend, device):
    """Eval mode is element by element: NaN stays NaN, +-Inf goes where the activation sends it."""
    skip_unless_usable(backend, device)
    x = _specials((3, 6, 5, 5), device)
    for act in ACTIVATIONS:
        rm, rv = torch.randn(6, device=device), torch.rand(6, device=device) + 0.5
        w, b = torch.rand(6, device=device) + 0.5, torch.randn(6, device=device)
        y = MF.batch_norm_act(x, rm, rv, w, b, False, 0.1, 1e-5, act, backend=backend)
        expected = apply_activation(F.batch_norm(x, rm, rv, w, b, False, 0.1, 1e-5), act)
        assert_same_specials(y, expected, f"{act} output")


# Channel 1 of a training batch holds one of these patterns, channel 0 is finite: in F.batch_norm
# the channel's mean is NaN, +Inf or -Inf, its variance NaN, so its whole output is NaN.
SPECIAL_CHANNELS = {  # functions of the (N, H, W) view of channel 1
    "nan": lambda c: c[0, 2, 3].fill_(float("nan")),
    "inf-inside": lambda c: c[1, 2, 2].fill_(float("inf")),
    "neg-inf-last": lambda c: c[-1, -1, -1].fill_(-float("inf")),
    "inf-first": lambda c: c[0, 0, 0].fill_(float("inf")),
    "inf-both-signs": lambda c: (c[0, 1, 0].fill_(float("inf")), c[1, 4, 4].fill_(-float("inf"))),
    "inf-everywhere": lambda c: c.fill_(float("inf")),
}
TRAIN_NAN_BACKENDS = ["torch", "cuda", "triton"]
# Every kernel centres its statistics on a finite value and keeps a NaN variance NaN, so the specials
# land where F.batch_norm puts them (the CUDA conv statistics: shifted sums per thread, merged by an
# Inf-aware Chan update; csrc/cuda/chan_stats.cuh).


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # NumPy, in the Triton interpreter
@pytest.mark.parametrize("op", ["bn", "dwbn"])
@pytest.mark.parametrize("backend", TRAIN_NAN_BACKENDS)
@pytest.mark.parametrize("pattern", list(SPECIAL_CHANNELS))
def test_training_statistics_propagate_nan_and_inf_like_torch(op, backend, pattern, device):
    """batch_norm_act and the fused dw conv + BN + act in training: the output and both running
    statistics have NaN/+Inf/-Inf exactly where F.batch_norm puts them."""
    skip_unless_usable(backend, device)
    x = torch.randn(2, 3, 6, 6, device=device)
    SPECIAL_CHANNELS[pattern](x[:, 1])
    # dwbn: a 1x1 conv with weight 1 passes the specials through unchanged
    w = torch.ones(3, 1, 1, 1, device=device)
    for act in ("identity", "hardsigmoid"):
        rm, rv = torch.randn(3, device=device), torch.rand(3, device=device) + 0.5
        gamma, beta = torch.rand(3, device=device) + 0.5, torch.randn(3, device=device)
        rm_t, rv_t = rm.clone(), rv.clone()
        if op == "bn":
            y = MF.batch_norm_act(x, rm, rv, gamma, beta, True, 0.1, 1e-5, act, backend=backend)
        else:
            y = MF.depthwise_conv2d_bn_act(x, w, None, 1, 0, 1, rm, rv, gamma, beta, True, 0.1, 1e-5, act,
                                           backend=backend)
        expected = apply_activation(F.batch_norm(x, rm_t, rv_t, gamma, beta, True, 0.1, 1e-5), act)
        assert_same_specials(y, expected, f"{act} output")
        assert_same_specials(rm, rm_t, f"{act} running_mean")
        assert_same_specials(rv, rv_t, f"{act} running_var")


@pytest.mark.parametrize("backend", NAN_BACKENDS)
@pytest.mark.parametrize("geometry", [(3, 1, 1, 1), (3, 2, 1, 1), (5, 1, 2, 1), (3, 1, 0, 2)],
                         ids=["k3", "k3-s2", "k5-p2", "k3-p0-d2"])
def test_depthwise_conv2d_propagates_nan_and_inf_like_torch(backend, geometry, device):
    """A NaN, or both signs of Inf, in a receptive field make the output NaN; one sign of Inf makes
    it +-Inf (the sign of weight * Inf): whatever order the kernel sums in."""
    skip_unless_usable(backend, device)
    k, s, p, d = geometry
    x = _specials((2, 5, 11, 10), device, seed=1)
    w = torch.randn(5, 1, k, k, device=device)
    w = torch.where(w.abs() < 0.1, torch.full_like(w, 0.5), w)  # no (near-)zero weights: 0 * Inf is NaN
    bias = torch.randn(5, device=device)
    for act in ACTIVATIONS:
        y = MF.depthwise_conv2d(x, w, bias, s, p, d, activation=act, backend=backend)
        expected = apply_activation(F.conv2d(x.double(), w.double(), bias.double(), s, p, d, groups=5), act)
        assert_same_specials(y, expected, f"{act} output")


@pytest.mark.parametrize("backend", NAN_BACKENDS)
def test_depthwise_conv2d_bn_act_eval_propagates_nan_and_inf_like_torch(backend, device):
    """Eval: BatchNorm folded into the conv; the conv's NaN/Inf pattern goes through the affine map
    and the activation as in the unfused PyTorch sequence."""
    skip_unless_usable(backend, device)
    x = _specials((2, 5, 8, 8), device, seed=2)
    w = torch.randn(5, 1, 3, 3, device=device).abs().clamp_min(0.2)  # one sign: a lone Inf stays Inf through the conv
    for act in ACTIVATIONS:
        rm, rv = torch.randn(5, device=device), torch.rand(5, device=device) + 0.5
        g, b = torch.rand(5, device=device) + 0.5, torch.randn(5, device=device)
        y = MF.depthwise_conv2d_bn_act(x, w, None, 1, 1, 1, rm, rv, g, b, False, 0.1, 1e-5, act, backend=backend)
        z = F.conv2d(x, w, None, 1, 1, 1, groups=5)
        expected = apply_activation(F.batch_norm(z, rm, rv, g, b, False, 0.1, 1e-5), act)
        assert_same_specials(y, expected, f"{act} output")


@pytest.mark.parametrize("backend", NAN_BACKENDS)
def test_squeeze_excite_propagates_nan_and_inf_like_torch(backend, device):
    """A NaN or Inf pooled value spreads through the 1x1 layers to the whole image (or is squashed
    by the scale activation): compare with torchvision's module on the same weights."""
    skip_unless_usable(backend, device)
    x = _specials((4, 6, 3, 3), device, seed=3)
    x[0] = torch.randn(6, 3, 3, device=device)  # one clean image
    x[1, :, 0, 0] = float("inf")  # one image with only +Inf specials
    x[1, :, 1:] = torch.randn(6, 2, 3, device=device)
    acts = {"relu": nn.ReLU, "silu": nn.SiLU, "hardswish": nn.Hardswish, "hardsigmoid": nn.Hardsigmoid,
            "sigmoid": nn.Sigmoid}
    for act, sact in (("relu", "hardsigmoid"), ("hardswish", "sigmoid"), ("silu", "hardsigmoid")):
        tv = TVSqueezeExcitation(6, 3, activation=acts[act], scale_activation=acts[sact]).to(device)
        y = MF.squeeze_excite(x, tv.fc1.weight, tv.fc1.bias, tv.fc2.weight, tv.fc2.bias, activation=act,
                              scale_activation=sact, backend=backend)
        with torch.no_grad():
            assert_same_specials(y, tv(x), f"{act}/{sact} output")


# ----------------------------------------------------------------------------- empty batch


def _grads_are_zero_or_none(grads):
    return all(g is None or (g.numel() == 0 or torch.count_nonzero(g) == 0) for g in grads)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["bn_eval", "bn_train", "dw", "dwbn_eval", "dwbn_train", "se"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_empty_batch_forward_and_backward(backend, kind, layout, device):
    """N = 0: an empty output of the right shape, an empty input gradient, zero parameter gradients,
    running statistics untouched."""
    skip_unless_usable(backend, device)
    args = good_args(kind, device)
    x = args["input"][:0]
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    args["input"] = x.requires_grad_()
    params = [k for k in ("conv_weight", "conv_bias", "weight", "bias", "fc1_weight", "fc1_bias", "fc2_weight",
                          "fc2_bias") if k in args]
    for k in params:
        args[k] = args[k].requires_grad_()
    stats = [args[k].clone() for k in ("running_mean", "running_var") if k in args]
    y = call_op(kind, args, backend)
    expected_hw = (5, 5) if kind.startswith("dw") else (3, 3)
    assert y.shape == (0, C, *expected_hw)
    grads = torch.autograd.grad(y.sum(), [args["input"]] + [args[k] for k in params], allow_unused=True)
    assert grads[0] is not None and grads[0].shape == x.shape
    assert _grads_are_zero_or_none(grads[1:])
    for k, before in zip(("running_mean", "running_var"), stats):
        assert torch.equal(args[k], before), f"{k} changed on an empty batch"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("builder", BUILDERS, ids=lambda b: b.__name__)
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_model_forward_on_an_empty_batch(builder, backend, training, device):
    skip_unless_usable(backend, device)
    model = builder(width_mult=0.25, num_classes=10, backend=backend).to(device).train(training)
    state = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    out = model(torch.randn(0, 3, 32, 32, device=device))
    assert out.shape == (0, 10)
    if training:
        out.sum().backward()
    for k, v in model.state_dict().items():
        if k in state:
            assert torch.equal(v, state[k]), f"{k} changed on an empty batch"


def test_backends_reject_unknown_names():
    for name in ("gpu", "CUDA", "", "torch "):
        with pytest.raises(ValueError, match="backend"):
            backends.check_backend(name)
        with pytest.raises(ValueError, match="backend"):
            backends.resolve(name, torch.zeros(1))
