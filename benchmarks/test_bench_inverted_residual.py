"""pytest-benchmark micro-benchmarks of inverted_residual_eval on the CPU: eager PyTorch (the folded
block op by op: 1x1 conv + act, depthwise conv + act, squeeze-excite, 1x1 conv + residual) against
our "cuda" backend (on a CPU: the C++ whole-block kernel, two passes for a squeeze-excite block), on
the first two MobileNetV3-Small blocks (the first with squeeze-excite and no expand conv, the second
without squeeze-excite).

    pytest benchmarks --benchmark-only

Inputs, callables and each case's row (shape, the block's and the op-by-op bytes; in the
benchmark's extra_info) come from mobilenet_kernels.benchmarking.inverted_residual, the sweep behind
`bench ops`; the cpu_benchmark fixture (benchmarks/conftest.py) times them, forward under
torch.no_grad(), in one thread. Until the extension is rebuilt with the C++ pointwise kernels
(which the "cuda" block runs on), the "cuda" cases skip (NotImplementedError, and only that).
"""

import pytest

from mobilenet_kernels.benchmarking import inverted_residual

pytest.importorskip("torchvision")
from mobilenet_kernels.benchmarking.shapes import inverted_residual_layers  # noqa: E402

BATCH = 8
# V3-Small at 64 px: 16 -> 16 at 32x32, k3 s2 with squeeze-excite (8); 16 -> 72 -> 24 at 16x16, k3 s2.
LAYERS = inverted_residual_layers("mobilenet_v3_small", 64)[:2]


@pytest.mark.parametrize("provider", ["eager", "cuda"])
@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: f"{layer[0]}-{layer[1]}-{layer[2]}-{layer[3]}x{layer[4]}"
                         f"-k{layer[5]}s{layer[6]}" + ("-res" if layer[9] else "")
                         + (f"-se{layer[10]}" if layer[10] else ""))
def test_inverted_residual_eval(cpu_benchmark, layer, provider):
    def make_case(backends):
        providers = inverted_residual.providers(compile_modes=[], backends=backends)
        return inverted_residual.case(providers, layer, BATCH, "float32", "nhwc", "cpu")

    cpu_benchmark(provider, make_case, f"inverted_residual_eval {layer}",
                     needs_kernel="pointwise_conv2d, which the block runs on")
