"""batch_norm_act over the BatchNorm+activation layers of MobileNets: our backends vs PyTorch eager
(F.batch_norm + activation) and torch.compile, in eval and/or training mode.

Bytes are those of our algorithm's passes over the activation (x, y, dy, dx of one size S): eval
forward 2S (read x, write y), eval forward+backward 5S; training forward 3S (the statistics pass
reads x, the apply pass reads x and writes y), training forward+backward 8S (+ the reduction pass
reads x and dy, the dx pass reads x and dy and writes dx).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F

from .. import functional as MF
from ..activations import apply_activation
from .core import DTYPES, compiled_providers, layer_cases, measure_cases
from .shapes import batch_norm_layers

if TYPE_CHECKING:
    from .ops import OpSettings

COLUMNS = ["model", "C", "H", "W", "activation", "batch", "dtype", "layout", "training", "mode", "eager_p50_ms",
           "cuda_p50_ms", "triton_p50_ms", "torch_compile_p50_ms", "torch_compile_max_autotune_p50_ms", "cuda_GBps",
           "cuda_pct_peak", "cuda_pct_copy", "cuda_speedup_vs_eager", "triton_speedup_vs_eager",
           "cuda_speedup_vs_compile"]
GROUP_BY = ("training", "mode", "dtype", "layout", "batch")
OPTIONS = {"training": [False, True]}  # which BatchNorm modes to sweep

# Passes over the activation size S, by (training, mode): see the module docstring.
_PASSES = {(False, "forward"): 2, (False, "full"): 5, (True, "forward"): 3, (True, "full"): 8}


def providers(device: str, compile_modes: list[str], backends: list[str], training: bool) -> dict[str, Callable]:
    """``fn(x, mean, var, weight, bias, activation)`` per provider: eager, torch.compile per mode,
    and each of our ``backends``."""

    def eager(x, m, v, w, b, act):
        return apply_activation(F.batch_norm(x, m, v, w, b, training, 0.1, 1e-5), act)

    found = {"eager": eager, **compiled_providers(eager, compile_modes)}
    for name in backends:
        found[name] = lambda x, m, v, w, b, act, _n=name: MF.batch_norm_act(x, m, v, w, b, training, 0.1, 1e-5, act,
                                                                           backend=_n)
    return found


def case(provs: dict[str, Callable], layer: tuple[int, int, int, str], batch: int, dtype_name: str, layout: str,
         mode: str, training: bool, device: str) -> tuple[dict, dict[str, Callable[[], object]]]:
    """One case: its row (what was timed, and the bytes moved) and a zero-argument call per provider.
    ``mode`` "forward" times the forward; "full" the forward and backward (grad of x)."""
    C, H, W, act = layer
    x = torch.randn(batch, C, H, W, device=device, dtype=DTYPES[dtype_name])
    if layout == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
    m, w, b = (torch.randn(C, device=device) for _ in range(3))
    v = torch.rand(C, device=device) + 0.5
    grad = torch.randn_like(x)
    bytes_moved = x.numel() * x.element_size() * _PASSES[(training, mode)]
    row = {"C": C, "H": H, "W": W, "activation": act, "batch": batch, "dtype": dtype_name, "layout": layout,
           "mode": mode, "training": training, "bytes": bytes_moved}
    calls = {}
    for name, fn in provs.items():
        if mode == "forward":
            calls[name] = lambda fn=fn: fn(x, m, v, w, b, act)
        else:
            xg = x.detach().requires_grad_()
            calls[name] = lambda fn=fn, xg=xg: torch.autograd.grad(fn(xg, m, v, w, b, act), xg, grad)
    return row, calls


def sweep(s: "OpSettings", rows: list[dict], copy_bw: float | None) -> None:
    """Append one row per case to ``rows`` (in place, so an interrupted run keeps its rows)."""
    training_modes = s.options["training"]
    provs = {t: providers(s.device, s.compile, s.backends, t) for t in training_modes}
    layers = [(model, layer) for model in s.models for layer in batch_norm_layers(model, s.resolution)]
    cases = layer_cases(layers, s.batch, s.dtype, s.layout, training_modes, s.mode)
    measure_cases(s, rows, copy_bw, "batch_norm_act", cases,
                  lambda layer, batch, dtype_name, layout, training, mode:
                  case(provs[training], layer, batch, dtype_name, layout, mode, training, s.device))
