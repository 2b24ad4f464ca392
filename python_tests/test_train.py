"""The train command: learning on synthetic data, checkpoints and --resume, the JSON log, ImageFolder
input, and one-line errors for bad arguments. Tiny models, run in this process (CPU, C++ kernels)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

import mobilenet_kernels
from mobilenet_kernels.__main__ import main
from mobilenet_kernels.training import warmup_cosine

REPO = os.path.dirname(os.path.dirname(os.path.abspath(mobilenet_kernels.__file__)))
TINY = ["--model", "mobilenet_v3_small", "--width-mult", "0.25", "--size", "32", "--device", "cpu"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """A 0.1M-parameter model gains nothing from a second thread, and loses a lot when other test
    processes share this machine's cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _train(capsys, *args: str) -> str:
    assert main(["train", *args]) == 0
    return capsys.readouterr().out


def _mean(values):
    return sum(values) / len(values)


def test_loss_falls_in_first_epoch_checkpoint_and_resume(tmp_path, capsys):
    run = tmp_path / "run"
    common = [*TINY, "--data", "synthetic", "--batch", "32", "--lr", "0.1", "--steps-per-epoch", "40",
              "--log-interval", "5", "--val-split", "0.04", "--checkpoint-dir", str(run)]
    out = _train(capsys, *common, "--epochs", "1")
    assert out.strip().splitlines()[-1].startswith("done: mobilenet_v3_small")
    assert sorted(os.listdir(run)) == ["best.pt", "last.pt", "log.json"]

    log = json.loads((run / "log.json").read_text())
    assert set(log) == {"config", "num_classes", "size", "world_size", "device", "backend", "parameters",
                        "train_images", "val_images", "peak_lr", "epochs", "steps", "best_epoch", "best_top1"}
    assert (log["train_images"], log["val_images"], log["peak_lr"]) == (4800, 200, 0.1)
    assert (log["num_classes"], log["size"], log["world_size"], log["device"]) == (10, 32, 1, "cpu")
    assert [e["epoch"] for e in log["epochs"]] == [1]
    epoch = log["epochs"][0]
    assert set(epoch) == {"epoch", "train_loss", "val_loss", "val_top1", "img_per_s", "seconds", "lr"}
    assert epoch["img_per_s"] > 0 and 0 <= epoch["val_top1"] <= 100 and math.isfinite(epoch["val_loss"])
    steps = log["steps"]
    assert [s["step"] for s in steps] == list(range(5, 41, 5))
    assert all(set(s) == {"epoch", "step", "loss", "lr", "img_per_s"} for s in steps)
    # Steps 1-10 start near ln(10) = 2.30 (chance); steps 31-40 must be visibly lower.
    first, last = _mean([s["loss"] for s in steps[:2]]), _mean([s["loss"] for s in steps[-2:]])
    assert first > 2.0 and last < 0.85 * first, [round(s["loss"], 3) for s in steps]

    checkpoint = torch.load(run / "last.pt", weights_only=True)
    assert checkpoint["epoch"] == 1
    assert set(checkpoint) == {"model", "optimizer", "scheduler", "epoch", "log"}
    assert list(checkpoint["model"]) == list(mobilenet_kernels.mobilenet_v3_small(num_classes=10).state_dict())

    out = _train(capsys, *common, "--epochs", "2", "--resume", str(run / "last.pt"))
    assert f"resumed from {run / 'last.pt'} after epoch 1" in out
    assert "epoch 1/2" not in out and "epoch 2/2" in out
    log = json.loads((run / "log.json").read_text())
    assert [e["epoch"] for e in log["epochs"]] == [1, 2]
    assert [s["step"] for s in log["steps"]] == list(range(5, 81, 5))
    # The resumed run starts from the trained weights, not from chance.
    assert log["steps"][8]["loss"] < 0.85 * first
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 2


def _write_image_folder(root, classes=("cat", "dog", "fox"), per_class=6):
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    for c, name in enumerate(classes):
        os.makedirs(root / name)
        for i in range(per_class):
            pixels = (torch.rand(40, 48, 3, generator=generator) * 80 + 80 * c).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / name / f"{i}.png")


@pytest.mark.parametrize("layout", ["split", "train_val"])
def test_image_folder(tmp_path, capsys, layout):
    """DIR/<class>/*.png with a --val-split hold-out, or DIR/train and DIR/val."""
    data = tmp_path / "images"
    if layout == "split":
        _write_image_folder(data)
    else:
        _write_image_folder(data / "train")
        _write_image_folder(data / "val", per_class=2)
    run = tmp_path / "run"
    out = _train(capsys, *TINY, "--data", str(data), "--batch", "4", "--epochs", "1", "--val-split", "0.25",
                 "--workers", "0", "--checkpoint-dir", str(run))
    assert "3 classes" in out
    log = json.loads((run / "log.json").read_text())
    assert log["num_classes"] == 3
    assert len(log["steps"]) == 1 and math.isfinite(log["epochs"][0]["train_loss"])
    n_train, n_val = (14, 4) if layout == "split" else (18, 6)
    assert f"{n_train} train / {n_val} val images" in out


def test_amp_channels_last_sync_bn_single_process(tmp_path, capsys, device):
    """bf16 autocast, channels_last and --sync-bn (a no-op for one process) together."""
    out = _train(capsys, *TINY, "--device", device, "--batch", "16", "--epochs", "1", "--steps-per-epoch", "3",
                 "--amp", "--channels-last", "--sync-bn", "--optimizer", "adamw", "--val-split", "0.01",
                 "--checkpoint-dir", str(tmp_path))
    assert f"on {device}, backend " in out and "sync-bn, amp bf16, channels_last" in out
    log = json.loads((tmp_path / "log.json").read_text())
    assert log["device"].startswith(device) and math.isfinite(log["epochs"][0]["train_loss"])


def test_recompute_trains_the_same_steps(tmp_path, capsys):
    """--recompute (checkpointed blocks) gives the same losses as a plain run: same seed, same data."""
    args = (*TINY, "--batch", "8", "--epochs", "1", "--steps-per-epoch", "2", "--val-split", "0.01",
            "--log-interval", "1")
    losses = []
    for extra in ((), ("--recompute",)):
        out = _train(capsys, *args, *extra, "--checkpoint-dir", str(tmp_path / str(len(extra))))
        log = json.loads((tmp_path / str(len(extra)) / "log.json").read_text())
        losses.append([step["loss"] for step in log["steps"]])
    assert "recompute" in out
    assert losses[0] == pytest.approx(losses[1], rel=1e-5, abs=1e-6)


def test_warmup_cosine():
    assert warmup_cosine(0, 10, 100) == pytest.approx(0.01)
    assert warmup_cosine(5, 10, 100) == pytest.approx(0.505)
    assert warmup_cosine(10, 10, 100) == 1.0
    assert warmup_cosine(55, 10, 100) == pytest.approx(0.5)
    assert warmup_cosine(100, 10, 100) == pytest.approx(0.0)
    assert warmup_cosine(0, 0, 10) == 1.0


def _bad_cases(tmp):
    (tmp / "empty").mkdir()
    (tmp / "no_images" / "cat").mkdir(parents=True)
    (tmp / "notes.txt").write_text("not a checkpoint")
    return [
        (["--model", "resnet50"], "--model: unknown model 'resnet50'"),
        (["--backend", "cudnn"], "--backend: unknown backend 'cudnn'"),
        (["--optimizer", "lamb"], "--optimizer: unknown optimizer 'lamb'"),
        (["--batch", "0"], "--batch: expected an integer >= 1, got 0"),
        (["--epochs", "-1"], "--epochs: expected an integer >= 1, got -1"),
        (["--val-split", "1"], "--val-split: expected a fraction in [0, 1)"),
        (["--data", str(tmp / "missing")], "no such directory"),
        (["--data", str(tmp / "empty")], "not an ImageFolder directory"),
        (["--data", str(tmp / "no_images")], "not an ImageFolder directory"),
        (["--resume", str(tmp / "missing.pt")], "--resume"),
        (["--resume", str(tmp / "notes.txt")], "cannot read it as a checkpoint"),
        (["--batch", "5000"], "larger than the training split"),
        (["--device", "tpu"], "--device: expected cpu, cuda or cuda:N"),
    ] + ([] if torch.cuda.is_available() else [(["--device", "cuda"], "--device cuda: no CUDA device is visible")])


def test_bad_arguments_one_line_exit_2(tmp_path, capsys):
    for args, message in _bad_cases(tmp_path):
        with pytest.raises(SystemExit) as exit_info:
            main(["train", *TINY, *args])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2, args
        assert err.count("\n") == 1 and err.startswith("mobilenet-kernels train: error: "), (args, err)
        assert message in err, (args, err)


def test_resume_with_another_model_is_refused(tmp_path, capsys):
    _train(capsys, *TINY, "--batch", "16", "--epochs", "1", "--steps-per-epoch", "1", "--val-split", "0.01",
           "--checkpoint-dir", str(tmp_path))
    with pytest.raises(SystemExit):
        main(["train", *TINY, "--width-mult", "0.5", "--epochs", "2", "--resume", str(tmp_path / "last.pt")])
    assert "saved with --width-mult 0.25, this run has 0.5" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", *TINY, "--epochs", "1", "--resume", str(tmp_path / "last.pt")])
    assert "already trained 1 epoch(s); pass --epochs > 1" in capsys.readouterr().err


def test_unusable_backend_from_the_command_line():
    """The real entry point: exit 2, one line on stderr, no traceback (Triton cannot run on CPU
    tensors without TRITON_INTERPRET=1, or at all without triton)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "mobilenet_kernels", "train", "--device", "cpu", "--backend", "triton"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("mobilenet-kernels train: error: --backend triton: cannot run on cpu"), \
        result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stdout == ""
