"""The `agentguard` command: run / history / audit / bypasses / dead-letters / guards.

Each group of subcommands lives in a private `_cli_*` module exposing `register(subparsers)`;
a subcommand sets `handler(args) -> int` (the exit code) with `set_defaults`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from . import _cli_bypasses, _cli_reports, _cli_run

__all__ = ["main"]

REGISTRATIONS: list[Callable[[Any], None]] = [
    _cli_run.register,
    _cli_reports.register,
    _cli_bypasses.register,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentguard",
        description="Guardrails for LLM agents: scheduled-job checks, audits and reports.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in REGISTRATIONS:
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except BrokenPipeError:
        # `agentguard audit | head`: the reader left. Stop writing quietly, like other tools,
        # and exit with the shell's code for SIGPIPE.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
