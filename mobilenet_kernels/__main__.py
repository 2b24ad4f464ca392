"""Command line: ``python -m mobilenet_kernels <command>`` (also installed as ``mobilenet-kernels``)."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mobilenet-kernels", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="print versions and backends, and self-test every usable backend")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check":
        from .check import run_check

        return run_check()
    return 2


if __name__ == "__main__":
    sys.exit(main())
