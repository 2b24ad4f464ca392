"""Whole-model benchmark: ms per step, images per second and peak memory of MobileNet V1/V2/V3 in
inference and training, torchvision (eager, torch.compile) against ours (mobilenet_kernels' models
on one of our backends, eager and compiled).

- A training step is forward, cross-entropy, backward and an SGD step (momentum 0.9); an inference
  step is a forward under no_grad. ``dtype`` bfloat16/float16 runs both under autocast (AMP: fp32
  weights), float16 training with a GradScaler.
- Every variant of a (model, mode, batch) case gets its own copy of the same weights, runs one step
  (its time, compilation included, is ``first_step_s``), two warm-up steps (peak memory is taken
  over these), then is timed (core.time_ms).
- Peak memory: CUDA ``torch.cuda.max_memory_allocated`` (weights, optimizer state and activations)
  less what was allocated before the variant's model was built (``resident_before_mb``, 0 unless an
  earlier row left tensors alive).
  CPU: None. Host memory freed by one step is kept by malloc for the next (and by earlier variants
  for later ones), so the resident-set deltas of one process say little.
- Saved activations (``saved_mb``, training rows, eager variants): the bytes of the tensors autograd
  keeps for backward over one training forward (:func:`saved_activation_bytes`), on any device.
  ``--recompute`` adds, for each of our backends, a training variant with ``recompute=True``
  (``ours[BACKEND] + recompute``): the inverted-residual blocks keep only their input and recompute
  the expanded tensors in backward (V2, V3; V1 has no such blocks). ``--saved-only`` measures
  nothing else (one forward per variant, no step timed): the bytes do not depend on the device, so
  a CPU gives the batch-256 activation memory of every variant.
- ``--cuda-graph`` (CUDA) adds, for the baseline and for ours on each backend, the step replayed
  from a CUDA graph (``+ cuda graph``: mobilenet_kernels.graph_inference for inference,
  graph_train_step for training: forward, backward and the SGD step; under the same autocast): one
  launch per step, so the row measures the GPU's work rather than the host's. Its
  ``speedup_vs_compile`` is against the baseline's CUDA-graph row, so each kind of row is compared
  with its like.
- ``--switches K=V[,K=V] ...`` adds, for ours on each backend, a row per setting (and its CUDA
  graph row with ``--cuda-graph``) of the kernel switches that the ops read at every call
  (core.PER_CALL_SWITCHES: the depthwise fusions), set around that variant's steps
  (``ours[cuda] {MK_DW_INPUT_BN=0}``): one process and one baseline time each fusion against its
  unfused sequence.
- torchvision has no MobileNetV1; its baseline is our V1 on the "torch" backend (plain PyTorch ops),
  labelled "reference".
- ``speedup_vs_eager``: the baseline's (torchvision or reference, not compiled) time over this
  row's. ``speedup_vs_compile``, for our rows: the compiled baseline's time over this row's, compiled
  the same way (uncompiled rows: against the first compile mode).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import itertools
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .core import DTYPES, environment_set, execute, geomean, progress, time_ms

MODELS = ("mobilenet_v3_large", "mobilenet_v3_small", "mobilenet_v2", "mobilenet_v1")
MODES = ("infer", "train")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH = "cuda-graph"  # Variant.compile of a step replayed from a CUDA graph (not a torch.compile mode)
MIN_SIZE = 32  # five stride-2 stages: 32 px is the smallest input that still has one pixel at the end

COLUMNS = ["model", "mode", "batch", "variant", "p50_ms", "img_per_s", "peak_mem_mb", "saved_mb", "speedup_vs_eager",
           "speedup_vs_compile", "first_step_s", "error"]

# Measuring time of one variant in ms (core.time_ms): a step takes up to ~100 ms on a GPU, more on a CPU.
_REP_MS = {"cuda": 1000, "cpu": 500}
_MIN_STEPS = 10  # timed steps per row at least (time_ms's min_rep_ms)


@dataclass
class ModelSettings:
    device: str                        # "cpu" | "cuda"
    models: list[str]                  # of MODELS
    modes: list[str]                   # of MODES
    batch: dict[str, list[int]]        # batch sizes per mode
    size: int                          # input resolution (size x size)
    dtype: str                         # keys of core.DTYPES; not float32: autocast
    channels_last: bool
    compile: list[str]                 # torch.compile modes (COMPILE_MODES); [] for none
    backends: list[str]                # our backends, one "ours" variant each
    recompute: bool = False            # also ours with recompute=True (training rows)
    saved_only: bool = False           # training rows: saved_mb only, no timed steps (see measure_saved)
    cuda_graph: bool = False           # also each variant's step replayed from a CUDA graph
    switches: list[dict[str, str]] = field(default_factory=list)  # also ours with each of these settings
    quiet: bool = False


def default_settings(device: str) -> ModelSettings:
    """GPU: the four models, training at batch 256 and inference at 1 and 256, 224², bf16 AMP,
    channels_last, torch.compile default and max-autotune. CPU: V3-Large and V2 at batch 8, 96², fp32,
    no torch.compile (under a minute on two cores)."""
    if device == "cuda":
        return ModelSettings(device, list(MODELS), list(MODES), {"infer": [1, 256], "train": [256]}, 224, "bfloat16",
                             True, ["default", "max-autotune"], ["cuda"])
    return ModelSettings(device, ["mobilenet_v3_large", "mobilenet_v2"], list(MODES), {"infer": [8], "train": [8]}, 96,
                         "float32", False, [], ["cuda"])


@dataclass(frozen=True)
class Variant:
    impl: str                 # "torchvision", "reference" (V1's baseline) or "ours"
    backend: str | None       # ours: the backend; the baselines: None
    compile: str              # "none", a torch.compile mode or CUDA_GRAPH (graph_inference)
    recompute: bool = False   # ours: the blocks recompute their expanded tensors in backward
    env: tuple[tuple[str, str], ...] = ()  # ours: kernel switches set around its steps (PER_CALL_SWITCHES)

    @property
    def label(self) -> str:
        name = f"ours[{self.backend}]" if self.impl == "ours" else self.impl
        if self.recompute:
            name += " + recompute"
        if self.env:
            name += " {" + ",".join(f"{k}={v}" for k, v in self.env) + "}"
        if self.compile == "none":
            return name
        if self.compile == CUDA_GRAPH:
            return f"{name} + cuda graph"
        return f"{name} + compile" + ("" if self.compile == "default" else f" {self.compile}")


def variants(model_name: str, s: ModelSettings, mode: str = "train") -> list[Variant]:
    """The baseline (eager, then each compile mode, then replayed from a CUDA graph with
    ``s.cuda_graph``), then ours per backend likewise (with ``s.recompute``, in training and for the
    models with inverted-residual blocks, then the same with recompute), then ours per backend in
    each setting of ``s.switches``, eager and (``s.cuda_graph``) from a CUDA graph."""
    baseline = "reference" if model_name == "mobilenet_v1" else "torchvision"
    runs = ["none", *s.compile, *([CUDA_GRAPH] if s.cuda_graph else [])]
    found = [Variant(baseline, None, c) for c in runs]
    recompute = [False, True] if s.recompute and mode == "train" and model_name != "mobilenet_v1" else [False]
    found += [Variant("ours", backend, c, r) for backend in s.backends for r in recompute for c in runs]
    found += [Variant("ours", backend, c, env=tuple(sorted(env.items()))) for backend in s.backends
              for env in s.switches for c in ("none", *([CUDA_GRAPH] if s.cuda_graph else []))]
    return found


def build(model_name: str, variant: Variant) -> torch.nn.Module:
    """The (uncompiled) model of ``variant``, randomly initialised."""
    import mobilenet_kernels

    if variant.impl == "torchvision":
        import torchvision

        return getattr(torchvision.models, model_name)()
    backend = "torch" if variant.impl == "reference" else variant.backend
    model = getattr(mobilenet_kernels, model_name)(backend=backend)
    return mobilenet_kernels.models.set_recompute(model, variant.recompute)


def saved_activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the tensors that autograd keeps for backward over one training forward of ``model``
    on ``x`` and a cross-entropy loss: every tensor saved for backward
    (``torch.autograd.graph.saved_tensors_hooks``; a checkpointed region's input included, the
    tensors it would recompute not), counted once per storage (views and a tensor saved by several
    ops share one), parameters and buffers excluded. The activation memory of training, without a
    GPU's allocator; the model should be in training mode (its running statistics see this batch).

    The graph is only measured, never run backward: the pack hook keeps nothing in it. A hook that
    returned the tensor itself would make each output saved by its own grad_fn (an activation's)
    a reference cycle through C++ that ``gc`` cannot break, and the whole forward (its saved
    activations and, through AccumulateGrad, the parameters) would outlive the call: on a GPU,
    gigabytes still allocated when the next benchmark row measures its peak."""
    weights = {t.untyped_storage().data_ptr() for t in itertools.chain(model.parameters(), model.buffers())}
    saved: dict[int, torch.UntypedStorage] = {}  # held until the end: no storage is freed and its address reused

    def pack(t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage

    def unpack(_: None) -> torch.Tensor:
        raise RuntimeError("saved_activation_bytes: the measured graph has no backward")

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        out = model(x)
        F.cross_entropy(out, torch.zeros(out.shape[0], dtype=torch.long, device=out.device))
    return sum(storage.nbytes() for storage in saved.values())


def _input(batch: int, s: ModelSettings) -> torch.Tensor:
    x = torch.randn(batch, 3, s.size, s.size, device=s.device)
    return x.contiguous(memory_format=torch.channels_last) if s.channels_last else x


def _autocast(s: ModelSettings):
    dtype = DTYPES[s.dtype]
    return torch.autocast(s.device, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()


def make_step(model: torch.nn.Module, mode: str, batch: int, s: ModelSettings,
              cuda_graph: bool = False) -> Callable[[], object]:
    """One inference or training step of ``model`` (already in eval/train mode and maybe compiled)
    on a fixed random batch; with ``cuda_graph``, replayed from a CUDA graph (graph_inference,
    graph_train_step: the capture happens here)."""
    from ..cuda_graphs import graph_inference, graph_train_step

    dtype = DTYPES[s.dtype]
    x = _input(batch, s)
    autocast_dtype = None if dtype == torch.float32 else dtype

    def autocast():
        return _autocast(s)

    if mode == "infer" and cuda_graph:
        graphed = graph_inference(model, x, dtype=autocast_dtype)
        return lambda: graphed(x)
    if mode == "infer":
        def infer_step():
            with torch.no_grad(), autocast():
                return model(x)

        return infer_step

    target = torch.randint(0, 1000, (batch,), device=s.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    scaler = torch.amp.GradScaler(s.device, enabled=dtype == torch.float16)
    if cuda_graph:
        graphed_step = graph_train_step(model, optimizer, F.cross_entropy, x, target, dtype=autocast_dtype)
        return lambda: graphed_step(x, target)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = F.cross_entropy(model(x), target)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss

    return train_step


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _ready_model(model_name: str, variant: Variant, mode: str, state_dict: dict, s: ModelSettings) -> torch.nn.Module:
    """The (uncompiled) model of ``variant`` with ``state_dict``, on the device and in the layout
    of ``s``, in training or eval mode for ``mode``."""
    model = build(model_name, variant)
    model.load_state_dict(state_dict)
    model = model.to(s.device, memory_format=torch.channels_last if s.channels_last else torch.contiguous_format)
    return model.train(mode == "train")


def _saved_mb(model: torch.nn.Module, batch: int, s: ModelSettings) -> float:
    """saved_activation_bytes of a training forward on a batch of ``s``'s inputs, in MB."""
    with _autocast(s):
        return saved_activation_bytes(model, _input(batch, s)) / 2**20


def measure_saved(model_name: str, variant: Variant, batch: int, state_dict: dict, s: ModelSettings) -> dict:
    """Only the activation memory of a training step, ``saved_mb`` (saved_activation_bytes: one
    forward, no backward, no timing). The bytes autograd keeps do not depend on the device, so this
    gives batch-256 activation memory on a machine that cannot time batch 256."""
    return {"saved_mb": _saved_mb(_ready_model(model_name, variant, "train", state_dict, s), batch, s)}


def measure_variant(model_name: str, variant: Variant, mode: str, batch: int, state_dict: dict,
                    s: ModelSettings) -> dict:
    """measure_steps with the variant's kernel switches set around all of it."""
    with environment_set(**dict(variant.env)):
        return measure_steps(model_name, variant, mode, batch, state_dict, s)


def measure_steps(model_name: str, variant: Variant, mode: str, batch: int, state_dict: dict,
                  s: ModelSettings) -> dict:
    """Time one variant: first step (compilation included), peak memory over two warm-up steps (a
    CUDA graph's from its eager warm-up and capture on: its tensors live in the graph's pool,
    allocated at capture, and a replay allocates nothing), then p20/p50/p80 ms and images per
    second; training rows of eager variants also get the MB of saved activations
    (saved_activation_bytes)."""
    graphed = variant.compile == CUDA_GRAPH
    # What earlier rows left allocated is not this variant's: its peak is counted from here.
    resident = torch.cuda.memory_allocated() if s.device == "cuda" else 0
    if s.device == "cuda" and graphed:
        torch.cuda.reset_peak_memory_stats()
    model = _ready_model(model_name, variant, mode, state_dict, s)
    start = time.perf_counter()  # first_step_s includes the capture of a CUDA graph, as the compilation
    runnable = model if variant.compile in ("none", CUDA_GRAPH) else torch.compile(model, mode=variant.compile)
    step = make_step(runnable, mode, batch, s, cuda_graph=graphed)
    result: dict = {}
    step()
    _synchronize(s.device)
    result["first_step_s"] = time.perf_counter() - start
    if s.device == "cuda" and not graphed:
        torch.cuda.reset_peak_memory_stats()
    warm = time.perf_counter()
    step()
    step()
    _synchronize(s.device)
    step_ms = (time.perf_counter() - warm) * 1e3 / 2
    if s.device == "cuda":
        result["peak_mem_mb"] = (torch.cuda.max_memory_allocated() - resident) / 2**20
        result["resident_before_mb"] = resident / 2**20
    else:
        result["peak_mem_mb"] = None
    if mode == "train" and variant.compile == "none":
        result["saved_mb"] = _saved_mb(model, batch, s)
    # On CUDA at least _MIN_STEPS steps however short the suite's MK_BENCH_REP_MS: one 30 ms step is no median.
    floor = _MIN_STEPS * step_ms if s.device == "cuda" else 0.0
    timing = time_ms(step, s.device, warmup_ms=100, rep_ms=_REP_MS[s.device], min_rep_ms=floor)
    result.update(timing)
    result["img_per_s"] = batch / (timing["p50_ms"] * 1e-3)
    return result


def _release(device: str) -> None:
    """Free what the last variant held (compiled graphs included) before the next one is measured."""
    torch._dynamo.reset()
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def _add_ratios(case_rows: list[dict]) -> None:
    """speedup_vs_eager and speedup_vs_compile of the rows of one (model, mode, batch) case."""
    baseline = {r["compile"]: r["p50_ms"] for r in case_rows if r["impl"] != "ours" and "p50_ms" in r}
    first_compiled = next((ms for mode, ms in baseline.items() if mode not in ("none", CUDA_GRAPH)), None)
    for r in case_rows:
        if "p50_ms" not in r:
            continue
        if "none" in baseline and not (r["impl"] != "ours" and r["compile"] == "none"):
            r["speedup_vs_eager"] = baseline["none"] / r["p50_ms"]
        if r["impl"] == "ours":
            ref = first_compiled if r["compile"] == "none" else baseline.get(r["compile"])
            if ref is not None:
                r["speedup_vs_compile"] = ref / r["p50_ms"]


def sweep(s: ModelSettings, rows: list[dict]) -> None:
    """Append one row per (model, mode, batch, variant) to ``rows``, in place."""
    cases = [(model_name, mode, batch, variant) for model_name in s.models for mode in s.modes
             for batch in s.batch[mode] for variant in variants(model_name, s, mode)]
    if s.device == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes, as in a training run
    weights: dict[str, dict] = {}
    bar = progress(cases, "bench model", s.quiet)
    for model_name, mode, batch, variant in bar:
        bar.set_postfix_str(f"{model_name} {mode} b{batch} {variant.label}")
        if model_name not in weights:  # every variant of a model starts from the same weights
            torch.manual_seed(0)
            weights[model_name] = build(model_name, variants(model_name, s)[0]).state_dict()
        row = {"model": model_name, "mode": mode, "batch": batch, "size": s.size, "dtype": s.dtype,
               "channels_last": s.channels_last, "variant": variant.label, "impl": variant.impl,
               "backend": variant.backend, "compile": variant.compile, "recompute": variant.recompute}
        try:
            if s.saved_only:
                row.update(measure_saved(model_name, variant, batch, weights[model_name], s))
            else:
                row.update(measure_variant(model_name, variant, mode, batch, weights[model_name], s))
        except Exception as exc:  # a variant that cannot run (out of memory, a compile error) is a result
            row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        finally:
            _release(s.device)
        rows.append(row)
        _add_ratios([r for r in rows if (r["model"], r["mode"], r["batch"]) == (model_name, mode, batch)])


def summarize(rows: list[dict]) -> dict[str, float]:
    """Geometric-mean speed-ups per (mode, variant) over models and batch sizes:
    ``"train/ours[cuda]_vs_eager": 1.1``; and each training row's saved activations against its
    baseline's: ``"saved/mobilenet_v2/b256/ours[cuda] + recompute_vs_eager": 0.1``."""
    summary = {}
    for r in rows:
        if r["impl"] != "ours" or not r.get("saved_mb"):
            continue
        case = (r["model"], r["mode"], r["batch"])
        base = next((b["saved_mb"] for b in rows if (b["model"], b["mode"], b["batch"]) == case
                     and b["impl"] != "ours" and b["compile"] == "none" and b.get("saved_mb")), None)
        if base:
            summary[f"saved/{r['model']}/b{r['batch']}/{r['variant']}_vs_eager"] = r["saved_mb"] / base
    for mode in MODES:
        for label in dict.fromkeys(r["variant"] for r in rows if r["mode"] == mode):
            for ref in ("eager", "compile"):
                g = geomean([r.get(f"speedup_vs_{ref}") for r in rows if (r["mode"], r["variant"]) == (mode, label)])
                if g:
                    summary[f"{mode}/{label}_vs_{ref}"] = g
    return summary


def run(s: ModelSettings, *, out: str, name: str = "models") -> int:
    """Run the model benchmark and write ``name``.json / .md to ``out``."""
    peak_memory = ("torch.cuda.max_memory_allocated over two steps less what was allocated before the variant "
                   "(resident_before_mb), MB" if s.device == "cuda"
                   else "not measured on CPU (malloc keeps freed host memory: RSS deltas mislead)")
    saved = ("saved_mb: MB of tensors saved for backward by one training forward (saved_tensors_hooks, once per "
             "storage, weights excluded), eager variants")
    record = {"benchmark": "model", "settings": dataclasses.asdict(s), "peak_memory": peak_memory,
              "saved_activations": saved}
    if s.saved_only:
        record["saved_only"] = "training rows carry saved_mb only: no step was run or timed"
    return execute(device=s.device, out=out, name=name, record=record, fill=lambda rows, env: sweep(s, rows),
                   summarize=summarize, columns=COLUMNS)
