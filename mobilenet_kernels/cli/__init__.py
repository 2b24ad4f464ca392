"""The commands behind ``python -m mobilenet_kernels``: one module per command, each with
``add_parser(subparsers)`` (which sets ``run=`` on its parser) and a ``run(args) -> int``."""


class CliError(Exception):
    """A bad command-line argument: printed as one line with exit code 2, never a traceback."""
