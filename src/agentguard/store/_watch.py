"""Cost outliers: a call or a run costing far more than its usual fires an alert at once.

After each guarded LLM call, its cost and tokens are compared with the median of the last
values for the same route (history kept in memory, loaded from the store once per key and
refreshed every `REFRESH_SECONDS`); the run's running total is compared with the median of
earlier complete runs of the same root pool name, so a run alerts while it is still going.
Values are queued for the store and written behind. Cost: a dict lookup and a median of at
most `history_window` floats per LLM call; tool calls never reach this code.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from typing import TYPE_CHECKING

from ..alerts import Alert, emit_alert

if TYPE_CHECKING:
    from ..budget import BudgetPool
    from ..calls import CallInfo
    from ._records import RunRecord
    from ._sqlite import SQLiteStore

__all__ = ["CostWatch", "CALL_COST", "CALL_TOKENS", "RUN_COST", "RUN_TOKENS"]

CALL_COST = "call_cost_usd"
CALL_TOKENS = "call_tokens"
RUN_COST = "run_cost_usd"
RUN_TOKENS = "run_tokens"
REFRESH_SECONDS = 300.0
MAX_ALERTED_RUNS = 10_000


class CostWatch:
    """In-memory medians per (key, metric) for the cost-outlier alert. Thread-safe."""

    def __init__(self, store: SQLiteStore) -> None:
        self._store = store
        self._windows: dict[tuple[str, str], deque[float]] = {}
        self._loaded: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self._alerted: set[tuple[str, str]] = set()
        self._alerted_order: deque[tuple[str, str]] = deque()

    def _window(self, key: str, metric: str) -> deque[float]:
        k = (key, metric)
        window = self._windows.get(k)
        now = time.monotonic()
        if window is not None and now - self._loaded[k] < REFRESH_SECONDS:
            return window
        stored = list(self._store.history.values(key, metric))
        stored += self._store.pending_history(key, metric)
        window = deque(stored, maxlen=self._store.history_window)
        with self._lock:
            self._windows[k] = window
            self._loaded[k] = now
        return window

    def _judge(
        self, key: str, metric: str, value: float, window: deque[float]
    ) -> tuple[float, int] | None:
        """(median, size) when `value` exceeds ratio x median of a long enough window."""
        if len(window) < self._store.outlier_min_history:
            return None
        median = statistics.median(window)
        if median > 0 and value > self._store.outlier_ratio * median:
            return median, len(window)
        return None

    def _first_alert(self, run_id: str, what: str) -> bool:
        key = (run_id, what)
        with self._lock:
            if key in self._alerted:
                return False
            self._alerted.add(key)
            self._alerted_order.append(key)
            if len(self._alerted_order) > MAX_ALERTED_RUNS:
                self._alerted.discard(self._alerted_order.popleft())
        return True

    def _observe(self, key: str, metric: str, value: float) -> tuple[float, int] | None:
        window = self._window(key, metric)
        verdict = self._judge(key, metric, value, window)
        window.append(value)
        self._store._queue_history(key, metric, value)
        return verdict

    def observe_call(self, info: CallInfo) -> None:
        """After an LLM call: compare its cost and tokens, then the run's total so far."""
        if info.outcome != "ok":
            return
        route = info.route or info.name
        pool = info.pool
        measures: list[tuple[str, float, str]] = []
        if info.cost_usd is not None and "cost_unknown" not in info.flags:
            measures.append((CALL_COST, float(info.cost_usd), "cost"))
        usage = info.usage
        if usage is not None and "usage_unknown" not in info.flags and usage.total is not None:
            measures.append((CALL_TOKENS, float(usage.total), "tokens"))
        for metric, value, label in measures:
            verdict = self._observe(route, metric, value)
            if verdict is not None:
                median, n = verdict
                _alert(
                    f"an LLM call on route {route!r} used {_fmt(value, label)}, "
                    f"{value / median:.1f}x the median {_fmt(median, label)} of its last {n} "
                    f"calls (threshold {self._store.outlier_ratio:g}x)",
                    scope="call",
                    label=label,
                    route=route,
                    pool=pool,
                    value=value,
                    median=median,
                    ratio=self._store.outlier_ratio,
                )
        self._check_run_so_far(pool.root)

    def _check_run_so_far(self, root: BudgetPool) -> None:
        spent = root._spent
        for metric, value, label in (
            (RUN_COST, spent.get("cost_usd", 0.0), "cost"),
            (RUN_TOKENS, spent.get("total_tokens", 0.0), "tokens"),
        ):
            if not value:
                continue
            verdict = self._judge(root.name, metric, value, self._window(root.name, metric))
            if verdict is not None and self._first_alert(root.run_id, metric):
                median, n = verdict
                _alert(
                    f"run {root.run_id} of {root.name!r} has already used "
                    f"{_fmt(value, label)} and is still going: {value / median:.1f}x the median "
                    f"{_fmt(median, label)} of its last {n} runs (threshold "
                    f"{self._store.outlier_ratio:g}x)",
                    scope="run",
                    label=label,
                    route=None,
                    pool=root,
                    value=value,
                    median=median,
                    ratio=self._store.outlier_ratio,
                )

    def run_closed(self, root: BudgetPool, record: RunRecord) -> None:
        """At the end of a run: compare its totals (unless already alerted), add them to history."""
        for metric, value, label in (
            (RUN_COST, record.cost_usd, "cost"),
            (RUN_TOKENS, record.tokens, "tokens"),
        ):
            if not value:
                continue
            verdict = self._observe(root.name, metric, float(value))
            if verdict is not None and self._first_alert(root.run_id, metric):
                median, n = verdict
                _alert(
                    f"run {root.run_id} of {root.name!r} used {_fmt(float(value), label)}, "
                    f"{float(value) / median:.1f}x the median {_fmt(median, label)} of its last "
                    f"{n} runs (threshold {self._store.outlier_ratio:g}x)",
                    scope="run",
                    label=label,
                    route=None,
                    pool=root,
                    value=float(value),
                    median=median,
                    ratio=self._store.outlier_ratio,
                )


def _fmt(value: float, label: str) -> str:
    if label == "cost":
        return f"${value:.4g}"
    return f"{value:,.0f} tokens"


def _alert(
    message: str,
    *,
    scope: str,
    label: str,
    route: str | None,
    pool: BudgetPool,
    value: float,
    median: float,
    ratio: float,
) -> None:
    emit_alert(
        Alert(
            kind="cost.outlier",
            message=message + ". Look at this run's ledger (agentguard audit) for the calls "
            "that used it.",
            guard_id=f"cost:{route or pool.root.name}",
            pool=pool.name,
            route=route,
            run_id=pool.run_id,
            data={
                "scope": scope,
                "measure": label,
                "value": value,
                "median": median,
                "ratio": value / median,
                "threshold": ratio,
            },
        )
    )
