"""squeeze_excite, Triton kernels and launchers.

The three stages every backend uses (csrc/squeeze_excite.h has the math):
  reduce:  out[n, c] = sum_p x[n, c, p] (forward: times 1/HW, the pooled mean) or
           sum_p g[n, c, p] * x[n, c, p] (backward); one program per (image, channel block) walks
           the pixels in a fixed order, so the sums are deterministic;
  excite:  one program per image: z1 = W1 pooled + b1, h = act(z1), z2 = W2 h + b2, s = sact(z2);
           the backward variant continues with dz2 = ds * sact'(z2), dz1 = (W2^T dz2) * act'(z1),
           dpooled = W1^T dz1. Vectors of one image go through small global scratch rows (N, S) /
           (N, C) (L2-resident), with a barrier between the phases;
  apply:   y = x * s[n, c] (forward), grad_x = g * s[n, c] + dpooled[n, c] / HW (backward), over
           [BLOCK_M pixels x BLOCK_C channels] tiles.
Parameter gradients are per-image outer products summed over the batch: small matmuls done by
torch on the scratch rows (a fixed reduction order, deterministic).
Layouts: dense NCHW or channels_last (N, C, H, W) through (n, c, pixel) strides.
dtypes: float64, float32, float16, bfloat16; arithmetic in float32 (float64 for float64 input).
Indexing: int64 offsets. Runs on CPU tensors under TRITON_INTERPRET=1.
Tuning: on a GPU the apply pass's tile (BLOCK_M, BLOCK_C, num_warps) is picked per shape by timing
        numerics-identical candidates (triton/_tuning.py, apply_configs).
Limits: the reduce and excite launches keep fixed block-size heuristics; the reduce launches one
        program per (image, channel block), so at batch 1 a large plane is reduced by few programs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..activations import activation_code, apply_activation
from ._activations import _div, act_derivative, act_forward
from ._alignment import channel_multiple, multiple
from ._tuning import LaunchTuner, tile_candidates, tuning_enabled
from .batch_norm_act import _geometry, _store_dtype


@triton.jit
def _se_reduce_kernel(
    x_ptr, g_ptr,  # (N, C, HW) dense, same strides; g read only if HAS_G
    out_ptr,  # (N, C), accumulation dtype
    C, HW, stride_n, stride_c, stride_p,
    HAS_G: tl.constexpr, MEAN: tl.constexpr, ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
    MULT: tl.constexpr,  # _alignment.channel_multiple
):
    C, stride_n, stride_p = multiple(C, MULT), multiple(stride_n, MULT), multiple(stride_p, MULT)  # (_alignment)
    n = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_mask = cols < C
    base = n * stride_n + cols.to(tl.int64)[None, :] * stride_c
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=ACC)
    for p0 in range(0, HW, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        mask = (p < HW)[:, None] & col_mask[None, :]
        offs = base + p.to(tl.int64)[:, None] * stride_p
        v = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ACC)
        if HAS_G:
            v *= tl.load(g_ptr + offs, mask=mask, other=0.0).to(ACC)
        acc += v
    total = tl.sum(acc, axis=0)
    if MEAN:
        total = _div(total, HW + 0.0)
    tl.store(out_ptr + n * C + cols, total, mask=col_mask)


@triton.jit
def _se_excite_kernel(
    pooled_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr,  # (N, C), (S, C), (S,), (C, S), (C,): accumulation dtype
    ds_ptr,  # (N, C) sum_p g * x, read only if BACKWARD
    s_ptr, z1_ptr,  # out: (N, C) the scale, (N, S) the pre-activation of fc1
    dz2_ptr, dz1_ptr, dp_ptr,  # out if BACKWARD: (N, C), (N, S), (N, C) dpooled / HW
    C, S, HW,
    ACT: tl.constexpr, SACT: tl.constexpr, BACKWARD: tl.constexpr, ACC: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    # z1 = W1 pooled + b1
    for s0 in range(0, S, BLOCK_S):
        rs = s0 + tl.arange(0, BLOCK_S)
        ms = rs < S
        acc = tl.zeros([BLOCK_S, BLOCK_C], dtype=ACC)
        for c0 in range(0, C, BLOCK_C):
            rc = c0 + tl.arange(0, BLOCK_C)
            mc = rc < C
            w = tl.load(w1_ptr + rs[:, None] * C + rc[None, :], mask=ms[:, None] & mc[None, :], other=0.0)
            acc += w * tl.load(pooled_ptr + n * C + rc, mask=mc, other=0.0)[None, :]
        z1 = tl.sum(acc, axis=1) + tl.load(b1_ptr + rs, mask=ms, other=0.0)
        tl.store(z1_ptr + n * S + rs, z1, mask=ms)
    tl.debug_barrier()
    # z2 = W2 act(z1) + b2, s = sact(z2); backward: dz2 = ds * sact'(z2)
    for c0 in range(0, C, BLOCK_C):
        rc = c0 + tl.arange(0, BLOCK_C)
        mc = rc < C
        acc = tl.zeros([BLOCK_C, BLOCK_S], dtype=ACC)
        for s0 in range(0, S, BLOCK_S):
            rs = s0 + tl.arange(0, BLOCK_S)
            ms = rs < S
            h = tl.where(ms, act_forward(tl.load(z1_ptr + n * S + rs, mask=ms, other=0.0), ACT), 0.0)
            w = tl.load(w2_ptr + rc[:, None] * S + rs[None, :], mask=mc[:, None] & ms[None, :], other=0.0)
            acc += w * h[None, :]
        z2 = tl.sum(acc, axis=1) + tl.load(b2_ptr + rc, mask=mc, other=0.0)
        tl.store(s_ptr + n * C + rc, act_forward(z2, SACT), mask=mc)
        if BACKWARD:
            dz2 = tl.load(ds_ptr + n * C + rc, mask=mc, other=0.0) * act_derivative(z2, SACT)
            tl.store(dz2_ptr + n * C + rc, dz2, mask=mc)
    if BACKWARD:
        tl.debug_barrier()
        # dz1 = (W2^T dz2) * act'(z1)
        for s0 in range(0, S, BLOCK_S):
            rs = s0 + tl.arange(0, BLOCK_S)
            ms = rs < S
            acc = tl.zeros([BLOCK_S, BLOCK_C], dtype=ACC)
            for c0 in range(0, C, BLOCK_C):
                rc = c0 + tl.arange(0, BLOCK_C)
                mc = rc < C
                w = tl.load(w2_ptr + rc[None, :] * S + rs[:, None], mask=ms[:, None] & mc[None, :], other=0.0)
                acc += w * tl.load(dz2_ptr + n * C + rc, mask=mc, other=0.0)[None, :]
            z1 = tl.load(z1_ptr + n * S + rs, mask=ms, other=0.0)
            tl.store(dz1_ptr + n * S + rs, tl.sum(acc, axis=1) * act_derivative(z1, ACT), mask=ms)
        tl.debug_barrier()
        # dpooled / HW = (W1^T dz1) / HW
        for c0 in range(0, C, BLOCK_C):
            rc = c0 + tl.arange(0, BLOCK_C)
            mc = rc < C
            acc = tl.zeros([BLOCK_C, BLOCK_S], dtype=ACC)
            for s0 in range(0, S, BLOCK_S):
                rs = s0 + tl.arange(0, BLOCK_S)
                ms = rs < S
                w = tl.load(w1_ptr + rs[None, :] * C + rc[:, None], mask=mc[:, None] & ms[None, :], other=0.0)
                acc += w * tl.load(dz1_ptr + n * S + rs, mask=ms, other=0.0)[None, :]
            tl.store(dp_ptr + n * C + rc, _div(tl.sum(acc, axis=1), HW + 0.0), mask=mc)


@triton.jit
def _se_apply_kernel(
    x_ptr,  # (N, C, HW) dense
    s_ptr, add_ptr,  # (N, C) accumulation dtype; add read only if HAS_ADD
    y_ptr,  # x's shape and strides
    M, C, HW, stride_n, stride_c, stride_p,
    HAS_ADD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
    MULT: tl.constexpr,  # _alignment.channel_multiple
):
    C, stride_n, stride_p = multiple(C, MULT), multiple(stride_n, MULT), multiple(stride_p, MULT)  # (_alignment)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    n = rows // HW
    p = rows - n * HW
    offs = (n * stride_n + p * stride_p)[:, None] + cols.to(tl.int64)[None, :] * stride_c
    mask = (rows < M)[:, None] & (cols < C)[None, :]
    per_image = n[:, None] * C + cols[None, :]
    s = tl.load(s_ptr + per_image, mask=mask, other=0.0)
    y = tl.load(x_ptr + offs, mask=mask, other=0.0).to(s.dtype) * s
    if HAS_ADD:
        y += tl.load(add_ptr + per_image, mask=mask, other=0.0)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


def _interpreted(t: torch.Tensor) -> bool:
    # Under the CPU interpreter every program costs ~ms of Python: few, large programs.
    return t.device.type == "cpu"


def _reduce(x: torch.Tensor, g: torch.Tensor | None, acc: torch.dtype) -> torch.Tensor:
    """(N, C) sums over the pixels of x (times g if given; the mean if g is None)."""
    M, C, HW, sn, sc, sp = _geometry(x)
    N = x.shape[0]
    out = torch.empty((N, C), dtype=acc, device=x.device)
    block_c = min(triton.next_power_of_2(C), 64)
    budget = 16384 if _interpreted(x) else 2048
    block_p = min(triton.next_power_of_2(HW), max(budget // block_c, 1))
    _se_reduce_kernel[(N, triton.cdiv(C, block_c))](
        x, x if g is None else g, out, C, HW, sn, sc, sp, HAS_G=g is not None, MEAN=g is None,
        ACC=tl.float64 if acc == torch.float64 else tl.float32, BLOCK_P=block_p, BLOCK_C=block_c,
        MULT=channel_multiple(C, sc),
    )
    return out


def apply_configs(x: torch.Tensor) -> list[tuple[int, int, int]]:
    """The apply pass's launch configs (BLOCK_M, BLOCK_C, num_warps) for LaunchTuner
    (triton/_tuning.py), the heuristic first: an elementwise pass, so all give the same bits."""
    M, C = _geometry(x)[:2]
    block_c = min(triton.next_power_of_2(C), 64)
    budget = 65536 if _interpreted(x) else 4096
    heuristic = (min(triton.next_power_of_2(M), max(budget // block_c, 1)), block_c, 4)
    return tile_candidates(heuristic, M, C, (16, 32, 64), ((2048, 4), (8192, 8)))


_APPLY_TUNER = LaunchTuner("squeeze_excite_apply")


def _apply(x: torch.Tensor, s: torch.Tensor, add: torch.Tensor | None, memory_format, config=None) -> torch.Tensor:
    """y = x * s (+ add / HW): `config` (BLOCK_M, BLOCK_C, num_warps) forces a launch config (tests);
    else the tuner picks one."""
    M, C, HW, sn, sc, sp = _geometry(x)
    y = torch.empty(x.shape, dtype=_store_dtype(x), device=x.device, memory_format=memory_format)

    def run(cfg):
        block_m, block_c, warps = cfg
        _se_apply_kernel[(triton.cdiv(M, block_m), triton.cdiv(C, block_c))](
            x, s, s if add is None else add, y, M, C, HW, sn, sc, sp, HAS_ADD=add is not None, BLOCK_M=block_m,
            BLOCK_C=block_c, MULT=channel_multiple(C, sc), num_warps=warps,
        )

    key = (x.device, x.dtype, memory_format, tuple(x.shape), add is not None)
    _APPLY_TUNER.launch(key, apply_configs(x), run, tuning_enabled(x.device), force=config)
    return y.to(x.dtype)


def _excite(pooled, w1, b1, w2, b2, activation, scale_activation, ds=None, HW=1):
    N, C = pooled.shape
    S = w1.shape[0]
    acc = pooled.dtype
    s = torch.empty((N, C), dtype=acc, device=pooled.device)
    z1 = torch.empty((N, S), dtype=acc, device=pooled.device)
    backward = ds is not None
    dz2, dz1, dp = (torch.empty(shape, dtype=acc, device=pooled.device) for shape in ((N, C), (N, S), (N, C))) if backward \
        else (s, z1, s)
    _se_excite_kernel[(N,)](
        pooled, w1, b1, w2, b2, ds if backward else pooled, s, z1, dz2, dz1, dp, C, S, HW,
        ACT=activation_code(activation), SACT=activation_code(scale_activation), BACKWARD=backward,
        ACC=tl.float64 if acc == torch.float64 else tl.float32,
        BLOCK_C=min(triton.next_power_of_2(C), 64), BLOCK_S=min(triton.next_power_of_2(S), 32),
    )
    return s, z1, dz2, dz1, dp


def squeeze_excite_fwd(x, w1, b1, w2, b2, activation, scale_activation, memory_format):
    """x dense in ``memory_format``; parameters (S, C), (S,), (C, S), (C,) in the accumulation
    dtype, contiguous. Returns (y in ``memory_format``, pooled (N, C))."""
    N, C = x.shape[0], x.shape[1]
    acc = w1.dtype
    if N == 0:
        return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=memory_format), \
            torch.empty((0, C), dtype=acc, device=x.device)
    pooled = _reduce(x, None, acc)
    s = _excite(pooled, w1, b1, w2, b2, activation, scale_activation)[0]
    return _apply(x, s, None, memory_format), pooled


def squeeze_excite_bwd(g, x, pooled, w1, b1, w2, b2, activation, scale_activation, memory_format):
    """g, x dense in ``memory_format``; returns (grad_x, grad_w1 (S, C), grad_b1, grad_w2 (C, S),
    grad_b2), the parameter grads in the accumulation dtype."""
    N, C = x.shape[0], x.shape[1]
    if N == 0:
        return (torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=memory_format),
                torch.zeros_like(w1), torch.zeros_like(b1), torch.zeros_like(w2), torch.zeros_like(b2))
    ds = _reduce(x, g, pooled.dtype)
    s, z1, dz2, dz1, dp = _excite(pooled, w1, b1, w2, b2, activation, scale_activation, ds, HW=x.shape[2] * x.shape[3])
    grad_x = _apply(g, s, dp, memory_format)
    h = apply_activation(z1, activation)
    return grad_x, dz1.t() @ pooled, dz1.sum(0), dz2.t() @ h, dz2.sum(0)
