"""Benchmark pointwise_conv2d over the 1x1 convs of MobileNetV2 and V3-Large (the expand and project
convs of the inverted-residual blocks with BatchNorm folded, and the last 1x1 conv): our backends
(one GEMM with the bias, activation and residual add in its epilogue) vs PyTorch eager (F.conv2d +
activation + the residual add) and torch.compile (default, and max-autotune unless --no-autotune),
forward and forward + backward (grads of the input, weight, bias and residual).

    python benchmarks/bench_pointwise_conv2d.py               # GPU: batch 256 at 224², bf16; CPU: a small set
    python benchmarks/bench_pointwise_conv2d.py --batch 1 256 --dtype bfloat16 float32 --layout nhwc nchw

The GPU suite's entry point (step bench_pw); ``python -m mobilenet_kernels bench ops --op pointwise``
runs the same sweep (mobilenet_kernels/benchmarking/pointwise_conv2d.py, where the bytes and FLOPs
counted are listed).
"""

from __future__ import annotations

import sys

from mobilenet_kernels.benchmarking import ops


def main(argv=None) -> int:
    p = ops.script_parser(__doc__, models=["mobilenet_v3_large", "mobilenet_v2"], batch=[256], dtype=["bfloat16"],
                          layout=["nhwc"], name="pointwise_conv2d")
    args = p.parse_args(argv)
    return ops.script_run(p, args, "pointwise")


if __name__ == "__main__":
    sys.exit(main())
