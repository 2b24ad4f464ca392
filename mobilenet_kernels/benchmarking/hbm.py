"""HBM bytes per image of a MobileNet inference: a byte model, and ncu's measurement to hold it against.

Issue 7's premise is that fusion cuts memory traffic: keeping an inverted-residual block's expanded
tensor on chip takes a MobileNetV2 inference from about 82 MB to about 5 MB of HBM traffic per
image (bf16). This module states that model per model and checks it.

The byte model (:func:`byte_model`) walks torchvision's model at batch 1 with forward hooks and
counts, per image, the bytes each kernel of three ways of running it must read and write at least
(each tensor read once per kernel that reads it, written once by the kernel that makes it, nothing
kept in cache between kernels):

- ``eager``: torchvision's eval forward, a kernel per module: every conv and linear (input, output),
  BatchNorm (input, output), activation (input, output; in place or not), the residual add (two
  inputs, one output), squeeze-excite's pooling (input) and scale (input, output), the final pooling.
- ``op_by_op``: ours by default in eval: BatchNorm folded into the conv, the activation and the
  residual add in the conv's epilogue (the residual one more read), squeeze-excite as one op that
  reads its input twice (pooling, then scale) and writes its output once.
- ``whole_block``: every inverted-residual block as one kernel that reads the block's input and
  writes its output (the expanded tensors stay on chip); a block with squeeze-excite as two passes
  of it, which read the input twice (the first emits only the pooled means); the rest as op_by_op.

Weights are read once per forward: ``weights_MB`` apart, and ``/ batch`` in each per-image total.

The measurement (:func:`parse_ncu_csv`) sums ``dram__bytes_read.sum`` and ``dram__bytes_write.sum``
over the kernels of one forward, from ncu's CSV output (``--csv --print-units base``); ncu flushes
the caches before each kernel by default (``--cache-control all``), which matches the model's "no
reuse between kernels". benchmarks/hbm_bytes.py runs both.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

import torch
from torch import nn

LEVELS = ("eager", "op_by_op", "whole_block")
DRAM_METRICS = ("dram__bytes_read.sum", "dram__bytes_write.sum")
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.Sigmoid)
_UNITS = {"byte": 1, "bytes": 1, "kbyte": 1e3, "mbyte": 1e6, "gbyte": 1e9, "tbyte": 1e12,
          "kb": 1e3, "mb": 1e6, "gb": 1e9}


@dataclass
class _Block:
    input: int = 0        # elements per image
    output: int = 0
    residual: bool = False
    se: bool = False
    kernels: dict = field(default_factory=lambda: {level: 0 for level in LEVELS})  # elements moved inside


def _is_block(module: nn.Module) -> bool:
    return type(module).__name__ == "InvertedResidual"


def _is_se(module: nn.Module) -> bool:
    return type(module).__name__ == "SqueezeExcitation"


def byte_model(model_name: str, size: int = 224, dtype: torch.dtype = torch.bfloat16, batch: int = 1) -> dict:
    """The byte model of ``model_name`` (a torchvision MobileNet V2/V3) at ``size``², ``dtype``:
    ``{"<level>_MB": MB per image at ``batch`` for each of LEVELS, "activations_<level>_MB": the same
    without the weights, "weights_MB": per forward, "blocks": n, "blocks_se": n with squeeze-excite}``
    (MB = 1e6 bytes)."""
    import torchvision

    model = getattr(torchvision.models, model_name)().eval()
    blocks: list[_Block] = []
    outside = {level: 0 for level in LEVELS}  # elements moved outside the blocks
    stack: list[_Block] = []                  # the block being run, if any
    in_se: list[bool] = []

    def add(levels, elems):
        target = stack[-1].kernels if stack else outside
        for level in levels:
            target[level] += elems

    def leaf_hook(module, inputs, output):
        n_in, n_out = inputs[0].numel(), output.numel()
        if in_se and in_se[-1]:
            return  # squeeze-excite's inner convs and activations: a few values per image
        if isinstance(module, (nn.Conv2d, nn.Linear, nn.AdaptiveAvgPool2d)):
            add(LEVELS, n_in + n_out)
        elif isinstance(module, (nn.BatchNorm2d, *_ACTIVATIONS)):
            add(("eager",), n_in + n_out)  # folded into the conv or its epilogue otherwise

    def se_pre(module, inputs):
        in_se.append(True)

    def se_post(module, inputs, output):
        in_se.pop()
        # pooling reads x; scale reads x and writes the output (eagerly two kernels, ours one op
        # with the same two passes)
        add(LEVELS, 3 * inputs[0].numel())
        if stack:
            stack[-1].se = True

    def block_pre(module, inputs):
        stack.append(_Block(input=inputs[0].numel(), residual=bool(getattr(module, "use_res_connect", False))))

    def block_post(module, inputs, output):
        block = stack.pop()
        block.output = output.numel()
        if block.residual:
            block.kernels["eager"] += 3 * block.output  # the add: two reads, one write
            block.kernels["op_by_op"] += block.output   # the residual read by the projection's epilogue
            block.kernels["whole_block"] += block.output
        blocks.append(block)

    handles = []
    for module in model.modules():
        if _is_block(module):
            handles += [module.register_forward_pre_hook(block_pre), module.register_forward_hook(block_post)]
        elif _is_se(module):
            handles += [module.register_forward_pre_hook(se_pre), module.register_forward_hook(se_post)]
        elif not list(module.children()):
            handles.append(module.register_forward_hook(leaf_hook))
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    for h in handles:
        h.remove()

    elem = torch.empty((), dtype=dtype).element_size()
    weights = sum(p.numel() for p in model.parameters()) * elem
    found: dict = {"weights_MB": weights / 1e6, "blocks": len(blocks), "blocks_se": sum(b.se for b in blocks)}
    for level in LEVELS:
        elems = outside[level]
        for b in blocks:
            if level == "whole_block":
                elems += (2 if b.se else 1) * b.input + b.output
            else:
                elems += b.kernels[level]
        found[f"activations_{level}_MB"] = elems * elem / 1e6
        found[f"{level}_MB"] = (elems * elem + weights / batch) / 1e6
    return found


def parse_ncu_csv(text: str) -> dict:
    """Sums ncu's ``--csv`` output (the default "details" page: one row per kernel launch and
    metric) over the launches: ``{"kernels": launches, "<metric>": bytes, ...}`` for the metrics of
    DRAM_METRICS found. Lines before the CSV header (ncu's ``==PROF==`` messages, the program's
    output) are skipped; values may carry thousands separators and any byte unit."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith('"ID"')), None)
    if start is None:
        raise ValueError("ncu output: no CSV header (a line starting with \"ID\") found")
    totals = {metric: 0.0 for metric in DRAM_METRICS}
    launches = set()
    for row in csv.DictReader(io.StringIO("\n".join(lines[start:]))):
        metric = row.get("Metric Name")
        if metric not in totals:
            continue
        unit = (row.get("Metric Unit") or "byte").strip().lower()
        if unit not in _UNITS:
            raise ValueError(f"ncu output: unknown unit {unit!r} of {metric}")
        totals[metric] += float(row["Metric Value"].replace(",", "")) * _UNITS[unit]
        launches.add(row["ID"])
    return {"kernels": len(launches), **totals}
