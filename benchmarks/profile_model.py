"""Where a training step's (or an inference's) time goes (issue 7): torch.profiler over a few
steps of torchvision eager and of ours on each backend (mobilenet_kernels/benchmarking/profile.py).

Writes OUT/NAME.json (environment, settings, one row per variant: wall, host and device-work ms per
step, launches per step, the GPU's idle share, ms per kernel category, the top kernels, and the
step's peak memory with what was alive at the peak, per op and phase) and OUT/NAME.md (the summary
table).

    python benchmarks/profile_model.py OUT                    # GPU: V3-Large, batch 128, 224², bf16 AMP
    python benchmarks/profile_model.py OUT --device cpu --batch 2 --size 32 --dtype float32   # CPU: seconds
    python benchmarks/profile_model.py OUT --mode infer --batch 256    # an inference (eval, no_grad)
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from mobilenet_kernels.benchmarking.core import DTYPES, environment, markdown_table, sigterm_as_interrupt
from mobilenet_kernels.benchmarking.models import MODELS, ModelSettings
from mobilenet_kernels.benchmarking.profile import run_profiles


COLUMNS = ["variant", "wall ms", "host ms", "device work ms", "launches", "GPU idle %", "peak MB (tensors / allocator)",
           "largest categories (ms)", "host in ops ms (profiled)", "largest host ops (ms)", "largest at the peak (MB)"]


def table(rows: list[dict]) -> str:
    body = []
    for r in rows:
        if "error" in r:
            body.append({"variant": r["variant"], "largest categories (ms)": "error: " + r["error"][:80]})
            continue
        top3 = ", ".join(f"{k} {v:.2f}" for k, v in list(r["categories_ms"].items())[:3])
        mem = r["memory"]
        peak = f"{mem['tensor_peak_mb']:.4g}" + ("" if mem["allocator_peak_mb"] is None
                                                 else f" / {mem['allocator_peak_mb']:.4g}")
        held = ", ".join(f"{e['op']} ({e['phase'][:3]}) {e['mb']:.3g}" for e in mem["at_peak"][:3])
        host3 = ", ".join(f"{e['name']} {e['ms']:.2f}" for e in r["top_host"][:3])
        body.append({"variant": r["variant"], "wall ms": r["wall_ms"], "host ms": r["host_ms"],
                     "device work ms": r["work_ms"], "launches": round(r["launches"]), "GPU idle %": r["idle_pct"],
                     "peak MB (tensors / allocator)": peak, "largest categories (ms)": top3,
                     "host in ops ms (profiled)": r["host_in_ops_ms"], "largest host ops (ms)": host3,
                     "largest at the peak (MB)": held})
    return markdown_table(body, COLUMNS)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--name", default="profile_model")
    p.add_argument("--model", default="mobilenet_v3_large", choices=[m for m in MODELS if m != "mobilenet_v1"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--dtype", default="bfloat16", choices=list(DTYPES))
    p.add_argument("--backends", nargs="+", default=["cuda"], choices=["torch", "triton", "cuda"])
    p.add_argument("--steps", type=int, default=3, help="profiled steps per variant")
    p.add_argument("--mode", default="train", choices=["train", "infer"],
                   help="a training step (forward, backward, SGD step) or an inference (eval mode, no_grad)")
    args = p.parse_args(argv)
    if args.mode == "train" and args.batch < 2:
        p.error("--batch: training needs at least 2 images (BatchNorm)")
    if args.batch < 1:
        p.error("--batch: at least 1")
    if args.size < 32:
        p.error("--size: at least 32")
    if args.steps < 1:
        p.error("--steps: must be positive")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible")
    s = ModelSettings(args.device, [args.model], [args.mode], {args.mode: [args.batch]}, args.size, args.dtype,
                      args.device == "cuda", [], args.backends, quiet=True)
    record = {"environment": environment(args.device), "op": "model_profile",
              "settings": {k: v for k, v in vars(args).items() if k != "out"}, "rows": []}
    os.makedirs(args.out, exist_ok=True)
    with sigterm_as_interrupt():
        try:
            record["rows"] = run_profiles(args.model, args.batch, s, args.steps, args.mode)
        except KeyboardInterrupt:
            record["interrupted"] = True
    with open(os.path.join(args.out, f"{args.name}.json"), "w") as f:
        json.dump(record, f, indent=1)
    md = table(record["rows"])
    with open(os.path.join(args.out, f"{args.name}.md"), "w") as f:
        f.write(md + "\n")
    print(md)
    return 1 if record.get("interrupted") or any("error" in r for r in record["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
