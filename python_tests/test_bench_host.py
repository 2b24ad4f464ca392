"""benchmarks/bench_host.py (host time per layer, issue 7) on the CPU: one row per layer and mode
with every variant timed, the same layer compared in each row, and the summary's sums."""

from __future__ import annotations

import json

import pytest

from conftest import load_benchmark, skip_unless_usable

torchvision = pytest.importorskip("torchvision")


@pytest.mark.parametrize("model", ["mobilenet_v3_large", "mobilenet_v2"])
def test_layers_line_up_with_torchvision(model):
    """Row i times features[i] (or the head) of each variant: our models' layers are torchvision's,
    one for one, by kind (channels, kernel, stride, squeeze-excite)."""
    import mobilenet_kernels
    from mobilenet_kernels.benchmarking.host import describe, layers

    ours = [describe(layer) for layer in layers(getattr(mobilenet_kernels, model)(backend="torch"))]
    theirs = [describe(layer) for layer in layers(getattr(torchvision.models, model)())]
    assert ours == theirs
    if model == "mobilenet_v3_large":
        assert theirs[4] == "block k5 s2 24->72->40 SE" and theirs[1] == "block k3 s1 16->16"
        assert theirs[0] == "conv k3 s2 3->16" and theirs[-1] == "Head" and len(theirs) == 18


def test_bench_host_on_cpu(tmp_path, monkeypatch, capsys):
    skip_unless_usable("cuda", "cpu")
    monkeypatch.setenv("MK_BENCH_REP_MS", "1")
    monkeypatch.setenv("MK_BENCH_WARMUP_MS", "0")
    rc = load_benchmark("bench_host").main([str(tmp_path), "--device", "cpu", "--batch", "2", "--size", "32",
                                            "--backends", "cuda", "torch", "--quiet", "--name", "host"])
    assert rc == 0
    record = json.loads((tmp_path / "host.json").read_text())
    assert record["op"] == "host_layers" and record["settings"]["dtype"] == "float32"
    rows = record["rows"]
    assert [(r["layer"], r["mode"]) for r in rows] == [(i, m) for i in range(18) for m in ("train", "infer")]
    variants = ["torchvision", "ours[cuda]", "ours[torch]"]
    for r in rows:
        assert not any(k.endswith("_error") for k in r), r
        assert all(r[f"{v}_wall_us"] > 0 for v in variants)
    summary = record["summary"]
    for mode in ("train", "infer"):
        total = {v: sum(r[f"{v}_wall_us"] for r in rows if r["mode"] == mode) / 1e3 for v in variants}
        for v in variants:
            assert summary[f"{mode} {v} wall_ms"] == pytest.approx(total[v])
        assert summary[f"{mode} ours[cuda] - torchvision ms"] == pytest.approx(total["ours[cuda]"] - total["torchvision"])
    table = (tmp_path / "host.md").read_text()
    assert "| block k5 s1 40->120->40 SE | train |" in table and table in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--batch", "1"], "--batch: training needs at least 2 images"),
    (["--size", "16"], "--size: at least 32"),
    (["--model", "mobilenet_v1"], "invalid choice"),
])
def test_bench_host_bad_arguments(tmp_path, args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        load_benchmark("bench_host").main([str(tmp_path), "--device", "cpu", *args])
    assert exc.value.code == 2 and message in capsys.readouterr().err
