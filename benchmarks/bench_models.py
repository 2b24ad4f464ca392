"""Whole-model benchmark: MobileNet V1/V2/V3 training and inference steps, torchvision (eager,
torch.compile) against ours. The same as ``python -m mobilenet_kernels bench model``, with the same
arguments (see --help); the code is mobilenet_kernels/benchmarking/models.py.

    python benchmarks/bench_models.py                                   # GPU: the full set; CPU: ~1 minute
    python benchmarks/bench_models.py --model mobilenet_v2 --mode train --batch 128 --compile none
"""

from __future__ import annotations

import sys

from mobilenet_kernels.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["bench", "model", *sys.argv[1:]]))
