"""Benchmark batch_norm_act over the BatchNorm+activation layers of MobileNetV2 and V3-Large:
our backends vs PyTorch eager (F.batch_norm + activation) and torch.compile, eval or training.

    python benchmarks/bench_batch_norm_act.py                 # GPU: batch 256 at 224²; CPU: a small set
    python benchmarks/bench_batch_norm_act.py --training --dtype bfloat16 --layout nhwc --out DIR

The GPU suite's entry point; ``python -m mobilenet_kernels bench ops --op batch_norm_act`` runs the
same sweep (mobilenet_kernels/benchmarking/batch_norm_act.py, where the bytes counted are listed)
for eval and training into one file. Reports p20/p50/p80 ms, GB/s and % of the card's HBM peak where
known, and speed-ups over eager and torch.compile.
"""

from __future__ import annotations

import argparse
import sys

import torch

from mobilenet_kernels import backends
from mobilenet_kernels.benchmarking import ops
from mobilenet_kernels.benchmarking.core import DTYPES


def main(argv=None) -> int:
    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if gpu else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--models", nargs="+", default=["mobilenet_v3_large", "mobilenet_v2"])
    p.add_argument("--batch", type=int, default=256 if gpu else 8)
    p.add_argument("--resolution", type=int, default=224 if gpu else 64)
    p.add_argument("--dtype", nargs="+", default=["bfloat16", "float32"] if gpu else ["float32"], choices=list(DTYPES))
    p.add_argument("--layout", nargs="+", default=["nhwc", "nchw"] if gpu else ["nhwc"], choices=["nhwc", "nchw"])
    p.add_argument("--mode", nargs="+", default=["forward", "full"], choices=["forward", "full"])
    p.add_argument("--training", action="store_true", help="training mode (batch statistics) instead of eval")
    p.add_argument("--no-autotune", action="store_true", help="skip torch.compile max-autotune (slow to compile)")
    p.add_argument("--out", default="mk_results")
    p.add_argument("--name", default=None, help="file name stem (default batch_norm_act_{eval,train})")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.batch <= 0:
        p.error("--batch: must be positive")
    if args.device == "cuda" and not gpu:
        p.error("--device cuda: no CUDA device")
    if args.device == "cpu":
        torch.set_num_threads(1)  # CPU timings on one thread, as torch.utils.benchmark's default

    args.name = args.name or f"batch_norm_act_{'train' if args.training else 'eval'}"
    settings = ops.OpSettings(
        device=args.device, models=args.models, batch=[args.batch], resolution=args.resolution, dtype=args.dtype,
        layout=args.layout, mode=args.mode,
        compile=["default"] if args.device != "cuda" or args.no_autotune else ["default", "max-autotune"],
        backends=[b for b in ("cuda", "triton") if b in backends.available(args.device)],
        options={"training": [args.training]}, quiet=args.quiet,
    )
    record_settings = {k: v for k, v in vars(args).items() if k not in ("out", "quiet")}
    return ops.run(ops.OPS["batch_norm_act"], settings, out=args.out, name=args.name,
                   record_settings=record_settings, training=args.training)


if __name__ == "__main__":
    sys.exit(main())
