"""The per-op benchmarks, one registry entry per op: ``bench ops`` and the scripts in benchmarks/ run
them by name. Adding an op's sweep is one module with ``sweep``, ``COLUMNS``,
``GROUP_BY`` and ``OPTIONS`` (see batch_norm_act.py) and one entry in ``OPS``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

from . import (batch_norm_act, depthwise_conv2d, inverted_residual, pointwise_conv2d, pointwise_depthwise,
               squeeze_excite)
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
        _entry("pointwise", "pointwise_conv2d", pointwise_conv2d,
               "1x1 conv (BN folded) + bias + activation (+ residual add) as one GEMM; forward and forward+backward"),
        _entry("pointwise_depthwise", "pointwise_depthwise_bn_act_train", pointwise_depthwise,
               "an inverted residual's expand + depthwise layers in training as one op, in each setting of its "
               "fusion switches; forward and forward+backward"),
        _entry("inverted_residual", "inverted_residual_eval", inverted_residual,
               "a whole inverted-residual block without SE, eval, BN folded (expand, dw, project); forward"),
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


# ----------------------------------------------------------------------------- benchmarks/bench_*.py


def script_parser(description: str, *, models: list[str], batch: list[int], dtype: list[str], layout: list[str],
                  name: str | None) -> "argparse.ArgumentParser":
    """The arguments every benchmarks/bench_*.py script shares; the defaults given are the GPU's
    (on a CPU: batch 8, 64², float32, nhwc). Each script adds its own and calls script_run."""
    import argparse

    import torch

    from .core import DTYPES

    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if gpu else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--models", nargs="+", default=models)
    p.add_argument("--batch", nargs="+", type=int, default=batch if gpu else [8])
    p.add_argument("--resolution", type=int, default=224 if gpu else 64)
    p.add_argument("--dtype", nargs="+", default=dtype if gpu else ["float32"], choices=list(DTYPES))
    p.add_argument("--layout", nargs="+", default=layout if gpu else ["nhwc"], choices=["nhwc", "nchw"])
    p.add_argument("--mode", nargs="+", default=["forward", "full"], choices=["forward", "full"])
    p.add_argument("--no-autotune", action="store_true", help="skip torch.compile max-autotune (slow to compile)")
    p.add_argument("--no-compile", action="store_true",
                   help="no torch.compile rows at all (every shape compiles for seconds): ours vs eager only")
    p.add_argument("--backends", nargs="+", default=["cuda", "triton"], choices=["cuda", "triton"],
                   help="our backends to time (those usable on the device)")
    p.add_argument("--out", default="mk_results")
    p.add_argument("--name", default=name, help="file name stem")
    p.add_argument("--quiet", action="store_true")
    return p


def script_run(parser: "argparse.ArgumentParser", args, op: str, options: dict | None = None, **record_extra) -> int:
    """Check the shared arguments (errors through ``parser``), then run the sweep of ``OPS[op]``
    and write its JSON and markdown; the file records the script's arguments as its settings."""
    import torch

    from .. import backends

    if min(args.batch) <= 0:
        parser.error("--batch: must be positive")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")
    if args.device == "cpu":
        torch.set_num_threads(1)  # CPU timings on one thread, as torch.utils.benchmark's default
    settings = OpSettings(
        device=args.device, models=args.models, batch=args.batch, resolution=args.resolution, dtype=args.dtype,
        layout=args.layout, mode=args.mode,
        compile=[] if args.no_compile else ["default"] if args.device != "cuda" or args.no_autotune
        else ["default", "max-autotune"],
        backends=[b for b in args.backends if b in backends.available(args.device)],
        options=options or {}, quiet=args.quiet,
    )
    record_settings = {k: v for k, v in vars(args).items() if k not in ("out", "quiet")}
    return run(OPS[op], settings, out=args.out, name=args.name, record_settings=record_settings, **record_extra)
