"""How the active store hears about pools, calls, stops and alerts (no cost when none is set).

The hooks are registered when a store is activated and look up the active store on every
event (`configure(store=...)` may replace it); a failure to write is reported (ERROR log,
`agentguard.store.errors` metric) and never breaks the guarded call or hides its exception.
"""

from __future__ import annotations

import atexit
import threading
import weakref
from typing import TYPE_CHECKING, Any

from .. import _config, alerts, budget, calls
from ..errors import StoreError

if TYPE_CHECKING:
    from ..alerts import Alert
    from ..budget import BudgetPool
    from ..calls import CallInfo
    from ._sqlite import SQLiteStore

__all__ = ["activate", "active_store"]

_lock = threading.Lock()
_activated: weakref.WeakSet[SQLiteStore] = weakref.WeakSet()
_atexit_registered = False


def active_store() -> SQLiteStore | None:
    from ._sqlite import SQLiteStore

    store = _config._config.store
    return store if isinstance(store, SQLiteStore) else None


def _on_created(pool: BudgetPool) -> None:
    store = active_store()
    if store is not None:
        store._track(pool)


def _on_closed(pool: BudgetPool, exc: BaseException | None) -> None:
    store = active_store()
    if store is None:
        return
    from ._sqlite import report_failure

    try:
        store._run_closed(pool, exc)
    except StoreError as err:
        report_failure(f"record the run {pool.run_id} of pool {pool.name!r}", err)


def _on_stopped(stopped: BudgetPool, error: Any, charged: BudgetPool) -> None:
    store = active_store()
    if store is None:
        return
    from ._sqlite import report_failure

    try:
        store._dead_letter(stopped, error, charged)
    except StoreError as err:
        report_failure(f"write the dead letter of pool {stopped.name!r}", err)


def _on_llm_call(info: CallInfo) -> None:
    store = active_store()
    if store is None:
        return
    from ._sqlite import report_failure

    try:
        store._call_finished(info)
    except StoreError as err:
        report_failure(f"read the cost history of route {info.route!r}", err)


def _alert_sink(alert: Alert) -> None:
    store = active_store()
    if store is not None:
        store._alert(alert)


def _add(listeners: list[Any], fn: Any) -> None:
    if fn not in listeners:
        listeners.append(fn)


def activate(store: SQLiteStore) -> None:
    """Install the hooks (idempotent) and start `store`'s writer thread."""
    global _atexit_registered
    with _lock:
        _add(budget._created_listeners, _on_created)
        _add(budget._close_listeners, _on_closed)
        _add(budget._stop_listeners, _on_stopped)
        _add(calls._llm_listeners, _on_llm_call)
        alerts._add_sink(_alert_sink)
        _activated.add(store)
        if not _atexit_registered:
            atexit.register(_flush_at_exit)
            _atexit_registered = True
    store._start_writer()


def _flush_at_exit() -> None:
    from ._sqlite import report_failure

    for store in list(_activated):
        if store._closed:
            continue
        try:
            store.close()
        except StoreError as err:
            report_failure("flush the ledger at exit", err)
