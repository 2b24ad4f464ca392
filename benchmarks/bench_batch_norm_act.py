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

import sys

from mobilenet_kernels.benchmarking import ops


def main(argv=None) -> int:
    p = ops.script_parser(__doc__, models=["mobilenet_v3_large", "mobilenet_v2"], batch=[256],
                          dtype=["bfloat16", "float32"], layout=["nhwc", "nchw"], name=None)
    p.add_argument("--training", action="store_true", help="training mode (batch statistics) instead of eval")
    args = p.parse_args(argv)
    args.name = args.name or f"batch_norm_act_{'train' if args.training else 'eval'}"
    return ops.script_run(p, args, "batch_norm_act", {"training": [args.training]}, training=args.training)


if __name__ == "__main__":
    sys.exit(main())
