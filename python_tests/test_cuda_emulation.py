"""The CUDA tiled depthwise kernel (csrc/cuda/depthwise_tiled.cuh) run on the CPU by host emulation.

python_tests/cuda_emulation/dw_tiled_host.cpp compiles the very header with the host C++ compiler
against cuda_shim/ (no nvcc) and runs depthwise_conv2d_fwd_tiled_kernel with one std::thread per
CUDA thread and a barrier for __syncthreads, after plan_tiled as the CUDA host code calls it. These
tests check its index math (tiles, halo, padding, strides, idle channel threads, the statistics
partials) against an fp64 PyTorch reference on machines without a GPU. The output and the partials
start as NaN, so an element the kernel leaves unwritten fails the comparison.
"""

import itertools
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils import cpp_extension

from mobilenet_kernels.reference import depthwise_conv2d_ref, inverted_residual_eval_ref, pointwise_conv2d_ref
from op_helpers import make_input

ROOT = Path(__file__).resolve().parent.parent
EMU = Path(__file__).resolve().parent / "cuda_emulation"

_CXX = os.environ.get("CXX", "c++")
if shutil.which(_CXX) is None:
    pytest.skip(f"the CUDA host emulation needs a C++ compiler ({_CXX!r} not found)", allow_module_level=True)
if not cpp_extension.is_ninja_available():
    pytest.skip("the CUDA host emulation is built with torch.utils.cpp_extension.load, which needs ninja",
                allow_module_level=True)

ACT = {"identity": 0, "relu": 1, "relu6": 2, "hardswish": 3, "hardsigmoid": 4, "sigmoid": 5, "silu": 6}
VEC = {torch.float32: 4, torch.bfloat16: 8, torch.float16: 8}
# Channel counts: one vector, and vector counts that split into channel blocks with idle threads
# (fp32 36 = 9 vectors: two blocks of 5, the second one with an idle thread; bf16/fp16 72 likewise).
CHANNELS = {torch.float32: (4, 12, 36), torch.bfloat16: (8, 40, 72), torch.float16: (8, 40, 72)}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def build_emulation(name: str, source: str):
    """An emulation extension, built once per session; ninja rebuilds it only when a source or a
    header changed (the build directories persist under the temp dir, one per extension, Python and
    torch)."""
    tag = f"py{sys.version_info[0]}{sys.version_info[1]}_torch{torch.__version__}".replace("+", "_")
    build = Path(tempfile.gettempdir()) / f"mk_cuda_emulation_{tag}" / name
    build.mkdir(parents=True, exist_ok=True)
    return cpp_extension.load(
        name=name,
        sources=[str(EMU / source)],
        extra_include_paths=[str(EMU / "cuda_shim"), str(ROOT / "csrc")],
        extra_cflags=["-std=c++20", "-O1", "-pthread", "-DMK_CUDA_EMULATION", "-Wno-unknown-pragmas"],
        extra_ldflags=["-pthread"],
        build_directory=str(build),
        verbose=False,
    )


@pytest.fixture(scope="module")
def emu():
    """The emulated tiled depthwise kernel (dw_tiled_host.cpp)."""
    return build_emulation("mk_dw_tiled_host", "dw_tiled_host.cpp")


def act_ref(z: torch.Tensor, act: str) -> torch.Tensor:
    return {"identity": lambda t: t, "relu": F.relu, "relu6": F.relu6, "hardswish": F.hardswish,
            "hardsigmoid": F.hardsigmoid, "sigmoid": torch.sigmoid, "silu": F.silu}[act](z)


def make_case(N, C, H, W, K, dtype, *, bias, x_pad_w=0):
    """x channels_last (a W-slice of a wider tensor when x_pad_w > 0: H and N strides not dense),
    weight (C, 1, K, K) with the tap-major copy the kernel takes, and bias or None."""
    x = (torch.randn(N, C, H, W + x_pad_w) * 3).to(dtype).contiguous(memory_format=torch.channels_last)
    x = x[..., :W]
    w = torch.randn(C, 1, K, K) / K
    taps = w.reshape(C, K * K).t().contiguous()
    b = torch.randn(C) if bias else None
    return x, w, taps, b


def run(emu, x, taps, b, K, S, pH, pW, act, stats):
    y, pn, pm, pm2, info = emu.run(x, taps, b if b is not None else torch.empty(0), K, S, pH, pW, ACT[act], stats)
    TH, TW, strips, R, tiles, blocks_x, blocks_y, cbv, tx, ty, smem = info
    N, C, H, W = x.shape
    OH, OW = (H + 2 * pH - K) // S + 1, (W + 2 * pW - K) // S + 1
    where = f"x {tuple(x.shape)} {x.dtype} K{K} S{S} pad ({pH}, {pW}) {act} stats={stats} plan {info}"
    assert y.shape == (N, C, OH, OW), where
    lanes = VEC[x.dtype] // min(VEC[x.dtype], 4)  # threads per channel vector
    assert TW == strips * 4 and 1 <= TH <= OH and tx == cbv * lanes and tx * ty <= 256 and ty >= TH * strips, where
    assert tiles == N * math.ceil(OH / TH) * math.ceil(OW / TW) and blocks_x == math.ceil(tiles / R), where
    assert blocks_y == math.ceil(C // VEC[x.dtype] / cbv) and smem <= 24 * 1024, where
    assert not y.isnan().any(), f"output elements left unwritten: {where}"
    return y, (pn, pm, pm2), info, where


def reference(x, w, b, S, pH, pW, act):
    """act(conv2d(x, w) + b) in fp64; F.pad crops for a negative padding (F.conv2d takes none)."""
    xd = F.pad(x.double(), (pW, pW, pH, pH))
    z = F.conv2d(xd, w.double(), None if b is None else b.double(), stride=S, groups=x.shape[1])
    return act_ref(z, act)


def assert_matches(y, ref, dtype, where):
    if dtype == torch.float32:
        torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5, msg=where)
    else:  # fp32 accumulation rounded once: within an ulp of the rounded fp64 reference
        eps = torch.finfo(dtype).eps
        torch.testing.assert_close(y.double(), ref.to(dtype).double(), rtol=eps, atol=1e-5, msg=where)


def forward_cases(dtype, K):
    """(N, C, H, W, pH, pW, bias, act): every shape and channel count with the usual padding and
    one of padding 0, a negative padding (grad_input as a forward conv) or unequal paddings; skips
    the combinations with an empty output."""
    same = (K - 1) // 2
    shapes = [(1, 1, 1), (2, 7, 7), (1, 13, 13), (2, 13, 7), (1, 7, 13)]
    alts = [(0, 0), (-1, -2), (same, 0), (0, same), (-1, same)]
    acts = ["identity", "relu6", "hardswish"]
    cases = []
    for i, ((N, H, W), C) in enumerate(itertools.product(shapes, CHANNELS[dtype])):
        for j, (pH, pW) in enumerate([(same, same), alts[i % len(alts)]]):
            if H + 2 * pH < K or W + 2 * pW < K:
                continue
            cases.append((N, C, H, W, pH, pW, (i + j) % 2 == 0, acts[(i + j) % len(acts)]))
    return cases


@pytest.mark.parametrize("S", [1, 2])
@pytest.mark.parametrize("K", [3, 5, 7])
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_matches_conv2d(emu, dtype, K, S):
    """act(conv(x) + bias) for each shape, channel count and padding of forward_cases."""
    cases = forward_cases(dtype, K)
    assert len(cases) >= 15
    for N, C, H, W, pH, pW, bias, act in cases:
        x, w, taps, b = make_case(N, C, H, W, K, dtype, bias=bias)
        y, _, _, where = run(emu, x, taps, b, K, S, pH, pW, act, False)
        assert_matches(y, reference(x, w, b, S, pH, pW, act), dtype, where)


# (dtype, N, C, H, W, K, S, pH, pW, x_pad_w): several tiles per image in both directions (a C of one
# vector gives tiles of up to 128 rows), the footprint halved to fit the shared memory (8 vectors,
# K 7 at stride 2), x with non-dense strides, and the other activations.
MULTI_TILE = [
    (torch.float32, 1, 4, 140, 9, 3, 1, 1, 1, 0),
    (torch.float32, 2, 4, 9, 140, 5, 2, 2, 2, 0),
    (torch.bfloat16, 1, 64, 24, 24, 7, 2, 3, 3, 0),
    (torch.float16, 2, 64, 17, 21, 7, 1, 3, 3, 0),
    (torch.float32, 2, 36, 20, 15, 3, 1, 1, 1, 3),
    (torch.bfloat16, 3, 40, 11, 19, 5, 2, 2, -1, 8),
    (torch.float32, 1, 32, 31, 33, 7, 1, -2, 3, 4),
]


@pytest.mark.parametrize("act", ["relu", "hardsigmoid", "sigmoid", "silu"])
@pytest.mark.parametrize("case", MULTI_TILE, ids=lambda c: f"{c[0]}-N{c[1]}C{c[2]}-{c[3]}x{c[4]}-k{c[5]}s{c[6]}")
def test_multi_tile_and_strides(emu, case, act):
    dtype, N, C, H, W, K, S, pH, pW, x_pad_w = case
    x, w, taps, b = make_case(N, C, H, W, K, dtype, bias=True, x_pad_w=x_pad_w)
    assert x_pad_w == 0 or not x.is_contiguous(memory_format=torch.channels_last)
    y, _, info, where = run(emu, x, taps, b, K, S, pH, pW, act, False)
    if act in ("sigmoid", "silu") and dtype == torch.float32:  # __fdividef: within 2 ulp, not exact
        torch.testing.assert_close(y.double(), reference(x, w, b, S, pH, pW, act), rtol=2e-5, atol=2e-5, msg=where)
    else:
        assert_matches(y, reference(x, w, b, S, pH, pW, act), dtype, where)


def chan_merge_all(pn, pm, pm2):
    """Merges the (blocks, C) partials over the blocks in float64 (Chan et al.)."""
    n = torch.zeros(pn.shape[1], dtype=torch.float64)
    mean = torch.zeros_like(n)
    m2 = torch.zeros_like(n)
    for nb, mb, m2b in zip(pn.double(), pm.double(), pm2.double()):
        tot = n + nb
        d = mb - mean
        f = torch.where(tot > 0, nb / tot.clamp_min(1), torch.zeros_like(tot))
        mean = mean + d * f
        m2 = m2 + m2b + d * d * n * f
        n = tot
    return n, mean, m2


# (N, H, W, pad): blocks of R > 1 tiles that cross images and a clipped last block (3 images of 2
# tiles in groups of 4), several blocks per image, and one pixel.
STATS_SHAPES = [(3, 13, 7, "same"), (2, 20, 20, "same"), (2, 1, 1, "same"), (1, 16, 11, 0)]


@pytest.mark.parametrize("S", [1, 2])
@pytest.mark.parametrize("K", [3, 5, 7])
@pytest.mark.parametrize("dtype", DTYPES)
def test_stats_partials(emu, dtype, K, S):
    """With statistics: the same output as without them (no bias, identity: as production calls
    it), and the partials merged over the blocks give the variance and mean of the stored output."""
    for (N, H, W, pad), C in itertools.product(STATS_SHAPES, CHANNELS[dtype][1:]):
        p = (K - 1) // 2 if pad == "same" else pad
        if H + 2 * p < K or W + 2 * p < K:
            continue
        x, w, taps, _ = make_case(N, C, H, W, K, dtype, bias=False)
        x = x + 2.0  # a mean away from 0
        x = x.to(dtype).contiguous(memory_format=torch.channels_last)
        y, (pn, pm, pm2), info, where = run(emu, x, taps, None, K, S, p, p, "identity", True)
        y0, _, _, _ = run(emu, x, taps, None, K, S, p, p, "identity", False)
        assert torch.equal(y, y0), where
        assert_matches(y, reference(x, w, None, S, p, p, "identity"), dtype, where)
        assert not (pn.isnan().any() or pm.isnan().any() or pm2.isnan().any()), f"partials left unwritten: {where}"
        assert pn.shape == (info[5], C), where
        n, mean, m2 = chan_merge_all(pn, pm, pm2)
        count = N * y.shape[2] * y.shape[3]
        assert torch.equal(n, torch.full_like(n, count)), where
        ref_var, ref_mean = torch.var_mean(y.double(), dim=(0, 2, 3), unbiased=False)
        scale = ref_var.sqrt() + ref_mean.abs()
        assert ((mean - ref_mean).abs() <= 1e-5 * scale + 1e-7).all(), f"mean: {where}"
        torch.testing.assert_close(m2 / count, ref_var, rtol=1e-5, atol=1e-7, msg=f"variance: {where}")


# ----------------------------------------------------------------------------- whole-block kernel
# inverted_residual_eval_kernel (csrc/cuda/inverted_residual_block.cuh) emulated by
# cuda_emulation/inverted_residual_host.cpp: the CUDA entry point's own preparation
# (prepare_inverted_residual), limits, output allocation, template dispatch (nco_for) and launch
# plan (plan_block), then the kernel, block by block, with NaN-poisoned shared memory and buffers.

H100_SMEM = 232448  # sharedMemPerBlockOptin of an H100 (227 KiB); an A100 has 166912
IR_P = {1: 64, 2: 64, 4: 32, 8: 16}  # output pixels per tile, at most, per NCO (4 * pixel_rows<NCO>)


@pytest.fixture(scope="module")
def ir_emu():
    """The emulated whole-block kernel (inverted_residual_host.cpp)."""
    return build_emulation("mk_inverted_residual_host", "inverted_residual_host.cpp")


# (N, Cin, H, W, Chid or None (no expand conv), Cout, k, stride, dilation, activation, residual).
# Cout selects the NCO template (channel groups of 64 per thread): 1 up to 64, 2 up to 128, 4 up to
# 256, 8 beyond, hence tiles of up to 8x8, 8x8, 4x8 and 4x4 pixels; H, W of 1, 7, 13 and
# non-square images give single and multi-tile images with clipped last tiles; Cin over several
# staged steps of 16 channels, Chid over several chunks of 32 with a partial last one; channel
# counts not multiples of 8; halos that limit the tile (k5 at dilation 2) and lanes past the halo.
IR_CASES = [
    (1, 5, 7, 7, 30, 16, 3, 1, 1, "relu6", False),
    (2, 24, 13, 13, None, 24, 3, 1, 1, "hardswish", True),
    (2, 20, 13, 13, 44, 20, 5, 1, 1, "relu6", True),
    (1, 10, 1, 1, 60, 20, 3, 2, 1, "hardswish", False),
    (2, 21, 13, 7, 50, 40, 3, 2, 2, "relu6", False),
    (1, 13, 13, 7, 39, 100, 5, 2, 1, "relu6", False),
    (1, 100, 7, 13, None, 100, 5, 1, 2, "hardswish", True),
    (1, 72, 7, 7, 150, 72, 3, 1, 1, "hardswish", True),
    (1, 12, 13, 13, 50, 200, 3, 1, 2, "hardswish", False),
    (1, 12, 13, 13, 50, 200, 5, 2, 2, "relu6", False),
    (2, 36, 7, 7, 70, 150, 3, 1, 1, "relu6", False),
    (2, 20, 7, 7, 44, 320, 3, 1, 1, "relu6", False),
    (1, 36, 1, 1, 70, 512, 5, 1, 2, "hardswish", False),
    (1, 40, 13, 13, 90, 300, 3, 2, 1, "hardswish", False),
    (1, 300, 7, 7, None, 300, 3, 1, 1, "relu6", True),
]


def ir_case_id(c):
    N, Cin, H, W, Chid, Cout, k, s, d, act, res = c
    return f"N{N}-{Cin}-{Chid or 'noexp'}-{Cout}-{H}x{W}-k{k}s{s}d{d}-{act}{'-res' if res else ''}"


def make_ir_block(case, layout, dtype):
    """Input and parameters as python_tests/test_inverted_residual_eval.py::make_block makes them."""
    N, Cin, H, W, Chid, Cout, k, s, d, act, res = case
    x = make_input((N, Cin, H, W), layout, dtype, "cpu")
    w = lambda *shape, scale=1.0: (torch.randn(*shape) * scale).to(dtype)  # noqa: E731
    Ch = Chid or Cin
    we, be = (w(Ch, Cin, 1, 1, scale=Cin**-0.5), w(Ch)) if Chid else (None, None)
    params = (we, be, w(Ch, 1, k, k, scale=1 / k), w(Ch), w(Cout, Ch, 1, 1, scale=Ch**-0.5), w(Cout))
    return x, params, (s, d, act, res)


def expected_ir_tile(OH, OW, k, s, d, nco, acc_bytes, smem_limit):
    """pick_tile's choice: the first candidate (clipped to the output) within P pixels, a halo of
    256 pixels and the shared-memory limit."""
    P = IR_P[nco]
    for th, tw in [(8, 8), (4, 8), (4, 4), (2, 4), (2, 2), (1, 2), (1, 1)]:
        th, tw = min(th, OH), min(tw, OW)
        hh, hw = (th - 1) * s + (k - 1) * d + 1, (tw - 1) * s + (k - 1) * d + 1
        smem = (hh * hw * 17 + 16 * 33 + hh * hw * 32 + P * 32) * acc_bytes
        if th * tw <= P and hh * hw <= 256 and smem <= smem_limit:
            return th, tw, hw, hh * hw, smem
    raise AssertionError("no tile")


def run_ir(ir_emu, x, params, args, smem_limit=H100_SMEM):
    s, d, act, res = args
    y, info = ir_emu.run(x, *params, s, d, act, res, smem_limit)
    TH, TW, halo_w, halo_n, tiles_h, tiles_w, blocks, smem, nco = info
    N, Cin, H, W = x.shape
    Cout, k = params[4].shape[0], params[2].shape[-1]
    pad = (k - 1) // 2 * d
    OH, OW = (H + 2 * pad - d * (k - 1) - 1) // s + 1, (W + 2 * pad - d * (k - 1) - 1) // s + 1
    where = (f"x {tuple(x.shape)} {x.dtype} stride {tuple(x.stride())} Cout {Cout} k{k} s{s} d{d} {act} "
             f"res={res} plan {info}")
    assert y.shape == (N, Cout, OH, OW), where
    assert nco == {1: 1, 2: 2, 3: 4, 4: 4}.get(math.ceil(Cout / 64), 8), where
    acc_bytes = 8 if x.dtype == torch.float64 else 4
    assert (TH, TW, halo_w, halo_n, smem) == expected_ir_tile(OH, OW, k, s, d, nco, acc_bytes, smem_limit), where
    assert (tiles_h, tiles_w, blocks) == (math.ceil(OH / TH), math.ceil(OW / TW), N * tiles_h * tiles_w), where
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format), where
    assert not y.isnan().any(), f"output elements left unwritten (or NaN read): {where}"
    return y, info, where


def ir_reference(x, params, args, *, rounded):
    """The op-by-op reference: in float64 throughout, or (rounded) each of the three convs in
    float64 with its output rounded to x's dtype, as the op-by-op path stores the expanded and
    depthwise tensors (and as the kernel rounds them)."""
    s, d, act, res = args
    if rounded:
        return inverted_residual_eval_ref(x, *params, s, d, act, res, upcast=True).double()
    return inverted_residual_eval_ref(x.double(), *(None if p is None else p.double() for p in params), s, d, act, res)


def assert_ir_matches(y, x, params, args, where):
    if y.dtype in (torch.float32, torch.float64):
        tol = 1e-5 if y.dtype == torch.float32 else 1e-10
        torch.testing.assert_close(y.double(), ir_reference(x, params, args, rounded=False), rtol=tol, atol=tol,
                                   msg=where)
        return
    # bf16 / fp16: the kernel rounds E and D to x's dtype where the reference does, from float32
    # instead of float64 sums. Where the two sums straddle a rounding boundary an E or D value lands
    # one ulp (<= eps |value|) away, moving the output by at most |W_p[co, h]| eps |D[h]| for a D
    # flip (an E flip moves D by |w_d| ulp(E), which again rounds to at most an ulp of D), so every
    # output lies within eps |y| (its own rounding) + eps sum_h |W_p[co, h]| |D[h]| of the rounded
    # reference. Such flips are rare (the float32 sum is ~2^-24 off, an ulp is 2^-8 or 2^-11), so
    # nearly every output must equal the rounded reference bit for bit: over IR_CASES at least
    # 99.77% do; an index error, or E or D left unrounded (30% to 80%), could not.
    ref = ir_reference(x, params, args, rounded=True)
    eps = torch.finfo(y.dtype).eps
    s, d, act, res = args
    we, be, wd, bd, wp, bp = params
    h = x if we is None else pointwise_conv2d_ref(x, we, be, None, act, upcast=True)
    k = wd.shape[-1]
    D = depthwise_conv2d_ref(h, wd, bd, s, (k - 1) // 2 * d, d, act, upcast=True).double()
    flips = eps * F.conv2d(D.abs(), wp.double().abs())
    err = (y.double() - ref).abs()
    assert (err <= eps * ref.abs() + flips + 1e-12).all(), f"max error {err.max().item():.3g}: {where}"
    equal = (err == 0).double().mean().item()
    assert equal >= 0.99, f"only {equal:.4f} of the outputs equal the rounded reference: {where}"


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", IR_CASES, ids=ir_case_id)
def test_inverted_residual_block_matches_op_by_op(ir_emu, case, dtype, layout):
    x, params, args = make_ir_block(case, layout, dtype)
    y, _, where = run_ir(ir_emu, x, params, args)
    assert_ir_matches(y, x, params, args, where)


# (case index, dtype, layout, smem_limit): float16; float64 (double accumulators: twice the shared
# memory, and a 48 KiB limit that makes pick_tile shrink the tile); a sliced non-dense input (made
# dense by prepare_inverted_residual).
IR_EXTRA = [
    (1, torch.float16, "channels_last", H100_SMEM),
    (9, torch.float16, "nchw", H100_SMEM),
    (2, torch.float64, "channels_last", H100_SMEM),
    (11, torch.float64, "nchw", H100_SMEM),
    (8, torch.float64, "channels_last", 48 * 1024),
    (5, torch.float64, "nchw", 48 * 1024),
    (12, torch.float32, "strided", H100_SMEM),
]


@pytest.mark.parametrize("extra", IR_EXTRA, ids=lambda e: f"{ir_case_id(IR_CASES[e[0]])}-{e[1]}-{e[2]}-{e[3]}")
def test_inverted_residual_block_other_dtypes_and_limits(ir_emu, extra):
    i, dtype, layout, smem_limit = extra
    x, params, args = make_ir_block(IR_CASES[i], layout, dtype)
    y, info, where = run_ir(ir_emu, x, params, args, smem_limit)
    if smem_limit < H100_SMEM:  # the limit binds: a smaller tile than with an H100's shared memory
        _, _, OH, OW = y.shape
        k, (s, d) = params[2].shape[-1], args[:2]
        assert expected_ir_tile(OH, OW, k, s, d, info[8], 8, H100_SMEM)[:2] != (info[0], info[1]), where
    assert_ir_matches(y, x, params, args, where)


@pytest.mark.parametrize("act", ["identity", "relu", "sigmoid", "silu", "hardsigmoid"])
def test_inverted_residual_block_other_activations(ir_emu, act):
    """The activation switch's other branches (float32; __fdividef is exact division here)."""
    for i, layout in [(2, "channels_last"), (10, "nchw")]:
        x, params, (s, d, _, res) = make_ir_block(IR_CASES[i], layout, torch.float32)
        y, _, where = run_ir(ir_emu, x, params, (s, d, act, res))
        assert_ir_matches(y, x, params, (s, d, act, res), where)
