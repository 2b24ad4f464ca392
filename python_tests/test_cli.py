"""`python -m mobilenet_kernels bench ops|model` and `report`: tiny runs on the CPU, the result-file
schema, the report's markdown and PNGs, and bad arguments (exit code 2, one line, no traceback)."""

import io
import json
import os
import subprocess
import sys

import pytest
import torch

from mobilenet_kernels.__main__ import main
from mobilenet_kernels.benchmarking.ops import OPS

pytest.importorskip("torchvision")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
COMMITTED = sorted(os.path.join(RESULTS, f) for f in os.listdir(RESULTS) if f.endswith(".json"))
ENVIRONMENT_KEYS = {"device", "commit", "torch", "triton", "cuda", "python", "timestamp"}
# Tiny runs: one thread (a CPU shared with other jobs makes two threads crawl), 1 ms of timing.
TINY = ["--batch", "2", "--size", "32", "--device", "cpu", "--threads", "1", "--quiet"]
TINY_MODEL = ["--model", "mobilenet_v2", *TINY]
TINY_OPS = ["--models", "mobilenet_v3_small", "--compile", "none", *TINY]


@pytest.fixture(autouse=True, scope="module")
def _short_timings():
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MK_BENCH_REP_MS", "1")
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_results(tmp_path_factory):
    """One tiny `bench model` run (both modes, eager only), shared by the tests that read it."""
    out = tmp_path_factory.mktemp("model")
    assert main(["bench", "model", *TINY_MODEL, "--compile", "none", "--out", str(out)]) == 0
    return out, json.loads((out / "models.json").read_text())


@pytest.fixture(scope="module")
def ops_results(tmp_path_factory):
    """One tiny `bench ops --op all` run (forward and full, no torch.compile), and what it printed."""
    out = tmp_path_factory.mktemp("ops")
    with pytest.MonkeyPatch.context() as mp:
        printed = io.StringIO()
        mp.setattr(sys, "stdout", printed)
        assert main(["bench", "ops", "--op", "all", *TINY_OPS, "--out", str(out)]) == 0
    return out, printed.getvalue()


def test_bench_model_writes_timings_and_ratios(model_results):
    out, record = model_results
    assert record["benchmark"] == "model"
    assert ENVIRONMENT_KEYS <= set(record["environment"])
    assert {"settings", "summary", "rows", "interrupted", "peak_memory", "saved_activations"} <= set(record)
    assert record["interrupted"] is None
    assert record["settings"]["batch"] == {"infer": [2], "train": [2]} and record["settings"]["size"] == 32
    rows = record["rows"]
    assert [(r["mode"], r["variant"]) for r in rows] == [
        ("infer", "torchvision"), ("infer", "ours[cuda]"), ("train", "torchvision"), ("train", "ours[cuda]")]
    for r in rows:
        assert "error" not in r, r
        assert {"model", "batch", "size", "dtype", "compile", "p20_ms", "p50_ms", "p80_ms", "img_per_s", "peak_mem_mb",
                "first_step_s"} <= set(r)
        assert r["p20_ms"] <= r["p50_ms"] <= r["p80_ms"]
        assert r["img_per_s"] == pytest.approx(2 / (r["p50_ms"] * 1e-3))
        assert r["peak_mem_mb"] is None  # not measured on CPU
        assert (r["saved_mb"] > 0) if r["mode"] == "train" else "saved_mb" not in r
        assert r["recompute"] is False
    assert all("speedup_vs_eager" in r for r in rows if r["impl"] == "ours")
    assert set(record["summary"]) == {"infer/ours[cuda]_vs_eager", "train/ours[cuda]_vs_eager",
                                      "saved/mobilenet_v2/b2/ours[cuda]_vs_eager"}
    assert "| mobilenet_v2 | train | 2 | ours[cuda] |" in (out / "models.md").read_text()


def test_bench_model_compile_variants_and_v1(tmp_path, capsys, monkeypatch):
    """The torch.compile variants and their ratios, and V1, whose baseline is our V1 on the torch
    backend. torch.compile itself is stubbed out: compiling on a CPU takes minutes, and the ops'
    own tests compile them."""
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model, mode: compiled.append(mode) or model)
    args = ["bench", "model", "--model", "mobilenet_v1", "--mode", "infer", *TINY, "--compile", "max-autotune",
            "--backend", "cuda", "--out", str(tmp_path)]
    assert main(args) == 0
    assert compiled == ["max-autotune"] * 2
    rows = {r["variant"]: r for r in json.loads((tmp_path / "models.json").read_text())["rows"]}
    assert list(rows) == ["reference", "reference + compile max-autotune", "ours[cuda]",
                          "ours[cuda] + compile max-autotune"]
    assert all("error" not in r for r in rows.values()), rows
    for ours in ("ours[cuda]", "ours[cuda] + compile max-autotune"):  # both against the compiled baseline
        assert rows[ours]["speedup_vs_compile"] == pytest.approx(
            rows["reference + compile max-autotune"]["p50_ms"] / rows[ours]["p50_ms"])
        assert rows[ours]["speedup_vs_eager"] == pytest.approx(rows["reference"]["p50_ms"] / rows[ours]["p50_ms"])
    assert "| mobilenet_v1 | infer | 2 | ours[cuda] + compile max-autotune |" in capsys.readouterr().out


def test_bench_model_recompute_variant_saves_activations(tmp_path):
    """--recompute adds ours with recompute=True to the training rows; its saved activations drop."""
    args = ["bench", "model", *TINY_MODEL, "--mode", "train", "--compile", "none", "--recompute", "--out", str(tmp_path)]
    assert main(args) == 0
    record = json.loads((tmp_path / "models.json").read_text())
    assert record["settings"]["recompute"] is True
    rows = {r["variant"]: r for r in record["rows"]}
    assert list(rows) == ["torchvision", "ours[cuda]", "ours[cuda] + recompute"]
    assert all("error" not in r for r in rows.values()), rows
    stored, recomputed = rows["ours[cuda]"], rows["ours[cuda] + recompute"]
    assert recomputed["recompute"] and not stored["recompute"]
    assert 0 < recomputed["saved_mb"] < 0.5 * stored["saved_mb"] < rows["torchvision"]["saved_mb"]
    assert recomputed["speedup_vs_eager"] > 0
    assert "train/ours[cuda] + recompute_vs_eager" in record["summary"]
    assert "| mobilenet_v2 | train | 2 | ours[cuda] + recompute |" in (tmp_path / "models.md").read_text()


def test_bench_model_cuda_graph_variants_and_ratios():
    """With cuda_graph, every case gets a "+ cuda graph" row for the baseline and for ours per
    backend; ours' graph row is compared with the baseline's graph row, and
    the uncompiled rows' speedup_vs_compile stays against the first torch.compile mode."""
    from mobilenet_kernels.benchmarking import models

    s = models.default_settings("cpu")
    s.compile, s.backends, s.cuda_graph = ["default"], ["cuda", "triton"], True
    labels = [v.label for v in models.variants("mobilenet_v2", s, "infer")]
    assert labels == ["torchvision", "torchvision + compile", "torchvision + cuda graph", "ours[cuda]",
                      "ours[cuda] + compile", "ours[cuda] + cuda graph", "ours[triton]", "ours[triton] + compile",
                      "ours[triton] + cuda graph"]
    assert [v.label for v in models.variants("mobilenet_v2", s, "train")][2] == "torchvision + cuda graph"
    rows = [{"impl": "torchvision", "compile": "none", "p50_ms": 6.0},
            {"impl": "torchvision", "compile": models.CUDA_GRAPH, "p50_ms": 2.0},
            {"impl": "torchvision", "compile": "default", "p50_ms": 3.0},
            {"impl": "ours", "compile": "none", "p50_ms": 4.0},
            {"impl": "ours", "compile": models.CUDA_GRAPH, "p50_ms": 1.0}]
    models._add_ratios(rows)
    assert rows[1]["speedup_vs_eager"] == 3.0 and "speedup_vs_compile" not in rows[1]
    assert rows[3]["speedup_vs_eager"] == 1.5 and rows[3]["speedup_vs_compile"] == 0.75
    assert rows[4]["speedup_vs_eager"] == 6.0 and rows[4]["speedup_vs_compile"] == 2.0


def test_benchmark_rows_reach_the_file_as_they_are_measured(tmp_path):
    """execute writes the result file after every row, so a run killed where Python sees no
    KeyboardInterrupt keeps the rows before the one in flight; an interrupted run says so."""
    from mobilenet_kernels.benchmarking.core import execute

    path = tmp_path / "partial.json"
    seen_on_disk = []

    def fill(rows, env):
        for i in range(2):
            rows.append({"i": i, "p50_ms": 1.0 + i})
            record = json.loads(path.read_text())
            seen_on_disk.append(([r["i"] for r in record["rows"]], record["interrupted"]))
        raise KeyboardInterrupt("signal 15")

    assert execute(device="cpu", out=str(tmp_path), name="partial", record={"benchmark": "test"}, fill=fill,
                   summarize=lambda rows: {"rows": float(len(rows))}, columns=["i", "p50_ms"]) == 1
    assert [ids for ids, _ in seen_on_disk] == [[0], [0, 1]]
    assert all(note.startswith("in progress") for _, note in seen_on_disk)
    final = json.loads(path.read_text())
    assert final["interrupted"] == "stopped after 2 rows: signal 15" and final["summary"] == {"rows": 2.0}


def test_time_ms_floor_outlasts_a_short_rep_override():
    """min_rep_ms holds against MK_BENCH_REP_MS (1 ms in these tests): a 5 ms call is timed
    about min_rep_ms / 5 times, not once."""
    import time

    from mobilenet_kernels.benchmarking.core import time_ms

    calls = []

    def fn():
        calls.append(None)
        time.sleep(0.005)

    time_ms(fn, "cpu", rep_ms=1, min_rep_ms=60)
    assert len(calls) >= 8, len(calls)
    calls.clear()
    time_ms(fn, "cpu", rep_ms=1)
    assert len(calls) < 8, len(calls)


def test_host_ms_enqueues_each_call_on_an_idle_gpu(monkeypatch):
    """host_ms synchronizes before every timed call (calls back to back fill the launch queue
    and count GPU time as host time) and returns the median call, fewer calls for long ones."""
    import time

    from mobilenet_kernels.benchmarking.core import host_ms

    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: events.append("sync"))
    durations = iter([0.001, 0.030, 0.002, 0.001, 0.002] * 4)

    def fn():
        events.append("call")
        time.sleep(next(durations))

    median = host_ms(fn, gpu_ms=0.01, calls=5)
    assert events == ["sync", "call"] * 5 + ["sync"]
    assert 1.5 <= median < 10, median  # the 2 ms call, not the 30 ms one nor the mean
    events.clear()
    host_ms(fn, gpu_ms=50.0)  # 200 ms of GPU work in all: 4 calls
    assert events.count("call") == 4


def test_bench_model_switch_rows_run_with_their_switches(tmp_path, monkeypatch):
    """--switches: one more eager row of ours per setting, labelled with it, whose steps (and only
    those) see the setting in the environment."""
    from mobilenet_kernels.benchmarking import models

    seen = []
    measure_steps = models.measure_steps

    def spy(model_name, variant, *args):
        seen.append((variant.label, os.environ.get("MK_DW_INPUT_BN"), os.environ.get("MK_DW_BN_FUSED")))
        return measure_steps(model_name, variant, *args)

    monkeypatch.setattr(models, "measure_steps", spy)
    monkeypatch.delenv("MK_DW_INPUT_BN", raising=False)
    monkeypatch.delenv("MK_DW_BN_FUSED", raising=False)
    args = ["bench", "model", *TINY_MODEL, "--mode", "train", "--compile", "none", "--switches", "MK_DW_INPUT_BN=0",
            "MK_DW_INPUT_BN=0,MK_DW_BN_FUSED=0", "--out", str(tmp_path)]
    assert main(args) == 0
    assert seen == [("torchvision", None, None), ("ours[cuda]", None, None),
                    ("ours[cuda] {MK_DW_INPUT_BN=0}", "0", None),
                    ("ours[cuda] {MK_DW_BN_FUSED=0,MK_DW_INPUT_BN=0}", "0", "0")]
    assert "MK_DW_INPUT_BN" not in os.environ and "MK_DW_BN_FUSED" not in os.environ
    rows = json.loads((tmp_path / "models.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == [label for label, _, _ in seen]
    assert all(r["p50_ms"] > 0 and "speedup_vs_eager" in r for r in rows[1:]), rows


def test_bench_model_saved_only_measures_activation_memory_without_steps(tmp_path):
    """--saved-only: training rows with saved_mb and no timing (what gives batch-256 memory on a CPU)."""
    args = ["bench", "model", *TINY_MODEL, "--recompute", "--saved-only", "--out", str(tmp_path)]
    assert main(args) == 0
    record = json.loads((tmp_path / "models.json").read_text())
    rows = {r["variant"]: r for r in record["rows"]}
    assert list(rows) == ["torchvision", "ours[cuda]", "ours[cuda] + recompute"]
    assert all(r["mode"] == "train" and r["saved_mb"] > 0 and "p50_ms" not in r for r in rows.values()), rows
    ratio = record["summary"]["saved/mobilenet_v2/b2/ours[cuda] + recompute_vs_eager"]
    assert ratio == pytest.approx(rows["ours[cuda] + recompute"]["saved_mb"] / rows["torchvision"]["saved_mb"])
    assert ratio < 0.5


def test_bench_ops_writes_one_file_per_registered_op(ops_results):
    out, printed = ops_results
    for name, bench in OPS.items():
        record = json.loads((out / f"{name}.json").read_text())
        assert record["op"] == bench.op and record["benchmark"] == "op"
        assert ENVIRONMENT_KEYS <= set(record["environment"])
        assert {"settings", "summary", "rows", "interrupted"} <= set(record)
        assert record["rows"], name
        for row in record["rows"]:
            assert {"model", "batch", "dtype", "layout", "mode", "bytes", "eager_p20_ms", "eager_p50_ms",
                    "eager_p80_ms", "eager_GBps"} <= set(row), row
            assert "torch_compile_p50_ms" not in row  # --compile none
        assert (out / f"{name}.md").exists()
        assert f"wrote {out / name}.json" in printed
    for name in ("batch_norm_act", "depthwise"):
        for row in json.loads((out / f"{name}.json").read_text())["rows"]:
            assert {"C", "H", "W", "cuda_p20_ms", "cuda_p50_ms", "cuda_p80_ms", "cuda_GBps",
                    "cuda_speedup_vs_eager"} <= set(row), row
    bn = json.loads((out / "batch_norm_act.json").read_text())
    assert {(r["training"], r["mode"]) for r in bn["rows"]} == {(False, "forward"), (False, "full"), (True, "forward"),
                                                                (True, "full")}
    assert "train/full/float32/nhwc/b2/cuda_vs_eager" in bn["summary"]
    dw = json.loads((out / "depthwise.json").read_text())
    assert {(r["op"], r["mode"]) for r in dw["rows"]} == {("conv", "forward"), ("conv", "full"),
                                                          ("conv_bn_act_train", "full")}
    # the training op also with the unfused backward (MK_DW_BN_FUSED=0 around the call), and the
    # switch restored after it
    assert all("cuda_bn_unfused_p50_ms" in r for r in dw["rows"] if r["op"] == "conv_bn_act_train")
    assert not any("bn_unfused" in k for r in dw["rows"] if r["op"] == "conv" for k in r)
    assert "MK_DW_BN_FUSED" not in os.environ


def _tiny_ours() -> list[str]:
    """Our backends that run on CPU tensors here without the rebuilt extension: torch, and triton
    under its interpreter (conftest switches it on where there is no GPU)."""
    from mobilenet_kernels import backends

    return [b for b in ("torch", "triton") if b in backends.available("cpu")]


# One model, batch 1 at 32 px: 17 distinct 1x1 convs (x2 modes) and 2 blocks of V3-Small.
TINY_NEW_OPS = ["--models", "mobilenet_v3_small", "--size", "32", "--batch", "1", "--device", "cpu", "--threads", "1",
                "--compile", "none", "--quiet"]


def _read_op(out, name):
    record = json.loads((out / f"{name}.json").read_text())
    header = (out / f"{name}.md").read_text().splitlines()[2]  # after the environment line and a blank one
    return record, [c.strip() for c in header.strip("|").split("|")]


def test_bench_ops_pointwise(tmp_path):
    """`bench ops --op pointwise`: one row per distinct 1x1 conv + BN of the model and mode, the GEMM's
    bytes and FLOPs, our backends timed against eager."""
    from mobilenet_kernels.benchmarking.shapes import pointwise_layers

    ours = _tiny_ours()
    assert main(["bench", "ops", "--op", "pointwise", *TINY_NEW_OPS, "--backend", *ours, "--out", str(tmp_path)]) == 0
    record, columns = _read_op(tmp_path, "pointwise")
    assert record["op"] == "pointwise_conv2d" and record["benchmark"] == "op" and record["interrupted"] is None
    layers = pointwise_layers("mobilenet_v3_small", 32)
    rows = record["rows"]
    assert [(r["Cin"], r["Cout"], r["H"], r["W"], r["activation"], r["residual"], r["mode"]) for r in rows] == [
        (*layer, mode) for layer in layers for mode in ("forward", "full")]
    assert any(r["residual"] for r in rows) and {"relu", "hardswish", "identity"} <= {r["activation"] for r in rows}
    for r in rows:
        assert not any(k.endswith("error") for k in r), r
        P, Cin, Cout = r["H"] * r["W"], r["Cin"], r["Cout"]
        forward = 4 * (P * Cin + Cin * Cout + Cout + P * Cout * (2 if r["residual"] else 1))
        assert r["bytes"] == (forward if r["mode"] == "forward" else forward + 4 * (P * Cout + 2 * P * Cin + Cin * Cout
                                                                                   + Cout))
        assert r["flops"] == 2 * P * Cin * Cout * (1 if r["mode"] == "forward" else 3)
        for name in ("eager", *ours):
            assert r[f"{name}_p50_ms"] > 0 and r[f"{name}_GBps"] > 0 and r[f"{name}_TFLOPS"] > 0, (name, r)
        for name in ours:
            assert r[f"{name}_speedup_vs_eager"] == pytest.approx(r["eager_p50_ms"] / r[f"{name}_p50_ms"])
    assert {f"{mode}/float32/nhwc/b1/{name}_vs_eager" for mode in ("forward", "full") for name in ours} == set(
        record["summary"])
    expected = ["model", "Cin", "Cout", "H", "W", "activation", "residual", "batch", "dtype", "layout", "mode",
                "eager_p50_ms"] + (["triton_p50_ms"] if "triton" in ours else [])
    assert columns[:len(expected)] == expected, columns
    if "triton" in ours:
        assert {"triton_TFLOPS", "triton_speedup_vs_eager"} <= set(columns)


def test_bench_ops_pointwise_depthwise(tmp_path):
    """`bench ops --op pointwise_depthwise`: one row per distinct expand + depthwise shape of the
    model's blocks with an expand conv and per mode, ours in each fusion-switch setting the mode
    times (the forward has no BatchNorm grad_input to fuse), against eager and against ours unfused."""
    from mobilenet_kernels import backends
    from mobilenet_kernels.benchmarking.pointwise_depthwise import blocks

    if "cuda" not in backends.available("cpu"):
        pytest.skip("the C++ extension is not built")
    args = ["bench", "ops", "--op", "pointwise_depthwise", *TINY_NEW_OPS, "--backend", "cuda", "--out", str(tmp_path)]
    assert main(args) == 0
    record, columns = _read_op(tmp_path, "pointwise_depthwise")
    assert record["op"] == "pointwise_depthwise_bn_act_train" and record["interrupted"] is None
    # batch 1 at 32 px: the blocks whose depthwise output is one pixel cannot train (one value per channel)
    shapes = list(dict.fromkeys((b[0], b[1], b[3], b[4], b[5], b[6]) for b in blocks("mobilenet_v3_small", 32)
                                if (b[3] - 1) // b[6] + 1 > 1))
    rows = record["rows"]
    assert [(r["Cin"], r["Chid"], r["H"], r["W"], r["k"], r["stride"], r["mode"]) for r in rows] == [
        (*shape, mode) for shape in shapes for mode in ("forward", "full")]
    for r in rows:
        assert not any(k.endswith("error") for k in r), r
        settings = ["", "_no_input_bn"] + (["_no_bn_dx", "_unfused"] if r["mode"] == "full" else [])
        timed = {k[:-len("_p50_ms")] for k in r if k.startswith("cuda") and k.endswith("_p50_ms")}
        assert timed == {f"cuda{suffix}" for suffix in settings}, r
        unfused = r["cuda_unfused_p50_ms" if r["mode"] == "full" else "cuda_no_input_bn_p50_ms"]
        assert r["cuda_speedup_vs_unfused"] == pytest.approx(unfused / r["cuda_p50_ms"])
        assert r["cuda_speedup_vs_eager"] == pytest.approx(r["eager_p50_ms"] / r["cuda_p50_ms"])
    assert {"forward/float32/nhwc/b1/cuda_vs_unfused", "full/float32/nhwc/b1/cuda_no_bn_dx_vs_unfused"} <= set(
        record["summary"])
    assert columns[:13] == ["model", "Cin", "Chid", "H", "W", "k", "stride", "activation", "batch", "dtype", "layout",
                            "mode", "eager_p50_ms"], columns


def test_bench_ops_inverted_residual(tmp_path):
    """`bench ops --op inverted_residual`: one forward row per block, squeeze-excite blocks included
    (the mode setting is ignored: inference only), with the block's bytes and the op-by-op bytes."""
    from mobilenet_kernels.benchmarking.shapes import inverted_residual_layers

    ours = _tiny_ours()
    args = ["bench", "ops", "--op", "inverted_residual", *TINY_NEW_OPS, "--backend", *ours, "--out", str(tmp_path)]
    assert main(args) == 0
    record, columns = _read_op(tmp_path, "inverted_residual")
    assert record["op"] == "inverted_residual_eval" and record["interrupted"] is None
    rows = record["rows"]
    layers = inverted_residual_layers("mobilenet_v3_small", 32)
    assert len(layers) == 9 and sum(1 for layer in layers if layer[-1]) == 7
    assert [(r["Cin"], r["Chid"], r["Cout"], r["H"], r["W"], r["k"], r["stride"], r["dilation"], r["activation"],
             r["residual"], r["squeeze"]) for r in rows] == layers
    assert {r["mode"] for r in rows} == {"forward"}
    for r in rows:
        assert not any(k.endswith("error") for k in r), r
        k, s = r["k"], r["stride"]
        OH, OW = (r["H"] - 1) // s + 1, (r["W"] - 1) // s + 1
        x, y = r["Cin"] * r["H"] * r["W"], r["Cout"] * OH * OW
        expand = r["Chid"] != r["Cin"]  # V3-Small's first block has no expand conv
        S = r["squeeze"]
        weights = (r["Chid"] * ((r["Cin"] + 1 if expand else 0) + k * k + 1) + r["Cout"] * (r["Chid"] + 1)
                   + (2 * S * r["Chid"] + S + r["Chid"] if S else 0))
        hidden, hidden_out = r["Chid"] * r["H"] * r["W"] if expand else 0, r["Chid"] * OH * OW
        assert r["bytes"] == 4 * ((2 if S else 1) * x + y + weights)
        assert r["unfused_bytes"] == 4 * (x + 2 * hidden + (5 if S else 2) * hidden_out + y
                                          + (x if r["residual"] else 0) + weights)
        # (not 2x: the weights dominate the late blocks at 32 px)
        assert r["unfused_MB"] > r["MB"] > 0 and r["MB"] == pytest.approx(r["bytes"] / 1e6)
        for name in ("eager", *ours, *(f"{b}_ops" for b in ours)):  # <backend>_ops: ours op by op
            assert r[f"{name}_p50_ms"] > 0 and r[f"{name}_GBps"] > 0, (name, r)
            if name != "eager":
                assert r[f"{name}_speedup_vs_eager"] > 0
    assert set(record["summary"]) == {f"forward/float32/nhwc/b1/{name}{ops}_vs_eager" for name in ours
                                      for ops in ("", "_ops")}
    expected = ["model", "Cin", "Chid", "Cout", "H", "W", "k", "stride", "activation", "residual", "squeeze", "batch",
                "dtype", "layout", "MB", "unfused_MB", "eager_p50_ms"]
    assert columns[:len(expected)] == expected, columns
    if "triton" in ours:
        assert {"triton_p50_ms", "triton_GBps", "triton_speedup_vs_eager"} <= set(columns)


def test_report_reads_op_model_and_committed_results(model_results, ops_results, tmp_path, capsys):
    files = [str(model_results[0] / "models.json"), str(ops_results[0] / "batch_norm_act.json"), *COMMITTED]
    report_dir = tmp_path / "report"
    assert main(["report", *files, "--out", str(report_dir)]) == 0
    md = (report_dir / "report.md").read_text()
    assert capsys.readouterr().out.startswith(md)
    for expected in ("## Runs", "## Ops", "## Models", "| models | cpu", "| batch_norm_act_eval_h200 | H200 |",
                     "eval/forward/bfloat16/nhwc/b256", "## Test suites", "![ops_speedup](ops_speedup.png)"):
        assert expected in md, expected
    for png in ("ops_speedup.png", "ops_bandwidth.png", "models_speedup.png"):
        assert (report_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png


def test_report_blanks_peaks_that_counted_earlier_rows(tmp_path):
    """Model files written before bench model subtracted what earlier rows left allocated: a
    row's peak is shown only before the first row with saved_mb, never for a CUDA graph (taken
    after its capture then); rows with resident_before_mb are always shown."""
    from mobilenet_kernels.benchmarking.report import Result, _peak_is_own, markdown

    eager, graph = {"compile": "none"}, {"compile": "cuda-graph"}
    old = [eager, graph, eager | {"saved_mb": 9.0}, eager, eager | {"saved_mb": 4.0}]
    assert _peak_is_own(old) == [True, False, True, False, False]
    new = [r | {"resident_before_mb": 0.0} for r in old]
    assert _peak_is_own(new) == [True] * 5
    committed = os.path.join(ROOT, "benchmarks", "results", "models_train_run8_h200.json")
    assert main(["report", committed, "--out", str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    assert "| torchvision | 29.90 | 8562.0 | 5764 |" in md and "| ours[cuda] | 31.24 | 8194.0 |  |" in md, md
    assert "Peak MB left blank for rows of models_train_run8_h200" in md
    cpu_rows = [{"model": "m", "mode": "train", "batch": 2, "variant": "v", "compile": "none", "peak_mem_mb": None,
                 "saved_mb": 9.0}] * 2  # a CPU file: no peak measured, nothing to blank
    cpu = Result("models.json", "models_cpu", "model", {"environment": {"device": "cpu"}, "rows": cpu_rows})
    assert "Peak MB left blank" not in markdown([cpu], [])


@pytest.mark.parametrize("args, message", [
    (["bench", "model", "--model", "resnet50"], "--model: unknown model 'resnet50'"),
    (["bench", "model", "--batch", "0"], "--batch: must be positive"),
    (["bench", "model", "--size", "16"], "--size: at least 32"),
    (["bench", "model", "--switches", "MK_PW_FUSED=1"], "--switches: 'MK_PW_FUSED' is not one of"),
    (["bench", "model", "--switches", "MK_DW_INPUT_BN"], "--switches: expected K=V[,K=V]"),
    (["bench", "model", "--mode", "train", "--batch", "1", "--size", "32"], "cannot train"),
    (["bench", "model", "--backend", "tensorrt"], "--backend: unknown backend 'tensorrt'"),
    (["bench", "model", "--compile", "fast"], "--compile: 'fast' is not one of"),
    (["bench", "model", "--compile", "none", "default"], "--compile: none cannot be combined"),
    (["bench", "model", "--dtype", "int8"], "--dtype: unknown dtype 'int8'"),
    (["bench", "model", "--device", "tpu"], "--device: unknown device 'tpu'"),
    (["bench", "model", "--mode", "sideways"], "argument --mode: invalid choice"),
    (["bench", "model", "--batch", "two"], "argument --batch: invalid int value"),
    (["bench", "model", "--saved-only", "--mode", "infer"], "--saved-only: measures training activations"),
    (["bench", "model", "--saved-only", "--compile", "default"], "--saved-only: measures training activations"),
    (["bench", "model", "--cuda-graph", "--device", "cpu"], "--cuda-graph: CUDA graphs need --device cuda"),
    (["bench", "ops", "--op", "softmax"], "--op: unknown op 'softmax'"),
    (["bench", "ops", "--batch", "-4"], "--batch: must be positive"),
    (["bench", "ops", "--layout", "nwhc"], "--layout: 'nwhc' is not one of"),
    (["bench", "ops", "--models", "mobilenet_v1"], "--models: unknown model 'mobilenet_v1'"),
    (["bench", "ops", "--threads", "0"], "--threads: must be positive"),
    (["report", "no/such/file.json"], "no/such/file.json: no such file"),
])
def test_bad_arguments_are_one_line_errors(args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*args, "--out", "unused"] if args[0] == "bench" else args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err, err


def test_report_rejects_files_that_are_not_results(tmp_path, capsys):
    for name, text in (("bad.json", "{not json"), ("other.json", '{"environment": {"device": "x"}}'),
                       ("list.json", "[1, 2]")):
        (tmp_path / name).write_text(text)
        with pytest.raises(SystemExit) as exc:
            main(["report", str(tmp_path / name)])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and name in err, err


def test_command_line_in_a_subprocess():
    """Through `python -m mobilenet_kernels`, as a user runs it: a backend that this process cannot
    run (Triton on CPU tensors without its interpreter) is one line on stderr with exit code 2."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "mobilenet_kernels", "bench", "model", *TINY_MODEL, "--backend",
                           "triton"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and "--backend triton: cannot run on cpu here" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
