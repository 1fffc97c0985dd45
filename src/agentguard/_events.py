"""Ledger rows for what is not a charge: bypass uses, correction rounds, anomalies, alerts.

`record_event()` appends to the active pool's ledger (so the run's record is complete) or,
outside any pool, to a process-level list that the store drains the same way.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from .budget import _current, _now

__all__ = ["record_event", "append_row", "drain_orphan_events"]

_orphans: list[tuple[Any, ...]] = []
_orphans_lock = threading.Lock()
MAX_ORPHANS = 10_000


def record_event(
    kind: str,
    *,
    outcome: str,
    route: str | None = None,
    guard_id: str | None = None,
    detail: Mapping[str, Any] | None = None,
    flags: tuple[str, ...] = (),
) -> None:
    """Append one ledger row of `kind` (e.g. `bypass`, `correction`, `anomaly`, `alert`).

    `detail` must hold no argument values or outputs unless `record_values` is on (use
    `agentguard._redact.describe`).
    """
    info: dict[str, Any] = dict(detail or {})
    if guard_id is not None:
        info["guard_id"] = guard_id
    pool = _current.get()
    row: tuple[Any, ...] = (_now(), pool, route, kind, {}, outcome, None, flags, info)
    if pool is not None:
        pool._ledger.append(row)
        return
    append_row(row)


def append_row(row: tuple[Any, ...]) -> None:
    """Append a ready ledger row (its pool slot, `row[1]`, decides where it goes).

    Hot-path form of `record_event` for callers that build the row themselves (`@ag.retry`
    on its success path). Cost: one list append (lock-free: `list.append` is atomic, and
    `drain_orphan_events` removes only the rows it copied); the lock is taken only to
    truncate a full orphan list.
    """
    pool = row[1]
    if pool is not None:
        pool._ledger.append(row)
        return
    if len(_orphans) < MAX_ORPHANS:
        _orphans.append(row)
        return
    with _orphans_lock:
        if len(_orphans) >= MAX_ORPHANS:
            del _orphans[: MAX_ORPHANS // 2]
            _orphans.append((_now(), None, None, "ledger", {}, "truncated", None, (), {}))
        _orphans.append(row)


def drain_orphan_events() -> list[tuple[Any, ...]]:
    """Take (and forget) the rows recorded outside any pool; the row's pool slot is None."""
    with _orphans_lock:
        rows = _orphans[:]
        del _orphans[: len(rows)]  # rows appended meanwhile (lock-free) stay for the next drain
    return rows
