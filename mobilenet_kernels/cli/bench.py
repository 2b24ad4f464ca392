"""``bench ops`` and ``bench model``: the per-op sweeps and the whole-model benchmark, each writing
NAME.json (environment, settings, raw timings, ratios) and NAME.md to --out, with a progress bar,
and printing the table at the end. Defaults depend on the device: the full set on a GPU, a small
one on a CPU. The machinery is in mobilenet_kernels.benchmarking."""

from __future__ import annotations

import argparse

import torch

from ..benchmarking.core import OP_COMPILE_MODES
from . import CliError

_DEVICES = ("cpu", "cuda")
_DEFAULT_OUT = "mk_results"


class _OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line with exit code 2, like the CliErrors raised after parsing."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="per-op and whole-model benchmarks (JSON + markdown to --out)",
                       description="Per-op sweeps (bench ops) and whole-model steps (bench model): NAME.json and "
                                   "NAME.md to --out, the table printed at the end. Defaults: the full set on a GPU, "
                                   "a small one on a CPU.")
    kinds = p.add_subparsers(dest="kind", required=True, parser_class=_OneLineParser, metavar="{ops,model}")

    ops = kinds.add_parser("ops", help="per-op sweeps over MobileNet layer shapes, every usable backend vs "
                                       "eager and torch.compile",
                           description=_ops_description(), formatter_class=argparse.RawDescriptionHelpFormatter)
    ops.add_argument("--op", nargs="+", default=["all"], metavar="OP", help="ops to sweep, or all (default)")
    ops.add_argument("--models", nargs="+", metavar="MODEL",
                     help="take the layers of these torchvision models (default mobilenet_v3_large mobilenet_v2)")
    _add_common(ops, several_dtypes=True, batch_help="batch sizes (default: GPU 256, CPU 8)",
                size_help="input resolution of the model whose layers are taken (default: GPU 224, CPU 64)",
                dtype_help="dtypes (default: GPU bfloat16, CPU float32)",
                compile_help="torch.compile modes timed next to eager: default, max-autotune (run without CUDA "
                             "graphs), or none (default: GPU both; CPU none, as Inductor compiles C++ for seconds "
                             "per shape)")
    ops.add_argument("--layout", nargs="+", metavar="LAYOUT", help="nhwc (channels_last) and/or nchw (default nhwc)")
    ops.add_argument("--mode", nargs="+", default=["forward", "full"], metavar="MODE",
                     help="forward and/or full (forward + backward) (default both)")
    ops.set_defaults(run=run_ops)

    model = kinds.add_parser("model", help="whole-model img/s, ms per step and peak memory: torchvision vs ours, "
                                           "eager and compiled", description=_model_description(),
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    model.add_argument("--model", nargs="+", metavar="MODEL",
                       help="mobilenet_v3_large, mobilenet_v3_small, mobilenet_v2, mobilenet_v1 or all "
                            "(default: GPU all, CPU mobilenet_v3_large mobilenet_v2)")
    model.add_argument("--mode", choices=["train", "infer", "both"], default="both",
                       help="training step, inference step, or both (default)")
    _add_common(model, several_dtypes=False,
                batch_help="batch sizes for every mode (default: GPU train 256, infer 1 and 256; CPU 8)",
                size_help="input resolution, at least 32 (default: GPU 224, CPU 96)",
                dtype_help="float32, or bfloat16 / float16 under autocast (AMP) (default: GPU bfloat16, CPU float32)",
                compile_help="torch.compile modes: default, max-autotune, reduce-overhead, max-autotune-no-cudagraphs, "
                             "or none (default: GPU default max-autotune, CPU none)")
    model.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                       help="channels_last model and input (default: GPU yes, CPU no)")
    model.add_argument("--recompute", action="store_true",
                       help="also train our V2/V3 with recompute=True (the blocks recompute their expanded tensors in "
                            "backward instead of storing them): rows 'ours[BACKEND] + recompute'; compare saved_mb")
    model.add_argument("--cuda-graph", action="store_true",
                       help="CUDA: also run each variant's step replayed from a CUDA graph "
                            "(mobilenet_kernels.graph_inference / graph_train_step): rows 'VARIANT + cuda graph'")
    model.add_argument("--switches", nargs="+", metavar="K=V[,K=V]", default=[],
                       help="also run ours (eager, and from a CUDA graph with --cuda-graph) with each of these "
                            "settings of the per-call kernel switches (MK_DW_BN_FUSED, MK_DW_INPUT_BN; e.g. "
                            "MK_DW_INPUT_BN=0 MK_DW_BN_FUSED=0,MK_DW_INPUT_BN=0): rows 'ours[BACKEND] {K=V}'")
    model.add_argument("--saved-only", action="store_true",
                       help="training rows record only saved_mb, the activation memory (one forward per variant, "
                            "nothing timed): bytes do not depend on the device, so a CPU gives batch-256 numbers; "
                            "implies --mode train and no torch.compile")
    model.set_defaults(run=run_model)


def _add_common(p: argparse.ArgumentParser, *, several_dtypes: bool, batch_help: str, size_help: str,
                dtype_help: str, compile_help: str) -> None:
    p.add_argument("--batch", nargs="+", type=int, metavar="N", help=batch_help)
    p.add_argument("--size", type=int, help=size_help)
    p.add_argument("--dtype", nargs="+" if several_dtypes else None, metavar="DTYPE", help=dtype_help)
    p.add_argument("--compile", nargs="+", metavar="MODE", help=compile_help)
    p.add_argument("--backend", nargs="+", metavar="BACKEND",
                   help="our backends to time: cuda (CUDA kernels on a GPU, the C++ kernels on a CPU), triton, torch "
                        "(default: the fastest usable one; on a GPU bench ops times cuda and triton)")
    p.add_argument("--device", help="cpu or cuda (default: cuda if a GPU is visible)")
    p.add_argument("--threads", type=int,
                   help="torch's CPU threads (default on a CPU: 1, as torch.utils.benchmark does: stable numbers, and "
                        "a shared machine does not stall the OpenMP threads; on a GPU: torch's default)")
    p.add_argument("--out", default=_DEFAULT_OUT, help=f"directory for the JSON and markdown (default {_DEFAULT_OUT})")
    p.add_argument("--name", help="file name stem of the results (default: each op's name; models)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _ops_description() -> str:
    from ..benchmarking.ops import OPS

    lines = ["Per-op sweeps over the distinct layers of MobileNet models: our backends vs eager PyTorch and",
             "torch.compile, forward and forward+backward. One NAME.json + NAME.md per op. Ops:", ""]
    width = max(len(name) for name in OPS) + 1
    lines += [f"  {b.name:<{width}} {b.description}" for b in OPS.values()]
    return "\n".join(lines)


def _model_description() -> str:
    from ..benchmarking import models

    return models.__doc__


# ---------------------------------------------------------------------------------------------------
# Argument checks: every bad value is a CliError (one line, exit code 2).


def _device(args) -> str:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device not in _DEVICES:
        raise CliError(f"--device: unknown device {device!r}; expected cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise CliError("--device cuda: no CUDA device is visible")
    return device


def _names(values: list[str], known, what: str, flag: str) -> list[str]:
    """``values`` with "all" expanded, each checked against ``known``; duplicates dropped."""
    known = list(known)
    found = []
    for v in values:
        if v == "all":
            found += known
        elif v in known:
            found.append(v)
        else:
            raise CliError(f"{flag}: unknown {what} {v!r}; expected one of {', '.join(known)} or all")
    return list(dict.fromkeys(found))


def _choices(values: list[str], known, flag: str) -> list[str]:
    for v in values:
        if v not in known:
            raise CliError(f"{flag}: {v!r} is not one of {', '.join(known)}")
    return list(dict.fromkeys(values))


def _dtypes(values: list[str]) -> list[str]:
    from ..benchmarking.core import DTYPE_ALIASES

    for v in values:
        if v not in DTYPE_ALIASES:
            raise CliError(f"--dtype: unknown dtype {v!r}; expected one of {', '.join(DTYPE_ALIASES)}")
    return list(dict.fromkeys(DTYPE_ALIASES[v] for v in values))


def _set_threads(threads: int | None, device: str) -> None:
    if threads is not None and threads <= 0:
        raise CliError(f"--threads: must be positive, got {threads}")
    if threads is not None or device == "cpu":
        torch.set_num_threads(threads or 1)


def _batches(values: list[int]) -> list[int]:
    bad = [b for b in values if b <= 0]
    if bad:
        raise CliError(f"--batch: must be positive, got {bad[0]}")
    return list(dict.fromkeys(values))


def _compile_modes(values: list[str], known) -> list[str]:
    if values == ["none"]:
        return []
    if "none" in values:
        raise CliError("--compile: none cannot be combined with compile modes")
    return _choices(values, known, "--compile")


def _backends(values: list[str], device: str) -> list[str]:
    from .. import backends

    for name in values:
        if name not in backends.BACKENDS:
            raise CliError(f"--backend: unknown backend {name!r}; expected one of {', '.join(backends.BACKENDS)}")
        reason = backends.unusable_reason(name, device)
        if reason is not None:
            raise CliError(f"--backend {name}: cannot run on {device} here: {reason}")
    return list(dict.fromkeys(values))


def _fastest_backend(device: str) -> list[str]:
    """The backend ``backend=None`` would pick for ``device`` (never torch: that is the baseline)."""
    from .. import backends

    usable = backends.available(device)
    return [next(name for name in ("cuda", "triton", "torch") if name in usable)]


def _require_torchvision() -> None:
    try:
        import torchvision  # noqa: F401
    except ImportError:
        raise CliError("torchvision is needed for the benchmarks (MobileNet shapes and baselines): "
                       "pip install torchvision") from None


# ---------------------------------------------------------------------------------------------------


def run_ops(args) -> int:
    from ..benchmarking import ops, shapes

    device = _device(args)
    s = ops.default_settings(device)
    benches = _names(args.op, ops.OPS, "op", "--op")
    if args.models:
        s.models = _names(args.models, shapes.MODELS, "model", "--models")
    if args.batch:
        s.batch = _batches(args.batch)
    if args.size is not None:
        if args.size < 32:
            raise CliError(f"--size: at least 32 (the models downsample by 32), got {args.size}")
        s.resolution = args.size
    if args.dtype:
        s.dtype = _dtypes(args.dtype)
    if args.layout:
        s.layout = _choices(args.layout, ("nhwc", "nchw"), "--layout")
    s.mode = _choices(args.mode, ("forward", "full"), "--mode")
    if args.compile:
        s.compile = _compile_modes(args.compile, OP_COMPILE_MODES)
    if args.backend:
        s.backends = _backends(args.backend, device)
    s.quiet = args.quiet
    _set_threads(args.threads, device)
    _require_torchvision()
    status = 0
    for name in benches:
        # --name is the file stem of one op's results, the prefix of several ops' files
        stem = name if not args.name else args.name if len(benches) == 1 else f"{args.name}_{name}"
        status |= ops.run(ops.OPS[name], s, out=args.out, name=stem)
    return status


def _switch_setting(text: str) -> dict[str, str]:
    """One --switches setting, "K=V[,K=V]", as {K: V}; only the switches read at every call."""
    from ..benchmarking.core import PER_CALL_SWITCHES

    setting = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not value:
            raise CliError(f"--switches: expected K=V[,K=V], got {text!r}")
        if key not in PER_CALL_SWITCHES:
            raise CliError(f"--switches: {key!r} is not one of {', '.join(PER_CALL_SWITCHES)} (the switches read at "
                           "every call)")
        setting[key] = value
    return setting


def run_model(args) -> int:
    from ..benchmarking import models

    device = _device(args)
    s = models.default_settings(device)
    if args.model:
        s.models = _names(args.model, models.MODELS, "model", "--model")
    s.modes = list(models.MODES) if args.mode == "both" else [args.mode]
    if args.batch:
        s.batch = {mode: _batches(args.batch) for mode in models.MODES}
    if args.size is not None:
        if args.size < models.MIN_SIZE:
            raise CliError(f"--size: at least {models.MIN_SIZE} (the models downsample by 32), got {args.size}")
        s.size = args.size
    if args.dtype:
        s.dtype = _dtypes([args.dtype])[0]
    if args.channels_last is not None:
        s.channels_last = args.channels_last
    if args.compile:
        s.compile = _compile_modes(args.compile, models.COMPILE_MODES)
    s.backends = _backends(args.backend, device) if args.backend else _fastest_backend(device)
    s.recompute = args.recompute
    s.switches = [_switch_setting(text) for text in args.switches]
    if args.cuda_graph:
        if device != "cuda":
            raise CliError("--cuda-graph: CUDA graphs need --device cuda")
        if args.saved_only:
            raise CliError("--cuda-graph: --saved-only times no step")
        if s.dtype == "float16" and "train" in s.modes:
            raise CliError("--cuda-graph: float16 training steps cannot be captured (GradScaler); use bfloat16")
        s.cuda_graph = True
    if args.saved_only:
        if args.mode == "infer" or (args.compile and args.compile != ["none"]):
            raise CliError("--saved-only: measures training activations of eager models (use --mode train, "
                           "no --compile)")
        s.saved_only, s.modes, s.compile = True, ["train"], []
    s.quiet = args.quiet
    if "train" in s.modes and min(s.batch["train"]) * ((s.size + 31) // 32) ** 2 < 2:
        raise CliError(f"--batch 1 at --size {s.size} cannot train: BatchNorm needs more than one value per "
                       "channel in the last layers (use a batch of 2 or more, or --size 64 or more)")
    _set_threads(args.threads, device)
    _require_torchvision()
    return models.run(s, out=args.out, name=args.name or "models")
