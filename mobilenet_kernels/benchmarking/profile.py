"""Where a model's training step spends its time: torch.profiler over a few steps of torchvision eager
and of ours on each backend (the steps of ``bench model``: models.make_step), on one device.

Per variant: the step's wall time (CUDA events via time_ms), its host time (host_ms: the Python and
launch work of one step, the GPU not waited for), the device work per step (the sum of the GPU
kernels' durations on CUDA; the CPU ops' self time on a CPU) and the launches per step, the share of
the wall time the GPU was idle, the time per kernel category and the top kernels, and the host's
side under the profiler: the ops' self CPU time per step and the top ops by it (:func:`host_ops`). A step whose host
time reaches its wall time is host-bound: the GPU waits for launches, and fewer launches (or a CUDA
graph) would speed it up; a busy GPU points at the kernels in the top list instead.

Memory (``memory``, one more step per variant): the peak of the tensor storage allocated during a
step and alive at once, and what was alive at that peak by the op that allocated it and the phase
(forward or backward), from a dispatch mode that sees every op, those our C++ ops call inside
(their ``aten::empty`` temporaries) included (:class:`LiveMemory`); on CUDA also the caching
allocator's own peak over the step (``allocator_peak_mb``, above what was allocated before it): a gap
between the two is memory no op returned (library workspaces). This is where a training step's peak
memory goes, per op, on any device.
"""

from __future__ import annotations

import re
import weakref
from collections import Counter, defaultdict

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .core import time_ms
from .models import ModelSettings, Variant, _ready_model, _synchronize, build, make_step

# Kernel (or CPU op) name -> category, first match wins. Our CUDA kernels carry the namespace
# mobilenet_kernels:: in their names (our C++ ops on a CPU: mobilenet_kernels::<op>); their
# generic names (per_channel_nhwc_kernel, finish_kernel) are ours only with it.
OURS = [
    ("ours: depthwise", r"depthwise_conv2d"),
    ("ours: pointwise", r"pointwise_"),
    ("ours: squeeze-excite", r"squeeze_excite|excite_gemm"),
    ("ours: block", r"inverted_residual"),
    ("ours: batch norm", r"batch_norm|per_channel|reduce_n|stats|finish"),
]
CATEGORIES = [
    ("triton", r"^triton_|_triton\b"),
    ("cuDNN conv", r"conv2d_c1|cudnn|xmma|implicit_gemm|fprop|dgrad|wgrad|convolution|conv"),
    ("GEMM", r"gemm|nvjet|cutlass|cublas|addmm|\bmm\b|matmul|linear"),
    ("batch norm (ATen)", r"batch_norm|welford|bn_fw|bn_bw"),
    ("optimizer", r"multi_tensor|foreach|sgd|_amp_|unscale"),
    ("copies, casts, fills", r"copy|_to_copy|fill|zero|cast|CatArray|\bcat\b"),
    ("elementwise", r"elementwise|vectorized|unrolled|hardswish|hardsigmoid|hardtanh|relu|add|mul|where|clamp"),
    ("reductions", r"reduce|sum|mean|var"),
]
TOP = 20


def category(name: str) -> str:
    if "mobilenet_kernels" in name:
        return next((label for label, pattern in OURS if re.search(pattern, name)), "ours: other")
    return next((label for label, pattern in CATEGORIES if re.search(pattern, name, re.IGNORECASE)), "other")


def short_name(name: str, width: int = 110) -> str:
    """A kernel's name without its template arguments' namespaces, cut to ``width``."""
    name = re.sub(r"\b(void|mobilenet_kernels::|c10::|at::native::|\(anonymous namespace\)::)", "", name).strip()
    return name if len(name) <= width else name[: width - 3] + "..."


def device_work(prof, device: str) -> list[tuple[str, float]]:
    """(name, microseconds) of every unit of device work the profiler saw: each GPU kernel on CUDA;
    on a CPU each op's self time (the CPU is the device there)."""
    if device == "cuda":
        return [(e.name, e.time_range.elapsed_us()) for e in prof.events()
                if e.device_type == torch.autograd.DeviceType.CUDA]
    return [(e.key, e.self_cpu_time_total / max(e.count, 1)) for e in prof.key_averages() for _ in range(e.count)]


def host_ops(prof, steps: int, top: int = TOP) -> tuple[float, list[dict]]:
    """Where the host's time goes: the profiled ops' summed self CPU time per step (ms), and the
    ``top`` ops by it, each with its calls and ms per step. An op's self time is its own host work
    (checks, allocation, the Python of a Python op's implementation), its child ops' excluded; the
    CUDA runtime's calls are ops here too (cudaLaunchKernel: the launches' cost), as are the autograd
    engine's nodes (their self time: the engine's work per node). The Python between ops (modules,
    functional wrappers) is in no op: host_ms less this sum, roughly (the profiler slows both)."""
    rows = [(e.key, e.count / steps, e.self_cpu_time_total / 1e3 / steps) for e in prof.key_averages()]
    rows.sort(key=lambda r: -r[2])
    return sum(r[2] for r in rows), [{"name": name, "calls": round(calls, 2), "ms": ms} for name, calls, ms in rows[:top]]


class LiveMemory(TorchDispatchMode):
    """Within the mode: the bytes of tensor storage that ops allocate and that are still alive, their
    peak, and at the peak the live bytes per (phase, op). The op of an allocation is the outermost op
    on the dispatch stack (an ``aten::empty`` inside one of our C++ ops counts as that op); the phase
    is "backward" inside the autograd engine, else "forward" (the optimizer's step included). A
    storage counts from the op that first returns it (not one of the op's inputs': in-place ops and
    views allocate nothing) until it is freed (a finalizer on the storage:
    PyTorch keeps a storage's Python object alive as long as the storage itself)."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[tuple[str, str], int]] = {}  # storage address -> ((phase, op), bytes)
        self.current = 0
        self.by_op: Counter = Counter()  # live bytes per (phase, op)
        self.peak = 0
        self.at_peak: Counter = Counter()
        self.peak_during: tuple[str, str] = ("", "")
        self._stack: list[str] = []

    def _free(self, key: int) -> None:
        entry = self.live.pop(key, None)
        if entry is not None:
            self.current -= entry[1]
            self.by_op[entry[0]] -= entry[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self._stack.append(str(func.overloadpacket).replace("aten::", "aten.").replace("mobilenet_kernels::", ""))
        try:
            out = func(*args, **(kwargs or {}))
        finally:
            op = self._stack[0]
            self._stack.pop()
        phase = "backward" if torch._C._current_graph_task_id() != -1 else "forward"
        inputs = None
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.is_meta:
                continue
            storage = t.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes == 0 or key in self.live:
                continue
            if inputs is None:  # an in-place op or a view returns an input's storage: not an allocation
                inputs = {a.untyped_storage().data_ptr() for a in tree_flatten((args, kwargs))[0]
                          if isinstance(a, torch.Tensor) and not a.is_meta}
            if key in inputs:
                continue
            self.live[key] = ((phase, op), nbytes)
            self.current += nbytes
            self.by_op[(phase, op)] += nbytes
            weakref.finalize(storage, self._free, key)
            if self.current > self.peak:
                self.peak, self.peak_during, self.at_peak = self.current, (phase, op), self.by_op.copy()
        return out

    def summary(self, top: int = 12) -> dict:
        mb = 2.0 ** -20
        return {"tensor_peak_mb": self.peak * mb, "peak_during": {"phase": self.peak_during[0], "op": self.peak_during[1]},
                "at_peak": [{"phase": phase, "op": op, "mb": n * mb} for (phase, op), n in self.at_peak.most_common(top)
                            if n > 0]}


def step_memory(step, device: str) -> dict:
    """LiveMemory.summary of one call of ``step`` (a training step) and, on CUDA, the caching
    allocator's peak over it above what was allocated before (``allocator_peak_mb``; None on a CPU)."""
    _synchronize(device)
    if device == "cuda":
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    tracker = LiveMemory()
    with tracker:
        step()
        _synchronize(device)
    found = tracker.summary()
    found["allocator_peak_mb"] = (torch.cuda.max_memory_allocated() - before) / 2**20 if device == "cuda" else None
    return found


def profile_variant(model_name: str, variant: Variant, batch: int, state_dict: dict, s: ModelSettings,
                    steps: int = 3, mode: str = "train") -> dict:
    """One variant's ``mode`` step (a training step, or an inference: eval mode, no_grad), timed
    (wall and host) and then profiled over ``steps`` steps."""
    model = _ready_model(model_name, variant, mode, state_dict, s)
    step = make_step(model, mode, batch, s)
    for _ in range(3):  # warm-up: Triton's JIT, cuDNN's heuristics, the allocator
        step()
    _synchronize(s.device)
    timing = time_ms(step, s.device, warmup_ms=0, rep_ms=300 if s.device == "cuda" else 200)  # host_ms on CUDA
    wall, host = timing["p50_ms"], timing.get("host_ms")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if s.device == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        _synchronize(s.device)
    memory = step_memory(step, s.device)
    work = device_work(prof, s.device)
    per_category: dict[str, float] = defaultdict(float)
    per_kernel: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for name, us in work:
        per_category[category(name)] += us / 1e3 / steps
        entry = per_kernel[short_name(name)]
        entry[0] += 1 / steps
        entry[1] += us / 1e3 / steps
    work_ms = sum(per_category.values())
    top = sorted(per_kernel.items(), key=lambda kv: -kv[1][1])[:TOP]
    in_ops_ms, top_host = host_ops(prof, steps)
    return {
        "variant": variant.label,
        "mode": mode,
        "wall_ms": wall,
        "host_ms": host,
        "work_ms": work_ms,
        "launches": len(work) / steps,
        "idle_pct": 100 * max(0.0, 1 - work_ms / wall) if s.device == "cuda" else None,
        "categories_ms": dict(sorted(per_category.items(), key=lambda kv: -kv[1])),
        "top": [{"name": name, "calls": round(calls, 2), "ms": ms} for name, (calls, ms) in top],
        "host_in_ops_ms": in_ops_ms,
        "top_host": top_host,
        "memory": memory,
    }


def run_profiles(model_name: str, batch: int, s: ModelSettings, steps: int = 3, mode: str = "train") -> list[dict]:
    """profile_variant for torchvision eager and for ours on each of ``s.backends``, from one set of
    weights (a variant that fails is recorded with its error, the others still run)."""
    state_dict = build(model_name, Variant("torchvision", None, "none")).state_dict()
    found = []
    for variant in [Variant("torchvision", None, "none")] + [Variant("ours", b, "none") for b in s.backends]:
        try:
            found.append(profile_variant(model_name, variant, batch, state_dict, s, steps, mode))
        except Exception as exc:  # noqa: BLE001  (recorded: the other variants still run)
            found.append({"variant": variant.label, "error": f"{type(exc).__name__}: {exc}"[:300]})
        if s.device == "cuda":
            torch.cuda.empty_cache()
    return found
