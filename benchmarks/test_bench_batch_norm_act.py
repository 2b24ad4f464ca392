"""pytest-benchmark micro-benchmarks of batch_norm_act on the CPU: eager PyTorch (F.batch_norm +
activation, the reference) against our C++ CPU kernels, on real MobileNetV3-Small layers.

    pytest benchmarks --benchmark-only
    pytest benchmarks/test_bench_batch_norm_act.py --benchmark-only --benchmark-group-by=group

Inputs, callables and each case's row (shape, bytes moved; in the benchmark's extra_info) come from
mobilenet_kernels.benchmarking.batch_norm_act, the sweep behind `bench ops`; the cpu_benchmark fixture
(benchmarks/conftest.py) times them, in one thread.
"""

import pytest

from mobilenet_kernels.benchmarking import batch_norm_act

pytest.importorskip("torchvision")
from mobilenet_kernels.benchmarking.shapes import batch_norm_layers  # noqa: E402

BATCH = 8
# The largest layer (16x32x32, hardswish) and a wide small one (240x4x4) of V3-Small at 64 px.
LAYERS = [batch_norm_layers("mobilenet_v3_small", 64)[i] for i in (0, 10)]


@pytest.mark.parametrize("provider", ["eager", "cuda"])
@pytest.mark.parametrize("training, mode", [(False, "forward"), (True, "full")], ids=["eval-forward", "train-full"])
@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: "x".join(map(str, layer[:3])) + f"-{layer[3]}")
def test_batch_norm_act(cpu_benchmark, layer, training, mode, provider):
    def make_case(backends):
        providers = batch_norm_act.providers("cpu", compile_modes=[], backends=backends, training=training)
        return batch_norm_act.case(providers, layer, BATCH, "float32", "nhwc", mode, training, "cpu")

    cpu_benchmark(provider, make_case, f"batch_norm_act {'train' if training else 'eval'} {mode} {layer}")
