"""Markdown tables and plots from result files: op sweeps (``bench ops``, benchmarks/bench_*.py, the
committed benchmarks/results/*.json), model benchmarks (``bench model``) and GPU test-suite counts,
from any number of runs side by side, so that CPU and GPU runs (or two commits) can be compared.

Speed-ups are recomputed from the rows (geometric means per group of layers, as ops.summarize), not
read from each file's summary, so files written before a change of summary format still compare.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from .core import geomean
from .models import CUDA_GRAPH
from .ops import by_op, group_rows

# Row fields an op result is grouped by when its op is not in the registry (a newer file).
_FALLBACK_GROUP_BY = ("op", "training", "mode", "dtype", "layout", "batch")
_OP_PROVIDERS = ("cuda", "triton", "torch", "torch_compile", "torch_compile_max_autotune")


class ResultError(ValueError):
    """A file that is missing or is not one of our result files."""


@dataclass
class Result:
    path: str
    label: str      # how tables and plots name the run: the file name, made unique
    kind: str       # "op", "model" or "tests"
    record: dict

    @property
    def env(self) -> dict:
        return self.record["environment"]

    @property
    def device(self) -> str:
        return _short_device(self.env.get("device", "?"))


def _short_commit(commit) -> str:
    """The first 10 hex digits, keeping a suffix such as "+dirty"."""
    sha, plus, rest = str(commit).partition("+")
    return sha[:10] + plus + rest


def _short_device(name: str) -> str:
    return name.replace("NVIDIA ", "").split(" (")[0] if not name.startswith("cpu") else name


def load(path: str) -> Result:
    """Read and check one result file; ResultError says what is wrong with it."""
    if not os.path.isfile(path):
        raise ResultError(f"{path}: {'not a file' if os.path.exists(path) else 'no such file'}")
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultError(f"{path}: not a JSON file ({type(exc).__name__})") from None
    if not isinstance(record, dict) or not isinstance(record.get("environment"), dict):
        raise ResultError(f"{path}: not a mobilenet_kernels result file (no 'environment' record)")
    if isinstance(record.get("rows"), list) and record.get("benchmark") == "model":
        kind = "model"
    elif isinstance(record.get("rows"), list) and isinstance(record.get("op"), str):
        kind = "op"
    elif isinstance(record.get("counts"), dict):
        kind = "tests"
    else:
        raise ResultError(f"{path}: not a mobilenet_kernels result file (neither op rows, model rows nor test counts)")
    required = {"model", "mode", "batch", "variant"} if kind == "model" else set()
    if not all(isinstance(r, dict) and required <= set(r) for r in record.get("rows", [])):
        fields = f" with {', '.join(sorted(required))}" if required else ""
        raise ResultError(f"{path}: malformed rows (each must be a JSON object{fields})")
    return Result(path, os.path.splitext(os.path.basename(path))[0], kind, record)


def load_all(paths: list[str]) -> list[Result]:
    """Load every file; labels made unique (parent folder, then a number, added where names clash)."""
    results = [load(p) for p in paths]
    stems = [r.label for r in results]
    for r in results:
        if stems.count(r.label) > 1:
            r.label = f"{os.path.basename(os.path.dirname(os.path.abspath(r.path)))}/{r.label}"
    seen: dict[str, int] = {}
    for r in results:
        seen[r.label] = seen.get(r.label, 0) + 1
        if seen[r.label] > 1:
            r.label = f"{r.label} ({seen[r.label]})"
    return results


# ---------------------------------------------------------------------------------------------------
# What the tables and plots show, computed from the rows.


_STALE_PEAK = ("written before bench model subtracted what earlier rows left allocated (`resident_before_mb`), "
               "when each training row's saved_mb measurement left its forward's graph allocated (every later "
               "row's peak counted the saved activations of the rows before it) and a CUDA graph's peak was "
               "taken after its capture (its pool's tensors uncounted).")


def _peak_is_own(rows: list[dict]) -> list[bool]:
    """Per row of a model benchmark file: whether its peak_mem_mb is its own. Rows that carry
    resident_before_mb are; in older files (see _STALE_PEAK) only eager or compiled rows before
    the first row with saved_mb."""
    own, leaked = [], False
    for row in rows:
        own.append("resident_before_mb" in row or not (leaked or row.get("compile") == CUDA_GRAPH))
        leaked = leaked or ("resident_before_mb" not in row and bool(row.get("saved_mb")))
    return own


def op_groups(result: Result) -> list[tuple[str, dict[str, float], float | None]]:
    """Per group of an op result's rows: (group label, {provider: geometric-mean speed-up over
    eager}, median % of HBM peak of the cuda backend or None where the file has none)."""
    entry = by_op(result.record["op"])
    groups = group_rows(result.record["rows"], entry.group_by if entry else _FALLBACK_GROUP_BY)
    found = []
    for group, rows in groups.items():
        speedups = {p: geomean([r.get(f"{p}_speedup_vs_eager") for r in rows]) for p in _OP_PROVIDERS}
        pct = sorted(r["cuda_pct_peak"] for r in rows if "cuda_pct_peak" in r)
        found.append((group, {p: g for p, g in speedups.items() if g}, pct[len(pct) // 2] if pct else None))
    return found


def _fmt(v, digits: str = ".2f") -> str:
    return "" if v is None else f"{v:{digits}}" if isinstance(v, float) else str(v)


def markdown(results: list[Result], images: list[str]) -> str:
    """The whole report: the runs, op speed-ups, model timings, test counts, then the plots."""
    lines = ["# mobilenet_kernels benchmark report", "", "## Runs", "",
             "| run | kind | device | commit | torch | triton | CUDA | when |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        e = r.env
        lines.append(f"| {r.label} | {r.kind} | {e.get('device', '')} | {_short_commit(e.get('commit', ''))} | "
                     f"{e.get('torch', '')} | {e.get('triton') or ''} | {e.get('cuda') or ''} | {e.get('timestamp', '')} |")
    caveats = [(r.label, c) for r in results for c in r.record.get("caveats", [])]
    caveats += [(r.label, f"interrupted: {r.record['interrupted']}") for r in results if r.record.get("interrupted")]
    if caveats:
        lines += ["", "Caveats:", ""] + [f"- **{label}**: {c}" for label, c in caveats]

    ops = [(r, op_groups(r)) for r in results if r.kind == "op"]
    if ops:
        providers = [p for p in _OP_PROVIDERS if any(p in speedups for _, groups in ops for _, speedups, _ in groups)]
        with_pct = any(pct is not None for _, groups in ops for _, _, pct in groups)
        columns = providers + (["cuda % of HBM peak (median)"] if with_pct else [])
        lines += ["", "## Ops: speed-up over eager PyTorch (geometric mean over the layers)", "",
                  "| run | device | op | group | " + " | ".join(columns) + " |", "|---|---|---|---|" + "---|" * len(columns)]
        for r, groups in ops:
            for group, speedups, pct in groups:
                cells = [_fmt(speedups.get(p)) for p in providers] + ([_fmt(pct, ".0f")] if with_pct else [])
                lines.append(f"| {r.label} | {r.device} | {r.record['op']} | {group} | " + " | ".join(cells) + " |")

    models = [r for r in results if r.kind == "model"]
    if models:
        header = ["run", "device", "model", "mode", "batch", "size", "variant", "ms/step", "img/s", "peak MB", "saved MB",
                  "vs eager", "vs compile"]
        lines += ["", "## Models", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        stale = []  # runs with a measured peak that is not its row's own
        for r in models:
            own_peaks = _peak_is_own(r.record["rows"])
            if any(row.get("peak_mem_mb") is not None and not own for row, own in zip(r.record["rows"], own_peaks)):
                stale.append(r.label)
            for row, own_peak in zip(r.record["rows"], own_peaks):
                peak = row.get("peak_mem_mb") if own_peak else None
                timing = ([_fmt(row.get("p50_ms")), _fmt(row.get("img_per_s"), ".1f"), _fmt(peak, ".0f"),
                           _fmt(row.get("saved_mb"), ".1f"), _fmt(row.get("speedup_vs_eager")),
                           _fmt(row.get("speedup_vs_compile"))]
                          if "error" not in row else [f"error: {row['error']}", "", "", "", "", ""])
                lines.append(f"| {r.label} | {r.device} | {row['model']} | {row['mode']} | {row['batch']} | "
                             f"{row.get('size', '')} | {row['variant']} | " + " | ".join(timing) + " |")
        if stale:
            lines += ["", f"Peak MB left blank for rows of {', '.join(stale)}: {_STALE_PEAK}"]

    tests = [r for r in results if r.kind == "tests"]
    if tests:
        lines += ["", "## Test suites", "", "| run | device | commit | passed | failed | errors | skipped |",
                  "|---|---|---|---|---|---|---|"]
        for r in tests:
            c = r.record["counts"]
            lines.append(f"| {r.label} | {r.device} | {_short_commit(r.env.get('commit', ''))} | {c.get('passed', '')} | "
                         f"{c.get('failed', '')} | {c.get('errors', '')} | {c.get('skipped', '')} |")

    if images:
        lines += ["", "## Plots", ""] + [f"![{os.path.splitext(name)[0]}]({name})" for name in images]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------
# Plots.


def _pyplot():
    """matplotlib.pyplot on the Agg backend: files only, no display needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _speedup_bars(path: str, title: str, clusters: list[str], series: dict[str, list[float | None]]) -> None:
    """Horizontal bars from 1x to each speed-up on a log2 axis (right of the line: faster than
    eager), one cluster per row label, one colour per series."""
    plt = _pyplot()
    n, k = len(clusters), max(len(series), 1)
    height = 0.8 / k
    fig, ax = plt.subplots(figsize=(10, 1.2 + n * (0.18 * k + 0.15)))
    for j, (name, values) in enumerate(series.items()):
        ys = [i + (j - (k - 1) / 2) * height for i in range(n)]
        widths = [(v - 1) if v else 0.0 for v in values]
        ax.barh(ys, widths, left=1.0, height=height, label=name)
    ax.set_xscale("log", base=2)
    values = [v for vs in series.values() for v in vs if v] + [1.0]
    lo, hi = min(values) / 1.2, max(values) * 1.2
    ticks = [t for t in (1 / 8, 1 / 4, 1 / 2, 2 / 3, 0.8, 1, 1.25, 1.5, 2, 3, 4, 8, 16) if lo <= t <= hi]
    ax.set_xlim(lo, hi)
    ax.set_xticks(ticks, [f"{t:.2g}x" for t in ticks])
    ax.minorticks_off()
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(range(n), clusters, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("speed-up over eager (log scale; right of 1: faster)")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _bandwidth_scatter(path: str, ops: list[Result]) -> None:
    """% of HBM peak against bytes moved, per layer, one panel per run; colour: provider, marker:
    forward (o) or forward + backward (^)."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(ops), 1, figsize=(9, 3.2 * len(ops)), squeeze=False)
    for ax, r in zip(axes[:, 0], ops):
        for color, p in enumerate(("eager", "torch_compile", "cuda", "triton")):
            for mode, marker in (("forward", "o"), ("full", "^")):
                pts = [(row["bytes"] / 1e6, row[f"{p}_pct_peak"]) for row in r.record["rows"]
                       if f"{p}_pct_peak" in row and "bytes" in row and row.get("mode") == mode]
                if pts:
                    ax.scatter(*zip(*pts), s=12, marker=marker, color=f"C{color}", alpha=0.7, label=f"{p}, {mode}")
        ax.set_xscale("log")
        ax.set_xlabel("bytes moved per call (MB)")
        ax.set_ylabel("% of HBM peak")
        ax.set_title(f"{r.label} ({r.device}): {r.record['op']}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plots(results: list[Result], out: str) -> list[str]:
    """Write the PNGs that the results allow; returns their file names (inside ``out``)."""
    written = []
    ops = [r for r in results if r.kind == "op"]
    if ops:
        clusters, per_provider = [], {}
        for r in ops:
            for group, speedups, _ in op_groups(r):
                clusters.append(f"{r.label}: {r.record['op']} {group}")
                for p in _OP_PROVIDERS:
                    per_provider.setdefault(p, []).append(speedups.get(p))
        series = {p: v for p, v in per_provider.items() if any(v)}
        _speedup_bars(os.path.join(out, "ops_speedup.png"), "Ops: geometric-mean speed-up over eager", clusters, series)
        written.append("ops_speedup.png")
    with_peak = [r for r in ops if any(k.endswith("_pct_peak") for row in r.record["rows"] for k in row)]
    if with_peak:
        _bandwidth_scatter(os.path.join(out, "ops_bandwidth.png"), with_peak)
        written.append("ops_bandwidth.png")
    models = [r for r in results if r.kind == "model"]
    if models:
        case = lambda row: (row["model"], row["mode"], row["batch"])  # noqa: E731
        keys = [(r, c) for r in models for c in dict.fromkeys(case(row) for row in r.record["rows"])]
        clusters = [f"{r.label}: {m} {mode} b{b}" for r, (m, mode, b) in keys]
        per_variant: dict[str, list[float | None]] = {}
        for i, (r, c) in enumerate(keys):
            for row in r.record["rows"]:
                if case(row) == c and "speedup_vs_eager" in row:
                    per_variant.setdefault(row["variant"], [None] * len(keys))[i] = row["speedup_vs_eager"]
        if per_variant:
            _speedup_bars(os.path.join(out, "models_speedup.png"), "Models: speed-up over eager torchvision "
                          "(V1: over our V1 on the torch backend)", clusters, per_variant)
            written.append("models_speedup.png")
    return written


def write_report(paths: list[str], out: str) -> tuple[str, list[str], str | None]:
    """Load ``paths``, write report.md and the plots to ``out``. Returns (markdown path, image names,
    why plots were skipped or None)."""
    results = load_all(paths)
    os.makedirs(out, exist_ok=True)
    try:
        import matplotlib  # noqa: F401

        images, skipped = plots(results, out), None
    except ImportError:
        images, skipped = [], "matplotlib is not installed (pip install matplotlib): no plots"
    md_path = os.path.join(out, "report.md")
    with open(md_path, "w") as f:
        f.write(markdown(results, images))
    return md_path, images, skipped
