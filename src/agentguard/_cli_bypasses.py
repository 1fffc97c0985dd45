"""`agentguard bypasses` and `agentguard guards`: the review side of bypasses.

Exit codes of `agentguard bypasses`: 0 when every entry is valid and active beyond the warning
window (or there is none); 1 with `--check` when any entry is expired or expires within
`--warn-days` (default 7); 2 when an entry or the file is malformed, or a module named with
`-m` cannot be imported (the message says what to fix).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Mapping
from typing import Any

from . import _config, _guards, bypasses
from .errors import AgentGuardError

__all__ = ["register", "EXIT_OK", "EXIT_CHECK_FAILED", "EXIT_INVALID", "store_use_counts"]

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_INVALID = 2
LEDGER_SCAN_ROWS = 100_000
"""`agentguard guards` reads at most this many recent ledger rows for guard ids."""


def register(subparsers: Any) -> None:
    """Add `bypasses` and `guards` to the `agentguard` command's subparsers."""
    p = subparsers.add_parser(
        "bypasses",
        help="list active, expiring and expired guard bypasses (--check for CI)",
        description=(
            "List every bypass entry (from agentguard.toml / pyproject.toml [tool.agentguard] "
            "and from ag.bypass() calls in the modules named with -m): active, expiring within "
            "--warn-days, and expired, with owner, reason, ticket, age, renewals and uses. "
            "Exit codes: 0 fine; 1 with --check when an entry is expired or expiring; 2 when an "
            "entry is malformed or a module cannot be imported."
        ),
    )
    p.add_argument(
        "--file", help="the agentguard.toml or pyproject.toml to read (default: nearest)"
    )
    p.add_argument(
        "-m",
        "--module",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first (its ag.bypass() calls register entries); repeatable",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="exit 1 when any entry is expired or expires within --warn-days",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--warn-days",
        type=int,
        default=bypasses.EXPIRING_DAYS,
        metavar="N",
        help=f"an entry ending within N days is 'expiring' (default {bypasses.EXPIRING_DAYS})",
    )
    p.set_defaults(handler=run_bypasses)

    g = subparsers.add_parser(
        "guards",
        help="list the guard ids a codebase declares (the ids a bypass can name)",
        description=(
            "Import the modules named with -m and list the guard ids they declare (tools, "
            "validators, checks, contracts, retries) and the ids seen in the run store's "
            "ledger, each with the bypass that covers it, if any."
        ),
    )
    g.add_argument(
        "-m",
        "--module",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE and list its guards; repeatable",
    )
    g.add_argument(
        "--file", help="the agentguard.toml or pyproject.toml to read (default: nearest)"
    )
    g.add_argument("--json", action="store_true", help="print JSON instead of a table")
    g.set_defaults(handler=run_guards)


def _import_modules(names: list[str]) -> list[Any]:
    """Import each module (the current directory first on sys.path, as `python -m` does)."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    modules = []
    for name in names:
        try:
            modules.append(importlib.import_module(name))
        except ImportError as exc:
            raise AgentGuardError(
                f"agentguard: cannot import module {name!r} named with -m ({exc}). Fix: run the "
                f"command from the project root or install the package, and give a dotted "
                f"module name such as mypkg.tools."
            ) from exc
    return modules


def store_use_counts(store: Any = None) -> tuple[Mapping[str, int] | None, str]:
    """Bypass use counts from a run store's ledger, and a note saying where they come from.

    `store` defaults to the configured one. Counts the ledger rows of kind `bypass` with
    outcome `bypassed` per entry guard (the row's `detail["bypass"]`), through the store's
    `bypass_use_counts()` when it has one, else its `ledger(kind="bypass")`; this process's
    counters are added. None when there is no store or it cannot be read that way: the table
    then shows `-` (uses are never shown as 0 when they are unknown).
    """
    store = _config.get_config().store if store is None else store
    if store is None:
        return None, (
            "USES: unknown here, no run store is configured (uses are counted in the ledger "
            "of a store: ag.configure(store=...)); in a process, see bypasses.use_counts()."
        )
    counts: dict[str, int] = {}
    counter = getattr(store, "bypass_use_counts", None)
    ledger = getattr(store, "ledger", None)
    if callable(counter):
        counts.update(counter())
    elif callable(ledger):
        for row in ledger(kind="bypass"):
            detail = row.detail or {}
            if row.outcome == "bypassed" and isinstance(detail.get("bypass"), str):
                counts[detail["bypass"]] = counts.get(detail["bypass"], 0) + 1
    else:
        return None, (
            f"USES: unknown, the configured store {type(store).__name__} cannot list its "
            f"ledger rows (it has neither bypass_use_counts() nor ledger(kind=...))."
        )
    for guard, n in bypasses.use_counts().items():
        counts[guard] = counts.get(guard, 0) + n
    return counts, "USES: counted from the run store's ledger and this process."


def _load(args: argparse.Namespace) -> None:
    bypasses.load_bypasses(args.file)
    _import_modules(args.module)


def run_bypasses(args: argparse.Namespace) -> int:
    """The `agentguard bypasses` command; returns the exit code."""
    try:
        _load(args)
    except AgentGuardError as exc:
        print(f"agentguard bypasses: {exc}", file=sys.stderr)
        return EXIT_INVALID
    uses, note = store_use_counts()
    statuses = bypasses.bypass_statuses(
        uses=uses, count_uses=uses is not None, warn_days=args.warn_days
    )
    failing = [s for s in statuses if s.state in ("expired", "expiring")]
    if args.json:
        print(
            json.dumps(
                {
                    "bypasses": [s.as_dict() for s in statuses],
                    "expired": sum(1 for s in statuses if s.state == "expired"),
                    "expiring": sum(1 for s in statuses if s.state == "expiring"),
                    "active": sum(1 for s in statuses if s.state == "active"),
                    "uses_note": note,
                },
                indent=2,
            )
        )
    else:
        print(bypasses.render_bypasses(statuses, warn_days=args.warn_days, uses_note=note))
    if args.check and failing:
        count = f"{len(failing)} entr{'y' if len(failing) == 1 else 'ies'}"
        print(
            f"agentguard bypasses --check: {count} expired or expiring within "
            f"{args.warn_days} days: "
            f"{', '.join(f'{s.guard} ({s.state}, owner {s.current.owner})' for s in failing)}. "
            f"Fix: delete expired entries, renew needed ones with a new entry and date.",
            file=sys.stderr,
        )
        return EXIT_CHECK_FAILED
    return EXIT_OK


def _ledger_guard_ids(store: Any = None) -> tuple[set[str], str]:
    """Guard ids seen in the store's ledger: `budget:<pool>` per pool, and rows' guard ids."""
    store = _config.get_config().store if store is None else store
    if store is None:
        return set(), (
            "Ledger: no run store configured, so budget:<pool> ids (pools are named at run "
            "time) are not listed; configure a store to list the ids seen in past runs."
        )
    reader = getattr(store, "guard_ids", None)
    if callable(reader):
        return set(reader()), "Ledger: ids seen in the run store's ledger are included."
    ledger = getattr(store, "ledger", None)
    if not callable(ledger):
        return set(), (
            f"Ledger: the configured store {type(store).__name__} cannot list its ledger "
            f"(it has neither guard_ids() nor ledger())."
        )
    ids: set[str] = set()
    for row in ledger(limit=LEDGER_SCAN_ROWS):
        if row.pool:
            ids.add(f"budget:{row.pool}")
        detail = row.detail or {}
        if isinstance(detail.get("guard_id"), str):
            ids.add(detail["guard_id"])
    return ids, f"Ledger: ids seen in the last {LEDGER_SCAN_ROWS:,} ledger rows are included."


def run_guards(args: argparse.Namespace) -> int:
    """The `agentguard guards` command; returns the exit code."""
    try:
        bypasses.load_bypasses(args.file)
        modules = _import_modules(args.module)
    except AgentGuardError as exc:
        print(f"agentguard guards: {exc}", file=sys.stderr)
        return EXIT_INVALID
    found: dict[str, set[str]] = {gid: set(w) for gid, w in _guards.declared_guards().items()}
    for module in modules:
        for gid, where in _guards.guards_in_module(module).items():
            found.setdefault(gid, set()).update(where)
    ledger_ids, note = _ledger_guard_ids()
    for gid in ledger_ids:
        found.setdefault(gid, set()).add("ledger")
    entries = bypasses.registered_bypasses()
    now = _config.get_config().clock.now()
    rows = []
    for gid in sorted(found):
        covering = [e for e in entries if e.covers(gid)]
        active = [e for e in covering if e.active_at(now)]
        if active:
            best = max(active, key=lambda e: e.expires)
            state = f"BYPASSED until {bypasses._fmt_expiry(best.expires)} ({best.owner})"
        elif covering:
            state = "on (bypass expired)"
        else:
            state = "on"
        rows.append(
            {"guard": gid, "declared_by": sorted(w for w in found[gid] if w), "state": state}
        )
    orphans = sorted({e.guard for e in entries if not any(e.covers(gid) for gid in found)})
    if args.json:
        print(json.dumps({"guards": rows, "unmatched_bypasses": orphans, "note": note}, indent=2))
        return EXIT_OK
    if not rows:
        print(
            "guards: none found. Name the modules that define your tools with -m "
            "(agentguard guards -m mypkg.tools)."
        )
    else:
        width = max(len(r["guard"]) for r in rows)
        for r in rows:
            print(
                f"{r['guard']:<{width}}  {r['state']:<10}  {', '.join(r['declared_by'])}".rstrip()
            )
    if orphans and rows:
        print(
            f"bypass entries that cover none of these guards: {', '.join(orphans)} (a typo, "
            f"a guard in a module not named with -m, or a pool only seen at run time)."
        )
    print(note)
    return EXIT_OK
