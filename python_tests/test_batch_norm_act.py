"""batch_norm_act: parity, low-precision error bounds, gradcheck, opcheck, compile, bad input."""

import pytest
import torch
import torch.nn.functional as F

import mobilenet_kernels.functional as MF
from mobilenet_kernels.activations import ACTIVATIONS, apply_activation
from mobilenet_kernels.nn import BatchNormAct2d
from mobilenet_kernels.reference import batch_norm_act_ref

from conftest import BACKENDS, skip_unless_usable
from op_helpers import assert_bitwise_repeatable, assert_within_2x_torch, float64_tolerance, make_input

ACTS = list(ACTIVATIONS)
# Real MobileNet layers (scaled down in N and H/W for the interpreter) plus edge cases:
# 1x1 and odd spatial sizes, C not a multiple of 8, N = 1.
SHAPES = [(2, 16, 7, 7), (1, 24, 13, 13), (3, 20, 1, 1), (2, 13, 5, 3), (1, 72, 4, 4)]
LAYOUTS = ["nchw", "channels_last", "strided"]
OPS = {"cuda": torch.ops.mobilenet_kernels.batch_norm_act_eval, "triton": torch.ops.mobilenet_kernels.batch_norm_act_eval_triton}
BACKWARD_OPS = {
    "cuda": torch.ops.mobilenet_kernels.batch_norm_act_eval_backward,
    "triton": torch.ops.mobilenet_kernels.batch_norm_act_eval_backward_triton,
}
# fp32 tolerance against the float64 reference (one table for the file).
FP32_TOL = dict(rtol=1e-5, atol=1e-5)


def make_params(C, device, dtype=torch.float32):
    mean = torch.randn(C, device=device, dtype=dtype) * 0.5
    var = torch.rand(C, device=device, dtype=dtype) + 0.5
    weight = torch.randn(C, device=device, dtype=dtype)
    bias = torch.randn(C, device=device, dtype=dtype)
    return mean, var, weight, bias


def reference64(x, mean, var, weight, bias, eps, act):
    return batch_norm_act_ref(x, mean, var, weight, bias, False, 0.1, eps, act, upcast=True).double()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("act", ACTS)
def test_forward_fp32_matches_reference(backend, layout, act, device):
    skip_unless_usable(backend, device)
    for shape in SHAPES:
        x = make_input(shape, layout, torch.float32, device)
        mean, var, w, b = make_params(shape[1], device)
        y = MF.batch_norm_act(x, mean, var, w, b, False, 0.1, 1e-5, act, backend=backend)
        torch.testing.assert_close(y.double(), reference64(x, mean, var, w, b, 1e-5, act), **FP32_TOL)
        assert y.dtype == x.dtype
        if layout == "channels_last" and shape[2] * shape[3] > 1:
            assert y.is_contiguous(memory_format=torch.channels_last)
        else:
            assert y.is_contiguous()


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("act", ["relu6", "hardswish", "hardsigmoid", "identity"])
def test_low_precision_error_within_2x_torch(backend, dtype, layout, act, device):
    """Our fp16/bf16 error against float64 stays within 2x PyTorch's own on the same inputs,
    forward and backward (bf16/fp16 activations with fp32 BatchNorm parameters, as under AMP)."""
    skip_unless_usable(backend, device)
    for shape in SHAPES:
        x = make_input(shape, layout, dtype, device).requires_grad_()
        mean, var, w, b = make_params(shape[1], device)
        w.requires_grad_()
        grad = make_input(shape, layout, dtype, device)

        y = MF.batch_norm_act(x, mean, var, w, b, False, 0.1, 1e-3, act, backend=backend)
        gx, gw = torch.autograd.grad(y, (x, w), grad)

        x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
        y64 = apply_activation(F.batch_norm(x64, mean.double(), var.double(), w64, b.double(), False, 0.1, 1e-3), act)
        gx64, gw64 = torch.autograd.grad(y64, (x64, w64), grad.double())

        xt, wt = x.detach().requires_grad_(), w.detach().requires_grad_()
        yt = apply_activation(F.batch_norm(xt, mean, var, wt, b, False, 0.1, 1e-3), act)
        gxt, gwt = torch.autograd.grad(yt, (xt, wt), grad)

        assert y.dtype == dtype and gx.dtype == dtype and gw.dtype == torch.float32
        assert_within_2x_torch((y, gx, gw), (yt, gxt, gwt), (y64, gx64, gw64), ("output", "grad_input", "grad_weight"),
                               f"for shape {shape}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("act", ACTS)
def test_backward_fp32_matches_reference(backend, act, device):
    skip_unless_usable(backend, device)
    for shape in SHAPES[:3]:
        for layout in ("nchw", "channels_last"):
            x = make_input(shape, layout, torch.float32, device).requires_grad_()
            params = [p.requires_grad_() for p in make_params(shape[1], device)]
            grad = torch.randn(shape, device=device)
            y = MF.batch_norm_act(x, *params, False, 0.1, 1e-5, act, backend=backend)
            grads = torch.autograd.grad(y, (x, *params), grad)

            x64 = x.detach().double().requires_grad_()
            p64 = [p.detach().double().requires_grad_() for p in params]
            y64 = batch_norm_act_ref(x64, *p64, False, 0.1, 1e-5, act)
            ref = torch.autograd.grad(y64, (x64, *p64), grad.double())
            for g, r, name in zip(grads, ref, ("input", "running_mean", "running_var", "weight", "bias")):
                torch.testing.assert_close(g.double(), r, rtol=1e-4, atol=1e-4, msg=lambda m: f"grad of {name}: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_gradcheck_fp64_every_input(backend, act, layout, device):
    skip_unless_usable(backend, device)
    x = make_input((2, 5, 3, 3), layout, torch.float64, device).requires_grad_()
    params = [p.requires_grad_() for p in make_params(5, device, torch.float64)]
    fn = lambda *a: MF.batch_norm_act(a[0], a[1], a[2], a[3], a[4], False, 0.1, 1e-5, act, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_fp64_without_affine(backend, device):
    skip_unless_usable(backend, device)
    x = make_input((2, 4, 2, 3), "nchw", torch.float64, device).requires_grad_()
    mean, var, _, _ = make_params(4, device, torch.float64)
    mean.requires_grad_()
    var.requires_grad_()
    fn = lambda x, m, v: MF.batch_norm_act(x, m, v, None, None, False, 0.1, 1e-5, "hardswish", backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, mean, var), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("act", ["relu", "relu6", "hardswish", "hardsigmoid"])
def test_derivative_at_the_kinks_matches_torch(backend, act, device):
    """relu' at 0, relu6' at 0 and 6, hardswish' and hardsigmoid' at +-3, as PyTorch defines them."""
    skip_unless_usable(backend, device)
    z = torch.tensor([-3.0, 0.0, 3.0, 6.0, -2.5, 2.5, 7.0, -4.0], device=device).view(1, 8, 1, 1)
    ones, zeros = torch.ones(8, device=device), torch.zeros(8, device=device)
    x = z.clone().requires_grad_()
    y = MF.batch_norm_act(x, zeros, ones, None, None, False, 0.1, 0.0, act, backend=backend)
    (gx,) = torch.autograd.grad(y.sum(), x)
    xt = z.clone().requires_grad_()
    (gt,) = torch.autograd.grad(apply_activation(xt, act).sum(), xt)
    torch.testing.assert_close(gx, gt, rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_nan_and_inf_propagate_like_torch(backend, device):
    skip_unless_usable(backend, device)
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0], device=device).view(1, 4, 1, 1)
    ones, zeros = torch.ones(4, device=device), torch.zeros(4, device=device)
    for act in ACTS:
        y = MF.batch_norm_act(x, zeros, ones, None, None, False, 0.1, 0.0, act, backend=backend)
        torch.testing.assert_close(y, apply_activation(x, act), equal_nan=True)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_backward_is_bitwise_deterministic(backend, layout, device):
    skip_unless_usable(backend, device)
    x = make_input((4, 24, 9, 9), layout, torch.float32, device).requires_grad_()
    params = [p.requires_grad_() for p in make_params(24, device)]
    grad = torch.randn(x.shape, device=device)

    def run():
        y = MF.batch_norm_act(x, *params, False, 0.1, 1e-5, "hardswish", backend=backend)
        return torch.autograd.grad(y, (x, *params), grad)

    assert_bitwise_repeatable(run)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend, device):
    skip_unless_usable(backend, device)
    x = torch.randn(0, 8, 5, 5, device=device, requires_grad=True)
    params = [p.requires_grad_() for p in make_params(8, device)]
    y = MF.batch_norm_act(x, *params, False, 0.1, 1e-5, "relu6", backend=backend)
    assert y.shape == x.shape
    grads = torch.autograd.grad(y.sum(), (x, *params), allow_unused=True)
    assert grads[0].shape == x.shape
    for g in grads[1:]:
        assert g is None or torch.count_nonzero(g) == 0


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_opcheck(backend, requires_grad, layout, device):
    skip_unless_usable(backend, device)
    for affine in (True, False):
        x = make_input((2, 8, 5, 5), layout, torch.float32, device).requires_grad_(requires_grad)
        mean, var, w, b = make_params(8, device)
        w, b = (w.requires_grad_(requires_grad), b.requires_grad_(requires_grad)) if affine else (None, None)
        torch.library.opcheck(OPS[backend], (x, mean, var, w, b, 1e-5, "hardswish"))
        if not requires_grad:
            grad = make_input((2, 8, 5, 5), layout, torch.float32, device)
            torch.library.opcheck(BACKWARD_OPS[backend], (grad, x, mean, var, w, b, 1e-5, "hardswish"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend, device):
    skip_unless_usable(backend, device)
    torch._dynamo.reset()
    x = make_input((2, 16, 6, 6), "channels_last", torch.float32, device).requires_grad_()
    params = [p.requires_grad_() for p in make_params(16, device)]

    def fn(x, m, v, w, b):
        return MF.batch_norm_act(x, m, v, w, b, False, 0.1, 1e-5, "hardswish", backend=backend) * 2

    compiled = torch.compile(fn, fullgraph=True)
    y = compiled(x, *params)
    y_ref = fn(x, *params)
    torch.testing.assert_close(y, y_ref)
    g = torch.autograd.grad(y.sum(), (x, params[3]))
    g_ref = torch.autograd.grad(y_ref.sum(), (x, params[3]))
    torch.testing.assert_close(g, g_ref)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_autocast_mixed_dtypes(backend, device):
    """Under autocast a conv emits bf16 while BatchNorm keeps fp32 parameters: the op takes both."""
    skip_unless_usable(backend, device)
    conv = torch.nn.Conv2d(3, 16, 3, padding=1).to(device)
    mean, var, w, b = make_params(16, device)
    x = torch.randn(2, 3, 8, 8, device=device)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        h = conv(x)
        y = MF.batch_norm_act(h, mean, var, w, b, False, 0.1, 1e-5, "relu6", backend=backend)
    assert h.dtype == torch.bfloat16 and y.dtype == torch.bfloat16
    ref = reference64(h, mean, var, w, b, 1e-5, "relu6")
    torch.testing.assert_close(y.double(), ref, rtol=1e-2, atol=1e-2)


# ----------------------------------------------------------------------------- training mode


TRAIN_OPS = {"cuda": torch.ops.mobilenet_kernels.batch_norm_act_train, "triton": torch.ops.mobilenet_kernels.batch_norm_act_train_triton}
TRAIN_BACKWARD_OPS = {
    "cuda": torch.ops.mobilenet_kernels.batch_norm_act_train_backward,
    "triton": torch.ops.mobilenet_kernels.batch_norm_act_train_backward_triton,
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("act", ["hardswish", "relu6", "identity"])
@pytest.mark.parametrize("config", ["affine", "no_affine", "no_running_stats", "cumulative"])
def test_training_three_steps_match_batch_norm(backend, layout, act, config, device):
    """Three training steps in float64 against nn.BatchNorm2d + activation: outputs, every grad and
    the running statistics (momentum, momentum=None, affine=False, track_running_stats=False)."""
    skip_unless_usable(backend, device)
    kwargs = dict(
        affine=config != "no_affine",
        track_running_stats=config != "no_running_stats",
        momentum=None if config == "cumulative" else 0.1,
    )
    C = 13
    bn = torch.nn.BatchNorm2d(C, **kwargs).to(device, torch.float64)
    ours = BatchNormAct2d(C, **kwargs, activation=act, backend=backend).to(device, torch.float64)
    if bn.affine:
        with torch.no_grad():
            bn.weight.normal_()
            bn.bias.normal_()
    ours.load_state_dict(bn.state_dict())
    for step in range(3):
        x = make_input((3, C, 5, 7), layout, torch.float64, device).requires_grad_()
        grad = torch.randn(x.shape, dtype=torch.float64, device=device)
        y_ref = apply_activation(bn(x), act)
        y = ours(x)
        assert y.is_contiguous(memory_format=torch.channels_last) == y_ref.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(y, y_ref, **float64_tolerance(act, device))
        params = [x] + ([ours.weight, ours.bias] if bn.affine else [])
        params_ref = [x] + ([bn.weight, bn.bias] if bn.affine else [])
        g = torch.autograd.grad(y, params, grad)
        g_ref = torch.autograd.grad(y_ref, params_ref, grad)
        torch.testing.assert_close(g, g_ref, **float64_tolerance(act, device))
    torch.testing.assert_close(ours.state_dict(), bn.state_dict(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("act", ["hardswish", "relu"])
def test_training_fp32_matches_reference(backend, layout, act, device):
    skip_unless_usable(backend, device)
    for shape in SHAPES[:2] + SHAPES[3:]:
        x = make_input(shape, layout, torch.float32, device).requires_grad_()
        C = shape[1]
        w, b = (torch.randn(C, device=device).requires_grad_() for _ in range(2))
        rm, rv = torch.zeros(C, device=device), torch.ones(C, device=device)
        y = MF.batch_norm_act(x, rm, rv, w, b, True, 0.1, 1e-5, act, backend=backend)
        grad = torch.randn(shape, device=device)
        g = torch.autograd.grad(y, (x, w, b), grad)
        x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
        rm64, rv64 = torch.zeros(C, dtype=torch.float64, device=device), torch.ones(C, dtype=torch.float64, device=device)
        y64 = apply_activation(F.batch_norm(x64, rm64, rv64, w64, b64, True, 0.1, 1e-5), act)
        g64 = torch.autograd.grad(y64, (x64, w64, b64), grad.double())
        torch.testing.assert_close(y.double(), y64, rtol=1e-4, atol=1e-4)
        for a, r in zip(g, g64):
            torch.testing.assert_close(a.double(), r, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(rm.double(), rm64, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(rv.double(), rv64, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_training_low_precision_error_within_2x_torch(backend, dtype, layout, device):
    """AMP-style: bf16/fp16 input, fp32 parameters and running stats; error vs float64 within 2x torch's."""
    skip_unless_usable(backend, device)
    for shape in SHAPES[:2] + SHAPES[3:]:
        C = shape[1]
        x = make_input(shape, layout, dtype, device).requires_grad_()
        w, b = (torch.randn(C, device=device).requires_grad_() for _ in range(2))
        grad = make_input(shape, layout, dtype, device)
        runs = {}
        for who in ("ours", "torch", "ref"):
            xi = (x.detach().double() if who == "ref" else x.detach()).requires_grad_()
            wi, bi = ((t.detach().double() if who == "ref" else t.detach()).requires_grad_() for t in (w, b))
            rm = torch.zeros(C, device=device, dtype=torch.float64 if who == "ref" else torch.float32)
            rv = torch.ones_like(rm)
            if who == "ours":
                y = MF.batch_norm_act(xi, rm, rv, wi, bi, True, 0.1, 1e-5, "hardswish", backend=backend)
            else:
                y = apply_activation(F.batch_norm(xi, rm, rv, wi, bi, True, 0.1, 1e-5), "hardswish")
            runs[who] = (y, *torch.autograd.grad(y, (xi, wi, bi), grad.to(xi.dtype)), rm, rv)
        names = ("output", "grad_input", "grad_weight", "grad_bias", "running_mean", "running_var")
        assert_within_2x_torch(runs["ours"], runs["torch"], runs["ref"], names, f"for shape {shape}")


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_training_statistics_survive_a_large_mean(backend, layout, device):
    """A channel with mean 1e4 and std 1 keeps its variance (no E[x^2] - E[x]^2 cancellation)."""
    skip_unless_usable(backend, device)
    x = make_input((8, 4, 9, 9), layout, torch.float32, device) * 0.5 + 1e4
    rm, rv = torch.zeros(4, device=device), torch.ones(4, device=device)
    MF.batch_norm_act(x, rm, rv, None, None, True, 1.0, 1e-5, "identity", backend=backend)
    x64 = x.double()
    torch.testing.assert_close(rm.double(), x64.mean((0, 2, 3)), rtol=1e-6, atol=0)
    torch.testing.assert_close(rv.double(), x64.var((0, 2, 3), unbiased=True), rtol=1e-4, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_training_gradcheck_fp64(backend, act, layout, device):
    skip_unless_usable(backend, device)
    x = make_input((3, 4, 3, 2), layout, torch.float64, device).requires_grad_()
    w, b = (torch.randn(4, dtype=torch.float64, device=device).requires_grad_() for _ in range(2))
    fn = lambda x, w, b: MF.batch_norm_act(x, None, None, w, b, True, 0.1, 1e-5, act, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_training_is_bitwise_deterministic(backend, layout, device):
    skip_unless_usable(backend, device)
    x = make_input((4, 24, 9, 9), layout, torch.float32, device).requires_grad_()
    w, b = (torch.randn(24, device=device).requires_grad_() for _ in range(2))
    grad = torch.randn(x.shape, device=device)

    def run():
        rm, rv = torch.zeros(24, device=device), torch.ones(24, device=device)
        y = MF.batch_norm_act(x, rm, rv, w, b, True, 0.1, 1e-5, "hardswish", backend=backend)
        return (y, rm, rv, *torch.autograd.grad(y, (x, w, b), grad))

    assert_bitwise_repeatable(run)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_training_opcheck(backend, requires_grad, layout, device):
    skip_unless_usable(backend, device)
    for affine in (True, False):
        x = make_input((2, 8, 5, 5), layout, torch.float32, device).requires_grad_(requires_grad)
        w, b = (torch.randn(8, device=device).requires_grad_(requires_grad) for _ in range(2))
        w, b = (w, b) if affine else (None, None)
        torch.library.opcheck(TRAIN_OPS[backend], (x, w, b, 1e-5, "relu6"))
        if not requires_grad:
            _, mean, var = TRAIN_OPS[backend](x, w, b, 1e-5, "relu6")
            grad = make_input((2, 8, 5, 5), layout, torch.float32, device)
            torch.library.opcheck(TRAIN_BACKWARD_OPS[backend], (grad, x, w, b, mean, var, 1e-5, "relu6"))
    rm, rv = torch.zeros(8, device=device), torch.ones(8, device=device)
    torch.library.opcheck(
        torch.ops.mobilenet_kernels.batch_norm_update_stats, (rm, rv, torch.randn(8, device=device), torch.rand(8, device=device), 50, 0.1)
    )


@pytest.mark.parametrize("buffers", ["float32", "float16", "bfloat16", "float64", "strided"])
def test_update_stats_formula(buffers, device):
    """batch_norm_update_stats gives ATen's update, running = momentum * batch + (1 - momentum) *
    running with the variance unbiased (count / (count - 1)), in place, for running statistics of
    every float dtype (float32 batch statistics; float64 ones for float64 buffers) and strided
    buffers (on CUDA: the one-kernel update, and the generic one for the strided case)."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    C, count, momentum = 37, 50, 0.1
    dtype = torch.float32 if buffers == "strided" else getattr(torch, buffers)
    stats_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    rm = torch.randn(2 * C if buffers == "strided" else C, device=device).to(dtype)
    rv = (torch.rand(rm.shape, device=device) + 0.5).to(dtype)
    if buffers == "strided":
        rm, rv = rm[::2], rv[::2]
    mean, var = torch.randn(C, device=device, dtype=stats_dtype), torch.rand(C, device=device, dtype=stats_dtype)
    want_m = momentum * mean.double() + (1 - momentum) * rm.double()
    want_v = momentum * var.double() * count / (count - 1) + (1 - momentum) * rv.double()
    ptr = rm.data_ptr()
    torch.ops.mobilenet_kernels.batch_norm_update_stats(rm, rv, mean, var, count, momentum)
    assert rm.data_ptr() == ptr and rm.dtype == dtype
    tol = {torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float64: 1e-12}.get(dtype, 1e-6)
    torch.testing.assert_close(rm.double(), want_m, rtol=tol, atol=tol)
    torch.testing.assert_close(rv.double(), want_v, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_module_under_torch_compile(backend, device):
    skip_unless_usable(backend, device)
    torch._dynamo.reset()
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), BatchNormAct2d(8, activation="hardswish", backend=backend)
    ).to(device)
    ref = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8), torch.nn.Hardswish()).to(device)
    ref.load_state_dict(model.state_dict())
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(2, 3, 6, 6, device=device).contiguous(memory_format=torch.channels_last)
    y, y_ref = compiled(x), ref(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    y.sum().backward()
    y_ref.sum().backward()
    torch.testing.assert_close(model[0].weight.grad, ref[0].weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model[1].running_var, ref[1].running_var, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_training_under_autocast(backend, device):
    """bf16 activations from an autocast conv, fp32 BatchNorm parameters and running stats."""
    skip_unless_usable(backend, device)
    conv = torch.nn.Conv2d(3, 16, 3, padding=1).to(device)
    ours = BatchNormAct2d(16, activation="relu6", backend=backend).to(device)
    ref = torch.nn.BatchNorm2d(16).to(device)
    x = torch.randn(4, 3, 8, 8, device=device)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        h = conv(x)
        y = ours(h)
    assert h.dtype == torch.bfloat16 and y.dtype == torch.bfloat16 and ours.running_mean.dtype == torch.float32
    y_ref = F.relu6(ref(h.float()))
    torch.testing.assert_close(y.float(), y_ref, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(ours.running_mean, ref.running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.running_var, ref.running_var, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_empty_batch_leaves_running_stats(backend, device):
    skip_unless_usable(backend, device)
    ours = BatchNormAct2d(5, activation="relu", backend=backend).to(device)
    y = ours(torch.randn(0, 5, 4, 4, device=device))
    assert y.shape == (0, 5, 4, 4)
    torch.testing.assert_close(ours.running_mean, torch.zeros(5, device=device))
    torch.testing.assert_close(ours.running_var, torch.ones(5, device=device))


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_value_per_channel_in_training_raises(backend):
    skip_unless_usable(backend, "cpu")
    rm, rv = torch.zeros(4), torch.ones(4)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        MF.batch_norm_act(torch.randn(1, 4, 1, 1), rm, rv, None, None, True, 0.1, 1e-5, "relu", backend=backend)
    assert torch.equal(rm, torch.zeros(4)) and torch.equal(rv, torch.ones(4))


# ----------------------------------------------------------------------------- the module


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("act", ["relu", "hardswish", "identity"])
def test_module_eval_matches_batch_norm_and_activation(backend, act, device):
    skip_unless_usable(backend, device)
    bn = torch.nn.BatchNorm2d(10).to(device)
    for name, t in bn.named_buffers():
        if t.is_floating_point():
            t.copy_(torch.rand_like(t) + 0.5)
    with torch.no_grad():
        bn.weight.normal_()
        bn.bias.normal_()
    ours = BatchNormAct2d(10, activation=act, backend=backend).to(device)
    ours.load_state_dict(bn.state_dict())
    assert list(ours.state_dict()) == list(bn.state_dict())
    bn.eval()
    ours.eval()
    x = torch.randn(2, 10, 6, 6, device=device)
    torch.testing.assert_close(ours(x), apply_activation(bn(x), act), **FP32_TOL)


def test_from_batch_norm_shares_parameters():
    bn = torch.nn.BatchNorm2d(6).eval()
    ours = BatchNormAct2d.from_batch_norm(bn, "relu6", "torch")
    assert ours.weight is bn.weight and ours.running_mean is bn.running_mean
    assert not ours.training and ours.activation == "relu6"
    assert "activation=relu6" in repr(ours)


# ----------------------------------------------------------------------------- bad input


def _good_args(device="cpu"):
    x = torch.randn(2, 4, 3, 3, device=device)
    return [x, *make_params(4, device), False, 0.1, 1e-5, "relu"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "index, value, exc, match",
    [
        (0, torch.randint(0, 3, (2, 4, 3, 3)), TypeError, "input"),
        (0, torch.randn(2, 4, 3, 3, dtype=torch.complex64), TypeError, "input"),
        (0, torch.randn(4), ValueError, "input"),
        (1, torch.zeros(5), ValueError, "running_mean"),
        (2, torch.ones(3), ValueError, "running_var"),
        (3, torch.ones(2, 2), ValueError, "weight"),
        (4, torch.zeros(7), ValueError, "bias"),
        (3, torch.ones(4, dtype=torch.int64), TypeError, "weight"),
        (7, -1.0, ValueError, "eps"),
        (8, "gelu", ValueError, "activation"),
    ],
)
def test_bad_arguments_name_the_argument(backend, index, value, exc, match):
    skip_unless_usable(backend, "cpu")
    args = _good_args()
    args[index] = value
    before = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    with pytest.raises(exc, match=match):
        MF.batch_norm_act(*args, backend=backend)
    for a, b in zip(args, before):  # nothing was modified by the failed call
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b)


def test_unknown_backend_names_backend():
    with pytest.raises(ValueError, match="backend"):
        MF.batch_norm_act(*_good_args(), backend="cudnn")
    with pytest.raises(ValueError, match="backend"):
        BatchNormAct2d(4, backend="fast")
    with pytest.raises(ValueError, match="activation"):
        BatchNormAct2d(4, activation="swish")


@pytest.mark.parametrize("op", ["cuda", "triton"])
def test_direct_op_call_checks_arguments(op):
    """The ops check their own arguments too (C++ TORCH_CHECK / Python), with the argument's name."""
    skip_unless_usable(op, "cpu")
    x, mean, var, w, b = _good_args()[:5]
    with pytest.raises(ValueError, match="running_var"):
        OPS[op](x, mean, var[:2], w, b, 1e-5, "relu")
    with pytest.raises(ValueError, match="activation"):
        OPS[op](x, mean, var, w, b, 1e-5, "tanh")
