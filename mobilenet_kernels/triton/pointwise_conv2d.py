"""pointwise_conv2d (1x1 conv), Triton kernels and launchers.

Forward: out[m, co] = act(sum_ci x[m, ci] w[co, ci] + b[co]) + r[m, co] over the M = N*H*W pixels,
         one GEMM tile [BLOCK_M pixels x BLOCK_N output channels] per program with tl.dot over the
         input channels; bias, activation and residual add in the epilogue, rounded once at the
         store. The stats variant (no bias, identity, no residual) walks ITERS pixel tiles per program
         and emits, per (program, channel), centred partials (count, shift, mean - shift, M2) and a
         plain sum of the output as stored, merged afterwards in a fixed order (triton/_partials.py):
         BatchNorm's statistics pass never re-reads the conv output.
Backward: grad_input = g . W is the forward GEMM with W's strides swapped (no epilogue).
          grad_weight[co, ci] = sum_m g[m, co] x[m, ci] and grad_bias[co] = sum_m g[m, co]: split-M,
          one program per (split, co tile, ci tile) reduces a fixed pixel range with tl.dot and
          writes fp32 partials[split]; the splits are summed afterwards in a fixed order. No atomics:
          bitwise deterministic for a given shape and device.
Layouts: NCHW or channels_last, dense. A pixel index m = (n, p) addresses n * stride_n + p * stride_p,
         a channel c * stride_c, so one kernel serves both layouts (NCHW: pixels contiguous, NHWC:
         channels contiguous).
dtypes: float64, float32, float16, bfloat16; accumulation in float32 (float64 for float64). fp32 and
        fp64 dots run at IEEE precision (no TF32), half dots on tensor cores with fp32 accumulation.
Indexing: int64 offsets.
Runs on CPU tensors under TRITON_INTERPRET=1: there half inputs are upcast to float32 before the
kernel (products of two halves are exact in float32, so the sums are those of an fp32-accumulating
MMA), outputs are stored as float32 and rounded by torch, and the stats round to the input dtype in
software first.
Limits: block sizes are a fixed heuristic, not autotuned; the expand/project GEMMs of MobileNets
        have K = 16..960, so a K smaller than 16 pads the dot with masked zeros.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..activations import activation_code
from ._activations import act_forward
from ._alignment import channel_multiple, multiple
from ._partials import chan_update, merge_centred_partials, store_centred_partials
from .depthwise_conv2d import _round_bf16

# Programs along the pixel axis (times output-channel tiles) aimed at by the kernels that write
# per-program partials (stats, grad_weight): bounds the partials' size; from the shape only, so the
# reduction order never depends on the device.
_TARGET_PROGRAMS = 1024
_ROUND_NONE, _ROUND_BF16, _ROUND_FP16 = 0, 1, 2


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    if IEEE:
        d = tl.dot(a, b, input_precision="ieee")
    else:
        d = tl.dot(a, b)
    return d


@triton.jit
def _pixel_offsets(m, HW, stride_n, stride_p):
    """Offset of pixel m = (n, p) (channel 0) in a dense (N, C, H, W) tensor, int64."""
    m = m.to(tl.int64)
    return (m // HW) * stride_n + (m % HW) * stride_p


@triton.jit
def _pointwise_conv2d_fwd_kernel(
    x_ptr,  # (M pixels, K channels) through (stride_xn, stride_xp, stride_xk)
    w_ptr,  # a contiguous matrix of row stride stride_w; the B operand (K, Co) is it transposed if TRANS_W
    b_ptr,  # (Co,) accumulation dtype; read only if HAS_BIAS
    r_ptr,  # (M, Co) residual, through the output's strides; read only if HAS_RESIDUAL
    y_ptr,  # (M, Co) through (stride_yn, stride_yp, stride_yc); x's dtype (fp32 under the interpreter)
    stats_ptr,  # (5, programs along pixels, Co) accumulation dtype; written only if STATS
    M, HW, K, Co, ITERS,
    stride_xn, stride_xp, stride_xk, stride_w, stride_yn, stride_yp, stride_yc,
    HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, ACT: tl.constexpr, STATS: tl.constexpr,
    ROUND: tl.constexpr, IEEE: tl.constexpr, TRANS_W: tl.constexpr,
    K_MULT: tl.constexpr, N_MULT: tl.constexpr, X_MULT: tl.constexpr, Y_MULT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    acc_ty = b_ptr.dtype.element_ty
    # The same values, seen as multiples (_alignment): 16-byte loads of x, W, y at any channel count.
    # K_MULT, N_MULT divide K and Co (the masks then hold per vector); X_MULT, Y_MULT the pixel strides.
    K, Co = multiple(K, K_MULT), multiple(Co, N_MULT)
    stride_xn, stride_xp = multiple(stride_xn, X_MULT), multiple(stride_xp, X_MULT)
    stride_yn, stride_yp = multiple(stride_yn, Y_MULT), multiple(stride_yp, Y_MULT)
    if TRANS_W:  # W is (Co, K)
        stride_w = multiple(stride_w, K_MULT)
    else:  # W is (K, Co)
        stride_w = multiple(stride_w, N_MULT)
    pid_m = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < Co
    if HAS_BIAS:
        bias = tl.load(b_ptr + cols, mask=col_mask, other=0.0)
    count = tl.zeros([BLOCK_N], acc_ty)
    shift = tl.zeros([BLOCK_N], acc_ty)
    mean = tl.zeros([BLOCK_N], acc_ty)  # relative to shift
    m2 = tl.zeros([BLOCK_N], acc_ty)
    plain_sum = tl.zeros([BLOCK_N], acc_ty)
    for it in range(ITERS):
        rows = (pid_m * ITERS + it).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_mask = rows < M
        x_rows = _pixel_offsets(rows, HW, stride_xn, stride_xp)
        acc = tl.zeros([BLOCK_M, BLOCK_N], acc_ty)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_mask = ks < K
            a = tl.load(x_ptr + x_rows[:, None] + ks.to(tl.int64)[None, :] * stride_xk,
                        mask=row_mask[:, None] & k_mask[None, :], other=0.0)
            if TRANS_W:  # B[k, n] = W[n, k]
                w_offs = ks.to(tl.int64)[:, None] + cols.to(tl.int64)[None, :] * stride_w
            else:  # B[k, n] = W[k, n]
                w_offs = ks.to(tl.int64)[:, None] * stride_w + cols.to(tl.int64)[None, :]
            b = tl.load(w_ptr + w_offs, mask=k_mask[:, None] & col_mask[None, :], other=0.0)
            acc += _dot(a, b, IEEE).to(acc_ty)
        if HAS_BIAS:
            acc += bias[None, :]
        y = act_forward(acc, ACT)
        y_offs = _pixel_offsets(rows, HW, stride_yn, stride_yp)[:, None] + cols.to(tl.int64)[None, :] * stride_yc
        mask = row_mask[:, None] & col_mask[None, :]
        if HAS_RESIDUAL:
            y += tl.load(r_ptr + y_offs, mask=mask, other=0.0).to(acc_ty)
        if ROUND == 1:
            y = _round_bf16(y)
        elif ROUND == 2:
            y = y.to(tl.float16).to(acc_ty)
        y = y.to(y_ptr.dtype.element_ty)  # the value as stored
        tl.store(y_ptr + y_offs, y, mask=mask)
        if STATS:
            # Centred on the program's first tile mean, merged by Chan's formula (triton/_partials.py).
            v = tl.where(mask, y.to(acc_ty), 0.0)
            n_b = tl.sum(row_mask.to(acc_ty), axis=0)
            sum_v = tl.sum(v, axis=0)
            plain_sum += sum_v
            if it == 0:
                shift = sum_v * (1.0 / tl.maximum(n_b, 1.0))
            u = tl.where(mask, v - shift[None, :], 0.0)
            count, mean, m2 = chan_update(count, mean, m2, n_b, tl.sum(u, axis=0), tl.sum(u * u, axis=0))
    if STATS:
        store_centred_partials(stats_ptr, pid_m, Co, cols, col_mask, count, shift, mean, m2, plain_sum)


@triton.jit
def _pointwise_conv2d_wgrad_kernel(
    g_ptr,  # (M, Co) grad_output through (stride_gn, stride_gp, stride_gc)
    x_ptr,  # (M, Ci) input through (stride_xn, stride_xp, stride_xc)
    pw_ptr,  # (splits, Co, Ci) accumulation dtype: per-split grad_weight
    pb_ptr,  # (splits, Co) accumulation dtype: per-split grad_bias; written by the ci-tile-0 programs if GRAD_BIAS
    M, HW, Co, Ci, ITERS,  # a split reduces ITERS pixel tiles
    stride_gn, stride_gp, stride_gc, stride_xn, stride_xp, stride_xc,
    GRAD_BIAS: tl.constexpr, IEEE: tl.constexpr,
    CO_MULT: tl.constexpr, CI_MULT: tl.constexpr, G_MULT: tl.constexpr, X_MULT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr,
):
    acc_ty = pw_ptr.dtype.element_ty
    # As in the forward (_alignment): CO_MULT, CI_MULT divide Co and Ci (Ci also the partials' row
    # stride); G_MULT, X_MULT the pixel strides of g and x.
    Co, Ci = multiple(Co, CO_MULT), multiple(Ci, CI_MULT)
    stride_gn, stride_gp = multiple(stride_gn, G_MULT), multiple(stride_gp, G_MULT)
    stride_xn, stride_xp = multiple(stride_xn, X_MULT), multiple(stride_xp, X_MULT)
    split = tl.program_id(0)
    co = tl.program_id(1) * BLOCK_CO + tl.arange(0, BLOCK_CO)
    ci = tl.program_id(2) * BLOCK_CI + tl.arange(0, BLOCK_CI)
    co_mask = co < Co
    ci_mask = ci < Ci
    acc = tl.zeros([BLOCK_CO, BLOCK_CI], acc_ty)
    bias_acc = tl.zeros([BLOCK_CO], acc_ty)
    for it in range(ITERS):
        rows = (split * ITERS + it).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_mask = rows < M
        g_t = tl.load(g_ptr + co.to(tl.int64)[:, None] * stride_gc
                      + _pixel_offsets(rows, HW, stride_gn, stride_gp)[None, :],
                      mask=co_mask[:, None] & row_mask[None, :], other=0.0)  # [BLOCK_CO, BLOCK_M]
        x = tl.load(x_ptr + _pixel_offsets(rows, HW, stride_xn, stride_xp)[:, None]
                    + ci.to(tl.int64)[None, :] * stride_xc,
                    mask=row_mask[:, None] & ci_mask[None, :], other=0.0)  # [BLOCK_M, BLOCK_CI]
        acc += _dot(g_t, x, IEEE).to(acc_ty)
        if GRAD_BIAS:
            bias_acc += tl.sum(g_t.to(acc_ty), axis=1)
    base = split.to(tl.int64) * Co
    tl.store(pw_ptr + (base + co.to(tl.int64))[:, None] * Ci + ci[None, :], acc,
             mask=co_mask[:, None] & ci_mask[None, :])
    if GRAD_BIAS:
        if tl.program_id(2) == 0:
            tl.store(pb_ptr + base + co, bias_acc, mask=co_mask)


# ----------------------------------------------------------------------------- launch helpers


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _interpreted(t: torch.Tensor) -> bool:
    return t.device.type == "cpu"


def _operand(t: torch.Tensor) -> torch.Tensor:
    """A GEMM operand as the kernel reads it: half types upcast to float32 under the interpreter."""
    return t.float() if _interpreted(t) and t.dtype in (torch.float16, torch.bfloat16) else t


def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    """(stride_n, stride_p, stride_c) of a dense (N, C, H, W) tensor: pixel p = h * W + w. A size-1
    dim's stride is arbitrary (contiguity ignores it, and .contiguous() keeps it), so with W = 1 the
    pixels are H's rows: W's stride would address them with whatever it holds."""
    return t.stride(0), t.stride(3) if t.shape[3] != 1 else t.stride(2), t.stride(1)


def _ieee(t: torch.Tensor) -> bool:
    return t.dtype in (torch.float32, torch.float64)


def _block(n: int, cap: int) -> int:
    return max(16, min(triton.next_power_of_2(max(n, 1)), cap))


def _gemm_blocks(M: int, K: int, Co: int, dtype: torch.dtype, interpreted: bool) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps). Under the interpreter few large tiles (each program
    costs a fixed overhead, whatever its size); on a GPU 128 x (up to) 128 tiles, K in steps of 32
    (64 for half types), narrower for float64."""
    if interpreted:
        block_n, block_k = _block(Co, 128), _block(K, 128)
        return _block(M, max(16, 16384 // block_n)), block_n, block_k, 4
    wide = dtype in (torch.float16, torch.bfloat16)
    block_n = _block(Co, 128 if dtype != torch.float64 else 64)
    block_k = _block(K, 64 if wide else 32)
    block_m = 128 if dtype != torch.float64 else 64
    return block_m, block_n, block_k, 8 if block_n >= 128 else 4


def _round_mode(dtype: torch.dtype, interpreted: bool) -> int:
    if not interpreted:
        return _ROUND_NONE
    return {torch.bfloat16: _ROUND_BF16, torch.float16: _ROUND_FP16}.get(dtype, _ROUND_NONE)


def _gemm(x, w, trans_w, Co, bias, residual, activation, fmt, stats, out_dtype):
    """y (N, Co, H, W) in ``fmt`` = act(x . B + bias) + residual, and the stats partials if ``stats``;
    B = w^T if ``trans_w`` else w, for a contiguous matrix w."""
    N, K, H, W = x.shape
    M, HW = N * H * W, H * W
    interpreted = _interpreted(x)
    store = torch.float32 if interpreted and out_dtype in (torch.float16, torch.bfloat16) else out_dtype
    y = torch.empty((N, Co, H, W), dtype=store, device=x.device, memory_format=fmt)
    acc = _acc(out_dtype)
    if y.numel() == 0:
        return y.to(out_dtype), None
    xo = _operand(x)
    block_m, block_n, block_k, warps = _gemm_blocks(M, K, Co, out_dtype, interpreted)
    n_blocks = triton.cdiv(Co, block_n)
    m_blocks = triton.cdiv(M, block_m)
    if stats:
        iters = triton.cdiv(m_blocks, max(1, _TARGET_PROGRAMS // n_blocks))
        programs = triton.cdiv(m_blocks, iters)
    else:
        iters, programs = 1, m_blocks
    partial = torch.empty((5, programs, Co) if stats else (0,), dtype=acc, device=x.device)
    b = bias if bias is not None else torch.empty(0, dtype=acc, device=x.device)
    r = residual if residual is not None else y
    sx, sy = _strides(xo), _strides(y)
    _pointwise_conv2d_fwd_kernel[(programs, n_blocks)](
        xo, w, b, r, y, partial,
        M, HW, K, Co, iters,
        *sx, w.stride(0), *sy,
        HAS_BIAS=bias is not None, HAS_RESIDUAL=residual is not None, ACT=activation_code(activation), STATS=stats,
        ROUND=_round_mode(out_dtype, interpreted) if stats else _ROUND_NONE, IEEE=_ieee(xo), TRANS_W=trans_w,
        K_MULT=channel_multiple(K), N_MULT=channel_multiple(Co), X_MULT=channel_multiple(K, sx[2]),
        Y_MULT=channel_multiple(Co, sy[2]),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps,
    )
    return y.to(out_dtype), partial


# ----------------------------------------------------------------------------- launchers


def pointwise_conv2d_fwd(x, weight, bias, residual, activation: str, fmt):
    """act(conv2d(x, weight) + bias) + residual in ``fmt`` and x's dtype. x dense in ``fmt``; weight
    (Co, Ci) contiguous in x's dtype; bias (Co,) in the accumulation dtype or None; residual dense in
    ``fmt`` or None."""
    w = _operand(weight)
    return _gemm(x, w, True, weight.shape[0], bias, residual, activation, fmt, False, x.dtype)[0]


def pointwise_conv2d_stats_fwd(x, weight, fmt):
    """The conv (no bias, identity) and the per-channel mean and biased variance of its output as
    stored, in the accumulation dtype (merged as depthwise_conv2d's; triton/_partials.py)."""
    w = _operand(weight)
    Co = weight.shape[0]
    out, partial = _gemm(x, w, True, Co, None, None, "identity", fmt, True, x.dtype)
    acc = _acc(x.dtype)
    if partial is None:
        zeros = torch.zeros(Co, dtype=acc, device=x.device)
        return out, zeros, zeros.clone()
    mean, var = merge_centred_partials(partial)
    return out, mean.to(acc), var.to(acc)


def pointwise_conv2d_bwd(grad_out, x, weight, fmt, output_mask):
    """(grad_input, grad_weight (Co, Ci), grad_bias (Co,)) of the identity-activation 1x1 conv; an
    unrequested gradient is an empty tensor. grad_out and x dense in ``fmt``, weight (Co, Ci)
    contiguous; the weight and bias gradients in the accumulation dtype."""
    N, Ci, H, W = x.shape
    Co = weight.shape[0]
    acc = _acc(x.dtype)
    empty = lambda: torch.empty(0, dtype=x.dtype, device=x.device)  # noqa: E731  (outputs must not alias)
    grad_input, grad_weight, grad_bias = empty(), empty(), empty()
    if output_mask[0]:
        w = _operand(weight)
        grad_input = _gemm(grad_out, w, False, Ci, None, None, "identity", fmt, False, x.dtype)[0]
    if output_mask[1] or output_mask[2]:
        M = N * H * W
        if M == 0:
            grad_weight = torch.zeros((Co, Ci), dtype=acc, device=x.device)
            grad_bias = torch.zeros(Co, dtype=acc, device=x.device)
        else:
            go, xo = _operand(grad_out), _operand(x)
            interpreted = _interpreted(x)
            block_co = _block(Co, 128 if interpreted else 64)
            block_ci = _block(Ci, 128 if interpreted else 64)
            block_m = _block(M, 4096) if interpreted else (64 if x.dtype == torch.float64 else 128)
            tiles = triton.cdiv(Co, block_co) * triton.cdiv(Ci, block_ci)
            m_blocks = triton.cdiv(M, block_m)
            iters = triton.cdiv(m_blocks, max(1, _TARGET_PROGRAMS // tiles))
            splits = triton.cdiv(m_blocks, iters)
            pw = torch.empty((splits, Co, Ci), dtype=acc, device=x.device)
            pb = torch.empty((splits, Co), dtype=acc, device=x.device)
            sg, sx = _strides(go), _strides(xo)
            _pointwise_conv2d_wgrad_kernel[(splits, triton.cdiv(Co, block_co), triton.cdiv(Ci, block_ci))](
                go, xo, pw, pb, M, H * W, Co, Ci, iters, *sg, *sx,
                GRAD_BIAS=bool(output_mask[2]), IEEE=_ieee(xo), CO_MULT=channel_multiple(Co),
                CI_MULT=channel_multiple(Ci), G_MULT=channel_multiple(Co, sg[2]), X_MULT=channel_multiple(Ci, sx[2]),
                BLOCK_M=block_m, BLOCK_CO=block_co, BLOCK_CI=block_ci, num_warps=4,
            )
            # Stage 2: a fixed-order sum over the splits (deterministic).
            grad_weight, grad_bias = pw.sum(dim=0), pb.sum(dim=0)
        if not output_mask[1]:
            grad_weight = empty()
        if not output_mask[2]:
            grad_bias = empty()
    return grad_input, grad_weight, grad_bias
