"""batch_norm_act, Triton kernels and launchers.

Eval: BatchNorm with running statistics (folded per program to one per-channel scale/shift) +
      activation, forward; backward writes grad_input and per-program partial sums of g * x_hat and
      g (g = grad_output * act'(z)), summed per channel afterwards in a fixed order.
Train: forward = a statistics pass (per-program shifted sums, merged in float64) + the eval apply
       kernel on the batch statistics; backward = the eval reduction (without grad_input) + a
       grad_input pass.
Layouts: any (N, C, *) tensor made dense as NCHW or channels_last; a program owns a
         [BLOCK_M pixels x BLOCK_C channels] tile addressed through (n, c, pixel) strides.
dtypes: float64, float32, float16, bfloat16; arithmetic in float32 (float64 for float64 input).
Indexing: int64 offsets. Runs on CPU tensors under TRITON_INTERPRET=1.
Tuning: on a GPU the apply pass's tile (BLOCK_M, BLOCK_C, num_warps) is picked per shape by timing
        numerics-identical candidates (triton/_tuning.py, eval_fwd_configs); the passes that write
        per-program partials keep the fixed heuristic.
Limits: the interpreter rounds fp32 -> bf16 toward zero (GPUs round to nearest even), so on CPU
        tensors bf16 results are stored as fp32 and rounded by torch (``_store_dtype``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..activations import activation_code
from ._activations import act_derivative, act_forward
from ._alignment import channel_multiple, multiple
from ._tuning import LaunchTuner, tile_candidates, tuning_enabled


@triton.jit
def _fold_batch_norm(mean_ptr, var_ptr, w_ptr, b_ptr, cols, col_mask, eps, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr):
    mean = tl.load(mean_ptr + cols, mask=col_mask, other=0.0)
    var = tl.load(var_ptr + cols, mask=col_mask, other=1.0)
    if var.dtype.is_fp64():
        rstd = 1.0 / tl.sqrt(var + eps)
    else:  # IEEE-rounded, as the C++/CUDA kernels compute it (plain fp32 sqrt and / are approximate)
        rstd = tl.div_rn(1.0, tl.sqrt_rn(var + eps))
    scale = rstd
    if HAS_WEIGHT:
        scale = tl.load(w_ptr + cols, mask=col_mask, other=1.0) * rstd
    shift = -mean * scale
    if HAS_BIAS:
        shift += tl.load(b_ptr + cols, mask=col_mask, other=0.0)
    return mean, rstd, scale, shift


@triton.jit
def _apply(x, scale, shift, ACT: tl.constexpr):
    """act(x * scale + shift): the eval (and training) forward's arithmetic, scale/shift from
    _fold_batch_norm broadcast to x's tile. Shared with the depthwise kernels that apply a BatchNorm
    to their input where they load it (triton/depthwise_conv2d.py, X_BN): the same bits."""
    return act_forward(x * scale + shift, ACT)


@triton.jit
def _tile_offsets(pid_m, pid_c, M, C, HW, stride_n, stride_c, stride_p, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
                  MULT: tl.constexpr):
    C, stride_n, stride_p = multiple(C, MULT), multiple(stride_n, MULT), multiple(stride_p, MULT)  # (_alignment)
    rows = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    n = rows // HW
    p = rows - n * HW
    offs = (n * stride_n + p * stride_p)[:, None] + cols.to(tl.int64)[None, :] * stride_c
    row_mask = rows < M
    col_mask = cols < C
    return offs, cols, col_mask, row_mask[:, None] & col_mask[None, :]


@triton.jit
def _batch_norm_act_eval_fwd_kernel(
    x_ptr,  # (N, C, HW) dense, NCHW or NHWC as the strides say
    y_ptr,  # same shape and strides as x
    mean_ptr, var_ptr, w_ptr, b_ptr,  # (C,), accumulation dtype
    M, C, HW, stride_n, stride_c, stride_p, eps,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, MULT: tl.constexpr,
):
    offs, cols, col_mask, mask = _tile_offsets(
        tl.program_id(0), tl.program_id(1), M, C, HW, stride_n, stride_c, stride_p, BLOCK_M, BLOCK_C, MULT
    )
    _, _, scale, shift = _fold_batch_norm(mean_ptr, var_ptr, w_ptr, b_ptr, cols, col_mask, eps, HAS_WEIGHT, HAS_BIAS)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(scale.dtype)
    y = _apply(x, scale[None, :], shift[None, :], ACT)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _batch_norm_act_eval_bwd_kernel(
    gy_ptr, x_ptr, gx_ptr,  # (N, C, HW) dense, same strides (gx written only if WRITE_GX)
    mean_ptr, var_ptr, w_ptr, b_ptr,  # (C,), accumulation dtype
    partial_ptr,  # (2, num_programs_m, C), accumulation dtype: sum g * x_hat, sum g
    M, C, HW, stride_n, stride_c, stride_p, eps,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr, WRITE_GX: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, MULT: tl.constexpr,
):
    pid_m = tl.program_id(0)
    offs, cols, col_mask, mask = _tile_offsets(
        pid_m, tl.program_id(1), M, C, HW, stride_n, stride_c, stride_p, BLOCK_M, BLOCK_C, MULT
    )
    mean, rstd, scale, shift = _fold_batch_norm(
        mean_ptr, var_ptr, w_ptr, b_ptr, cols, col_mask, eps, HAS_WEIGHT, HAS_BIAS
    )
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(scale.dtype)
    gy = tl.load(gy_ptr + offs, mask=mask, other=0.0).to(scale.dtype)
    g = gy * act_derivative(x * scale[None, :] + shift[None, :], ACT)
    g = tl.where(mask, g, 0.0)
    if WRITE_GX:
        tl.store(gx_ptr + offs, (g * scale[None, :]).to(gx_ptr.dtype.element_ty), mask=mask)
    x_hat = (x - mean[None, :]) * rstd[None, :]
    partial_row = pid_m.to(tl.int64) * C + cols
    tl.store(partial_ptr + partial_row, tl.sum(g * x_hat, axis=0), mask=col_mask)
    tl.store(partial_ptr + tl.num_programs(0).to(tl.int64) * C + partial_row, tl.sum(g, axis=0), mask=col_mask)


@triton.jit
def _batch_stats_kernel(
    x_ptr,  # (N, C, HW) dense
    partial_ptr,  # (2, num_programs_m, C) fp32/fp64: sum of x - K_c and of (x - K_c)^2
    M, C, HW, stride_n, stride_c, stride_p,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, MULT: tl.constexpr, ACC: tl.constexpr,
):
    """Shifted sums: K_c is channel c's first element (0 when not finite: x - Inf is NaN for every x),
    so a large mean does not cancel the variance."""
    pid_m = tl.program_id(0)
    offs, cols, col_mask, mask = _tile_offsets(
        pid_m, tl.program_id(1), M, C, HW, stride_n, stride_c, stride_p, BLOCK_M, BLOCK_C, MULT
    )
    k = tl.load(x_ptr + cols.to(tl.int64) * stride_c, mask=col_mask, other=0.0).to(ACC)
    k = tl.where(k - k == 0.0, k, 0.0)
    d = tl.where(mask, tl.load(x_ptr + offs, mask=mask, other=0.0).to(ACC) - k[None, :], 0.0)
    partial_row = pid_m.to(tl.int64) * C + cols
    tl.store(partial_ptr + partial_row, tl.sum(d, axis=0), mask=col_mask)
    tl.store(partial_ptr + tl.num_programs(0).to(tl.int64) * C + partial_row, tl.sum(d * d, axis=0), mask=col_mask)


@triton.jit
def _train_dx_coefficients(mean_ptr, var_ptr, w_ptr, b_ptr, sum_gxhat_ptr, sum_g_ptr, cols, col_mask, M, eps,
                           HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr):
    """The per-channel coefficients of the training grad_input (_train_dx), for channels `cols`."""
    mean, rstd, scale, shift = _fold_batch_norm(mean_ptr, var_ptr, w_ptr, b_ptr, cols, col_mask, eps, HAS_WEIGHT, HAS_BIAS)
    mean_g = tl.load(sum_g_ptr + cols, mask=col_mask, other=0.0) / M
    mean_gxhat = tl.load(sum_gxhat_ptr + cols, mask=col_mask, other=0.0) / M
    return mean, rstd, scale, shift, mean_g, mean_gxhat


@triton.jit
def _train_dx(x, gy, mean, rstd, scale, shift, mean_g, mean_gxhat, ACT: tl.constexpr):
    """grad_in = scale * (g - sum_g / M - x_hat * sum_gxhat / M), g = gy * act'(x * scale + shift),
    the coefficients (_train_dx_coefficients) broadcast to x's tile. Shared with the fused depthwise
    backward (triton/depthwise_conv2d.py), which computes grad_in where it loads it: the same bits."""
    g = gy * act_derivative(x * scale + shift, ACT)
    x_hat = (x - mean) * rstd
    return scale * (g - mean_g - x_hat * mean_gxhat)


@triton.jit
def _batch_norm_act_train_dx_kernel(
    gy_ptr, x_ptr, gx_ptr,  # (N, C, HW) dense, same strides
    mean_ptr, var_ptr, w_ptr, b_ptr,  # (C,), accumulation dtype
    sum_gxhat_ptr, sum_g_ptr,  # (C,), accumulation dtype
    M, C, HW, stride_n, stride_c, stride_p, eps,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, MULT: tl.constexpr,
):
    """grad_in = scale * (g - sum_g / M - x_hat * sum_gxhat / M) (_train_dx)."""
    offs, cols, col_mask, mask = _tile_offsets(
        tl.program_id(0), tl.program_id(1), M, C, HW, stride_n, stride_c, stride_p, BLOCK_M, BLOCK_C, MULT
    )
    mean, rstd, scale, shift, mean_g, mean_gxhat = _train_dx_coefficients(
        mean_ptr, var_ptr, w_ptr, b_ptr, sum_gxhat_ptr, sum_g_ptr, cols, col_mask, M, eps, HAS_WEIGHT, HAS_BIAS
    )
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(scale.dtype)
    gy = tl.load(gy_ptr + offs, mask=mask, other=0.0).to(scale.dtype)
    gx = _train_dx(x, gy, mean[None, :], rstd[None, :], scale[None, :], shift[None, :], mean_g[None, :],
                   mean_gxhat[None, :], ACT)
    tl.store(gx_ptr + offs, gx.to(gx_ptr.dtype.element_ty), mask=mask)


def _blocks(M: int, C: int) -> tuple[int, int]:
    block_c = min(triton.next_power_of_2(max(C, 1)), 32)
    block_m = min(triton.next_power_of_2(max(M, 1)), 4096 // block_c)
    return block_m, block_c


def _geometry(x: torch.Tensor) -> tuple[int, int, int, int, int, int]:
    """(M, C, HW, stride_n, stride_c, stride_p) of a dense NCHW or channels_last tensor."""
    N, C = x.shape[0], x.shape[1]
    HW = x.numel() // (N * C) if N * C else 0
    if x.dim() == 4 and not x.is_contiguous():  # channels_last
        return N * HW, C, HW, HW * C, 1, C
    return N * HW, C, HW, C * HW, HW, 1


def _store_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype a kernel writes: bf16 outputs of the CPU interpreter go through fp32 (see header)."""
    return torch.float32 if t.device.type == "cpu" and t.dtype == torch.bfloat16 else t.dtype


class _Launch:
    """What every launcher derives from a dense x: the geometry arguments, the grid, the per-channel
    parameters in the accumulation dtype (a missing weight/bias is passed as a dummy pointer that
    HAS_WEIGHT/HAS_BIAS keep unread), and the constexpr flags."""

    def __init__(self, x, mean=None, var=None, weight=None, bias=None, activation="identity", eps=0.0):
        self.acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        M, C, HW, sn, sc, sp = _geometry(x)
        self.C = C
        self.geometry = (M, C, HW, sn, sc, sp)
        block_m, block_c = _blocks(M, C)
        self.grid = (triton.cdiv(M, block_m), triton.cdiv(C, block_c))
        self.blocks = dict(BLOCK_M=block_m, BLOCK_C=block_c, MULT=channel_multiple(C, sc))
        if mean is not None:
            mean, var = (t.to(self.acc).contiguous() for t in (mean, var))
            # Triton passes float scalars as fp32: for float64, fold eps into var here instead.
            self.eps = eps
            if self.acc == torch.float64:
                var, self.eps = var + eps, 0.0
            w = weight.to(self.acc).contiguous() if weight is not None else mean
            b = bias.to(self.acc).contiguous() if bias is not None else mean
            self.params = (mean, var, w, b)
        self.flags = dict(HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, ACT=activation_code(activation),
                          **self.blocks)

    def zeros(self, device):
        return torch.zeros(self.C, dtype=self.acc, device=device)

    def partials(self, device):
        return torch.empty((2, self.grid[0], self.C), dtype=self.acc, device=device)


def eval_fwd_configs(x) -> list[tuple[int, int, int]]:
    """The eval forward's launch configs (BLOCK_M, BLOCK_C, num_warps) for LaunchTuner
    (triton/_tuning.py), the heuristic first: an elementwise pass, so all give the same bits."""
    M, C = _geometry(x)[:2]
    return tile_candidates((*_blocks(M, C), 4), M, C, (16, 32, 64), ((2048, 4), (8192, 8)))


_EVAL_FWD_TUNER = LaunchTuner("batch_norm_act_eval_fwd")


def batch_norm_act_eval_fwd(x, mean, var, weight, bias, eps, activation, memory_format, config=None):
    """x dense in ``memory_format``; returns y in the same format. `config` (BLOCK_M, BLOCK_C,
    num_warps) forces a launch config (tests); else the tuner picks one."""
    y = torch.empty(x.shape, dtype=_store_dtype(x), device=x.device, memory_format=memory_format)
    if x.numel() == 0:
        return y.to(x.dtype)
    L = _Launch(x, mean, var, weight, bias, activation, eps)
    M, C = L.geometry[:2]

    def run(cfg):
        block_m, block_c, warps = cfg
        flags = dict(L.flags, BLOCK_M=block_m, BLOCK_C=block_c)
        _batch_norm_act_eval_fwd_kernel[(triton.cdiv(M, block_m), triton.cdiv(C, block_c))](
            x, y, *L.params, *L.geometry, L.eps, **flags, num_warps=warps)

    key = (x.device, x.dtype, memory_format, tuple(x.shape), activation, weight is not None, bias is not None)
    _EVAL_FWD_TUNER.launch(key, eval_fwd_configs(x), run, tuning_enabled(x.device), force=config)
    return y.to(x.dtype)


def batch_norm_act_eval_bwd(gy, x, mean, var, weight, bias, eps, activation, memory_format):
    """gy, x dense in ``memory_format``; returns (grad_input, sum g * x_hat, sum g)."""
    L = _Launch(x, mean, var, weight, bias, activation, eps)
    gx = torch.empty(x.shape, dtype=_store_dtype(x), device=x.device, memory_format=memory_format)
    if x.numel() == 0:
        return gx.to(x.dtype), L.zeros(x.device), L.zeros(x.device)
    partial = L.partials(x.device)
    _batch_norm_act_eval_bwd_kernel[L.grid](gy, x, gx, *L.params, partial, *L.geometry, L.eps, WRITE_GX=True, **L.flags)
    # Stage 2: a fixed-order reduction over the programs' partial rows (deterministic).
    return gx.to(x.dtype), partial[0].sum(dim=0), partial[1].sum(dim=0)


def batch_stats(x):
    """Batch mean and biased variance per channel of x (dense NCHW or channels_last), in the
    accumulation dtype: per-program shifted sums, merged in float64 in a fixed order."""
    L = _Launch(x)
    if x.numel() == 0:
        return L.zeros(x.device), L.zeros(x.device)
    partial = L.partials(x.device)
    acc = tl.float64 if L.acc == torch.float64 else tl.float32
    _batch_stats_kernel[L.grid](x, partial, *L.geometry, ACC=acc, **L.blocks)
    M, C = L.geometry[0], L.C
    k = x[0].reshape(C, -1)[:, 0].double()
    k = torch.where(torch.isfinite(k), k, 0.0)  # the kernel's K_c
    s1, s2 = partial.double().sum(dim=1)
    mean = k + s1 / M
    var = ((s2 - s1 * s1 / M) / M).clamp_min(0)
    return mean.to(L.acc), var.to(L.acc)


class Apply:
    """A BatchNorm + activation applied by another kernel to the tensor it loads (the depthwise
    kernels' X_BN): the parameters in the accumulation dtype (``params``: mean, var, weight, bias,
    dummies for absent ones), ``eps`` and the flags, as the apply kernel takes them, so that
    _fold_batch_norm and _apply give the same bits there."""

    def __init__(self, x, mean, var, weight, bias, eps, activation):
        self._launch = L = _Launch(x, mean, var, weight, bias, activation, eps)
        self.params, self.eps = L.params, L.eps
        self.flags = dict(HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, ACT=activation_code(activation))


class TrainDx(Apply):
    """The training backward's reduction over (gy, x), and what its grad_input pass needs: Apply's
    parameters and flags, the sums and the count ``M``. The fused depthwise backward
    (triton/depthwise_conv2d.py) passes these to _train_dx_coefficients and _train_dx in its own
    kernel, instead of this module's grad_input pass (``grad_input``)."""

    def __init__(self, gy, x, mean, var, weight, bias, eps, activation):
        super().__init__(x, mean, var, weight, bias, eps, activation)
        L = self._launch
        self.M = L.geometry[0]
        self._gy, self._x = gy, x
        if x.numel() == 0:
            self.sum_gxhat, self.sum_g = L.zeros(x.device), L.zeros(x.device)
            return
        partial = L.partials(x.device)
        _batch_norm_act_eval_bwd_kernel[L.grid](gy, x, x, *L.params, partial, *L.geometry, L.eps, WRITE_GX=False,
                                                **L.flags)
        self.sum_gxhat, self.sum_g = partial[0].sum(dim=0), partial[1].sum(dim=0)

    def grad_input(self, memory_format):
        x, L = self._x, self._launch
        gx = torch.empty(x.shape, dtype=_store_dtype(x), device=x.device, memory_format=memory_format)
        if x.numel() > 0:
            _batch_norm_act_train_dx_kernel[L.grid](self._gy, x, gx, *L.params, self.sum_gxhat, self.sum_g,
                                                    *L.geometry, L.eps, **L.flags)
        return gx.to(x.dtype)


def batch_norm_act_train_bwd(gy, x, mean, var, weight, bias, eps, activation, memory_format):
    """gy, x dense in ``memory_format``; mean, var the batch statistics of the forward.
    Returns (grad_input, sum g * x_hat, sum g)."""
    dx = TrainDx(gy, x, mean, var, weight, bias, eps, activation)
    return dx.grad_input(memory_format), dx.sum_gxhat, dx.sum_g
