"""depthwise_conv2d and dw conv + BN + act: parity, low-precision error bounds, gradcheck, statistics,
determinism, opcheck, compile, autocast, modules, bad input."""

import pytest
import torch
import torch.nn.functional as F

import mobilenet_kernels.functional as MF
from mobilenet_kernels.activations import apply_activation
from mobilenet_kernels.models._layers import ConvBNAct
from mobilenet_kernels.nn import DepthwiseConv2d
from mobilenet_kernels.reference import depthwise_conv2d_bn_act_ref, depthwise_conv2d_ref

from conftest import BACKENDS, skip_unless_usable
from op_helpers import (assert_bad_arguments_name_the_argument, assert_bitwise_repeatable,
                        assert_output_mask_skips_outputs, assert_stats_of, assert_within_2x_torch, float64_tolerance,
                        make_input)

KERNEL_BACKENDS = ["cuda", "triton"]
# gradcheck's finite differences cost hundreds of calls: too slow for the Triton interpreter, so
# Triton's gradients are checked against float64 reference gradients instead (as STYLE.md says).
GRADCHECK_BACKENDS = ["torch", "cuda"]
# (input shape, kernel, stride, padding, dilation): real MobileNet layers scaled down for the
# interpreter, plus edge cases: H = W = 1, odd and non-square sizes, C not a multiple of 8, k 5 and
# 7, stride 2, dilation 2, no padding, padding larger than the kernel.
GEOMETRIES = [
    ((2, 16, 7, 7), 3, 1, 1, 1),
    ((1, 13, 13, 13), 5, 2, 2, 1),
    ((2, 8, 1, 1), 3, 1, 1, 1),
    ((1, 12, 9, 7), 3, 2, 1, 2),
    ((1, 6, 6, 5), 7, 1, 3, 1),
    ((2, 5, 4, 4), 3, 1, 0, 1),
    ((1, 3, 3, 3), 3, 2, 4, 1),
]
LAYOUTS = ["nchw", "channels_last", "strided"]
FP32_TOL = dict(rtol=1e-5, atol=1e-5)
ns = torch.ops.mobilenet_kernels
SUFFIX = {"cuda": "", "triton": "_triton"}


# PyTorch's float16 depthwise conv on CPU gives no error to compare ours with: it crashes the process
# where the padding reaches past the kernel (torch 2.14.1), so reference.depthwise_conv2d_ref computes
# CPU float16 in float32 (test_float16_padding_past_the_kernel_does_not_crash).
CPU_FP16_NO_TORCH_ERROR = "no PyTorch float16 depthwise conv on CPU to measure its error (it can crash the process)"


def op(name, backend):
    return getattr(ns, name + SUFFIX[backend])


def make_conv(C, k, device, dtype=torch.float32, bias=True):
    w = torch.randn(C, 1, k, k, device=device, dtype=dtype) / k
    b = torch.randn(C, device=device, dtype=dtype) if bias else None
    return w, b


def assert_layout_kept(y, x):
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last) and y.shape[2] * y.shape[3] > 1:
        assert y.is_contiguous(memory_format=torch.channels_last)
    else:
        assert y.is_contiguous()


# ----------------------------------------------------------------------------- depthwise_conv2d


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("act", ["identity", "relu6", "hardswish"])
def test_forward_fp32_matches_reference(backend, layout, act, device):
    skip_unless_usable(backend, device)
    for shape, k, s, p, d in GEOMETRIES:
        x = make_input(shape, layout, torch.float32, device)
        w, b = make_conv(shape[1], k, device, bias=act != "identity")
        y = MF.depthwise_conv2d(x, w, b, s, p, d, activation=act, backend=backend)
        ref = depthwise_conv2d_ref(x, w, b, s, p, d, act, upcast=True).double()
        torch.testing.assert_close(y.double(), ref, **FP32_TOL)
        assert y.dtype == x.dtype
        assert_layout_kept(y, x)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("act", ["identity", "relu", "relu6", "hardswish", "hardsigmoid"])
def test_backward_fp32_matches_reference(backend, layout, act, device):
    skip_unless_usable(backend, device)
    for shape, k, s, p, d in GEOMETRIES[:4]:
        x = make_input(shape, layout, torch.float32, device).requires_grad_()
        w, b = (t.requires_grad_() for t in make_conv(shape[1], k, device))
        y = MF.depthwise_conv2d(x, w, b, s, p, d, activation=act, backend=backend)
        grad = torch.randn_like(y)
        got = torch.autograd.grad(y, (x, w, b), grad)
        x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
        want = torch.autograd.grad(depthwise_conv2d_ref(x64, w64, b64, s, p, d, act), (x64, w64, b64), grad.double())
        for g, r in zip(got, want):
            torch.testing.assert_close(g.double(), r, rtol=1e-4, atol=1e-4)
        assert_layout_kept(got[0], x)


@pytest.mark.parametrize("backend", GRADCHECK_BACKENDS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("act", ["identity", "relu6", "hardswish"])
def test_gradcheck_fp64_every_input(backend, layout, act, device):
    skip_unless_usable(backend, device)
    for shape, k, s, p, d in [((1, 3, 5, 4), 3, 2, 1, 1), ((2, 2, 3, 3), 3, 1, 2, 2)]:
        x = make_input(shape, layout, torch.float64, device).requires_grad_()
        w, b = (t.requires_grad_() for t in make_conv(shape[1], k, device, torch.float64))
        fn = lambda x, w, b: MF.depthwise_conv2d(x, w, b, s, p, d, activation=act, backend=backend)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x, w, b))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_float64_hardsigmoid_gradient_is_atens(backend, device):
    """ATen's hardsigmoid backward multiplies by a float32 1/6 even for float64 tensors, on every
    device; our kernels do too (mk_common.h::act_derivative, triton/_activations.py), so through a
    1x1 depthwise conv (one product per input element) the input gradient is ATen's bit for bit,
    2-3e-8 relative off an exact float64 1/6. (The tests' float64 tolerance allows for that:
    op_helpers.float64_tolerance; a nightly property run found it assuming an exact 1/6 on the CPU.)"""
    skip_unless_usable(backend, device)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(3, 1, 1, 1, dtype=torch.float64, device=device)
    y = MF.depthwise_conv2d(x, w, None, 1, 0, 1, activation="hardsigmoid", backend=backend)
    g = torch.randn_like(y)
    x_ref = x.detach().requires_grad_()
    (expected,) = torch.autograd.grad(F.hardsigmoid(F.conv2d(x_ref, w, groups=3)), x_ref, g)
    torch.testing.assert_close(torch.autograd.grad(y, x, g)[0], expected, rtol=0, atol=0)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_low_precision_error_within_2x_torch(backend, dtype, layout, device):
    """Our fp16/bf16 error against float64 stays within 2x PyTorch's own (F.conv2d in that dtype on
    the same inputs), for the output, grad_input and grad_weight."""
    skip_unless_usable(backend, device)
    if dtype == torch.float16 and device == "cpu":
        pytest.skip(CPU_FP16_NO_TORCH_ERROR)
    for geometry in GEOMETRIES[:5]:
        assert_conv_within_2x_torch(geometry, layout, dtype, device, backend)


def assert_conv_within_2x_torch(geometry, layout, dtype, device, backend):
    """Runs the conv of `geometry` forward and backward; asserts the output, grad_input and
    grad_weight are within 2x PyTorch's error against float64; returns (x, w, y), detached."""
    shape, k, s, p, d = geometry
    x = make_input(shape, layout, dtype, device).requires_grad_()
    w, _ = make_conv(shape[1], k, device, dtype, bias=False)
    w.requires_grad_()
    y = MF.depthwise_conv2d(x, w, None, s, p, d, backend=backend)
    grad = make_input(tuple(y.shape), layout, dtype, device)
    ours = (y, *torch.autograd.grad(y, (x, w), grad))
    xt, wt = x.detach().requires_grad_(), w.detach().requires_grad_()
    yt = F.conv2d(xt, wt, None, s, p, d, groups=shape[1])
    torchs = (yt, *torch.autograd.grad(yt, (xt, wt), grad))
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    y64 = F.conv2d(x64, w64, None, s, p, d, groups=shape[1])
    refs = (y64, *torch.autograd.grad(y64, (x64, w64), grad.double()))
    assert all(t.dtype == dtype for t in ours)
    assert_within_2x_torch(ours, torchs, refs, ("output", "grad_input", "grad_weight"),
                           f"for {shape} k{k} s{s} p{p} d{d} {layout} {dtype}")
    return x.detach(), w.detach(), y.detach()


# channels_last layers whose channels fill 16-byte vectors (the CUDA vector paths, and the tiled
# kernels of csrc/cuda/depthwise_tiled.cuh, unless MK_DW_TILED=0): k 3 and 5,
# stride 1 and 2, odd and one-pixel images, channel counts that leave part of a channel block idle
# (72 bf16 channels are 9 vectors: two blocks of 5), a larger image than one tile, padding 0 and the
# "same" padding.
VECTOR_GEOMETRIES = [
    ((2, 72, 13, 13), 3, 1, 1, 1),
    ((2, 72, 13, 13), 5, 2, 2, 1),
    ((3, 40, 7, 7), 5, 1, 2, 1),
    ((2, 24, 1, 1), 3, 1, 1, 1),
    ((2, 32, 13, 7), 3, 2, 0, 1),
    ((1, 144, 56, 56), 3, 2, 1, 1),
    ((2, 16, 40, 40), 3, 1, 1, 1),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_vector_layers(dtype, device):
    """The C++-backed op ("cuda" backend: the CUDA kernels' vector paths on a GPU, the C++ CPU
    kernel's channels_last code on the CPU) on layers with 16-byte channel vectors: forward,
    grad_input and grad_weight within 2x PyTorch's error, and the statistics of the stored output.
    (The tiled CUDA kernel's index math is also checked on CPU boxes, by test_cuda_emulation.py.)"""
    if dtype == torch.float16 and device == "cpu":
        pytest.skip(CPU_FP16_NO_TORCH_ERROR)
    for geometry in VECTOR_GEOMETRIES:
        shape, k, s, p, d = geometry
        where = f"for {shape} k{k} s{s} p{p} {dtype}"
        x, w, y = assert_conv_within_2x_torch(geometry, "channels_last", dtype, device, "cuda")
        assert y.is_contiguous(memory_format=torch.channels_last) or y.shape[2] * y.shape[3] == 1, where
        out, mean, var = ns.depthwise_conv2d_stats(x, w, [s, s], [p, p], [d, d])
        torch.testing.assert_close(out, y, rtol=0, atol=0, msg=where)
        assert_stats_of(out, mean, var, msg=where)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_backward_is_bitwise_deterministic(backend, layout, device):
    skip_unless_usable(backend, device)
    x = make_input((3, 10, 9, 9), layout, torch.float32, device)
    w, _ = make_conv(10, 3, device)
    grad = make_input((3, 10, 9, 9), layout, torch.float32, device)
    backward = op("depthwise_conv2d_backward", backend)
    assert_bitwise_repeatable(lambda: backward(grad, x, w, [1, 1], [1, 1], [1, 1], [True, True, True]))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_output_mask_skips_outputs(backend, device):
    skip_unless_usable(backend, device)
    x = make_input((2, 4, 5, 5), "nchw", torch.float32, device)
    w, _ = make_conv(4, 3, device)
    grad = torch.randn(2, 4, 5, 5, device=device)
    backward = op("depthwise_conv2d_backward", backend)
    assert_output_mask_skips_outputs(lambda mask: backward(grad, x, w, [1, 1], [1, 1], [1, 1], mask))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_empty_batch(backend, layout, device):
    skip_unless_usable(backend, device)
    x = make_input((0, 6, 5, 5), layout, torch.float32, device).requires_grad_()
    w, b = (t.requires_grad_() for t in make_conv(6, 3, device))
    y = MF.depthwise_conv2d(x, w, b, 2, 1, 1, backend=backend)
    assert y.shape == (0, 6, 3, 3)
    gx, gw, gb = torch.autograd.grad(y.sum(), (x, w, b))
    assert gx.shape == x.shape and torch.equal(gw, torch.zeros_like(w)) and torch.equal(gb, torch.zeros_like(b))


@pytest.mark.parametrize("backend", BACKENDS)
def test_float16_padding_past_the_kernel_does_not_crash(backend):
    """PyTorch's CPU float16 depthwise conv segfaults where the padding reaches past the kernel
    (torch 2.14.1), so every backend runs this case in a child process: the "torch" backend computes
    float16 on a CPU in float32 (reference.depthwise_conv2d_ref), ours never call it."""
    import os
    import subprocess
    import sys

    skip_unless_usable(backend, "cpu")
    code = (
        "import torch, mobilenet_kernels.functional as MF\n"
        "g = torch.Generator().manual_seed(0)\n"
        "x = torch.randn(1, 6, 3, 1, generator=g)\n"
        "w = torch.randn(6, 1, 1, 1, generator=g)\n"
        f"y = MF.depthwise_conv2d(x.half(), w.half(), None, (2, 3), (0, 2), 2, backend={backend!r})\n"
        "ref = torch.nn.functional.conv2d(x, w, None, (2, 3), (0, 2), 2, groups=6)\n"
        "torch.testing.assert_close(y.float(), ref, rtol=1e-3, atol=1e-3)\n"
        "print('ok')\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), (run.returncode, run.stderr[-2000:])


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_opcheck(backend, layout, device):
    skip_unless_usable(backend, device)
    x = make_input((2, 5, 6, 5), layout, torch.float32, device)
    w, b = make_conv(5, 3, device)
    for requires_grad in (False, True):
        args = (x.requires_grad_(requires_grad), w.requires_grad_(requires_grad), b.requires_grad_(requires_grad))
        torch.library.opcheck(op("depthwise_conv2d", backend), (*args, [2, 1], [1, 1], [1, 1], "hardswish"))
        torch.library.opcheck(op("depthwise_conv2d", backend), (*args, [1, 1], [2, 2], [2, 1], "relu6"))
        torch.library.opcheck(op("depthwise_conv2d_stats", backend), (args[0], args[1], [1, 1], [1, 1], [1, 1]))
    x, w = x.detach(), w.detach()
    grad = make_input((2, 5, 3, 5), layout, torch.float32, device)
    torch.library.opcheck(op("depthwise_conv2d_backward", backend), (grad, x, w, [2, 1], [1, 1], [1, 1], [True, True, True]))
    torch.library.opcheck(op("depthwise_conv2d_backward", backend), (grad, x, w, [2, 1], [1, 1], [1, 1], [True, False, True]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend, device):
    skip_unless_usable(backend, device)
    torch._dynamo.reset()
    x = make_input((2, 8, 6, 6), "channels_last", torch.float32, device).requires_grad_()
    w, b = (t.requires_grad_() for t in make_conv(8, 3, device))

    def fn(x, w, b):
        return MF.depthwise_conv2d(x, w, b, 1, 1, 1, activation="hardswish", backend=backend) * 2

    compiled = torch.compile(fn, fullgraph=True)
    y, y_ref = compiled(x, w, b), fn(x, w, b)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(torch.autograd.grad(y.sum(), (x, w, b)), torch.autograd.grad(y_ref.sum(), (x, w, b)))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_autocast_casts_like_conv2d(backend, device):
    skip_unless_usable(backend, device)
    x = torch.randn(2, 8, 6, 6, device=device)
    w, b = make_conv(8, 3, device)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        y = MF.depthwise_conv2d(x, w, b, 1, 1, 1, backend=backend)
        yt = F.conv2d(x, w, b, 1, 1, 1, groups=8)
    assert y.dtype == yt.dtype == torch.bfloat16
    torch.testing.assert_close(y.double(), depthwise_conv2d_ref(x, w, b, 1, 1, 1, upcast=True).double(), rtol=2e-2, atol=2e-2)


def _bad_cases():
    x = torch.randn(2, 4, 5, 5)
    w = torch.randn(4, 1, 3, 3)
    good = dict(input=x, weight=w, bias=torch.randn(4), stride=1, padding=1, dilation=1, activation="relu")
    return good, [
        (dict(weight=torch.randn(4, 2, 3, 3)), ValueError, "weight"),
        (dict(weight=torch.randn(5, 1, 3, 3)), ValueError, "weight"),
        (dict(bias=torch.randn(5)), ValueError, "bias"),
        (dict(stride=0), ValueError, "stride"),
        (dict(dilation=(1, 0)), ValueError, "dilation"),
        (dict(padding=-1), ValueError, "padding"),
        (dict(input=torch.randn(1, 4, 2, 2), padding=0), ValueError, "input"),
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

    def call(input, weight, bias, stride, padding, dilation, activation):
        return MF.depthwise_conv2d(input, weight, bias, stride, padding, dilation, activation=activation,
                                   backend=backend)

    assert_bad_arguments_name_the_argument(call, *_bad_cases(), case)


@pytest.mark.parametrize("case", range(len(_bad_cases()[1])))
def test_cpp_op_checks_name_the_argument(case):
    """Direct torch.ops calls get the same errors from the C++ checks (csrc/depthwise_conv2d.h)."""
    skip_unless_usable("cuda", "cpu")
    pair = lambda v: [v, v] if isinstance(v, int) else list(v)  # noqa: E731

    def call(input, weight, bias, stride, padding, dilation, activation):
        return ns.depthwise_conv2d(input, weight, bias, pair(stride), pair(padding), pair(dilation), activation)

    assert_bad_arguments_name_the_argument(call, *_bad_cases(), case)


# ----------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_stats_are_those_of_the_stored_output(backend, layout, dtype, device):
    skip_unless_usable(backend, device)
    for shape, k, s, p, d in GEOMETRIES[:4] + [((2, 3, 4, 4), 3, 1, 1, 1)]:
        x = make_input(shape, layout, dtype, device) + 3.0  # a mean far from 0 (cancellation check)
        w, _ = make_conv(shape[1], k, device, dtype, bias=False)
        out, mean, var = op("depthwise_conv2d_stats", backend)(x, w, [s, s], [p, p], [d, d])
        torch.testing.assert_close(out, MF.depthwise_conv2d(x, w, None, s, p, d, backend=backend), rtol=0, atol=0)
        assert mean.dtype == var.dtype == torch.float32
        assert_stats_of(out, mean, var)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_stats_are_bitwise_deterministic(backend, device):
    skip_unless_usable(backend, device)
    x = make_input((3, 7, 11, 11), "channels_last", torch.float32, device)
    w, _ = make_conv(7, 3, device)
    assert_bitwise_repeatable(lambda: op("depthwise_conv2d_stats", backend)(x, w, [1, 1], [1, 1], [1, 1]))


# ----------------------------------------------------------------------------- dw conv + BN + act


def make_bn(C, device):
    return (torch.randn(C, device=device) * 0.5, torch.rand(C, device=device) + 0.5, torch.randn(C, device=device),
            torch.randn(C, device=device))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("act", ["relu6", "hardswish", "identity"])
def test_fused_eval_matches_unfused(backend, layout, act, device):
    skip_unless_usable(backend, device)
    for shape, k, s, p, d in GEOMETRIES[:4]:
        x = make_input(shape, layout, torch.float32, device)
        cw, cb = make_conv(shape[1], k, device)
        rm, rv, bw, bb = make_bn(shape[1], device)
        y = MF.depthwise_conv2d_bn_act(x, cw, cb, s, p, d, rm, rv, bw, bb, False, 0.1, 1e-5, act, backend=backend)
        ref = depthwise_conv2d_bn_act_ref(x, cw, cb, s, p, d, rm, rv, bw, bb, False, 0.1, 1e-5, act, upcast=True)
        torch.testing.assert_close(y.double(), ref.double(), rtol=1e-4, atol=1e-4)
        assert_layout_kept(y, x)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("act", ["relu6", "hardswish"])
def test_fused_training_matches_unfused(backend, layout, act, device):
    """Two training steps in float64: output, every gradient and the running statistics."""
    skip_unless_usable(backend, device)
    for shape, k, s, p, d in [GEOMETRIES[0], GEOMETRIES[1], GEOMETRIES[3]]:
        x = make_input(shape, layout, torch.float64, device).requires_grad_()
        cw, _ = make_conv(shape[1], k, device, torch.float64, bias=False)
        rm, rv, bw, bb = (t.double() for t in make_bn(shape[1], device))
        params = [cw.requires_grad_(), bw.requires_grad_(), bb.requires_grad_()]
        rm_ref, rv_ref = rm.clone(), rv.clone()
        for _ in range(2):
            y = MF.depthwise_conv2d_bn_act(x, cw, None, s, p, d, rm, rv, bw, bb, True, 0.1, 1e-5, act, backend=backend)
            y_ref = depthwise_conv2d_bn_act_ref(x, cw, None, s, p, d, rm_ref, rv_ref, bw, bb, True, 0.1, 1e-5, act)
            tol = float64_tolerance(act, device)
            torch.testing.assert_close(y, y_ref, **tol)
            grad = torch.randn_like(y)
            grad_tol = {k: max(v, 1e-8) for k, v in tol.items()}
            for g, r in zip(torch.autograd.grad(y, [x, *params], grad), torch.autograd.grad(y_ref, [x, *params], grad)):
                torch.testing.assert_close(g, r, **grad_tol)
            torch.testing.assert_close(rm, rm_ref, rtol=1e-9, atol=1e-12)
            torch.testing.assert_close(rv, rv_ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_training_low_precision_error_within_2x_torch(backend, dtype, device):
    skip_unless_usable(backend, device)
    if dtype == torch.float16 and device == "cpu":
        pytest.skip(CPU_FP16_NO_TORCH_ERROR)
    shape, k, s, p, d = GEOMETRIES[0]
    x = make_input(shape, "channels_last", dtype, device)
    cw, _ = make_conv(shape[1], k, device, dtype, bias=False)
    _, _, bw, bb = make_bn(shape[1], device)

    def run(fn, x, cw):
        x, cw = x.detach().requires_grad_(), cw.detach().requires_grad_()
        y = fn(x, cw)
        return (y, *torch.autograd.grad(y, (x, cw), grad.to(y.dtype)))

    grad = make_input(shape, "channels_last", dtype, device)
    ours = run(lambda x, w: MF.depthwise_conv2d_bn_act(x, w, None, s, p, d, None, None, bw, bb, True, 0.1, 1e-5,
                                                       "hardswish", backend=backend), x, cw)
    eager = lambda x, w: apply_activation(F.batch_norm(F.conv2d(x, w, None, s, p, d, groups=shape[1]), None, None,  # noqa: E731
                                                       bw.to(x.dtype), bb.to(x.dtype), True), "hardswish")
    torchs = run(eager, x, cw)
    refs = run(eager, x.double(), cw.double())
    assert_within_2x_torch(ours, torchs, refs, ("output", "grad_input", "grad_conv_weight"))


@pytest.mark.parametrize("backend", GRADCHECK_BACKENDS)
def test_fused_training_gradcheck_fp64(backend, device):
    skip_unless_usable(backend, device)
    x = make_input((2, 3, 5, 5), "channels_last", torch.float64, device).requires_grad_()
    cw, _ = make_conv(3, 3, device, torch.float64, bias=False)
    _, _, bw, bb = (t.double() for t in make_bn(3, device))
    fn = lambda x, cw, bw, bb: MF.depthwise_conv2d_bn_act(x, cw, None, 2, 1, 1, None, None, bw, bb, True, 0.1, 1e-5,  # noqa: E731
                                                          "hardswish", backend=backend)
    assert torch.autograd.gradcheck(fn, (x, cw.requires_grad_(), bw.requires_grad_(), bb.requires_grad_()))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_fused_training_opcheck(backend, device):
    skip_unless_usable(backend, device)
    x = make_input((2, 4, 6, 6), "channels_last", torch.float32, device).requires_grad_()
    cw, _ = make_conv(4, 3, device)
    _, _, bw, bb = make_bn(4, device)
    torch.library.opcheck(op("depthwise_conv2d_bn_act_train", backend),
                          (x, cw.requires_grad_(), bw.requires_grad_(), bb, [1, 1], [1, 1], [1, 1], 1e-5, "relu6"))


def _train_backward_case(shape, k, s, p, d, layout, dtype, device, affine=True):
    """The arguments of depthwise_conv2d_bn_act_train_backward after a training forward: (grad_output,
    input, conv_weight, weight, bias, conv_out, mean, var, stride, padding, dilation)."""
    x = make_input(shape, layout, dtype, device)
    cw, _ = make_conv(shape[1], k, device, dtype, bias=False)
    _, _, bw, bb = make_bn(shape[1], device)
    bw, bb = (bw, bb) if affine else (None, None)
    pair = lambda v: [v, v]  # noqa: E731
    _, conv_out, mean, var = ns.depthwise_conv2d_bn_act_train(x, cw, bw, bb, pair(s), pair(p), pair(d), 1e-5, "relu6")
    grad = make_input(tuple(conv_out.shape), layout, dtype, device)
    return grad, x, cw, bw, bb, conv_out, mean, var, pair(s), pair(p), pair(d)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("act", ["relu6", "hardswish"])
def test_fused_training_backward_is_the_unfused_sequence(backend, layout, dtype, act, device):
    """depthwise_conv2d_bn_act_train_backward computes BatchNorm's grad_input where the conv's
    backward reads it (Triton; CUDA where its tiled kernel applies) or runs the two ops in turn: the
    same values as batch_norm_act_train_backward then depthwise_conv2d_backward, since both round
    BatchNorm's grad_input to the input's dtype where the conv reads it. grad_input and the
    BatchNorm sums bit for bit; grad_conv_weight too, except on a GPU, where the fused kernel's
    larger footprint may give the weight-gradient partials other tiles (another summation order)."""
    skip_unless_usable(backend, device)
    # the CUDA kernels' cases (channels_last, C a multiple of 8): stride 1 k3 and k5, stride 2 k3
    # (odd output size); the unfused sequence's (C = 13, dilation 2)
    for shape, k, s, p, d in [GEOMETRIES[0], ((2, 24, 9, 9), 5, 1, 2, 1), ((2, 16, 9, 11), 3, 2, 1, 1), GEOMETRIES[1],
                              GEOMETRIES[3]]:
        for affine in (True, False):
            args = _train_backward_case(shape, k, s, p, d, layout, dtype, device, affine)
            grad, x, cw, bw, bb, conv_out, mean, var, *geometry = args
            fused = op("depthwise_conv2d_bn_act_train_backward", backend)(*args, 1e-5, act, [True, True])
            grad_z, sum_g_xhat, sum_g = op("batch_norm_act_train_backward", backend)(grad, conv_out, bw, bb, mean, var,
                                                                                    1e-5, act)
            grad_x, grad_w, _ = op("depthwise_conv2d_backward", backend)(grad_z, x, cw, *geometry, [True, True, False])
            where = f"{shape} k{k} s{s} d{d} affine={affine}"
            for name, ours, ref in zip(("grad_input", "sum_g_xhat", "sum_g"), (fused[0], *fused[2:]),
                                       (grad_x, sum_g_xhat, sum_g)):
                assert torch.equal(ours, ref), f"{name}: {where}"
            assert_layout_kept(fused[0], x)
            if device == "cpu" or backend == "triton":
                assert torch.equal(fused[1], grad_w), f"grad_conv_weight: {where}"
            else:
                torch.testing.assert_close(fused[1].float(), grad_w.float(), rtol=1e-2, atol=1e-3, msg=where)
            masked = op("depthwise_conv2d_bn_act_train_backward", backend)(*args, 1e-5, act, [False, True])
            assert masked[0].numel() == 0 and torch.equal(masked[2], sum_g_xhat), where


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_fused_training_backward_opcheck(backend, device):
    skip_unless_usable(backend, device)
    args = _train_backward_case((2, 8, 6, 6), 3, 1, 1, 1, "channels_last", torch.float32, device)
    for mask in ([True, True], [True, False], [False, False]):  # both masked: two distinct empty outputs
        torch.library.opcheck(op("depthwise_conv2d_bn_act_train_backward", backend), (*args, 1e-5, "hardswish", mask))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("arg, change, exc", [
    ("conv_out", lambda t: t[:, :, :-1], ValueError),
    ("grad_output", lambda t: t.double(), TypeError),
    ("mean", lambda t: t[:-1], ValueError),
    ("var", lambda t: t.int(), TypeError),
    ("weight", lambda t: t[:-1], ValueError),
])
def test_fused_training_backward_bad_operands_name_the_argument(backend, arg, change, exc):
    skip_unless_usable(backend, "cpu")
    names = ["grad_output", "input", "conv_weight", "weight", "bias", "conv_out", "mean", "var"]
    args = list(_train_backward_case((2, 4, 5, 5), 3, 1, 1, 1, "channels_last", torch.float32, "cpu"))
    args[names.index(arg)] = change(args[names.index(arg)])
    with pytest.raises(exc, match=arg):
        op("depthwise_conv2d_bn_act_train_backward", backend)(*args, 1e-5, "relu6", [True, True])


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_training_one_value_per_channel_raises(backend):
    skip_unless_usable(backend, "cpu")
    x, (cw, _) = torch.randn(1, 4, 3, 3), make_conv(4, 3, "cpu")
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        MF.depthwise_conv2d_bn_act(x, cw, None, 1, 0, 1, None, None, None, None, True, 0.1, 1e-5, "relu", backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("training", [False, True])
def test_conv_bn_act_module_under_torch_compile(backend, training, device):
    skip_unless_usable(backend, device)
    torch._dynamo.reset()
    block = ConvBNAct(8, 8, kernel_size=3, stride=2, groups=8, activation="hardswish", backend=backend).to(device)
    block.train(training)
    x = make_input((2, 8, 7, 7), "channels_last", torch.float32, device).requires_grad_()
    reference = ConvBNAct(8, 8, kernel_size=3, stride=2, groups=8, activation="hardswish", backend="torch").to(device)
    reference.load_state_dict(block.state_dict())
    reference.train(training)
    y = torch.compile(block, fullgraph=True)(x)
    y_ref = reference(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.autograd.grad(y.sum(), x), torch.autograd.grad(y_ref.sum(), x), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(block[1].running_mean, reference[1].running_mean)


def test_eval_fold_is_cached_until_a_parameter_changes():
    block = ConvBNAct(6, 6, groups=6, activation="relu6", backend="torch" if not torch.cuda.is_available() else None).eval()
    block[1].backend = None  # the fastest usable kernels on CPU
    x = torch.randn(1, 6, 5, 5)
    with torch.no_grad():
        y1 = block(x)
        cached = block[1].__dict__["_conv_fold_cache"][1]
        block(x)
        assert block[1].__dict__["_conv_fold_cache"][1] is cached  # reused
        block[1].running_var.mul_(2)
        y2 = block(x)
        assert block[1].__dict__["_conv_fold_cache"][1] is not cached  # recomputed after the in-place change
    assert not torch.allclose(y1, y2)
    assert not [k for k in block.state_dict() if "fold" in k]


@pytest.mark.parametrize("backend", BACKENDS)
def test_depthwise_module_matches_conv2d(backend, device):
    skip_unless_usable(backend, device)
    conv = torch.nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=6).to(device)
    ours = DepthwiseConv2d.from_conv(conv, backend)
    assert ours.weight is conv.weight and list(ours.state_dict()) == list(conv.state_dict())
    x = torch.randn(2, 6, 9, 9, device=device)
    torch.testing.assert_close(ours(x), conv(x), **FP32_TOL)
