"""inverted_residual_eval, a whole inverted-residual block (eval, BatchNorm folded) in one Triton kernel.

Fused: y = project(act(dw(act(expand(x) + b_e)) + b_d)) + b_p [+ x]: the 1x1 expand GEMM with bias
and activation, the depthwise conv with bias and activation, the 1x1 project GEMM with bias and
the residual add. The expanded tensor (t x the input's channels) never reaches HBM.

A program owns a TH x TW tile of output pixels of one image and all output channels (fp32
accumulators [BLOCK_P, BLOCK_CO]); it walks the hidden channels in chunks of BLOCK_H:
  1. expand: the input tile with its halo ((TH - 1) s + (k - 1) d + 1 rows, likewise columns;
     HALO_P pixels padded to a power of two) times W_e[:, chunk] with tl.dot, + bias, act; positions
     outside the image are zero (they are the dw conv's zero padding, not act(bias));
     the chunk goes to the program's scratch rows (fp32, global memory: written and read back by
     the same program, so it stays in L1/L2), then a barrier;
  2. depthwise: every tap reads its shifted window of the scratch tile (the halo makes every
     window exist, so no bounds checks), + bias, act;
  3. project: acc += dw_chunk . W_p[chunk, :] with tl.dot (the hidden chunks are the K loop).
Then + b_p, + the residual (the input at the output pixel), one store. Blocks without an expand
conv (t = 1) read the dw taps from the input itself.
A persistent grid: at most _MAX_PROGRAMS programs loop over the tiles, so scratch stays small
(programs x HALO_P x BLOCK_H fp32) and its lines stay in cache.
Layouts: NCHW or channels_last, dense, through (n, h, w, c) strides. dtypes: float64, float32,
float16, bfloat16; expand/project dots on tensor cores for half types (fp32 accumulation), IEEE
for fp32/fp64; the dw output is rounded to the input dtype before the project dot, as the unfused
sequence stores it. Indexing: int64 offsets.
Runs on CPU tensors under TRITON_INTERPRET=1 (half inputs upcast to fp32 first, as in
pointwise_conv2d.py). Eval only: no backward (the modules use it when no gradient is needed).
Squeeze-excite blocks (V3): its pooling needs the whole dw output before the first projection,
so such a block runs the kernel twice: pass 1 (POOL) stops after step 2 and writes each tile's
channel sums of the dw output (as rounded); they are merged in tile order into the means, and
squeeze_excite's excite step (_excite_fwd) makes the (N, Chid) scale; pass 2 (SCALED) multiplies
the dw output by it (rounded again, as the squeeze-excite op stores it) before the project dot.
Pass 1 recomputes the expand conv and the dw conv: 2x their FLOPs and the input read twice, for
none of the hidden tensor's bytes.
Limits: halo recompute is none, but the halo rows are expanded once per tile (1.56x the expand
        FLOPs for 8x8 tiles at k3 s1); tile sizes are a fixed heuristic, not autotuned;
        output channels up to 512 (every MobileNet block has at most 320).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..activations import activation_code
from ._activations import act_forward
from ._alignment import channel_multiple, multiple
from .depthwise_conv2d import _tap_major
from .pointwise_conv2d import _dot

_MAX_PROGRAMS = 1024


@triton.jit
def _inverted_residual_eval_kernel(
    x_ptr,  # (N, Cin, H, W) through (sxn, sxc, sxh, sxw)
    we_ptr,  # (Cin, Chid) expand weight, transposed, contiguous; read only if HAS_EXPAND
    be_ptr,  # (Chid,) accumulation dtype
    wd_ptr,  # (KS * KS, Chid) accumulation dtype, tap-major
    bd_ptr,  # (Chid,) accumulation dtype
    wp_ptr,  # (Chid, Cout) project weight, transposed, contiguous
    bp_ptr,  # (Cout,) accumulation dtype
    y_ptr,  # (N, Cout, OH, OW) through (syn, syc, syh, syw)
    scratch_ptr,  # (programs, HALO_P, BLOCK_H) fp32/fp64; used only if HAS_EXPAND
    scale_ptr,  # (N, Chid) accumulation dtype: the squeeze-excite scale; read only if SCALED
    part_ptr,  # (N * TILES_H * TILES_W, Chid) accumulation dtype: per-tile sums; written only if POOL
    N, Cin, Chid, Cout, H, W, OH, OW, PAD, TILES_H, TILES_W,
    sxn, sxc, sxh, sxw, syn, syc, syh, syw,
    KS: tl.constexpr, STRIDE: tl.constexpr, DIL: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr,
    HALO_W: tl.constexpr, HALO_N: tl.constexpr, HALO_P: tl.constexpr,
    HAS_EXPAND: tl.constexpr, RESIDUAL: tl.constexpr, ACT: tl.constexpr, IEEE: tl.constexpr,
    POOL: tl.constexpr, SCALED: tl.constexpr,
    CIN_MULT: tl.constexpr, HID_MULT: tl.constexpr, CO_MULT: tl.constexpr, X_MULT: tl.constexpr,
    Y_MULT: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_CO: tl.constexpr,
):
    acc_ty = bp_ptr.dtype.element_ty
    # The same values, seen as multiples (_alignment): 16-byte loads of x, y and the weights' rows.
    # *_MULT divide the channel counts (masks per vector; Chid, Cout are also the weights' row
    # strides), X_MULT and Y_MULT the pixel strides of x and y.
    Cin, Chid, Cout = multiple(Cin, CIN_MULT), multiple(Chid, HID_MULT), multiple(Cout, CO_MULT)
    sxn, sxh, sxw = multiple(sxn, X_MULT), multiple(sxh, X_MULT), multiple(sxw, X_MULT)
    syn, syh, syw = multiple(syn, Y_MULT), multiple(syh, Y_MULT), multiple(syw, Y_MULT)
    dot_ty = x_ptr.dtype.element_ty
    pid = tl.program_id(0)
    tiles = N * TILES_H * TILES_W
    scratch = scratch_ptr + pid.to(tl.int64) * (HALO_P * BLOCK_H)
    q = tl.arange(0, BLOCK_P)  # output pixel of the tile
    qh = q // TW
    qw = q % TW
    hp = tl.arange(0, HALO_P)  # halo pixel of the tile
    hh = hp // HALO_W
    hw = hp % HALO_W
    co = tl.arange(0, BLOCK_CO)
    co_mask = co < Cout
    bias_p = tl.load(bp_ptr + co, mask=co_mask, other=0.0)
    for tile in range(pid, tiles, tl.num_programs(0)):
        n = tile // (TILES_H * TILES_W)
        t = tile % (TILES_H * TILES_W)
        oh = (t // TILES_W) * TH + qh
        ow = (t % TILES_W) * TW + qw
        q_mask = (q < TH * TW) & (oh < OH) & (ow < OW)
        x_n = x_ptr + n.to(tl.int64) * sxn
        # input rows/columns of the halo tile (padding included)
        ih = (t // TILES_W) * TH * STRIDE - PAD + hh
        iw = (t % TILES_W) * TW * STRIDE - PAD + hw
        h_in = (hp < HALO_N) & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        x_halo = ih.to(tl.int64) * sxh + iw.to(tl.int64) * sxw
        acc = tl.zeros([BLOCK_P, BLOCK_CO], acc_ty)
        for h0 in range(0, Chid, BLOCK_H):
            hc = h0 + tl.arange(0, BLOCK_H)
            h_mask = hc < Chid
            if HAS_EXPAND:
                e = tl.zeros([HALO_P, BLOCK_H], acc_ty)
                for k0 in range(0, Cin, BLOCK_K):
                    ks = k0 + tl.arange(0, BLOCK_K)
                    k_mask = ks < Cin
                    a = tl.load(x_n + x_halo[:, None] + ks.to(tl.int64)[None, :] * sxc,
                                mask=h_in[:, None] & k_mask[None, :], other=0.0)
                    b = tl.load(we_ptr + ks.to(tl.int64)[:, None] * Chid + hc[None, :],
                                mask=k_mask[:, None] & h_mask[None, :], other=0.0)
                    e += _dot(a, b, IEEE).to(acc_ty)
                e = act_forward(e + tl.load(be_ptr + hc, mask=h_mask, other=0.0)[None, :], ACT)
                e = tl.where(h_in[:, None], e, 0.0)  # the dw conv's zero padding
                tl.debug_barrier()  # the previous chunk's taps have all been read
                tl.store(scratch + hp[:, None] * BLOCK_H + tl.arange(0, BLOCK_H)[None, :], e)
                tl.debug_barrier()
            d = tl.zeros([BLOCK_P, BLOCK_H], acc_ty)
            for kh in tl.static_range(KS):
                for kw in tl.static_range(KS):
                    wv = tl.load(wd_ptr + (kh * KS + kw) * Chid + hc, mask=h_mask, other=0.0)
                    if HAS_EXPAND:
                        src = (qh * STRIDE + kh * DIL) * HALO_W + qw * STRIDE + kw * DIL
                        v = tl.load(scratch + src[:, None] * BLOCK_H + tl.arange(0, BLOCK_H)[None, :],
                                    mask=q_mask[:, None], other=0.0)
                    else:
                        ihq = oh * STRIDE - PAD + kh * DIL
                        iwq = ow * STRIDE - PAD + kw * DIL
                        ok = q_mask & (ihq >= 0) & (ihq < H) & (iwq >= 0) & (iwq < W)
                        v = tl.load(x_n + (ihq.to(tl.int64) * sxh + iwq.to(tl.int64) * sxw)[:, None]
                                    + hc.to(tl.int64)[None, :] * sxc,
                                    mask=ok[:, None] & h_mask[None, :], other=0.0).to(acc_ty)
                    d += v * wv[None, :]
            d = act_forward(d + tl.load(bd_ptr + hc, mask=h_mask, other=0.0)[None, :], ACT)
            d = tl.where(q_mask[:, None] & h_mask[None, :], d, 0.0).to(dot_ty)  # rounded as stored unfused
            if POOL:  # pass 1 of a squeeze-excite block: the tile's channel sums, nothing projected
                tile_row = n.to(tl.int64) * (TILES_H * TILES_W) + t  # == tile, as an int64 tensor
                tl.store(part_ptr + tile_row * Chid + hc, tl.sum(d.to(acc_ty), axis=0), mask=h_mask)
            else:
                if SCALED:  # pass 2: the excite scale, rounded as the squeeze-excite op stores its output
                    sv = tl.load(scale_ptr + n.to(tl.int64) * Chid + hc, mask=h_mask, other=0.0)
                    d = (d.to(acc_ty) * sv[None, :]).to(dot_ty)
                wp = tl.load(wp_ptr + hc.to(tl.int64)[:, None] * Cout + co[None, :],
                             mask=h_mask[:, None] & co_mask[None, :], other=0.0)
                acc += _dot(d, wp, IEEE).to(acc_ty)
        if not POOL:
            acc += bias_p[None, :]
            mask = q_mask[:, None] & co_mask[None, :]
            if RESIDUAL:
                r = tl.load(x_n + (oh.to(tl.int64) * sxh + ow.to(tl.int64) * sxw)[:, None]
                            + co.to(tl.int64)[None, :] * sxc, mask=mask, other=0.0)
                acc += r.to(acc_ty)
            y_offs = n.to(tl.int64) * syn + (oh.to(tl.int64) * syh + ow.to(tl.int64) * syw)[:, None] \
                + co.to(tl.int64)[None, :] * syc
            tl.store(y_ptr + y_offs, acc.to(y_ptr.dtype.element_ty), mask=mask)


def _tile(OH: int, OW: int, stride: int, ks: int, dil: int) -> tuple[int, int, int, int, int]:
    """(TH, TW, HALO_W, HALO_N, HALO_P): the largest square tile of <= 64 output pixels whose halo
    fits in 256 pixels, clipped to the image; HALO_P is the halo's pixel count HALO_N padded to a
    power of two (at least 16, the smallest dot tile)."""
    for side in (8, 6, 4, 2, 1):
        th, tw = min(side, OH), min(side, OW)
        halo_h, halo_w = (th - 1) * stride + (ks - 1) * dil + 1, (tw - 1) * stride + (ks - 1) * dil + 1
        if halo_h * halo_w <= 256 or side == 1:
            return th, tw, halo_w, halo_h * halo_w, max(16, triton.next_power_of_2(halo_h * halo_w))
    raise AssertionError("unreachable")


def inverted_residual_eval_fwd(x, we, be, dw, bd, wp, bp, stride: int, dilation: int, activation: str,
                               residual: bool, fmt, excite=None):
    """The block's output in ``fmt`` and x's dtype. x dense in ``fmt``; we (Cin, Chid) in x's dtype or
    None (no expand conv); dw the depthwise weight (Chid, 1, k, k) in any float dtype (the kernel
    reads it tap-major in the accumulation dtype); biases in the accumulation dtype; wp (Chid, Cout)
    in x's dtype. ``excite``: None, or the squeeze-excite's (w1 (S, Chid), b1, w2 (Chid, S), b2) in
    the accumulation dtype and its two activation names: then pass 1 (POOL) writes per-tile channel
    sums, merged in tile order into the means, squeeze_excite's excite step makes the scale, and pass
    2 (SCALED) is the block."""
    from .squeeze_excite import _excite_fwd

    N, Cin, H, W = x.shape
    Chid, ks = dw.shape[0], dw.shape[-1]
    Cout = wp.shape[1]
    pad = (ks - 1) // 2 * dilation
    OH = (H + 2 * pad - dilation * (ks - 1) - 1) // stride + 1
    OW = (W + 2 * pad - dilation * (ks - 1) - 1) // stride + 1
    interpreted = x.device.type == "cpu"
    out_dtype = x.dtype
    half = out_dtype in (torch.float16, torch.bfloat16)
    store = torch.float32 if interpreted and half else out_dtype
    y = torch.empty((N, Cout, OH, OW), dtype=store, device=x.device, memory_format=fmt)
    if y.numel() == 0:
        return y.to(out_dtype)
    if interpreted and half:
        x, wp = x.float(), wp.float()
        we = None if we is None else we.float()
    acc = bp.dtype
    wd = _tap_major(dw, acc)
    th, tw, halo_w, halo_n, halo_p = _tile(OH, OW, stride, ks, dilation)
    tiles_h, tiles_w = triton.cdiv(OH, th), triton.cdiv(OW, tw)
    tiles = N * tiles_h * tiles_w
    programs = min(tiles, _MAX_PROGRAMS if not interpreted else 8)
    block_h = 32 if not interpreted else 64
    block_co = triton.next_power_of_2(max(Cout, 16))
    if block_co > 512:
        raise ValueError(f"project weight: at most 512 output channels, got {Cout}")
    scratch = torch.empty((programs, halo_p, block_h) if we is not None else (0,), dtype=acc, device=x.device)

    def launch(pool: bool = False, scale=None, part=None):  # unused pointers: any tensor of the acc dtype
        _inverted_residual_eval_kernel[(programs,)](
            x, we if we is not None else wp, be if be is not None else bp, wd, bd, wp, bp, y, scratch,
            bp if scale is None else scale, bp if part is None else part,
            N, Cin, Chid, Cout, H, W, OH, OW, pad, tiles_h, tiles_w,
            x.stride(0), x.stride(1), x.stride(2), x.stride(3), y.stride(0), y.stride(1), y.stride(2), y.stride(3),
            KS=ks, STRIDE=stride, DIL=dilation, TH=th, TW=tw, HALO_W=halo_w, HALO_N=halo_n, HALO_P=halo_p,
            HAS_EXPAND=we is not None, RESIDUAL=residual, ACT=activation_code(activation),
            IEEE=not half, POOL=pool, SCALED=scale is not None,
            CIN_MULT=channel_multiple(Cin), HID_MULT=channel_multiple(Chid),
            CO_MULT=channel_multiple(Cout), X_MULT=channel_multiple(Cin, x.stride(1)),
            Y_MULT=channel_multiple(Cout, y.stride(1)),
            BLOCK_P=max(16, triton.next_power_of_2(th * tw)), BLOCK_H=block_h,
            BLOCK_K=max(16, min(triton.next_power_of_2(Cin), 64)), BLOCK_CO=block_co,
            num_warps=8 if block_co >= 256 else 4,
        )

    scale = None
    if excite is not None:
        w1, b1, w2, b2, se_act, se_scale_act = excite
        part = torch.empty((tiles, Chid), dtype=acc, device=x.device)
        launch(pool=True, part=part)
        pooled = part.view(N, tiles_h * tiles_w, Chid).sum(1).div_(OH * OW)  # tile order: fixed by the shape
        scale = _excite_fwd(pooled, w1, b1, w2, b2, se_act, se_scale_act)
    launch(scale=scale)
    return y.to(out_dtype)
