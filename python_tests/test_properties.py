"""Property tests: every op on every backend equals the float64 torch reference over random shapes,
strides, paddings, dilations, layouts (contiguous, channels_last, sliced views, and channels_last
whose size-1 dims carry arbitrary strides, which contiguity ignores), dtypes and activations:
batch_norm_act (eval, training), depthwise_conv2d, the fused depthwise conv + BatchNorm + activation
(eval, training), an inverted residual's expand + depthwise layers in training
(pointwise_depthwise_bn_act_train), squeeze_excite, pointwise_conv2d and the whole
inverted-residual block in eval (inverted_residual_eval); outputs, gradients and running
statistics.

Two sizes of run:

* the default run (CI): a few examples per (op, backend), tiny shapes for the Triton interpreter
  (~0.4 s per program on CPU), about a minute for the whole file;
* the nightly run, ``python -m pytest python_tests/test_properties.py -m nightly``: at least 500
  examples per (op, backend), 2,500+ per backend in all (``MK_NIGHTLY_EXAMPLES`` changes the
  count). Without ``-m nightly`` these cases skip.

``MK_HYPOTHESIS_PROFILE=nightly`` (the older switch) makes the default cases run 500 examples too.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import mobilenet_kernels.functional as MF
from mobilenet_kernels.activations import ACTIVATIONS
from mobilenet_kernels.reference import (
    batch_norm_act_ref,
    depthwise_conv2d_bn_act_ref,
    depthwise_conv2d_ref,
    inverted_residual_eval_ref,
    pointwise_conv2d_ref,
    squeeze_excite_ref,
)

from conftest import BACKENDS, skip_unless_usable
from op_helpers import exact_activation, float64_tolerance

settings.register_profile("ci", max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("nightly", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("MK_HYPOTHESIS_PROFILE", "ci"))

NIGHTLY_EXAMPLES = int(os.environ.get("MK_NIGHTLY_EXAMPLES", "500"))
# Default-run examples per (op, backend): the C++ kernels are fast, the torch backend is the
# reference itself (its cases check the functional layer), Triton on CPU is interpreted.
CI_EXAMPLES = {"cuda": 25, "torch": 6, "triton": 6}
PROFILES = ["ci", pytest.param("nightly", marks=pytest.mark.nightly)]


def interpreted(backend: str, device: str) -> bool:
    return backend == "triton" and device == "cpu"


def examples(profile: str, backend: str, request) -> tuple[int, bool]:
    """(examples to run, whether to derandomize) for this case; skips the nightly cases unless -m
    selects them. The default run is derandomized (the same examples every time: CI stays
    reproducible); the nightly run draws new ones each night."""
    if profile == "nightly":
        if "nightly" not in (request.config.getoption("markexpr") or ""):
            pytest.skip("nightly profile: select it with -m nightly")
        return NIGHTLY_EXAMPLES, False
    if settings.default.max_examples >= NIGHTLY_EXAMPLES:  # MK_HYPOTHESIS_PROFILE=nightly
        return settings.default.max_examples, False
    # (on a GPU, Triton compiles a kernel per new kernel size/stride/dilation: a few examples there too)
    return CI_EXAMPLES[backend], True


def run_examples(strategy, check, n_and_derandomize: tuple[int, bool]) -> None:
    n, derandomize = n_and_derandomize
    settings(max_examples=n, deadline=None, database=None, derandomize=derandomize,
             suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                    HealthCheck.filter_too_much])(given(case=strategy)(check))()


# Where each activation's derivative jumps: within rounding of these, float32 and float64 may take
# different branches, and training-mode BatchNorm spreads that one element's flip over its channel.
KINKS = {"relu": (0.0,), "relu6": (0.0, 6.0), "hardswish": (-3.0, 3.0), "hardsigmoid": (-3.0, 3.0)}


def near_a_kink(z64, act, tol=1e-4):
    return any(bool(((z64 - k).abs() < tol).any()) for k in KINKS.get(act, ()))


FP_TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float64: dict(rtol=1e-9, atol=1e-9)}


def fp_tol(dtype: torch.dtype, device: str, *acts: str) -> dict:
    """FP_TOL, except float64 against ATen's CUDA hardswish/hardsigmoid (float32 1/6, op_helpers)."""
    if dtype == torch.float64:
        return max((float64_tolerance(a, device) for a in acts), key=lambda t: t["rtol"])
    return FP_TOL[dtype]
LOW_PRECISION = (torch.float16, torch.bfloat16)
ULP = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}


LAYOUTS = ["nchw", "channels_last", "sliced", "size1_strides"]


def size1_strides(x: torch.Tensor) -> torch.Tensor:
    """``x`` (dense) with an arbitrary stride on every size-1 dim: still contiguous in its format
    (contiguity ignores size-1 dims, and .contiguous() returns it as it is), so a kernel that reads a
    size-1 dim's stride, or stands in one dim's stride for another's, reads the wrong elements.
    (The Triton pointwise GEMM took W's stride for the pixel stride, wrong at W = 1.)"""
    return torch.as_strided(x, x.shape, [s if n != 1 else 7919 for n, s in zip(x.shape, x.stride())])


def f64(t: torch.Tensor | None) -> torch.Tensor | None:
    """A detached float64 copy of ``t`` for the references, dense (NCHW): PyTorch's CPU
    F.batch_norm backward gives wrong input gradients for a channels_last tensor whose size-1 dim
    has a non-standard stride (size1_strides; torch 2.14.1), where our kernels give the dense
    tensor's. The values are the same in any layout."""
    return None if t is None else t.detach().double().contiguous()


def make_x(gen, shape, layout, dtype, device, scale=2.0, shift=0.5):
    """A float64 random tensor of ``shape`` in ``layout`` (LAYOUTS: nchw | channels_last | sliced: a
    non-dense view into a larger tensor | size1_strides: channels_last with size1_strides), cast to
    ``dtype``, on ``device``."""
    N, C, H, W = shape
    if layout == "sliced":
        x = torch.randn(N, C + 1, H, W + 2, generator=gen, dtype=torch.float64)[:, 1:, :, 1:-1]
    else:
        x = torch.randn(N, C, H, W, generator=gen, dtype=torch.float64)
    x = x * scale + shift
    if layout in ("channels_last", "size1_strides"):
        x = x.contiguous(memory_format=torch.channels_last)
    x = x.to(device=device, dtype=dtype)
    return size1_strides(x) if layout == "size1_strides" else x


def assert_layout_kept(y, x):
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last) and y.shape[2] * y.shape[3] > 1:
        assert y.is_contiguous(memory_format=torch.channels_last)


def assert_within_2x_torch(ours, torchs, ref, what):
    """flash-attention's bound for fp16/bf16: our error against float64 at most twice PyTorch's own
    (same inputs, same dtype), plus one rounding at the tensor's scale."""
    err = lambda a: (a.double() - ref).abs().max().item() if ref.numel() else 0.0  # noqa: E731
    scale = ref.abs().max().item() if ref.numel() else 0.0
    e_ours, e_torch = err(ours), err(torchs)
    assert e_ours <= 2 * e_torch + ULP[ours.dtype] * scale, f"{what}: error {e_ours:.3g} vs torch's {e_torch:.3g}"


def assert_output_and_grads(y, y64, z64, params, p64, names, act, gen):
    """``y`` against its float64 reference ``y64`` and, for a non-empty output whose pre-activation
    ``z64`` keeps clear of the activation's kinks, the gradients of ``params`` (``names``) under one
    random output gradient against those of their float64 copies ``p64``."""
    dtype, device = y.dtype, y.device.type
    tol = fp_tol(dtype, device, act)
    torch.testing.assert_close(y.double(), y64, **tol)
    if not y.numel():
        return
    assume(dtype == torch.float64 or not near_a_kink(z64.detach(), act))
    grad = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(y.device, dtype)
    got = torch.autograd.grad(y, params, grad)
    want = torch.autograd.grad(y64, p64, grad.double())
    for name, a, e in zip(names, got, want):
        assert a.shape == e.shape and a.dtype == dtype, name
        torch.testing.assert_close(a.double(), e, **tol, msg=lambda m: f"grad {name}: {m}")


def close_or_within_2x_torch(ours, ref, torchs, tol, what):
    """``ours`` within ``tol`` of the float64 ``ref``, or, where not, its error at most twice that of
    PyTorch's own result ``torchs`` (same inputs, same dtype; None: no such fallback)."""
    try:
        torch.testing.assert_close(ours.double(), ref, **tol, msg=lambda m: f"{what}: {m}")
    except AssertionError:
        if torchs is None or not ref.numel():
            raise
        e_ours, e_torch = ((t.double() - ref).abs().max().item() for t in (ours, torchs))
        assert e_ours <= 2 * e_torch, f"{what}: error {e_ours:.3g}, beyond the tolerance and 2x torch's {e_torch:.3g}"


# ----------------------------------------------------------------------------- batch_norm_act


@st.composite
def bn_cases(draw, small=False):
    N = draw(st.integers(0, 2 if small else 3))
    C = draw(st.integers(1, 6 if small else 40))
    H, W = draw(st.integers(1, 5 if small else 9)), draw(st.integers(1, 5 if small else 9))
    training = draw(st.booleans()) and N * H * W > 1
    return dict(
        shape=(N, C, H, W),
        layout=draw(st.sampled_from(LAYOUTS)),
        dtype=draw(st.sampled_from([torch.float32, torch.float64])),
        act=draw(st.sampled_from(list(ACTIVATIONS))),
        training=training,
        affine=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def pre_activation(x, mean, var, weight, bias, training):
    """BatchNorm's output before the activation, in float64 (batch statistics when training)."""
    cast = lambda t: None if t is None else t.double()  # noqa: E731
    stats = (None, None) if training else (cast(mean), cast(var))
    return F.batch_norm(f64(x), *stats, cast(weight), cast(bias), training, 0.0, 1e-5)


def make_bn(case, device):
    gen = torch.Generator().manual_seed(case["seed"])
    N, C, H, W = case["shape"]
    if case["layout"] == "sliced":
        x = torch.randn(N, C + 1, H, W + 2, generator=gen, dtype=case["dtype"])[:, 1:, :, 1:-1]
    else:
        x = torch.randn(N, C, H, W, generator=gen, dtype=case["dtype"]) * 3 + 1
        if case["layout"] in ("channels_last", "size1_strides"):
            x = x.contiguous(memory_format=torch.channels_last)
    params = [torch.randn(C, generator=gen) for _ in range(3)] + [torch.rand(C, generator=gen) + 0.1]
    mean, weight, bias, var = (t.to(device) for t in params)
    if not case["affine"]:
        weight = bias = None
    x = x.to(device)
    return size1_strides(x) if case["layout"] == "size1_strides" else x, mean, var, weight, bias


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_norm_act_matches_reference(backend, profile, device, request):
    skip_unless_usable(backend, device)

    def check(case):
        x, mean, var, weight, bias = make_bn(case, device)
        x.requires_grad_()
        rm, rv = mean.clone(), var.clone()
        y = MF.batch_norm_act(x, rm, rv, weight, bias, case["training"], 0.1, 1e-5, case["act"], backend=backend)
        assert y.shape == x.shape and y.dtype == x.dtype
        assert_layout_kept(y, x)
        x64 = f64(x).requires_grad_()
        rm64, rv64 = mean.double(), var.double()
        cast = lambda t: None if t is None else t.double()  # noqa: E731
        y64 = batch_norm_act_ref(x64, rm64, rv64, cast(weight), cast(bias), case["training"], 0.1, 1e-5, case["act"])
        tol = fp_tol(x.dtype, device, case["act"])
        torch.testing.assert_close(y.double(), y64, **tol)
        stats_tol = tol if x.dtype == torch.float32 else dict(rtol=1e-6, atol=1e-6)  # float32 running stats
        torch.testing.assert_close(rm.double(), rm64, **stats_tol)
        torch.testing.assert_close(rv.double(), rv64, **stats_tol)
        if x.numel():
            # A gradient is only defined away from the kinks: skip inputs that land on one.
            z64 = pre_activation(x, mean, var, weight, bias, case["training"])
            assume(x.dtype == torch.float64 or not near_a_kink(z64, case["act"]))
            gen = torch.Generator().manual_seed(case["seed"] + 1)
            grad = torch.randn(x.shape, dtype=x.dtype, generator=gen).to(device)
            (gx,) = torch.autograd.grad(y, x, grad)
            (gx64,) = torch.autograd.grad(y64, x64, grad.double())
            torch.testing.assert_close(gx.double(), gx64, **tol)

    run_examples(bn_cases(small=interpreted(backend, device)), check, examples(profile, backend, request))


# ----------------------------------------------------------------------------- depthwise geometry


@st.composite
def conv_geometry(draw, small=False):
    """(N, C, H, W), (kH, kW), stride, padding, dilation: any valid depthwise conv, non-square and
    asymmetric ones included; H, W at least the dilated kernel minus the padding."""
    N = draw(st.integers(0, 2 if small else 3))
    C = draw(st.integers(1, 6 if small else 20))
    kH, kW = draw(st.integers(1, 3 if small else 5)), draw(st.integers(1, 3 if small else 5))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2 if small else 3)), draw(st.integers(1, 2 if small else 3)))
    padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    extra = 4 if small else 8
    eff_h, eff_w = dilation[0] * (kH - 1) + 1, dilation[1] * (kW - 1) + 1
    H = draw(st.integers(max(1, eff_h - 2 * padding[0]), max(1, eff_h - 2 * padding[0]) + extra))
    W = draw(st.integers(max(1, eff_w - 2 * padding[1]), max(1, eff_w - 2 * padding[1]) + extra))
    return dict(shape=(N, C, H, W), kernel=(kH, kW), stride=stride, padding=padding, dilation=dilation)


def conv_out_hw(g):
    (_, _, H, W), (kH, kW) = g["shape"], g["kernel"]
    (sH, sW), (pH, pW), (dH, dW) = g["stride"], g["padding"], g["dilation"]
    return (H + 2 * pH - dH * (kH - 1) - 1) // sH + 1, (W + 2 * pW - dW * (kW - 1) - 1) // sW + 1


# ----------------------------------------------------------------------------- depthwise_conv2d


@st.composite
def dw_cases(draw, small=False):
    return dict(
        draw(conv_geometry(small)),
        layout=draw(st.sampled_from(LAYOUTS)),
        dtype=draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16])),
        act=draw(st.sampled_from(list(ACTIVATIONS))),
        bias=draw(st.booleans()),
        stride_as_int=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def _conv_args(case):
    """stride/padding/dilation as the caller passes them: a pair, or an int where both are equal."""
    def arg(v):
        return v[0] if case["stride_as_int"] and v[0] == v[1] else v
    return arg(case["stride"]), arg(case["padding"]), arg(case["dilation"])


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_depthwise_conv2d_matches_reference(backend, profile, device, request):
    """Output (and its memory format) for every dtype; input, weight and bias gradients in float32
    and float64; fp16/bf16 outputs within 2x PyTorch's own error."""
    skip_unless_usable(backend, device)

    def check(case):
        gen = torch.Generator().manual_seed(case["seed"])
        dtype, act = case["dtype"], case["act"]
        N, C, H, W = case["shape"]
        x = make_x(gen, case["shape"], case["layout"], dtype, device)
        w = (torch.randn(C, 1, *case["kernel"], generator=gen, dtype=torch.float64) / case["kernel"][0]).to(device, dtype)
        b = torch.randn(C, generator=gen, dtype=torch.float64).to(device, dtype) if case["bias"] else None
        s, p, d = _conv_args(case)
        if dtype in LOW_PRECISION:
            y = MF.depthwise_conv2d(x, w, b, s, p, d, activation=act, backend=backend)
            assert y.dtype == dtype and y.shape == (N, C, *conv_out_hw(case))
            assert_layout_kept(y, x)
            y64 = depthwise_conv2d_ref(f64(x), w.double(), None if b is None else b.double(), s, p, d, act)
            assert_within_2x_torch(y, depthwise_conv2d_ref(x, w, b, s, p, d, act), y64, "output")
            return
        params = [t.requires_grad_() for t in (x, w, b) if t is not None]
        y = MF.depthwise_conv2d(x, w, b, s, p, d, activation=act, backend=backend)
        assert y.dtype == dtype and y.shape == (N, C, *conv_out_hw(case))
        assert_layout_kept(y, x)
        p64 = [f64(t).requires_grad_() for t in params]
        x64, w64, b64 = p64[0], p64[1], (p64[2] if b is not None else None)
        z64 = F.conv2d(x64, w64, b64, case["stride"], case["padding"], case["dilation"], groups=C)
        assert_output_and_grads(y, exact_activation(z64, act), z64, params, p64, ("input", "weight", "bias"), act, gen)

    run_examples(dw_cases(small=interpreted(backend, device)), check, examples(profile, backend, request))


# ----------------------------------------------------------------------------- dw conv + BN + act


@st.composite
def dwbn_cases(draw, small=False):
    g = draw(conv_geometry(small))
    N, _, _, _ = g["shape"]
    OH, OW = conv_out_hw(g)
    return dict(
        g,
        layout=draw(st.sampled_from(LAYOUTS)),
        dtype=draw(st.sampled_from([torch.float32, torch.float64])),
        act=draw(st.sampled_from(list(ACTIVATIONS))),
        conv_bias=draw(st.booleans()),
        affine=draw(st.booleans()),
        training=draw(st.booleans()) and N * OH * OW > 1,
        momentum=draw(st.sampled_from([0.1, 0.01, 1.0])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_depthwise_conv2d_bn_act_matches_reference(backend, profile, device, request):
    """The fused op against the unfused float64 sequence: output, running statistics, and the input,
    conv weight, conv bias and BatchNorm weight/bias gradients."""
    skip_unless_usable(backend, device)

    def check(case):
        gen = torch.Generator().manual_seed(case["seed"])
        dtype, act, training = case["dtype"], case["act"], case["training"]
        N, C, H, W = case["shape"]
        x = make_x(gen, case["shape"], case["layout"], dtype, device)
        w = (torch.randn(C, 1, *case["kernel"], generator=gen, dtype=torch.float64) / case["kernel"][0]).to(device, dtype)
        cb = torch.randn(C, generator=gen, dtype=torch.float64).to(device, dtype) if case["conv_bias"] else None
        bn = [torch.randn(C, generator=gen) * 0.5, torch.rand(C, generator=gen) + 0.5,
              torch.rand(C, generator=gen) + 0.5, torch.randn(C, generator=gen)]
        mean, var, gamma, beta = (t.to(device, dtype) for t in bn)  # as after model.double()
        if not case["affine"]:
            gamma = beta = None
        s, p, d = case["stride"], case["padding"], case["dilation"]
        params = [t.requires_grad_() for t in (x, w, cb, gamma, beta) if t is not None]
        rm, rv = mean.clone(), var.clone()
        y = MF.depthwise_conv2d_bn_act(x, w, cb, s, p, d, rm, rv, gamma, beta, training, case["momentum"], 1e-5, act,
                                       backend=backend)
        assert y.dtype == dtype and y.shape == (N, C, *conv_out_hw(case))
        assert_layout_kept(y, x)
        p64 = [f64(t).requires_grad_() for t in params]
        it = iter(p64)
        x64, w64 = next(it), next(it)
        cb64 = next(it) if cb is not None else None
        g64, b64 = (next(it), next(it)) if gamma is not None else (None, None)
        rm64, rv64 = mean.double(), var.double()
        y64 = depthwise_conv2d_bn_act_ref(x64, w64, cb64, s, p, d, rm64, rv64, g64, b64, training, case["momentum"],
                                          1e-5, act)
        tol = fp_tol(dtype, device, act)
        torch.testing.assert_close(y.double(), y64, **tol)
        stats_tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(rm.double(), rm64, **stats_tol)
        torch.testing.assert_close(rv.double(), rv64, **stats_tol)
        if y.numel():
            z = F.conv2d(x64.detach(), w64.detach(), None if cb64 is None else cb64.detach(), s, p, d, groups=C)
            z64 = F.batch_norm(z, None if training else mean.double(), None if training else var.double(),
                               None if g64 is None else g64.detach(), None if b64 is None else b64.detach(), training,
                               0.0, 1e-5)
            assume(dtype == torch.float64 or not near_a_kink(z64, act))
            grad = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(device, dtype)
            got = torch.autograd.grad(y, params, grad, allow_unused=True)
            want = torch.autograd.grad(y64, p64, grad.double(), allow_unused=True)
            # PyTorch's own gradients in this dtype: with a few values per channel, training-mode
            # BatchNorm's input gradient is ill-conditioned, and float32 misses a fixed tolerance
            # there however it is computed (the unfused torch sequence too).
            p32 = [t.detach().clone().requires_grad_() for t in params]
            it = iter(p32)
            x32, w32 = next(it), next(it)
            cb32 = next(it) if cb is not None else None
            g32, b32 = (next(it), next(it)) if gamma is not None else (None, None)
            y32 = depthwise_conv2d_bn_act_ref(x32, w32, cb32, s, p, d, mean.clone(), var.clone(), g32, b32, training,
                                              case["momentum"], 1e-5, act)
            torchs = torch.autograd.grad(y32, p32, grad, allow_unused=True)
            scale = max([e.abs().max().item() for e in want if e is not None and e.numel()] + [1.0])
            for i, (a, e, t) in enumerate(zip(got, want, torchs)):
                # The conv bias under training-mode BatchNorm has no effect on the output: its
                # gradient is zero in exact arithmetic (None where the kernels skip it), rounding
                # noise otherwise, judged on the scale of all the gradients.
                if a is None or e is None:
                    for v in (a, e):
                        assert v is None or v.abs().max().item() <= tol["atol"] * scale, f"gradient {i}"
                    continue
                close_or_within_2x_torch(a, e, t, dict(rtol=tol["rtol"], atol=tol["atol"] * scale), f"gradient {i}")

    run_examples(dwbn_cases(small=interpreted(backend, device)), check, examples(profile, backend, request))


# ----------------------------------------------------------------------------- expand + depthwise


@st.composite
def pwdw_cases(draw, small=False):
    """An inverted residual's expand and depthwise layers in training: conv_geometry's depthwise
    conv over Chid channels, fed by a 1x1 conv from Cin; only shapes that can train (more than one
    value per channel for both BatchNorms, or an empty batch)."""
    g = draw(conv_geometry(small))
    N, Chid, H, W = g["shape"]
    OH, OW = conv_out_hw(g)
    assume(N == 0 or (N * H * W > 1 and N * OH * OW > 1))
    return dict(
        g,
        cin=draw(st.integers(1, 5 if small else 16)),
        layout=draw(st.sampled_from(LAYOUTS)),
        dtype=draw(st.sampled_from([torch.float32, torch.float64])),
        act=draw(st.sampled_from(list(ACTIVATIONS))),
        affine=draw(st.booleans()),
        momentum=draw(st.sampled_from([0.1, 0.01, 1.0])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_pointwise_depthwise_bn_act_train_matches_reference(backend, profile, device, request):
    """The expand + depthwise training op against the per-layer float64 sequence (the functional
    API's "torch" backend on float64 copies): output, both BatchNorms' running statistics, and the
    gradients of the input, both conv weights and both BatchNorms' weight and bias, within the
    tolerance or 2x PyTorch's own error (the same sequence in the op's dtype)."""
    skip_unless_usable(backend, device)

    def check(case):
        gen = torch.Generator().manual_seed(case["seed"])
        dtype, act, Cin = case["dtype"], case["act"], case["cin"]
        N, C, H, W = case["shape"]
        x = make_x(gen, (N, Cin, H, W), case["layout"], dtype, device)
        we = (torch.randn(C, Cin, 1, 1, generator=gen, dtype=torch.float64) * Cin**-0.5).to(device, dtype)
        wd = (torch.randn(C, 1, *case["kernel"], generator=gen, dtype=torch.float64) / case["kernel"][0]).to(device,
                                                                                                            dtype)

        def batch_norm():
            stats = [torch.randn(C, generator=gen) * 0.5, torch.rand(C, generator=gen) + 0.5]
            params = [torch.rand(C, generator=gen) + 0.5, torch.randn(C, generator=gen)]
            return [t.to(device, dtype) for t in stats], [t.to(device, dtype) for t in params] if case["affine"] \
                else [None, None]

        (m1, v1), (g1, b1) = batch_norm()
        (m2, v2), (g2, b2) = batch_norm()
        s, p, d = case["stride"], case["padding"], case["dilation"]
        leaves = [x, we, wd, g1, b1, g2, b2]

        def run(tensors, stats, on):
            xx, e, w, *bn = tensors
            running = [t.clone() for t in stats]
            y = MF.pointwise_depthwise_bn_act_train(xx, e, w, s, p, d, running[0], running[1], bn[0], bn[1],
                                                    running[2], running[3], bn[2], bn[3], case["momentum"],
                                                    case["momentum"], 1e-5, act, backend=on)
            return y, running

        ours_in = [None if t is None else t.clone().requires_grad_() for t in leaves]
        y, running = run(ours_in, (m1, v1, m2, v2), backend)
        assert y.dtype == dtype and y.shape == (N, C, *conv_out_hw(case))
        assert_layout_kept(y, x)
        ref_in = [None if t is None else f64(t).requires_grad_() for t in leaves]
        y64, running64 = run(ref_in, [t.double() for t in (m1, v1, m2, v2)], "torch")
        tol = fp_tol(dtype, device, act)
        torch.testing.assert_close(y.double(), y64, **tol)
        stats_tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-6, atol=1e-6)
        for i, (a, e) in enumerate(zip(running, running64)):
            torch.testing.assert_close(a.double(), e, **stats_tol, msg=lambda m: f"running statistic {i}: {m}")
        if not y.numel():
            return
        # Both BatchNorms' inputs clear of the activation's kinks (a flip spreads over a channel).
        z1 = F.batch_norm(F.conv2d(ref_in[0].detach(), ref_in[1].detach()), None, None, None, None, True, 0.0, 1e-5)
        if ref_in[3] is not None:
            z1 = z1 * ref_in[3].detach()[:, None, None] + ref_in[4].detach()[:, None, None]
        y1 = exact_activation(z1, act)
        z2 = F.batch_norm(F.conv2d(y1, ref_in[2].detach(), None, s, p, d, groups=C), None, None, None, None, True, 0.0,
                          1e-5)
        if ref_in[5] is not None:
            z2 = z2 * ref_in[5].detach()[:, None, None] + ref_in[6].detach()[:, None, None]
        assume(dtype == torch.float64 or not (near_a_kink(z1, act) or near_a_kink(z2, act)))
        grad = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(device, dtype)
        wanted = [i for i, t in enumerate(leaves) if t is not None]
        got = torch.autograd.grad(y, [ours_in[i] for i in wanted], grad)
        want = torch.autograd.grad(y64, [ref_in[i] for i in wanted], grad.double())
        torch_in = [None if t is None else t.detach().clone().requires_grad_() for t in leaves]
        y_torch, _ = run(torch_in, (m1, v1, m2, v2), "torch")
        torchs = torch.autograd.grad(y_torch, [torch_in[i] for i in wanted], grad)
        scale = max([e.abs().max().item() for e in want if e.numel()] + [1.0])
        names = ["input", "expand_weight", "dw_weight", "expand_bn_weight", "expand_bn_bias", "dw_bn_weight",
                 "dw_bn_bias"]
        for i, a, e, t in zip(wanted, got, want, torchs):
            assert a.shape == e.shape and a.dtype == dtype, names[i]
            close_or_within_2x_torch(a, e, t, dict(rtol=tol["rtol"], atol=tol["atol"] * scale), names[i])

    run_examples(pwdw_cases(small=interpreted(backend, device)), check, examples(profile, backend, request))


# ----------------------------------------------------------------------------- squeeze_excite


@st.composite
def se_cases(draw, small=False):
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]))
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    return dict(
        shape=(draw(st.integers(0, 2 if small else 3)), draw(st.integers(1, 6 if small else 24)),
               draw(st.integers(1, 4 if small else 8)), draw(st.integers(1, 4 if small else 8))),
        squeeze=draw(st.integers(1, 4 if small else 8)),
        layout=draw(st.sampled_from(LAYOUTS)),
        dtype=dtype,
        param_dtype=draw(st.sampled_from([dtype, acc])),
        act=draw(st.sampled_from(["relu", "silu", "hardswish", "relu6", "identity"])),
        scale_act=draw(st.sampled_from(["hardsigmoid", "sigmoid", "identity"])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_squeeze_excite_matches_reference(backend, profile, device, request):
    """Output for every dtype (parameters in the input's dtype or float32, as under AMP); input and
    parameter gradients in float32 and float64; fp16/bf16 outputs within 2x PyTorch's own error."""
    skip_unless_usable(backend, device)

    def check(case):
        gen = torch.Generator().manual_seed(case["seed"])
        dtype, pdt, act, sact = case["dtype"], case["param_dtype"], case["act"], case["scale_act"]
        N, C, H, W = case["shape"]
        S = case["squeeze"]
        x = make_x(gen, case["shape"], case["layout"], dtype, device)
        r = lambda *shape, scale=1.0: (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(device, pdt)  # noqa: E731
        params = [r(S, C, 1, 1, scale=C**-0.5), r(S), r(C, S, 1, 1, scale=2 * S**-0.5), r(C)]
        if dtype in LOW_PRECISION:
            y = MF.squeeze_excite(x, *params, activation=act, scale_activation=sact, backend=backend)
            assert y.dtype == dtype and y.shape == x.shape
            assert_layout_kept(y, x)
            y64 = squeeze_excite_ref(f64(x), *(t.double() for t in params), act, sact)
            assert_within_2x_torch(y, squeeze_excite_ref(x, *params, act, sact), y64, "output")
            return
        x.requires_grad_()
        for t in params:
            t.requires_grad_()
        y = MF.squeeze_excite(x, *params, activation=act, scale_activation=sact, backend=backend)
        assert y.dtype == dtype and y.shape == x.shape
        assert_layout_kept(y, x)
        x64, *p64 = (f64(t).requires_grad_() for t in (x, *params))
        y64 = squeeze_excite_ref(x64, *p64, act, sact)
        tol = fp_tol(dtype, device, act, sact)
        torch.testing.assert_close(y.double(), y64, **tol)
        if y.numel():
            with torch.no_grad():  # the pre-activations of both 1x1 layers, for the kink check
                z1 = F.conv2d(F.adaptive_avg_pool2d(x64, 1), p64[0], p64[1])
                z2 = F.conv2d(exact_activation(z1, act), p64[2], p64[3])
            assume(dtype == torch.float64 or not (near_a_kink(z1, act) or near_a_kink(z2, sact)))
            grad = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(device, dtype)
            got = torch.autograd.grad(y, (x, *params), grad)
            want = torch.autograd.grad(y64, (x64, *p64), grad.double())
            for name, a, e in zip(("input", "fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias"), got, want):
                assert a.dtype == (dtype if name == "input" else pdt), name
                torch.testing.assert_close(a.double(), e, **tol, msg=lambda m: f"grad {name}: {m}")

    run_examples(se_cases(small=interpreted(backend, device)), check, examples(profile, backend, request))


# ----------------------------------------------------------------------------- pointwise_conv2d


@st.composite
def pw_cases(draw, small=False):
    N = draw(st.integers(0, 2 if small else 3))
    Cin, Cout = draw(st.integers(1, 6 if small else 40)), draw(st.integers(1, 6 if small else 40))
    H, W = draw(st.integers(1, 4 if small else 9)), draw(st.integers(1, 4 if small else 9))
    return dict(
        shape=(N, Cin, H, W), cout=Cout,
        layout=draw(st.sampled_from(LAYOUTS)),
        dtype=draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16])),
        act=draw(st.sampled_from(list(ACTIVATIONS))),
        bias=draw(st.booleans()),
        residual=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_pointwise_conv2d_matches_reference(backend, profile, device, request):
    """``act(conv1x1(x) + b) + residual``: output (and its memory format) for every dtype; input,
    weight, bias and residual gradients in float32 and float64; fp16/bf16 outputs within 2x
    PyTorch's own error."""
    skip_unless_usable(backend, device)

    def check(case):
        gen = torch.Generator().manual_seed(case["seed"])
        dtype, act = case["dtype"], case["act"]
        N, Cin, H, W = case["shape"]
        Cout = case["cout"]
        x = make_x(gen, case["shape"], case["layout"], dtype, device)
        w = (torch.randn(Cout, Cin, 1, 1, generator=gen, dtype=torch.float64) * Cin**-0.5).to(device, dtype)
        b = torch.randn(Cout, generator=gen, dtype=torch.float64).to(device, dtype) if case["bias"] else None
        r = make_x(gen, (N, Cout, H, W), case["layout"], dtype, device) if case["residual"] else None
        if dtype in LOW_PRECISION:
            y = MF.pointwise_conv2d(x, w, b, r, activation=act, backend=backend)
            assert y.dtype == dtype and y.shape == (N, Cout, H, W)
            assert_layout_kept(y, x)
            d = lambda t: None if t is None else t.double()  # noqa: E731
            y64 = pointwise_conv2d_ref(f64(x), w.double(), d(b), f64(r), act)
            assert_within_2x_torch(y, pointwise_conv2d_ref(x, w, b, r, act), y64, "output")
            return
        params = [t.requires_grad_() for t in (x, w, b, r) if t is not None]
        y = MF.pointwise_conv2d(x, w, b, r, activation=act, backend=backend)
        assert y.dtype == dtype and y.shape == (N, Cout, H, W)
        assert_layout_kept(y, x)
        p64 = [f64(t).requires_grad_() for t in params]
        it = iter(p64)
        x64, w64 = next(it), next(it)
        b64 = next(it) if b is not None else None
        r64 = next(it) if r is not None else None
        z64 = F.conv2d(x64, w64, b64)
        y64 = exact_activation(z64, act) + (r64 if r64 is not None else 0)
        names = ["input", "weight"] + ["bias"] * (b is not None) + ["residual"] * (r is not None)
        assert_output_and_grads(y, y64, z64, params, p64, names, act, gen)

    run_examples(pw_cases(small=interpreted(backend, device)), check, examples(profile, backend, request))


# ----------------------------------------------------------------------------- inverted_residual_eval


@st.composite
def block_cases(draw, small=False):
    N = draw(st.integers(0, 2))
    Cin = draw(st.integers(1, 6 if small else 24))
    expand = draw(st.sampled_from([1, 2, 3, 6]))
    Cout = draw(st.sampled_from([Cin, draw(st.integers(1, 6 if small else 32))]))
    stride, dilation = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    k = draw(st.sampled_from([3, 5]))
    H, W = draw(st.integers(1, 6 if small else 12)), draw(st.integers(1, 6 if small else 12))
    return dict(
        shape=(N, Cin, H, W), hidden=Cin * expand, cout=Cout, k=k, stride=stride, dilation=dilation,
        residual=draw(st.booleans()) and stride == 1 and Cout == Cin,
        squeeze=draw(st.sampled_from([0, 0, 1, 4])),  # squeeze-excite channels (0: none)
        layout=draw(st.sampled_from(LAYOUTS)),
        dtype=draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16])),
        act=draw(st.sampled_from(list(ACTIVATIONS))),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_inverted_residual_eval_matches_reference(backend, profile, device, request):
    """The whole block (BatchNorm folded; no expand conv when the hidden channels are the input's),
    any stride, dilation, kernel 3 or 5, residual and squeeze-excite (float32 parameters for half
    inputs, as under autocast): the output (and its memory format) against the op-by-op float64
    reference; fp16/bf16 within 2x the error of PyTorch's op-by-op block."""
    skip_unless_usable(backend, device)

    def check(case):
        gen = torch.Generator().manual_seed(case["seed"])
        dtype, act, k = case["dtype"], case["act"], case["k"]
        N, Cin, H, W = case["shape"]
        Chid, Cout = case["hidden"], case["cout"]
        x = make_x(gen, case["shape"], case["layout"], dtype, device)
        r = lambda *shape, scale=1.0: (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(device, dtype)  # noqa: E731
        expand = (r(Chid, Cin, 1, 1, scale=Cin**-0.5), r(Chid)) if Chid != Cin else (None, None)
        weights = (*expand, r(Chid, 1, k, k, scale=1 / k), r(Chid), r(Cout, Chid, 1, 1, scale=Chid**-0.5), r(Cout))
        args = (case["stride"], case["dilation"])
        S, se = case["squeeze"], None
        if S:
            se_dtype = torch.float32 if dtype in LOW_PRECISION else dtype
            q = lambda *shape, scale=1.0: r(*shape, scale=scale).to(se_dtype)  # noqa: E731
            se = (q(S, Chid, 1, 1, scale=Chid**-0.5), q(S), q(Chid, S, 1, 1, scale=S**-0.5), q(Chid))
        y = MF.inverted_residual_eval(x, *weights, *args, activation=act, residual=case["residual"], se=se,
                                      backend=backend)
        se_args = se if se is not None else (None,) * 4
        w64 = [None if t is None else t.double() for t in (*weights, *se_args)]
        y64 = inverted_residual_eval_ref(f64(x), *w64[:6], *args, act, case["residual"], *w64[6:])
        assert y.dtype == dtype and y.shape == y64.shape and y.shape[1] == Cout
        assert_layout_kept(y, x)
        if dtype in LOW_PRECISION:
            torchs = inverted_residual_eval_ref(x, *weights, *args, act, case["residual"], *se_args)
            assert_within_2x_torch(y, torchs, y64, "output")
        else:
            torch.testing.assert_close(y.double(), y64, **fp_tol(dtype, device, act))

    run_examples(block_cases(small=interpreted(backend, device)), check, examples(profile, backend, request))


# ----------------------------------------------------------------------------- size-1 dims' strides

_SIZE1_OPS = {
    "batch_norm_act": lambda x, g, be: MF.batch_norm_act(
        x, g(x.shape[1]), g(x.shape[1]).abs() + 0.5, g(x.shape[1]), g(x.shape[1]), activation="hardswish", backend=be),
    "batch_norm_act train": lambda x, g, be: MF.batch_norm_act(
        x, None, None, g(x.shape[1]), g(x.shape[1]), training=True, activation="relu6", backend=be),
    "depthwise_conv2d": lambda x, g, be: MF.depthwise_conv2d(
        x, g(x.shape[1], 1, 3, 3), g(x.shape[1]), 1, 1, activation="relu6", backend=be),
    "pointwise_conv2d": lambda x, g, be: MF.pointwise_conv2d(
        x, g(5, x.shape[1], 1, 1), g(5), activation="hardswish", backend=be),
    "squeeze_excite": lambda x, g, be: MF.squeeze_excite(
        x, g(2, x.shape[1], 1, 1), g(2), g(x.shape[1], 2, 1, 1), g(x.shape[1]), backend=be),
    "inverted_residual_eval": lambda x, g, be: MF.inverted_residual_eval(
        x, g(4 * x.shape[1], x.shape[1], 1, 1), g(4 * x.shape[1]), g(4 * x.shape[1], 1, 3, 3), g(4 * x.shape[1]),
        g(x.shape[1], 4 * x.shape[1], 1, 1), g(x.shape[1]), 1, 1, activation="hardswish", residual=True, backend=be),
}


@pytest.mark.parametrize("shape", [(2, 3, 4, 1), (2, 3, 1, 4), (1, 3, 1, 1), (2, 1, 3, 3), (1, 8, 2, 1)])
@pytest.mark.parametrize("op", list(_SIZE1_OPS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_size1_dims_with_arbitrary_strides(backend, op, shape, device):
    """A channels_last tensor whose size-1 dims carry arbitrary strides (size1_strides) gives what
    its dense copy gives, output and input gradient, on every op and backend: the draws above reach
    such a shape rarely. (The reference runs on the dense copy: see f64.)"""
    skip_unless_usable(backend, device)
    if op == "batch_norm_act train" and shape[0] * shape[2] * shape[3] == 1:
        pytest.skip("training needs more than one value per channel")
    gen = torch.Generator().manual_seed(0)

    def g(*size):
        return torch.randn(*size, generator=gen, dtype=torch.float64).to(device, torch.float32)

    x = make_x(gen, shape, "size1_strides", torch.float32, device)
    assert x.is_contiguous(memory_format=torch.channels_last) and 7919 in x.stride()
    dense = x.clone(memory_format=torch.contiguous_format)
    differentiable = op != "inverted_residual_eval"  # (inference only)
    for t in (x, dense) if differentiable else ():
        t.requires_grad_()
    state = gen.get_state()
    y = _SIZE1_OPS[op](x, g, backend)
    gen.set_state(state)
    expected = _SIZE1_OPS[op](dense, g, "torch")
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-5)
    if differentiable:
        grad = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(device, torch.float32)
        torch.testing.assert_close(torch.autograd.grad(y, x, grad)[0], torch.autograd.grad(expected, dense, grad)[0],
                                   rtol=1e-4, atol=1e-5)
