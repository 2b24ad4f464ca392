"""Our CUDA kernels run on the CPU by host emulation: the tiled depthwise forward, weight gradient,
stride-2 grad_input and fused stride-1 backward (csrc/cuda/depthwise_tiled.cuh), the whole-block
inverted_residual_eval kernel (inverted_residual_block.cuh), the default depthwise kernels
(depthwise_kernels.cuh), the tensor-core pointwise GEMM with its epilogue (pointwise_gemm.cuh),
batch_norm_act's per-channel passes (channel_passes.cuh), the whole squeeze_excite op
(squeeze_excite.cuh, excite_gemm.cuh) and pointwise_conv2d_stats's statistics pass
(pointwise_stats.cuh).

python_tests/cuda_emulation/*_host.cpp compile the very headers with the host C++ compiler against
cuda_shim/ (no nvcc) and run each kernel with one std::thread per CUDA thread and a barrier for
__syncthreads (emulation.h), after the launch plan the CUDA host code uses. These tests check the
kernels' index math (tiles, halos, padding, strides, idle threads, the statistics partials)
against fp64 PyTorch references on machines without a GPU. Shared memory is NaN-poisoned before
each block, outputs start as NaN and every buffer sits in guard zones, so an unstaged read, an
unwritten element or an out-of-bounds access fails a test.
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


def run(emu, x, taps, b, K, S, pH, pW, act, stats, min_blocks=-1, stages=2):
    y, pn, pm, pm2, info = emu.run(x, taps, b if b is not None else torch.empty(0), K, S, pH, pW, ACT[act], stats,
                                   stages, min_blocks)
    TH, TW, strips, R, tiles, blocks_x, blocks_y, cbv, tx, ty, smem, used_stages = info
    N, C, H, W = x.shape
    OH, OW = (H + 2 * pH - K) // S + 1, (W + 2 * pW - K) // S + 1
    where = f"x {tuple(x.shape)} {x.dtype} K{K} S{S} pad ({pH}, {pW}) {act} stats={stats} plan {info}"
    assert y.shape == (N, C, OH, OW), where
    lanes = VEC[x.dtype] // min(VEC[x.dtype], 4)  # threads per channel vector
    assert TW == strips * 4 and 1 <= TH <= OH and tx == cbv * lanes and tx * ty <= 256 and ty >= TH * strips, where
    assert tiles == N * math.ceil(OH / TH) * math.ceil(OW / TW) and blocks_x == math.ceil(tiles / R), where
    assert blocks_y == math.ceil(C // VEC[x.dtype] / cbv) and smem <= 48 * 1024, where  # two buffers
    assert used_stages == (stages if R > 1 else 1), where  # a second buffer only where a block has a next tile
    assert not y.isnan().any(), f"output elements left unwritten: {where}"
    return y, (pn, pm, pm2), info, where


def reference(x, w, b, stride, padding, act, dilation=1):
    """act(conv2d(x, w) + b) in fp64; padding an int or (pH, pW), applied with F.pad, which crops
    for a negative padding (F.conv2d takes none)."""
    pH, pW = (padding, padding) if isinstance(padding, int) else padding
    xd = F.pad(x.double(), (pW, pW, pH, pH))
    z = F.conv2d(xd, w.double(), None if b is None else b.double(), stride=stride, dilation=dilation,
                 groups=x.shape[1])
    return act_ref(z, act)


def assert_matches(y, ref, dtype, where):
    if dtype == torch.float64:
        torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12, msg=where)
    elif dtype == torch.float32:
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
        assert_matches(y, reference(x, w, b, S, (pH, pW), act), dtype, where)


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
        torch.testing.assert_close(y.double(), reference(x, w, b, S, (pH, pW), act), rtol=2e-5, atol=2e-5, msg=where)
    else:
        assert_matches(y, reference(x, w, b, S, (pH, pW), act), dtype, where)


def double_buffered_run(emu, case) -> int:
    """Runs MULTI_TILE ``case`` with blocks of one tile and with blocks of several tiles (the
    forward's plan at large batches), these with two staging buffers (tile i + 1 staged into the
    other buffer while tile i is computed) and with one (MK_DW_STAGES=1); checks the outputs are
    equal bit for bit; returns the tiles per block."""
    dtype, N, C, H, W, K, S, pH, pW, x_pad_w = case
    x, w, taps, b = make_case(N, C, H, W, K, dtype, bias=True, x_pad_w=x_pad_w)
    y1, _, info1, _ = run(emu, x, taps, b, K, S, pH, pW, "hardswish", False)
    y, _, info, where = run(emu, x, taps, b, K, S, pH, pW, "hardswish", False, min_blocks=0)
    ys, _, info_s, _ = run(emu, x, taps, b, K, S, pH, pW, "hardswish", False, min_blocks=0, stages=1)
    TH, TW, R, tiles = info[0], info[1], info[3], info[4]
    assert info1[3] == 1 and R == min(tiles, math.ceil(512 / (TH * TW))) and info[5] == math.ceil(tiles / R), where
    assert info_s[:10] == info[:10] and (R == 1 or info_s[10] * 2 == info[10]), where  # same tiles, half the memory
    assert torch.equal(y, y1) and torch.equal(ys, y1), where
    return R


@pytest.mark.parametrize("case", MULTI_TILE, ids=lambda c: f"{c[0]}-N{c[1]}C{c[2]}-{c[3]}x{c[4]}-k{c[5]}s{c[6]}")
def test_double_buffered_blocks_give_the_same_output(emu, case):
    double_buffered_run(emu, case)


def test_double_buffered_cases_have_several_tiles_per_block(emu):
    """The cases above do exercise blocks of several tiles (the bf16/fp16 ones: 4 and more)."""
    Rs = [double_buffered_run(emu, case) for case in MULTI_TILE[2:4]]
    assert min(Rs) >= 2, Rs


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
        assert_matches(y, reference(x, w, None, S, p, "identity"), dtype, where)
        assert not (pn.isnan().any() or pm.isnan().any() or pm2.isnan().any()), f"partials left unwritten: {where}"
        assert pn.shape == (info[5], C), where
        n, mean, m2 = chan_merge_all(pn, pm, pm2)
        count = N * y.shape[2] * y.shape[3]
        assert torch.equal(n, torch.full_like(n, count)), where
        ref_var, ref_mean = torch.var_mean(y.double(), dim=(0, 2, 3), unbiased=False)
        scale = ref_var.sqrt() + ref_mean.abs()
        assert ((mean - ref_mean).abs() <= 1e-5 * scale + 1e-7).all(), f"mean: {where}"
        torch.testing.assert_close(m2 / count, ref_var, rtol=1e-5, atol=1e-7, msg=f"variance: {where}")


def wgrad_reference(x, gy, K, S, padding):
    """(grad_weight (C, 1, K, K), grad_bias (C,)) of the conv in fp64, and the same sums over |x| and
    |gy| (the scale of their rounding error); padding (pH, pW) applied with F.pad (crops when < 0)."""
    pH, pW = padding
    xd = F.pad(x.double(), (pW, pW, pH, pH))
    C = x.shape[1]
    gyd = gy.double()
    gw = torch.nn.grad.conv2d_weight(xd, (C, 1, K, K), gyd, stride=S, groups=C)
    scale = torch.nn.grad.conv2d_weight(xd.abs(), (C, 1, K, K), gyd.abs(), stride=S, groups=C)
    return gw, gyd.sum((0, 2, 3)), scale, gyd.abs().sum((0, 2, 3))


def assert_partials_sum_to_grads(part, x, gy, K, S, padding, bias, where):
    """The (blocks, K * K + bias, C) weight-gradient partials, summed over the blocks in fp64, match
    grad_weight (and grad_bias) of the conv."""
    C = x.shape[1]
    total = part.double().sum(0)
    gw = total[: K * K].t().reshape(C, 1, K, K)
    ref_w, ref_b, scale_w, scale_b = wgrad_reference(x, gy, K, S, padding)
    # fp32 sums of exact products (16-bit inputs) or of fp32-rounded ones: ~1e-7 relative per term.
    assert ((gw - ref_w).abs() <= 2e-6 * scale_w + 1e-9).all(), f"grad_weight: {where}"
    if bias:
        assert ((total[K * K] - ref_b).abs() <= 2e-6 * scale_b + 1e-9).all(), f"grad_bias: {where}"


def assert_wgrad_matches(emu, x, gy, K, S, pH, pW, bias):
    """The emulated tiled weight-gradient stage 1: its plan, every partial written, and the partials'
    sums; returns (part, plan, where)."""
    part, info = emu.wgrad(x, gy, K, S, pH, pW, bias)
    TH, TW, strips, R, tiles, blocks_x, blocks_y, cbv, tx, ty, smem, stages = info
    N, C = x.shape[:2]
    where = f"x {tuple(x.shape)} {x.dtype} K{K} S{S} pad ({pH}, {pW}) bias={bias} plan {info}"
    lanes = VEC[x.dtype] // min(VEC[x.dtype], 4 if K == 3 else 2)  # threads per channel vector
    assert tx == cbv * lanes and tx * ty <= 256 and ty >= TH * strips and blocks_x == math.ceil(tiles / R), where
    assert stages == (2 if R > 1 else 1) and smem <= 48 * 1024, where
    assert part.shape == (blocks_x, K * K + bias, C), where
    assert not part.isnan().any(), f"partials left unwritten: {where}"
    assert_partials_sum_to_grads(part, x, gy, K, S, (pH, pW), bias, where)
    return part, info, where


@pytest.mark.parametrize("S", [1, 2])
@pytest.mark.parametrize("K", [3, 5, 7])
@pytest.mark.parametrize("dtype", DTYPES)
def test_wgrad_partials_sum_to_weight_grad(emu, dtype, K, S):
    """The tiled weight-gradient kernel: its partials sum to grad_weight (and grad_bias) for every
    shape, channel count and padding of forward_cases (zero, negative and unequal paddings)."""
    cases = forward_cases(dtype, K)
    for N, C, H, W, pH, pW, bias, _ in cases:
        x, _, _, _ = make_case(N, C, H, W, K, dtype, bias=False)
        OH, OW = (H + 2 * pH - K) // S + 1, (W + 2 * pW - K) // S + 1
        gy = torch.randn(N, C, OH, OW).to(dtype).contiguous(memory_format=torch.channels_last)
        assert_wgrad_matches(emu, x, gy, K, S, pH, pW, bias)


# (dtype, N, C, H, W, K, S, pad, x_pad_w): several blocks along x, each walking R > 1 tiles that
# cross images, a clipped last block, non-dense x strides.
WGRAD_MULTI_BLOCK = [
    (torch.float32, 3, 4, 40, 40, 3, 1, 1, 0),
    (torch.bfloat16, 3, 16, 29, 27, 5, 2, 2, 8),
    (torch.float16, 2, 8, 33, 35, 3, 2, 1, 0),
    (torch.float32, 1, 12, 70, 21, 5, 1, 2, 4),
]


@pytest.mark.parametrize("case", WGRAD_MULTI_BLOCK, ids=lambda c: f"{c[0]}-N{c[1]}C{c[2]}-{c[3]}x{c[4]}-k{c[5]}s{c[6]}")
def test_wgrad_multi_block_deterministic(emu, case):
    """Several blocks of R > 1 tiles: the sums match, a second run gives the same partials bit for
    bit (no atomics, a fixed tile -> block map and reduction tree), and so does a run with one
    staging buffer (MK_DW_STAGES=1), and grad_output, a W-slice whose gaps hold NaN in the
    emulation's buffer, is never read past its last column (the tiles overhang the output)."""
    dtype, N, C, H, W, K, S, pad, x_pad_w = case
    x, _, _, _ = make_case(N, C, H, W, K, dtype, bias=False, x_pad_w=x_pad_w)
    OH, OW = (H + 2 * pad - K) // S + 1, (W + 2 * pad - K) // S + 1
    gy = torch.randn(N, C, OH, OW + 3).to(dtype).contiguous(memory_format=torch.channels_last)[..., :OW]
    part, info, where = assert_wgrad_matches(emu, x, gy, K, S, pad, pad, True)
    TH, TW, strips, R, tiles, blocks_x = info[:6]
    assert blocks_x >= 2 and R >= 2 and tiles % R != 0, where
    part2, _ = emu.wgrad(x, gy, K, S, pad, pad, True)
    assert torch.equal(part, part2), where
    part1, info1 = emu.wgrad(x, gy, K, S, pad, pad, True, 1)
    assert info1[-1] == 1 and info1[:10] == info[:10] and torch.equal(part, part1), where


def dgrad_s2_cases(dtype, K):
    """(N, C, H, W, pH, pW): input sizes that the stride-2 conv covers fully or not (odd H + 2p - K),
    one pixel, several tiles; paddings of both parities on each axis (the tiles shift by one for an
    odd padding), including 0 and unequal ones."""
    same = (K - 1) // 2
    pads = [(same, same), (0, 0), (1, 0), (0, 1), (1, 1), (2, 3)]
    shapes = [(1, 1, 1), (2, 7, 7), (1, 13, 14), (2, 8, 13), (1, 14, 6), (1, 40, 9)]
    cases = []
    for i, ((N, H, W), C) in enumerate(itertools.product(shapes, CHANNELS[dtype])):
        for pH, pW in (pads[i % len(pads)], pads[(i + 2) % len(pads)]):
            if H + 2 * pH >= K and W + 2 * pW >= K:
                cases.append((N, C, H, W, pH, pW))
    return cases


@pytest.mark.parametrize("K", [3, 5, 7])
@pytest.mark.parametrize("dtype", DTYPES)
def test_dgrad_s2_matches_conv_input_grad(emu, dtype, K):
    """The parity-split tiled grad_input of stride-2 convs against torch's fp64 grad_input."""
    cases = dgrad_s2_cases(dtype, K)
    assert len(cases) >= 20 and {(pH % 2, pW % 2) for *_, pH, pW in cases} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    for N, C, H, W, pH, pW in cases:
        OH, OW = (H + 2 * pH - K) // 2 + 1, (W + 2 * pW - K) // 2 + 1
        gy = (torch.randn(N, C, OH, OW) * 3).to(dtype).contiguous(memory_format=torch.channels_last)
        w = torch.randn(C, 1, K, K) / K
        taps = w.reshape(C, K * K).t().contiguous()
        ref = torch.nn.grad.conv2d_input((N, C, H, W), w.double(), gy.double(), stride=2, padding=(pH, pW), groups=C)
        # the plan of small batches (one tile per block), then blocks of several tiles with two
        # staging buffers and with one: the same values, bit for bit
        gx = None
        for stages, min_blocks in ((2, -1), (2, 0), (1, 0)):
            out, info = emu.dgrad_s2(gy, taps, H, W, K, pH, pW, stages, min_blocks)
            where = f"gx ({N}, {C}, {H}, {W}) {dtype} K{K} pad ({pH}, {pW}) stages {stages} plan {info}"
            assert out.shape == (N, C, H, W) and not out.isnan().any(), f"elements left unwritten: {where}"
            assert info[-1] == (stages if info[3] > 1 else 1) and info[10] <= 48 * 1024, where
            if gx is None:
                assert_matches(out, ref, dtype, where)
                gx = out
            else:
                assert torch.equal(out, gx), where


# (N, C index, H, W, x_pad_w): one pixel, odd sizes, several tiles and blocks (R > 1, a clipped last
# block), x and grad_output W-slices of wider tensors (their gaps hold NaN in the emulation).
FUSED_SHAPES = [(1, 0, 1, 1, 0), (2, 1, 7, 7, 0), (1, 2, 13, 13, 4), (3, 1, 13, 7, 0), (2, 0, 40, 36, 4)]


@pytest.mark.parametrize("K", [3, 5, 7])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_backward_matches_conv_grads(emu, dtype, K):
    """The fused stride-1 backward: grad_input against torch's fp64 grad_input and the partials'
    sums against grad_weight / grad_bias, for "same" convs (padding (K - 1) / 2); a second run gives
    the same partials bit for bit."""
    P = (K - 1) // 2
    for i, (N, ci, H, W, pad_w) in enumerate(FUSED_SHAPES):
        C = CHANNELS[dtype][ci]
        bias = i % 2 == 0
        x, w, taps, _ = make_case(N, C, H, W, K, dtype, bias=False, x_pad_w=pad_w)
        gy = (torch.randn(N, C, H, W + pad_w) * 2).to(dtype).contiguous(memory_format=torch.channels_last)[..., :W]
        assert gy.stride() == x.stride()
        gx, part, info = emu.bwd_fused(x, gy, taps, K, bias)
        where = f"x {tuple(x.shape)} {dtype} K{K} bias={bias} plan {info}"
        TH, TW, strips, R, tiles, blocks_x = info[:6]
        assert part.shape == (blocks_x, K * K + bias, C) and not part.isnan().any(), f"partials unwritten: {where}"
        assert not gx.isnan().any(), f"grad_input left unwritten: {where}"
        ref_gx = torch.nn.grad.conv2d_input(x.shape, w.double(), gy.double(), padding=P, groups=C)
        assert_matches(gx, ref_gx, dtype, where)
        assert_partials_sum_to_grads(part, x, gy, K, 1, (P, P), bias, where)
        if i == len(FUSED_SHAPES) - 1:
            assert blocks_x >= 2 and R >= 2 and info[-1] == 2, where
            assert torch.equal(part, emu.bwd_fused(x, gy, taps, K, bias)[1]), where
            gx1, part1, info1 = emu.bwd_fused(x, gy, taps, K, bias, 1)  # one staging buffer: the same values
            assert info1[:10] == info[:10] and info1[10] * 2 == info[10], where
            assert torch.equal(gx1, gx) and torch.equal(part1, part), where


def bn_dx_reference(gy, z, table, activation):
    """BatchNorm's training grad_input from its grad_output gy and input z, with the per-channel
    coefficients (scale, shift, mu, k, mean_g) of ``table`` (5, C), in float32 op by op in the order
    of channel_passes.cuh::train_grad_in (the emulated kernel compiles it without FMA contraction),
    rounded to gy's dtype as the kernel stages it."""
    scale, shift, mu, k, mean_g = (r.view(1, -1, 1, 1) for r in table)
    zf, gf = z.float(), gy.float()
    pre = zf * scale + shift
    deriv = {"identity": torch.ones_like(pre), "relu": (pre > 0).float(), "relu6": ((pre > 0) & (pre < 6)).float(),
             "hardswish": torch.where(pre <= -3, 0.0, torch.where(pre >= 3, 1.0, pre / 3 + 0.5))}[activation]
    g = gf * deriv
    return (scale * (g - mean_g - (zf - mu) * k)).to(gy.dtype)


@pytest.mark.parametrize("K", [3, 5])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_backward_with_batch_norm_dx(emu, dtype, K):
    """The fused stride-1 backward of a dw conv + BatchNorm + activation (TiledBnDx): BatchNorm's
    grad_input computed where grad_output is staged, from z and the coefficient table, zero in the
    padding: grad_input and the partials' sums match the conv's gradients of bn_dx_reference's
    grad_output; one and two staging buffers give the same bits."""
    P = (K - 1) // 2
    activations = ["relu6", "hardswish", "relu", "identity"]
    for i, (N, ci, H, W, pad_w) in enumerate(FUSED_SHAPES):
        C = CHANNELS[dtype][ci]
        activation = activations[i % len(activations)]
        x, w, taps, _ = make_case(N, C, H, W, K, dtype, bias=False, x_pad_w=pad_w)
        gy, z = ((torch.randn(N, C, H, W + pad_w) * 2).to(dtype).contiguous(memory_format=torch.channels_last)[..., :W]
                 for _ in range(2))
        table = torch.stack([torch.rand(C) + 0.5, torch.randn(C), torch.randn(C), torch.randn(C) * 0.1,
                             torch.randn(C) * 0.1]).float().contiguous()
        gx, part, info = emu.bwd_fused(x, gy, taps, K, False, 2, z, table, ACT[activation])
        where = f"x {tuple(x.shape)} {dtype} K{K} {activation} plan {info}"
        assert not gx.isnan().any() and not part.isnan().any(), f"left unwritten: {where}"
        g = bn_dx_reference(gy, z, table, activation)
        ref_gx = torch.nn.grad.conv2d_input(x.shape, w.double(), g.double(), padding=P, groups=C)
        assert_matches(gx, ref_gx, dtype, where)
        assert_partials_sum_to_grads(part, x, g, K, 1, (P, P), False, where)
        if i == len(FUSED_SHAPES) - 1:
            assert info[3] >= 2 and info[-1] == 2, where
            gx1, part1, info1 = emu.bwd_fused(x, gy, taps, K, False, 1, z, table, ACT[activation])
            assert torch.equal(gx1, gx) and torch.equal(part1, part), where


@pytest.mark.parametrize("K", [3, 5])
@pytest.mark.parametrize("dtype", DTYPES)
def test_stride2_backward_with_batch_norm_dx(emu, dtype, K):
    """The stride-2 backward of a dw conv + BatchNorm + activation (TiledBnDx): the parity-split
    grad_input, which stages z beside grad_output and turns the staged values (zero in the padding),
    and the weight gradient, which turns the values it loads, against the conv's gradients of
    bn_dx_reference's grad_output; grad_input with one tile per block and with several (two staging
    buffers), bit for bit."""
    activations = ["hardswish", "relu6", "relu", "identity"]
    every = dgrad_s2_cases(dtype, K)
    first_of_parity = {}
    for i, (*_, pH, pW) in enumerate(every):
        first_of_parity.setdefault((pH % 2, pW % 2), i)
    cases = [c for i, c in enumerate(every) if i % 3 == 0 or i in first_of_parity.values()]  # a third, every parity
    for i, (N, C, H, W, pH, pW) in enumerate(cases):
        activation = activations[i % len(activations)]
        OH, OW = (H + 2 * pH - K) // 2 + 1, (W + 2 * pW - K) // 2 + 1
        gy, z = ((torch.randn(N, C, OH, OW) * 2).to(dtype).contiguous(memory_format=torch.channels_last)
                 for _ in range(2))
        x, w, taps, _ = make_case(N, C, H, W, K, dtype, bias=False)
        table = torch.stack([torch.rand(C) + 0.5, torch.randn(C), torch.randn(C), torch.randn(C) * 0.1,
                             torch.randn(C) * 0.1]).float().contiguous()
        g = bn_dx_reference(gy, z, table, activation)
        where = f"x ({N}, {C}, {H}, {W}) {dtype} K{K} pad ({pH}, {pW}) {activation}"
        ref = torch.nn.grad.conv2d_input((N, C, H, W), w.double(), g.double(), stride=2, padding=(pH, pW), groups=C)
        gx = None
        for stages, min_blocks in ((2, -1), (2, 0), (1, 0)):
            out, info = emu.dgrad_s2(gy, taps, H, W, K, pH, pW, stages, min_blocks, z, table, ACT[activation])
            assert not out.isnan().any(), f"elements left unwritten: {where} plan {info}"
            if gx is None:
                assert_matches(out, ref, dtype, f"{where} plan {info}")
                gx = out
            else:
                assert torch.equal(out, gx), f"{where} plan {info}"
        part, info = emu.wgrad(x, gy, K, 2, pH, pW, False, 2, z, table, ACT[activation])
        assert not part.isnan().any(), f"partials left unwritten: {where} plan {info}"
        assert_partials_sum_to_grads(part, x, g, K, 2, (pH, pW), False, f"{where} plan {info}")


# The BatchNorm + activation before the conv applied where the tiled kernels stage the conv's input
# (TiledInputBn: pointwise_depthwise_bn_act_train's expand layer). Each kernel against itself run on
# that BatchNorm's output as the emulated apply pass (bn_host.cpp, EvalApply) writes it: bit for bit.


def input_bn_case(bn_emu, z, activation):
    """(rows: the (4, C) float mean, var, weight, bias of a BatchNorm on z, eps, y1: its output + act
    as the emulated apply pass stores it)."""
    C = z.shape[1]
    rows = torch.stack([torch.randn(C), torch.rand(C) + 0.5, torch.rand(C) + 0.5, torch.randn(C)]).float().contiguous()
    # The emulated pass takes channels_last tensors it can tell from NCHW: 1 x 1 images as 1 x 2
    # (elementwise, so the values are those of the pixel itself).
    wide = z.shape[2] * z.shape[3] == 1
    zc = (torch.cat([z, z], dim=3) if wide else z).contiguous(memory_format=torch.channels_last)
    y1, _ = bn_emu.eval_forward(zc, rows[0], rows[1], rows[2], rows[3], 1e-3, activation)
    return rows, 1e-3, y1[..., :1] if wide else y1


INPUT_BN_SHAPES = [(2, 0, 7, 7), (1, 1, 13, 13), (3, 2, 5, 9), (16, 0, 14, 14)]  # the last: several tiles per block


@pytest.mark.parametrize("S", [1, 2])
@pytest.mark.parametrize("K", [3, 5])
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_with_input_batch_norm(emu, bn_emu, dtype, K, S):
    """The statistics forward staging z and turning it into y1 = act(BatchNorm(z)) where it landed:
    output and statistics partials bit for bit those of the same kernel on y1 (zero in the padding,
    not act(shift)); with several tiles per block, one and two staging buffers alike."""
    activations = ["hardswish", "relu6", "identity", "relu"]
    for i, (N, ci, H, W) in enumerate(INPUT_BN_SHAPES):
        C, act, p = CHANNELS[dtype][ci], activations[i], (K - 1) // 2
        z, w, taps, _ = make_case(N, C, H, W, K, dtype, bias=False)
        rows, eps, y1 = input_bn_case(bn_emu, z, act)
        for stages in (2, 1):
            fused = emu.run(z, taps, torch.empty(0), K, S, p, p, 0, True, stages, 0, rows, eps, ACT[act])
            ref = emu.run(y1, taps, torch.empty(0), K, S, p, p, 0, True, stages, 0)
            where = f"z ({N}, {C}, {H}, {W}) {dtype} K{K} S{S} {act} stages {stages} plan {fused[-1]}"
            assert not fused[0].isnan().any(), where
            for a, b in zip(fused[:4], ref[:4]):
                assert torch.equal(a, b), where
            if i == len(INPUT_BN_SHAPES) - 1:
                assert fused[-1][3] >= 2, where  # several tiles per block


@pytest.mark.parametrize("S", [1, 2])
@pytest.mark.parametrize("K", [3, 5])
@pytest.mark.parametrize("dtype", DTYPES)
def test_wgrad_with_input_batch_norm(emu, bn_emu, dtype, K, S):
    """The weight gradient staging z and turning it into y1 where it landed (alone and with the
    conv's grad_output computed from BatchNorm's, TiledBnDx): partials bit for bit those of the
    kernel on y1."""
    activations = ["relu6", "hardswish", "identity", "relu"]
    for i, (N, ci, H, W) in enumerate(INPUT_BN_SHAPES):
        C, act, p = CHANNELS[dtype][ci], activations[i], (K - 1) // 2
        z, _, _, _ = make_case(N, C, H, W, K, dtype, bias=False)
        OH, OW = (H + 2 * p - K) // S + 1, (W + 2 * p - K) // S + 1
        gy, z2 = ((torch.randn(N, C, OH, OW) * 2).to(dtype).contiguous(memory_format=torch.channels_last)
                  for _ in range(2))
        table = torch.stack([torch.rand(C) + 0.5, torch.randn(C), torch.randn(C), torch.randn(C) * 0.1,
                             torch.randn(C) * 0.1]).float().contiguous()
        rows, eps, y1 = input_bn_case(bn_emu, z, act)
        for bn in ((None, None, 0), (z2, table, ACT[act])):
            fused, info = emu.wgrad(z, gy, K, S, p, p, False, 2, *bn, rows, eps, ACT[act])
            ref, _ = emu.wgrad(y1, gy, K, S, p, p, False, 2, *bn)
            where = f"z ({N}, {C}, {H}, {W}) {dtype} K{K} S{S} {act} BatchNorm dx {bn[0] is not None} plan {info}"
            assert not fused.isnan().any() and torch.equal(fused, ref), where


@pytest.mark.parametrize("K", [3, 5])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_backward_with_both_batch_norms(emu, bn_emu, dtype, K):
    """The stride-1 fused backward as pointwise_depthwise_bn_act_train runs it: grad_output turned
    into BatchNorm's grad_input (TiledBnDx) and the input's footprint into y1 (TiledInputBn) where
    they landed: grad_input and partials bit for bit those of the kernel on y1 with TiledBnDx alone;
    one and two staging buffers alike."""
    activations = ["hardswish", "relu6", "relu", "identity"]
    for i, (N, ci, H, W, pad_w) in enumerate(FUSED_SHAPES):
        C, act = CHANNELS[dtype][ci], activations[i % len(activations)]
        z, _, taps, _ = make_case(N, C, H, W, K, dtype, bias=False, x_pad_w=pad_w)
        gy, z2 = ((torch.randn(N, C, H, W + pad_w) * 2).to(dtype).contiguous(memory_format=torch.channels_last)[..., :W]
                  for _ in range(2))
        table = torch.stack([torch.rand(C) + 0.5, torch.randn(C), torch.randn(C), torch.randn(C) * 0.1,
                             torch.randn(C) * 0.1]).float().contiguous()
        rows, eps, y1 = input_bn_case(bn_emu, z, act)
        y1 = torch.empty(N, C, H, W + pad_w, dtype=dtype).contiguous(memory_format=torch.channels_last)[..., :W].copy_(
            y1)  # z's strides: the kernel takes x and gy alike
        for stages in (2, 1):
            gx, part, info = emu.bwd_fused(z, gy, taps, K, False, stages, z2, table, ACT[act], rows, eps, ACT[act])
            ref_gx, ref_part, _ = emu.bwd_fused(y1, gy, taps, K, False, stages, z2, table, ACT[act])
            where = f"z {tuple(z.shape)} {dtype} K{K} {act} stages {stages} plan {info}"
            assert torch.equal(gx, ref_gx) and torch.equal(part, ref_part), where


@pytest.mark.parametrize("model", ["mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"])
def test_plan_takes_every_mobilenet_depthwise_layer(emu, model):
    """plan_tiled (nothing runs) takes every depthwise layer of the model at 224², batch 256, in
    16-bit and fp32 vectors, for the forward, its statistics, the weight gradient, (stride 2)
    grad_input and (stride 1) the fused backward (both also with BatchNorm's z staged), with at
    least two warps per block and the tile within the written tensor; the statistics partials at most ~2048 per channel, each covering at
    least 256 outputs (or all of them), the weight gradient's at most ~1024, each covering at least
    512."""
    from mobilenet_kernels.benchmarking.shapes import depthwise_layers

    for C, H, W, k, s, p, d, _ in depthwise_layers(model, 224):
        assert d == 1 and k in (3, 5) and s in (1, 2)
        OH, OW = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
        for vec, kind in itertools.product((8, 4), ("forward", "stats", "wgrad", "dgrad_s2", "dgrad_s2_bn",
                                                    "bwd_fused", "bwd_fused_bn")):
            if (kind.startswith("dgrad_s2") and s != 2) or (kind.startswith("bwd_fused") and s != 1):
                continue
            info = emu.plan(256, C, H, W, k, s, p, p, vec, kind)
            where = f"{model} C{C} {H}x{W} k{k} s{s} vec {vec} {kind}: plan {info}"
            assert info, where
            TH, TW, strips, R, tiles, blocks_x, blocks_y, cbv, tx, ty, smem, stages = info
            rows, cols = (H + p % 2, W + p % 2) if kind.startswith("dgrad_s2") else (OH, OW)  # the written extent
            assert 64 <= tx * ty <= 256 and TH <= rows and TW <= max(cols, 4) * 2, where
            assert stages == (2 if R > 1 else 1) and smem <= 48 * 1024, where
            if kind == "stats":
                assert blocks_x <= 2048 + 1 and (R * TH * TW >= 256 or R == tiles), where
            elif kind in ("wgrad", "bwd_fused", "bwd_fused_bn"):
                assert blocks_x <= 1024 + 1 and (R * TH * TW >= 512 or R == tiles), where
            else:  # forward, dgrad_s2: several tiles per block, double-buffered, while 1024 blocks remain
                assert R <= max(1, math.ceil(512 / (TH * TW))) and (R == 1 or blocks_x * blocks_y >= 1024), where
            if kind == "forward":  # and the forward only at stride 1
                assert R == 1 or s == 1, where


@pytest.mark.parametrize("stages", [2, 1])
def test_forward_plan_of_the_timed_layers(emu, stages):
    """The forward's blocks at batch 256 for the layers diag_depthwise times: several tiles per
    block at stride 1, k3 and k5, one at stride 2 (GPU runs 6 and 7: the faster of the two at each
    layer); MK_DW_STAGES=1 keeps the tiles and the blocks, with one buffer."""
    several = {(144, 56, 3, 1): True, (32, 112, 3, 1): True, (576, 14, 3, 1): True,
               (144, 56, 3, 2): False, (120, 28, 5, 1): True, (960, 7, 5, 1): True}
    for (C, H, k, s), walks_several in several.items():
        info = emu.plan(256, C, H, H, k, s, k // 2, k // 2, 8, "forward", stages)
        double = emu.plan(256, C, H, H, k, s, k // 2, k // 2, 8, "forward", 2)
        where = f"C{C} {H}x{H} k{k} s{s} stages {stages}: plan {info}"
        R, smem, used = info[3], info[10], info[11]
        assert (R > 1) == walks_several and info[:10] == double[:10], where
        assert used == (stages if R > 1 else 1) and smem * (2 // used if R > 1 else 1) <= 48 * 1024, where


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


def tc_smem(halo_n, cin_p, cout_p):
    """TcSmem::bytes: the tensor-core kernel's staged halo (all cin_p channels; none without an
    expand conv), E and D, or its accumulator tile."""
    up = lambda v, m: -(-v // m) * m  # noqa: E731
    halo_p = up(halo_n, 16)
    xs = up(halo_p * (cin_p + 8) * 2, 128) if cin_p else 0
    return max(xs + up(halo_p * 36 * 4, 128) + 64 * 40 * 2, 64 * (cout_p + 4) * 4)


def expected_ir_tile(OH, OW, k, s, d, nco, acc_bytes, smem_limit, tensor_cores=False, cin_p=0, Cout=0):
    """pick_tile's choice: the first candidate (clipped to the output) within P pixels, a halo of
    256 pixels and the shared-memory limit (the CUDA-core kernel's, or the tensor-core one's for
    Cout output channels)."""
    P = 64 if tensor_cores else IR_P[nco]
    for th, tw in [(8, 8), (4, 8), (4, 4), (2, 4), (2, 2), (1, 2), (1, 1)]:
        th, tw = min(th, OH), min(tw, OW)
        hh, hw = (th - 1) * s + (k - 1) * d + 1, (tw - 1) * s + (k - 1) * d + 1
        if tensor_cores:
            smem = tc_smem(hh * hw, cin_p, -(-Cout // 16) * 16)
        else:
            smem = (hh * hw * 17 + 16 * 33 + hh * hw * 32 + P * 32) * acc_bytes
        if th * tw <= P and hh * hw <= 256 and smem <= smem_limit:
            return th, tw, hw, hh * hw, smem
    raise AssertionError("no tile")


def run_ir(ir_emu, x, params, args, smem_limit=H100_SMEM, se=(), major=9):
    """The emulated op on an sm_`major`x device; checks the plan it reports against the launcher's
    rules and the output's shape, layout and coverage."""
    s, d, act, res = args
    y, info = ir_emu.run(x, *params, s, d, act, res, smem_limit, *(se or (None,) * 4), major=major)
    TH, TW, halo_w, halo_n, tiles_h, tiles_w, blocks, smem, per_thread, launches, tensor_cores = info
    N, Cin, H, W = x.shape
    Cout, k = params[4].shape[0], params[2].shape[-1]
    pad = (k - 1) // 2 * d
    OH, OW = (H + 2 * pad - d * (k - 1) - 1) // s + 1, (W + 2 * pad - d * (k - 1) - 1) // s + 1
    where = (f"x {tuple(x.shape)} {x.dtype} stride {tuple(x.stride())} Cout {Cout} k{k} s{s} d{d} {act} "
             f"res={res} sm_{major}x plan {info}")
    assert y.shape == (N, Cout, OH, OW), where
    # the tensor-core kernel: float16/bfloat16 on sm_80+, up to 160 output channels
    assert tensor_cores == (x.dtype in (torch.float16, torch.bfloat16) and major >= 8 and Cout <= 160), where
    if tensor_cores:  # accumulator fragments per warp: ceil(ceil(Cout / 16) / 2), rounded up to 1, 2, 3, 5
        nf = math.ceil(math.ceil(Cout / 16) / 2)
        assert per_thread == min(v for v in (1, 2, 3, 5) if v >= nf), where
    else:  # channel groups of 64 per thread
        assert per_thread == {1: 1, 2: 2, 3: 4, 4: 4}.get(math.ceil(Cout / 64), 8), where
    acc_bytes = 8 if x.dtype == torch.float64 else 4
    cin_p = -(-Cin // 16) * 16 if params[0] is not None else 0
    assert (TH, TW, halo_w, halo_n, smem) == expected_ir_tile(OH, OW, k, s, d, per_thread, acc_bytes, smem_limit,
                                                              tensor_cores, cin_p, Cout), where
    assert (tiles_h, tiles_w, blocks) == (math.ceil(OH / TH), math.ceil(OW / TW), N * tiles_h * tiles_w), where
    assert launches == (5 if se else 1), where  # with SE: pass 1, the merge, 2 excite GEMMs, pass 2
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


# (dtype, compute capability): float32 on the CUDA-core kernel, bfloat16 on the tensor-core kernel
# (sm_80+, up to 160 output channels) and on the CUDA-core one (a device below sm_80).
IR_DTYPES = [(torch.float32, 9), (torch.bfloat16, 9), (torch.bfloat16, 7)]


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype_major", IR_DTYPES, ids=lambda dm: f"{dm[0]}-sm{dm[1]}x")
@pytest.mark.parametrize("case", IR_CASES, ids=ir_case_id)
def test_inverted_residual_block_matches_op_by_op(ir_emu, case, dtype_major, layout):
    dtype, major = dtype_major
    x, params, args = make_ir_block(case, layout, dtype)
    y, _, where = run_ir(ir_emu, x, params, args, major=major)
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


# Squeeze-excite blocks (forward_steps: pass 1 with kPool, the merge of its tile sums, the excite
# GEMMs, pass 2 scaling D): (IR_CASES index, squeeze channels). Single- and multi-tile images (the
# merge over tiles), no expand conv, stride 2, hidden channels over several chunks with a partial
# last one, and pass 2 with NCO > 1 (its tiles differ from pass 1's).
IR_SE_CASES = [(0, 8), (1, 8), (3, 16), (4, 12), (6, 24), (9, 13)]


def make_se(Chid, S, dtype):
    w = lambda *shape, scale=1.0: (torch.randn(*shape) * scale).to(dtype)  # noqa: E731
    return (w(S, Chid, 1, 1, scale=Chid**-0.5), w(S), w(Chid, S, 1, 1, scale=S**-0.5), w(Chid))


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype_major", [*IR_DTYPES, (torch.float64, 9)], ids=lambda dm: f"{dm[0]}-sm{dm[1]}x")
@pytest.mark.parametrize("se_case", IR_SE_CASES, ids=lambda c: f"{ir_case_id(IR_CASES[c[0]])}-se{c[1]}")
def test_inverted_residual_block_with_squeeze_excite(ir_emu, se_case, dtype_major, layout):
    dtype, major = dtype_major
    i, S = se_case
    x, params, args = make_ir_block(IR_CASES[i], layout, dtype)
    se = make_se(params[2].shape[0], S, torch.float32 if dtype == torch.bfloat16 else dtype)
    y, _, where = run_ir(ir_emu, x, params, args, se=se, major=major)
    s, d, act, res = args
    if dtype != torch.bfloat16:
        ref = inverted_residual_eval_ref(x.double(), *(None if p is None else p.double() for p in params), s, d, act,
                                         res, *(t.double() for t in se))
        tol = 1e-5 if dtype == torch.float32 else 1e-10
        torch.testing.assert_close(y.double(), ref, rtol=tol, atol=tol, msg=where)
        return
    # bf16: E, D and the scaled D' rounded where the reference rounds them (from float32 sums, the
    # means and the scale in float32): a rounding flip moves D' by an ulp, so as in assert_ir_matches
    # every output lies within eps |y| + eps sum_h |W_p| (|D| + |D'|) of the rounded reference
    # (|D'| <= |D|: hardsigmoid <= 1), and nearly all equal it bit for bit.
    ref = inverted_residual_eval_ref(x, *params, s, d, act, res, *se, upcast=True).double()
    eps = torch.finfo(y.dtype).eps
    we, be, wd, bd, wp, bp = params
    h = x if we is None else pointwise_conv2d_ref(x, we, be, None, act, upcast=True)
    k = wd.shape[-1]
    D = depthwise_conv2d_ref(h, wd, bd, s, (k - 1) // 2 * d, d, act, upcast=True).double()
    flips = 3 * eps * F.conv2d(D.abs(), wp.double().abs())
    err = (y.double() - ref).abs()
    assert (err <= eps * ref.abs() + flips + 1e-12).all(), f"max error {err.max().item():.3g}: {where}"
    equal = (err == 0).double().mean().item()
    assert equal >= 0.98, f"only {equal:.4f} of the outputs equal the rounded reference: {where}"


# ------------------------------------------------------------------- default depthwise kernels
# depthwise_conv2d_fwd_kernel (plain and with statistics, then stats_finish_kernel),
# depthwise_conv2d_bwd_input_kernel and the two weight-gradient kernels (csrc/cuda/depthwise_kernels.cuh)
# emulated by cuda_emulation/dw_default_host.cpp, after the CUDA entry points' own preparation and
# launch planning (plan_fwd, rotated_geom, plan_bwd_input, plan_bwd_weight). The paths: 16-byte
# channel vectors (channels_last, C % VEC == 0) or one channel per thread (NCHW, or C not a
# multiple of VEC); the row-reuse kernels K = 3/5/7 (stride_w == dilation_w == 1, and with
# channels_last C * itemsize >= 128) or the generic K = 0 kernel (also forced by row_reuse=False);
# grad_input at stride 1 as the forward kernel with the rotated filter (padding (k-1)d - p, negative
# when p > (k-1)d), else the gather kernel.

DW_VEC = {torch.float64: 2, torch.float32: 4, torch.bfloat16: 8, torch.float16: 8}
# channels_last: one vector (no row reuse), not a multiple of VEC (scalar path), several vectors
# with C * itemsize >= 128 (row reuse) and idle channel threads in the last chunk (fp32 40 = 10
# vectors: one block of 10; bf16/fp16 72 = 9 vectors).
DW_CL_CHANNELS = {torch.float64: (2, 13, 18), torch.float32: (8, 13, 40), torch.bfloat16: (8, 12, 72),
                  torch.float16: (8, 12, 72)}
DW_NCHW_CHANNELS = (3,)  # NCHW: a block per channel (256 threads each), so few channels keep it fast
DW_DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


@pytest.fixture(scope="module")
def dw_emu():
    """The emulated default depthwise kernels (dw_default_host.cpp)."""
    return build_emulation("mk_dw_default_host", "dw_default_host.cpp")


def dw_expected_path(x, C, kW, sW, dW, OW, channels_last, row_reuse):
    """(vec, K) as depthwise_conv2d.cu chooses them for the forward conv x -> y (make_geom
    normalizes the stride of a single output column, and the dilation of a single tap, to 1)."""
    vec = DW_VEC[x.dtype] if channels_last and C % DW_VEC[x.dtype] == 0 else 1
    sW = 1 if OW == 1 else sW
    dW = 1 if kW == 1 else dW
    K = 0
    if (row_reuse and sW == 1 and dW == 1 and kW in (3, 5, 7) and x.dtype != torch.float64
            and (not channels_last or C * x.element_size() >= 128)):
        K = kW
    return vec, K


def dw_is_channels_last(x):
    """The op's layout decision (output_memory_format): channels_last only when x is not also NCHW."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def dw_case(layout, N, C, H, W, kH, kW, dtype, bias):
    x = torch.randn(N, C, H, W).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    w = (torch.randn(C, 1, kH, kW) / math.sqrt(kH * kW)).to(dtype)
    b = torch.randn(C).to(dtype) if bias else None
    return x, w, b


def dw_forward_cases(dtype, K):
    """(layout, N, C, H, W, stride, dilation, padding, bias, act, row_reuse): every channels_last
    channel count and NCHW over H/W of 1, 7, 13 and non-square images, strides 1 and 2, dilations
    1 and 2, the usual padding or a large one ((k-1)d + 1: the stride-1 grad_input runs with
    padding -1), with and without bias, the three activations, row reuse on and forced off."""
    shapes = [(1, 1, 1), (2, 7, 7), (1, 13, 13), (2, 13, 7), (1, 7, 13)]
    acts = ["identity", "relu6", "hardswish"]
    chans = [("channels_last", C) for C in DW_CL_CHANNELS[dtype]] + [("nchw", C) for C in DW_NCHW_CHANNELS]
    cases = []
    i = 0
    for layout, C in chans:
        for S, D in [(1, 1), (2, 1), (1, 2), (2, 2)]:
            N, H, W = shapes[i % len(shapes)]
            same = (K - 1) // 2 * D
            pad = same if i % 3 else (K - 1) * D + 1
            if H + 2 * pad < (K - 1) * D + 1 or W + 2 * pad < (K - 1) * D + 1:
                pad = same
            cases.append((layout, N, C, H, W, S, D, pad, i % 2 == 0, acts[i % 3], i % 4 != 3))
            i += 1
    return cases


@pytest.mark.parametrize("K", [3, 5, 7])
@pytest.mark.parametrize("dtype", DW_DTYPES)
def test_dw_default_forward(dw_emu, dtype, K):
    """act(conv(x) + bias) by the plain forward kernel, on the path the CUDA code picks."""
    paths = set()
    for layout, N, C, H, W, S, D, pad, bias, act, reuse in dw_forward_cases(dtype, K):
        x, w, b = dw_case(layout, N, C, H, W, K, K, dtype, bias)
        y, _, _, _, info = dw_emu.forward(x, w, b, [S, S], [pad, pad], [D, D], act, False, reuse)
        where = f"x {tuple(x.shape)} {layout} {dtype} k{K} s{S} d{D} p{pad} bias={bias} {act} reuse={reuse} {info}"
        ref = reference(x, w, b, S, pad, act, D)
        assert y.shape == ref.shape and not y.isnan().any(), where
        cl = dw_is_channels_last(x)  # as the op decides (a 1x1 image is NCHW)
        assert y.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format), where
        assert tuple(info[:2]) == dw_expected_path(x, C, K, S, D, ref.shape[3], cl, reuse), where
        paths.add((info[0] > 1, info[1] > 0))
        assert_matches(y, ref, dtype, where)
    expected = {(True, False), (False, False)} | ({(True, True), (False, True)} if dtype != torch.float64 else set())
    assert paths == expected, paths


# (layout, N, C, H, W, kH, kW, stride, padding, dilation, act): unequal strides, paddings and
# dilations, non-square kernels (row reuse follows kW), a 1x1 kernel, a large batch of tiny images.
DW_ODD = [
    ("channels_last", 2, 40, 9, 11, 3, 5, (2, 1), (1, 2), (1, 1), "relu6"),
    ("nchw", 1, 3, 11, 9, 5, 3, (1, 2), (0, 3), (2, 1), "hardswish"),
    ("channels_last", 1, 72, 8, 10, 7, 1, (1, 1), (3, 0), (1, 3), "identity"),
    ("channels_last", 2, 13, 6, 9, 1, 1, (2, 2), (0, 1), (1, 1), "relu6"),
    ("nchw", 3, 2, 5, 14, 3, 7, (1, 1), (2, 4), (2, 1), "hardswish"),
    ("channels_last", 9, 40, 2, 3, 3, 3, (1, 1), (1, 1), (1, 1), "identity"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", DW_ODD, ids=lambda c: f"{c[0]}-C{c[2]}-{c[3]}x{c[4]}-k{c[5]}x{c[6]}")
def test_dw_default_odd_geometry(dw_emu, case, dtype):
    """Forward, statistics and gradients of convs with unequal strides / paddings / dilations."""
    layout, N, C, H, W, kH, kW, S, P, D, act = case
    C = C if dtype == torch.float32 or C % 4 else C * 2  # keep bf16 on the vector path where fp32 is
    x, w, b = dw_case(layout, N, C, H, W, kH, kW, dtype, True)
    where = f"x {tuple(x.shape)} {layout} {dtype} k{kH}x{kW} s{S} p{P} d{D} {act}"
    y, _, _, _, info = dw_emu.forward(x, w, b, list(S), list(P), list(D), act, False)
    ref = reference(x, w, b, S, P, act, D)
    assert tuple(info[:2]) == dw_expected_path(x, C, kW, S[1], D[1], ref.shape[3], dw_is_channels_last(x), True)
    assert_matches(y, ref, dtype, where)
    dw_check_stats(dw_emu, x, w, S, P, D, where)
    dw_check_backward(dw_emu, x, w, S, P, D, [True, True, True], True, where)


def dw_check_stats(dw_emu, x, w, S, P, D, where, reuse=True):
    S, P, D = (list(v) if isinstance(v, tuple) else [v, v] for v in (S, P, D))
    y, mean, var, part, info = dw_emu.forward(x, w, None, S, P, D, "identity", True, reuse)
    y0, _, _, _, info0 = dw_emu.forward(x, w, None, S, P, D, "identity", False, reuse)
    where = f"{where} stats plan {info} (plain {info0})"
    assert info[:2] == info0[:2] and info[4:] == info0[4:], where  # same kernel path and block shape
    assert torch.equal(y, y0), where
    C = x.shape[1]
    assert part.shape == (3, info[3], C) and not part.isnan().any(), f"partials left unwritten: {where}"
    count = y.shape[0] * y.shape[2] * y.shape[3]
    assert torch.equal(part[0].double().sum(0), torch.full((C,), float(count), dtype=torch.float64)), where
    ref_var, ref_mean = torch.var_mean(y.double(), dim=(0, 2, 3), unbiased=False)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    assert mean.dtype == acc and var.dtype == acc, where
    tol = 1e-12 if x.dtype == torch.float64 else 1e-5
    scale = ref_var.sqrt() + ref_mean.abs()
    assert ((mean.double() - ref_mean).abs() <= tol * scale + tol * 1e-2).all(), f"mean: {where}"
    torch.testing.assert_close(var.double(), ref_var, rtol=tol, atol=tol * 1e-2, msg=f"variance: {where}")


@pytest.mark.parametrize("K", [3, 5, 7])
@pytest.mark.parametrize("dtype", DW_DTYPES)
def test_dw_default_stats(dw_emu, dtype, K):
    """With statistics: the output equals the plain forward's (no bias, identity), the partials
    count every output once and stats_finish_kernel gives var_mean of the stored output."""
    for layout, N, C, H, W, S, D, pad, _, _, reuse in dw_forward_cases(dtype, K)[::2]:
        x, w, _ = dw_case(layout, N, C, H, W, K, K, dtype, False)
        x = (x.double() + 3.0).to(dtype)  # a mean away from 0
        x = x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x.contiguous()
        if N * ((H + 2 * pad - (K - 1) * D - 1) // S + 1) * ((W + 2 * pad - (K - 1) * D - 1) // S + 1) < 2:
            continue  # a single value per channel: the op rejects it
        where = f"x {tuple(x.shape)} {layout} {dtype} k{K} s{S} d{D} p{pad} reuse={reuse}"
        dw_check_stats(dw_emu, x, w, S, pad, D, where, reuse)


def dw_check_backward(dw_emu, x, w, S, P, D, mask, reuse, where):
    """Gradients against fp64 autograd on the same (rounded) inputs. Each output is one sum of
    products accumulated in float (double for float64) and rounded once to the dtype, so its error
    is at most an ulp of itself plus the accumulation error, bounded by n 2^-24 sum |terms| (n <=
    N OH OW terms, here < 2^9): tol_dtype |ref| + 2^-14 sum |terms|, with the sum of |terms| from
    autograd on |x|, |w|, |grad_out|."""
    S, P, D = (list(v) if isinstance(v, tuple) else [v, v] for v in (S, P, D))
    C = x.shape[1]
    y = F.conv2d(x.double(), w.double(), stride=S, padding=P, dilation=D, groups=C)
    gy = torch.randn(y.shape).to(x.dtype)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        gy = gy.contiguous(memory_format=torch.channels_last)
    gi, gw, gb, info_in, info_w = dw_emu.backward(gy, x, w, S, P, D, mask, reuse)
    where = f"{where} backward plans {info_in} {info_w}"

    def grads(xv, wv, gv):
        xr, wr = xv.detach().double().clone().requires_grad_(), wv.detach().double().clone().requires_grad_()
        br = torch.zeros(C, dtype=torch.float64, requires_grad=True)
        F.conv2d(xr, wr, br, stride=S, padding=P, dilation=D, groups=C).backward(gv.double())
        return xr.grad, wr.grad, br.grad

    refs = grads(x, w, gy)
    absrefs = grads(x.abs(), w.abs(), gy.abs())
    rel = {torch.float64: 1e-14, torch.float32: 2.0**-23}.get(x.dtype, torch.finfo(x.dtype).eps)
    acc_eps = 1e-13 if x.dtype == torch.float64 else 2.0**-14
    for name, want, got, ref, absref in zip(("grad_input", "grad_weight", "grad_bias"), mask, (gi, gw, gb), refs,
                                            absrefs):
        if not want:
            assert got.numel() == 0, f"{name}: {where}"
            continue
        assert got.shape == ref.shape and got.dtype == x.dtype, f"{name}: {where}"
        assert not got.isnan().any(), f"{name} left unwritten: {where}"
        err = (got.double() - ref).abs()
        bound = rel * ref.abs() + acc_eps * absref + 1e-300
        assert (err <= bound).all(), f"{name}: max error {err.max().item():.3g} ({(err / bound).max().item():.2f}x the bound): {where}"
    if mask[0]:
        cl = dw_is_channels_last(x)
        assert gi.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format), where
        s_eff = [1 if y.shape[2 + i] == 1 else S[i] for i in range(2)]
        assert info_in[0] == (0 if s_eff == [1, 1] else 1), where
        if info_in[0] == 0:  # the forward kernel on grad_out, on the path it picks for that conv
            assert tuple(info_in[1:3]) == dw_expected_path(x, C, w.shape[3], 1, D[1], x.shape[3], cl, reuse), where
        else:
            assert info_in[1] == (DW_VEC[x.dtype] if cl and C % DW_VEC[x.dtype] == 0 else 1), where
    if mask[1] or mask[2]:
        cl = dw_is_channels_last(x)
        assert info_w[0] == (DW_VEC[x.dtype] if cl and C % DW_VEC[x.dtype] == 0 else 1), where
        taps = w.shape[2] * w.shape[3] if mask[1] else 0
        assert info_w[4] == taps + int(mask[2]) and info_w[2] == max(1, math.ceil(taps / 9)), where


@pytest.mark.parametrize("K", [3, 5, 7])
@pytest.mark.parametrize("dtype", DW_DTYPES)
def test_dw_default_backward(dw_emu, dtype, K):
    """grad_input (the forward kernel with the rotated filter at stride 1, incl. negative padding;
    the gather kernel at stride 2), grad_weight and grad_bias, over the forward cases (half of them
    with row reuse forced off, some with outputs masked off). The weight gradient's block tree
    reductions make the emulation slow (about 2 s a case), so each (dtype, K) takes two of the 16
    cases, a different pair each: over the 12 tests every layout, channel count, stride and
    dilation runs; test_dw_default_odd_geometry adds more."""
    masks = [[True, True, True], [True, False, False], [False, True, False], [False, False, True]]
    j = (DW_DTYPES.index(dtype) * 3 + K // 2 - 1) % 8
    for i, (layout, N, C, H, W, S, D, pad, _, _, reuse) in list(enumerate(dw_forward_cases(dtype, K)))[j::8]:
        x, w, _ = dw_case(layout, N, C, H, W, K, K, dtype, False)
        where = f"x {tuple(x.shape)} {layout} {dtype} k{K} s{S} d{D} p{pad} reuse={reuse}"
        dw_check_backward(dw_emu, x, w, S, pad, D, masks[i % 4] if i % 3 == 2 else masks[0], reuse, where)


# ----------------------------------------------------------------------------- pointwise GEMM
# pointwise_gemm_kernel (csrc/cuda/pointwise_gemm.cuh: tensor-core 1x1 conv, epilogue or statistics
# in the GEMM) emulated by cuda_emulation/pw_gemm_host.cpp: prepare_pointwise, the eligibility
# check, plan_gemm and dispatch_bn as try_pointwise_gemm calls them, then the kernel, whose wmma
# fragments the shim's mma.h computes on the host.

PW_DTYPES = [torch.bfloat16, torch.float16]
# (N, Cin, H, W, Cout): two M tiles with a 54-row tail (P = 182) and two K steps with an 8-channel
# tail (Cin 40) for each tile width (Cout 24 -> BN 32; 48 -> two BN 32 tiles, the second half idle;
# 64 -> BN 64; 120 -> BN 128 with an idle vector; 200 -> BN 64, four tiles), one pixel with one K
# chunk, and a K of several full steps.
PW_SHAPES = [(2, 40, 13, 7, 24), (2, 40, 13, 7, 48), (1, 40, 13, 7, 64), (1, 40, 7, 13, 120), (1, 16, 5, 5, 200),
             (1, 8, 1, 1, 16), (1, 96, 3, 7, 32)]


@pytest.fixture(scope="module")
def pw_emu():
    """The emulated tensor-core pointwise GEMM (pw_gemm_host.cpp)."""
    return build_emulation("mk_pw_gemm_host", "pw_gemm_host.cpp")


def pw_case(N, Cin, H, W, Cout, dtype, *, bias, residual):
    x = torch.randn(N, Cin, H, W).to(dtype).contiguous(memory_format=torch.channels_last)
    w = (torch.randn(Cout, Cin, 1, 1) / math.sqrt(Cin)).to(dtype)
    b = torch.randn(Cout).to(dtype) if bias else None
    r = torch.randn(N, Cout, H, W).to(dtype).contiguous(memory_format=torch.channels_last) if residual else None
    return x, w, b, r


def pw_expected_bn(Cout):
    for bn in (128, 64):
        if math.ceil(Cout / bn) * bn - Cout <= Cout // 4:
            return bn
    return 32


def pw_run(pw_emu, x, w, b, r, act, stats):
    y, part, info = pw_emu.run(x, w, b, r, act, stats)
    bn, tiles_m, tiles_n, smem, bx, by = info
    N, Cin, H, W = x.shape
    Cout = w.shape[0]
    where = f"x {tuple(x.shape)} {x.dtype} Cout {Cout} {act} bias={b is not None} res={r is not None} plan {info}"
    assert y.shape == (N, Cout, H, W) and y.is_contiguous(memory_format=torch.channels_last), where
    assert bn == pw_expected_bn(Cout) and tiles_m == math.ceil(N * H * W / 128), where
    assert tiles_n == math.ceil(Cout / bn) and bx == bn // 8 and bx * by == 256, where
    assert smem == max(2 * (128 + bn) * 40 * 2, 128 * (bn + 4) * 4), where
    assert not y.isnan().any(), f"output elements left unwritten: {where}"
    return y, part, info, where


def pw_reference(x, w, b, r, act):
    z = pointwise_conv2d_ref(x.double(), w.double(), None if b is None else b.double())
    z = act_ref(z, act)
    return z if r is None else z + r.double()


@pytest.mark.parametrize("dtype", PW_DTYPES)
@pytest.mark.parametrize("shape", PW_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_pw_gemm_matches_reference(pw_emu, shape, dtype):
    """Every tile width, M/K/N tails and idle channel vectors: act(x . W^T + b) (+ residual),
    rounded once, within an ulp of the rounded fp64 reference."""
    for act, bias, residual in [("identity", False, False), ("hardswish", True, False), ("relu6", True, True)]:
        x, w, b, r = pw_case(*shape, dtype, bias=bias, residual=residual)
        y, _, _, where = pw_run(pw_emu, x, w, b, r, act, False)
        assert_matches(y, pw_reference(x, w, b, r, act), dtype, where)


@pytest.mark.parametrize("dtype", PW_DTYPES)
def test_pw_gemm_other_activations(pw_emu, dtype):
    for act in ("relu", "hardsigmoid", "sigmoid", "silu"):
        x, w, b, _ = pw_case(2, 40, 13, 7, 24, dtype, bias=True, residual=False)
        y, _, _, where = pw_run(pw_emu, x, w, b, None, act, False)
        assert_matches(y, pw_reference(x, w, b, None, act), dtype, where)


@pytest.mark.parametrize("dtype", PW_DTYPES)
@pytest.mark.parametrize("shape", [(2, 40, 13, 7, 48), (1, 40, 7, 13, 120), (1, 8, 1, 1, 16)],
                         ids=lambda s: "x".join(map(str, s)))
def test_pw_gemm_stats_partials(pw_emu, shape, dtype):
    """The statistics variant stores what the plain GEMM stores, and its (tiles_m, Cout) partials
    merged over the tiles give the count, mean and variance of the stored output."""
    x, w, _, _ = pw_case(*shape, dtype, bias=False, residual=False)
    x = (x + 2.0).to(dtype)  # a mean away from 0
    y, part, info, where = pw_run(pw_emu, x, w, None, None, "identity", True)
    y0, _, _, _ = pw_run(pw_emu, x, w, None, None, "identity", False)
    assert torch.equal(y, y0), where
    assert part.shape == (3, info[1], w.shape[0]) and not part.isnan().any(), f"partials left unwritten: {where}"
    n, mean, m2 = chan_merge_all(*part)
    count = shape[0] * shape[2] * shape[3]
    assert torch.equal(n, torch.full_like(n, count)), where
    ref_var, ref_mean = torch.var_mean(y.double(), dim=(0, 2, 3), unbiased=False)
    scale = ref_var.sqrt() + ref_mean.abs()
    assert ((mean - ref_mean).abs() <= 1e-5 * scale + 1e-7).all(), f"mean: {where}"
    torch.testing.assert_close(m2 / count, ref_var, rtol=1e-5, atol=1e-7, msg=f"variance: {where}")


@pytest.mark.parametrize("case", ["float32", "nchw", "cin_12", "cout_20"])
def test_pw_gemm_eligibility(pw_emu, case):
    """The kernel refuses what it cannot take (the launcher then runs cuBLAS + epilogue): 32-bit
    types, NCHW, and channel counts that are not whole 16-byte vectors."""
    N, Cin, H, W, Cout = 1, 16, 3, 3, 16
    dtype, fmt = torch.bfloat16, torch.channels_last
    if case == "float32":
        dtype = torch.float32
    elif case == "nchw":
        fmt = torch.contiguous_format
    elif case == "cin_12":
        Cin = 12
    else:
        Cout = 20
    x = torch.randn(N, Cin, H, W).to(dtype).contiguous(memory_format=fmt)
    w = torch.randn(Cout, Cin, 1, 1).to(dtype)
    with pytest.raises(RuntimeError, match="pointwise_gemm_eligible refuses"):
        pw_emu.run(x, w, None, None, "identity", False)


# ----------------------------------------------------------------------------- batch_norm_act passes
# The per-channel passes of batch_norm_act.cu (csrc/cuda/channel_passes.cuh) emulated by
# cuda_emulation/bn_host.cpp: the training statistics, the eval backward (grad_input written by the
# reduction) and the training backward (the reduction, then the grad_input pass), with the CUDA
# code's plans and vector widths: 16-byte vectors of channels in channels_last where C allows them.


@pytest.fixture(scope="module")
def bn_emu():
    """The emulated batch_norm_act channel passes (bn_host.cpp)."""
    return build_emulation("mk_bn_host", "bn_host.cpp")


BN_DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
# (N, C, H, W): C a multiple of every vector (16, 40), of the fp32 one only (12, 20), of none (6,
# 13); H, W of 1, 7, 13; a single row per channel group; more rows than one tile holds (2 x 17 x 17);
# 32 channel vectors and more (256: 32 lanes of 8 rows) with 32-row tiles, the last one short (2 x
# 23 x 25 = 1150 rows), so that the reductions' threads take four rows at a time and then the rest.
BN_SHAPES = [(2, 16, 13, 13), (3, 12, 7, 7), (2, 40, 1, 1), (4, 20, 7, 13), (1, 13, 1, 7), (2, 6, 17, 17),
             (2, 24, 17, 17), (2, 256, 23, 25)]


def bn_case(shape, dtype, channels_last, seed=0):
    g = torch.Generator().manual_seed(seed)
    N, C, H, W = shape
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = (torch.randn(N, C, H, W, generator=g) * 2 + 0.5).to(dtype).contiguous(memory_format=fmt)
    gy = torch.randn(N, C, H, W, generator=g).to(dtype).contiguous(memory_format=fmt)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    weight = (torch.rand(C, generator=g) + 0.5).to(acc)
    bias = (torch.randn(C, generator=g) * 0.5).to(acc)
    return x, gy, weight, bias


def expected_vec(shape, dtype, channels_last):
    v = 16 // torch.empty(0, dtype=dtype).element_size()
    return v if channels_last and shape[1] % v == 0 else 1


def bn_backward_reference(x, gy, mean, var, weight, bias, eps, act, training):
    """(grad_input, sum(g * x_hat), sum(g)) in float64, g = grad_output * act'(z), z = BN(x)."""
    xd, gd = x.double(), gy.double()
    rstd = (var.double() + eps).rsqrt().view(1, -1, 1, 1)
    x_hat = (xd - mean.double().view(1, -1, 1, 1)) * rstd
    z = (x_hat * weight.double().view(1, -1, 1, 1) + bias.double().view(1, -1, 1, 1)).requires_grad_()
    act_ref(z, act).backward(gd)
    g = z.grad
    sum_gxhat, sum_g = (g * x_hat).sum((0, 2, 3)), g.sum((0, 2, 3))
    scale = rstd * weight.double().view(1, -1, 1, 1)
    if not training:
        return g * scale, sum_gxhat, sum_g
    M = x.numel() // x.shape[1]
    gx = scale * (g - (sum_g / M).view(1, -1, 1, 1) - x_hat * (sum_gxhat / M).view(1, -1, 1, 1))
    return gx, sum_gxhat, sum_g


def assert_sums_close(got, ref, terms, dtype, where):
    """Per-channel sums in the accumulation dtype: within a few ulps of the sum of |terms|."""
    tol = (1e-12 if dtype == torch.float64 else 1e-5) * terms
    assert ((got.double() - ref).abs() <= tol + 1e-30).all(), f"{where}: {got} vs {ref}"


@pytest.mark.parametrize("dtype", BN_DTYPES)
def test_bn_eval_forward(bn_emu, dtype):
    """The channels_last forward (EvalApply, the eval forward and training's apply pass), every
    activation over the shapes: several rows in flight per thread, the last chunk's rows past the
    end skipped."""
    for i, shape in enumerate(BN_SHAPES + [(3, 72, 5, 7), (1, 200, 3, 3)]):
        if shape[2] * shape[3] == 1:  # contiguous as well: the CUDA code takes the flat NCHW kernel
            continue
        act = ["identity", "hardswish", "relu6", "relu", "hardsigmoid", "silu", "sigmoid"][i % 7]
        x, _, weight, bias = bn_case(shape, dtype, True, seed=i)
        acc = weight.dtype
        var, mean = torch.var_mean(x.to(acc), dim=(0, 2, 3), unbiased=False)
        w, b = (weight, bias) if i % 2 == 0 else (None, None)
        y, info = bn_emu.eval_forward(x, mean, var, w, b, 1e-3, act)
        where = f"{shape} {dtype} {act} plan {info}"
        assert y.is_contiguous(memory_format=torch.channels_last) and info[0] == expected_vec(shape, dtype, True), where
        ones = torch.ones_like(weight)
        wd, bd = (weight if w is not None else ones).double(), (bias if b is not None else 0 * ones).double()
        ref = act_ref(F.batch_norm(x.double(), mean.double(), var.double(), wd, bd, False, 0.0, 1e-3), act)
        if dtype in (torch.float64, torch.float32):
            tol = 1e-12 if dtype == torch.float64 else 1e-5
            torch.testing.assert_close(y.double(), ref, rtol=tol, atol=tol, msg=where)
        else:  # float32 math rounded once
            eps = torch.finfo(dtype).eps
            torch.testing.assert_close(y.double(), ref.to(dtype).double(), rtol=2 * eps, atol=1e-3, msg=where)


@pytest.mark.parametrize("channels_last", [True, False], ids=["channels_last", "nchw"])
@pytest.mark.parametrize("dtype", BN_DTYPES)
def test_bn_train_stats(bn_emu, dtype, channels_last):
    """The batch mean and biased variance (the statistics of batch_norm_act_train)."""
    for shape in BN_SHAPES:
        x, _, _, _ = bn_case(shape, dtype, channels_last)
        mean, var, info = bn_emu.train_stats(x)
        where = f"{shape} {dtype} {'channels_last' if channels_last else 'nchw'} plan {info}"
        if channels_last:
            assert info[0] == expected_vec(shape, dtype, channels_last), where
        ref_var, ref_mean = torch.var_mean(x.double(), dim=(0, 2, 3), unbiased=False)
        rtol = 1e-12 if dtype == torch.float64 else 1e-5
        torch.testing.assert_close(mean.double(), ref_mean, rtol=rtol, atol=rtol * ref_var.sqrt().max().item(),
                                   msg=where)
        torch.testing.assert_close(var.double(), ref_var, rtol=rtol * 10, atol=rtol, msg=where)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("channels_last", [True, False], ids=["channels_last", "nchw"])
@pytest.mark.parametrize("dtype", BN_DTYPES)
def test_bn_backward(bn_emu, dtype, channels_last, training):
    """grad_input and the per-channel sums of the eval and the training backward, every activation
    over the shapes."""
    for i, shape in enumerate(BN_SHAPES):
        act = ["identity", "hardswish", "relu6", "relu", "hardsigmoid", "silu", "sigmoid"][i % 7]
        x, gy, weight, bias = bn_case(shape, dtype, channels_last, seed=i)
        acc = weight.dtype
        var, mean = torch.var_mean(x.to(acc), dim=(0, 2, 3), unbiased=False)
        with_affine = i % 2 == 0
        w, b = (weight, bias) if with_affine else (None, None)
        gx, sum_gxhat, sum_g, info_r, info_g = bn_emu.backward(gy, x, mean, var, w, b, 1e-3, act, training)
        where = f"{shape} {dtype} {'channels_last' if channels_last else 'nchw'} {act} plans {info_r} {info_g}"
        assert gx.shape == x.shape and gx.is_contiguous(memory_format=torch.channels_last if channels_last
                                                        else torch.contiguous_format), where
        if channels_last:
            assert info_r[0] == expected_vec(shape, dtype, channels_last), where
        ones = torch.ones_like(weight)
        ref_gx, ref_gxhat, ref_g = bn_backward_reference(x, gy, mean, var, weight if with_affine else ones,
                                                         bias if with_affine else 0 * ones, 1e-3, act, training)
        terms = (gy.double().abs() * (1 + (x.double() - mean.double().view(1, -1, 1, 1)).abs() * 40)).sum((0, 2, 3))
        assert_sums_close(sum_gxhat, ref_gxhat, terms, dtype, f"sum_gxhat {where}")
        assert_sums_close(sum_g, ref_g, terms, dtype, f"sum_g {where}")
        if dtype == torch.float64:
            torch.testing.assert_close(gx, ref_gx, rtol=1e-10, atol=1e-10, msg=where)
        elif dtype == torch.float32:
            torch.testing.assert_close(gx.double(), ref_gx, rtol=1e-4, atol=1e-5, msg=where)
        else:  # float32 math rounded once: within an ulp or two of the rounded reference
            eps = torch.finfo(dtype).eps
            torch.testing.assert_close(gx.double(), ref_gx.to(dtype).double(), rtol=2 * eps, atol=1e-3, msg=where)


@pytest.mark.parametrize("channels_last", [True, False], ids=["channels_last", "nchw"])
@pytest.mark.parametrize("dtype", BN_DTYPES)
def test_bn_train_backward_sums_and_dx_table(bn_emu, dtype, channels_last):
    """batch_norm_act_train_backward_sums' reduction (the fused depthwise backward's first step):
    the same sums as the training backward's, bit for bit, and the table its finish writes holds the
    grad_input pass's coefficients (scale, shift, mean, k, mean of g) computed from them."""
    for i, shape in enumerate(BN_SHAPES[:5]):
        act = ["hardswish", "relu6", "identity"][i % 3]
        x, gy, weight, bias = bn_case(shape, dtype, channels_last, seed=i)
        acc = weight.dtype
        var, mean = torch.var_mean(x.to(acc), dim=(0, 2, 3), unbiased=False)
        w, b = (weight, bias) if i % 2 == 0 else (None, None)
        sum_gxhat, sum_g, table = bn_emu.train_sums_table(gy, x, mean, var, w, b, 1e-3, act)
        _, ref_gxhat, ref_g, _, _ = bn_emu.backward(gy, x, mean, var, w, b, 1e-3, act, True)
        where = f"{shape} {dtype} {act}"
        assert torch.equal(sum_gxhat, ref_gxhat) and torch.equal(sum_g, ref_g), where
        M = x.numel() // x.shape[1]
        rstd = 1 / (var.double() + 1e-3).sqrt()
        scale = rstd * (w.double() if w is not None else 1)
        shift = (b.double() if b is not None else 0) - mean.double() * scale
        expected = torch.stack([scale, shift, mean.double(), rstd * sum_gxhat.double() / M, sum_g.double() / M])
        tol = 1e-12 if dtype == torch.float64 else 1e-6
        torch.testing.assert_close(table.double(), expected, rtol=tol, atol=tol, msg=where)


@pytest.mark.parametrize("model", ["mobilenet_v3_large", "mobilenet_v2"])
def test_bn_plans_of_mobilenet_layers(bn_emu, model):
    """The launch plans of every BatchNorm of the model's training at batch 128 and 224² (channels
    of 16 to 1280, 112² to 7² pixels): grids within CUDA's limits, at most 512 tiles, at least
    128 blocks per reduction (a 7x7 layer's few rows per channel still spread over the GPU), no
    idle channel lanes beyond the uneven split of the vectors, and the elementwise pass's blocks
    covering every row at four a thread."""
    from mobilenet_kernels.benchmarking.shapes import batch_norm_layers

    for C, H, W, _ in batch_norm_layers(model, 224):
        for vec, channels_last in ((8, True), (4, True), (1, True), (1, False)):
            if C % vec:
                continue
            red = bn_emu.plan(128, C, H * W, channels_last, vec, True)
            ew = bn_emu.plan(128, C, H * W, channels_last, vec, False)
            where = f"{model} C{C} {H}x{W} vec {vec} {'channels_last' if channels_last else 'nchw'}: {red} {ew}"
            _, gx_, gy_, bx, by, tiles = red
            assert 1 <= tiles <= 512 and gx_ * gy_ >= 128, where
            assert ew[2] <= 65535 and ew[3:5] == red[3:5], where
            assert 128 < bx * by <= 256 and (by & (by - 1)) == 0, where  # the tree halves the row lanes
            if channels_last:  # the channel vectors spread evenly over the fewest blocks of <= 32
                blocks = -(-(C // vec) // 32)
                assert bx <= 32 and gx_ == blocks and 0 <= bx * blocks - C // vec < blocks, where
                assert ew[1] * by * 4 >= min(128 * H * W, 4 * by << 20), where  # rows covered, 4 a thread


# ------------------------------------------------------------------------ squeeze_excite excite step
# The excite step of squeeze_excite.cu (csrc/cuda/excite_gemm.cuh) emulated by
# cuda_emulation/se_host.cpp: both 1x1 layers over the batch's pooled vectors as tiled GEMMs
# (forward), and their backward with the parameter gradients over the images.


@pytest.fixture(scope="module")
def se_emu():
    """The emulated excite step (se_host.cpp)."""
    return build_emulation("mk_se_host", "se_host.cpp")


# (N, C, S): one tile of everything; C and S past one tile (16 images, 32 outputs, 128 k a slice,
# 64 for float64) and not multiples of it; a single image and a single squeeze channel; V3-Large's
# widest (960 -> 240) at a few images.
SE_SHAPES = [(2, 8, 4), (19, 72, 24), (1, 40, 1), (33, 200, 32), (3, 960, 240)]
SE_ACTS = [("relu", "hardsigmoid"), ("silu", "sigmoid"), ("hardswish", "hardsigmoid"), ("relu6", "sigmoid"),
           ("identity", "hardsigmoid")]


def se_case(N, C, S, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    pooled = torch.randn(N, C, generator=g, dtype=torch.float64).to(dtype)
    w1 = (torch.randn(S, C, generator=g, dtype=torch.float64) / math.sqrt(C)).to(dtype)
    b1 = torch.randn(S, generator=g, dtype=torch.float64).to(dtype)
    w2 = (torch.randn(C, S, generator=g, dtype=torch.float64) / math.sqrt(S)).to(dtype)
    b2 = torch.randn(C, generator=g, dtype=torch.float64).to(dtype)
    ds = torch.randn(N, C, generator=g, dtype=torch.float64).to(dtype)
    return pooled, w1, b1, w2, b2, ds


def se_reference(pooled, w1, b1, w2, b2, ds, act, scale_act):
    """(scale, pooled.grad, w1.grad, b1.grad, w2.grad, b2.grad) in float64 by autograd on the CPU, the
    gradients those of scale.backward(ds) (ATen's conventions: hardsigmoid' is a float32 1/6 there
    as in our kernels)."""
    leaves = [t.double().requires_grad_() for t in (pooled, w1, b1, w2, b2)]
    p, a1, c1, a2, c2 = leaves
    s = act_ref(act_ref(p @ a1.t() + c1, act) @ a2.t() + c2, scale_act)
    s.backward(ds.double())
    return (s.detach(), *[t.grad for t in leaves])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_se_excite_step(se_emu, dtype):
    """The forward's scale and the backward's scale, dpooled / HW and parameter gradients against
    float64 autograd; two launches forward, six backward."""
    for i, (N, C, S) in enumerate(SE_SHAPES):
        act, scale_act = SE_ACTS[i % len(SE_ACTS)]
        pooled, w1, b1, w2, b2, ds = se_case(N, C, S, dtype, seed=i)
        where = f"N{N} C{C} S{S} {act}/{scale_act} {dtype}"
        ref = se_reference(pooled, w1, b1, w2, b2, ds, act, scale_act)
        tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
        scale, launches = se_emu.forward(pooled, w1, b1, w2, b2, act, scale_act)
        assert launches == 2, where
        torch.testing.assert_close(scale.double(), ref[0], **tol, msg=where)
        inv_hw = 1 / 49
        *got, launches = se_emu.backward(pooled, ds, w1, b1, w2, b2, act, scale_act, inv_hw)
        assert launches == 6, where
        want = [ref[0], ref[1] * inv_hw, *ref[2:]]
        for name, g, r in zip(["scale", "dp_hw", "w1", "b1", "w2", "b2"], got, want):
            assert g.shape == r.shape, f"{name} {where}"
            # a parameter gradient sums N terms: scale the tolerance with the terms' size
            torch.testing.assert_close(g.double(), r, rtol=tol["rtol"], atol=tol["atol"] * max(1, N) ** 0.5,
                                       msg=f"{name} {where}")


def test_se_excite_step_is_batch_invariant(se_emu):
    """An image's scale is bit for bit the same alone and in a batch (each output's sum runs over
    k in the same order whatever the tile it falls in); a rerun is bitwise the same."""
    pooled, w1, b1, w2, b2, _ = se_case(37, 120, 32, torch.float32, seed=7)
    full, _ = se_emu.forward(pooled, w1, b1, w2, b2, "relu", "hardsigmoid")
    again, _ = se_emu.forward(pooled, w1, b1, w2, b2, "relu", "hardsigmoid")
    assert torch.equal(full, again)
    for n in (0, 17, 36):
        one, _ = se_emu.forward(pooled[n:n + 1], w1, b1, w2, b2, "relu", "hardsigmoid")
        assert torch.equal(one[0], full[n]), n


# (N, C, H, W, S): 16-byte vectors in channels_last for every dtype (16, 40, 72 channels) or for
# float32 only (12), none (13); NCHW vectors where H * W allows them (4 x 4); H, W of 1, 7, 13.
SE_OP_SHAPES = [(2, 12, 7, 7, 4), (3, 16, 13, 13, 8), (1, 13, 1, 7, 3), (2, 40, 4, 4, 10), (2, 72, 5, 3, 24)]


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_se_op_forward_and_backward(se_emu, dtype, layout):
    """The whole CUDA op, forward and backward (the reduction over HW, the excite step, the
    scaling pass, with squeeze_excite.cu's launch sequence), against float64 autograd of the
    reference: the output and grad_input rounded once, the parameter gradients in float32 (float64)."""
    from mobilenet_kernels.reference import squeeze_excite_ref

    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    for i, (N, C, H, W, S) in enumerate(SE_OP_SHAPES):
        act, scale_act = SE_ACTS[i % len(SE_ACTS)]
        g = torch.Generator().manual_seed(i)
        x = torch.randn(N, C, H, W, generator=g).to(dtype).contiguous(memory_format=fmt)
        gy = torch.randn(N, C, H, W, generator=g).to(dtype).contiguous(memory_format=fmt)
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        params = [(torch.randn(S, C, 1, 1, generator=g) / math.sqrt(C)).to(acc), torch.randn(S, generator=g).to(acc),
                  (torch.randn(C, S, 1, 1, generator=g) / math.sqrt(S)).to(acc), torch.randn(C, generator=g).to(acc)]
        where = f"{(N, C, H, W, S)} {dtype} {layout} {act}/{scale_act}"
        y, pooled, launches = se_emu.op_forward(x, *params, act, scale_act)
        assert launches == 4 and y.dtype == dtype and y.is_contiguous(memory_format=fmt), where
        gx, gw1, gb1, gw2, gb2, launches = se_emu.op_backward(gy, x, pooled, *params, act, scale_act)
        assert launches == 8, where
        leaves = [t.double().requires_grad_() for t in (x, *params)]
        ref_y = squeeze_excite_ref(*leaves, act, scale_act)
        ref = (ref_y.detach(), *torch.autograd.grad(ref_y, leaves, gy.double()))
        torch.testing.assert_close(pooled.double(), x.double().mean((2, 3)), rtol=1e-6, atol=1e-6, msg=where)
        got = (y, gx, gw1.view(S, C, 1, 1), gb1, gw2.view(C, S, 1, 1), gb2)
        for name, a, r in zip(["y", "grad_input", "w1", "b1", "w2", "b2"], got, ref):
            if dtype == torch.float64:
                tol = dict(rtol=1e-10, atol=1e-10)
            elif dtype == torch.float32 or name not in ("y", "grad_input"):
                tol = dict(rtol=1e-4, atol=1e-4 * max(1, N * H * W) ** 0.5)
            else:  # float32 math rounded once: within an ulp or two of the rounded reference
                r = r.to(dtype)
                tol = dict(rtol=2 * torch.finfo(dtype).eps, atol=1e-3)
            torch.testing.assert_close(a.double(), r.double(), **tol, msg=f"{name} {where}")


# ------------------------------------------------------------------- pointwise_conv2d statistics
# pointwise_conv2d_stats's statistics pass on CUDA (csrc/cuda/pointwise_stats.cuh), emulated by
# cuda_emulation/pw_stats_host.cpp: the partials of the stored output, then the finish kernel.


@pytest.fixture(scope="module")
def pw_stats_emu():
    """The emulated statistics pass (pw_stats_host.cpp)."""
    return build_emulation("mk_pw_stats_host", "pw_stats_host.cpp")


# (N, C, H, W): 256 channels (32 lanes of 8 rows; fp32: two blocks of 32 vectors) over 286 rows,
# two tiles, the second short (four rows at a time, then the rest); 16 channels (a block of 2
# lanes x 128 rows); 13 (no vectors); NCHW over two tiles of pixels (3 x 30 x 30 > 2048) and an
# odd plane (7 x 13).
PW_STATS_SHAPES = [(2, 256, 13, 11), (2, 16, 9, 9), (1, 13, 7, 13), (3, 8, 30, 30)]


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_pw_stats(pw_stats_emu, dtype, layout):
    """The batch mean and biased variance of the stored output against float64, a channel with mean
    1e3 and std 1 among them (centred partials keep its variance)."""
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    for i, shape in enumerate(PW_STATS_SHAPES):
        g = torch.Generator().manual_seed(i)
        y = torch.randn(*shape, generator=g) * 2 + 0.5
        y[:, 0] += 1e3
        y = y.to(dtype).contiguous(memory_format=fmt)
        mean, var, info = pw_stats_emu.stats(y)
        where = f"{shape} {dtype} {layout} plan {info}"
        ref_var, ref_mean = torch.var_mean(y.double(), dim=(0, 2, 3), unbiased=False)
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        torch.testing.assert_close(mean.double(), ref_mean, rtol=tol, atol=tol, msg=where)
        torch.testing.assert_close(var.double(), ref_var, rtol=tol * 100, atol=tol, msg=where)
