"""Host time per layer (issue 7): which layers of ours cost the host more than torchvision's.

GPU run 6 (benchmarks/results/profile_model_h200.json) found V3-Large's bf16 training step
host-bound for both: torchvision 28.4 ms of host work per step for 1051 launches, ours[cuda] 37.2 ms
for 862. The per-op profile attributes a step's host time to ops, but not the Python between them
(modules, functional wrappers, argument checks) and it slows both. This times each top-level layer
of the model on its own instead (``features[i]``, then the pooling + classifier), torchvision's and
ours on each backend with the same weights and input, at a small batch where the GPU's work is
short and a call is bound by the host:

- ``train``: forward and the backward of the output's sum (the layer in training mode, its input a
  leaf that requires grad, as every layer's input but the first is in a training step);
- ``infer``: forward in eval mode under no_grad.

Both under the autocast of ``dtype`` (bf16 AMP by default on CUDA, as the model benchmark).
On CUDA a row has per variant the host time per call (core.host_ms: each call enqueued on an idle
GPU, not waited for) and the GPU time per call (do_bench); where host >= GPU time the layer is
host-bound and the host time is what it costs the step. On a CPU the wall time per call: the
kernels run on the host there, so only differences far above the kernels' own time tell about the
Python and dispatch around them. The summary adds up each variant over the layers, per mode.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from .core import progress, time_ms
from .models import Variant, _autocast, _synchronize, build

COLUMNS_BASE = ["layer", "kind", "mode", "shape"]


def describe(layer: nn.Module) -> str:
    """A short name of a top-level layer: the block's class and its channels (in -> hidden -> out),
    kernel, stride and squeeze-excite, as torchvision's ``features[i]`` holds it."""
    se = [m for m in layer.modules() if "SqueezeExcitation" in type(m).__name__]
    in_se = {id(c) for m in se for c in m.modules()}
    convs = [m for m in layer.modules() if isinstance(m, nn.Conv2d) and id(m) not in in_se]
    if not convs:
        return type(layer).__name__
    dw = next((c for c in convs if c.groups > 1 and c.groups == c.in_channels), None)
    if dw is None:
        c = convs[0]
        return f"conv k{c.kernel_size[0]} s{c.stride[0]} {c.in_channels}->{c.out_channels}"
    chans = [convs[0].in_channels] + [c.out_channels for c in convs if c is not dw]
    return f"block k{dw.kernel_size[0]} s{dw.stride[0]} {'->'.join(map(str, chans))}" + (" SE" if se else "")


class Head(nn.Module):
    """The pooling and the classifier of a MobileNet: what follows ``features``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        # MobileNetV3 has an avgpool module; V2's forward calls adaptive_avg_pool2d itself
        self.avgpool = getattr(model, "avgpool", None) or nn.AdaptiveAvgPool2d(1)
        self.classifier = model.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(x), 1))


def layers(model: nn.Module) -> list[nn.Module]:
    return list(model.features) + [Head(model)]


def layer_inputs(model: nn.Module, x: torch.Tensor, autocast) -> list[torch.Tensor]:
    """The input of each of ``layers(model)`` for the model input ``x`` (eval mode, no_grad)."""
    found = []
    model = model.eval()
    with torch.no_grad(), autocast:
        for layer in layers(model):
            found.append(x)
            x = layer(x)
    return found


def layer_call(layer: nn.Module, x: torch.Tensor, mode: str, s) -> Callable[[], object]:
    """One ``mode`` call of ``layer`` on ``x`` (see the module's docstring)."""
    layer.train(mode == "train")
    if mode == "infer":
        def infer():
            with torch.no_grad(), _autocast(s):
                return layer(x)
        return infer
    leaf = x.detach().requires_grad_()

    def train():
        with _autocast(s):
            out = layer(leaf)
        out.float().sum().backward()
        leaf.grad = None
    return train


def time_call(fn: Callable[[], object], device: str) -> dict:
    """{"host_us", "gpu_us"} on CUDA (core.time_ms's host_ms and p50), {"wall_us"} on a CPU."""
    for _ in range(3):  # warm-up: Triton's JIT, cuDNN's heuristics, the allocator
        fn()
    _synchronize(device)
    t = time_ms(fn, device, warmup_ms=5, rep_ms=40 if device == "cuda" else 60)
    if device == "cuda":
        return {"host_us": 1e3 * t["host_ms"], "gpu_us": 1e3 * t["p50_ms"]}
    return {"wall_us": 1e3 * t["p50_ms"]}


def run(model_name: str, batch: int, size: int, s, modes: list[str], rows: list[dict]) -> None:
    """Rows of ``layers`` x ``modes`` for torchvision and ours on each of ``s.backends``, appended
    to ``rows`` (a variant that cannot run a layer gets ``<variant>_error`` in that row)."""
    fmt = torch.channels_last if s.channels_last else torch.contiguous_format
    base = Variant("torchvision", None, "none")
    tv = build(model_name, base).to(s.device, memory_format=fmt)
    state = tv.state_dict()
    models = {"torchvision": tv}
    for backend in s.backends:
        ours = build(model_name, Variant("ours", backend, "none"))
        ours.load_state_dict(state)
        models[f"ours[{backend}]"] = ours.to(s.device, memory_format=fmt)
    x = torch.randn(batch, 3, size, size, device=s.device).contiguous(memory_format=fmt)
    inputs = layer_inputs(copy.deepcopy(tv), x, _autocast(s))
    per_variant = {name: layers(m) for name, m in models.items()}
    kinds = {name: [describe(layer) for layer in ls] for name, ls in per_variant.items()}
    for name, found in kinds.items():  # row i must compare the same layer of every variant
        if found != kinds["torchvision"]:
            raise RuntimeError(f"{name}: its layers {found} are not torchvision's {kinds['torchvision']}")
    work = [(i, mode) for i in range(len(inputs)) for mode in modes]
    for i, mode in progress(work, f"{model_name} layers", s.quiet):
        row = {"layer": i, "kind": kinds["torchvision"][i], "mode": mode,
               "shape": "x".join(map(str, inputs[i].shape))}
        for name, ls in per_variant.items():
            try:
                row.update({f"{name}_{k}": v for k, v in time_call(layer_call(ls[i], inputs[i], mode, s),
                                                                   s.device).items()})
            except Exception as exc:  # noqa: BLE001  (recorded: the other variants still run)
                row[f"{name}_error"] = f"{type(exc).__name__}: {exc}"[:200]
        rows.append(row)


def summarize(rows: list[dict], variants: list[str], device: str) -> dict:
    """Per mode and variant the sum over the layers of its host (CUDA) or wall (CPU) time in ms,
    and ours minus torchvision's."""
    key = "host_us" if device == "cuda" else "wall_us"
    found = {}
    for mode in sorted({r["mode"] for r in rows}):
        mine = [r for r in rows if r["mode"] == mode]
        for v in variants:
            found[f"{mode} {v} {key[:-3]}_ms"] = sum(r.get(f"{v}_{key}", 0.0) for r in mine) / 1e3
        for v in variants[1:]:
            found[f"{mode} {v} - torchvision ms"] = found[f"{mode} {v} {key[:-3]}_ms"] - found[
                f"{mode} torchvision {key[:-3]}_ms"]
    return found


def columns(variants: list[str], device: str) -> list[str]:
    keys = ["host_us", "gpu_us"] if device == "cuda" else ["wall_us"]
    return COLUMNS_BASE + [f"{v}_{k}" for k in keys for v in variants] + [f"{v}_error" for v in variants]
