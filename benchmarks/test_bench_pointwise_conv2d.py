"""pytest-benchmark micro-benchmarks of pointwise_conv2d on the CPU: eager PyTorch (F.conv2d +
activation + residual add, BatchNorm folded) against our C++ CPU kernels, on real MobileNetV3-Small
1x1 convs.

    pytest benchmarks --benchmark-only

Inputs, callables and each case's row (shape, bytes and FLOPs; in the benchmark's extra_info) come
from mobilenet_kernels.benchmarking.pointwise_conv2d, the sweep behind `bench ops`; the cpu_benchmark
fixture (benchmarks/conftest.py) times them, in one thread. Until the extension is rebuilt with the
C++ pointwise kernels, the "cuda" cases skip (NotImplementedError, and only that).
"""

import pytest

from mobilenet_kernels.benchmarking import pointwise_conv2d

pytest.importorskip("torchvision")
from mobilenet_kernels.benchmarking.shapes import pointwise_layers  # noqa: E402

BATCH = 8
# Of V3-Small at 64 px: the expand conv of its second block (16 -> 72 at 16x16, relu) and the
# project conv of its third, with the residual add (88 -> 24 at 8x8).
LAYERS = [pointwise_layers("mobilenet_v3_small", 64)[i] for i in (1, 4)]


@pytest.mark.parametrize("provider", ["eager", "cuda"])
@pytest.mark.parametrize("mode", ["forward", "full"])
@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: f"{layer[0]}to{layer[1]}-{layer[2]}x{layer[3]}-{layer[4]}"
                         + ("-res" if layer[5] else ""))
def test_pointwise_conv2d(cpu_benchmark, layer, mode, provider):
    def make_case(backends):
        providers = pointwise_conv2d.providers(compile_modes=[], backends=backends)
        return pointwise_conv2d.case(providers, layer, BATCH, "float32", "nhwc", mode, "cpu")

    cpu_benchmark(provider, make_case, f"pointwise_conv2d {mode} {layer}",
                     needs_kernel="pointwise_conv2d")
