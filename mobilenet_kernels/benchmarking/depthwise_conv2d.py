"""depthwise_conv2d over the depthwise layers of MobileNets: our backends vs PyTorch eager (cuDNN /
ATen) and torch.compile, plus the fused dw conv + BatchNorm + activation in training against the
unfused eager sequence.

Variants (option ``ops``): ``conv`` (depthwise_conv2d alone; modes forward, and full = forward +
backward) and ``conv_bn_act_train`` (dw conv + BN in training + activation; mode full only; ours
also with MK_DW_BN_FUSED=0, the ``<backend>_bn_unfused`` columns: the unfused training backward).
Bytes are the fewest any implementation must move (each tensor read or written once): conv forward
x + y; forward + backward x + y + (dy + x + dx), for the conv alone and for conv + BN + act.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F

from .. import functional as MF
from ..activations import apply_activation
from .core import DTYPES, compiled_providers, layer_cases, measure_cases, with_env
from .shapes import depthwise_layers

if TYPE_CHECKING:
    from .ops import OpSettings

COLUMNS = ["model", "C", "H", "W", "k", "stride", "batch", "dtype", "layout", "op", "mode", "eager_p50_ms",
           "cuda_p50_ms", "triton_p50_ms", "torch_compile_p50_ms", "torch_compile_max_autotune_p50_ms", "cuda_GBps",
           "cuda_pct_peak", "cuda_pct_copy", "cuda_speedup_vs_eager", "triton_speedup_vs_eager",
           "cuda_speedup_vs_compile", "cuda_bn_unfused_p50_ms", "triton_bn_unfused_p50_ms"]
GROUP_BY = ("op", "mode", "dtype", "layout", "batch")
# ops: which variants to time; compile_conv: torch.compile rows for the lone conv too (Inductor hands
# a lone convolution to ATen, so they equal eager there).
OPTIONS = {"ops": ["conv", "conv_bn_act_train"], "compile_conv": True}


# A provider name's suffix: the call runs with MK_DW_BN_FUSED=0, the training backward as the
# unfused sequence (BatchNorm's grad_input written, then read by the conv's backward), next to the
# fused default, whose calls set MK_DW_BN_FUSED=1 the same way (the same host cost around both):
# the two columns of one row time what the fusion gains.
UNFUSED = "_bn_unfused"


def conv_providers(device: str, compile_modes: list[str], backends: list[str]) -> dict[str, Callable]:
    """``fn(x, w, (stride, padding, dilation), activation)`` per provider; the activation is unused
    (the conv alone is timed)."""

    def eager(x, w, geom, act):
        return F.conv2d(x, w, None, *geom, groups=x.shape[1])

    found = {"eager": eager, **compiled_providers(eager, compile_modes)}
    for name in backends:
        found[name] = lambda x, w, geom, act, _n=name: MF.depthwise_conv2d(x, w, None, *geom, backend=_n)
    return found


def conv_bn_act_providers(device: str, compile_modes: list[str], backends: list[str]) -> dict[str, Callable]:
    """``fn(x, w, geom, activation, (mean, var, weight, bias))`` per provider: conv, BatchNorm with
    batch statistics, activation."""

    def eager(x, w, geom, act, bn):
        z = F.conv2d(x, w, None, *geom, groups=x.shape[1])
        return apply_activation(F.batch_norm(z, bn[0], bn[1], bn[2], bn[3], True, 0.1, 1e-5), act)

    found = {"eager": eager, **compiled_providers(eager, compile_modes)}
    for name in backends:
        found[name] = lambda x, w, geom, act, bn, _n=name: MF.depthwise_conv2d_bn_act(
            x, w, None, *geom, bn[0], bn[1], bn[2], bn[3], True, 0.1, 1e-5, act, backend=_n
        )
        if name in ("cuda", "triton"):  # the same op with MK_DW_BN_FUSED=0 around the timed call (case)
            found[f"{name}{UNFUSED}"] = found[name]
    return found


def case(provs: dict[str, Callable], op: str, layer: tuple, batch: int, dtype_name: str, layout: str, mode: str,
         device: str) -> tuple[dict, dict[str, Callable[[], object]]]:
    """One case: its row (what was timed, and the bytes moved) and a zero-argument call per provider.
    ``mode`` "forward" times the forward; "full" the forward and backward (grads of x and w)."""
    C, H, W, k, s, p, d, act = layer
    dtype = DTYPES[dtype_name]
    x = torch.randn(batch, C, H, W, device=device, dtype=dtype)
    if layout == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(C, 1, k, k, device=device, dtype=dtype) / k
    geom = ((s, s), (p, p), (d, d))
    OH, OW = (H + 2 * p - d * (k - 1) - 1) // s + 1, (W + 2 * p - d * (k - 1) - 1) // s + 1
    in_bytes, out_bytes = x.numel() * x.element_size(), batch * C * OH * OW * x.element_size()
    bytes_moved = in_bytes + out_bytes if mode == "forward" else 2 * in_bytes + 2 * out_bytes + in_bytes
    bn = (torch.zeros(C, device=device), torch.ones(C, device=device), torch.randn(C, device=device),
          torch.randn(C, device=device))
    grad = torch.randn(batch, C, OH, OW, device=device, dtype=dtype)
    if layout == "nhwc":
        grad = grad.contiguous(memory_format=torch.channels_last)
    row = {"C": C, "H": H, "W": W, "k": k, "stride": s, "padding": p, "dilation": d, "activation": act,
           "batch": batch, "dtype": dtype_name, "layout": layout, "op": op, "mode": mode, "bytes": bytes_moved}
    extra = (bn,) if op == "conv_bn_act_train" else ()
    calls = {}
    for name, fn in provs.items():
        if mode == "forward":
            calls[name] = lambda fn=fn: fn(x, w, geom, act, *extra)
        else:
            xg, wg = x.detach().requires_grad_(), w.detach().requires_grad_()
            calls[name] = lambda fn=fn, xg=xg, wg=wg: torch.autograd.grad(fn(xg, wg, geom, act, *extra), (xg, wg), grad)
            if op == "conv_bn_act_train" and (name in ("cuda", "triton") or name.endswith(UNFUSED)):
                calls[name] = with_env(calls[name], MK_DW_BN_FUSED="0" if name.endswith(UNFUSED) else "1")
    return row, calls


def sweep(s: "OpSettings", rows: list[dict], copy_bw: float | None) -> None:
    """Append one row per case to ``rows`` (in place, so an interrupted run keeps its rows)."""
    ops = s.options["ops"]
    provs = {"conv": conv_providers(s.device, s.compile if s.options["compile_conv"] else [], s.backends),
             "conv_bn_act_train": conv_bn_act_providers(s.device, s.compile, s.backends)}
    layers = [(model, layer) for model in s.models for layer in depthwise_layers(model, s.resolution)]
    modes = {op: s.mode if op == "conv" else ["full"] for op in ops}  # the composite: forward+backward only
    cases = [(*c, op, mode) for c in layer_cases(layers, s.batch, s.dtype, s.layout)
             for op in ops for mode in modes[op]]
    measure_cases(s, rows, copy_bw, "depthwise", cases,
                  lambda layer, batch, dtype_name, layout, op, mode:
                  case(provs[op], op, layer, batch, dtype_name, layout, mode, s.device))
