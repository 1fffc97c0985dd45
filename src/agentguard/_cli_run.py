"""`agentguard run`: run a scheduled job, check its exit status and its output, record it.

Exit codes: the command's own code when it failed (128+N when killed by signal N); 3 when it
exited 0 but a content check failed; 4 when everything passed but the store could not record
the run; 126/127 when the command could not be started; 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from . import _config
from ._jobs import EXIT_CHECK_FAILED, EXIT_STORE_FAILED, JobSpec, run_job
from .errors import AgentGuardError
from .store import SQLiteStore, default_store_path

__all__ = ["register", "store_path"]

EPILOG = f"""\
exit codes:
  0     the command exited 0 and every check passed
  N     the command's own non-zero exit code (128+N when it was killed by signal N)
  {EXIT_CHECK_FAILED}     the command exited 0 but a content check failed (the output is not usable)
  {EXIT_STORE_FAILED}     the command and its checks passed, but the run could not be recorded
  126   the command is not executable; 127: the command was not found
  2     usage error

example:
  agentguard run --name daily-summary --expect '^Summary:' --min-ratio 0.3 -- python summary.py
"""


class _OwnAnomalyAlerts(logging.Filter):
    """Drops the log line of this job's own content-anomaly alert: the verdict says it."""

    def __init__(self, job: str) -> None:
        super().__init__()
        self.job = job

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        return not (
            isinstance(args, tuple)
            and len(args) == 2
            and args[0] == "content.anomaly"
            and f"job {self.job!r}" in str(args[1])
        )


def store_path(value: str | None) -> Path:
    """`--store`, else `AGENTGUARD_STORE`, else the default location."""
    return Path(value).expanduser() if value else default_store_path()


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "run",
        help="run a scheduled job and check its exit status and its output",
        description=(
            "Run COMMAND, pass its stdout and stderr through unchanged while checking them, "
            "then check exit status and content as two independent signals: the output is "
            "present, not much shorter than the job's median, matches --expect, holds no "
            "error keywords (Traceback, ERROR, rate limit, quota), and the run was not far "
            "slower than usual. The run is recorded in the store; a one-line verdict goes "
            "to stderr."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--name", required=True, help="the job's name (its history key)")
    p.add_argument(
        "--expect",
        action="append",
        default=[],
        metavar="REGEX",
        help="a pattern the output must contain (multiline: ^ matches at each line); repeatable",
    )
    p.add_argument(
        "--min-ratio",
        type=float,
        default=0.3,
        help="flag an output shorter than this fraction of the job's median (default 0.3)",
    )
    p.add_argument(
        "--max-duration-ratio",
        type=float,
        default=5.0,
        help="flag a run slower than this many times the job's median (default 5)",
    )
    p.add_argument(
        "--min-history",
        type=int,
        default=5,
        help="earlier healthy runs needed before comparing with the median (default 5)",
    )
    p.add_argument(
        "--output-file",
        type=Path,
        metavar="PATH",
        help="the job writes this file: it is the output checked (missing, not written by "
        "this run, 0 bytes, shorter than usual, --expect) instead of stdout",
    )
    p.add_argument(
        "--error-keyword",
        action="append",
        default=[],
        metavar="WORD",
        help="another error keyword to look for in stdout and stderr; repeatable",
    )
    p.add_argument(
        "--no-error-keywords",
        action="store_true",
        help="do not look for error keywords",
    )
    p.add_argument("--json", action="store_true", help="print the verdict as one JSON line")
    p.add_argument("--store", metavar="PATH", help="the store file (default: AGENTGUARD_STORE)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    p.set_defaults(handler=handle_run)


def handle_run(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        print(
            "agentguard run: no command given. Usage: agentguard run --name NAME [checks] -- "
            "COMMAND [ARGS...]",
            file=sys.stderr,
        )
        return 2
    spec = JobSpec(
        name=args.name,
        command=command,
        expect=tuple(args.expect),
        min_ratio=args.min_ratio,
        max_duration_ratio=args.max_duration_ratio,
        min_history=args.min_history,
        output_file=args.output_file,
        error_keywords=tuple(args.error_keyword),
        check_error_keywords=not args.no_error_keywords,
    )
    quiet = _OwnAnomalyAlerts(args.name)
    logging.getLogger("agentguard").addFilter(quiet)
    try:
        store = SQLiteStore(store_path(args.store))
        _config.configure(store=store)
        verdict = run_job(spec, store)
    except AgentGuardError as exc:
        print(f"agentguard run: {exc}", file=sys.stderr)
        return 2
    finally:
        logging.getLogger("agentguard").removeFilter(quiet)
    if args.json:
        print(json.dumps(verdict.to_json()), file=sys.stderr)
    else:
        print(verdict.line(), file=sys.stderr)
    sys.stderr.flush()
    return verdict.exit
