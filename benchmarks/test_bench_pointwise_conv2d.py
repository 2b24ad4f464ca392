"""pytest-benchmark micro-benchmarks of pointwise_conv2d on the CPU: eager PyTorch (F.conv2d +
activation + residual add, BatchNorm folded) against our C++ CPU kernels, on real MobileNetV3-Small
1x1 convs.

    pytest benchmarks --benchmark-only

Inputs and callables come from mobilenet_kernels.benchmarking.pointwise_conv2d, the sweep behind
`bench ops`; each case's row (shape, bytes and FLOPs) is stored in the benchmark's extra_info. One
thread, so that timings on a shared CI machine stay comparable. Until the extension is rebuilt with
the C++ pointwise kernels, the "cuda" cases skip (NotImplementedError, and only that).
"""

import pytest
import torch

from mobilenet_kernels import backends
from mobilenet_kernels.benchmarking import pointwise_conv2d

pytest.importorskip("torchvision")
from mobilenet_kernels.benchmarking.shapes import pointwise_layers  # noqa: E402

BATCH = 8
# Of V3-Small at 64 px: the expand conv of its second block (16 -> 72 at 16x16, relu) and the
# project conv of its third, with the residual add (88 -> 24 at 8x8).
LAYERS = [pointwise_layers("mobilenet_v3_small", 64)[i] for i in (1, 4)]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def skip_unless_implemented(call, provider: str) -> None:
    """Run ``call`` once; skip if the loaded extension has no CPU kernel for the op (a build that
    predates the C++ pointwise kernels). Any other error fails the test."""
    try:
        call()
    except NotImplementedError as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        pytest.skip(f"backend {provider!r}: the loaded mobilenet_kernels._C has no CPU kernel for pointwise_conv2d "
                    f"(rebuild the extension): {first[:160]}")


@pytest.mark.parametrize("provider", ["eager", "cuda"])
@pytest.mark.parametrize("mode", ["forward", "full"])
@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: f"{layer[0]}to{layer[1]}-{layer[2]}x{layer[3]}-{layer[4]}"
                         + ("-res" if layer[5] else ""))
def test_pointwise_conv2d(benchmark, layer, mode, provider):
    if provider != "eager" and (reason := backends.unusable_reason(provider, "cpu")):
        pytest.skip(reason)
    providers = pointwise_conv2d.providers(compile_modes=[], backends=[provider] if provider != "eager" else [])
    row, calls = pointwise_conv2d.case(providers, layer, BATCH, "float32", "nhwc", mode, "cpu")
    if provider != "eager":
        skip_unless_implemented(calls[provider], provider)
    benchmark.group = f"pointwise_conv2d {mode} {layer}"
    benchmark.extra_info.update(row)
    benchmark(calls[provider])
