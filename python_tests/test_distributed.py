"""Distributed training: SyncBatchNormAct2d against one process on the full batch, and the train
command under torchrun. Two gloo processes on the CPU; nothing here needs a GPU."""

from __future__ import annotations

import copy
import json
import math
import os
import socket
import subprocess
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import mobilenet_kernels
from mobilenet_kernels.models import mobilenet_v3_small
from mobilenet_kernels.models._layers import ConvBNAct
from mobilenet_kernels.nn import BatchNormAct2d
from mobilenet_kernels.nn.sync_batch_norm import SyncBatchNormAct2d, convert_sync_batchnorm, global_batch_stats

WORLD = 2
REPO = os.path.dirname(os.path.dirname(os.path.abspath(mobilenet_kernels.__file__)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _subprocess_env() -> dict:
    # This checkout on the path (whatever the installed package points to); one thread per process,
    # so that two processes on a small CI machine do not oversubscribe it.
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])),
            "OMP_NUM_THREADS": "1"}


def _small_net() -> nn.Module:
    """Every kind of BatchNorm convert_sync_batchnorm meets: ConvBNAct with a depthwise conv (the
    fused path) and without, a plain nn.BatchNorm2d with momentum=None (cumulative average) before
    an nn.ReLU, and an affine=False BatchNormAct2d."""
    return nn.Sequential(
        ConvBNAct(3, 8, kernel_size=3, stride=2, activation="hardswish"),
        ConvBNAct(8, 8, kernel_size=3, groups=8, activation="relu6"),
        nn.Conv2d(8, 16, 1, bias=False),
        nn.BatchNorm2d(16, momentum=None),
        nn.ReLU(),
        BatchNormAct2d(16, affine=False, activation="silu"),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


def _assert_close(actual, expected, what):
    # float64 on both sides: only summation order differs (1e-6 is the bound this test promises).
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6 * max(1.0, expected.abs().max().item()),
                               msg=lambda m: f"{what}: {m}")


def _check_matches_full_batch(rank: int, make_model, batch: int, size: int) -> None:
    """Two steps of DDP(SyncBatchNormAct2d model) on this rank's half of a batch against one
    process on the whole batch: parameter and input gradients, running statistics, eval output."""
    torch.manual_seed(0)
    reference = make_model().double()
    synced = convert_sync_batchnorm(copy.deepcopy(reference))
    ddp = DistributedDataParallel(synced)
    opt_ref = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    opt_ddp = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    mine = slice(rank * batch, (rank + 1) * batch)
    for step in range(2):
        x = torch.randn(WORLD * batch, 3, size, size, dtype=torch.float64) * 2 + 0.5
        y = torch.randint(0, 10, (WORLD * batch,))

        x_ref = x.clone().requires_grad_()
        opt_ref.zero_grad()
        F.cross_entropy(reference(x_ref), y).backward()

        x_mine = x[mine].clone().requires_grad_()
        opt_ddp.zero_grad()
        F.cross_entropy(ddp(x_mine), y[mine]).backward()  # DDP averages the two halves' gradients

        for (name, p_ref), p in zip(reference.named_parameters(), synced.parameters()):
            _assert_close(p.grad, p_ref.grad, f"step {step}: grad of {name}")
        # This rank's input gradient holds both losses' share through the global statistics; the
        # reference loss is their mean.
        _assert_close(x_mine.grad / WORLD, x_ref.grad[mine], f"step {step}: input grad")
        for (name, b_ref), b in zip(reference.named_buffers(), synced.buffers()):
            _assert_close(b, b_ref, f"step {step}: buffer {name}")
        opt_ref.step()
        opt_ddp.step()

    reference.eval()
    synced.eval()
    x = torch.randn(3, 3, size, size, dtype=torch.float64)
    with torch.no_grad():
        _assert_close(synced(x), reference(x), "eval output")


def _tiny_v3() -> nn.Module:
    return mobilenet_v3_small(num_classes=10, width_mult=0.25, dropout=0.0)  # no dropout: no random masks


CASES = [(_small_net, 3, 9), (_tiny_v3, 4, 32)]  # (model, batch per process, image size)


def _worker(rank: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        for make_model, batch, size in CASES:
            _check_matches_full_batch(rank, make_model, batch, size)

        # Chan's merge keeps a large mean's variance in float32 (E[x^2] - E[x]^2 would lose it all).
        torch.manual_seed(rank)
        x = 1e4 + torch.randn(64, 2, 4, 4)
        gathered = [torch.empty_like(x) for _ in range(WORLD)]
        dist.all_gather(gathered, x)
        mean, var, count = global_batch_stats(x)
        var_ref, mean_ref = torch.var_mean(torch.cat(gathered).double(), dim=(0, 2, 3), correction=0)
        torch.testing.assert_close(var.double(), var_ref, rtol=1e-4, atol=0)
        torch.testing.assert_close(mean.double(), mean_ref, rtol=1e-7, atol=0)
        assert count.tolist() == [WORLD * 64 * 16] * 2
    finally:
        dist.destroy_process_group()


def test_sync_batch_norm_matches_single_process_full_batch():
    """The acceptance test of SyncBatchNormAct2d: 2 processes == 1 process on the concatenated batch."""
    # fork: the workers start with this process's imports (a fresh interpreter spends seconds on
    # them), including the lazy ones behind the first calls of our ops, which these steps trigger.
    for make_model, batch, size in CASES:
        make_model().double()(torch.randn(2, 3, size, size, dtype=torch.float64)).sum().backward()
    mp.start_processes(_worker, args=(_free_port(),), nprocs=WORLD, join=True, start_method="fork")


def test_convert_keeps_activation_keys_and_parameters():
    model = _small_net()
    keys = list(model.state_dict())
    weights = {name: p for name, p in model.named_parameters()}
    acts = {name: m.activation for name, m in model.named_modules() if isinstance(m, BatchNormAct2d)}
    converted = convert_sync_batchnorm(model)
    assert converted is model
    assert list(model.state_dict()) == keys
    assert all(p is weights[name] for name, p in model.named_parameters())  # shared, not copied
    syncs = {name: m for name, m in model.named_modules() if isinstance(m, SyncBatchNormAct2d)}
    assert sorted(syncs) == ["0.1", "1.1", "3", "5"]
    assert {name: syncs[name].activation for name in acts} == acts
    assert syncs["3"].activation == "identity" and syncs["3"].momentum is None
    assert not any(type(m) in (nn.BatchNorm2d, BatchNormAct2d) for m in model.modules())
    # A bare BatchNorm2d cannot be replaced in place: the result is the new module.
    bn = nn.BatchNorm2d(4).eval()
    new = convert_sync_batchnorm(bn)
    assert isinstance(new, SyncBatchNormAct2d) and new.weight is bn.weight and not new.training


def test_without_process_group_behaves_like_batch_norm_act():
    """No process group (or one process): exactly BatchNormAct2d, training and eval, fused path included."""
    torch.manual_seed(0)
    model = _small_net()
    synced = convert_sync_batchnorm(copy.deepcopy(model))
    model[3] = BatchNormAct2d.from_batch_norm(model[3])  # what the plain BatchNorm2d became, unsynchronised
    x = torch.randn(4, 3, 12, 12)
    for mode in (True, False):
        model.train(mode)
        synced.train(mode)
        torch.testing.assert_close(synced(x), model(x), rtol=0, atol=0)
        for b_ref, b in zip(model.buffers(), synced.buffers()):
            torch.testing.assert_close(b, b_ref, rtol=0, atol=0)


def test_train_command_under_torchrun(tmp_path):
    """Plain DDP (gloo): two processes run a short epoch; rank 0 alone prints and writes the checkpoint."""
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD),
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        "-m", "mobilenet_kernels", "train", "--model", "mobilenet_v3_small", "--width-mult", "0.25",
        "--device", "cpu", "--data", "synthetic", "--size", "32", "--batch", "8", "--epochs", "1",
        "--steps-per-epoch", "4", "--log-interval", "1", "--val-split", "0.02", "--checkpoint-dir", str(out),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, env=_subprocess_env(), timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("done:") == 1, result.stdout
    assert sorted(os.listdir(out)) == ["best.pt", "last.pt", "log.json"]
    log = json.loads((out / "log.json").read_text())
    assert log["world_size"] == WORLD
    assert len(log["steps"]) == 4 and all(math.isfinite(s["loss"]) for s in log["steps"])
    checkpoint = torch.load(out / "last.pt", weights_only=True)
    assert checkpoint["epoch"] == 1
    assert not any(k.startswith("module.") for k in checkpoint["model"])  # the model, not the DDP wrapper
