"""pointwise_conv2d (1x1 conv GEMM + bias/act/residual epilogue) and 1x1 conv + BN + act: parity,
low-precision error bounds, gradcheck, statistics, determinism, opcheck, compile, autocast, bad input."""

import pytest
import torch
import torch.nn.functional as F

import mobilenet_kernels.functional as MF
from mobilenet_kernels.activations import apply_activation
from mobilenet_kernels.reference import batch_norm_act_ref, pointwise_conv2d_ref

from conftest import BACKENDS, skip_unless_usable
from op_helpers import (assert_bad_arguments_name_the_argument, assert_bitwise_repeatable,
                        assert_output_mask_skips_outputs, assert_stats_of, assert_within_2x_torch, float64_tolerance,
                        make_input)

KERNEL_BACKENDS = ["cuda", "triton"]
# gradcheck's finite differences cost hundreds of calls: too slow for the Triton interpreter, so
# Triton's gradients are checked against float64 reference gradients instead (as STYLE.md says).
GRADCHECK_BACKENDS = ["torch", "cuda"]
# (input shape, output channels): real expand/project layers scaled down for the interpreter, plus
# edge cases: H = W = 1, odd and non-square sizes, channels not a multiple of 8 (and fewer than 16,
# the smallest dot tile), Cout > 128 (two output-channel tiles of the Triton kernel).
GEOMETRIES = [
    ((2, 16, 7, 7), 96),
    ((2, 24, 5, 5), 24),
    ((1, 13, 13, 13), 17),
    ((3, 8, 1, 1), 5),
    ((1, 3, 7, 1), 136),
    ((2, 40, 3, 4), 13),
]
LAYOUTS = ["nchw", "channels_last", "strided"]
FP32_TOL = dict(rtol=1e-5, atol=1e-5)
ns = torch.ops.mobilenet_kernels
SUFFIX = {"cuda": "", "triton": "_triton"}


def op(name, backend):
    return getattr(ns, name + SUFFIX[backend])


def make_conv(Ci, Co, device, dtype=torch.float32, bias=True):
    w = torch.randn(Co, Ci, 1, 1, device=device, dtype=dtype) / Ci**0.5
    b = torch.randn(Co, device=device, dtype=dtype) if bias else None
    return w, b


def output_shape(shape, Co):
    return (shape[0], Co, shape[2], shape[3])


def assert_layout_kept(y, x):
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last) and y.shape[2] * y.shape[3] > 1:
        assert y.is_contiguous(memory_format=torch.channels_last)
    else:
        assert y.is_contiguous()


def test_torch_backend_keeps_the_layout_where_conv2d_does_not(monkeypatch):
    """F.conv2d picks its own output layout on some paths (float64 channels_last on CUDA comes back
    NCHW; GPU run 5): the "torch" backend still writes the input's format, as every backend does."""
    import mobilenet_kernels.reference as ref

    conv2d = F.conv2d
    monkeypatch.setattr(ref.F, "conv2d", lambda *a, **k: conv2d(*a, **k).contiguous())
    x = make_input((2, 8, 5, 5), "channels_last", torch.float64, "cpu")
    pw = MF.pointwise_conv2d(x, torch.randn(6, 8, 1, 1, dtype=torch.float64), activation="relu6", backend="torch")
    dw = MF.depthwise_conv2d(x, torch.randn(8, 1, 3, 3, dtype=torch.float64), padding=1, backend="torch")
    for y in (pw, dw):
        assert_layout_kept(y, x)


# ----------------------------------------------------------------------------- pointwise_conv2d


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("act", ["identity", "relu6", "hardswish"])
@pytest.mark.parametrize("with_residual", [False, True])
def test_forward_fp32_matches_reference(backend, layout, act, with_residual, device):
    skip_unless_usable(backend, device)
    for shape, Co in GEOMETRIES:
        x = make_input(shape, layout, torch.float32, device)
        w, b = make_conv(shape[1], Co, device, bias=act != "identity")
        r = make_input(output_shape(shape, Co), layout, torch.float32, device) if with_residual else None
        y = MF.pointwise_conv2d(x, w, b, r, activation=act, backend=backend)
        ref = pointwise_conv2d_ref(x, w, b, r, act, upcast=True).double()
        torch.testing.assert_close(y.double(), ref, **FP32_TOL)
        assert y.dtype == x.dtype and y.shape == output_shape(shape, Co)
        assert_layout_kept(y, x)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("act", ["identity", "relu", "relu6", "hardswish", "hardsigmoid"])
@pytest.mark.parametrize("with_residual", [False, True])
def test_backward_fp32_matches_reference(backend, layout, act, with_residual, device):
    skip_unless_usable(backend, device)
    for shape, Co in GEOMETRIES[:4]:
        x = make_input(shape, layout, torch.float32, device).requires_grad_()
        w, b = (t.requires_grad_() for t in make_conv(shape[1], Co, device))
        inputs = [x, w, b]
        r = None
        if with_residual:
            r = make_input(output_shape(shape, Co), layout, torch.float32, device).requires_grad_()
            inputs.append(r)
        y = MF.pointwise_conv2d(x, w, b, r, activation=act, backend=backend)
        grad = torch.randn_like(y)
        got = torch.autograd.grad(y, inputs, grad)
        inputs64 = [t.detach().double().requires_grad_() for t in inputs]
        y64 = pointwise_conv2d_ref(*inputs64[:3], inputs64[3] if with_residual else None, act)
        want = torch.autograd.grad(y64, inputs64, grad.double())
        for g, ref in zip(got, want):
            torch.testing.assert_close(g.double(), ref, rtol=1e-4, atol=1e-4)
        assert_layout_kept(got[0], x)


@pytest.mark.parametrize("backend", GRADCHECK_BACKENDS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("act", ["identity", "relu6", "hardswish"])
def test_gradcheck_fp64_every_input(backend, layout, act, device):
    skip_unless_usable(backend, device)
    for shape, Co in [((1, 3, 3, 2), 4), ((2, 2, 1, 3), 3)]:
        x = make_input(shape, layout, torch.float64, device).requires_grad_()
        w, b = (t.requires_grad_() for t in make_conv(shape[1], Co, device, torch.float64))
        r = make_input(output_shape(shape, Co), layout, torch.float64, device).requires_grad_()
        fn = lambda x, w, b, r: MF.pointwise_conv2d(x, w, b, r, activation=act, backend=backend)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x, w, b, r))
        fn = lambda x, w, b: MF.pointwise_conv2d(x, w, b, activation=act, backend=backend)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x, w, b))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_low_precision_error_within_2x_torch(backend, dtype, layout, device):
    """Our fp16/bf16 error against float64 stays within 2x PyTorch's own (F.conv2d + activation +
    residual add in that dtype on the same inputs), for the output, grad_input and grad_weight."""
    skip_unless_usable(backend, device)
    for shape, Co in GEOMETRIES[:4]:
        assert_conv_within_2x_torch(shape, Co, layout, dtype, device, backend)


def assert_conv_within_2x_torch(shape, Co, layout, dtype, device, backend):
    """hardswish(conv1x1(x, w, b)) + r by the op: output, grad_input and grad_weight within 2x
    PyTorch's error in `dtype` (F.conv2d + activation + add) against float64. Returns (x, w, y)."""
    x = make_input(shape, layout, dtype, device).requires_grad_()
    w, b = make_conv(shape[1], Co, device, dtype)
    w.requires_grad_()
    r = make_input(output_shape(shape, Co), layout, dtype, device)
    y = MF.pointwise_conv2d(x, w, b, r, activation="hardswish", backend=backend)
    grad = make_input(tuple(y.shape), layout, dtype, device)
    ours = (y, *torch.autograd.grad(y, (x, w), grad))

    def eager(x, w):
        x, w = x.detach().requires_grad_(), w.detach().requires_grad_()
        y = apply_activation(F.conv2d(x, w, b.to(x.dtype)), "hardswish") + r.to(x.dtype)
        return (y, *torch.autograd.grad(y, (x, w), grad.to(x.dtype)))

    torchs, refs = eager(x, w), eager(x.double(), w.double())
    assert all(t.dtype == dtype for t in ours)
    assert_within_2x_torch(ours, torchs, refs, ("output", "grad_input", "grad_weight"),
                           f"for {shape} -> {Co} {layout} {dtype}")
    return x.detach(), w.detach(), y.detach()


# channels_last layers with whole 16-byte channel vectors (what the tensor-core GEMM of
# csrc/cuda/pointwise_gemm.cuh takes when MK_PW_FUSED=1): expand and project convs of V2/V3 at
# reduced sizes, with M (pixel) tails, K steps with a tail (Cin 40), every tile width (Cout 24, 64,
# 120, 144) and a one-pixel image.
VECTOR_GEOMETRIES = [((2, 24, 28, 28), 144), ((2, 144, 14, 14), 24), ((3, 40, 7, 13), 120), ((2, 96, 9, 9), 64),
                     ((4, 16, 1, 1), 16)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_vector_layers(dtype, device):
    """The C++-backed op ("cuda" backend: on a GPU cuBLAS + epilogue, or with MK_PW_FUSED=1 our
    tensor-core GEMM; on the CPU the C++ kernel) on channels_last MobileNet-like layers: output,
    grad_input and grad_weight within 2x PyTorch's error (hardswish + residual epilogue), and the
    statistics variant storing the same output with the statistics of what it stored. (The GEMM
    kernel's tiles and tails are also checked on CPU boxes, by test_cuda_emulation.py.)"""
    if dtype == torch.float16 and device == "cpu":
        pytest.skip("PyTorch has no float16 conv on CPU to compare with")
    for shape, Co in VECTOR_GEOMETRIES:
        where = f"for {shape} -> {Co} {dtype}"
        x, w, y = assert_conv_within_2x_torch(shape, Co, "channels_last", dtype, device, "cuda")
        assert y.is_contiguous(memory_format=torch.channels_last), where
        out, mean, var = ns.pointwise_conv2d_stats(x, w)
        torch.testing.assert_close(out, MF.pointwise_conv2d(x, w, backend="cuda"), rtol=0, atol=0, msg=where)
        assert_stats_of(out, mean, var, msg=where)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_backward_is_bitwise_deterministic(backend, layout, device):
    skip_unless_usable(backend, device)
    x = make_input((3, 24, 9, 9), layout, torch.float32, device)
    w, _ = make_conv(24, 40, device)
    grad = make_input((3, 40, 9, 9), layout, torch.float32, device)
    backward = op("pointwise_conv2d_backward", backend)
    assert_bitwise_repeatable(lambda: backward(grad, x, w, [True, True, True]))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_output_mask_skips_outputs(backend, device):
    skip_unless_usable(backend, device)
    x = make_input((2, 6, 5, 5), "nchw", torch.float32, device)
    w, _ = make_conv(6, 10, device)
    grad = torch.randn(2, 10, 5, 5, device=device)
    backward = op("pointwise_conv2d_backward", backend)
    assert_output_mask_skips_outputs(lambda mask: backward(grad, x, w, mask))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_empty_batch(backend, layout, device):
    skip_unless_usable(backend, device)
    x = make_input((0, 6, 5, 5), layout, torch.float32, device).requires_grad_()
    w, b = (t.requires_grad_() for t in make_conv(6, 9, device))
    y = MF.pointwise_conv2d(x, w, b, activation="relu6", backend=backend)
    assert y.shape == (0, 9, 5, 5)
    gx, gw, gb = torch.autograd.grad(y.sum(), (x, w, b))
    assert gx.shape == x.shape and torch.equal(gw, torch.zeros_like(w)) and torch.equal(gb, torch.zeros_like(b))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_opcheck(backend, layout, device):
    skip_unless_usable(backend, device)
    x = make_input((2, 5, 6, 5), layout, torch.float32, device)
    w, b = make_conv(5, 7, device)
    r = make_input((2, 7, 6, 5), layout, torch.float32, device)
    for requires_grad in (False, True):
        args = (x.requires_grad_(requires_grad), w.requires_grad_(requires_grad), b.requires_grad_(requires_grad))
        torch.library.opcheck(op("pointwise_conv2d", backend), (*args, None, "hardswish"))
        torch.library.opcheck(op("pointwise_conv2d", backend), (*args, r.requires_grad_(requires_grad), "identity"))
        torch.library.opcheck(op("pointwise_conv2d", backend), (args[0], args[1], None, None, "relu6"))
        torch.library.opcheck(op("pointwise_conv2d_stats", backend), (args[0], args[1]))
    x, w = x.detach(), w.detach()
    grad = make_input((2, 7, 6, 5), layout, torch.float32, device)
    torch.library.opcheck(op("pointwise_conv2d_backward", backend), (grad, x, w, [True, True, True]))
    torch.library.opcheck(op("pointwise_conv2d_backward", backend), (grad, x, w, [False, True, False]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend, device):
    skip_unless_usable(backend, device)
    torch._dynamo.reset()
    x = make_input((2, 8, 6, 6), "channels_last", torch.float32, device).requires_grad_()
    w, b = (t.requires_grad_() for t in make_conv(8, 12, device))
    r = make_input((2, 12, 6, 6), "channels_last", torch.float32, device).requires_grad_()

    def fn(x, w, b, r):
        return MF.pointwise_conv2d(x, w, b, r, activation="hardswish", backend=backend) * 2

    compiled = torch.compile(fn, fullgraph=True)
    y, y_ref = compiled(x, w, b, r), fn(x, w, b, r)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(torch.autograd.grad(y.sum(), (x, w, b, r)),
                               torch.autograd.grad(y_ref.sum(), (x, w, b, r)))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_autocast_casts_like_conv2d(backend, device):
    skip_unless_usable(backend, device)
    x = torch.randn(2, 8, 6, 6, device=device)
    w, b = make_conv(8, 16, device)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        y = MF.pointwise_conv2d(x, w, b, backend=backend)
        yt = F.conv2d(x, w, b)
    assert y.dtype == yt.dtype == torch.bfloat16
    torch.testing.assert_close(y.double(), pointwise_conv2d_ref(x, w, b, upcast=True).double(), rtol=2e-2, atol=2e-2)


def _bad_cases():
    x = torch.randn(2, 4, 5, 5)
    w = torch.randn(6, 4, 1, 1)
    good = dict(input=x, weight=w, bias=torch.randn(6), residual=torch.randn(2, 6, 5, 5), activation="relu")
    return good, [
        (dict(weight=torch.randn(6, 3, 1, 1)), ValueError, "weight"),
        (dict(weight=torch.randn(6, 4, 3, 3)), ValueError, "weight"),
        (dict(weight=torch.randn(6, 4)), ValueError, "weight"),
        (dict(bias=torch.randn(5)), ValueError, "bias"),
        (dict(bias=torch.randn(6).double()), TypeError, "bias"),
        (dict(residual=torch.randn(2, 6, 5, 4)), ValueError, "residual"),
        (dict(residual=torch.randn(2, 6, 5, 5).double()), TypeError, "residual"),
        (dict(input=torch.randn(4, 5, 5)), ValueError, "input"),
        (dict(input=torch.randint(0, 3, (2, 4, 5, 5))), TypeError, "input"),
        (dict(input=torch.randn(2, 4, 5, 5, dtype=torch.complex64)), TypeError, "input"),
        (dict(weight=w.double()), TypeError, "weight"),
        (dict(activation="gelu"), ValueError, "activation"),
    ]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", range(len(_bad_cases()[1])))
def test_bad_arguments_name_the_argument(backend, case):
    skip_unless_usable(backend, "cpu")

    def call(input, weight, bias, residual, activation):
        return MF.pointwise_conv2d(input, weight, bias, residual, activation=activation, backend=backend)

    assert_bad_arguments_name_the_argument(call, *_bad_cases(), case)


@pytest.mark.parametrize("case", range(len(_bad_cases()[1])))
def test_cpp_op_checks_name_the_argument(case):
    """Direct torch.ops calls get the same errors from the C++ checks (csrc/pointwise_conv2d.h)."""
    skip_unless_usable("cuda", "cpu")

    def call(input, weight, bias, residual, activation):
        return ns.pointwise_conv2d(input, weight, bias, residual, activation)

    assert_bad_arguments_name_the_argument(call, *_bad_cases(), case)


# ----------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_stats_are_those_of_the_stored_output(backend, layout, dtype, device):
    skip_unless_usable(backend, device)
    for shape, Co in GEOMETRIES[:4] + [((2, 3, 4, 4), 3)]:
        x = make_input(shape, layout, dtype, device)
        w, _ = make_conv(shape[1], Co, device, dtype, bias=False)
        w = w + 0.5  # a mean far from 0 (cancellation check)
        out, mean, var = op("pointwise_conv2d_stats", backend)(x, w)
        torch.testing.assert_close(out, MF.pointwise_conv2d(x, w, backend=backend), rtol=0, atol=0)
        assert mean.dtype == var.dtype == torch.float32
        assert_stats_of(out, mean, var)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_stats_are_bitwise_deterministic(backend, device):
    skip_unless_usable(backend, device)
    x = make_input((3, 20, 11, 11), "channels_last", torch.float32, device)
    w, _ = make_conv(20, 36, device)
    assert_bitwise_repeatable(lambda: op("pointwise_conv2d_stats", backend)(x, w))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_stats_pass_nan_and_inf_through_like_torch(backend, device):
    skip_unless_usable(backend, device)
    x = make_input((2, 4, 3, 3), "channels_last", torch.float32, device)
    w = torch.zeros(3, 4, 1, 1, device=device)
    w[0, 0] = w[1, 1] = w[2, 2] = 1.0
    x[0, 0, 1, 1], x[1, 1, 0, 2] = float("nan"), float("inf")
    out, mean, var = op("pointwise_conv2d_stats", backend)(x, w)
    ref_var, ref_mean = torch.var_mean(out, dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(mean, ref_mean, equal_nan=True)
    torch.testing.assert_close(var, ref_var, equal_nan=True)


# ----------------------------------------------------------------------------- 1x1 conv + BN + act


def make_bn(C, device, dtype=torch.float32):
    return tuple(t.to(dtype) for t in (torch.randn(C, device=device) * 0.5, torch.rand(C, device=device) + 0.5,
                                       torch.randn(C, device=device), torch.randn(C, device=device)))


def unfused(x, cw, rm, rv, bw, bb, training, act, residual=None):
    y = batch_norm_act_ref(F.conv2d(x, cw), rm, rv, bw, bb, training, 0.1, 1e-5, act)
    return y if residual is None else y + residual


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("act", ["relu6", "hardswish", "identity"])
def test_fused_eval_matches_unfused(backend, layout, act, device):
    skip_unless_usable(backend, device)
    for shape, Co in GEOMETRIES[:4]:
        x = make_input(shape, layout, torch.float64, device)
        cw, _ = make_conv(shape[1], Co, device, torch.float64, bias=False)
        rm, rv, bw, bb = make_bn(Co, device, torch.float64)
        r = make_input(output_shape(shape, Co), layout, torch.float64, device) if act == "identity" else None
        y = MF.pointwise_conv2d_bn_act(x, cw, None, rm, rv, bw, bb, False, 0.1, 1e-5, act, r, backend=backend)
        torch.testing.assert_close(y, unfused(x, cw, rm, rv, bw, bb, False, act, r), **float64_tolerance(act, device))
        assert_layout_kept(y, x)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("act", ["relu6", "hardswish", "identity"])
def test_fused_training_matches_unfused(backend, layout, act, device):
    """Two training steps in float64: output, every gradient and the running statistics."""
    skip_unless_usable(backend, device)
    for shape, Co in GEOMETRIES[:3]:
        x = make_input(shape, layout, torch.float64, device).requires_grad_()
        cw, _ = make_conv(shape[1], Co, device, torch.float64, bias=False)
        rm, rv, bw, bb = make_bn(Co, device, torch.float64)
        params = [cw.requires_grad_(), bw.requires_grad_(), bb.requires_grad_()]
        r = make_input(output_shape(shape, Co), layout, torch.float64, device) if act == "identity" else None
        rm_ref, rv_ref = rm.clone(), rv.clone()
        for _ in range(2):
            y = MF.pointwise_conv2d_bn_act(x, cw, None, rm, rv, bw, bb, True, 0.1, 1e-5, act, r, backend=backend)
            y_ref = unfused(x, cw, rm_ref, rv_ref, bw, bb, True, act, r)
            tol = float64_tolerance(act, device)
            torch.testing.assert_close(y, y_ref, **tol)
            grad = torch.randn_like(y)
            grad_tol = {k: max(v, 1e-8) for k, v in tol.items()}
            for g, ref in zip(torch.autograd.grad(y, [x, *params], grad), torch.autograd.grad(y_ref, [x, *params], grad)):
                torch.testing.assert_close(g, ref, **grad_tol)
            torch.testing.assert_close(rm, rm_ref, rtol=1e-9, atol=1e-12)
            torch.testing.assert_close(rv, rv_ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backend", GRADCHECK_BACKENDS)
def test_fused_training_gradcheck_fp64(backend, device):
    skip_unless_usable(backend, device)
    x = make_input((2, 3, 2, 3), "channels_last", torch.float64, device).requires_grad_()
    cw, _ = make_conv(3, 4, device, torch.float64, bias=False)
    _, _, bw, bb = make_bn(4, device, torch.float64)
    fn = lambda x, cw, bw, bb: MF.pointwise_conv2d_bn_act(x, cw, None, None, None, bw, bb, True, 0.1, 1e-5,  # noqa: E731
                                                          "hardswish", backend=backend)
    assert torch.autograd.gradcheck(fn, (x, cw.requires_grad_(), bw.requires_grad_(), bb.requires_grad_()))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_fused_training_opcheck(backend, device):
    skip_unless_usable(backend, device)
    x = make_input((2, 4, 6, 6), "channels_last", torch.float32, device).requires_grad_()
    cw, _ = make_conv(4, 8, device)
    _, _, bw, bb = make_bn(8, device)
    torch.library.opcheck(op("pointwise_conv2d_bn_act_train", backend),
                          (x, cw.requires_grad_(), bw.requires_grad_(), bb, 1e-5, "relu6"))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_fused_training_backward_op(backend, device):
    """pointwise_conv2d_bn_act_train_backward (a composite on every backend: the GEMMs read
    BatchNorm's grad_input from memory) is batch_norm_act_train_backward then
    pointwise_conv2d_backward, bit for bit; opcheck; its BatchNorm operands' checks name them."""
    skip_unless_usable(backend, device)
    x = make_input((2, 4, 5, 3), "channels_last", torch.float32, device)
    cw, _ = make_conv(4, 6, device)
    _, _, bw, bb = make_bn(6, device)
    _, conv_out, mean, var = ns.pointwise_conv2d_bn_act_train(x, cw, bw, bb, 1e-5, "hardswish")
    grad = make_input(tuple(conv_out.shape), "channels_last", torch.float32, device)
    args = (grad, x, cw, bw, bb, conv_out, mean, var, 1e-5, "hardswish")
    ours = op("pointwise_conv2d_bn_act_train_backward", backend)(*args, [True, True])
    grad_z, sum_g_xhat, sum_g = op("batch_norm_act_train_backward", backend)(grad, conv_out, bw, bb, mean, var, 1e-5,
                                                                            "hardswish")
    grad_x, grad_w, _ = op("pointwise_conv2d_backward", backend)(grad_z, x, cw, [True, True, False])
    for a, b in zip(ours, (grad_x, grad_w, sum_g_xhat, sum_g)):
        assert torch.equal(a, b)
    for mask in ([False, True], [False, False]):  # both masked: two distinct empty outputs
        torch.library.opcheck(op("pointwise_conv2d_bn_act_train_backward", backend), (*args, mask))
    with pytest.raises(ValueError, match="mean"):
        op("pointwise_conv2d_bn_act_train_backward", backend)(grad, x, cw, bw, bb, conv_out, mean[:4], var, 1e-5,
                                                               "hardswish", [True, True])
    with pytest.raises(ValueError, match="conv_out"):
        op("pointwise_conv2d_bn_act_train_backward", backend)(grad, x, cw, bw, bb, conv_out[:1], mean, var, 1e-5,
                                                               "hardswish", [True, True])


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_training_one_value_per_channel_raises(backend):
    skip_unless_usable(backend, "cpu")
    x, (cw, _) = torch.randn(1, 4, 1, 1), make_conv(4, 6, "cpu")
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        MF.pointwise_conv2d_bn_act(x, cw, None, None, None, None, None, True, 0.1, 1e-5, "relu", backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_bn_args_name_the_argument(backend):
    skip_unless_usable(backend, "cpu")
    x, (cw, _) = torch.randn(2, 4, 3, 3), make_conv(4, 6, "cpu")
    rm, rv, bw, bb = make_bn(6, "cpu")
    for training in (False, True):
        with pytest.raises(ValueError, match="running_mean"):
            MF.pointwise_conv2d_bn_act(x, cw, None, rm[:4], rv, bw, bb, training, backend=backend)
        with pytest.raises(ValueError, match="weight"):
            MF.pointwise_conv2d_bn_act(x, cw, None, rm, rv, bw[:4], bb, training, backend=backend)
