"""pytest-benchmark micro-benchmarks of inverted_residual_eval on the CPU: eager PyTorch (the folded
block op by op: 1x1 conv + act, depthwise conv + act, squeeze-excite, 1x1 conv + residual) against
our "cuda" backend (on a CPU: the C++ whole-block kernel, two passes for a squeeze-excite block), on
the first two MobileNetV3-Small blocks (the first with squeeze-excite and no expand conv, the second
without squeeze-excite).

    pytest benchmarks --benchmark-only

Inputs and callables come from mobilenet_kernels.benchmarking.inverted_residual, the sweep behind
`bench ops`; each case's row (shape, the block's and the op-by-op bytes) is stored in the
benchmark's extra_info. Forward under torch.no_grad(), one thread. Until the extension is rebuilt
with the C++ pointwise kernels (which the "cuda" block runs on), the "cuda" cases skip
(NotImplementedError, and only that).
"""

import pytest
import torch

from mobilenet_kernels import backends
from mobilenet_kernels.benchmarking import inverted_residual

pytest.importorskip("torchvision")
from mobilenet_kernels.benchmarking.shapes import inverted_residual_layers  # noqa: E402

BATCH = 8
# V3-Small at 64 px: 16 -> 16 at 32x32, k3 s2 with squeeze-excite (8); 16 -> 72 -> 24 at 16x16, k3 s2.
LAYERS = inverted_residual_layers("mobilenet_v3_small", 64)[:2]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("provider", ["eager", "cuda"])
@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: f"{layer[0]}-{layer[1]}-{layer[2]}-{layer[3]}x{layer[4]}"
                         f"-k{layer[5]}s{layer[6]}" + ("-res" if layer[9] else "")
                         + (f"-se{layer[10]}" if layer[10] else ""))
def test_inverted_residual_eval(benchmark, layer, provider):
    if provider != "eager" and (reason := backends.unusable_reason(provider, "cpu")):
        pytest.skip(reason)
    providers = inverted_residual.providers(compile_modes=[], backends=[provider] if provider != "eager" else [])
    row, calls = inverted_residual.case(providers, layer, BATCH, "float32", "nhwc", "cpu")
    if provider != "eager":
        try:
            calls[provider]()
        except NotImplementedError as exc:
            first = str(exc).splitlines()[0] if str(exc) else ""
            pytest.skip(f"backend {provider!r}: the loaded mobilenet_kernels._C has no CPU kernel for "
                        f"pointwise_conv2d, which the block runs on (rebuild the extension): {first[:160]}")
    benchmark.group = f"inverted_residual_eval {layer}"
    benchmark.extra_info.update(row)
    benchmark(calls[provider])
