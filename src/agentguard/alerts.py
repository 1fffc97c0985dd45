"""Alerts: one mechanism for every warning that must reach a human before the bill does.

`on_alert(callback)` registers a sync or async callback. Every alert is also a WARNING on the
`agentguard` logger and an `agentguard.alerts` metric; the store (when configured) records it
as a ledger row. A callback that raises is reported (ERROR log with traceback and the
`agentguard.alert_hook.failures` metric), never swallowed, and never breaks the guarded call.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from . import _config, telemetry

__all__ = ["Alert", "AlertCallback", "on_alert", "emit_alert", "remove_alert_hook"]

logger = logging.getLogger("agentguard")


@dataclass(frozen=True)
class Alert:
    """Something a human should know now, not at the end of the day.

    `kind` is stable and machine-readable (`budget.warn`, `budget.stopped`, `budget.overrun`,
    `cost.outlier`, `content.anomaly`, `retry.rate`, `bypass.expired`, ...); `guard_id` names
    the guard; `data` holds the figures (never argument values or outputs unless the user
    opted in with `configure(record_values=True)`).
    """

    kind: str
    message: str
    guard_id: str | None = None
    pool: str | None = None
    route: str | None = None
    run_id: str | None = None
    severity: str = "warning"
    data: Mapping[str, Any] = field(default_factory=dict)
    at: datetime | None = None


AlertCallback = Callable[[Alert], Awaitable[None] | None]

_hooks: list[AlertCallback] = []
_sinks: list[Callable[[Alert], None]] = []  # internal: the store, tests
_hooks_lock = threading.Lock()
_pending: set[asyncio.Task[None]] = set()


def on_alert(callback: AlertCallback) -> AlertCallback:
    """Register `callback(alert)` (sync or async); usable as a decorator. Returns it."""
    if not callable(callback):
        raise TypeError(f"on_alert() expects a callable taking an Alert, got {callback!r}")
    with _hooks_lock:
        _hooks.append(callback)
    return callback


def remove_alert_hook(callback: AlertCallback) -> None:
    """Unregister a callback given to `on_alert` (ValueError if it was not registered)."""
    with _hooks_lock:
        _hooks.remove(callback)


def _add_sink(sink: Callable[[Alert], None]) -> None:
    with _hooks_lock:
        if sink not in _sinks:
            _sinks.append(sink)


def _remove_sink(sink: Callable[[Alert], None]) -> None:
    with _hooks_lock:
        if sink in _sinks:
            _sinks.remove(sink)


def _report_hook_failure(callback: object, alert: Alert, exc: BaseException) -> None:
    failures = telemetry.counter(telemetry.METRIC.ALERT_HOOK_FAILURES)
    failures.add(1, {"agentguard.alert.kind": alert.kind})
    logger.error(
        "agentguard alert hook %r raised %s while handling alert %r (%s); the guarded call "
        "was not affected. Fix the hook: alerts it should have delivered may be lost.",
        callback,
        type(exc).__name__,
        alert.kind,
        alert.message,
        exc_info=(type(exc), exc, exc.__traceback__),
    )


def _task_done(callback: object, alert: Alert) -> Callable[[asyncio.Task[None]], None]:
    def done(task: asyncio.Task[None]) -> None:
        _pending.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            _report_hook_failure(callback, alert, exc)

    return done


def emit_alert(alert: Alert) -> None:
    """Deliver an alert: WARNING log, metric, internal sinks, then user hooks.

    Never raises because of a hook; async hooks run as tasks on the running loop, or to
    completion on a private loop when called from sync code with no loop running.
    """
    if alert.at is None:
        object.__setattr__(alert, "at", _config.get_config().clock.now())
    log = logger.error if alert.severity == "error" else logger.warning
    log("agentguard alert [%s] %s", alert.kind, alert.message)
    telemetry.counter(telemetry.METRIC.ALERTS).add(1, {"agentguard.alert.kind": alert.kind})
    with _hooks_lock:
        sinks = list(_sinks)
        hooks = list(_hooks)
    for sink in sinks:
        try:
            sink(alert)
        except Exception as exc:  # noqa: BLE001 - reported, never breaks the guarded call
            _report_hook_failure(sink, alert, exc)
    for hook in hooks:
        try:
            result = hook(alert)
            if inspect.isawaitable(result):
                _run_awaitable(hook, alert, result)
        except Exception as exc:  # noqa: BLE001 - reported, never breaks the guarded call
            _report_hook_failure(hook, alert, exc)


def _run_awaitable(hook: object, alert: Alert, awaitable: Awaitable[None]) -> None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is not None:
        async def run() -> None:
            await awaitable

        task = loop.create_task(run())
        _pending.add(task)
        task.add_done_callback(_task_done(hook, alert))
        return

    async def run_now() -> None:
        await awaitable

    asyncio.run(run_now())
