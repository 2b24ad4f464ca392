"""The training loop behind ``python -m mobilenet_kernels train``.

One process, or one per device under ``torchrun --nproc_per_node=N``: DistributedDataParallel
(NCCL on GPUs, gloo on CPUs), each process on its shard of every batch, rank 0 alone printing and
writing files. Optionally synchronised BatchNorm (:func:`mobilenet_kernels.nn.sync_batch_norm.
convert_sync_batchnorm`, which keeps each BatchNorm's activation, unlike torch's).

The recipe: SGD (momentum, Nesterov) or AdamW with weight decay on conv and linear weights only
(not on BatchNorm parameters or biases); a per-step schedule of linear warmup then cosine decay to
zero; bf16 autocast with ``amp``; top-1 accuracy on a validation split after every epoch;
checkpoints (model, optimizer, scheduler, epoch, log) and a JSON log in ``checkpoint_dir``.

:func:`train` takes a :class:`TrainConfig` (the command's flags) and raises :class:`ConfigError`
for settings that cannot work, before any training step and before any process group starts.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, TextIO

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from . import backends, data
from .models import mobilenet_v1, mobilenet_v2, mobilenet_v3_large, mobilenet_v3_small
from .nn.inverted_residual import set_recompute
from .nn.sync_batch_norm import convert_sync_batchnorm

__all__ = ["MODELS", "OPTIMIZERS", "ConfigError", "TrainConfig", "train", "warmup_cosine"]

MODELS: dict[str, Callable[..., nn.Module]] = {
    "mobilenet_v3_large": mobilenet_v3_large,
    "mobilenet_v3_small": mobilenet_v3_small,
    "mobilenet_v2": mobilenet_v2,
    "mobilenet_v1": mobilenet_v1,
}
OPTIMIZERS = ("sgd", "adamw")

CHECKPOINT_LAST = "last.pt"  # after every epoch
CHECKPOINT_BEST = "best.pt"  # the epoch with the best validation top-1 so far
LOG_FILE = "log.json"


class ConfigError(ValueError):
    """A setting that cannot work (bad value, missing data, mismatching checkpoint). The message is
    one line and names the flag."""


@dataclass
class TrainConfig:
    """One run's settings; every field is the ``train`` flag of the same name (``_`` for ``-``).

    None means: lr 0.1 x global batch / 256 for SGD (the linear scaling rule of Goyal et al. 2017),
    1e-3 for AdamW; weight_decay 4e-5 for SGD (the MobileNet papers), 0.05 for AdamW; warmup_epochs
    min(1, epochs / 5); size 32 for synthetic data, else 224; num_classes 10 for synthetic data,
    else the ImageFolder's class count; workers 0 for synthetic data, else min(8, CPUs); device
    cuda if there is a GPU, else cpu; steps_per_epoch a full pass over the training split;
    backend the fastest usable one.
    """

    model: str = "mobilenet_v3_small"
    data: str = "synthetic"
    epochs: int = 1
    batch: int = 64
    lr: float | None = None
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float | None = None
    warmup_epochs: float | None = None
    size: int | None = None
    num_classes: int | None = None
    width_mult: float = 1.0
    workers: int | None = None
    val_split: float = 0.1
    checkpoint_dir: str | None = None
    resume: str | None = None
    seed: int = 0
    device: str | None = None
    channels_last: bool = False
    amp: bool = False
    sync_bn: bool = False
    recompute: bool = False
    steps_per_epoch: int | None = None
    backend: str | None = None
    log_interval: int = 10


@dataclass(frozen=True)
class _Processes:
    """This process's place in the run, from torchrun's environment variables."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @classmethod
    def from_env(cls) -> "_Processes":
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
                   int(os.environ.get("WORLD_SIZE", 1)))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def warmup_cosine(step: int, warmup: int, total: int, start_factor: float = 0.01) -> float:
    """LR multiplier at ``step`` (0-based) of ``total``: linear from ``start_factor`` to 1 over
    ``warmup`` steps, then a cosine from 1 down to 0 at ``total``."""
    if step < warmup:
        return start_factor + (1.0 - start_factor) * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------- set-up and checks


def _check_range(value, flag: str, what: str, ok: Callable[[Any], bool]) -> None:
    if value is not None and not ok(value):
        raise ConfigError(f"{flag}: expected {what}, got {value!r}")


def _resolve_device(cfg: TrainConfig, procs: _Processes) -> torch.device:
    try:
        device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        raise ConfigError(f"--device: expected cpu, cuda or cuda:N, got {cfg.device!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device: expected cpu, cuda or cuda:N, got {cfg.device!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {cfg.device}: no CUDA device is visible")
        if procs.world_size > 1:  # one process per GPU of this node
            device = torch.device("cuda", procs.local_rank)
        if (device.index or 0) >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return device


def _check_config(cfg: TrainConfig, device: torch.device) -> None:
    if cfg.model not in MODELS:
        raise ConfigError(f"--model: unknown model {cfg.model!r}; expected one of {', '.join(MODELS)}")
    if cfg.optimizer not in OPTIMIZERS:
        raise ConfigError(f"--optimizer: unknown optimizer {cfg.optimizer!r}; expected one of {', '.join(OPTIMIZERS)}")
    if cfg.backend is not None:
        if cfg.backend not in backends.BACKENDS:
            known = ", ".join(backends.BACKENDS)
            raise ConfigError(f"--backend: unknown backend {cfg.backend!r}; expected one of {known}")
        reason = backends.unusable_reason(cfg.backend, device.type)
        if reason is not None:
            raise ConfigError(f"--backend {cfg.backend}: cannot run on {device.type} here: {reason}")
    positive_int = lambda v: isinstance(v, int) and v >= 1  # noqa: E731
    _check_range(cfg.epochs, "--epochs", "an integer >= 1", positive_int)
    _check_range(cfg.batch, "--batch", "an integer >= 1", positive_int)
    _check_range(cfg.size, "--size", "an integer >= 1", positive_int)
    _check_range(cfg.num_classes, "--num-classes", "an integer >= 1", positive_int)
    _check_range(cfg.steps_per_epoch, "--steps-per-epoch", "an integer >= 1", positive_int)
    _check_range(cfg.log_interval, "--log-interval", "an integer >= 1", positive_int)
    _check_range(cfg.workers, "--workers", "an integer >= 0", lambda v: v >= 0)
    _check_range(cfg.lr, "--lr", "a number > 0", lambda v: v > 0)
    _check_range(cfg.width_mult, "--width-mult", "a number > 0", lambda v: v > 0)
    _check_range(cfg.momentum, "--momentum", "a number in [0, 1)", lambda v: 0 <= v < 1)
    _check_range(cfg.weight_decay, "--weight-decay", "a number >= 0", lambda v: v >= 0)
    _check_range(cfg.warmup_epochs, "--warmup-epochs", "a number >= 0", lambda v: v >= 0)
    _check_range(cfg.val_split, "--val-split", "a fraction in [0, 1)", lambda v: 0 <= v < 1)
    if cfg.checkpoint_dir is not None and os.path.exists(cfg.checkpoint_dir) and not os.path.isdir(cfg.checkpoint_dir):
        raise ConfigError(f"--checkpoint-dir {cfg.checkpoint_dir}: exists and is not a directory")
    if cfg.resume is not None and not os.path.isfile(cfg.resume):
        raise ConfigError(f"--resume {cfg.resume}: no such file")


def _datasets(cfg: TrainConfig) -> tuple[Any, Any, int, int]:
    """(train split, val split, number of classes, image size)."""
    if cfg.data == "synthetic":
        size, num_classes = cfg.size or 32, cfg.num_classes or 10
        return *data.synthetic_splits(num_classes, size, cfg.val_split, cfg.seed), num_classes, size
    if not os.path.isdir(cfg.data):
        raise ConfigError(f"--data {cfg.data}: no such directory (expected 'synthetic' or an ImageFolder directory)")
    size = cfg.size or 224
    try:
        train_set, val_set, classes = data.image_folder_splits(cfg.data, size, cfg.val_split, cfg.seed)
    except ImportError:
        raise ConfigError(f"--data {cfg.data}: an ImageFolder needs torchvision (pip install torchvision)") from None
    except FileNotFoundError as e:
        raise ConfigError(f"--data {cfg.data}: not an ImageFolder directory: {e}") from None
    if cfg.num_classes is not None and cfg.num_classes != len(classes):
        raise ConfigError(f"--num-classes {cfg.num_classes}: the ImageFolder {cfg.data} has {len(classes)} classes")
    return train_set, val_set, len(classes), size


def _load_checkpoint(cfg: TrainConfig, num_classes: int) -> dict:
    try:
        checkpoint = torch.load(cfg.resume, map_location="cpu", weights_only=True)
        missing = {"model", "optimizer", "scheduler", "epoch", "log"} - set(checkpoint)
    except Exception as e:  # noqa: BLE001 (whatever makes the file unreadable, the user error is the same)
        reason = f"{type(e).__name__}: {e}".splitlines()[0]
        raise ConfigError(f"--resume {cfg.resume}: cannot read it as a checkpoint ({reason})") from None
    if missing:
        raise ConfigError(f"--resume {cfg.resume}: not a checkpoint of this command (no {', '.join(sorted(missing))})")
    saved = checkpoint["log"]
    # The weights fit only the same architecture; everything else (data, lr, batch, ...) may change.
    for flag, then, now in (("--model", saved["config"]["model"], cfg.model),
                            ("--width-mult", saved["config"]["width_mult"], cfg.width_mult),
                            ("--num-classes", saved["num_classes"], num_classes)):
        if then != now:
            raise ConfigError(f"--resume {cfg.resume}: saved with {flag} {then}, this run has {now}")
    if checkpoint["epoch"] >= cfg.epochs:
        raise ConfigError(f"--resume {cfg.resume}: already trained {checkpoint['epoch']} epoch(s); "
                          f"pass --epochs > {checkpoint['epoch']}")
    return checkpoint


def _optimizer(cfg: TrainConfig, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    # Weight decay on conv and linear weights only: decaying BatchNorm's scale and shift or the
    # biases only fights the normalisation (torchvision's recipes: --norm-weight-decay 0).
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    default_wd = 4e-5 if cfg.optimizer == "sgd" else 0.05
    wd = default_wd if cfg.weight_decay is None else cfg.weight_decay
    groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=lr)


# ----------------------------------------------------------------------------- the loop


@dataclass
class _Run:
    """What the epochs of one run share."""

    cfg: TrainConfig
    procs: _Processes
    device: torch.device
    model: nn.Module  # the model itself: evaluation, checkpoints
    ddp_model: nn.Module  # the model, or its DistributedDataParallel wrapper: training steps
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loader: torch.utils.data.DataLoader
    sampler: torch.utils.data.DistributedSampler
    val_loader: torch.utils.data.DataLoader
    steps: int  # per epoch
    log: dict

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.cfg.channels_last else torch.contiguous_format

    def _inputs(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.to(self.device, non_blocking=True, memory_format=self.memory_format)
        return images, labels.to(self.device, non_blocking=True)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.amp)

    def _all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.procs.world_size > 1:
            dist.all_reduce(t)
        return t

    def train_epoch(self, epoch: int) -> dict:
        """One epoch of training steps: its mean loss, throughput, duration and last learning rate."""
        from tqdm import tqdm

        cfg, world = self.cfg, self.procs.world_size
        self.ddp_model.train()
        self.sampler.set_epoch(epoch)
        images_per_step = cfg.batch * world
        # The loss stays on the device and is read every log_interval steps: no per-step sync.
        window_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        window_steps, epoch_loss = 0, 0.0
        bar = tqdm(total=self.steps, desc=f"epoch {epoch}/{cfg.epochs}", unit="step", leave=False,
                   disable=None if self.procs.is_main else True, dynamic_ncols=True)  # None: off without a TTY
        start = window_start = time.perf_counter()
        for step, (images, labels) in enumerate(itertools.islice(self.loader, self.steps), 1):
            images, labels = self._inputs(images, labels)
            with self._autocast():
                loss = F.cross_entropy(self.ddp_model(images), labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            lr = self.optimizer.param_groups[0]["lr"]
            self.scheduler.step()
            window_loss += loss.detach()
            window_steps += 1
            bar.update()
            if window_steps == cfg.log_interval or step == self.steps:
                mean_loss = self._all_reduce(window_loss).item() / (window_steps * world)
                now = time.perf_counter()
                img_per_s = window_steps * images_per_step / (now - window_start)
                self.log["steps"].append({"epoch": epoch, "step": self.scheduler.last_epoch, "loss": mean_loss,
                                          "lr": lr, "img_per_s": img_per_s})
                bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.3g}", img_s=f"{img_per_s:.0f}")
                epoch_loss += mean_loss * window_steps
                window_loss.zero_()
                window_steps, window_start = 0, now
        bar.close()
        seconds = time.perf_counter() - start
        return {"train_loss": epoch_loss / self.steps, "img_per_s": self.steps * images_per_step / seconds,
                "seconds": seconds, "lr": lr}

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Mean loss and top-1 accuracy (percent) over the whole validation split."""
        self.model.eval()
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss sum, correct, images
        for images, labels in self.val_loader:
            images, labels = self._inputs(images, labels)
            with self._autocast():
                logits = self.model(images)
            totals += torch.stack([
                F.cross_entropy(logits.float(), labels, reduction="sum").double(),
                (logits.argmax(1) == labels).sum().double(),
                totals.new_tensor(labels.numel()),
            ])
        loss_sum, correct, count = self._all_reduce(totals).tolist()
        if count == 0:
            return {"val_loss": None, "val_top1": None}
        return {"val_loss": loss_sum / count, "val_top1": 100.0 * correct / count}

    def save(self, epoch: int, is_best: bool) -> None:
        """Rank 0 only: last.pt (and best.pt), then log.json, each written to a temporary file
        and renamed, so an interrupted write never leaves a truncated file behind."""
        directory = self.cfg.checkpoint_dir
        if directory is None or not self.procs.is_main:
            return
        checkpoint = {
            "model": self.model.state_dict(),  # torchvision's keys (the model, not the DDP wrapper)
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": epoch,
            "log": self.log,
        }
        names = [CHECKPOINT_LAST] + ([CHECKPOINT_BEST] if is_best else [])
        for name in names:
            _replace(os.path.join(directory, name), lambda f: torch.save(checkpoint, f), binary=True)
        _replace(os.path.join(directory, LOG_FILE), lambda f: json.dump(self.log, f, indent=1), binary=False)


def _replace(path: str, write: Callable[[Any], None], *, binary: bool) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "wb" if binary else "w") as f:
        write(f)
    os.replace(tmp, path)


def train(cfg: TrainConfig, *, out: TextIO | None = None) -> dict:
    """Run ``cfg``; returns the log (also written to ``checkpoint_dir/log.json``):

    ``{"config": {the TrainConfig}, "num_classes", "size", "world_size", "device", "backend", "parameters",
    "train_images", "val_images", "peak_lr",
    "epochs": [{"epoch", "train_loss", "val_loss", "val_top1" (percent), "img_per_s", "seconds", "lr"}, ...],
    "steps": [{"epoch", "step" (global), "loss", "lr", "img_per_s"}, ...], "best_epoch", "best_top1"}``;
    losses are means over all processes, "steps" has one entry per log_interval steps (and one at the
    end of each epoch), val_loss/val_top1 are None with an empty validation split.

    Under torchrun (WORLD_SIZE > 1) it starts the process group and destroys it on the way out.
    Raises ConfigError, before the process group starts, if a setting cannot work (every process
    checks the same things and fails alike). Prints (rank 0, to ``out``, default stdout) a header,
    one line per epoch and a one-line summary.
    """
    procs = _Processes.from_env()
    device = _resolve_device(cfg, procs)
    _check_config(cfg, device)
    train_set, val_set, num_classes, size = _datasets(cfg)
    checkpoint = _load_checkpoint(cfg, num_classes) if cfg.resume else None
    if cfg.batch * procs.world_size > len(train_set):
        over = f" over {procs.world_size} processes" if procs.world_size > 1 else ""
        raise ConfigError(f"--batch {cfg.batch}: larger than the training split ({len(train_set)} images{over})")
    if procs.world_size > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    out = out or sys.stdout
    say = (lambda line: print(line, file=out, flush=True)) if procs.is_main else (lambda line: None)
    try:
        run, start_epoch = _build(cfg, procs, device, train_set, val_set, num_classes, size, checkpoint)
        result = _fit(run, start_epoch, say)
        if procs.world_size > 1:
            # Every rank done (rank 0's checkpoint and summary written) before any tears the group
            # down: a fresh-clone CI run once saw a rank abort in teardown ("terminate called
            # without an active exception") while the other was still finishing.
            dist.barrier()
        return result
    finally:
        if procs.world_size > 1:
            dist.destroy_process_group()


def _build(cfg, procs, device, train_set, val_set, num_classes, size, checkpoint) -> tuple[_Run, int]:
    """The model (on ``device``, synchronised BatchNorm and DDP as asked), loaders, optimizer,
    schedule and log, restored from ``checkpoint`` if given; and the first epoch to run."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: autotuned convolutions pay off
    torch.manual_seed(cfg.seed)  # the same initial weights on every process
    model = MODELS[cfg.model](num_classes=num_classes, width_mult=cfg.width_mult, backend=cfg.backend)
    if cfg.sync_bn:
        model = convert_sync_batchnorm(model)
    if cfg.recompute:
        set_recompute(model)
    model.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
    torch.manual_seed(cfg.seed + procs.rank)  # dropout and augmentation differ between processes

    synthetic = cfg.data == "synthetic"
    workers = cfg.workers if cfg.workers is not None else 0 if synthetic else min(8, os.cpu_count() or 1)
    shard = dict(rank=procs.rank, world_size=procs.world_size, workers=workers, pin_memory=device.type == "cuda")
    loader, sampler = data.train_loader(train_set, cfg.batch, seed=cfg.seed, **shard)
    val_loader = data.val_loader(val_set, cfg.batch, **shard)
    steps = min(len(loader), cfg.steps_per_epoch or len(loader))

    global_batch = cfg.batch * procs.world_size
    lr = cfg.lr if cfg.lr is not None else 0.1 * global_batch / 256 if cfg.optimizer == "sgd" else 1e-3
    optimizer = _optimizer(cfg, model, lr)
    warmup_epochs = cfg.warmup_epochs if cfg.warmup_epochs is not None else min(1.0, cfg.epochs / 5)
    warmup, total = round(warmup_epochs * steps), cfg.epochs * steps
    # A lambda, not a callable object: LambdaLR.state_dict() saves an object's attributes, and a
    # resumed run would then keep the old total even with a new --epochs.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup, total))

    log = {
        "config": dataclasses.asdict(cfg), "num_classes": num_classes, "size": size, "world_size": procs.world_size,
        "device": str(device), "backend": cfg.backend or backends.resolve(None, torch.empty(0, device=device)),
        "parameters": sum(p.numel() for p in model.parameters()), "train_images": len(train_set),
        "val_images": len(val_set), "peak_lr": lr, "epochs": [], "steps": [], "best_epoch": None, "best_top1": None,
    }
    start_epoch = 1
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        start_epoch = checkpoint["epoch"] + 1
        log.update({k: checkpoint["log"][k] for k in ("epochs", "steps", "best_epoch", "best_top1")})
    if cfg.checkpoint_dir is not None and procs.is_main:
        os.makedirs(cfg.checkpoint_dir, exist_ok=True)

    ddp_model = model
    if procs.world_size > 1:
        ddp_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    run = _Run(cfg, procs, device, model, ddp_model, optimizer, scheduler, loader, sampler, val_loader, steps, log)
    return run, start_epoch


def _fit(run: _Run, start_epoch: int, say: Callable[[str], None]) -> dict:
    cfg, log, procs = run.cfg, run.log, run.procs
    options = "".join(f", {name}" for name, on in (("sync-bn", cfg.sync_bn), ("amp bf16", cfg.amp),
                                                   ("channels_last", cfg.channels_last),
                                                   ("recompute", cfg.recompute)) if on)
    say(f"train {cfg.model} (width {cfg.width_mult:g}, {log['num_classes']} classes, "
        f"{log['parameters'] / 1e6:.2f}M params) on {cfg.data} {log['size']}px: "
        f"{log['train_images']} train / {log['val_images']} val images")
    say(f"  {procs.world_size} process(es) on {run.device.type}, backend {log['backend']}{options}; "
        f"batch {cfg.batch} x {procs.world_size}, {cfg.optimizer} peak lr {log['peak_lr']:.3g}, "
        f"{run.steps} steps/epoch")
    if start_epoch > 1:
        say(f"resumed from {cfg.resume} after epoch {start_epoch - 1}")

    started = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs + 1):
        record = {"epoch": epoch, **run.train_epoch(epoch), **run.evaluate()}
        log["epochs"].append(record)
        top1 = record["val_top1"]
        is_best = top1 is not None and (log["best_top1"] is None or top1 > log["best_top1"])
        if is_best:
            log["best_epoch"], log["best_top1"] = epoch, top1
        run.save(epoch, is_best)
        val = "" if top1 is None else f"  val loss {record['val_loss']:.4f}  top-1 {top1:.2f}%"
        say(f"epoch {epoch}/{cfg.epochs}  train loss {record['train_loss']:.4f}{val}  "
            f"{record['img_per_s']:.0f} img/s  {record['seconds']:.1f} s")

    last = log["epochs"][-1]
    best = "" if log["best_top1"] is None else f" (best {log['best_top1']:.2f}% at epoch {log['best_epoch']})"
    top1 = "" if last["val_top1"] is None else f", val top-1 {last['val_top1']:.2f}%{best}"
    where = f"; checkpoints and {LOG_FILE} in {cfg.checkpoint_dir}" if cfg.checkpoint_dir else ""
    say(f"done: {cfg.model}, epochs {start_epoch}-{cfg.epochs} in {time.perf_counter() - started:.1f} s, "
        f"train loss {last['train_loss']:.4f}{top1}, {last['img_per_s']:.0f} img/s{where}")
    return log
