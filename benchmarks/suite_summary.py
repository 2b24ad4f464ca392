"""Turn the GPU suite's junit XML files (one per pytest run) into one suite_<gpu>.json: device,
commit, versions and pass/fail/skip counts over all of them (with the names of failures).

    python benchmarks/suite_summary.py JUNIT [JUNIT ...] OUT"""

from __future__ import annotations

import json
import os
import sys
import xml.etree.ElementTree as ET

import torch

from mobilenet_kernels.benchmarking.core import environment


def main(junit_paths: list[str], out_path: str) -> int:
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failures = []
    found = [path for path in junit_paths if os.path.exists(path)]
    for path in found:
        for case in ET.parse(path).getroot().iter("testcase"):
            name = f"{case.get('classname')}::{case.get('name')}"
            if case.find("failure") is not None:
                counts["failed"] += 1
                failures.append(name)
            elif case.find("error") is not None:
                counts["errors"] += 1
                failures.append(name)
            elif case.find("skipped") is not None:
                counts["skipped"] += 1
            else:
                counts["passed"] += 1
    record = {
        "environment": environment("cuda" if torch.cuda.is_available() else "cpu"),
        "suite": "python_tests",
        "junit_found": [os.path.basename(path) for path in found],
        "counts": counts,
        "failures": failures,
    }
    with open(out_path, "w") as f:
        json.dump(record, f, indent=1)
    print(json.dumps({"counts": counts, "failures": failures[:20]}))
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: suite_summary.py JUNIT [JUNIT ...] OUT")
    sys.exit(main(sys.argv[1:-1], sys.argv[-1]))
