"""The HBM byte model (mobilenet_kernels/benchmarking/hbm.py), the ncu CSV parser, and
benchmarks/hbm_bytes.py on a CPU (the model only) and with a stand-in for ncu (the measurement's
command, parsing and per-image arithmetic)."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from mobilenet_kernels.benchmarking.hbm import byte_model, parse_ncu_csv

from conftest import load_benchmark

pytest.importorskip("torchvision")


def load_script():
    return load_benchmark("hbm_bytes")


def test_byte_model_of_mobilenet_v2_matches_issue_7():
    """V2 at 224², bf16: about 82 MB per image run eagerly, about 5 MB with every block on chip
    (issue 7's figures), the folded op-by-op run in between; weights once per forward."""
    m = byte_model("mobilenet_v2", 224, torch.bfloat16, batch=32)
    assert 75 < m["activations_eager_MB"] < 90
    assert 3 < m["activations_whole_block_MB"] < 6 and m["whole_block_MB"] < 5
    assert m["activations_whole_block_MB"] < m["activations_op_by_op_MB"] < m["activations_eager_MB"]
    assert m["blocks"] == 17 and m["blocks_se"] == 0
    assert m["weights_MB"] == pytest.approx(3_504_872 * 2 / 1e6)  # torchvision's V2 parameters, bf16
    one = byte_model("mobilenet_v2", 224, torch.bfloat16, batch=1)
    assert one["eager_MB"] - m["eager_MB"] == pytest.approx(m["weights_MB"] * (1 - 1 / 32))


def test_byte_model_of_squeeze_excite_blocks():
    """V3's blocks with squeeze-excite run as two passes of the block kernel: the block's input read
    twice, its output written once (the pooling needs the whole depthwise output before the
    projection); float32 doubles every figure."""
    m = byte_model("mobilenet_v3_large", 224, torch.bfloat16)
    assert m["blocks"] == 15 and m["blocks_se"] == 8
    assert m["activations_whole_block_MB"] < 0.5 * m["activations_op_by_op_MB"]
    f32 = byte_model("mobilenet_v3_large", 224, torch.float32)
    for key in ("activations_eager_MB", "activations_op_by_op_MB", "weights_MB"):
        assert f32[key] == pytest.approx(2 * m[key])
    small = byte_model("mobilenet_v3_large", 112, torch.bfloat16)  # activations scale with the pixels (the classifier does not)
    assert small["activations_eager_MB"] == pytest.approx(m["activations_eager_MB"] / 4, rel=0.05)


NCU_CSV = """==PROF== Connected to process 1234 (/usr/bin/python3)
some output of the program
"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size","Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"
"0","1234","python3","127.0.0.1","conv_kernel","1","7","(256, 1, 1)","(80, 1, 1)","0","9.0","Command line profiler metrics","dram__bytes_read.sum","byte","1,048,576"
"0","1234","python3","127.0.0.1","conv_kernel","1","7","(256, 1, 1)","(80, 1, 1)","0","9.0","Command line profiler metrics","dram__bytes_write.sum","byte","524,288"
"1","1234","python3","127.0.0.1","bn_kernel","1","7","(256, 1, 1)","(80, 1, 1)","0","9.0","Command line profiler metrics","dram__bytes_read.sum","Kbyte","2.5"
"1","1234","python3","127.0.0.1","bn_kernel","1","7","(256, 1, 1)","(80, 1, 1)","0","9.0","Command line profiler metrics","dram__bytes_write.sum","byte","0"
"1","1234","python3","127.0.0.1","bn_kernel","1","7","(256, 1, 1)","(80, 1, 1)","0","9.0","Command line profiler metrics","sm__cycles_elapsed.avg","cycle","100"
==PROF== Disconnected from process 1234
"""


def test_parse_ncu_csv_sums_launches_and_units():
    found = parse_ncu_csv(NCU_CSV)
    assert found == {"kernels": 2, "dram__bytes_read.sum": 1_048_576 + 2_500, "dram__bytes_write.sum": 524_288}


@pytest.mark.parametrize("text, match", [
    ("==PROF== nothing profiled\n", "no CSV header"),
    (NCU_CSV.replace('"Kbyte"', '"furlong"'), "unknown unit 'furlong'"),
])
def test_parse_ncu_csv_rejects_what_it_cannot_read(text, match):
    with pytest.raises(ValueError, match=match):
        parse_ncu_csv(text)


def test_hbm_bytes_on_cpu_writes_the_byte_model(tmp_path, capsys):
    script = load_script()
    assert script.main([str(tmp_path), "--models", "mobilenet_v3_small", "--variants", "torchvision",
                        "ours[cuda]", "--batch", "4", "--size", "64"]) == 0
    record = json.loads((tmp_path / "hbm_bytes.json").read_text())
    assert record["op"] == "hbm_bytes" and record["measured"].startswith("not measured")
    eager, ours = record["rows"]
    assert (eager["level"], ours["level"]) == ("eager", "op_by_op")
    assert 0 < ours["model_MB_per_image"] < eager["model_MB_per_image"]
    assert "measured_MB_per_image" not in eager and record["summary"] == {}
    assert "| mobilenet_v3_small | ours[cuda] | op_by_op | 4 |" in capsys.readouterr().out


def test_hbm_bytes_measures_through_ncu(tmp_path, monkeypatch):
    """measure() with a stand-in `ncu` on PATH that checks the command line it gets (metrics, CSV in
    base units, profiling from cudaProfilerStart only, this script as the child) and writes the CSV
    above to --log-file: the per-image MB come out of it."""
    fake = tmp_path / "bin" / "ncu"
    fake.parent.mkdir()
    csv_file = tmp_path / "canned.csv"
    csv_file.write_text(NCU_CSV)
    fake.write_text(f"""#!/usr/bin/env bash
args="$*"
[[ "$args" == *"--csv --print-units base --profile-from-start off"* ]] || {{ echo "bad flags: $args" >&2; exit 3; }}
[[ "$args" == *"--metrics dram__bytes_read.sum,dram__bytes_write.sum"* ]] || {{ echo "bad metrics" >&2; exit 3; }}
[[ "$args" == *"hbm_bytes.py"*"--child mobilenet_v2 ours[cuda] --batch 2 --size 64"* ]] || {{ echo "bad child: $args" >&2; exit 3; }}
while [ $# -gt 0 ]; do [ "$1" = --log-file ] && cp {csv_file} "$2"; shift; done
""")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    found = load_script().measure("mobilenet_v2", "ours[cuda]", 2, 64)
    assert found["kernels"] == 2
    assert found["measured_read_MB_per_image"] == pytest.approx((1_048_576 + 2_500) / 2 / 1e6)
    assert found["measured_MB_per_image"] == pytest.approx((1_048_576 + 2_500 + 524_288) / 2 / 1e6)


def test_hbm_bytes_reports_a_failing_ncu_run(tmp_path, monkeypatch):
    fake = tmp_path / "ncu"
    fake.write_text("#!/usr/bin/env bash\necho '==ERROR== the profiler could not start' >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(RuntimeError, match="ncu exited with 1: ==ERROR== the profiler could not start"):
        load_script().measure("mobilenet_v2", "torchvision", 2, 64)
