"""Benchmark inverted_residual_eval over the inverted-residual blocks of MobileNetV2 and V3-Large
(squeeze-excite blocks included: column "squeeze"), in eval mode with BatchNorm folded, forward
under torch.no_grad(): our backends (triton, and cuda: the whole block as one kernel that keeps the
expanded tensor on chip; two passes of it for a squeeze-excite block) vs PyTorch eager (the folded
block op by op: 1x1 conv + act, depthwise conv + act, squeeze-excite, 1x1 conv + residual) and
torch.compile of that (default, and max-autotune unless --no-autotune).

    python benchmarks/bench_inverted_residual.py              # GPU: batch 1 and 256 at 224², bf16; CPU: a small set
    python benchmarks/bench_inverted_residual.py --batch 1 32 256 --dtype bfloat16 float32 --layout nhwc nchw

Each row carries the block's minimum bytes (MB: x (twice with a squeeze-excite), y and the
weights) and what the op-by-op sequence must move (unfused_MB: + the expanded tensors written and
read back). The GPU suite's
entry point (step bench_block); ``python -m mobilenet_kernels bench ops --op inverted_residual`` runs
the same sweep (mobilenet_kernels/benchmarking/inverted_residual.py).
"""

from __future__ import annotations

import sys

from mobilenet_kernels.benchmarking import ops


def main(argv=None) -> int:
    p = ops.script_parser(__doc__, models=["mobilenet_v3_large", "mobilenet_v2"], batch=[1, 256],
                          dtype=["bfloat16"], layout=["nhwc"], name="inverted_residual")
    p.set_defaults(mode=["forward"])
    args = p.parse_args(argv)
    if "full" in args.mode:
        p.error("--mode full: inverted_residual_eval is inference only (forward)")
    return ops.script_run(p, args, "inverted_residual")


if __name__ == "__main__":
    sys.exit(main())
