"""Memory (issue 9): a long training run on our kernels holds a flat footprint after warm-up, i.e.
no op, autograd formula or module cache leaks per call.

1,000 training steps (forward, backward, SGD) of MobileNetV3-Small (width 0.25, 10 classes, 32x32
inputs, batch 2: every op of the models runs, squeeze-excite and the fused dw conv + BN + act
included), with an eval-mode forward every 10 steps (the modules' folded-BatchNorm cache is rebuilt
after each parameter update), then:

* CPU ("cuda" backend = the C++ kernels): the resident set size grows by less than 2 MiB between
  step 200 and step 1,000 (measured noise: ~0.1 MiB; leaking one (C,) float32 statistics tensor
  per BatchNorm call would add ~10 MiB), and the number of live Python tensor objects is the same;
* GPU ("cuda" and "triton" backends; skipped without a GPU): torch.cuda.memory_allocated is the
  same at step 200 and step 1,000, and the peak after warm-up does not grow.

And the backward of a training block allocates no zero gradients for the ops' statistics outputs
(test_backward_materializes_no_zero_gradients).

On CPU the loop runs on one thread: on a shared 2-core machine OpenMP's spin-waiting makes two
threads ~10x slower, and the thread count does not change what is allocated.
"""

from __future__ import annotations

import gc
import os
import warnings

import pytest
import torch
import torch.nn.functional as F

import mobilenet_kernels as mk

from torch.utils._python_dispatch import TorchDispatchMode

from conftest import skip_unless_usable

STEPS, WARMUP, EVAL_EVERY = 1000, 200, 10
RSS_GROWTH_LIMIT_MIB = 2.0


def rss_mib() -> float:
    """Resident set size of this process: psutil if installed, else /proc/self/statm."""
    try:
        import psutil
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return psutil.Process().memory_info().rss / 2**20


def live_tensors() -> int:
    gc.collect()
    with warnings.catch_warnings():  # isinstance() on some lazily imported objects warns
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


def train(backend: str, device: str, on_step) -> None:
    """STEPS training steps; ``on_step(step)`` after each."""
    torch.manual_seed(0)
    model = mk.mobilenet_v3_small(width_mult=0.25, num_classes=10, backend=backend).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(2, 3, 32, 32, device=device)
    target = torch.randint(0, 10, (2,), device=device)
    for step in range(1, STEPS + 1):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), target)
        loss.backward()
        opt.step()
        if step % EVAL_EVERY == 0:
            model.eval()
            with torch.no_grad():
                model(x)
            model.train()
        on_step(step)
    assert torch.isfinite(loss).item()


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_training_memory_is_flat(backend, device):
    skip_unless_usable(backend, device)
    if device == "cpu":
        if backend == "triton":
            pytest.skip("1,000 training steps are too slow for the Triton interpreter (runs on GPU)")
        samples = {}

        def on_step(step):
            if step == WARMUP or step == STEPS:
                samples[step] = (live_tensors(), rss_mib())

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            train(backend, device, on_step)
        finally:
            torch.set_num_threads(threads)
        (tensors_0, rss_0), (tensors_1, rss_1) = samples[WARMUP], samples[STEPS]
        assert tensors_1 == tensors_0, f"live tensors: {tensors_0} at step {WARMUP}, {tensors_1} at step {STEPS}"
        assert rss_1 - rss_0 < RSS_GROWTH_LIMIT_MIB, (
            f"RSS grew by {rss_1 - rss_0:.2f} MiB between step {WARMUP} ({rss_0:.1f} MiB) and step {STEPS}")
        return

    samples = {}

    def on_step(step):
        if step == WARMUP // 2:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        elif step == WARMUP or step == STEPS:
            torch.cuda.synchronize()
            samples[step] = (torch.cuda.memory_allocated(), torch.cuda.max_memory_allocated())
            torch.cuda.reset_peak_memory_stats()

    train(backend, device, on_step)
    (allocated_0, peak_warmup), (allocated_1, peak_after) = samples[WARMUP], samples[STEPS]
    assert allocated_1 == allocated_0, f"memory_allocated: {allocated_0} B at step {WARMUP}, {allocated_1} B at {STEPS}"
    assert peak_after <= peak_warmup, f"peak memory grew after warm-up: {peak_warmup} B -> {peak_after} B"


class _BackwardAllocations(TorchDispatchMode):
    """The ops the autograd engine runs (its backward), by name."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if torch._C._current_graph_task_id() != -1:
            self.ops.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_backward_materializes_no_zero_gradients(backend, device):
    """The ops with statistics outputs (BatchNorm's mean and var, the training composites' kept conv
    output, squeeze-excite's pooled input) mark them non-differentiable without autograd's default
    zero gradient for each: a backward through a training block allocates and fills no zero tensor
    (for conv_out that was a fill of the conv output's size per layer and step)."""
    skip_unless_usable(backend, device)
    torch.manual_seed(0)
    model = mk.mobilenet_v3_small(width_mult=0.25, num_classes=10, backend=backend).to(device).train()
    block = model.features[1]  # an inverted residual with squeeze-excite: dw conv + BN + act, SE, project + BN
    x = torch.randn(2, block.block[0][0].in_channels, 8, 8, device=device, requires_grad=True)
    loss = block(x).square().sum() + model.features[0](torch.randn(2, 3, 16, 16, device=device)).sum()
    with _BackwardAllocations() as seen:
        loss.backward()
    assert x.grad is not None and not any(name in ("aten.zeros", "aten.zeros_like", "aten.fill_") for name in seen.ops), (
        seen.ops)
    assert any(name.startswith("mobilenet_kernels.") and name.endswith("_backward") or "_backward_" in name
               for name in seen.ops), seen.ops
