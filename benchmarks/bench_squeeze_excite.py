"""Benchmark squeeze_excite over the SE blocks of MobileNetV3-Large and -Small: our backends vs PyTorch
eager (torchvision's SqueezeExcitation: six kernels) and torch.compile (default, and max-autotune
unless --no-autotune), forward and forward + backward (grads of the input and all four parameters).

    python benchmarks/bench_squeeze_excite.py                 # GPU: batch 1 and 256 at 224²; CPU: a small set
    python benchmarks/bench_squeeze_excite.py --batch 1 256 --dtype bfloat16 float32 --layout nhwc nchw

The GPU suite's entry point; ``python -m mobilenet_kernels bench ops --op squeeze_excite`` runs the
same sweep (mobilenet_kernels/benchmarking/squeeze_excite.py, where the bytes counted are listed).
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
    p.add_argument("--models", nargs="+", default=["mobilenet_v3_large", "mobilenet_v3_small"])
    p.add_argument("--batch", nargs="+", type=int, default=[1, 256] if gpu else [8])
    p.add_argument("--resolution", type=int, default=224 if gpu else 64)
    p.add_argument("--dtype", nargs="+", default=["bfloat16", "float32"] if gpu else ["float32"], choices=list(DTYPES))
    p.add_argument("--layout", nargs="+", default=["nhwc"], choices=["nhwc", "nchw"])
    p.add_argument("--mode", nargs="+", default=["forward", "full"], choices=["forward", "full"])
    p.add_argument("--no-autotune", action="store_true", help="skip torch.compile max-autotune (slow to compile)")
    p.add_argument("--out", default="mk_results")
    p.add_argument("--name", default="squeeze_excite")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if min(args.batch) <= 0:
        p.error("--batch: must be positive")
    if args.device == "cuda" and not gpu:
        p.error("--device cuda: no CUDA device")
    if args.device == "cpu":
        torch.set_num_threads(1)  # CPU timings on one thread, as torch.utils.benchmark's default

    settings = ops.OpSettings(
        device=args.device, models=args.models, batch=args.batch, resolution=args.resolution, dtype=args.dtype,
        layout=args.layout, mode=args.mode,
        compile=["default"] if args.device != "cuda" or args.no_autotune else ["default", "max-autotune"],
        backends=[b for b in ("cuda", "triton") if b in backends.available(args.device)], quiet=args.quiet,
    )
    record_settings = {k: v for k, v in vars(args).items() if k not in ("out", "quiet")}
    return ops.run(ops.OPS["squeeze_excite"], settings, out=args.out, name=args.name, record_settings=record_settings)


if __name__ == "__main__":
    sys.exit(main())
