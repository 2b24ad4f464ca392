"""Benchmark depthwise_conv2d over the depthwise layers of MobileNetV2 and V3-Large: our backends vs
PyTorch eager (cuDNN / native) and torch.compile (default, and max-autotune unless --no-autotune),
plus the fused dw conv + BatchNorm + activation in training against the unfused eager sequence.

    python benchmarks/bench_depthwise.py                      # GPU: batch 256 at 224²; CPU: a small set
    python benchmarks/bench_depthwise.py --batch 1 32 256 --dtype bfloat16 float32 --layout nhwc nchw

Ops (--op): ``conv`` (depthwise_conv2d alone; modes forward and full = forward + backward) and
``conv_bn_act_train`` (dw conv + BN in training + activation; mode full). The GPU suite's entry
point; ``python -m mobilenet_kernels bench ops --op depthwise`` runs the same sweep
(mobilenet_kernels/benchmarking/depthwise_conv2d.py, where the bytes counted are listed).
"""

from __future__ import annotations

import sys

from mobilenet_kernels.benchmarking import ops


def main(argv=None) -> int:
    p = ops.script_parser(__doc__, models=["mobilenet_v3_large", "mobilenet_v2"], batch=[256], dtype=["bfloat16"],
                          layout=["nhwc", "nchw"], name="depthwise")
    p.add_argument("--op", nargs="+", default=["conv", "conv_bn_act_train"], choices=["conv", "conv_bn_act_train"])
    p.add_argument("--no-compile-conv", action="store_true",
                   help="no torch.compile rows for the lone conv (Inductor hands a conv to ATen: compile ~ eager)")
    args = p.parse_args(argv)
    return ops.script_run(p, args, "depthwise", {"ops": args.op, "compile_conv": not args.no_compile_conv})


if __name__ == "__main__":
    sys.exit(main())
