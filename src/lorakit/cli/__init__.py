"""The `lorakit` command: each subcommand parses its arguments and calls one function.

Subcommands live in modules of this package, one per group (`train.py`: train, quickstart,
inspect; `use.py`: eval, generate, chat; `merge.py`: merge; ...); each has `register(sub,
parent)`. A new command is a module here and one entry in `COMMAND_MODULES`.

Errors a user can fix (a bad option, config, data file, model or adapter) print one line,
`lorakit COMMAND: error: ...`, and exit with code 2; `--debug` shows the traceback instead.
Warnings print one line each, `lorakit COMMAND: warning: ...`.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from typing import Optional

from ..errors import InputError
from .common import EXIT_USAGE


class UsageError(InputError):
    """A command line argparse cannot parse; `prog` is the (sub)command it belongs to."""

    def __init__(self, prog: str, message: str):
        super().__init__(message)
        self.prog = prog


class Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing the usage and exiting: one line, like every error."""

    def error(self, message: str):
        raise UsageError(self.prog, message)


COMMAND_MODULES = ("train", "use", "data", "merge", "serve", "ui", "export", "compress", "router", "analyze")
"""Modules of this package that register subcommands, in `--help` order."""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="lorakit", description="LoRA-family fine-tuning, offline and CPU-first.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    debug = argparse.ArgumentParser(add_help=False)  # `lorakit train x.yaml --debug` works too
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub, debug)
    return parser


def _quiet_transformers() -> None:
    """Hide transformers' load reports and weight-loading bars (expected: a new classifier head)."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "fix your input", reported in one line."""
    from ..train.loop import TrainingError

    # ConfigError, DataError, AdapterFormatError... are InputErrors; ModelNotFoundError is a FileNotFoundError.
    return InputError, TrainingError, FileNotFoundError, NotADirectoryError, PermissionError


def main(argv: Optional[list[str]] = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as e:
        print(f"{e.prog}: error: {e} (see {e.prog} --help)", file=sys.stderr)
        return EXIT_USAGE
    if args.debug:
        return args.func(args)
    _quiet_transformers()
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning(args.command)
        try:
            return args.func(args)
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr)
            return 130
        except user_errors() as e:
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            rank = f" (rank {os.environ['RANK']})" if os.environ.get("WORLD_SIZE", "1") != "1" else ""  # under torchrun
            print(f"lorakit {args.command}{rank}: error: {message}", file=sys.stderr)
            return EXIT_USAGE


def _one_line_warning(command: str):
    def show(message, category, filename, lineno, file=None, line=None):
        text = str(message).strip().splitlines()[0] if str(message).strip() else category.__name__
        print(f"lorakit {command}: warning: {text}", file=file or sys.stderr)

    return show


if __name__ == "__main__":
    sys.exit(main())
