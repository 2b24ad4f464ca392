"""`python -m mobilenet_kernels check`: versions, backends, self-test, exit code."""

import subprocess
import sys

import mobilenet_kernels.check as check


def test_check_command_passes_and_reports_backends():
    proc = subprocess.run([sys.executable, "-m", "mobilenet_kernels", "check"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for expected in ("torch", "triton", "C++ CPU kernels", "CUDA kernels", "self-test", "cpu   torch   PASS", "OK"):
        assert expected in out, f"{expected!r} missing from:\n{out}"


def test_check_exits_non_zero_on_a_mismatch(monkeypatch, capsys):
    monkeypatch.setattr(check, "self_test", lambda backend, device: (backend != "torch", 1.0))
    assert check.run_check() == 1
    assert "FAIL" in capsys.readouterr().out


def test_unknown_command_is_a_usage_error():
    proc = subprocess.run([sys.executable, "-m", "mobilenet_kernels", "frobnicate"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr
