"""BatchNorm's running-statistics updates in training: one at a time, or collected over a model's
forward and applied together.

Our training ops return each BatchNorm's batch mean and variance; the running statistics are then
updated by ``batch_norm_update_stats`` (one launch on CUDA) and the module counts the batch
(``num_batches_tracked += 1``, one more): two launches per BatchNorm, ~90 per MobileNetV3-Large
training step, where cuDNN's BatchNorm updates them inside its kernel. Where a step's time is the
host's (a training step's eager launches on a slow host; GPU run 7 replayed V3-Large's step from
a CUDA graph in 22.6 ms against 35.9 eager), each launch costs ~30 µs there.

Within :func:`deferred` (our models' feature extractors run in it; in eval mode nothing is
recorded), :func:`update` and :func:`count` only record, and the exit applies every recorded update
in a few foreach ops (``torch._foreach_mul_`` / ``_foreach_add_``: one launch, or a few, per group
of tensors of one device and dtype, one momentum and one batch count). The arithmetic is the per-call update's
(csrc/batch_norm_update_stats.cpp: ``running = running * (1 - momentum) + batch * momentum``, the
variance's with the unbiased correction ``count / (count - 1)``): the same values on a CPU, where
the op runs those very ATen ops; on CUDA the op's own kernel may round the last bit differently.

- A raised exception discards what was recorded: no running statistic changes.
- A tensor recorded twice (a module called twice in one forward) applies what was recorded
  before the second record first, so the updates happen in order, as one at a time would.
- :func:`settle` applies what is recorded for one tensor before it is read (a module whose
  momentum is None reads its num_batches_tracked).
- Under torch.compile the updates are not deferred: the compiled graph fuses them itself.
- Only our models' forward opens a region; a model that :func:`~mobilenet_kernels.convert` made
  runs torchvision's forward, whose modules update one at a time (wrap its call in
  :func:`deferred` to have them recorded too).
- Calls that :func:`update` cannot defer (mismatched shapes, devices or dtypes; one value per
  channel) run the op at once, which raises its error or does the mixed-dtype update.
"""

from __future__ import annotations

import contextlib
import threading
from collections import defaultdict
from typing import Callable, Iterator, TypeVar

import torch

__all__ = ["count", "deferred", "run_deferred", "settle", "update"]

T = TypeVar("T")


class _Pending:
    """What one :func:`deferred` region recorded, in order, and which tensors it writes."""

    def __init__(self) -> None:
        self.stats: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float, float]] = []
        self.counters: list[torch.Tensor] = []
        self.written: set[int] = set()  # ids of the tensors recorded: alive, since the lists hold them

    def touches(self, *tensors: torch.Tensor) -> bool:
        return any(id(t) in self.written for t in tensors)

    def claim(self, *tensors: torch.Tensor) -> None:
        """Before a record that writes ``tensors``: apply what is recorded first if it writes one
        of them too (the updates stay in order), then mark them written."""
        if self.touches(*tensors):
            self.apply()
        self.written.update(id(t) for t in tensors)

    @torch.no_grad()
    def apply(self) -> None:
        """Apply everything recorded (each tensor once: the recording order guarantees it), then
        forget it."""
        groups: dict[tuple, list] = defaultdict(list)
        for running_mean, running_var, mean, var, unbias, momentum in self.stats:
            groups[(running_mean.device, running_mean.dtype, momentum)].append((running_mean, running_var, mean, var,
                                                                                unbias))
        for (_, _, momentum), entries in groups.items():
            means, variances = [e[0] for e in entries], [e[1] for e in entries]
            torch._foreach_mul_(means, 1.0 - momentum)
            torch._foreach_add_(means, [e[2] for e in entries], alpha=momentum)
            torch._foreach_mul_(variances, 1.0 - momentum)
            by_count: dict[float, list] = defaultdict(list)
            for e in entries:
                by_count[e[4]].append(e)
            for unbias, same in by_count.items():
                torch._foreach_add_([e[1] for e in same], [e[3] for e in same], alpha=momentum * unbias)
        by_device: dict[tuple, list[torch.Tensor]] = defaultdict(list)
        for counter in self.counters:
            by_device[(counter.device, counter.dtype)].append(counter)
        for counters in by_device.values():
            torch._foreach_add_(counters, 1)
        self.stats, self.counters, self.written = [], [], set()


_local = threading.local()


def _pending() -> _Pending | None:
    return getattr(_local, "pending", None)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Record the running-statistics updates and batch counts of the region; apply them at its
    exit (discard them if it raises). Nested regions join the outermost one."""
    if _pending() is not None or torch.compiler.is_compiling():
        yield
        return
    pending = _local.pending = _Pending()
    try:
        yield
    finally:
        _local.pending = None
    pending.apply()


def run_deferred(fn: Callable[..., T], *args) -> T:
    """``fn(*args)`` in a :func:`deferred` region, except under torch.compile (where it is just
    ``fn(*args)``: no context manager in the traced code)."""
    if torch.compiler.is_compiling():
        return fn(*args)
    with deferred():
        return fn(*args)


def update(running_mean: torch.Tensor, running_var: torch.Tensor, mean: torch.Tensor, var: torch.Tensor,
           count: int, momentum: float) -> None:
    """``batch_norm_update_stats(running_mean, running_var, mean, var, count, momentum)``: at once, or
    recorded within :func:`deferred`."""
    pending = _pending()
    deferrable = (pending is not None and count > 1 and running_mean.shape == mean.shape
                  and running_var.shape == var.shape and running_mean.dtype == mean.dtype
                  and running_var.dtype == var.dtype and running_mean.device == mean.device == running_var.device
                  and var.device == mean.device and mean.is_floating_point())
    if not deferrable:
        torch.ops.mobilenet_kernels.batch_norm_update_stats(running_mean, running_var, mean, var, count, momentum)
        return
    pending.claim(running_mean, running_var)
    pending.stats.append((running_mean, running_var, mean, var, count / (count - 1), momentum))


def count(num_batches_tracked: torch.Tensor) -> None:
    """``num_batches_tracked += 1``: at once, or recorded within :func:`deferred`."""
    pending = _pending()
    if pending is None:
        num_batches_tracked.add_(1)
        return
    pending.claim(num_batches_tracked)
    pending.counters.append(num_batches_tracked)


def settle(tensor: torch.Tensor | None) -> None:
    """Apply what the current :func:`deferred` region recorded, if it writes ``tensor``: before
    ``tensor`` is read."""
    pending = _pending()
    if pending is not None and tensor is not None and pending.touches(tensor):
        pending.apply()
