"""python_tests/gpu/sanitize.sh's verdicts, driven on a CPU box by a stand-in Python (which says a
GPU is there and prints what pytest would) and a stand-in compute-sanitizer (which runs the command
after its options and prints its own summary after the command's output, as the real one does).

GPU run 6 read every clean run as "FAIL (no test ran)": the pytest-summary match also took the
sanitizer's "========= ERROR SUMMARY: 0 errors", which comes last."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "python_tests" / "gpu" / "sanitize.sh"

FAKE_PYTHON = """#!/usr/bin/env bash
if [ "$1" = "-c" ]; then
  case "$2" in *get_device_name*) echo "Stand-in GPU" ;; esac
  exit 0
fi
case "${FAKE_PYTEST:-pass}" in
  pass) echo "...                                                   [100%]"; echo "3 passed, 9 deselected in 1.25s"; exit 0 ;;
  fail) echo "FAILED python_tests/test_x.py::test_y - AssertionError"; echo "1 failed, 2 passed in 1.25s"; exit 1 ;;
  none) echo "12 deselected in 0.50s"; exit 5 ;;
esac
"""

# Options come in pairs (--tool memcheck, --error-exitcode 1, ...); the command follows them.
FAKE_SANITIZER = """#!/usr/bin/env bash
[ "$1" = "--version" ] && { echo "Stand-in sanitizer"; exit 0; }
while [ "${1#--}" != "$1" ]; do shift 2; done
"$@"
rc=$?
echo "========= ERROR SUMMARY: 0 errors"
exit $rc
"""


def _executable(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def run_sanitize(tmp_path: Path, pytest_mode: str, python: str = FAKE_PYTHON) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHON": _executable(tmp_path / "python", python),
        "COMPUTE_SANITIZER": _executable(tmp_path / "compute-sanitizer", FAKE_SANITIZER),
        "MK_SANITIZE_TOOLS": "memcheck",
        "MK_SANITIZE_LIMIT": "60",
        "FAKE_PYTEST": pytest_mode,
    }
    return subprocess.run(["bash", str(SCRIPT), str(tmp_path / "logs")], env=env, capture_output=True, text=True,
                          timeout=120)


def verdicts(stdout: str) -> list[str]:
    """The summary table's verdict column, one per memcheck run."""
    rows = [line for line in stdout.splitlines() if line.startswith("memcheck ")]
    return [line[27:45].strip() for line in rows]


@pytest.mark.parametrize(
    "mode, verdict, status",
    [("pass", "ok", 0), ("fail", "FAIL (rc=1)", 1), ("none", "FAIL (rc=5)", 1)],
)
def test_verdicts(tmp_path, mode, verdict, status):
    result = run_sanitize(tmp_path, mode)
    got = verdicts(result.stdout)
    assert got and set(got) == {verdict}, result.stdout + result.stderr
    assert result.returncode == status
    if mode == "pass":
        assert "sanitize.sh: clean" in result.stdout
        assert all("3 passed, 9 deselected in 1.25s" in line for line in result.stdout.splitlines()
                   if line.startswith("memcheck "))


def test_a_clean_sanitizer_run_with_no_pytest_summary_is_no_test_ran(tmp_path):
    """Exit 0 without a pytest summary (a selection that ran nothing, yet exited 0): not a pass."""
    result = run_sanitize(tmp_path, "pass", FAKE_PYTHON.replace('echo "3 passed, 9 deselected in 1.25s"; ', ""))
    assert set(verdicts(result.stdout)) == {"FAIL (no test ran)"}, result.stdout
    assert result.returncode == 1
