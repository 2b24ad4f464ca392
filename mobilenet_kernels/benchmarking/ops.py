"""The per-op benchmarks, one registry entry per op: ``bench ops`` and the scripts in benchmarks/ run
them by name. Adding an op's sweep is one module with ``sweep``, ``COLUMNS``,
``GROUP_BY`` and ``OPTIONS`` (see batch_norm_act.py) and one entry in ``OPS``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

from . import batch_norm_act, depthwise_conv2d, squeeze_excite
from .core import execute, geomean


@dataclass
class OpSettings:
    """What one op sweep covers. The lists are axes: every combination is a case."""

    device: str                 # "cpu" | "cuda"
    models: list[str]           # the sweep times every distinct layer of these (shapes.MODELS)
    batch: list[int]
    resolution: int             # input size of the model whose layers are taken
    dtype: list[str]            # keys of core.DTYPES
    layout: list[str]           # "nchw" | "nhwc" (channels_last)
    mode: list[str]             # "forward" | "full" (forward + backward)
    compile: list[str]          # torch.compile modes timed next to eager (keys of core.OP_COMPILE_MODES)
    backends: list[str]         # our backends to time
    options: dict = field(default_factory=dict)  # op-specific, with defaults from the entry's OPTIONS
    quiet: bool = False


def default_settings(device: str) -> OpSettings:
    """GPU: the layers of V3-Large and V2 at 224², batch 256, bf16 channels_last, torch.compile default
    and max-autotune, our cuda and triton backends. CPU: the same layers at 64², batch 8, fp32, no
    torch.compile (Inductor compiles C++ for seconds per shape), our C++ kernels (Triton would run in
    its interpreter, ~0.4 s per program)."""
    from .. import backends

    usable = backends.available(device)
    if device == "cuda":
        return OpSettings(device, ["mobilenet_v3_large", "mobilenet_v2"], [256], 224, ["bfloat16"], ["nhwc"],
                          ["forward", "full"], ["default", "max-autotune"], [b for b in ("cuda", "triton") if b in usable])
    return OpSettings(device, ["mobilenet_v3_large", "mobilenet_v2"], [8], 64, ["float32"], ["nhwc"], ["forward", "full"],
                      [], [b for b in ("cuda",) if b in usable])


@dataclass(frozen=True)
class OpBenchmark:
    name: str                   # the --op value and the default result-file name
    op: str                     # the op it times: the result file's "op"
    description: str
    sweep: Callable[[OpSettings, list[dict], float | None], None]  # appends rows (copy bandwidth or None)
    columns: tuple[str, ...]    # of the markdown table
    group_by: tuple[str, ...]   # row fields the summary's geometric means are taken per
    options: dict               # op-specific settings and their defaults


def _entry(name: str, op: str, module, description: str) -> OpBenchmark:
    """The entry of a sweep module (its sweep, COLUMNS, GROUP_BY and OPTIONS)."""
    return OpBenchmark(name=name, op=op, description=description, sweep=module.sweep, columns=tuple(module.COLUMNS),
                       group_by=module.GROUP_BY, options=module.OPTIONS)


OPS: dict[str, OpBenchmark] = {
    b.name: b
    for b in (
        _entry("batch_norm_act", "batch_norm_act", batch_norm_act,
               "BatchNorm + activation, eval and training; forward and forward+backward"),
        _entry("depthwise", "depthwise_conv2d", depthwise_conv2d,
               "depthwise conv alone (forward, forward+backward) and dw conv + BN + act in training"),
        _entry("squeeze_excite", "squeeze_excite", squeeze_excite,
               "squeeze-and-excite of MobileNetV3 (pool, excite, scale); forward and forward+backward"),
    )
}


def by_op(op: str) -> OpBenchmark | None:
    """The entry whose results carry ``"op": op`` (what a result file names), or None."""
    return next((b for b in OPS.values() if b.op == op), None)


def group_rows(rows: list[dict], group_by: tuple[str, ...]) -> dict[str, list[dict]]:
    """Rows by the values of their ``group_by`` fields, labelled like "eval/forward/bfloat16/nhwc/b256".
    A row that lacks a field (an older result file) groups without it."""

    def label(row: dict) -> str:
        parts = []
        for key in group_by:
            if key in row:
                value = row[key]
                parts.append(("train" if value else "eval") if key == "training" else
                             f"b{value}" if key == "batch" else str(value))
        return "/".join(parts)

    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(label(row), []).append(row)
    return groups


def summarize(rows: list[dict], group_by: tuple[str, ...]) -> dict[str, float]:
    """Geometric-mean speed-ups of every provider per group of rows (group_rows):
    ``"eval/forward/bfloat16/nhwc/b256/cuda_vs_eager": 1.29``."""
    summary = {}
    for group, members in group_rows(rows, group_by).items():
        for key in sorted({k for r in members for k in r if "_speedup_vs_" in k}):
            g = geomean([r.get(key) for r in members])
            if g:
                provider, ref = key.split("_speedup_vs_")
                summary[f"{group}/{provider}_vs_{ref}"] = g
    return summary


def run(bench: OpBenchmark, settings: OpSettings, *, out: str, name: str | None = None,
        record_settings: dict | None = None, **record_extra) -> int:
    """Run one op's sweep and write ``name``.json / .md (default name: the entry's) to ``out``.
    ``record_settings`` replaces the settings stored in the file (the scripts store their arguments)."""
    settings = dataclasses.replace(settings, options={**bench.options, **settings.options})
    record = {"benchmark": "op", "op": bench.op, **record_extra,
              "settings": record_settings if record_settings is not None else dataclasses.asdict(settings)}
    return execute(device=settings.device, out=out, name=name or bench.name, record=record,
                   fill=lambda rows, env: bench.sweep(settings, rows, env.get("copy_GBps", 0) * 1e9 or None),
                   summarize=lambda rows: summarize(rows, bench.group_by), columns=list(bench.columns))
