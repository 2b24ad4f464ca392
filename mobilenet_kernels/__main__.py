"""Command line: ``python -m mobilenet_kernels <command>`` (also installed as ``mobilenet-kernels``).

    check                       versions, backends, and a self-test of every usable backend
    bench ops|model ...         per-op and whole-model benchmarks (JSON + markdown to --out)
    train ...                   a training loop (synthetic data or an ImageFolder)
    report RESULTS.json ...     markdown tables and plots from result files
"""

from __future__ import annotations

import argparse
import sys


from .cli import CliError


def build_parser() -> argparse.ArgumentParser:
    from .cli import bench, report, train

    parser = argparse.ArgumentParser(prog="mobilenet-kernels", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="print versions and backends, and self-test every usable backend")
    bench.add_parser(sub)
    train.add_parser(sub)
    report.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse itself exits with code 2 on unknown choices
    try:
        if args.command == "check":
            from .check import run_check

            return run_check()
        return args.run(args)
    except CliError as e:
        parser.exit(2, f"{parser.prog} {args.command}: error: {e}\n")


if __name__ == "__main__":
    sys.exit(main())
