"""Test configuration: the Triton interpreter on GPU-less machines, seeds, device/backend params.

MK_TEST_DEVICE=cuda selects the CUDA-device cases only (the GPU suite). Nothing here touches CUDA beyond torch.cuda.is_available() (which creates no context).
"""

import os

import torch

# The Triton interpreter lets CI run the Triton kernels on CPU tensors; it must be switched on
# before triton is imported, and only where there is no GPU (it would also take CUDA tensors).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import mobilenet_kernels  # noqa: E402,F401
from mobilenet_kernels import backends  # noqa: E402
from mobilenet_kernels.reference import ieee_fp32  # noqa: E402

DEVICES = ["cpu", "cuda"]
BACKENDS = list(backends.BACKENDS)


def load_benchmark(name: str):
    """benchmarks/<name>.py imported as a module (the benchmarks folder is not a package), for
    tests that call a benchmark script's main() or helpers."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def skip_unless_usable(backend: str, device: str) -> None:
    """Skip a case whose device or backend this machine cannot run, with the reason."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    reason = backends.unusable_reason(backend, device)
    if reason is not None:
        pytest.skip(f"backend {backend!r} on {device}: {reason}")


@pytest.fixture(autouse=True, scope="session")
def _ieee_fp32_convolutions():
    """float32 cases are judged at float32 tolerances against float64: cuDNN's TF32 default would
    put the torch backend and the torch/torchvision references ~1e-3 off on a GPU."""
    with ieee_fp32():
        yield


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(params=DEVICES)
def device(request):
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return request.param


def pytest_collection_modifyitems(config, items):
    """MK_TEST_DEVICE=cuda keeps only the CUDA-device cases (and those marked gpu_suite): the GPU
    suite runs those, CI the rest."""
    only = os.environ.get("MK_TEST_DEVICE")
    if not only:
        return
    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        wanted = params.get("device") == only or (only == "cuda" and item.get_closest_marker("gpu_suite") is not None)
        (keep if wanted else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
