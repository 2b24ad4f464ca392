"""HBM bytes per image of a MobileNet inference (issue 7): the byte model against ncu's count.

For each model and variant: the byte model's MB per image for the variant's way of running the model
(mobilenet_kernels/benchmarking/hbm.py: "eager" for torchvision, "op_by_op" for ours, "whole_block"
for ours with the whole-block kernel) and, on a GPU with ncu, the DRAM bytes read and written by
the kernels of one bf16 (autocast) channels_last forward at --batch, per image: each variant runs
in a child process under ``ncu --profile-from-start off`` that profiles that one forward (warm-up
forwards before it: Triton's JIT, cuDNN's plans, our BatchNorm folds). ncu flushes the caches before
each kernel (its default), as the model assumes.

Variants: torchvision (eager), ours[cuda] (op by op), ours[cuda] + block kernel (the CUDA whole-block
kernel for every block, two passes for those with squeeze-excite: USE_CUDA_BLOCK_KERNEL),
ours[triton] (the Triton whole-block kernel, used by default).

Writes OUT/NAME.json ("op": "hbm_bytes", one row per model and variant) and OUT/NAME.md. Without a
GPU or ncu the rows carry the byte model only.

    python benchmarks/hbm_bytes.py OUT                       # GPU: V2 and V3-Large, batch 32, 224²
    python benchmarks/hbm_bytes.py OUT --models mobilenet_v2 --variants torchvision "ours[cuda]"
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

import torch

from mobilenet_kernels.benchmarking.core import execute
from mobilenet_kernels.benchmarking.hbm import DRAM_METRICS, byte_model, parse_ncu_csv

MODELS = ("mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small")
# variant -> (byte-model level, backend or None for torchvision, CUDA whole-block kernel on)
VARIANTS = {
    "torchvision": ("eager", None, False),
    "ours[cuda]": ("op_by_op", "cuda", False),
    "ours[cuda] + block kernel": ("whole_block", "cuda", True),
    "ours[triton]": ("whole_block", "triton", False),
}
COLUMNS = ["model", "variant", "level", "batch", "model_MB_per_image", "measured_MB_per_image",
           "measured_read_MB_per_image", "measured_write_MB_per_image", "measured_vs_model", "kernels", "error"]
NCU_TIMEOUT_S = 120  # one variant's child under ncu


def child(model_name: str, variant: str, batch: int, size: int) -> None:
    """Runs in the process ncu profiles: warm-up forwards, then one forward between
    cudaProfilerStart and cudaProfilerStop (what --profile-from-start off profiles)."""
    import torchvision

    import mobilenet_kernels
    from mobilenet_kernels.nn import inverted_residual

    _, backend, block_kernel = VARIANTS[variant]
    inverted_residual.USE_CUDA_BLOCK_KERNEL = block_kernel
    torch.manual_seed(0)
    model = (getattr(torchvision.models, model_name)() if backend is None
             else getattr(mobilenet_kernels, model_name)(backend=backend))
    model = model.cuda().eval().to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, size, size, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        for _ in range(2):
            model(x)
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStart()
        model(x)
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStop()


def measure(model_name: str, variant: str, batch: int, size: int) -> dict:
    """ncu's DRAM bytes of one forward of ``variant`` (a child process), per image, in MB."""
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "ncu.csv")
        cmd = ["ncu", "--csv", "--print-units", "base", "--profile-from-start", "off", "--clock-control", "none",
               "--metrics", ",".join(DRAM_METRICS), "--log-file", log,
               sys.executable, os.path.abspath(__file__), tmp, "--child", model_name, variant,
               "--batch", str(batch), "--size", str(size)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=NCU_TIMEOUT_S)
        if proc.returncode != 0 or not os.path.exists(log):
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"ncu exited with {proc.returncode}: {' | '.join(tail)}")
        with open(log) as f:
            found = parse_ncu_csv(f.read())
    read, write = (found[m] / batch / 1e6 for m in DRAM_METRICS)
    return {"measured_read_MB_per_image": read, "measured_write_MB_per_image": write,
            "measured_MB_per_image": read + write, "kernels": found["kernels"]}


def fill(rows: list[dict], args, can_measure: bool) -> None:
    for model_name in args.models:
        model = byte_model(model_name, args.size, torch.bfloat16, args.batch)
        for variant in args.variants:
            level = VARIANTS[variant][0]
            row = {"model": model_name, "variant": variant, "level": level, "batch": args.batch, "size": args.size,
                   "dtype": "bfloat16", "model_MB_per_image": model[f"{level}_MB"],
                   "model_activations_MB_per_image": model[f"activations_{level}_MB"],
                   "weights_MB": model["weights_MB"], "blocks": model["blocks"], "blocks_se": model["blocks_se"]}
            if can_measure:
                try:
                    row.update(measure(model_name, variant, args.batch, args.size))
                    row["measured_vs_model"] = row["measured_MB_per_image"] / row["model_MB_per_image"]
                except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
                    row["error"] = f"{type(exc).__name__}: {exc}"[:300]
            rows.append(row)


def summarize(rows: list[dict]) -> dict:
    """measured / model per (model, variant), and each of ours' measured MB against torchvision's."""
    summary = {}
    for r in rows:
        if "measured_vs_model" in r:
            summary[f"{r['model']}/{r['variant']}/measured_vs_model"] = r["measured_vs_model"]
        eager = next((e for e in rows if e["model"] == r["model"] and e["variant"] == "torchvision"
                      and "measured_MB_per_image" in e), None)
        if eager and r["variant"] != "torchvision" and "measured_MB_per_image" in r:
            summary[f"{r['model']}/{r['variant']}/measured_vs_torchvision"] = (
                r["measured_MB_per_image"] / eager["measured_MB_per_image"])
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--name", default="hbm_bytes")
    p.add_argument("--models", nargs="+", default=["mobilenet_v2", "mobilenet_v3_large"], choices=MODELS)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--child", nargs=2, metavar=("MODEL", "VARIANT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.batch < 1:
        p.error("--batch: must be positive")
    if args.size < 32:
        p.error("--size: at least 32")
    if args.child:
        child(args.child[0], args.child[1], args.batch, args.size)
        return 0
    can_measure = torch.cuda.is_available() and shutil.which("ncu") is not None
    record = {"op": "hbm_bytes", "settings": {k: v for k, v in vars(args).items() if k not in ("out", "child")},
              "measured": ("ncu dram__bytes_read.sum + dram__bytes_write.sum over the kernels of one forward "
                           "(--cache-control all: caches flushed before each kernel), / batch"
                           if can_measure else "not measured: no CUDA device or no ncu; the byte model only"),
              "byte_model": "mobilenet_kernels/benchmarking/hbm.py (MB = 1e6 bytes; weights / batch included)"}
    return execute(device="cuda" if torch.cuda.is_available() else "cpu", out=args.out, name=args.name,
                   record=record, fill=lambda rows, env: fill(rows, args, can_measure), summarize=summarize,
                   columns=COLUMNS)


if __name__ == "__main__":
    sys.exit(main())
