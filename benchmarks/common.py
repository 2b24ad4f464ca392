"""Shared benchmark machinery: timing, environment record, shapes from the models, JSON/markdown.

Timing: on CUDA, triton.testing.do_bench (CUDA events, L2 flushed between reps, quantiles
p20/p50/p80); on CPU, torch.utils.benchmark.Timer.blocked_autorange. Compare only rows from one
device and one run.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from typing import Callable

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# HBM peak of the cards we report % of peak for (bytes/s); others report GB/s only.
PEAK_BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12}


def git_commit() -> str:
    """MK_GIT_COMMIT when set (the device machine's copy of the tree has no usable git), else git."""
    if os.environ.get("MK_GIT_COMMIT"):
        return os.environ["MK_GIT_COMMIT"]
    try:
        return subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=ROOT, text=True, stderr=subprocess.DEVNULL).strip()
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("MK_GIT_COMMIT", "unknown")


def environment(device: str) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    name = torch.cuda.get_device_name() if device == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    record = {
        "device": name,
        "commit": git_commit(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if device == "cuda":
        record["copy_GBps"] = copy_bandwidth() / 1e9
    return record


_COPY_BANDWIDTH: float | None = None


def copy_bandwidth(nbytes: int = 2 << 30) -> float:
    """Measured device-to-device copy bandwidth (bytes read + written per second): the practical
    ceiling a memory-bound kernel is judged against, next to the datasheet peak. Measured once."""
    global _COPY_BANDWIDTH
    if _COPY_BANDWIDTH is None:
        import triton.testing

        src = torch.empty(nbytes, dtype=torch.uint8, device="cuda").random_()
        dst = torch.empty_like(src)
        ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=25, rep=200)
        _COPY_BANDWIDTH = 2 * nbytes / (ms * 1e-3)
        del src, dst
        torch.cuda.empty_cache()
    return _COPY_BANDWIDTH


def peak_bandwidth(device: str) -> float | None:
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((bw for key, bw in PEAK_BANDWIDTH.items() if key in name), None)


def bench(fn: Callable[[], object], device: str) -> dict:
    """Median and p20/p80 in milliseconds. On CUDA, MK_BENCH_WARMUP_MS / MK_BENCH_REP_MS (default 25 / 100)
    set do_bench's warm-up and measuring time; the GPU suite shortens them to fit its lease."""
    if device == "cuda":
        import triton.testing

        warmup = float(os.environ.get("MK_BENCH_WARMUP_MS", 25))
        rep = float(os.environ.get("MK_BENCH_REP_MS", 100))
        p20, p50, p80 = triton.testing.do_bench(fn, warmup=warmup, rep=rep, quantiles=[0.2, 0.5, 0.8])
        return {"p20_ms": p20, "p50_ms": p50, "p80_ms": p80}
    from torch.utils.benchmark import Timer

    m = Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=0.2)
    q = torch.tensor(m.raw_times) * 1e3
    return {"p20_ms": q.quantile(0.2).item(), "p50_ms": m.median * 1e3, "p80_ms": q.quantile(0.8).item()}


def batch_norm_layers(model_name: str, resolution: int = 224) -> list[tuple[int, int, int, str]]:
    """(C, H, W, activation) of every BatchNorm (+ the activation after it) in a torchvision model."""
    import torchvision

    from mobilenet_kernels.activations import activation_name

    model = getattr(torchvision.models, model_name)().eval()
    found = []
    for seq in model.modules():
        if isinstance(seq, torch.nn.Sequential):
            children = list(seq)
            for i, child in enumerate(children):
                if type(child) is torch.nn.BatchNorm2d:
                    nxt = children[i + 1] if i + 1 < len(children) else None
                    child._mk_act = activation_name(nxt) or "identity"
                    child.register_forward_hook(
                        lambda m, i, o: found.append((o.shape[1], o.shape[2], o.shape[3], m._mk_act))
                    )
    with torch.no_grad():
        model(torch.zeros(1, 3, resolution, resolution))
    return list(dict.fromkeys(found))


def depthwise_layers(model_name: str, resolution: int = 224) -> list[tuple]:
    """(C, H, W, k, stride, padding, dilation, activation) of every depthwise conv in a torchvision
    model, H/W being its input size and activation the one after its BatchNorm; duplicates dropped."""
    import torchvision

    from mobilenet_kernels.activations import activation_name

    model = getattr(torchvision.models, model_name)().eval()
    found = []
    for seq in model.modules():
        if not isinstance(seq, torch.nn.Sequential):
            continue
        children = list(seq)
        for i, conv in enumerate(children):
            if isinstance(conv, torch.nn.Conv2d) and conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels:
                act = activation_name(children[i + 2]) if i + 2 < len(children) else "identity"
                conv.register_forward_hook(
                    lambda m, inp, out, act=act: found.append(
                        (m.in_channels, inp[0].shape[2], inp[0].shape[3], m.kernel_size[0], m.stride[0], m.padding[0],
                         m.dilation[0], act or "identity")
                    )
                )
    with torch.no_grad():
        model(torch.zeros(1, 3, resolution, resolution))
    return list(dict.fromkeys(found))


def measure(row: dict, name: str, call: Callable[[], object], device: str, bytes_moved: int,
            peak: float | None, copy_bw: float | None) -> None:
    """Time ``call`` as provider ``name`` into ``row``: p20/p50/p80 ms, GB/s, % of the datasheet peak
    and of the measured copy bandwidth; a provider that cannot run the case is recorded, not fatal."""
    try:
        t = bench(call, device)
    except Exception as exc:
        row[f"{name}_error"] = f"{type(exc).__name__}: {exc}"[:200]
        return
    row.update({f"{name}_{key}": val for key, val in t.items()})
    bytes_per_s = bytes_moved / (t["p50_ms"] * 1e-3)
    row[f"{name}_GBps"] = bytes_per_s / 1e9
    if peak:
        row[f"{name}_pct_peak"] = 100 * bytes_per_s / peak
    if copy_bw:
        row[f"{name}_pct_copy"] = 100 * bytes_per_s / copy_bw


def add_speedups(row: dict, names, ours=("cuda", "triton")) -> None:
    """``<name>_speedup_vs_eager`` for every provider, and ``<name>_speedup_vs_compile`` for ours."""
    for name in names:
        if name != "eager" and f"{name}_p50_ms" in row and "eager_p50_ms" in row:
            row[f"{name}_speedup_vs_eager"] = row["eager_p50_ms"] / row[f"{name}_p50_ms"]
        if name in ours and f"{name}_p50_ms" in row and "torch_compile_p50_ms" in row:
            row[f"{name}_speedup_vs_compile"] = row["torch_compile_p50_ms"] / row[f"{name}_p50_ms"]


def geomean(values) -> float | None:
    values = [v for v in values if v and v > 0]
    return float(torch.tensor(values).log().mean().exp()) if values else None


def stop_on_sigterm() -> None:
    """Turn SIGTERM (what `timeout` sends) into KeyboardInterrupt, so a benchmark cut short by the GPU
    suite's time limit still writes the rows it has measured."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def execute(args, run: Callable, op: str, summarize: Callable[[list], dict], columns: list[str], **record_extra) -> int:
    """The shared main of the op benchmarks: ``run(args, rows, copy_bandwidth)`` fills rows (in place,
    so a run cut off by SIGTERM keeps what it measured), then JSON + markdown are written to
    ``args.out`` and the table and summary printed. Returns 1 if the run was interrupted."""
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
    stop_on_sigterm()
    env = environment(args.device)
    rows: list[dict] = []
    interrupted = None
    try:
        run(args, rows, env.get("copy_GBps", 0) * 1e9 or None)
    except KeyboardInterrupt as exc:
        interrupted = f"stopped after {len(rows)} rows: {exc}"
        print(interrupted, file=sys.stderr)
    summary = summarize(rows)
    record = {"environment": env, "op": op, **record_extra, "interrupted": interrupted,
              "settings": {k: v for k, v in vars(args).items() if k not in ("out", "quiet")}, "summary": summary}
    columns = [c for c in columns if any(c in r for r in rows)]
    json_path, md_path = write_results(args.out, args.name, record, rows, columns)
    print(open(md_path).read())
    print("summary:", {k: round(v, 3) for k, v in summary.items()})
    print(f"wrote {json_path} and {md_path}")
    return 1 if interrupted else 0


def write_results(out_dir: str, name: str, record: dict, rows: list[dict], columns: list[str]) -> tuple[str, str]:
    """``name``.json (environment, settings, raw rows) and ``name``.md (a table of ``columns``)."""
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, f"{name}.json")
    with open(json_path, "w") as f:
        json.dump({**record, "rows": rows}, f, indent=1)
    md_path = os.path.join(out_dir, f"{name}.md")
    with open(md_path, "w") as f:
        f.write(markdown_table(rows, columns, header=record.get("environment")))
    return json_path, md_path


def markdown_table(rows: list[dict], columns: list[str], header: dict | None = None) -> str:
    lines = []
    if header:
        lines.append(" · ".join(f"{k}: {v}" for k, v in header.items()) + "\n")
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "---|" * len(columns))
    for row in rows:
        cells = []
        for c in columns:
            v = row.get(c, "")
            cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
