"""Benchmark pointwise_depthwise_bn_act_train (an inverted residual's expand 1x1 conv + BatchNorm +
activation and depthwise conv + BatchNorm + activation in training, one op) over the blocks of
MobileNetV2 and V3-Large that have an expand conv: ours in each setting of its two fusion switches
(both on, MK_DW_INPUT_BN=0, MK_DW_BN_FUSED=0, both off: which fusion gains or loses on which block)
vs PyTorch eager and torch.compile (default, and max-autotune unless --no-autotune), forward and
forward + backward.

    python benchmarks/bench_pointwise_depthwise.py                   # GPU: batch 256 at 224², bf16 NHWC
    python benchmarks/bench_pointwise_depthwise.py --no-compile --backends cuda --mode full

The GPU suite's entry point (step bench_pw_dw); ``python -m mobilenet_kernels bench ops --op
pointwise_depthwise`` runs the same sweep (mobilenet_kernels/benchmarking/pointwise_depthwise.py,
where the settings and the bytes counted are listed).
"""

from __future__ import annotations

import sys

from mobilenet_kernels.benchmarking import ops


def main(argv=None) -> int:
    p = ops.script_parser(__doc__, models=["mobilenet_v3_large", "mobilenet_v2"], batch=[256], dtype=["bfloat16"],
                          layout=["nhwc"], name="pointwise_depthwise")
    args = p.parse_args(argv)
    return ops.script_run(p, args, "pointwise_depthwise")


if __name__ == "__main__":
    sys.exit(main())
