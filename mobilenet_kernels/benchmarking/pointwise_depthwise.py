"""pointwise_depthwise_bn_act_train over the inverted-residual blocks of MobileNets that have an
expand conv: an expand 1x1 conv + BatchNorm + activation then a depthwise conv + BatchNorm +
activation, both BatchNorms on batch statistics (running statistics updated), as one op, against
PyTorch eager (F.conv2d, F.batch_norm, the activation, twice) and torch.compile of that.

Ours runs in each setting of its two fusion switches (read at every call; ops/_common.py), so each
row says what each fusion gains on that block:

* ``<backend>``: the default, both fusions;
* ``<backend>_no_input_bn`` (MK_DW_INPUT_BN=0): the expand BatchNorm's output y1 written by the
  apply pass (and recomputed by it in backward) for the per-layer depthwise op;
* ``<backend>_no_bn_dx`` (MK_DW_BN_FUSED=0, mode "full" only): the depthwise BatchNorm's
  grad_input by its own pass, and so the backward's sequence;
* ``<backend>_unfused``: both switches off (mode "full" only; in "forward" it is ``_no_input_bn``).

Modes: "forward" (a training forward) and "full" (forward + backward: the gradients of the input,
both conv weights and both BatchNorms' parameters). ``<p>_speedup_vs_unfused``: the unfused
setting's time over ``<p>``'s.

Bytes are each tensor read or written once per direction (e the element size, P = N H W input
pixels, Q = N OH OW output pixels, Chid the expanded channels): forward e (P Cin [x] + P Chid [z1,
kept for backward] + 2 Q Chid [z2, kept; the output]); full adds e (2 Q Chid [grad_output, z2] +
P Chid [z1] + 2 P Cin [x again for the expand weight's gradient; grad_input]). A lower bound: every
implementation also writes and reads BN1's grad_output, the depthwise conv's grad_input.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F

from .. import functional as MF
from ..activations import apply_activation
from .core import DTYPES, compiled_providers, layer_cases, measure_cases, with_env
from .shapes import inverted_residual_layers

if TYPE_CHECKING:
    from .ops import OpSettings

# The switch settings ours runs in: suffix -> (MK_DW_INPUT_BN, MK_DW_BN_FUSED), and the modes whose
# rows time it (the BatchNorm grad_input fusion is a backward one).
SETTINGS = {"": ("1", "1"), "_no_input_bn": ("0", "1"), "_no_bn_dx": ("1", "0"), "_unfused": ("0", "0")}
SETTING_MODES = {"": ("forward", "full"), "_no_input_bn": ("forward", "full"), "_no_bn_dx": ("full",),
                 "_unfused": ("full",)}

COLUMNS = ["model", "Cin", "Chid", "H", "W", "k", "stride", "activation", "batch", "dtype", "layout", "mode",
           "eager_p50_ms", "cuda_p50_ms", "cuda_no_input_bn_p50_ms", "cuda_no_bn_dx_p50_ms", "cuda_unfused_p50_ms",
           "triton_p50_ms", "triton_no_input_bn_p50_ms", "triton_no_bn_dx_p50_ms", "triton_unfused_p50_ms",
           "torch_compile_p50_ms", "torch_compile_max_autotune_p50_ms", "cuda_GBps", "cuda_pct_copy",
           "cuda_speedup_vs_eager", "cuda_speedup_vs_unfused", "triton_speedup_vs_eager", "triton_speedup_vs_unfused",
           "cuda_speedup_vs_compile"]
GROUP_BY = ("mode", "dtype", "layout", "batch")
OPTIONS: dict = {}

_EPS = 1e-5


def eager(x, we, wd, geom, act, bn1, bn2):
    """The two layers in eager PyTorch, BatchNorm in training mode (running statistics updated)."""
    (s, p, d), channels = geom, we.shape[0]
    y1 = apply_activation(F.batch_norm(F.conv2d(x, we), *bn1, True, 0.1, _EPS), act)
    z2 = F.conv2d(y1, wd, None, s, p, d, groups=channels)
    return apply_activation(F.batch_norm(z2, *bn2, True, 0.1, _EPS), act)


def providers(compile_modes: list[str], backends: list[str], mode: str) -> dict[str, Callable]:
    """``fn(x, expand_weight, dw_weight, (stride, padding, dilation), activation, bn1, bn2)`` per
    provider, bn = (running_mean, running_var, weight, bias): eager, torch.compile per mode, and
    each of our ``backends`` in each switch setting that ``mode`` times (SETTINGS)."""
    found = {"eager": eager, **compiled_providers(eager, compile_modes)}
    for name in backends:
        for suffix, (input_bn, bn_dx) in SETTINGS.items():
            if mode not in SETTING_MODES[suffix]:
                continue

            def ours(x, we, wd, geom, act, bn1, bn2, _n=name):
                return MF.pointwise_depthwise_bn_act_train(x, we, wd, *geom, bn1[0], bn1[1], bn1[2], bn1[3], bn2[0],
                                                           bn2[1], bn2[2], bn2[3], 0.1, 0.1, _EPS, act, backend=_n)

            found[name + suffix] = (ours, {"MK_DW_INPUT_BN": input_bn, "MK_DW_BN_FUSED": bn_dx})
    return found


def case(provs: dict[str, Callable], layer: tuple, batch: int, dtype_name: str, layout: str, mode: str,
         device: str) -> tuple[dict, dict[str, Callable[[], object]]]:
    """One case: its row (what was timed, the bytes) and a zero-argument call per provider.
    ``layer`` is one of shapes.inverted_residual_layers with an expand conv."""
    Cin, Chid, _, H, W, k, s, d, act, _, _ = layer
    dtype = DTYPES[dtype_name]
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    x = torch.randn(batch, Cin, H, W, device=device, dtype=dtype).contiguous(memory_format=fmt)
    we = torch.randn(Chid, Cin, 1, 1, device=device, dtype=dtype) / Cin**0.5
    wd = torch.randn(Chid, 1, k, k, device=device, dtype=dtype) / k
    geom = (s, (k - 1) // 2 * d, d)
    OH, OW = _out_hw(layer)

    def batch_norm():
        return (torch.zeros(Chid, device=device), torch.ones(Chid, device=device),
                torch.rand(Chid, device=device) + 0.5, torch.randn(Chid, device=device))

    bn1, bn2 = batch_norm(), batch_norm()
    grad = torch.randn(batch, Chid, OH, OW, device=device, dtype=dtype).contiguous(memory_format=fmt)
    e, P, Q = x.element_size(), batch * H * W, batch * OH * OW
    forward = e * (P * Cin + P * Chid + 2 * Q * Chid)
    bytes_moved = forward if mode == "forward" else forward + e * (2 * Q * Chid + P * Chid + 2 * P * Cin)
    row = {"Cin": Cin, "Chid": Chid, "H": H, "W": W, "k": k, "stride": s, "dilation": d, "activation": act,
           "batch": batch, "dtype": dtype_name, "layout": layout, "mode": mode, "bytes": bytes_moved}
    calls = {}
    for name, provider in provs.items():
        fn, env = provider if isinstance(provider, tuple) else (provider, None)
        if mode == "forward":
            call = lambda fn=fn: fn(x, we, wd, geom, act, bn1, bn2)  # noqa: E731
        else:
            leaves = [t.detach().requires_grad_() for t in (x, we, wd)]
            params = [t.detach().requires_grad_() for t in (bn1[2], bn1[3], bn2[2], bn2[3])]
            b1, b2 = (*bn1[:2], *params[:2]), (*bn2[:2], *params[2:])
            call = lambda fn=fn, leaves=leaves, params=params, b1=b1, b2=b2: torch.autograd.grad(  # noqa: E731
                fn(*leaves, geom, act, b1, b2), leaves + params, grad)
        calls[name] = with_env(call, **env) if env else call
    return row, calls


def add_fusion_speedups(row: dict, backends: list[str]) -> None:
    """``<backend><setting>_speedup_vs_unfused`` for each setting but the unfused one: the unfused
    setting's time (``_no_input_bn`` in the forward, where it is the unfused one) over its own."""
    for name in backends:
        unfused = row.get(f"{name}_unfused_p50_ms") or row.get(f"{name}_no_input_bn_p50_ms")
        for suffix in ("", "_no_input_bn", "_no_bn_dx"):
            ms = row.get(f"{name}{suffix}_p50_ms")
            if unfused and ms and not (suffix == "_no_input_bn" and row["mode"] == "forward"):
                row[f"{name}{suffix}_speedup_vs_unfused"] = unfused / ms


def _out_hw(layer: tuple) -> tuple[int, int]:
    """(OH, OW) of a block's depthwise conv: "same" padding ((k - 1) / 2 * d), so ceil(H / s)."""
    _, _, _, H, W, _, s, _, _, _, _ = layer
    return (H - 1) // s + 1, (W - 1) // s + 1


def blocks(model: str, resolution: int) -> list[tuple]:
    """The blocks of ``model`` with an expand conv (Chid != Cin), as inverted_residual_layers gives them."""
    return [layer for layer in inverted_residual_layers(model, resolution) if layer[1] != layer[0]]


def sweep(s: "OpSettings", rows: list[dict], copy_bw: float | None) -> None:
    """Append one row per case to ``rows`` (in place, so an interrupted run keeps its rows)."""
    layers = [(model, layer) for model in s.models for layer in blocks(model, s.resolution)]
    provs = {mode: providers(s.compile, s.backends, mode) for mode in s.mode}
    # (model, block, batch, ...): a batch whose depthwise output has one value per channel cannot train
    cases = [c for c in layer_cases(layers, s.batch, s.dtype, s.layout, s.mode) if c[2] * math.prod(_out_hw(c[1])) > 1]
    measure_cases(s, rows, copy_bw, "pointwise_depthwise", cases,
                  lambda layer, batch, dtype_name, layout, mode:
                  case(provs[mode], layer, batch, dtype_name, layout, mode, s.device),
                  shape_key=lambda layer: layer[:2] + layer[3:9],  # the op's shape (not Cout, SE)
                  extra=lambda row, calls: add_fusion_speedups(row, s.backends))
