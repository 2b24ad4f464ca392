"""``report RESULTS.json... [--out DIR]``: one markdown report (runs, op speed-ups, model timings,
test counts) and plots (speed-up per op and per model, % of HBM peak where measured) from any mix of
result files, so that runs on different devices or commits can be read side by side.
The machinery is in mobilenet_kernels.benchmarking.report."""

from __future__ import annotations

import argparse
import sys

from . import CliError

_DEFAULT_OUT = "mk_results/report"


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="markdown tables and plots from result files", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", metavar="RESULTS.json",
                   help="files written by bench ops / bench model / benchmarks/*.py (e.g. benchmarks/results/*.json)")
    p.add_argument("--out", default=_DEFAULT_OUT, help=f"directory for report.md and the PNGs (default {_DEFAULT_OUT})")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..benchmarking.report import ResultError, write_report

    try:
        md_path, images, skipped = write_report(args.results, args.out)
    except ResultError as exc:
        raise CliError(str(exc)) from None
    with open(md_path) as f:
        print(f.read())
    if skipped:
        print(skipped, file=sys.stderr)
    print(f"wrote {md_path}" + "".join(f", {args.out}/{name}" for name in images))
    return 0
