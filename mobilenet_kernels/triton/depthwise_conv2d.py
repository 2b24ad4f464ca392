"""depthwise_conv2d, Triton kernels and launchers.

Forward: act(conv2d(x, w, b, groups=C)), taps unrolled (constexpr kH/kW/stride/dilation), bias and
         activation in the epilogue. The stats variant (no bias, identity) also emits, per (program,
         channel), centred partials (count, shift, mean - shift, M2) of the output as stored (rounded
         to x's dtype); they are merged afterwards in float64 by Chan et al.'s formula, in a fixed order.
         A plain sum rides along: where it is not finite (the channel holds a NaN or an Inf, which
         centring turns into NaN), the mean is that sum / count and the variance NaN, as in torch.
Backward: grad_input is a gather over stride-parity phases: a program owns input pixels of one
          phase (ih % sH, iw % sW), for which the taps that reach an output pixel are known per
          program, so no per-pixel divisibility test and no zero-insertion. grad_weight is fused into
          that kernel (x is read once at the program's input pixels, grad_output once per tap):
          per-program partials[program, kH*kW, C], summed afterwards in a fixed order; grad_bias
          is a per-program channel sum of grad_output, summed the same way. No atomics: bitwise
          deterministic for a given shape and device.
Layouts: NCHW or channels_last, dense; a program owns [BLOCK_P pixels x BLOCK_C channels] (NHWC,
         channels contiguous, wide BLOCK_C) or [BLOCK_C x BLOCK_P] (NCHW, pixels contiguous, narrow
         BLOCK_C); pixels are flattened over (n, h, w), so small images do not waste lanes.
dtypes: float64, float32, float16, bfloat16; accumulation in the weight's dtype (float32, or float64
        for float64 input). Indexing: int64 memory offsets; pixel indices int32 unless the pixel
        count reaches 2^31 (PIX64).
Runs on CPU tensors under TRITON_INTERPRET=1; as in batch_norm_act.py, bf16 outputs are then stored
as fp32 and rounded by torch, and the stats round to bf16 in software (the interpreter's cast
truncates; GPUs round to nearest even).
Tuning: on a GPU the plain forward's tile (BLOCK_P, BLOCK_C, num_warps) is picked per shape by
        timing numerics-identical candidates (triton/_tuning.py, forward_configs); the statistics
        forward and the backward keep the fixed heuristic (their partials follow the tile).
Limits: every tap is loaded from global memory (L1 catches the reuse): fine for k3, L1-bound for
        k5 (KERNELS.md section 1). grad_weight reduces each tap over the tile's pixels once per
        pixel block. NCHW at stride 2 loses coalescing (strided phase pixels in grad_input, strided
        taps in the forward).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..activations import activation_code
from ._activations import act_forward
from ._alignment import channel_multiple, multiple
from ._partials import chan_update, merge_centred_partials, store_centred_partials
from .batch_norm_act import _apply, _fold_batch_norm, _train_dx, _train_dx_coefficients
from ._tuning import LaunchTuner, tile_candidates, tuning_enabled

# Programs along the pixel axis times channel blocks, aimed at for the kernels that write
# per-program partials (stats, grad_weight, grad_bias): bounds the partials' size; derived from the
# shape only, so the reduction order never depends on the device.
_TARGET_PROGRAMS = 1024
# Elements of one [pixels x channels] tile (4 warps): 8 per thread keeps every kernel within the
# register file on sm_90 for k3; k5 and float64 tiles are halved (the unrolled taps' loads are all
# in flight at once).
_TILE_ELEMENTS = 1024


# ----------------------------------------------------------------------------- tile helpers


@triton.jit
def _pixel_block(block, BLOCK_P: tl.constexpr, PIX64: tl.constexpr):
    if PIX64:
        q = block.to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    else:
        q = block * BLOCK_P + tl.arange(0, BLOCK_P)
    return q


@triton.jit
def _pixel_offset(n, h, w, C, H, W, CHANNELS_LAST: tl.constexpr):
    """Offset of channel 0 at (n, h, w) in a dense (N, C, H, W) tensor."""
    n = n.to(tl.int64)
    if CHANNELS_LAST:
        off = ((n * H + h) * W + w) * C
    else:
        off = n * C * H * W + h.to(tl.int64) * W + w
    return off


@triton.jit
def _channel_offset(c, H, W, CHANNELS_LAST: tl.constexpr):
    if CHANNELS_LAST:
        off = c.to(tl.int64)
    else:
        off = c.to(tl.int64) * H * W
    return off


@triton.jit
def _tile(p, c, CHANNELS_LAST: tl.constexpr):
    """p (pixels) + c (channels) as a [pixels, channels] (NHWC) or [channels, pixels] (NCHW) tile."""
    if CHANNELS_LAST:
        t = p[:, None] + c[None, :]
    else:
        t = c[:, None] + p[None, :]
    return t


@triton.jit
def _tile_mask(p_mask, c_mask, CHANNELS_LAST: tl.constexpr):
    if CHANNELS_LAST:
        m = p_mask[:, None] & c_mask[None, :]
    else:
        m = c_mask[:, None] & p_mask[None, :]
    return m


@triton.jit
def _per_channel(v, CHANNELS_LAST: tl.constexpr):
    """A (BLOCK_C,) vector broadcast along the pixels of a tile."""
    if CHANNELS_LAST:
        b = v[None, :]
    else:
        b = v[:, None]
    return b


@triton.jit
def _sum_pixels(t, CHANNELS_LAST: tl.constexpr):
    if CHANNELS_LAST:
        s = tl.sum(t, axis=0)
    else:
        s = tl.sum(t, axis=1)
    return s


@triton.jit
def _round_bf16(v):
    """fp32 -> the nearest bf16 value (ties to even), as fp32. Only for the interpreter (see header)."""
    b = v.to(tl.uint32, bitcast=True)
    r = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) << 16
    return tl.where(v != v, v, r.to(tl.float32, bitcast=True))


@triton.jit
def _as_stored(v, like_ptr, ROUND_BF16: tl.constexpr):
    """v rounded to the dtype of ``like_ptr``'s tensor, as a kernel storing it there would, kept in
    v's dtype (under the interpreter, bf16 by _round_bf16: see header): what a fused kernel computes
    in place of a tensor the unfused sequence writes and reads back."""
    if ROUND_BF16:
        r = _round_bf16(v)
    else:
        r = v.to(like_ptr.dtype.element_ty).to(v.dtype)
    return r


@triton.jit
def _input_batch_norm(mean_ptr, var_ptr, w_ptr, b_ptr, c, c_mask, eps, HAS_WEIGHT: tl.constexpr,
                      HAS_BIAS: tl.constexpr, CHANNELS_LAST: tl.constexpr):
    """X_BN: the per-channel scale and shift of the BatchNorm applied to the input (_fold_batch_norm),
    broadcast to the tiles."""
    _, _, scale, shift = _fold_batch_norm(mean_ptr, var_ptr, w_ptr, b_ptr, c, c_mask, eps, HAS_WEIGHT, HAS_BIAS)
    return _per_channel(scale, CHANNELS_LAST), _per_channel(shift, CHANNELS_LAST)


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _depthwise_conv2d_fwd_kernel(
    x_ptr,  # (N, C, H, W) dense, NHWC if CHANNELS_LAST else NCHW
    w_ptr,  # (KH * KW, C) contiguous (tap-major: a tap's channels adjacent), accumulation dtype
    b_ptr,  # (C,) accumulation dtype; read only if HAS_BIAS
    y_ptr,  # (N, C, OH, OW) dense, x's layout; x's dtype (fp32 for bf16 under the interpreter)
    stats_ptr,  # (5, programs along pixels, C) accumulation dtype: count, shift, mean - shift, M2, sum; if STATS
    # X_BN only: the input is a BatchNorm's input, applied (with X_ACT) where it is loaded; its mean,
    # var, weight, bias (C,) in the accumulation dtype (batch_norm_act.Apply)
    xbn_mean_ptr, xbn_var_ptr, xbn_w_ptr, xbn_b_ptr, xbn_eps,
    C, H, W, OH, OW, P, PH, PW, ITERS,  # P = N * OH * OW; a program walks ITERS pixel blocks
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, STATS: tl.constexpr, ROUND_BF16: tl.constexpr,
    X_BN: tl.constexpr, X_HAS_WEIGHT: tl.constexpr, X_HAS_BIAS: tl.constexpr, X_ACT: tl.constexpr,
    CHANNELS_LAST: tl.constexpr, PIX64: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
    C_MULT: tl.constexpr,  # a power of two dividing C (_alignment.channel_multiple)
):
    acc_ty = w_ptr.dtype.element_ty
    C = multiple(C, C_MULT)  # C itself, now known to Triton as a multiple of C_MULT (_alignment)
    pid_p = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    x_c = _channel_offset(c, H, W, CHANNELS_LAST)
    y_c = _channel_offset(c, OH, OW, CHANNELS_LAST)
    if HAS_BIAS:
        bias = tl.load(b_ptr + c, mask=c_mask, other=0.0)
    if X_BN:
        x_scale, x_shift = _input_batch_norm(xbn_mean_ptr, xbn_var_ptr, xbn_w_ptr, xbn_b_ptr, c, c_mask, xbn_eps,
                                             X_HAS_WEIGHT, X_HAS_BIAS, CHANNELS_LAST)
    count = tl.zeros([BLOCK_C], acc_ty)
    shift = tl.zeros([BLOCK_C], acc_ty)
    mean = tl.zeros([BLOCK_C], acc_ty)  # relative to shift
    m2 = tl.zeros([BLOCK_C], acc_ty)
    plain_sum = tl.zeros([BLOCK_C], acc_ty)
    for it in range(ITERS):
        q = _pixel_block(pid_p * ITERS + it, BLOCK_P, PIX64)
        p_mask = q < P
        ow = q % OW
        t = q // OW
        oh = t % OH
        n = t // OH
        if CHANNELS_LAST:
            acc = tl.zeros([BLOCK_P, BLOCK_C], acc_ty)
        else:
            acc = tl.zeros([BLOCK_C, BLOCK_P], acc_ty)
        for kh in tl.static_range(KH):
            ih = oh * SH - PH + kh * DH
            h_ok = p_mask & (ih >= 0) & (ih < H)
            for kw in tl.static_range(KW):
                iw = ow * SW - PW + kw * DW
                ok = h_ok & (iw >= 0) & (iw < W)
                offs = _tile(_pixel_offset(n, ih, iw, C, H, W, CHANNELS_LAST), x_c, CHANNELS_LAST)
                x_mask = _tile_mask(ok, c_mask, CHANNELS_LAST)
                xv = tl.load(x_ptr + offs, mask=x_mask, other=0.0).to(acc_ty)
                if X_BN:  # the BatchNorm's output as its apply kernel stores it; the padding stays zero
                    xv = tl.where(x_mask, _as_stored(_apply(xv, x_scale, x_shift, X_ACT), x_ptr, ROUND_BF16), 0.0)
                wv = tl.load(w_ptr + (kh * KW + kw) * C + c, mask=c_mask, other=0.0)
                acc += xv * _per_channel(wv, CHANNELS_LAST)
        if HAS_BIAS:
            acc += _per_channel(bias, CHANNELS_LAST)
        y = act_forward(acc, ACT)
        if ROUND_BF16:
            y = _round_bf16(y)
        y = y.to(y_ptr.dtype.element_ty)  # the value as stored
        mask = _tile_mask(p_mask, c_mask, CHANNELS_LAST)
        offs = _tile(_pixel_offset(n, oh, ow, C, OH, OW, CHANNELS_LAST), y_c, CHANNELS_LAST)
        tl.store(y_ptr + offs, y, mask=mask)
        if STATS:
            # Centred on the program's first tile mean, merged by Chan's formula (triton/_partials.py).
            v = tl.where(mask, y.to(acc_ty), 0.0)
            n_b = tl.sum(p_mask.to(acc_ty), axis=0)
            sum_v = _sum_pixels(v, CHANNELS_LAST)
            plain_sum += sum_v
            if it == 0:
                shift = sum_v * (1.0 / tl.maximum(n_b, 1.0))
            u = tl.where(mask, v - _per_channel(shift, CHANNELS_LAST), 0.0)
            count, mean, m2 = chan_update(count, mean, m2, n_b, _sum_pixels(u, CHANNELS_LAST),
                                          _sum_pixels(u * u, CHANNELS_LAST))
    if STATS:
        store_centred_partials(stats_ptr, pid_p, C, c, c_mask, count, shift, mean, m2, plain_sum)


@triton.jit
def _depthwise_conv2d_bwd_kernel(
    gy_ptr,  # (N, C, OH, OW) dense, x's layout
    x_ptr,  # (N, C, H, W) dense; read only if GRAD_WEIGHT
    w_ptr,  # (KH * KW, C) contiguous (tap-major: a tap's channels adjacent), accumulation dtype
    gx_ptr,  # (N, C, H, W) dense, x's layout (fp32 for bf16 under the interpreter); only if GRAD_INPUT
    partial_ptr,  # (programs along pixels, KH * KW, C) accumulation dtype; only if GRAD_WEIGHT
    # BN_DX only: gy_ptr is BatchNorm's grad_output, z_ptr its input (the conv's output, gy's
    # layout); its mean, var, weight, bias and the reduction's sums, (C,) accumulation dtype
    # (batch_norm_act.TrainDx): the conv's grad_output is computed where it is loaded.
    z_ptr, mean_ptr, var_ptr, bnw_ptr, bnb_ptr, sum_gxhat_ptr, sum_g_ptr, M, eps,
    # X_BN only (as the forward's): x is a BatchNorm's input, applied where the weight gradient loads it
    xbn_mean_ptr, xbn_var_ptr, xbn_w_ptr, xbn_b_ptr, xbn_eps,
    C, H, W, OH, OW, PH, PW,
    HQ, WQ, Q, ITERS,  # a phase has HQ x WQ pixel slots per image, Q = N * HQ * WQ
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
    GRAD_INPUT: tl.constexpr, GRAD_WEIGHT: tl.constexpr, TAPS: tl.constexpr,  # TAPS: next_pow2(KH * KW)
    BN_DX: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
    ROUND_BF16: tl.constexpr,
    X_BN: tl.constexpr, X_HAS_WEIGHT: tl.constexpr, X_HAS_BIAS: tl.constexpr, X_ACT: tl.constexpr,
    CHANNELS_LAST: tl.constexpr, PIX64: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
    C_MULT: tl.constexpr,  # a power of two dividing C (_alignment.channel_multiple)
):
    """Input pixel (ih, iw) of phase (rh, rw) = (ih % SH, iw % SW) is read by tap (kh, kw) of output
    pixel ((ih + PH - kh*DH) / SH, ...) iff (rh + PH - kh*DH) % SH == 0 (and likewise for w): a test
    per program, not per pixel. Phases are the fastest-varying program index, so neighbouring
    programs share grad_output rows in L2.
    BN_DX (the fused dw conv + BatchNorm + activation backward): each loaded grad_output value is
    BatchNorm's grad_input at that pixel (batch_norm_act._train_dx, from gy and z), rounded to x's
    dtype as the unfused backward stores it, zero outside the image: that tensor never reaches
    memory, for (K * K) / (S * S) evaluations of _train_dx per output value.
    X_BN (the expand BatchNorm + activation before the conv, pointwise_depthwise_bn_act_train): x is
    that BatchNorm's input, applied where the weight gradient loads it, once per input value."""
    acc_ty = w_ptr.dtype.element_ty
    C = multiple(C, C_MULT)  # C itself, now known to Triton as a multiple of C_MULT (_alignment)
    pid = tl.program_id(0)
    phase = pid % (SH * SW)
    chunk = pid // (SH * SW)
    rh = phase // SW
    rw = phase % SW
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    x_c = _channel_offset(c, H, W, CHANNELS_LAST)
    y_c = _channel_offset(c, OH, OW, CHANNELS_LAST)
    if BN_DX:  # BatchNorm's per-channel coefficients, broadcast to the tiles
        bn_mean, bn_rstd, bn_scale, bn_shift, bn_mean_g, bn_mean_gxhat = _train_dx_coefficients(
            mean_ptr, var_ptr, bnw_ptr, bnb_ptr, sum_gxhat_ptr, sum_g_ptr, c, c_mask, M, eps, HAS_WEIGHT, HAS_BIAS)
        bn_mean = _per_channel(bn_mean, CHANNELS_LAST)
        bn_rstd = _per_channel(bn_rstd, CHANNELS_LAST)
        bn_scale = _per_channel(bn_scale, CHANNELS_LAST)
        bn_shift = _per_channel(bn_shift, CHANNELS_LAST)
        bn_mean_g = _per_channel(bn_mean_g, CHANNELS_LAST)
        bn_mean_gxhat = _per_channel(bn_mean_gxhat, CHANNELS_LAST)
    if X_BN:
        x_scale, x_shift = _input_batch_norm(xbn_mean_ptr, xbn_var_ptr, xbn_w_ptr, xbn_b_ptr, c, c_mask, xbn_eps,
                                             X_HAS_WEIGHT, X_HAS_BIAS, CHANNELS_LAST)
    taps = tl.arange(0, TAPS)
    w_acc = tl.zeros([TAPS, BLOCK_C], acc_ty)
    for it in range(ITERS):
        q = _pixel_block(chunk * ITERS + it, BLOCK_P, PIX64)
        j = q % WQ
        t = q // WQ
        i = t % HQ
        n = t // HQ
        ih = rh + i * SH
        iw = rw + j * SW
        p_mask = (q < Q) & (ih < H) & (iw < W)
        mask = _tile_mask(p_mask, c_mask, CHANNELS_LAST)
        x_offs = _tile(_pixel_offset(n, ih, iw, C, H, W, CHANNELS_LAST), x_c, CHANNELS_LAST)
        if GRAD_WEIGHT:
            xv = tl.load(x_ptr + x_offs, mask=mask, other=0.0).to(acc_ty)
            if X_BN:
                xv = tl.where(mask, _as_stored(_apply(xv, x_scale, x_shift, X_ACT), x_ptr, ROUND_BF16), 0.0)
        if CHANNELS_LAST:
            acc = tl.zeros([BLOCK_P, BLOCK_C], acc_ty)
        else:
            acc = tl.zeros([BLOCK_C, BLOCK_P], acc_ty)
        for kh in tl.static_range(KH):
            off_h = rh + PH - kh * DH
            if off_h % SH == 0:
                oh = i + off_h // SH  # exact division
                h_ok = p_mask & (oh >= 0) & (oh < OH)
                for kw in tl.static_range(KW):
                    off_w = rw + PW - kw * DW
                    if off_w % SW == 0:
                        ow = j + off_w // SW
                        ok = h_ok & (ow >= 0) & (ow < OW)
                        offs = _tile(_pixel_offset(n, oh, ow, C, OH, OW, CHANNELS_LAST), y_c, CHANNELS_LAST)
                        g_mask = _tile_mask(ok, c_mask, CHANNELS_LAST)
                        g = tl.load(gy_ptr + offs, mask=g_mask, other=0.0).to(acc_ty)
                        if BN_DX:
                            zv = tl.load(z_ptr + offs, mask=g_mask, other=0.0).to(acc_ty)
                            g = _train_dx(zv, g, bn_mean, bn_rstd, bn_scale, bn_shift, bn_mean_g, bn_mean_gxhat, ACT)
                            g = tl.where(g_mask, _as_stored(g, gy_ptr, ROUND_BF16), 0.0)
                        if GRAD_INPUT:
                            wv = tl.load(w_ptr + (kh * KW + kw) * C + c, mask=c_mask, other=0.0)
                            acc += g * _per_channel(wv, CHANNELS_LAST)
                        if GRAD_WEIGHT:
                            s = _sum_pixels(g * xv, CHANNELS_LAST)
                            w_acc = tl.where(taps[:, None] == kh * KW + kw, w_acc + s[None, :], w_acc)
        if GRAD_INPUT:
            tl.store(gx_ptr + x_offs, acc.to(gx_ptr.dtype.element_ty), mask=mask)
    if GRAD_WEIGHT:
        offs = (pid.to(tl.int64) * (KH * KW) + taps[:, None]) * C + c[None, :]
        tl.store(partial_ptr + offs, w_acc, mask=(taps[:, None] < KH * KW) & c_mask[None, :])


@triton.jit
def _channel_sum_kernel(
    gy_ptr,  # (N, C, OH, OW) dense, NHWC if CHANNELS_LAST else NCHW
    partial_ptr,  # (programs along pixels, C) accumulation dtype
    C, HW, P, ITERS,  # P = N * HW
    CHANNELS_LAST: tl.constexpr, PIX64: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
    C_MULT: tl.constexpr,  # a power of two dividing C (_alignment.channel_multiple)
):
    acc_ty = partial_ptr.dtype.element_ty
    C = multiple(C, C_MULT)  # C itself, now known to Triton as a multiple of C_MULT (_alignment)
    pid_p = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    acc = tl.zeros([BLOCK_C], acc_ty)
    for it in range(ITERS):
        q = _pixel_block(pid_p * ITERS + it, BLOCK_P, PIX64)
        p_mask = q < P
        if CHANNELS_LAST:
            offs = q.to(tl.int64)[:, None] * C + c[None, :]
        else:
            n = q // HW
            offs = (n.to(tl.int64) * C * HW + (q - n * HW))[None, :] + c.to(tl.int64)[:, None] * HW
        g = tl.load(gy_ptr + offs, mask=_tile_mask(p_mask, c_mask, CHANNELS_LAST), other=0.0)
        acc += _sum_pixels(g.to(acc_ty), CHANNELS_LAST)
    tl.store(partial_ptr + pid_p.to(tl.int64) * C + c, acc, mask=c_mask)


# ----------------------------------------------------------------------------- launch helpers


def _store_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype a kernel writes: bf16 outputs of the CPU interpreter go through fp32 (see header)."""
    return torch.float32 if device.type == "cpu" and dtype == torch.bfloat16 else dtype


def _blocks(pixels: int, C: int, channels_last: bool, taps: int, dtype: torch.dtype,
            interpreted: bool = False) -> tuple[int, int]:
    """(BLOCK_P, BLOCK_C). NHWC: the widest of 64/32/16 contiguous channels that leaves at most 1/8
    of the lanes idle (C = 96 -> 32, 144 -> 32, 72 -> 16); NCHW: few channels, long pixel rows.

    Under the CPU interpreter every program costs ~0.4 s of fixed overhead (it re-patches triton.language
    for each nested @triton.jit call), whatever its size: there, few large tiles (up to 64 channels x
    4096 elements) keep whole-model tests to seconds. Any power-of-two tile is correct."""
    if interpreted:
        block_c = min(triton.next_power_of_2(max(C, 1)), 64)
        return max(16, min(triton.next_power_of_2(max(pixels, 1)), 4096 // block_c)), block_c
    tile = _TILE_ELEMENTS // (2 if taps > 9 else 1) // (2 if dtype == torch.float64 else 1)
    if channels_last:
        block_c = next((bc for bc in (64, 32, 16) if (-C % bc) * 8 <= C), 16)
        block_c = min(block_c, triton.next_power_of_2(max(C, 1)))
    else:
        block_c = min(triton.next_power_of_2(max(C, 1)), 4)
    block_p = max(16, min(triton.next_power_of_2(max(pixels, 1)), tile // block_c))
    return block_p, block_c


def _split(blocks: int, programs: int) -> tuple[int, int]:
    """Spread ``blocks`` pixel blocks over about ``programs`` programs: (blocks per program, programs)."""
    iters = triton.cdiv(blocks, max(1, programs))
    return iters, triton.cdiv(blocks, iters)


def _pix64(blocks: int, iters: int, block_p: int) -> bool:
    """Whether the pixel indices of a launch (the last program may run past the end) need int64."""
    return (blocks + iters) * block_p >= 2**31


def _tap_major(weight: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """(C, [1,] kH, kW) weights as a fresh (kH * kW, C) tensor in ``dtype`` (default: the weight's),
    one copy: a tap's BLOCK_C channels are one contiguous load; from (C, kH, kW) they were BLOCK_C
    loads kH * kW elements apart (GPU run 6 timed the k5 forward of 120 x 28² at 10x cuDNN's time,
    the k3 ones at about 2x). The whole-block kernel takes its depthwise weights the same way."""
    taps = weight.reshape(weight.shape[0], -1).t()
    return torch.empty(taps.shape, dtype=dtype or weight.dtype, device=weight.device).copy_(taps)


def _geometry(x, weight, stride, padding, dilation):
    N, C, H, W = x.shape
    kH, kW = weight.shape[-2:]
    OH = (H + 2 * padding[0] - dilation[0] * (kH - 1) - 1) // stride[0] + 1
    OW = (W + 2 * padding[1] - dilation[1] * (kW - 1) - 1) // stride[1] + 1
    return N, C, H, W, OH, OW, kH, kW


def _taps(kH, kW, stride, dilation) -> dict:
    return dict(KH=kH, KW=kW, SH=stride[0], SW=stride[1], DH=dilation[0], DW=dilation[1])


def forward_configs(x, weight, stride, padding, dilation, fmt) -> list[tuple[int, int, int]]:
    """The forward's launch configs (BLOCK_P, BLOCK_C, num_warps) for LaunchTuner (triton/_tuning.py),
    the heuristic first: all give the same bits (one program per output tile, the taps in a fixed
    order), so only the statistics launch, whose partials follow the tile, keeps the heuristic."""
    N, C, H, W, OH, OW, kH, kW = _geometry(x, weight, stride, padding, dilation)
    P = N * OH * OW
    block_p, block_c = _blocks(P, C, fmt == torch.channels_last, kH * kW, x.dtype, x.device.type == "cpu")
    widths = (16, 32, 64) if fmt == torch.channels_last else (2, 4, 8)
    return tile_candidates((block_p, block_c, 4), P, C, widths, ((1024, 4), (2048, 8)), min_rows=16)


_FORWARD_TUNER = LaunchTuner("depthwise_conv2d_fwd")


def _input_bn_args(x_bn, dummy) -> tuple[tuple, dict]:
    """The X_BN kernel arguments of ``x_bn`` (batch_norm_act.Apply or None: dummies, never read)."""
    if x_bn is None:
        return (dummy,) * 4 + (0.0,), dict(X_BN=False, X_HAS_WEIGHT=False, X_HAS_BIAS=False, X_ACT=0)
    return (*x_bn.params, x_bn.eps), dict(X_BN=True, **{f"X_{k}": v for k, v in x_bn.flags.items()})


def _forward(x, weight, bias, stride, padding, dilation, activation, fmt, stats, config=None, x_bn=None):
    """The forward launch; `config` (BLOCK_P, BLOCK_C, num_warps) forces a launch config (tests),
    else the statistics launch takes the heuristic and the plain one the tuner's choice. ``x_bn``
    (batch_norm_act.Apply): x is that BatchNorm's input, applied where the kernel loads it."""
    N, C, H, W, OH, OW, kH, kW = _geometry(x, weight, stride, padding, dilation)
    assert x.is_contiguous(memory_format=fmt) and weight.is_contiguous() and weight.numel() == C * kH * kW
    channels_last = fmt == torch.channels_last
    out = torch.empty((N, C, OH, OW), dtype=_store_dtype(x.dtype, x.device), device=x.device, memory_format=fmt)
    P = N * OH * OW
    if out.numel() == 0:
        return out.to(x.dtype), None
    partial = None
    w_taps = _tap_major(weight)
    x_bn_args, x_bn_flags = _input_bn_args(x_bn, weight)

    def run(cfg):
        nonlocal partial
        block_p, block_c, warps = cfg
        c_blocks = triton.cdiv(C, block_c)
        blocks = triton.cdiv(P, block_p)
        iters, programs = _split(blocks, _TARGET_PROGRAMS // c_blocks) if stats else (1, blocks)
        partial = torch.empty((5, programs, C) if stats else (0,), dtype=weight.dtype, device=x.device)
        _depthwise_conv2d_fwd_kernel[(programs, c_blocks)](
            x, w_taps, bias if bias is not None else weight, out, partial, *x_bn_args,
            C, H, W, OH, OW, P, padding[0], padding[1], iters,
            **_taps(kH, kW, stride, dilation),
            HAS_BIAS=bias is not None, ACT=activation_code(activation), STATS=stats,
            ROUND_BF16=out.dtype != x.dtype, **x_bn_flags,
            CHANNELS_LAST=channels_last, PIX64=_pix64(blocks, iters, block_p), BLOCK_P=block_p, BLOCK_C=block_c,
            C_MULT=channel_multiple(C), num_warps=warps,
        )

    configs = forward_configs(x, weight, stride, padding, dilation, fmt)
    if stats and config is None:
        config = configs[0]  # the statistics partials follow the tile: the heuristic, never tuned
    key = (x.device, x.dtype, fmt, tuple(x.shape), (kH, kW), tuple(stride), tuple(padding), tuple(dilation),
           activation, bias is not None, x_bn is not None)
    _FORWARD_TUNER.launch(key, configs, run, tuning_enabled(x.device), force=config)
    return out.to(x.dtype), partial


# ----------------------------------------------------------------------------- launchers


def depthwise_conv2d_fwd(x, weight, bias, stride, padding, dilation, activation: str, fmt):
    """act(conv2d(x, weight.view(C, 1, kH, kW), bias, groups=C)) in ``fmt`` and x's dtype.
    x dense in ``fmt``; weight (C, kH, kW) contiguous and bias (C,) or None, in the accumulation dtype."""
    return _forward(x, weight, bias, stride, padding, dilation, activation, fmt, stats=False)[0]


def depthwise_conv2d_stats_fwd(x, weight, stride, padding, dilation, fmt, x_bn=None):
    """The conv (no bias, identity) and the per-channel mean and biased variance of its output as
    stored, in the accumulation dtype; the per-program partials are merged by
    triton/_partials.py::merge_centred_partials. ``x_bn`` (batch_norm_act.Apply): the conv's input
    is that BatchNorm + activation of x, computed where the kernel loads x (X_BN)."""
    out, partial = _forward(x, weight, None, stride, padding, dilation, "identity", fmt, stats=True, x_bn=x_bn)
    C = x.shape[1]
    if partial is None:
        zeros = torch.zeros(C, dtype=weight.dtype, device=x.device)
        return out, zeros, zeros.clone()
    mean, var = merge_centred_partials(partial)
    return out, mean.to(weight.dtype), var.to(weight.dtype)


def depthwise_conv2d_bwd(grad_out, x, weight, stride, padding, dilation, fmt, output_mask, bn_dx=None, x_bn=None):
    """(grad_input, grad_weight (C, 1, kH, kW), grad_bias (C,)) of the identity-activation conv, in
    x's dtype; an entry whose output_mask is false is ``x.new_empty(0)``. grad_out and x dense in
    ``fmt``; weight (C, kH, kW) contiguous in the accumulation dtype.
    ``bn_dx`` (z, batch_norm_act.TrainDx): the conv is followed by a BatchNorm + activation whose
    input is z (the conv's output, dense in ``fmt``) and whose grad_output is grad_out; the conv's
    own grad_output (BatchNorm's grad_input) is computed in the kernel (BN_DX). Not with grad_bias.
    ``x_bn`` (batch_norm_act.Apply): the conv's input is that BatchNorm + activation of x, applied
    where the weight gradient loads x (X_BN)."""
    N, C, H, W, OH, OW, kH, kW = _geometry(x, weight, stride, padding, dilation)
    assert grad_out.shape == (N, C, OH, OW) and grad_out.dtype == x.dtype
    assert x.is_contiguous(memory_format=fmt) and grad_out.is_contiguous(memory_format=fmt)
    assert weight.is_contiguous() and weight.numel() == C * kH * kW
    want_input, want_weight, want_bias = output_mask
    channels_last = fmt == torch.channels_last
    acc, device = weight.dtype, x.device
    grad_input = grad_weight = grad_bias = x.new_empty(0)
    if want_input:
        grad_input = torch.empty(x.shape, dtype=_store_dtype(x.dtype, device), device=device, memory_format=fmt)
    # grad_weight needs x and grad_out both non-empty; grad_input needs x non-empty.
    weight_work = want_weight and x.numel() > 0 and grad_out.numel() > 0
    if weight_work or (want_input and x.numel() > 0):
        phases = stride[0] * stride[1]
        HQ, WQ = triton.cdiv(H, stride[0]), triton.cdiv(W, stride[1])
        Q = N * HQ * WQ
        block_p, block_c = _blocks(Q, C, channels_last, kH * kW, x.dtype, x.device.type == "cpu")
        c_blocks = triton.cdiv(C, block_c)
        blocks = triton.cdiv(Q, block_p)
        iters, chunks = _split(blocks, _TARGET_PROGRAMS // (c_blocks * phases)) if weight_work else (1, blocks)
        taps = kH * kW
        partial = torch.empty((phases * chunks, taps, C) if weight_work else (0,), dtype=acc, device=device)
        if bn_dx is None:  # dummies, never read
            bn_args, bn_flags = (weight,) * 7 + (1, 0.0), dict(HAS_WEIGHT=False, HAS_BIAS=False, ACT=0)
        else:
            z, dx = bn_dx
            bn_args, bn_flags = (z, *dx.params, dx.sum_gxhat, dx.sum_g, dx.M, dx.eps), dx.flags
        x_bn_args, x_bn_flags = _input_bn_args(x_bn, weight)
        _depthwise_conv2d_bwd_kernel[(phases * chunks, c_blocks)](
            grad_out, x, _tap_major(weight), grad_input, partial, *bn_args, *x_bn_args,
            C, H, W, OH, OW, padding[0], padding[1], HQ, WQ, Q, iters,
            **_taps(kH, kW, stride, dilation),
            GRAD_INPUT=want_input, GRAD_WEIGHT=weight_work, TAPS=triton.next_power_of_2(taps),
            BN_DX=bn_dx is not None, ROUND_BF16=_store_dtype(x.dtype, device) != x.dtype,
            **bn_flags, **x_bn_flags,
            CHANNELS_LAST=channels_last, PIX64=_pix64(blocks, iters, block_p),
            BLOCK_P=block_p, BLOCK_C=block_c, C_MULT=channel_multiple(C),
        )
        if weight_work:
            # Stage 2: a fixed-order sum over the programs' partial rows (deterministic).
            grad_weight = partial.sum(dim=0).t().reshape(C, 1, kH, kW).to(x.dtype)
    if want_weight and not weight_work:
        grad_weight = torch.zeros((C, 1, kH, kW), dtype=x.dtype, device=device)
    if want_input:
        grad_input = grad_input.to(x.dtype)
    if want_bias:
        assert bn_dx is None, "grad_bias of a conv followed by a BatchNorm: not computed"
        grad_bias = torch.zeros(C, dtype=acc, device=device)
        if grad_out.numel() > 0:
            P = N * OH * OW
            block_p, block_c = _blocks(P, C, channels_last, 1, x.dtype, x.device.type == "cpu")
            c_blocks = triton.cdiv(C, block_c)
            blocks = triton.cdiv(P, block_p)
            iters, programs = _split(blocks, _TARGET_PROGRAMS // c_blocks)
            partial = torch.empty((programs, C), dtype=acc, device=device)
            _channel_sum_kernel[(programs, c_blocks)](
                grad_out, partial, C, OH * OW, P, iters,
                CHANNELS_LAST=channels_last, PIX64=_pix64(blocks, iters, block_p), BLOCK_P=block_p, BLOCK_C=block_c,
                C_MULT=channel_multiple(C),
            )
            grad_bias = partial.sum(dim=0)
        grad_bias = grad_bias.to(x.dtype)
    return grad_input, grad_weight, grad_bias
