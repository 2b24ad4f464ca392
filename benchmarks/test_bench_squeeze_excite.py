"""pytest-benchmark micro-benchmarks of squeeze_excite on the CPU: eager PyTorch (torchvision's
SqueezeExcitation as six ops) against our C++ CPU kernels, on real MobileNetV3-Small SE blocks.

    pytest benchmarks --benchmark-only

Inputs, callables and each case's row (shape, bytes moved; in the benchmark's extra_info) come from
mobilenet_kernels.benchmarking.squeeze_excite, the sweep behind `bench ops`; the cpu_benchmark fixture
(benchmarks/conftest.py) times them, in one thread.
"""

import pytest

from mobilenet_kernels.benchmarking import squeeze_excite

pytest.importorskip("torchvision")
from mobilenet_kernels.benchmarking.shapes import squeeze_excite_layers  # noqa: E402

BATCH = 8
# The first (16 channels at 16x16) and the last (576 channels at 2x2) SE block of V3-Small at 64 px.
LAYERS = [squeeze_excite_layers("mobilenet_v3_small", 64)[i] for i in (0, -1)]


@pytest.mark.parametrize("provider", ["eager", "cuda"])
@pytest.mark.parametrize("mode", ["forward", "full"])
@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: "x".join(map(str, layer[:3])) + f"-s{layer[3]}")
def test_squeeze_excite(cpu_benchmark, layer, mode, provider):
    def make_case(backends):
        providers = squeeze_excite.providers(compile_modes=[], backends=backends)
        return squeeze_excite.case(providers, layer, BATCH, "float32", "nhwc", mode, "cpu")

    cpu_benchmark(provider, make_case, f"squeeze_excite {mode} {layer}")
