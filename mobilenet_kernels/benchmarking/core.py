"""What every benchmark shares: timing, the environment record, peak memory, JSON + markdown results.

Timing. CUDA: ``triton.testing.do_bench`` (CUDA events, L2 flushed before every repetition,
quantiles p20/p50/p80). CPU: ``torch.utils.benchmark.Timer.blocked_autorange`` on torch's thread
count (the Timer's own default is one thread). Rows report the median; compare only rows of one
device and one run.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from typing import Callable, Iterable

import torch

# HBM peak of the cards we report % of peak for (bytes/s); other devices report GB/s only.
PEAK_BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12}

# The kernel switches that the ops read at every call (not once per process), so that one benchmark
# process can time each setting (environment_set): the depthwise fusions' (ops/_common.py,
# csrc/cuda/depthwise_conv2d.cu).
PER_CALL_SWITCHES = ("MK_DW_BN_FUSED", "MK_DW_INPUT_BN")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", **{name: name for name in DTYPES}}

_SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def git_commit() -> str:
    """MK_GIT_COMMIT when set (the GPU machine's copy of the tree has no usable git), else git's HEAD
    of the source tree, with "+dirty" when tracked files differ from it."""
    if os.environ.get("MK_GIT_COMMIT"):
        return os.environ["MK_GIT_COMMIT"]
    git = ["git", "-C", _SOURCE_ROOT]
    try:
        commit = subprocess.check_output([*git, "rev-parse", "HEAD"], text=True, stderr=subprocess.DEVNULL).strip()
        dirty = subprocess.run([*git, "diff", "--quiet", "HEAD"], stderr=subprocess.DEVNULL).returncode == 1
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def environment(device: str) -> dict:
    """Where and with what a result was measured: device, commit, versions, time, the kernel switches
    set in the environment; on CUDA also the measured copy bandwidth, on CPU the thread count and the
    load average (other processes)."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    if device == "cuda":
        name = torch.cuda.get_device_name()
    else:
        name = f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    record = {
        "device": name,
        "commit": git_commit(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        # the kernel switches read from the environment (unset: the default kernels / tuning on)
        "switches": {k: os.environ.get(k) for k in ("MK_DW_TILED", "MK_DW_STAGES", "MK_DW_ROW_REUSE",
                                                    *PER_CALL_SWITCHES, "MK_PW_FUSED", "MK_TRITON_TUNE")},
    }
    if device == "cuda":
        record["copy_GBps"] = copy_bandwidth() / 1e9
    else:  # CPU timings also depend on what else runs on the machine
        record["threads"] = torch.get_num_threads()
        if hasattr(os, "getloadavg"):
            record["load_avg_1min"] = round(os.getloadavg()[0], 2)
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
    """The datasheet HBM bandwidth of the current GPU if we know it, else None."""
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((bw for key, bw in PEAK_BANDWIDTH.items() if key in name), None)


def time_ms(fn: Callable[[], object], device: str, *, warmup_ms: float = 25, rep_ms: float | None = None,
            min_rep_ms: float = 0.0) -> dict:
    """p20/p50/p80 of ``fn()`` in milliseconds, measured for about ``rep_ms`` (default: CUDA 100,
    CPU 200). CUDA: do_bench with ``warmup_ms`` of warm-up, the host time per call (host_ms) and,
    with MK_BENCH_GRAPH=1, the CUDA-graph replay time (graph_ms); CPU: blocked_autorange. The
    environment variables MK_BENCH_WARMUP_MS / MK_BENCH_REP_MS override both (the GPU suite shortens
    them to fit its lease; the tests to a millisecond), but not below ``min_rep_ms``: a caller
    whose calls are long asks for enough of them that p20/p50/p80 are quantiles of several."""
    warmup = float(os.environ.get("MK_BENCH_WARMUP_MS", warmup_ms))
    rep = max(float(os.environ.get("MK_BENCH_REP_MS", rep_ms or (100 if device == "cuda" else 200))), min_rep_ms)
    if device == "cuda":
        import triton.testing

        p20, p50, p80 = triton.testing.do_bench(fn, warmup=warmup, rep=rep, quantiles=[0.2, 0.5, 0.8])
        timing = {"p20_ms": p20, "p50_ms": p50, "p80_ms": p80, "host_ms": host_ms(fn, p50)}
        if os.environ.get("MK_BENCH_GRAPH") == "1":
            timing.update(graph_ms(fn, rep))
        return timing
    from torch.utils.benchmark import Timer

    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=rep / 1e3)
    q = torch.tensor(m.times, dtype=torch.float64) * 1e3  # per-run times (raw_times are per block of runs)
    return {"p20_ms": q.quantile(0.2).item(), "p50_ms": m.median * 1e3, "p80_ms": q.quantile(0.8).item()}


def host_ms(fn: Callable[[], object], gpu_ms: float, calls: int = 16) -> float:
    """Host (Python + launch) time of one ``fn()`` call on CUDA: the median over ``calls`` calls
    (fewer for long ones: about 200 ms of GPU work in all), each enqueued on an idle GPU and timed
    on the host without waiting for the GPU (no timing tool measures enqueueing alone). At or above
    the GPU time (``gpu_ms``, do_bench's median), the GPU waits for the host: the case is
    host-bound, and a CUDA graph or torch.compile would change its time.

    One call at a time: a stream's launch queue holds about a thousand pending launches
    (https://forums.developer.nvidia.com/t/68937), which a training step (~900 of them) nearly
    fills by itself, so calls enqueued back to back by a host faster than the GPU fill it, and the
    host then waits for the GPU and counts its time (GPU run 8 timed four training steps back to
    back: its host times, 0.7-1.0x the steps' times, cannot tell a host-bound step from a
    GPU-bound one)."""
    calls = max(3, min(calls, int(200 / max(gpu_ms, 1e-3))))
    times = []
    for _ in range(calls):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    torch.cuda.synchronize()
    return statistics.median(times) * 1e3


def graph_ms(fn: Callable[[], object], rep_ms: float) -> dict:
    """``{"graph_ms": median}`` of ``fn()`` replayed from a CUDA graph (do_bench_cudagraph, captured
    on a side stream): the GPU time without the host's launch work, for rows that host_ms shows to
    be host-bound (the L2 is not flushed between replays: small cases read warm data). A call that
    cannot be captured gives ``{"graph_error": ...}`` instead."""
    import triton.testing

    try:
        with torch.cuda.stream(torch.cuda.Stream()):
            return {"graph_ms": triton.testing.do_bench_cudagraph(fn, rep=rep_ms, return_mode="median")}
    except Exception as exc:  # noqa: BLE001  (recorded in the row; the other timings stand)
        torch.cuda.synchronize()
        return {"graph_error": f"{type(exc).__name__}: {exc}"[:200]}


def measure(row: dict, name: str, call: Callable[[], object], device: str, bytes_moved: int,
            peak: float | None, copy_bw: float | None) -> None:
    """Time ``call`` as provider ``name`` into ``row``: p20/p50/p80 ms (and host_ms on CUDA), GB/s, %
    of the datasheet peak and of the measured copy bandwidth; a provider that cannot run the case
    is recorded, not fatal."""
    try:
        t = time_ms(call, device)
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


def layer_cases(layers: Iterable[tuple[str, tuple]], *dims: Iterable) -> list[tuple]:
    """``(model, layer, *params)`` for every (model, layer) and every combination of ``dims`` (batch,
    dtype, layout, ...), in that order: the cases an op's sweep measures (measure_cases)."""
    return [(model, layer, *params) for model, layer in layers for params in itertools.product(*dims)]


def measure_cases(s, rows: list[dict], copy_bw: float | None, desc: str, cases: list[tuple],
                  run_case: Callable[..., tuple[dict, dict]], *, shape_key: Callable[[tuple], tuple] = tuple,
                  extra: Callable[[dict, dict], None] | None = None) -> None:
    """The loop of every op's sweep. ``cases`` are ``(model, layer, *params)`` (layer_cases); a case
    whose (shape_key(layer), *params) an earlier case had (the same layer shape in another model)
    is skipped. ``run_case(layer, *params)`` gives the row and its calls {provider: call}; each
    call is timed into the row (measure), then the speed-ups of ``s.backends`` (add_speedups) and
    ``extra(row, calls)`` are added, and the row is appended to ``rows`` in place, so an
    interrupted run keeps the rows it has. ``s``: the sweep's OpSettings (device, backends, quiet)."""
    peak = peak_bandwidth(s.device)
    seen = set()
    for model, layer, *params in progress(cases, desc, s.quiet):
        key = (shape_key(layer), *params)
        if key in seen:
            continue
        seen.add(key)
        row, calls = run_case(layer, *params)
        row = {"model": model, **row}
        for name, call in calls.items():
            measure(row, name, call, s.device, row["bytes"], peak, copy_bw)
        add_speedups(row, calls, ours=tuple(s.backends))
        if extra is not None:
            extra(row, calls)
        rows.append(row)


def add_speedups(row: dict, names: Iterable[str], ours: tuple[str, ...] = ("cuda", "triton")) -> None:
    """``<name>_speedup_vs_eager`` for every provider, and ``<name>_speedup_vs_compile`` (against
    torch.compile default) for ours."""
    for name in names:
        if name != "eager" and f"{name}_p50_ms" in row and "eager_p50_ms" in row:
            row[f"{name}_speedup_vs_eager"] = row["eager_p50_ms"] / row[f"{name}_p50_ms"]
        if name in ours and f"{name}_p50_ms" in row and "torch_compile_p50_ms" in row:
            row[f"{name}_speedup_vs_compile"] = row["torch_compile_p50_ms"] / row[f"{name}_p50_ms"]


@contextlib.contextmanager
def environment_set(**env: str):
    """The environment variables ``env`` set inside the block, the previous values restored after
    it: the kernel switches that the ops read at every call (PER_CALL_SWITCHES) take effect there."""
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v


def with_env(call: Callable[[], object], **env: str) -> Callable[[], object]:
    """``call`` run with ``env`` set around it (environment_set): one process times a fusion against
    its unfused sequence. Give the default setting's calls the defaults explicitly, so that both
    pay the same host cost for the switch."""

    def run():
        with environment_set(**env):
            return call()

    return run


def geomean(values: Iterable[float | None]) -> float | None:
    """Geometric mean of the positive values (None and missing ones skipped); None if there are none."""
    values = [v for v in values if v and v > 0]
    return float(torch.tensor(values, dtype=torch.float64).log().mean().exp()) if values else None


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Inside the block SIGTERM (what `timeout` sends) raises KeyboardInterrupt, so a benchmark cut
    short by the GPU suite's time limit still writes the rows it has measured."""

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def progress(items: list, desc: str, quiet: bool = False):
    """A tqdm bar over ``items`` (on stderr, so stdout keeps only the tables)."""
    from tqdm import tqdm

    return tqdm(items, desc=desc, disable=quiet, dynamic_ncols=True, file=sys.stderr)


def execute(*, device: str, out: str, name: str, record: dict, fill: Callable[[list[dict], dict], None],
            summarize: Callable[[list[dict]], dict], columns: list[str]) -> int:
    """The shared main of every benchmark: ``fill(rows, environment)`` appends result rows (in place,
    so a run cut off by Ctrl-C or SIGTERM keeps what it measured); then ``name``.json (environment,
    ``record``, summary, rows) and ``name``.md (a table of ``columns``) go to ``out``, and the table
    and summary are printed. Returns 1 if the run was interrupted or a row failed as a whole (has an
    "error" field; a provider that cannot run one case is only noted in its row), else 0."""
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
    env = environment(device)

    def write(rows: list[dict], interrupted: str | None) -> tuple[str, str]:
        full = {"environment": env, **record, "interrupted": interrupted, "summary": summarize(rows)}
        return write_results(out, name, full, rows, [c for c in columns if any(r.get(c) is not None for r in rows)])

    rows = CheckpointedRows(lambda done: write(done, f"in progress: {len(done)} rows written, the run did not end"))
    interrupted = None
    try:
        with sigterm_as_interrupt():
            fill(rows, env)
    except KeyboardInterrupt as exc:
        interrupted = f"stopped after {len(rows)} rows: {exc}"
        print(interrupted, file=sys.stderr)
    summary = summarize(rows)
    json_path, md_path = write(rows, interrupted)
    with open(md_path) as f:
        print(f.read())
    print("summary:", json.dumps({k: round(v, 3) for k, v in summary.items()}, indent=1))
    print(f"wrote {json_path} and {md_path}")
    failed = sum("error" in r for r in rows)
    if failed:
        print(f"{failed} of {len(rows)} rows failed: see their error column", file=sys.stderr)
    return 1 if interrupted or failed else 0


class CheckpointedRows(list):
    """The result rows, written out (``checkpoint(rows)``) each time one is appended, so a run
    killed where no KeyboardInterrupt reaches Python (SIGKILL after an ignored SIGINT, a hang inside
    a compiler or a driver call) still leaves every row before the one in flight on disk, marked as
    unfinished. Later in-place changes to a row (speed-up ratios) reach the file with the next row."""

    def __init__(self, checkpoint: Callable[[list[dict]], object]):
        super().__init__()
        self._checkpoint = checkpoint

    def append(self, row: dict) -> None:
        super().append(row)
        self._checkpoint(self)


def write_results(out_dir: str, name: str, record: dict, rows: list[dict], columns: list[str]) -> tuple[str, str]:
    """``name``.json (``record`` plus the raw rows) and ``name``.md (a table of ``columns``)."""
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, f"{name}.json")
    with open(json_path, "w") as f:
        json.dump({**record, "rows": rows}, f, indent=1)
    md_path = os.path.join(out_dir, f"{name}.md")
    with open(md_path, "w") as f:
        f.write(markdown_table(rows, columns, header=record.get("environment")))
    return json_path, md_path


def markdown_table(rows: list[dict], columns: list[str], header: dict | None = None) -> str:
    """A markdown table of ``columns`` (floats to 4 significant digits, missing cells empty),
    preceded by one ``key: value · ...`` line of ``header`` if given."""
    lines = []
    if header:
        lines.append(" · ".join(f"{k}: {v}" for k, v in header.items()) + "\n")
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "---|" * len(columns))
    for row in rows:
        cells = []
        for c in columns:
            v = row.get(c, "")
            cells.append(f"{v:.4g}" if isinstance(v, float) else "" if v is None else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# torch.compile modes the op sweeps time, by name: (the provider name of their row columns, the mode
# passed to torch.compile). Op timings use no CUDA graphs (our ops do not either), so "max-autotune"
# runs as max-autotune-no-cudagraphs.
OP_COMPILE_MODES = {
    "default": ("torch_compile", "default"),
    "max-autotune": ("torch_compile_max_autotune", "max-autotune-no-cudagraphs"),
}


def compiled_providers(fn: Callable, modes: Iterable[str]) -> dict[str, Callable]:
    """``fn`` under torch.compile in each of ``modes`` (keys of OP_COMPILE_MODES), by provider name.
    One static graph per shape (dynamic=False), as a fixed-shape model gets; execute() raises the
    recompile limit so that a sweep over many shapes does not fall back to eager after the 8th."""
    found = {}
    for mode in modes:
        provider, torch_mode = OP_COMPILE_MODES[mode]
        found[provider] = torch.compile(fn, mode=torch_mode, dynamic=False)
    return found
