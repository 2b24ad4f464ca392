"""squeeze_excite over the SE blocks of MobileNetV3: our backends vs PyTorch eager (torchvision's
SqueezeExcitation: pool, 1x1 conv, relu, 1x1 conv, hardsigmoid, multiply) and torch.compile.

Bytes are those of our algorithm's passes over the activation (x, y, dy, dx of one size S):
forward 3S (the pool reads x, the scale pass reads x and writes y), forward+backward 7S (+ the
reduction reads x and dy, the grad_input pass reads dy and writes dx). "full" times the gradients of
the input and of all four parameters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F

from .. import functional as MF
from .core import DTYPES, compiled_providers, layer_cases, measure_cases
from .shapes import squeeze_excite_layers

if TYPE_CHECKING:
    from .ops import OpSettings

COLUMNS = ["model", "C", "H", "W", "S", "batch", "dtype", "layout", "mode", "eager_p50_ms", "cuda_p50_ms",
           "triton_p50_ms", "torch_compile_p50_ms", "torch_compile_max_autotune_p50_ms", "cuda_GBps", "cuda_pct_peak",
           "cuda_speedup_vs_eager", "triton_speedup_vs_eager", "cuda_speedup_vs_compile"]
GROUP_BY = ("mode", "dtype", "layout", "batch")
OPTIONS: dict = {}

_PASSES = {"forward": 3, "full": 7}
# The V3 models' SE blocks; V2 has none.
SE_MODELS = ("mobilenet_v3_large", "mobilenet_v3_small")


def eager(x, w1, b1, w2, b2):
    s = F.hardsigmoid(F.conv2d(F.relu(F.conv2d(F.adaptive_avg_pool2d(x, 1), w1, b1)), w2, b2))
    return x * s


def providers(compile_modes: list[str], backends: list[str]) -> dict[str, Callable]:
    found = {"eager": eager, **compiled_providers(eager, compile_modes)}
    for name in backends:
        found[name] = lambda x, w1, b1, w2, b2, _n=name: MF.squeeze_excite(x, w1, b1, w2, b2, backend=_n)
    return found


def case(provs: dict[str, Callable], layer: tuple[int, int, int, int], batch: int, dtype_name: str, layout: str,
         mode: str, device: str) -> tuple[dict, dict[str, Callable[[], object]]]:
    C, H, W, S = layer
    dtype = DTYPES[dtype_name]
    x = torch.randn(batch, C, H, W, device=device, dtype=dtype)
    if layout == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
    params = [torch.randn(S, C, 1, 1, device=device, dtype=dtype) / C**0.5, torch.randn(S, device=device, dtype=dtype),
              torch.randn(C, S, 1, 1, device=device, dtype=dtype) / S**0.5, torch.randn(C, device=device, dtype=dtype)]
    grad = torch.randn_like(x)
    row = {"C": C, "H": H, "W": W, "S": S, "batch": batch, "dtype": dtype_name, "layout": layout, "mode": mode,
           "bytes": x.numel() * x.element_size() * _PASSES[mode]}
    calls = {}
    for name, fn in provs.items():
        if mode == "forward":
            calls[name] = lambda fn=fn: fn(x, *params)
        else:
            leaves = [t.detach().requires_grad_() for t in (x, *params)]
            calls[name] = lambda fn=fn, leaves=leaves: torch.autograd.grad(fn(*leaves), leaves, grad)
    return row, calls


def sweep(s: "OpSettings", rows: list[dict], copy_bw: float | None) -> None:
    """Append one row per case to ``rows`` (in place, so an interrupted run keeps its rows)."""
    provs = providers(s.compile, s.backends)
    models = [m for m in s.models if m in SE_MODELS] or list(SE_MODELS)
    layers = [(model, layer) for model in models for layer in squeeze_excite_layers(model, s.resolution)]
    measure_cases(s, rows, copy_bw, "squeeze_excite", layer_cases(layers, s.batch, s.dtype, s.layout, s.mode),
                  lambda layer, batch, dtype_name, layout, mode:
                  case(provs, layer, batch, dtype_name, layout, mode, s.device))
