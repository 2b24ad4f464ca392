"""pytest-benchmark micro-benchmarks of batch_norm_act on the CPU: eager PyTorch (F.batch_norm +
activation, the reference) against our C++ CPU kernels, on real MobileNetV3-Small layers.

    pytest benchmarks --benchmark-only
    pytest benchmarks/test_bench_batch_norm_act.py --benchmark-only --benchmark-group-by=group

Inputs and callables come from mobilenet_kernels.benchmarking.batch_norm_act, the sweep behind
`bench ops`; each case's row (shape, bytes moved) is stored in the benchmark's extra_info. One
thread, so that timings on a shared CI machine stay comparable.
"""

import pytest
import torch

from mobilenet_kernels import backends
from mobilenet_kernels.benchmarking import batch_norm_act

pytest.importorskip("torchvision")
from mobilenet_kernels.benchmarking.shapes import batch_norm_layers  # noqa: E402

BATCH = 8
# The largest layer (16x32x32, hardswish) and a wide small one (240x4x4) of V3-Small at 64 px.
LAYERS = [batch_norm_layers("mobilenet_v3_small", 64)[i] for i in (0, 10)]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("provider", ["eager", "cuda"])
@pytest.mark.parametrize("training, mode", [(False, "forward"), (True, "full")], ids=["eval-forward", "train-full"])
@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: "x".join(map(str, layer[:3])) + f"-{layer[3]}")
def test_batch_norm_act(benchmark, layer, training, mode, provider):
    if provider != "eager" and (reason := backends.unusable_reason(provider, "cpu")):
        pytest.skip(reason)
    providers = batch_norm_act.providers("cpu", compile_modes=[], backends=[provider] if provider != "eager" else [],
                                         training=training)
    row, calls = batch_norm_act.case(providers, layer, BATCH, "float32", "nhwc", mode, training, "cpu")
    benchmark.group = f"batch_norm_act {'train' if training else 'eval'} {mode} {layer}"
    benchmark.extra_info.update(row)
    benchmark(calls[provider])
