"""Host time per layer (issue 7): each top-level layer of a MobileNet, torchvision's and ours on each
backend, in a training call and an inference call at a small batch, where a call is host-bound
(mobilenet_kernels/benchmarking/host.py). Finds which layers of ours cost the host more.

    python benchmarks/bench_host.py OUT                      # GPU: V3-Large, batch 8, 64², bf16 AMP
    python benchmarks/bench_host.py OUT --device cpu         # CPU: wall time per call, fp32

Writes OUT/NAME.json (environment, settings, summary, rows) and OUT/NAME.md.
"""

from __future__ import annotations

import argparse
import sys

import torch

from mobilenet_kernels.benchmarking import host
from mobilenet_kernels.benchmarking.core import DTYPES, execute
from mobilenet_kernels.benchmarking.models import MODELS, ModelSettings


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--name", default="host_layers")
    p.add_argument("--model", default="mobilenet_v3_large", choices=[m for m in MODELS if m != "mobilenet_v1"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--dtype", default=None, choices=list(DTYPES), help="default: bfloat16 on CUDA, float32 on a CPU")
    p.add_argument("--modes", nargs="+", default=["train", "infer"], choices=["train", "infer"])
    p.add_argument("--backends", nargs="+", default=["cuda"], choices=["torch", "triton", "cuda"])
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.batch < 2:
        p.error("--batch: training needs at least 2 images (BatchNorm)")
    if args.size < 32:
        p.error("--size: at least 32 (five stride-2 stages)")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible")
    dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    s = ModelSettings(args.device, [args.model], args.modes, {}, args.size, dtype, True, [], args.backends,
                      quiet=args.quiet)
    variants = ["torchvision"] + [f"ours[{b}]" for b in args.backends]
    settings = {k: v for k, v in vars(args).items() if k != "out"} | {"dtype": dtype}
    return execute(device=args.device, out=args.out, name=args.name, record={"op": "host_layers", "settings": settings},
                   fill=lambda rows, env: host.run(args.model, args.batch, args.size, s, args.modes, rows),
                   summarize=lambda rows: host.summarize(rows, variants, args.device),
                   columns=host.columns(variants, args.device))


if __name__ == "__main__":
    sys.exit(main())
