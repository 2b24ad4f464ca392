"""Benchmark squeeze_excite over the SE blocks of MobileNetV3-Large and -Small: our backends vs PyTorch
eager (torchvision's SqueezeExcitation: six kernels) and torch.compile (default, and max-autotune
unless --no-autotune), forward and forward + backward (grads of the input and all four parameters).

    python benchmarks/bench_squeeze_excite.py                 # GPU: batch 1 and 256 at 224²; CPU: a small set
    python benchmarks/bench_squeeze_excite.py --batch 1 256 --dtype bfloat16 float32 --layout nhwc nchw

The GPU suite's entry point; ``python -m mobilenet_kernels bench ops --op squeeze_excite`` runs the
same sweep (mobilenet_kernels/benchmarking/squeeze_excite.py, where the bytes counted are listed).
"""

from __future__ import annotations

import sys

from mobilenet_kernels.benchmarking import ops


def main(argv=None) -> int:
    p = ops.script_parser(__doc__, models=["mobilenet_v3_large", "mobilenet_v3_small"], batch=[1, 256],
                          dtype=["bfloat16", "float32"], layout=["nhwc"], name="squeeze_excite")
    args = p.parse_args(argv)
    return ops.script_run(p, args, "squeeze_excite")


if __name__ == "__main__":
    sys.exit(main())
