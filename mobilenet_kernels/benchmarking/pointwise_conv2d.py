"""pointwise_conv2d over the 1x1 convs of MobileNets (the expand and project convs of the
inverted-residual blocks, BatchNorm folded, and the models' last 1x1 conv): our backends vs PyTorch
eager (F.conv2d with the folded bias, the activation, the residual add: what eager PyTorch runs for
a Conv2d + BatchNorm + activation once the BatchNorm is folded) and torch.compile of that.

One case per layer (Cin -> Cout channels at H x W, its activation, and for the project conv of a
block with a skip connection the residual add). Modes: "forward", and "full" = forward + backward
(gradients of the input, weight and bias, and of the residual where there is one).

Bytes are the GEMM's minimum traffic, each tensor read or written once per pass (P = batch x H x W
pixels, e = the element size): forward e (P Cin [read x] + Cin Cout + Cout [read weight, bias] +
P Cout [write y] (+ P Cout [read the residual])); full adds e (P Cout [read dy] + P Cin [read x
again, for dW] + P Cin [write dx] + Cin Cout + Cout [write dW, db]). Not counted: the backward's
second read of the weight (for dx) and of y or z for the activation's derivative (a kernel may
recompute z from x), so this is a lower bound. The residual's gradient is dy itself (no traffic).
FLOPs (row "flops", columns ``<provider>_TFLOPS``): 2 P Cin Cout forward, three times that for full
(+ the dx and dW GEMMs): the larger layers at batch 256 are not far from the compute roof.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F

from .. import functional as MF
from ..activations import apply_activation
from .core import DTYPES, compiled_providers, layer_cases, measure_cases
from .shapes import pointwise_layers

if TYPE_CHECKING:
    from .ops import OpSettings

COLUMNS = ["model", "Cin", "Cout", "H", "W", "activation", "residual", "batch", "dtype", "layout", "mode",
           "eager_p50_ms", "cuda_p50_ms", "triton_p50_ms", "torch_compile_p50_ms", "torch_compile_max_autotune_p50_ms",
           "cuda_GBps", "cuda_pct_peak", "cuda_pct_copy", "cuda_TFLOPS", "triton_TFLOPS", "cuda_speedup_vs_eager",
           "triton_speedup_vs_eager", "cuda_speedup_vs_compile"]
GROUP_BY = ("mode", "dtype", "layout", "batch")
OPTIONS: dict = {}


def eager(x, w, b, r, act):
    """The folded Conv2d + BatchNorm + activation (+ the block's skip connection) in eager PyTorch."""
    out = apply_activation(F.conv2d(x, w, b), act)
    return out if r is None else out + r


def providers(compile_modes: list[str], backends: list[str]) -> dict[str, Callable]:
    """``fn(x, weight, bias, residual or None, activation)`` per provider: eager, torch.compile per
    mode, and each of our ``backends``."""
    found = {"eager": eager, **compiled_providers(eager, compile_modes)}
    for name in backends:
        found[name] = lambda x, w, b, r, act, _n=name: MF.pointwise_conv2d(x, w, b, r, activation=act, backend=_n)
    return found


def case(provs: dict[str, Callable], layer: tuple, batch: int, dtype_name: str, layout: str, mode: str,
         device: str) -> tuple[dict, dict[str, Callable[[], object]]]:
    """One case: its row (what was timed, the bytes and FLOPs) and a zero-argument call per provider.
    ``layer`` is one of shapes.pointwise_layers: (Cin, Cout, H, W, activation, residual)."""
    Cin, Cout, H, W, act, residual = layer
    dtype = DTYPES[dtype_name]
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    x = torch.randn(batch, Cin, H, W, device=device, dtype=dtype).contiguous(memory_format=fmt)
    w = torch.randn(Cout, Cin, 1, 1, device=device, dtype=dtype) / Cin**0.5
    b = torch.randn(Cout, device=device, dtype=dtype)
    r = torch.randn(batch, Cout, H, W, device=device, dtype=dtype).contiguous(memory_format=fmt) if residual else None
    grad = torch.randn(batch, Cout, H, W, device=device, dtype=dtype).contiguous(memory_format=fmt)
    e, P = x.element_size(), batch * H * W
    forward = e * (P * Cin + Cin * Cout + Cout + P * Cout + (P * Cout if residual else 0))
    bytes_moved = forward if mode == "forward" else forward + e * (P * Cout + 2 * P * Cin + Cin * Cout + Cout)
    flops = 2 * P * Cin * Cout * (1 if mode == "forward" else 3)
    row = {"Cin": Cin, "Cout": Cout, "H": H, "W": W, "activation": act, "residual": residual, "batch": batch,
           "dtype": dtype_name, "layout": layout, "mode": mode, "bytes": bytes_moved, "flops": flops}
    calls = {}
    for name, fn in provs.items():
        if mode == "forward":
            calls[name] = lambda fn=fn: fn(x, w, b, r, act)
        else:
            leaves = [t.detach().requires_grad_() for t in (x, w, b) + ((r,) if residual else ())]
            calls[name] = lambda fn=fn, leaves=leaves: torch.autograd.grad(
                fn(*leaves[:3], leaves[3] if residual else None, act), leaves, grad)
    return row, calls


def add_tflops(row: dict, names) -> None:
    """``<name>_TFLOPS`` (row["flops"] at the median time) for every provider that ran."""
    for name in names:
        if f"{name}_p50_ms" in row:
            row[f"{name}_TFLOPS"] = row["flops"] / (row[f"{name}_p50_ms"] * 1e-3) / 1e12


def sweep(s: "OpSettings", rows: list[dict], copy_bw: float | None) -> None:
    """Append one row per case to ``rows`` (in place, so an interrupted run keeps its rows)."""
    provs = providers(s.compile, s.backends)
    layers = [(model, layer) for model in s.models for layer in pointwise_layers(model, s.resolution)]
    measure_cases(s, rows, copy_bw, "pointwise_conv2d", layer_cases(layers, s.batch, s.dtype, s.layout, s.mode),
                  lambda layer, batch, dtype_name, layout, mode:
                  case(provs, layer, batch, dtype_name, layout, mode, s.device), extra=add_tflops)
