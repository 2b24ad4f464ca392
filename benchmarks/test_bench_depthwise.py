"""pytest-benchmark micro-benchmarks of depthwise_conv2d (alone, and fused with BatchNorm +
activation in training) on the CPU: eager PyTorch against our C++ CPU kernels, on real
MobileNetV3-Small layers.

    pytest benchmarks --benchmark-only

Inputs, callables and each case's row (shape, bytes moved; in the benchmark's extra_info) come from
mobilenet_kernels.benchmarking.depthwise_conv2d, the sweep behind `bench ops`; the cpu_benchmark fixture
(benchmarks/conftest.py) times them, in one thread.
"""

import pytest

from mobilenet_kernels.benchmarking import depthwise_conv2d

pytest.importorskip("torchvision")
from mobilenet_kernels.benchmarking.shapes import depthwise_layers  # noqa: E402

BATCH = 8
# The first layer (16x32x32, k3 s2) and a k5 s2 one (96x8x8) of V3-Small at 64 px.
LAYERS = [depthwise_layers("mobilenet_v3_small", 64)[i] for i in (0, 3)]
PROVIDERS = {"conv": depthwise_conv2d.conv_providers, "conv_bn_act_train": depthwise_conv2d.conv_bn_act_providers}


@pytest.mark.parametrize("provider", ["eager", "cuda"])
@pytest.mark.parametrize("op, mode", [("conv", "forward"), ("conv", "full"), ("conv_bn_act_train", "full")],
                         ids=["conv-forward", "conv-full", "conv_bn_act_train-full"])
@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: "x".join(map(str, layer[:3])) + f"-k{layer[3]}s{layer[4]}")
def test_depthwise(cpu_benchmark, layer, op, mode, provider):
    def make_case(backends):
        providers = PROVIDERS[op]("cpu", compile_modes=[], backends=backends)
        return depthwise_conv2d.case(providers, op, layer, BATCH, "float32", "nhwc", mode, "cpu")

    cpu_benchmark(provider, make_case, f"depthwise {op} {mode} {layer}")
