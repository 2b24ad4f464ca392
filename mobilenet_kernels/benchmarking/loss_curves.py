"""Training loss curves: ours against torchvision eager on the synthetic task, to show that our
kernels train like PyTorch's (issue 7: bf16 loss curves over 200 steps within noise of eager).

For each seed, torchvision's model is built from that seed (its own initialisation) and ours gets
the same weights (the state_dicts are key for key the same); both then take the same batches of
SyntheticImages (data.py) in the same order and the same dropout masks, with SGD (momentum 0.9,
weight decay 4e-5) and a warm-up + cosine learning rate, under autocast in ``dtype`` and
channels_last. Each run records the loss of every step.

"Within noise": the seeds give the noise. For each variant, its final loss is the mean loss over
the last quarter of the steps, per seed; ``z`` is the difference between ours and eager's mean
final loss over eager's standard error across seeds (std / sqrt(seeds)). ``within_noise`` holds
when |z| <= 2. ``max_paired_gap`` is the largest gap between ours and eager on the same seed
(curves smoothed over 10 steps), in units of eager's seed-to-seed std at that step: how far the
same run drifts as the kernels round differently.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Callable

import torch
import torch.nn.functional as F

from ..data import SyntheticImages
from ..training import warmup_cosine
from .core import DTYPES

SMOOTH = 10  # steps in the moving average of max_paired_gap


@dataclasses.dataclass
class CurveSettings:
    model: str = "mobilenet_v3_large"
    backends: tuple[str, ...] = ("cuda", "triton")
    steps: int = 200
    batch: int = 64
    size: int = 128
    seeds: int = 3
    num_classes: int = 10
    dtype: str = "bfloat16"
    lr: float = 0.1
    device: str = "cuda"


def _batches(s: CurveSettings, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The run's batches, on the device, channels_last: the same for every variant of one seed."""
    data = SyntheticImages(s.steps * s.batch, s.num_classes, s.size, seed=seed)
    found = []
    for step in range(s.steps):
        items = [data[i] for i in range(step * s.batch, (step + 1) * s.batch)]
        x = torch.stack([image for image, _ in items]).to(s.device).contiguous(memory_format=torch.channels_last)
        found.append((x, torch.tensor([label for _, label in items], device=s.device)))
    return found


def _model(s: CurveSettings, backend: str | None, seed: int) -> torch.nn.Module:
    """torchvision's model initialised from ``seed`` (backend None), or ours with its weights."""
    import torchvision

    import mobilenet_kernels

    torch.manual_seed(seed)
    model = getattr(torchvision.models, s.model)(num_classes=s.num_classes)
    if backend is not None:
        ours = getattr(mobilenet_kernels, s.model)(num_classes=s.num_classes, backend=backend)
        ours.load_state_dict(model.state_dict())
        model = ours
    return model.to(s.device, memory_format=torch.channels_last).train()


def train_curve(s: CurveSettings, backend: str | None, seed: int,
                batches: list[tuple[torch.Tensor, torch.Tensor]]) -> list[float]:
    """The loss at every step of one run (backend None: torchvision eager)."""
    model = _model(s, backend, seed)
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": 4e-5}, {"params": rest, "weight_decay": 0.0}],
                                lr=s.lr, momentum=0.9)
    warmup = max(1, s.steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup, s.steps))
    dtype = DTYPES[s.dtype]
    torch.manual_seed(seed)  # the classifier's dropout masks: the same draws for every variant of a seed
    losses = []
    for x, y in batches:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(s.device, dtype=dtype, enabled=dtype != torch.float32):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    return losses


def _smooth(curve: list[float]) -> list[float]:
    return [statistics.fmean(curve[max(0, t - SMOOTH + 1):t + 1]) for t in range(len(curve))]


def _ratio(gap: float, noise: float) -> float:
    """gap / noise, where noise 0 (seeds that agree exactly) makes any gap infinite and none 0."""
    return gap / noise if noise > 0 else (0.0 if gap == 0 else math.copysign(math.inf, gap))


def compare(eager: list[list[float]], ours: list[list[float]]) -> dict:
    """Ours against eager, one curve per seed each (same seeds, same order): see the module doc."""
    steps, seeds = len(eager[0]), len(eager)
    tail = slice(steps - max(1, steps // 4), steps)
    final_e = [statistics.fmean(c[tail]) for c in eager]
    final_o = [statistics.fmean(c[tail]) for c in ours]
    spread = statistics.stdev(final_e) if seeds > 1 else float("nan")
    z = _ratio(statistics.fmean(final_o) - statistics.fmean(final_e), spread / math.sqrt(seeds))
    smooth_e, smooth_o = [_smooth(c) for c in eager], [_smooth(c) for c in ours]
    gaps = []
    for t in range(steps):
        std_t = statistics.stdev(c[t] for c in smooth_e) if seeds > 1 else float("nan")
        gaps.append(_ratio(max(abs(o[t] - e[t]) for o, e in zip(smooth_o, smooth_e)), std_t))
    return {"final_loss_eager": statistics.fmean(final_e), "final_loss_ours": statistics.fmean(final_o),
            "final_loss_seed_std": spread, "z": z, "within_noise": abs(z) <= 2.0, "max_paired_gap": max(gaps)}


def run(s: CurveSettings, progress: Callable[[str], None] = lambda _: None) -> dict:
    """Every seed's curve for eager and each backend, and each backend's comparison with eager. Cut
    off (KeyboardInterrupt, as a time limit's signal arrives), it keeps the seeds every variant
    finished and says so in "interrupted"; comparisons need two of them."""
    curves: dict[str, list[list[float]]] = {"eager": [], **{f"ours[{b}]": [] for b in s.backends}}
    stop: KeyboardInterrupt | None = None
    try:
        for seed in range(s.seeds):
            batches = _batches(s, seed)
            for label, backend in [("eager", None), *((f"ours[{b}]", b) for b in s.backends)]:
                progress(f"seed {seed}: {label}")
                curves[label].append(train_curve(s, backend, seed, batches))
            del batches
    except KeyboardInterrupt as exc:
        stop = exc
    done = min(len(runs) for runs in curves.values())
    interrupted = None if stop is None else f"stopped after {done} complete seeds: {stop}"
    curves = {label: runs[:done] for label, runs in curves.items()}
    verdicts = {label: compare(curves["eager"], runs) for label, runs in curves.items()
                if label != "eager" and done >= 2}
    return {"settings": dataclasses.asdict(s), "interrupted": interrupted, "curves": curves, "comparison": verdicts}
