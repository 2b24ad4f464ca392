"""Property tests: every op on every backend equals the float64 torch reference over random shapes,
strides, paddings, dilations, layouts (contiguous, channels_last, sliced views), dtypes and
activations: batch_norm_act (eval, training), depthwise_conv2d, the fused depthwise conv + BatchNorm
+ activation (eval, training) and squeeze_excite; outputs, gradients and running statistics.

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
from mobilenet_kernels.activations import ACTIVATIONS, apply_activation
from mobilenet_kernels.reference import (
    batch_norm_act_ref,
    depthwise_conv2d_bn_act_ref,
    depthwise_conv2d_ref,
    squeeze_excite_ref,
)

from conftest import BACKENDS, skip_unless_usable
from op_helpers import float64_tolerance

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


def make_x(gen, shape, layout, dtype, device, scale=2.0, shift=0.5):
    """A float64 random tensor of ``shape`` in ``layout`` (nchw | channels_last | sliced: a
    non-dense view into a larger tensor), cast to ``dtype``, on ``device``."""
    N, C, H, W = shape
    if layout == "sliced":
        x = torch.randn(N, C + 1, H, W + 2, generator=gen, dtype=torch.float64)[:, 1:, :, 1:-1]
    else:
        x = torch.randn(N, C, H, W, generator=gen, dtype=torch.float64)
    x = x * scale + shift
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x.to(device=device, dtype=dtype)


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


# ----------------------------------------------------------------------------- batch_norm_act


@st.composite
def bn_cases(draw, small=False):
    N = draw(st.integers(0, 2 if small else 3))
    C = draw(st.integers(1, 6 if small else 40))
    H, W = draw(st.integers(1, 5 if small else 9)), draw(st.integers(1, 5 if small else 9))
    training = draw(st.booleans()) and N * H * W > 1
    return dict(
        shape=(N, C, H, W),
        layout=draw(st.sampled_from(["nchw", "channels_last", "sliced"])),
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
    return F.batch_norm(x.detach().double(), *stats, cast(weight), cast(bias), training, 0.0, 1e-5)


def make_bn(case, device):
    gen = torch.Generator().manual_seed(case["seed"])
    N, C, H, W = case["shape"]
    if case["layout"] == "sliced":
        x = torch.randn(N, C + 1, H, W + 2, generator=gen, dtype=case["dtype"])[:, 1:, :, 1:-1]
    else:
        x = torch.randn(N, C, H, W, generator=gen, dtype=case["dtype"]) * 3 + 1
        if case["layout"] == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
    params = [torch.randn(C, generator=gen) for _ in range(3)] + [torch.rand(C, generator=gen) + 0.1]
    mean, weight, bias, var = (t.to(device) for t in params)
    if not case["affine"]:
        weight = bias = None
    return x.to(device), mean, var, weight, bias


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
        x64 = x.detach().double().requires_grad_()
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
        layout=draw(st.sampled_from(["nchw", "channels_last", "sliced"])),
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
            y64 = depthwise_conv2d_ref(x.double(), w.double(), None if b is None else b.double(), s, p, d, act)
            assert_within_2x_torch(y, depthwise_conv2d_ref(x, w, b, s, p, d, act), y64, "output")
            return
        params = [t.requires_grad_() for t in (x, w, b) if t is not None]
        y = MF.depthwise_conv2d(x, w, b, s, p, d, activation=act, backend=backend)
        assert y.dtype == dtype and y.shape == (N, C, *conv_out_hw(case))
        assert_layout_kept(y, x)
        p64 = [t.detach().double().requires_grad_() for t in params]
        x64, w64, b64 = p64[0], p64[1], (p64[2] if b is not None else None)
        z64 = F.conv2d(x64, w64, b64, case["stride"], case["padding"], case["dilation"], groups=C)
        y64 = apply_activation(z64, act)
        tol = fp_tol(dtype, device, act)
        torch.testing.assert_close(y.double(), y64, **tol)
        if y.numel():
            assume(dtype == torch.float64 or not near_a_kink(z64.detach(), act))
            grad = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(device, dtype)
            got = torch.autograd.grad(y, params, grad)
            want = torch.autograd.grad(y64, p64, grad.double())
            for name, a, e in zip(("input", "weight", "bias"), got, want):
                assert a.shape == e.shape, name
                torch.testing.assert_close(a.double(), e, **tol, msg=lambda m: f"grad {name}: {m}")

    run_examples(dw_cases(small=interpreted(backend, device)), check, examples(profile, backend, request))


# ----------------------------------------------------------------------------- dw conv + BN + act


@st.composite
def dwbn_cases(draw, small=False):
    g = draw(conv_geometry(small))
    N, _, _, _ = g["shape"]
    OH, OW = conv_out_hw(g)
    return dict(
        g,
        layout=draw(st.sampled_from(["nchw", "channels_last", "sliced"])),
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
        p64 = [t.detach().double().requires_grad_() for t in params]
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
            scale = max([e.abs().max().item() for e in want if e is not None and e.numel()] + [1.0])
            for i, (a, e) in enumerate(zip(got, want)):
                # The conv bias under training-mode BatchNorm has no effect on the output: its
                # gradient is zero in exact arithmetic (None where the kernels skip it), rounding
                # noise otherwise, judged on the scale of all the gradients.
                if a is None or e is None:
                    for t in (a, e):
                        assert t is None or t.abs().max().item() <= tol["atol"] * scale, f"gradient {i}"
                    continue
                torch.testing.assert_close(a.double(), e, rtol=tol["rtol"], atol=tol["atol"] * scale,
                                           msg=lambda m: f"gradient {i}: {m}")

    run_examples(dwbn_cases(small=interpreted(backend, device)), check, examples(profile, backend, request))


# ----------------------------------------------------------------------------- squeeze_excite


@st.composite
def se_cases(draw, small=False):
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]))
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    return dict(
        shape=(draw(st.integers(0, 2 if small else 3)), draw(st.integers(1, 6 if small else 24)),
               draw(st.integers(1, 4 if small else 8)), draw(st.integers(1, 4 if small else 8))),
        squeeze=draw(st.integers(1, 4 if small else 8)),
        layout=draw(st.sampled_from(["nchw", "channels_last", "sliced"])),
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
            y64 = squeeze_excite_ref(x.double(), *(t.double() for t in params), act, sact)
            assert_within_2x_torch(y, squeeze_excite_ref(x, *params, act, sact), y64, "output")
            return
        x.requires_grad_()
        for t in params:
            t.requires_grad_()
        y = MF.squeeze_excite(x, *params, activation=act, scale_activation=sact, backend=backend)
        assert y.dtype == dtype and y.shape == x.shape
        assert_layout_kept(y, x)
        x64, *p64 = (t.detach().double().requires_grad_() for t in (x, *params))
        y64 = squeeze_excite_ref(x64, *p64, act, sact)
        tol = fp_tol(dtype, device, act, sact)
        torch.testing.assert_close(y.double(), y64, **tol)
        if y.numel():
            with torch.no_grad():  # the pre-activations of both 1x1 layers, for the kink check
                z1 = F.conv2d(F.adaptive_avg_pool2d(x64, 1), p64[0], p64[1])
                z2 = F.conv2d(apply_activation(z1, act), p64[2], p64[3])
            assume(dtype == torch.float64 or not (near_a_kink(z1, act) or near_a_kink(z2, sact)))
            grad = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(device, dtype)
            got = torch.autograd.grad(y, (x, *params), grad)
            want = torch.autograd.grad(y64, (x64, *p64), grad.double())
            for name, a, e in zip(("input", "fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias"), got, want):
                assert a.dtype == (dtype if name == "input" else pdt), name
                torch.testing.assert_close(a.double(), e, **tol, msg=lambda m: f"grad {name}: {m}")

    run_examples(se_cases(small=interpreted(backend, device)), check, examples(profile, backend, request))
