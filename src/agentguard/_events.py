"""Ledger rows for what is not a charge: bypass uses, correction rounds, anomalies, alerts.

`record_event()` appends to the active pool's ledger (so the run's record is complete) or,
outside any pool, to a process-level list that the store drains the same way.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from .budget import _current, _now

__all__ = ["record_event", "drain_orphan_events"]

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
    with _orphans_lock:
        if len(_orphans) >= MAX_ORPHANS:
            del _orphans[: MAX_ORPHANS // 2]
            _orphans.append((_now(), None, None, "ledger", {}, "truncated", None, (), {}))
        _orphans.append(row)


def drain_orphan_events() -> list[tuple[Any, ...]]:
    """Take (and forget) the rows recorded outside any pool; the row's pool slot is None."""
    with _orphans_lock:
        rows = list(_orphans)
        _orphans.clear()
    return rows
