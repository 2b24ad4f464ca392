"""squeeze_excite, Triton kernels and launchers.

The three stages every backend uses (csrc/squeeze_excite.h has the math):
  reduce:  out[n, c] = sum_p x[n, c, p] (forward: times 1/HW, the pooled mean) or
           sum_p g[n, c, p] * x[n, c, p] (backward); one program per (image, channel block) walks
           the pixels in a fixed order, so the sums are deterministic;
  excite:  both 1x1 layers as small tiled products over the batch's (N, C) / (N, S) vectors
           (_se_gemm_kernel, the CUDA backend's excite_gemm.cuh in Triton): a program owns 16
           rows x 32 outputs and walks k in order, the activations in its epilogue; two launches
           forward (h = act(pooled W1^T + b1), s = sact(h W2^T + b2)), six backward (z1 and h, s
           and dz2 = ds * sact'(z2), dz1 = (dz2 W2) * act'(z1), dpooled / HW = dz1 W1 / HW, and
           the parameter gradients dz2^T h, dz1^T pooled with the bias gradients as a column of
           ones): no per-image program reads the weights for one image only;
  apply:   y = x * s[n, c] (forward), grad_x = g * s[n, c] + dpooled[n, c] / HW (backward), over
           [BLOCK_M pixels x BLOCK_C channels] tiles.
Every sum runs in a fixed, shape-given order: deterministic, no atomics.
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

from ..activations import activation_code
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


# The excite step's products (csrc/cuda/excite_gemm.cuh is the CUDA twin): out(r, o) =
# epilogue(r, o, sum_k A(r, k) B(o, k)), operand element (i, k) at ptr + i * si + k * sk, B's row
# `b_ones` (>= 0) reading 1 (the bias gradients' column of ones). The epilogues:
_HIDDEN, _SCALE, _HIDDEN_BWD, _SCALE_BWD, _HIDDEN_GRAD, _POOLED_GRAD, _PARAM_GRAD = range(7)


@triton.jit
def _se_gemm_kernel(
    a_ptr, a_si, a_sk, a_rows,
    b_ptr, b_si, b_sk, b_rows, b_ones,
    R, O, K,
    e0_ptr, e1_ptr, e2_ptr, e3_ptr,  # the epilogue's tensors, dense (R, ld) / (ld,): see below
    ld, HW,
    EPI: tl.constexpr, ACT: tl.constexpr, ACC: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr,
):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    o = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    r64, o64 = r.to(tl.int64), o.to(tl.int64)
    acc = tl.zeros([BLOCK_R, BLOCK_O], dtype=ACC)
    for k0 in range(0, K, BLOCK_K):  # k in order, a fixed shape-given grouping: deterministic
        k = k0 + tl.arange(0, BLOCK_K)
        km = k < K
        k64 = k.to(tl.int64)
        a = tl.load(a_ptr + r64[:, None] * a_si + k64[None, :] * a_sk, mask=(r < a_rows)[:, None] & km[None, :],
                    other=0.0).to(ACC)
        b = tl.load(b_ptr + o64[:, None] * b_si + k64[None, :] * b_sk, mask=(o < b_rows)[:, None] & km[None, :],
                    other=0.0).to(ACC)
        b = tl.where((o == b_ones)[:, None] & km[None, :], 1.0, b)
        acc += tl.sum(a[:, None, :] * b[None, :, :], axis=2)
    mask = (r < R)[:, None] & (o < O)[None, :]
    q = r64[:, None] * ld + o64[None, :]  # (r, o) of a dense (R, ld) tensor
    if EPI <= 1:  # _HIDDEN (h = act(acc + b1)), _SCALE (s = sact(acc + b2)); e0 the bias, e1 the output
        tl.store(e1_ptr + q, act_forward(acc + tl.load(e0_ptr + o, mask=o < O, other=0.0)[None, :], ACT), mask=mask)
    elif EPI == 2:  # _HIDDEN_BWD: z1 = acc + b1, h = act(z1); e0 b1, e1 z1, e2 h
        z = acc + tl.load(e0_ptr + o, mask=o < O, other=0.0)[None, :]
        tl.store(e1_ptr + q, z, mask=mask)
        tl.store(e2_ptr + q, act_forward(z, ACT), mask=mask)
    elif EPI == 3:  # _SCALE_BWD: z2 = acc + b2, s = sact(z2), dz2 = ds * sact'(z2); e0 b2, e1 s, e2 ds,
        # e3 dz2
        z = acc + tl.load(e0_ptr + o, mask=o < O, other=0.0)[None, :]
        tl.store(e1_ptr + q, act_forward(z, ACT), mask=mask)
        tl.store(e3_ptr + q, tl.load(e2_ptr + q, mask=mask, other=0.0) * act_derivative(z, ACT), mask=mask)
    elif EPI == 4:  # _HIDDEN_GRAD: dz1 = acc * act'(z1); e0 z1, e1 dz1
        tl.store(e1_ptr + q, acc * act_derivative(tl.load(e0_ptr + q, mask=mask, other=0.0), ACT), mask=mask)
    elif EPI == 5:  # _POOLED_GRAD: dpooled / HW = acc / HW (IEEE-rounded); e1 out
        tl.store(e1_ptr + q, _div(acc, HW + 0.0), mask=mask)
    else:  # _PARAM_GRAD: weight[r, o] for o < ld, bias[r] for o == ld; e1 weight, e2 bias
        tl.store(e1_ptr + q, acc, mask=mask & (o < ld)[None, :])
        tl.store(e2_ptr + r64[:, None] + 0 * o64[None, :], acc, mask=mask & (o == ld)[None, :])


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


def _gemm(a, b, R, O, K, epi, act, ld, *outs, HW=1):
    """One launch of _se_gemm_kernel: a and b are (tensor, si, sk, rows, ones_row) operands (_rows,
    _cols; a has no row of ones)."""
    (ap, a_si, a_sk, a_rows, a_ones), (bp, b_si, b_sk, b_rows, b_ones) = a, b
    assert a_ones < 0, "the first operand has no row of ones"
    acc = ap.dtype
    # Under the interpreter each program and each k-slice costs Python: few programs, wide slices.
    block_k = 64 if _interpreted(ap) else 8
    e = list(outs) + [ap] * (4 - len(outs))
    _se_gemm_kernel[(triton.cdiv(R, 16), triton.cdiv(O, 32))](
        ap, a_si, a_sk, a_rows, bp, b_si, b_sk, b_rows, b_ones, R, O, K, *e, ld, HW,
        EPI=epi, ACT=activation_code(act), ACC=tl.float64 if acc == torch.float64 else tl.float32,
        BLOCK_R=16, BLOCK_O=32, BLOCK_K=block_k,
    )


def _rows(m):
    """A dense (rows, cols) matrix as an operand: element (i, k) = m[i, k]."""
    return (m, m.shape[1], 1, m.shape[0], -1)


def _cols(m, with_ones=False):
    """Its transpose: element (i, k) = m[k, i]; with_ones adds row cols of ones."""
    return (m, 1, m.shape[1], m.shape[1], m.shape[1] if with_ones else -1)


def _excite_fwd(pooled, w1, b1, w2, b2, activation, scale_activation):
    """scale = sact(act(pooled W1^T + b1) W2^T + b2), (N, C): two launches."""
    N, C = pooled.shape
    S = w1.shape[0]
    h = torch.empty((N, S), dtype=pooled.dtype, device=pooled.device)
    s = torch.empty((N, C), dtype=pooled.dtype, device=pooled.device)
    _gemm(_rows(pooled), _rows(w1), N, S, C, _HIDDEN, activation, S, b1, h)
    _gemm(_rows(h), _rows(w2), N, C, S, _SCALE, scale_activation, C, b2, s)
    return s


def _excite_bwd(pooled, ds, w1, b1, w2, b2, activation, scale_activation, HW):
    """(scale, dpooled / HW, grad w1, grad b1, grad w2, grad b2): six launches, the parameter
    gradients over the images among them."""
    N, C = pooled.shape
    S = w1.shape[0]
    new = lambda *shape: torch.empty(shape, dtype=pooled.dtype, device=pooled.device)  # noqa: E731
    z1, h, dz1, s, dz2, dp = new(N, S), new(N, S), new(N, S), new(N, C), new(N, C), new(N, C)
    gw1, gb1, gw2, gb2 = new(S, C), new(S), new(C, S), new(C)
    _gemm(_rows(pooled), _rows(w1), N, S, C, _HIDDEN_BWD, activation, S, b1, z1, h)
    _gemm(_rows(h), _rows(w2), N, C, S, _SCALE_BWD, scale_activation, C, b2, s, ds, dz2)
    _gemm(_rows(dz2), _cols(w2), N, S, C, _HIDDEN_GRAD, activation, S, z1, dz1)  # (dz2 W2) * act'(z1)
    _gemm(_rows(dz1), _cols(w1), N, C, S, _POOLED_GRAD, "identity", C, dp, dp, HW=HW)  # dz1 W1 / HW
    _gemm(_cols(dz2), _cols(h, True), C, S + 1, N, _PARAM_GRAD, "identity", S, gw2, gw2, gb2)  # dz2^T h
    _gemm(_cols(dz1), _cols(pooled, True), S, C + 1, N, _PARAM_GRAD, "identity", C, gw1, gw1, gb1)  # dz1^T p
    return s, dp, gw1, gb1, gw2, gb2


def squeeze_excite_fwd(x, w1, b1, w2, b2, activation, scale_activation, memory_format):
    """x dense in ``memory_format``; parameters (S, C), (S,), (C, S), (C,) in the accumulation
    dtype, contiguous. Returns (y in ``memory_format``, pooled (N, C))."""
    N, C = x.shape[0], x.shape[1]
    acc = w1.dtype
    if N == 0:
        return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=memory_format), \
            torch.empty((0, C), dtype=acc, device=x.device)
    pooled = _reduce(x, None, acc)
    s = _excite_fwd(pooled, w1, b1, w2, b2, activation, scale_activation)
    return _apply(x, s, None, memory_format), pooled


def squeeze_excite_bwd(g, x, pooled, w1, b1, w2, b2, activation, scale_activation, memory_format):
    """g, x dense in ``memory_format``; returns (grad_x, grad_w1 (S, C), grad_b1, grad_w2 (C, S),
    grad_b2), the parameter grads in the accumulation dtype."""
    N, C = x.shape[0], x.shape[1]
    if N == 0:
        return (torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=memory_format),
                torch.zeros_like(w1), torch.zeros_like(b1), torch.zeros_like(w2), torch.zeros_like(b2))
    ds = _reduce(x, g, pooled.dtype)
    s, dp, gw1, gb1, gw2, gb2 = _excite_bwd(pooled, ds, w1, b1, w2, b2, activation, scale_activation,
                                            x.shape[2] * x.shape[3])
    return _apply(g, s, dp, memory_format), gw1, gb1, gw2, gb2
