"""`train` command (placeholder: being written)."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="(not yet implemented)")
    p.set_defaults(run=run)


def run(args) -> int:
    from . import CliError

    raise CliError("not implemented yet")
