"""`agentguard history NAME`, `agentguard audit` and `agentguard dead-letters`: readable reports."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from ._audit import AuditContext, collect_sections, render_section, section_json
from ._table import fmt_duration, fmt_money, fmt_time, render_table
from .errors import AgentGuardError
from .store import SQLiteStore

__all__ = ["register", "parse_since"]


def parse_since(text: str | None) -> float | None:
    """`7d`, `12h`, `30m`, `all` -> an epoch timestamp (None for all)."""
    if text is None or text == "all":
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    try:
        value = float(text[:-1]) * units[text[-1]]
    except (KeyError, ValueError, IndexError) as exc:
        raise argparse.ArgumentTypeError(
            f"--since {text!r}: expected a number and a unit (s, m, h, d, w), e.g. 7d, or 'all'"
        ) from exc
    return time.time() - value


def _open(value: str | None) -> SQLiteStore | None:
    from ._cli_run import store_path

    path = store_path(value)
    if not path.exists():
        print(
            f"agentguard: no store at {path} (nothing recorded yet). Runs are recorded by "
            f"`agentguard run` or by a program with ag.configure(store=...) or "
            f"AGENTGUARD_STORE set; pass --store PATH to read another file.",
            file=sys.stderr,
        )
        return None
    return SQLiteStore(path, retention_days=None)


def register(subparsers: Any) -> None:
    h = subparsers.add_parser(
        "history",
        help="the recent runs of a job (or root pool) and its medians",
        description="The recent runs of a job or root pool: status, duration, output length, "
        "reasons, and the medians the checks compare with.",
    )
    h.add_argument("name")
    h.add_argument("--limit", type=int, default=20)
    h.add_argument("--store", metavar="PATH")
    h.add_argument("--json", action="store_true")
    h.set_defaults(handler=handle_history)

    a = subparsers.add_parser(
        "audit",
        help="what happened: runs, anomalies, cost outliers, dead letters, per-route figures",
        description="An audit of the store over a period: job and run outcomes, content "
        "anomalies, cost outliers, alerts, dead letters, per-route figures, bypasses.",
    )
    a.add_argument("--since", default="7d", help="period: 7d (default), 24h, 30m, all")
    a.add_argument("--store", metavar="PATH")
    a.add_argument("--json", action="store_true")
    a.set_defaults(handler=handle_audit)

    d = subparsers.add_parser(
        "dead-letters",
        help="runs stopped by a budget or exhausted corrections, for review",
        description="Runs that were stopped (BudgetExceeded, CorrectionsExhausted): the "
        "refused call, the pool tree and the tail of the ledger. --id shows one in full.",
    )
    d.add_argument("--id", type=int, help="show this dead letter in full")
    d.add_argument("--run", help="only this run id")
    d.add_argument("--since", default="all")
    d.add_argument("--limit", type=int, default=20)
    d.add_argument("--store", metavar="PATH")
    d.add_argument("--json", action="store_true")
    d.set_defaults(handler=handle_dead_letters)


def _guard(fn: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            result: int = fn(args)
        except argparse.ArgumentTypeError as exc:
            print(f"agentguard: {exc}", file=sys.stderr)
            return 2
        except AgentGuardError as exc:
            print(f"agentguard: {exc}", file=sys.stderr)
            return 1
        return result

    return run


@_guard
def handle_history(args: argparse.Namespace) -> int:
    store = _open(args.store)
    if store is None:
        return 1
    try:
        runs = store.runs(args.name, limit=args.limit)
        medians = {
            metric: store.history.values(args.name, metric)
            for metric in ("length", "duration", "run_cost_usd", "run_tokens")
        }
    finally:
        store.close()
    if args.json:
        print(
            json.dumps(
                {
                    "name": args.name,
                    "runs": [_run_json(r) for r in runs],
                    "history": {m: list(v) for m, v in medians.items() if v},
                }
            )
        )
        return 0
    if not runs:
        print(f"no runs recorded for {args.name!r} in {store.path}")
        return 1
    print(f"{args.name}: last {len(runs)} runs (newest first), store {store.path}")
    rows = [
        (
            fmt_time(r.started),
            r.status.upper(),
            "-" if r.exit_code is None else str(r.exit_code),
            fmt_duration(r.duration),
            "-" if r.output_length is None else f"{r.output_length:,.0f}",
            fmt_money(r.cost_usd) if r.kind == "pool" else "-",
            "; ".join(r.reasons) or ("; ".join(r.notes[:1]) if r.notes else ""),
        )
        for r in runs
    ]
    print(render_table(("STARTED", "STATUS", "EXIT", "DURATION", "LENGTH", "COST", "WHY"), rows))
    lines = []
    for metric, values in medians.items():
        if values:
            ordered = sorted(values)
            med = ordered[len(ordered) // 2]
            lines.append(f"  {metric}: median {med:,.4g} over the last {len(values)} healthy runs")
    if lines:
        print("history the checks compare with:")
        print("\n".join(lines))
    return 0


def _run_json(r: Any) -> dict[str, Any]:
    from dataclasses import asdict

    data = asdict(r)
    data["reasons"] = list(r.reasons)
    data["notes"] = list(r.notes)
    return data


@_guard
def handle_audit(args: argparse.Namespace) -> int:
    since = parse_since(args.since)
    store = _open(args.store)
    if store is None:
        return 1
    try:
        ctx = AuditContext(store=store, since=since, now=time.time(), period=args.since)
        sections = collect_sections(ctx)
    finally:
        store.close()
    if args.json:
        print(json.dumps({"since": since, "sections": [section_json(s) for s in sections]}))
        return 0
    period = "all time" if since is None else f"since {fmt_time(since)} ({args.since})"
    print(f"agentguard audit of {store.path}, {period}")
    for section in sections:
        print()
        print(render_section(section))
    return 0


@_guard
def handle_dead_letters(args: argparse.Namespace) -> int:
    since = parse_since(args.since)
    store = _open(args.store)
    if store is None:
        return 1
    try:
        letters = store.dead_letters(since=since, run_id=args.run, limit=args.limit)
        if args.id is not None:
            letters = [d for d in store.dead_letters(limit=1_000_000) if d.id == args.id]
    finally:
        store.close()
    if args.json:
        from dataclasses import asdict

        print(json.dumps([asdict(d) for d in letters]))
        return 0
    if not letters:
        print("no dead letters" + (f" with id {args.id}" if args.id is not None else ""))
        return 0 if args.id is None else 1
    if args.id is not None:
        print(_render_letter(letters[0]))
        return 0
    rows = [
        (
            str(d.id),
            fmt_time(d.ts),
            d.run_id or "-",
            d.pool_path or "-",
            d.error_type,
            str(d.refused.get("route") or "-"),
            f"{d.refused.get('dimension') or '-'}",
        )
        for d in letters
    ]
    print(render_table(("ID", "WHEN", "RUN", "POOL", "ERROR", "REFUSED ROUTE", "LIMIT"), rows))
    print("\n`agentguard dead-letters --id N` shows the pool tree and the tail of the ledger.")
    return 0


def _render_letter(d: Any) -> str:
    from ._audit import render_snapshot

    lines = [
        f"dead letter {d.id}: run {d.run_id}, pool {d.pool_path}, {fmt_time(d.ts)}",
        f"{d.error_type}: {d.message}",
        "",
        "refused call: " + ", ".join(f"{k}={v}" for k, v in d.refused.items() if v is not None),
        "",
        "pool tree at the stop:",
        render_snapshot(d.snapshot, "  "),
        "",
        f"last {len(d.ledger_tail)} ledger rows:",
    ]
    rows = [
        (
            fmt_time(r.get("ts"), seconds=True),
            str(r.get("pool_path") or "-"),
            str(r.get("kind")),
            str(r.get("route") or "-"),
            str(r.get("outcome")),
            fmt_duration(r.get("duration")),
            ",".join(r.get("flags") or []),
        )
        for r in d.ledger_tail
    ]
    lines.append(
        render_table(("TIME", "POOL", "KIND", "ROUTE", "OUTCOME", "DURATION", "FLAGS"), rows)
    )
    return "\n".join(lines)
