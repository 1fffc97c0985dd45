"""The sections of `agentguard audit`, and how other modules add theirs.

A section provider is a function `provider(ctx: AuditContext) -> AuditSection | list of
AuditSection | None` (None: nothing to show). Built-in providers cover jobs, runs, content
anomalies, cost outliers, alerts, dead letters and per-route figures. Another module adds its
own section by appending to `SECTION_PROVIDERS` either the function itself (when the CLI
imports that module anyway) or a `"module:function"` string, imported lazily when the audit
runs: `SECTION_PROVIDERS.append("agentguard.retry:audit_section")`. A provider that cannot be
imported or raises an agentguard error shows as a section saying so (never silently absent).
"""

from __future__ import annotations

import importlib
import statistics
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._table import fmt_duration, fmt_money, fmt_num, fmt_time, plural, render_table
from .errors import AgentGuardError
from .store import SQLiteStore

__all__ = [
    "AuditContext",
    "AuditSection",
    "SECTION_PROVIDERS",
    "register_audit_section",
    "collect_sections",
    "render_section",
    "render_snapshot",
]

REPORT_LIMIT = 20


@dataclass(frozen=True)
class AuditContext:
    """What a section provider may read: the store, the period start (None: all time)."""

    store: SQLiteStore
    since: float | None
    now: float
    period: str = "7d"


@dataclass(frozen=True)
class AuditSection:
    """One titled block of the audit: a table (`columns` + `rows`) and/or preformatted `text`.

    `summary` is a one-line headline shown after the title; `note` a line under the table.
    """

    title: str
    columns: Sequence[str] = ()
    rows: Sequence[Sequence[Any]] = ()
    summary: str | None = None
    note: str | None = None
    text: str | None = None


SectionProvider = Callable[[AuditContext], AuditSection | Sequence[AuditSection] | None]


def _jobs(ctx: AuditContext) -> AuditSection:
    runs = ctx.store.runs(kind="job", since=ctx.since, limit=100_000)
    by_name: dict[str, list[Any]] = {}
    for r in runs:
        by_name.setdefault(r.name, []).append(r)
    rows = []
    for name, items in sorted(by_name.items()):
        counts = Counter(r.status for r in items)
        last = items[0]
        rows.append(
            (
                name,
                len(items),
                counts.get("ok", 0),
                counts.get("anomaly", 0),
                counts.get("failed", 0) + counts.get("interrupted", 0),
                f"{last.status.upper()} {fmt_time(last.started)}",
                "; ".join(last.reasons) if last.status != "ok" else "",
            )
        )
    bad = sum(1 for r in runs if r.status != "ok")
    return AuditSection(
        title="Scheduled jobs (agentguard run)",
        summary=f"{plural(len(runs), 'run')} of {plural(len(by_name), 'job')}, {bad} not ok",
        columns=("JOB", "RUNS", "OK", "ANOMALY", "FAILED", "LAST", "LAST REASON"),
        rows=rows,
    )


def _pool_runs(ctx: AuditContext) -> AuditSection:
    runs = ctx.store.runs(kind="pool", since=ctx.since, limit=100_000)
    by_name: dict[str, list[Any]] = {}
    for r in runs:
        by_name.setdefault(r.name, []).append(r)
    rows = []
    for name, items in sorted(by_name.items()):
        costs = [r.cost_usd or 0.0 for r in items]
        counts = Counter(r.status for r in items)
        rows.append(
            (
                name,
                len(items),
                counts.get("stopped", 0),
                counts.get("error", 0),
                fmt_money(statistics.median(costs)),
                fmt_money(max(costs)),
                fmt_money(sum(costs)),
                fmt_num(statistics.median([r.tokens or 0.0 for r in items])),
            )
        )
    return AuditSection(
        title="Agent runs (root budget pools)",
        summary=f"{plural(len(runs), 'run')} of {plural(len(by_name), 'pool')}",
        columns=(
            "POOL",
            "RUNS",
            "STOPPED",
            "ERROR",
            "MEDIAN COST",
            "MAX COST",
            "TOTAL",
            "MEDIAN TOKENS",
        ),
        rows=rows,
    )


def _anomalies(ctx: AuditContext) -> AuditSection:
    rows = ctx.store.ledger(kind="anomaly", since=ctx.since)
    shown = rows[-REPORT_LIMIT:][::-1]
    return AuditSection(
        title="Content anomalies",
        summary=plural(len(rows), "anomaly", "anomalies")
        + (f", latest {len(shown)} shown" if rows else ""),
        columns=("WHEN", "ROUTE / JOB", "RUN", "CHECK", "REASON"),
        rows=[
            (
                fmt_time(r.ts),
                r.route or "-",
                r.run_id or "-",
                (r.detail or {}).get("check", "-"),
                (r.detail or {}).get("reason", "-"),
            )
            for r in shown
        ],
    )


def _cost_outliers(ctx: AuditContext) -> AuditSection:
    rows = ctx.store.alerts(since=ctx.since, kind="cost.outlier")
    shown = rows[-REPORT_LIMIT:][::-1]
    table = []
    for r in shown:
        detail = r.detail or {}
        data = detail.get("data") or {}
        table.append(
            (
                fmt_time(r.ts),
                data.get("scope", "-"),
                r.route or detail.get("pool") or "-",
                detail.get("run_id") or r.run_id or "-",
                data.get("measure", "-"),
                fmt_num(data.get("value")),
                fmt_num(data.get("median")),
                f"{data.get('ratio', 0):.1f}x",
            )
        )
    return AuditSection(
        title="Cost outliers (a call or run above 5x its median)",
        summary=plural(len(rows), "outlier"),
        columns=("WHEN", "SCOPE", "ROUTE / POOL", "RUN", "MEASURE", "VALUE", "MEDIAN", "RATIO"),
        rows=table,
    )


def _alerts(ctx: AuditContext) -> AuditSection:
    rows = ctx.store.alerts(since=ctx.since)
    by_kind: dict[str, list[Any]] = {}
    for r in rows:
        by_kind.setdefault(r.outcome, []).append(r)
    table = [
        (kind, len(items), fmt_time(items[-1].ts), (items[-1].detail or {}).get("message", ""))
        for kind, items in sorted(by_kind.items())
    ]
    return AuditSection(
        title="Alerts by kind",
        summary=plural(len(rows), "alert"),
        columns=("KIND", "COUNT", "LAST", "LAST MESSAGE"),
        rows=table,
    )


def _dead_letters(ctx: AuditContext) -> AuditSection:
    letters = ctx.store.dead_letters(since=ctx.since, limit=REPORT_LIMIT)
    return AuditSection(
        title="Dead letters (stopped runs, for review)",
        summary=f"{len(letters)} shown" if letters else "none",
        columns=("ID", "WHEN", "RUN", "POOL", "ERROR", "REFUSED ROUTE", "LIMIT"),
        rows=[
            (
                d.id,
                fmt_time(d.ts),
                d.run_id or "-",
                d.pool_path or "-",
                d.error_type,
                d.refused.get("route") or "-",
                d.refused.get("dimension") or "-",
            )
            for d in letters
        ],
        note="agentguard dead-letters --id N shows one in full" if letters else None,
    )


def _routes(ctx: AuditContext) -> AuditSection:
    figures = ctx.store.route_figures(since=ctx.since)
    return AuditSection(
        title="Per-route figures (guarded calls)",
        summary=f"{plural(sum(f.calls for f in figures), 'call')} on "
        f"{plural(len(figures), 'route')}",
        columns=("ROUTE", "CALLS", "ERRORS", "REFUSED", "P50", "P99", "COST", "TOKENS"),
        rows=[
            (
                f.route,
                f"{f.calls:,}",
                f"{f.errors:,}" + (f" ({f.errors / f.calls:.0%})" if f.calls and f.errors else ""),
                f.refused,
                fmt_duration(f.p50),
                fmt_duration(f.p99),
                fmt_money(f.cost_usd),
                fmt_num(f.tokens),
            )
            for f in figures
        ],
    )


def bypass_section(ctx: AuditContext) -> AuditSection:
    """The bypass table of `agentguard bypasses`: entries of the project file, uses from the store.

    Reads the nearest `agentguard.toml` / `pyproject.toml` (like `agentguard bypasses`); the
    use counts come from this store's ledger.
    """
    try:
        from . import _cli_bypasses, bypasses
    except ImportError as exc:
        return AuditSection(title="Bypasses", summary=f"not available in this build ({exc})")
    if not bypasses.registered_bypasses():
        bypasses.load_bypasses()
    uses, note = _cli_bypasses.store_use_counts(ctx.store)
    statuses = bypasses.bypass_statuses(uses=uses, count_uses=uses is not None)
    return AuditSection(
        title="Bypasses", text=str(bypasses.render_bypasses(statuses, uses_note=note))
    )


SECTION_PROVIDERS: list[SectionProvider | str] = [
    _jobs,
    _pool_runs,
    _anomalies,
    _cost_outliers,
    _alerts,
    _dead_letters,
    _routes,
    bypass_section,
]
"""The audit's sections in order; append a provider or a `"module:function"` string."""


def register_audit_section(provider: SectionProvider | str) -> SectionProvider | str:
    """Add a section provider (a function or a `"module:function"` path); returns it."""
    if provider not in SECTION_PROVIDERS:
        SECTION_PROVIDERS.append(provider)
    return provider


def _resolve(provider: SectionProvider | str) -> SectionProvider:
    if not isinstance(provider, str):
        return provider
    module_name, _, attr = provider.partition(":")
    module = importlib.import_module(module_name)
    fn: SectionProvider = getattr(module, attr)
    return fn


def collect_sections(ctx: AuditContext) -> list[AuditSection]:
    """Every provider's sections, in order; a failing provider becomes a section saying so."""
    out: list[AuditSection] = []
    for provider in list(SECTION_PROVIDERS):
        name = provider if isinstance(provider, str) else getattr(provider, "__name__", "?")
        try:
            got = _resolve(provider)(ctx)
        except (ImportError, AttributeError) as exc:
            out.append(AuditSection(title=str(name), summary=f"section unavailable: {exc}"))
            continue
        except AgentGuardError as exc:
            out.append(AuditSection(title=str(name), summary=f"section failed: {exc}"))
            continue
        if got is None:
            continue
        if isinstance(got, AuditSection):
            out.append(got)
        else:
            out.extend(got)
    return out


def render_section(section: AuditSection) -> str:
    lines = [section.title + (f": {section.summary}" if section.summary else "")]
    lines.append("-" * min(len(lines[0]), 78))
    if section.columns and section.rows:
        lines.append(render_table(section.columns, section.rows, indent="  "))
    if section.text:
        lines.extend("  " + line for line in section.text.splitlines())
    if not section.rows and not section.text and section.columns:
        lines.append("  (none)")
    if section.note:
        lines.append("  " + section.note)
    return "\n".join(lines)


def section_json(section: AuditSection) -> dict[str, Any]:
    return {
        "title": section.title,
        "summary": section.summary,
        "columns": list(section.columns),
        "rows": [list(r) for r in section.rows],
        "note": section.note,
        "text": section.text,
    }


def render_snapshot(snapshot: Mapping[str, Any], indent: str = "") -> str:
    """A pool tree stored as plain data (a dead letter's snapshot), one line per pool."""
    limits = snapshot.get("limits") or {}
    spent = snapshot.get("spent") or {}
    parts = [
        f"{dim} {fmt_num(spent.get(dim, 0.0))}/{fmt_num(limit)}" for dim, limit in limits.items()
    ]
    state = "STOPPED" if snapshot.get("stopped") else "ok"
    lines = [f"{indent}{snapshot.get('name')} [{state}] " + ", ".join(parts)]
    for child in snapshot.get("children") or ():
        lines.append(render_snapshot(child, indent + "  "))
    return "\n".join(lines)
