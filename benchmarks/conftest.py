"""Fixtures of the CPU micro-benchmarks (benchmarks/test_bench_*.py)."""

import functools

import pytest
import torch

from mobilenet_kernels import backends


def _benchmark_on_cpu(benchmark, provider: str, make_case, group: str, needs_kernel: str | None = None) -> None:
    """One pytest-benchmark case on the CPU: ``provider`` is "eager" (the PyTorch reference) or one
    of our backends, skipped where unusable here. ``make_case(backends)`` builds the providers of a
    mobilenet_kernels.benchmarking module for ``backends`` ([] for "eager") and returns that module's
    ``case()``, (row, calls); the row (shape, bytes moved) goes to the benchmark's extra_info, and
    ``calls[provider]`` is timed in ``group``. One thread, so that timings on a shared CI machine stay
    comparable. ``needs_kernel``: the C++ CPU kernel a backend's call runs on (e.g.
    "pointwise_conv2d"); the call runs once first and the case skips if the loaded extension
    predates that kernel (NotImplementedError, and only that: any other error fails)."""
    if provider != "eager" and (reason := backends.unusable_reason(provider, "cpu")):
        pytest.skip(reason)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        row, calls = make_case([provider] if provider != "eager" else [])
        if needs_kernel and provider != "eager":
            try:
                calls[provider]()
            except NotImplementedError as exc:
                first = str(exc).splitlines()[0] if str(exc) else ""
                pytest.skip(f"backend {provider!r}: the loaded mobilenet_kernels._C has no CPU kernel for "
                            f"{needs_kernel} (rebuild the extension): {first[:160]}")
        benchmark.group = group
        benchmark.extra_info.update(row)
        benchmark(calls[provider])
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def cpu_benchmark(benchmark):
    """pytest-benchmark's ``benchmark`` as ``cpu_benchmark(provider, make_case, group, needs_kernel=None)``
    (_benchmark_on_cpu): the shared body of every test_bench_*.py case."""
    return functools.partial(_benchmark_on_cpu, benchmark)
