"""Large tensors (issue 9): inputs of more than 2^31 elements give correct results on the GPU
kernels ("cuda" and "triton" backends on a CUDA device): every offset past 2^31 - 1 must be computed
in 64 bits. Each op runs forward and backward on

* "wide-nchw" / "wide-channels_last": (33, 64, 1024, 1000), 2,162,688,000 elements: the element
  offsets pass 2^31 inside the last image (NCHW: its channels 49-63; channels_last: its rows
  786-1023), while the pixel count N*H*W (33.8M) stays small;
* "one-channel": (2049, 1, 1024, 1024), 2,148,532,224 elements: the pixel count itself passes 2^31
  (the Triton kernels' PIX64 path) and so does a channel's element count (the BatchNorm count).

The torch reference runs in float64 on the last image (the one past 2^31) for every element-wise
result, and chunk by chunk over the whole tensor for every reduction (batch statistics, running
statistics, weight and bias gradients). To make a reduction that drops or misreads the last image
fail, that image carries most of the weight: its input is shifted by +8 (batch statistics) and its
output gradient scaled by up to 64x (gradients).

Memory: float16 (batch_norm_act, squeeze_excite; float32 parameters) or bfloat16 (depthwise ops,
whose weights share the input's dtype: float16 weight gradients would overflow) tensors of ~4.3 GB;
a case needs up to ~35 GB of GPU memory and skips, saying so, with less free.

These cases are opt-in: ``MK_TEST_DEVICE=cuda python -m pytest python_tests/test_large_tensors.py
-m large_tensors`` (one process: never under pytest-xdist, where several workers would share the
GPU's memory). Without ``-m large_tensors``, or without a GPU, they skip with the reason.
``MK_LARGE_TENSORS_SMOKE=1`` runs the same code on tiny shapes (on CPU too), to check the test
itself on a machine without a GPU.
"""

from __future__ import annotations

import gc
import os
import sys

import pytest
import torch
import torch.nn.functional as F

import mobilenet_kernels.functional as MF
from mobilenet_kernels.activations import activation_derivative, apply_activation

from conftest import skip_unless_usable

SMOKE = os.environ.get("MK_LARGE_TENSORS_SMOKE") == "1"
SHAPES = {
    "wide-nchw": ((3, 8, 6, 5) if SMOKE else (33, 64, 1024, 1000), "nchw"),
    "wide-channels_last": ((3, 8, 6, 5) if SMOKE else (33, 64, 1024, 1000), "channels_last"),
    "one-channel": ((9, 1, 4, 4) if SMOKE else (2049, 1, 1024, 1024), "nchw"),
}
CASES = list(SHAPES)
KERNEL_BACKENDS = ["cuda", "triton"]
ACT = "silu"  # smooth: element-wise comparisons never straddle a kink
LAST_SHIFT = 8.0
EPS = 1e-5
# float64 elements per reference chunk (1 GiB)
CHUNK_ELEMENTS = 2**27


def need_bytes(shape, dtype, tensors: int) -> int:
    n = 1
    for s in shape:
        n *= s
    return n * torch.finfo(dtype).bits // 8 * tensors


def setup_case(case: str, backend: str, device: str, request, dtype, tensors: int):
    """Skip unless this case can run here; returns (shape, layout)."""
    if not SMOKE:
        if "large_tensors" not in (request.config.getoption("markexpr") or ""):
            pytest.skip("large-tensor cases are opt-in: select them with -m large_tensors (one process, no xdist)")
        if device != "cuda":
            pytest.skip("large-tensor cases run on a CUDA device only (the GPU kernels' 64-bit indexing)")
    skip_unless_usable(backend, device)
    shape, layout = SHAPES[case]
    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        need = need_bytes(shape, dtype, tensors) + 6 * 2**30  # + float64 reference chunks
        if free < need:
            pytest.skip(f"needs ~{need / 2**30:.0f} GiB of free GPU memory, {free / 2**30:.0f} GiB free")
    return shape, layout


@pytest.fixture(autouse=True)
def _release_memory():
    """A failed case's traceback (sys.last_traceback, kept by pytest for post-mortem debugging)
    holds its frames and so its multi-GB tensors: drop it before the next case."""
    yield
    sys.last_traceback = sys.last_value = sys.last_type = None
    if hasattr(sys, "last_exc"):
        sys.last_exc = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def big(shape, layout, dtype, device, seed, last_shift=0.0):
    """A random normal tensor in ``layout``, the last image shifted by ``last_shift``."""
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.empty(shape, dtype=dtype, device=device, memory_format=fmt).normal_(generator=gen)
    if last_shift:
        x[-1] += last_shift
    return x


def big_grad(shape, layout, dtype, device, seed):
    """A positive output gradient (coherent sums), the last image scaled so that it carries about
    two thirds of every gradient sum (at most 64x: float16 range)."""
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    gen = torch.Generator(device=device).manual_seed(seed)
    g = torch.empty(shape, dtype=dtype, device=device, memory_format=fmt).uniform_(0.5, 1.5, generator=gen)
    g[-1] *= min(2 * (shape[0] - 1), 64)
    return g


def chunks(n_images: int, per_image: int):
    step = max(1, CHUNK_ELEMENTS // per_image)
    return [(s, min(s + step, n_images)) for s in range(0, n_images, step)]


def per_channel(v):
    return v.view(1, -1, 1, 1)


def assert_close_last(actual_last, expected_last, rtol, what):
    """actual (low precision) vs the float64 reference on the last image, with an atol of rtol
    times the reference's largest magnitude."""
    scale = expected_last.abs().max().item()
    torch.testing.assert_close(actual_last.double(), expected_last, rtol=rtol, atol=rtol * scale,
                               msg=lambda m: f"{what}, last image: {m}")


def assert_close_sum(actual, expected, rtol, what):
    torch.testing.assert_close(actual.double(), expected, rtol=rtol, atol=rtol * expected.abs().max().item(),
                               msg=lambda m: f"{what}: {m}")


def batch_stats64(make_chunk, n_images, per_image, C, device):
    """Per-channel mean and biased variance in float64, two passes over float64 chunks."""
    total = torch.zeros(C, dtype=torch.float64, device=device)
    count = 0
    for s, e in chunks(n_images, per_image):
        z = make_chunk(s, e)
        total += z.sum((0, 2, 3))
        count += z.numel() // C
    mean = total / count
    m2 = torch.zeros(C, dtype=torch.float64, device=device)
    for s, e in chunks(n_images, per_image):
        m2 += (make_chunk(s, e) - per_channel(mean)).square().sum((0, 2, 3))
    return mean, m2 / count, count


def grad_pre_act(g, xhat, w64, b64):
    """float64 gradient reaching z = xhat * weight + bias, the input of the activation, from the
    output gradient ``g`` (of the same images as ``xhat``)."""
    return g.double() * activation_derivative(xhat * per_channel(w64) + per_channel(b64), ACT)


def bn_act_grad_sums(xhat_of, g, w64, b64, n_images, per_image, C, device):
    """Per-channel sums over every image, in float64 chunks, of grad_pre_act (d) and of d * xhat,
    with ``xhat_of(s, e)`` the normalised input of images s to e: the BatchNorm + activation's
    reference bias and weight gradients."""
    sum_d = torch.zeros(C, dtype=torch.float64, device=device)
    sum_dxhat = torch.zeros_like(sum_d)
    for s, e in chunks(n_images, per_image):
        xhat = xhat_of(s, e)
        d = grad_pre_act(g[s:e], xhat, w64, b64)
        sum_d += d.sum((0, 2, 3))
        sum_dxhat += (d * xhat).sum((0, 2, 3))
    return sum_d, sum_dxhat


# ----------------------------------------------------------------------------- batch_norm_act


def bn_params(C, device):
    gen = torch.Generator(device=device).manual_seed(1)
    r = lambda: torch.randn(C, device=device, generator=gen)  # noqa: E731
    u = lambda: torch.rand(C, device=device, generator=gen)  # noqa: E731
    return r() * 0.1, u() + 0.5, u() + 0.5, r()  # running_mean, running_var, weight, bias (float32)


@pytest.mark.large_tensors
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("case", CASES)
def test_batch_norm_act_eval(backend, case, device, request):
    dtype = torch.float16
    shape, layout = setup_case(case, backend, device, request, dtype, tensors=4)
    N, C, H, W = shape
    rm, rv, w, b = bn_params(C, device)
    x = big(shape, layout, dtype, device, seed=2).requires_grad_()
    w.requires_grad_()
    b.requires_grad_()
    y = MF.batch_norm_act(x, rm, rv, w, b, False, 0.1, EPS, ACT, backend=backend)
    assert y.shape == shape and y.dtype == dtype
    rstd = (rv.double() + EPS).rsqrt()
    w64, b64 = w.detach().double(), b.detach().double()

    def xhat_of(s, e):  # float64, normalised with the running statistics
        return (x.detach()[s:e].double() - per_channel(rm.double())) * per_channel(rstd)

    xhat = xhat_of(N - 1, N)
    assert_close_last(y.detach()[-1], apply_activation(xhat * per_channel(w64) + per_channel(b64), ACT)[0], 2e-3,
                      "output")
    g = big_grad(shape, layout, dtype, device, seed=3)
    gx, gw, gb = torch.autograd.grad(y, (x, w, b), g)
    del y
    sum_d, sum_dxhat = bn_act_grad_sums(xhat_of, g, w64, b64, N, C * H * W, C, device)
    assert_close_sum(gb, sum_d, 1e-3, "grad_bias")
    assert_close_sum(gw, sum_dxhat, 1e-3, "grad_weight")
    d = grad_pre_act(g[-1:], xhat, w64, b64)
    assert_close_last(gx[-1], (d * per_channel(w64 * rstd))[0], 2e-3, "grad_input")


@pytest.mark.large_tensors
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("case", CASES)
def test_batch_norm_act_train(backend, case, device, request):
    dtype = torch.float16
    shape, layout = setup_case(case, backend, device, request, dtype, tensors=4)
    N, C, H, W = shape
    rm0, rv0, w, b = bn_params(C, device)
    rm, rv = rm0.clone(), rv0.clone()
    x = big(shape, layout, dtype, device, seed=4, last_shift=LAST_SHIFT).requires_grad_()
    w.requires_grad_()
    b.requires_grad_()
    y = MF.batch_norm_act(x, rm, rv, w, b, True, 0.1, EPS, ACT, backend=backend)
    assert y.shape == shape and y.dtype == dtype
    mean, var, n = batch_stats64(lambda s, e: x.detach()[s:e].double(), N, C * H * W, C, device)
    assert n == N * H * W
    torch.testing.assert_close(rm.double(), 0.9 * rm0.double() + 0.1 * mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(rv.double(), 0.9 * rv0.double() + 0.1 * var * n / (n - 1), rtol=1e-4, atol=1e-5)
    rstd = (var + EPS).rsqrt()
    w64, b64 = w.detach().double(), b.detach().double()

    def xhat_of(s, e):
        return (x.detach()[s:e].double() - per_channel(mean)) * per_channel(rstd)

    assert_close_last(y.detach()[-1], apply_activation(xhat_of(N - 1, N) * per_channel(w64) + per_channel(b64), ACT)[0],
                      2e-3, "output")
    g = big_grad(shape, layout, dtype, device, seed=5)
    gx, gw, gb = torch.autograd.grad(y, (x, w, b), g)
    del y
    sum_d, sum_dxhat = bn_act_grad_sums(xhat_of, g, w64, b64, N, C * H * W, C, device)
    assert_close_sum(gb, sum_d, 1e-3, "grad_bias")
    assert_close_sum(gw, sum_dxhat, 1e-3, "grad_weight")
    xhat = xhat_of(N - 1, N)
    d = grad_pre_act(g[-1:], xhat, w64, b64)
    expected = per_channel(w64 * rstd) * (d - per_channel(sum_d / n) - xhat * per_channel(sum_dxhat / n))
    assert_close_last(gx[-1], expected[0], 2e-3, "grad_input")


# ----------------------------------------------------------------------------- depthwise


def dw_params(C, dtype, device):
    gen = torch.Generator(device=device).manual_seed(6)
    w = (torch.randn(C, 1, 3, 3, device=device, generator=gen) / 3).to(dtype)
    b = torch.randn(C, device=device, generator=gen).to(dtype)
    return w, b


@pytest.mark.large_tensors
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("case", CASES)
def test_depthwise_conv2d(backend, case, device, request):
    """3x3, stride 1, padding 1: the output has the input's shape (and so its 2^31+ elements)."""
    dtype = torch.bfloat16
    shape, layout = setup_case(case, backend, device, request, dtype, tensors=4)
    N, C, H, W = shape
    w, b = dw_params(C, dtype, device)
    x = big(shape, layout, dtype, device, seed=7, last_shift=LAST_SHIFT).requires_grad_()
    w.requires_grad_()
    b.requires_grad_()
    y = MF.depthwise_conv2d(x, w, b, 1, 1, 1, activation=ACT, backend=backend)
    assert y.shape == shape and y.dtype == dtype
    w64, b64 = w.detach().double(), b.detach().double()
    x_last = x.detach()[-1:].double().requires_grad_()
    y_last = apply_activation(F.conv2d(x_last, w64, b64, 1, 1, 1, groups=C), ACT)
    assert_close_last(y.detach()[-1], y_last.detach()[0], 1e-2, "output")
    g = big_grad(shape, layout, dtype, device, seed=8)
    gx, gw, gb = torch.autograd.grad(y, (x, w, b), g)
    del y
    (gx_last,) = torch.autograd.grad(y_last, x_last, g[-1:].double())
    assert_close_last(gx[-1], gx_last[0], 1e-2, "grad_input")
    w64.requires_grad_()
    b64.requires_grad_()
    for s, e in chunks(N, C * H * W):
        yc = apply_activation(F.conv2d(x.detach()[s:e].double(), w64, b64, 1, 1, 1, groups=C), ACT)
        yc.backward(g[s:e].double())
    assert_close_sum(gw, w64.grad, 1e-2, "grad_weight")
    assert_close_sum(gb, b64.grad, 1e-2, "grad_bias")


@pytest.mark.large_tensors
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("case", CASES)
def test_depthwise_conv2d_bn_act_train(backend, case, device, request):
    """The fused training op: conv statistics from the kernel's epilogue over 2^31+ outputs, the
    running statistics, the output and the input gradient of the last image."""
    dtype = torch.bfloat16
    shape, layout = setup_case(case, backend, device, request, dtype, tensors=8)
    N, C, H, W = shape
    cw, _ = dw_params(C, dtype, device)
    rm0, rv0, w, b = bn_params(C, device)
    rm, rv = rm0.clone(), rv0.clone()
    x = big(shape, layout, dtype, device, seed=9, last_shift=LAST_SHIFT).requires_grad_()
    for t in (cw, w, b):
        t.requires_grad_()
    y = MF.depthwise_conv2d_bn_act(x, cw, None, 1, 1, 1, rm, rv, w, b, True, 0.1, EPS, ACT, backend=backend)
    assert y.shape == shape and y.dtype == dtype
    cw64 = cw.detach().double()

    def conv_of(s, e):
        # the kernels normalise the conv output as stored (rounded to bfloat16): so does the reference
        return F.conv2d(x.detach()[s:e].double(), cw64, None, 1, 1, 1, groups=C).to(dtype).double()

    mean, var, n = batch_stats64(conv_of, N, C * H * W, C, device)
    torch.testing.assert_close(rm.double(), 0.9 * rm0.double() + 0.1 * mean, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(rv.double(), 0.9 * rv0.double() + 0.1 * var * n / (n - 1), rtol=1e-3, atol=1e-4)
    rstd = (var + EPS).rsqrt()
    w64, b64 = w.detach().double(), b.detach().double()

    def xhat_of(s, e):
        return (conv_of(s, e) - per_channel(mean)) * per_channel(rstd)

    xhat = xhat_of(N - 1, N)
    assert_close_last(y.detach()[-1], apply_activation(xhat * per_channel(w64) + per_channel(b64), ACT)[0], 1e-2,
                      "output")
    g = big_grad(shape, layout, dtype, device, seed=10)
    gx, gcw, gw, gb = torch.autograd.grad(y, (x, cw, w, b), g)
    del y
    sum_d, sum_dxhat = bn_act_grad_sums(xhat_of, g, w64, b64, N, C * H * W, C, device)
    assert_close_sum(gb, sum_d, 1e-2, "grad_bias")
    assert_close_sum(gw, sum_dxhat, 1e-2, "grad_weight")

    def grad_z_of(s, e):  # the gradient reaching the conv output, float64
        xh = xhat_of(s, e)
        d = grad_pre_act(g[s:e], xh, w64, b64)
        return per_channel(w64 * rstd) * (d - per_channel(sum_d / n) - xh * per_channel(sum_dxhat / n))

    x_last = x.detach()[-1:].double().requires_grad_()
    (expected,) = torch.autograd.grad(F.conv2d(x_last, cw64, None, 1, 1, 1, groups=C), x_last, grad_z_of(N - 1, N))
    assert_close_last(gx[-1], expected[0], 1e-2, "grad_input")
    cw64.requires_grad_()
    for s, e in chunks(N, C * H * W):
        F.conv2d(x.detach()[s:e].double(), cw64, None, 1, 1, 1, groups=C).backward(grad_z_of(s, e))
    assert_close_sum(gcw, cw64.grad, 2e-2, "grad_conv_weight")


# ----------------------------------------------------------------------------- pointwise


@pytest.mark.large_tensors
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("case", ["wide-nchw", "wide-channels_last"])
def test_pointwise_conv2d(backend, case, device, request):
    """1x1 conv C -> C with bias, activation and residual (the residual, output and gradients have
    the input's 2^31+ elements), then the statistics variant over the same input. (The
    "one-channel" case, a 1 -> 1 channel conv, is no MobileNet layer: not run.)"""
    dtype = torch.bfloat16
    shape, layout = setup_case(case, backend, device, request, dtype, tensors=6)
    N, C, H, W = shape
    gen = torch.Generator(device=device).manual_seed(11)
    w = (torch.randn(C, C, 1, 1, device=device, generator=gen) / C**0.5).to(dtype).requires_grad_()
    b = torch.randn(C, device=device, generator=gen).to(dtype).requires_grad_()
    x = big(shape, layout, dtype, device, seed=12, last_shift=LAST_SHIFT).requires_grad_()
    r = big(shape, layout, dtype, device, seed=13)
    y = MF.pointwise_conv2d(x, w, b, r, activation=ACT, backend=backend)
    assert y.shape == shape and y.dtype == dtype
    w64, b64 = w.detach().double(), b.detach().double()
    x_last = x.detach()[-1:].double().requires_grad_()
    y_last = apply_activation(F.conv2d(x_last, w64, b64), ACT) + r[-1:].double()
    assert_close_last(y.detach()[-1], y_last.detach()[0], 1e-2, "output")
    g = big_grad(shape, layout, dtype, device, seed=14)
    gx, gw, gb = torch.autograd.grad(y, (x, w, b), g)
    del y, r
    (gx_last,) = torch.autograd.grad(y_last, x_last, g[-1:].double())
    assert_close_last(gx[-1], gx_last[0], 1e-2, "grad_input")
    del gx
    w64.requires_grad_()
    b64.requires_grad_()
    for s, e in chunks(N, C * H * W):
        apply_activation(F.conv2d(x.detach()[s:e].double(), w64, b64), ACT).backward(g[s:e].double())
    assert_close_sum(gw, w64.grad, 1e-2, "grad_weight")
    assert_close_sum(gb, b64.grad, 1e-2, "grad_bias")
    del g
    suffix = "" if backend == "cuda" else "_triton"
    out, mean, var = getattr(torch.ops.mobilenet_kernels, "pointwise_conv2d_stats" + suffix)(x.detach(), w.detach())
    ref_mean, ref_var, _ = batch_stats64(lambda s, e: out[s:e].double(), N, C * H * W, C, device)
    torch.testing.assert_close(mean.double(), ref_mean, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(var.double(), ref_var, rtol=1e-3, atol=1e-4)
    w64 = w.detach().double()
    assert_close_last(out[-1], F.conv2d(x.detach()[-1:].double(), w64)[0], 1e-2, "statistics variant's output")


# ----------------------------------------------------------------------------- expand + depthwise


@pytest.mark.large_tensors
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("case", ["wide-nchw", "wide-channels_last"])
def test_pointwise_depthwise_bn_act_train(backend, case, device, request, monkeypatch):
    """An inverted residual's expand + depthwise layers in training, expanding C / 4 -> C channels
    into the 2^31+ element tensor: the fused kernels (the expand BatchNorm applied where the
    depthwise kernels stage their input, BatchNorm's grad_input inside the depthwise backward) give
    the bits of the sequence that both switches off runs (the apply pass, then the per-layer ops,
    which the cases above check against float64), output, every gradient and both BatchNorms'
    running statistics, as they do on small shapes (test_pointwise_depthwise.py)."""
    dtype = torch.bfloat16
    shape, layout = setup_case(case, backend, device, request, dtype, tensors=9)
    N, C, H, W = shape
    gen = torch.Generator(device=device).manual_seed(15)
    we = (torch.randn(C, C // 4, 1, 1, device=device, generator=gen) * (C // 4) ** -0.5).to(dtype)
    wd, _ = dw_params(C, dtype, device)
    x = big((N, C // 4, H, W), layout, dtype, device, seed=16, last_shift=LAST_SHIFT)
    g = big_grad(shape, layout, dtype, device, seed=17)

    def run():
        stats = [t.clone() for t in (*bn_params(C, device)[:2], *bn_params(C, device)[:2])]
        _, _, w1, b1 = bn_params(C, device)
        leaves = [t.detach().clone().requires_grad_() for t in (x, we, wd, w1, b1, w1, b1)]
        y = MF.pointwise_depthwise_bn_act_train(leaves[0], leaves[1], leaves[2], 1, 1, 1, stats[0], stats[1],
                                                leaves[3], leaves[4], stats[2], stats[3], leaves[5], leaves[6], 0.1,
                                                0.1, EPS, ACT, backend=backend)
        grads = torch.autograd.grad(y, leaves, g)
        return [y.detach(), *grads, *stats]

    names = ["output", "grad_input", "grad_expand_weight", "grad_dw_weight", "grad_expand_bn_weight",
             "grad_expand_bn_bias", "grad_dw_bn_weight", "grad_dw_bn_bias", "expand_running_mean",
             "expand_running_var", "dw_running_mean", "dw_running_var"]
    fused = run()
    monkeypatch.setenv("MK_DW_INPUT_BN", "0")
    monkeypatch.setenv("MK_DW_BN_FUSED", "0")
    sequence = run()
    for name, a, b in zip(names, fused, sequence):
        assert torch.equal(a, b), name


# ----------------------------------------------------------------------------- squeeze_excite


@pytest.mark.large_tensors
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("case", CASES)
def test_squeeze_excite(backend, case, device, request):
    """Pooling over each image's 1M+ pixels, the per-image excite step and the scaling, on the
    last image; the fc weight and bias gradients (float32, sums over every image)."""
    dtype = torch.float16
    shape, layout = setup_case(case, backend, device, request, dtype, tensors=4)
    N, C, H, W = shape
    S = max(1, C // 4)
    gen = torch.Generator(device=device).manual_seed(11)
    params = [torch.randn(S, C, 1, 1, device=device, generator=gen) / C**0.5, torch.randn(S, device=device, generator=gen),
              torch.randn(C, S, 1, 1, device=device, generator=gen) * 2 / S**0.5,
              torch.randn(C, device=device, generator=gen)]
    for p in params:
        p.requires_grad_()
    x = big(shape, layout, dtype, device, seed=12).requires_grad_()
    y = MF.squeeze_excite(x, *params, activation=ACT, scale_activation="sigmoid", backend=backend)
    assert y.shape == shape and y.dtype == dtype

    def ref(xc, p64):
        pooled = xc.mean((2, 3), keepdim=True)
        s = torch.sigmoid(F.conv2d(apply_activation(F.conv2d(pooled, p64[0], p64[1]), ACT), p64[2], p64[3]))
        return xc * s

    p64 = [p.detach().double().requires_grad_() for p in params]
    x_last = x.detach()[-1:].double().requires_grad_()
    y_last = ref(x_last, p64)
    assert_close_last(y.detach()[-1], y_last.detach()[0], 2e-3, "output")
    g = big_grad(shape, layout, dtype, device, seed=13)
    gx, *gp = torch.autograd.grad(y, (x, *params), g)
    del y
    (gx_last,) = torch.autograd.grad(y_last, x_last, g[-1:].double())
    assert_close_last(gx[-1], gx_last[0], 2e-3, "grad_input")
    for s, e in chunks(N, C * H * W):
        ref(x.detach()[s:e].double(), p64).backward(g[s:e].double())
    for name, a, p in zip(("fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias"), gp, p64):
        assert_close_sum(a, p.grad, 1e-3, f"grad_{name}")
