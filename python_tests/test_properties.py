"""Property tests: batch_norm_act on every backend equals the torch reference over random shapes,
layouts (contiguous, channels_last, sliced views), dtypes, activations, eval and training.

CI runs the "ci" hypothesis profile (a few dozen cases per backend); set MK_HYPOTHESIS_PROFILE=nightly
for 500 cases per backend.
"""

import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import mobilenet_kernels.functional as MF
from mobilenet_kernels.activations import ACTIVATIONS
from mobilenet_kernels.reference import batch_norm_act_ref

from conftest import BACKENDS, skip_unless_usable

settings.register_profile("ci", max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("nightly", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("MK_HYPOTHESIS_PROFILE", "ci"))


@st.composite
def cases(draw):
    N = draw(st.integers(0, 3))
    C = draw(st.integers(1, 40))
    H, W = draw(st.integers(1, 9)), draw(st.integers(1, 9))
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


# Where each activation's derivative jumps: within rounding of these, float32 and float64 may take
# different branches, and training-mode BatchNorm spreads that one element's flip over its channel.
KINKS = {"relu": (0.0,), "relu6": (0.0, 6.0), "hardswish": (-3.0, 3.0), "hardsigmoid": (-3.0, 3.0)}


def near_a_kink(z64, act):
    return any(bool(((z64 - k).abs() < 1e-4).any()) for k in KINKS.get(act, ()))


def pre_activation(x, mean, var, weight, bias, training):
    """BatchNorm's output before the activation, in float64 (batch statistics when training)."""
    cast = lambda t: None if t is None else t.double()  # noqa: E731
    stats = (None, None) if training else (cast(mean), cast(var))
    return F.batch_norm(x.detach().double(), *stats, cast(weight), cast(bias), training, 0.0, 1e-5)


def make(case):
    gen = torch.Generator().manual_seed(case["seed"])
    N, C, H, W = case["shape"]
    if case["layout"] == "sliced":
        x = torch.randn(N, C + 1, H, W + 2, generator=gen, dtype=case["dtype"])[:, 1:, :, 1:-1]
    else:
        x = torch.randn(N, C, H, W, generator=gen, dtype=case["dtype"]) * 3 + 1
        if case["layout"] == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
    params = [torch.randn(C, generator=gen) for _ in range(3)] + [torch.rand(C, generator=gen) + 0.1]
    mean, weight, bias, var = params
    if not case["affine"]:
        weight = bias = None
    return x, mean, var, weight, bias


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_norm_act_matches_reference(backend):
    skip_unless_usable(backend, "cpu")

    @settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(case=cases())
    def check(case):
        x, mean, var, weight, bias = make(case)
        x.requires_grad_()
        rm, rv = mean.clone(), var.clone()
        y = MF.batch_norm_act(x, rm, rv, weight, bias, case["training"], 0.1, 1e-5, case["act"], backend=backend)
        assert y.shape == x.shape and y.dtype == x.dtype
        x64 = x.detach().double().requires_grad_()
        rm64, rv64 = mean.double(), var.double()
        cast = lambda t: None if t is None else t.double()  # noqa: E731
        y64 = batch_norm_act_ref(x64, rm64, rv64, cast(weight), cast(bias), case["training"], 0.1, 1e-5, case["act"])
        tol = dict(rtol=1e-4, atol=1e-4) if x.dtype == torch.float32 else dict(rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(y.double(), y64, **tol)
        stats_tol = tol if x.dtype == torch.float32 else dict(rtol=1e-6, atol=1e-6)  # float32 running stats
        torch.testing.assert_close(rm.double(), rm64, **stats_tol)
        torch.testing.assert_close(rv.double(), rv64, **stats_tol)
        if x.numel():
            # A gradient is only defined away from the kinks: skip inputs that land on one.
            z64 = pre_activation(x, mean, var, weight, bias, case["training"])
            assume(x.dtype == torch.float64 or not near_a_kink(z64, case["act"]))
            grad = torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(case["seed"] + 1))
            (gx,) = torch.autograd.grad(y, x, grad)
            (gx64,) = torch.autograd.grad(y64, x64, grad.double())
            torch.testing.assert_close(gx.double(), gx64, **tol)

    check()
