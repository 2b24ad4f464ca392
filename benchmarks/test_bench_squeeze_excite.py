"""pytest-benchmark micro-benchmarks of squeeze_excite on the CPU: eager PyTorch (torchvision's
SqueezeExcitation as six ops) against our C++ CPU kernels, on real MobileNetV3-Small SE blocks.

    pytest benchmarks --benchmark-only

Inputs and callables come from mobilenet_kernels.benchmarking.squeeze_excite, the sweep behind
`bench ops`; each case's row (shape, bytes moved) is stored in the benchmark's extra_info. One
thread, so that timings on a shared CI machine stay comparable.
"""

import pytest
import torch

from mobilenet_kernels import backends
from mobilenet_kernels.benchmarking import squeeze_excite

pytest.importorskip("torchvision")
from mobilenet_kernels.benchmarking.shapes import squeeze_excite_layers  # noqa: E402

BATCH = 8
# The first (16 channels at 16x16) and the last (576 channels at 2x2) SE block of V3-Small at 64 px.
LAYERS = [squeeze_excite_layers("mobilenet_v3_small", 64)[i] for i in (0, -1)]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("provider", ["eager", "cuda"])
@pytest.mark.parametrize("mode", ["forward", "full"])
@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: "x".join(map(str, layer[:3])) + f"-s{layer[3]}")
def test_squeeze_excite(benchmark, layer, mode, provider):
    if provider != "eager" and (reason := backends.unusable_reason(provider, "cpu")):
        pytest.skip(reason)
    providers = squeeze_excite.providers(compile_modes=[], backends=[provider] if provider != "eager" else [])
    row, calls = squeeze_excite.case(providers, layer, BATCH, "float32", "nhwc", mode, "cpu")
    benchmark.group = f"squeeze_excite {mode} {layer}"
    benchmark.extra_info.update(row)
    benchmark(calls[provider])
