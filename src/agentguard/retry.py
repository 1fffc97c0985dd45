"""`@ag.retry`: retries that are seen, counted and alerted on, and that retry garbage too.

Three attempts turn a 50% upstream error rate into a green dashboard at 1.75x the calls, and a
`200` full of garbage is never retried at all. `@ag.retry` makes both visible:

```python
@ag.retry(route="summarize", attempts=3, on=(TimeoutError, RateLimitError),
          checks=ag.checks.NotEmpty() & ag.checks.LengthVsMedian(min_ratio=0.3),
          wait=ag.wait.exponential(initial=0.5, max=8, jitter=0.5), timeout=30)
@ag.llm_call(route="summarize")
async def summarize(doc: str) -> str: ...
```

- An attempt *fails* when it raises an exception that `on` names, or when its result fails
  `checks` (a content anomaly). A failed attempt is retried; after the last one the caller
  gets `ContentAnomaly` (the last failure was an anomaly) or `RetriesExhausted` (it was an
  exception, chained as `__cause__`), both carrying every attempt's `AttemptOutcome`. The bad
  value is never returned.
- Never retried: the terminal errors (`BudgetExceeded`, `NoActivePool`, `BudgetUnavailable`,
  `CorrectionsExhausted`), `ToolArgumentError` (it is for the model), `BaseException`s such as
  `CancelledError`, and any other agentguard error unless `on` names its class explicitly
  (`on=(Exception,)` does not retry `ContractViolation`, `RetriesExhausted`, ...). They pass
  through unchanged, as does any exception `on` does not name.
- Every attempt is visible: a span per attempt under one span per logical call, the
  `agentguard.retry.*` metrics, one ledger row per logical call (`kind="retry"`), per-route
  statistics (`retry_stats()`), a `retry.rate` alert when too many calls need a retry, and an
  optional retry budget that stops a retry storm.

Cost: a call that succeeds at its first attempt never enters tenacity and, without a tracer
provider, creates no span (about 0.9 us over the bare call, see `benchmarks/bench_retry.py`);
tenacity's `RetryCallState` and wait strategies are used from the first failure on.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import Any, TypeVar

import tenacity
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from typing_extensions import ParamSpec

from . import _config, telemetry
from ._events import append_row, record_event
from ._guards import declare_guard
from .alerts import Alert, emit_alert
from .budget import _current as _current_pool
from .budget import _now as _ledger_now
from .bypasses import active_bypass, record_bypass_use
from .checks import AllOf, Check, CheckResult, report_anomalies, run_checks
from .errors import (
    TERMINAL_ERRORS,
    AgentGuardError,
    CheckError,
    ConfigurationError,
    ContentAnomaly,
    RetriesExhausted,
    ToolArgumentError,
)
from .telemetry import active_tracer as _active_tracer
from .telemetry import tracing_enabled as _tracing
from .wait import WaitStrategy, exponential

__all__ = [
    "retry",
    "retrying",
    "RetryLoop",
    "Attempt",
    "AttemptOutcome",
    "RetryStats",
    "retry_stats",
    "summarize_retries",
    "render_retry_table",
    "audit_section",
    "set_testing",
    "is_testing",
    "OK",
    "EXCEPTION",
    "ANOMALY",
    "CHECK_ERROR",
    "CANCELLED",
]

P = ParamSpec("P")
R = TypeVar("R")

logger = logging.getLogger("agentguard")

# attempt outcomes (span attribute agentguard.outcome, metric attribute, AttemptOutcome.outcome)
OK = "ok"
EXCEPTION = "exception"
ANOMALY = "anomaly"
CHECK_ERROR = "check_error"
CANCELLED = "cancelled"

# call outcomes in ledger rows: ok / exhausted / error / check_error / cancelled
_EXHAUSTED = "exhausted"
_ERROR = "error"

_NEVER_RETRIED: tuple[type[BaseException], ...] = (*TERMINAL_ERRORS, ToolArgumentError)
RESERVOIR = 2048
"""Durations kept per route for the in-process p50/p99 (the store keeps the full history)."""

OnSpec = type[Exception] | tuple[type[Exception], ...] | Callable[[Exception], bool]
"""What to retry: an exception class, a tuple of them, or a predicate `exc -> bool`."""

_cfg = _config.get_config()  # the live configuration object (mutated in place by configure)


# -- testing mode ------------------------------------------------------------------------------


class _Testing:
    __slots__ = ("attempts",)

    def __init__(self, attempts: int | None) -> None:
        self.attempts = attempts


_testing: _Testing | None = None
_testing_lock = threading.Lock()


class _RestoreTesting:
    """Returned by `set_testing`; as a context manager, restores the previous mode on exit."""

    def __init__(self, previous: _Testing | None) -> None:
        self._previous = previous

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        global _testing
        with _testing_lock:
            _testing = self._previous


def set_testing(testing: bool, *, attempts: int | None = None) -> _RestoreTesting:
    """Turn waits off (testing mode) or back on; usable as a context manager.

    In testing mode no wait is slept: the computed wait is still recorded (spans, attempts),
    and a configured clock with an `advance(seconds)` method is advanced by it, so durations
    and `timeout=` see virtual time. `attempts`, when given, replaces every retry's
    `attempts=` while testing. Process-wide (like `stamina.set_testing`).
    """
    global _testing
    if attempts is not None and (not isinstance(attempts, int) or attempts < 1):
        raise ConfigurationError(
            f"ag.set_testing(attempts={attempts!r}): expected an int >= 1 or None."
        )
    with _testing_lock:
        previous = _testing
        _testing = _Testing(attempts) if testing else None
    return _RestoreTesting(previous)


def is_testing() -> bool:
    """True while `set_testing(True)` is in effect."""
    return _testing is not None


def _sleep(seconds: float) -> None:
    if _testing is not None:
        _advance_virtual_clock(seconds)
        return
    if seconds > 0:
        time.sleep(seconds)


async def _async_sleep(seconds: float) -> None:
    if _testing is not None:
        _advance_virtual_clock(seconds)
        await asyncio.sleep(0)  # still a suspension point: cancellation lands here
        return
    await asyncio.sleep(seconds)


def _advance_virtual_clock(seconds: float) -> None:
    advance = getattr(_cfg.clock, "advance", None)
    if advance is not None and seconds > 0:
        advance(seconds)


# -- what one attempt did ----------------------------------------------------------------------


@dataclass(frozen=True)
class AttemptOutcome:
    """One attempt of a retried call: how it ended and why (no argument values or outputs).

    `outcome` is `ok`, `exception`, `anomaly`, `check_error` or `cancelled`; `reason` is the
    exception type (and message only under `configure(record_values=True)`) or the failed
    checks' reasons; `wait_before` is the wait that preceded it (0 for the first).
    """

    number: int
    outcome: str
    reason: str | None
    error_type: str | None
    duration: float
    wait_before: float

    def describe(self) -> str:
        text = f"attempt {self.number}: {self.outcome}"
        if self.reason:
            text += f" ({self.reason})"
        text += f" after {self.duration:.3g}s"
        if self.wait_before:
            text += f", waited {self.wait_before:.3g}s before"
        return text


def _exception_reason(exc: BaseException) -> str:
    name = type(exc).__qualname__
    if _cfg.record_values:
        text = str(exc)
        if text:
            return f"{name}: {text[:160]}"
    return name


# -- per-route statistics, the retry-rate alert and the retry budget ---------------------------


@dataclass(frozen=True)
class RetryStats:
    """Retry figures of one route: in-process (`retry_stats`) or from ledger rows.

    `retry_rate` is the share of calls that needed at least one retry; `mean_attempts` the
    attempts per call (1.75 for a 50% failing upstream with 3 attempts); latencies are of the
    whole call, waits included (`p50`, `p99`), and of the first attempt alone.
    """

    route: str
    calls: int
    retried: int
    attempts: int
    failed: int
    budget_stops: int
    retry_rate: float
    mean_attempts: float
    p50: float | None
    p99: float | None
    first_p50: float | None
    first_p99: float | None


def _percentile(values: Iterable[float], q: float) -> float | None:
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, int(-(-q * len(ordered) // 1)))  # nearest rank, ceil(q * n)
    return ordered[min(rank, len(ordered)) - 1]


_FIRST_OK: tuple[int, str | None] = (1, None)
PENDING_FOLD = 256
"""First-attempt successes buffered lock-free per route before they are folded in."""


class _RouteStats:
    """Counters, a sliding window of the last calls, and the retry budget of one route."""

    def __init__(self, route: str) -> None:
        self.route = route
        self.lock = threading.Lock()
        self.calls = 0
        self.retried = 0
        self.attempts = 0
        self.failed = 0
        self.budget_stops = 0
        self.window: deque[tuple[int, str | None]] = deque()
        self.w_retried = 0
        self.w_extra = 0
        self.inflight = 0  # retries taken from the budget by calls still running
        self.alert_at: int | None = None  # self.calls when the last retry.rate alert fired
        self.budget_alert_at: int | None = None
        self.durations: deque[float] = deque(maxlen=RESERVOIR)
        self.first_durations: deque[float] = deque(maxlen=RESERVOIR)
        # durations of calls ok at their first attempt, not yet counted: appended without
        # the lock (deque.append is atomic) while no call in the window needed a retry, since
        # such a call cannot fire the alert; folded in (in order) by every locked operation
        self.pending: deque[float] = deque()
        self.limit = 100  # the window size of the last policy seen (to fold in snapshot())

    def _fold(self, limit: int) -> None:
        """Under the lock: count the buffered first-attempt successes, oldest first."""
        pending = self.pending
        k = len(pending)
        if not k:
            return
        items = [pending.popleft() for _ in range(k)]
        self.calls += k
        self.attempts += k
        self.durations.extend(items)
        self.first_durations.extend(items)
        window = self.window
        window.extend([_FIRST_OK] * min(k, limit))
        for _ in range(len(window) - limit):
            old = window.popleft()[0]
            if old > 1:
                self.w_retried -= 1
                self.w_extra -= old - 1

    def record(
        self,
        policy: _Policy,
        attempts: int,
        total: float,
        first: float,
        ok: bool,
        reason: str | None,
        budget_taken: int,
    ) -> Alert | None:
        """Add one finished call; return the retry-rate alert to emit, if this call fires it."""
        with self.lock:
            self.limit = policy.window
            if self.pending:
                self._fold(policy.window)
            self.calls += 1
            self.attempts += attempts
            if not ok:
                self.failed += 1
            self.durations.append(total)
            self.first_durations.append(first)
            self.inflight -= budget_taken
            window = self.window
            window.append((attempts, reason))
            if attempts > 1:
                self.retried += 1
                self.w_retried += 1
                self.w_extra += attempts - 1
            if len(window) > policy.window:
                old = window.popleft()[0]
                if old > 1:
                    self.w_retried -= 1
                    self.w_extra -= old - 1
            if not self.w_retried or policy.alert_rate is None:
                return None
            return self._rate_check(policy)

    def record_first_ok(self, policy: _Policy, duration: float) -> Alert | None:
        """`record()` for the commonest call: ok at its first attempt (the hot path).

        Lock-free (one deque append) while no call of the window needed a retry: such a call
        cannot fire the alert, so it is buffered and counted by the next locked operation.
        """
        if not self.w_retried:
            pending = self.pending
            pending.append(duration)
            if len(pending) >= PENDING_FOLD:
                with self.lock:
                    self._fold(policy.window)
            return None
        with self.lock:
            self.limit = policy.window
            if self.pending:
                self._fold(policy.window)
            self.calls += 1
            self.attempts += 1
            self.durations.append(duration)
            self.first_durations.append(duration)
            window = self.window
            window.append(_FIRST_OK)
            if len(window) > policy.window:
                old = window.popleft()[0]
                if old > 1:
                    self.w_retried -= 1
                    self.w_extra -= old - 1
            if not self.w_retried or policy.alert_rate is None:
                return None
            return self._rate_check(policy)

    def _rate_check(self, policy: _Policy) -> Alert | None:
        """Under the lock: the alert to fire now, if the window's retry rate is too high."""
        window = self.window
        n = len(window)
        assert policy.alert_rate is not None
        if n < policy.alert_min_calls or self.w_retried <= policy.alert_rate * n:
            return None
        if self.alert_at is not None and self.calls - self.alert_at < policy.window:
            return None
        self.alert_at = self.calls
        reasons = Counter(r for a, r in window if a > 1 and r)
        return _rate_alert(policy, n, self.w_retried, self.w_extra, reasons)

    def take_retry(self, policy: _Policy) -> tuple[bool, float, int]:
        """Take one retry from the route's budget: (allowed, allowance, retries in window)."""
        budget = policy.retry_budget
        if budget is None:
            return True, 0.0, 0
        with self.lock:
            if self.pending:
                self._fold(policy.window)
            allowance = max(float(policy.retry_budget_min), budget * len(self.window))
            used = self.w_extra + self.inflight
            if used + 1 > allowance:
                self.budget_stops += 1
                return False, allowance, used
            self.inflight += 1
            return True, allowance, used

    def budget_alert_due(self, policy: _Policy) -> bool:
        with self.lock:
            if self.pending:
                self._fold(policy.window)
            last = self.budget_alert_at
            if last is not None and self.calls - last < policy.window:
                return False
            self.budget_alert_at = self.calls
            return True

    def snapshot(self) -> RetryStats:
        with self.lock:
            if self.pending:
                self._fold(self.limit)
            calls, retried, attempts = self.calls, self.retried, self.attempts
            durations, firsts = list(self.durations), list(self.first_durations)
            failed, stops = self.failed, self.budget_stops
        return RetryStats(
            route=self.route,
            calls=calls,
            retried=retried,
            attempts=attempts,
            failed=failed,
            budget_stops=stops,
            retry_rate=retried / calls if calls else 0.0,
            mean_attempts=attempts / calls if calls else 0.0,
            p50=_percentile(durations, 0.5),
            p99=_percentile(durations, 0.99),
            first_p50=_percentile(firsts, 0.5),
            first_p99=_percentile(firsts, 0.99),
        )


_routes: dict[str, _RouteStats] = {}
_routes_lock = threading.Lock()


def _stats_for(route: str) -> _RouteStats:
    stats = _routes.get(route)
    if stats is None:
        with _routes_lock:
            stats = _routes.setdefault(route, _RouteStats(route))
    return stats


def retry_stats(route: str) -> RetryStats:
    """This process's retry figures for `route` (zeros when it never ran). Thread-safe."""
    return _stats_for(route).snapshot()


def _reset_stats() -> None:
    """Forget every route's in-process statistics (tests)."""
    with _routes_lock:
        for stats in _routes.values():
            fresh = _RouteStats(stats.route)
            with stats.lock:
                for key, value in vars(fresh).items():
                    if key != "lock":
                        setattr(stats, key, value)


def _rate_alert(
    policy: _Policy, n: int, retried: int, extra: int, reasons: Counter[str]
) -> Alert:
    route = policy.route
    rate = retried / n
    dominant, count = reasons.most_common(1)[0] if reasons else ("unknown", 0)
    return Alert(
        kind="retry.rate",
        message=(
            f"route {route!r}: {rate:.0%} of the last {n} calls needed a retry (threshold "
            f"{policy.alert_rate:.0%}); retries cost {extra} extra calls ({(n + extra) / n:.2f} "
            f"attempts per call); dominant reason: {dominant} ({count} of {retried} retried "
            f"calls). Retries are hiding an upstream failure rate: fix the upstream, not the "
            f"retry count."
        ),
        guard_id=policy.guard_id,
        route=route,
        data={
            "rate": rate,
            "threshold": policy.alert_rate,
            "window": n,
            "retried": retried,
            "extra_calls": extra,
            "mean_attempts": (n + extra) / n,
            "dominant_reason": dominant,
            "reasons": dict(reasons.most_common(5)),
        },
    )


# -- the policy of one decorator or loop --------------------------------------------------------


def _normalize_on(on: OnSpec | Iterable[type[Exception]] | None, where: str) -> tuple[
    tuple[type[Exception], ...], tuple[type[Exception], ...], Callable[[Exception], bool] | None
]:
    if on is None:
        return (), (), None
    if isinstance(on, (type, tuple, list, set, frozenset)):
        classes = (on,) if isinstance(on, type) else tuple(on)
        for cls in classes:
            if not (isinstance(cls, type) and issubclass(cls, BaseException)):
                raise ConfigurationError(
                    f"{where}: on= expects exception classes or a predicate, got {cls!r}. "
                    f"Expected e.g. on=(TimeoutError, openai.RateLimitError)."
                )
            if not issubclass(cls, Exception):
                raise ConfigurationError(
                    f"{where}: on= names {cls.__name__}, which is not an Exception subclass; "
                    f"cancellations and interrupts are never retried. Fix: remove it."
                )
            if issubclass(cls, _NEVER_RETRIED):
                raise ConfigurationError(
                    f"{where}: on= names {cls.__name__}, which agentguard never retries (a "
                    f"refused budget or an exhausted correction loop ends the run; a "
                    f"ToolArgumentError is for the model to correct). Fix: remove it."
                )
        explicit = tuple(c for c in classes if issubclass(c, AgentGuardError))
        return classes, explicit, None
    if callable(on):
        return (), (), on
    raise ConfigurationError(
        f"{where}: on= expects an exception class, a tuple of them or a predicate, got {on!r}."
    )


def _seconds(value: float | timedelta | None, what: str, where: str) -> float | None:
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not seconds > 0:
        raise ConfigurationError(f"{where}: {what}={value!r}; expected seconds > 0 or None.")
    return seconds


class _Policy:
    """Validated settings plus what the hot path needs precomputed."""

    __slots__ = (
        "alert_min_calls",
        "alert_rate",
        "attempt_attrs",
        "attempt_span_name",
        "attempts",
        "call_attrs",
        "check",
        "explicit",
        "first_attempt_attrs",
        "guard_id",
        "name",
        "on",
        "predicate",
        "retried_attrs",
        "retry_budget",
        "retry_budget_min",
        "route",
        "span_attrs_default",
        "span_name",
        "stats",
        "timeout",
        "wait",
        "window",
    )

    def __init__(
        self,
        *,
        route: str,
        attempts: int,
        on: OnSpec | Iterable[type[Exception]] | None,
        checks: Check | None,
        wait: WaitStrategy | None,
        timeout: float | timedelta | None,
        retry_budget: float | None,
        retry_budget_min: int,
        window: int,
        alert_rate: float | None,
        alert_min_calls: int,
        where: str,
    ) -> None:
        if not isinstance(route, str) or not route:
            raise ConfigurationError(f"{where}: route= must be a non-empty string, got {route!r}.")
        if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
            raise ConfigurationError(
                f"{where}: attempts={attempts!r}; expected an int >= 1 (the first attempt "
                f"included: attempts=3 is one call and at most two retries)."
            )
        self.on, self.explicit, self.predicate = _normalize_on(on, where)
        if checks is not None and not isinstance(checks, Check):
            raise ConfigurationError(
                f"{where}: checks= expects agentguard.checks.Check instances composed with & "
                f"(e.g. ag.checks.NotEmpty() & ag.checks.LengthVsMedian()), got {checks!r}."
            )
        if not self.on and self.predicate is None and checks is None:
            raise ConfigurationError(
                f"{where}: nothing to retry on. Expected on= (the exceptions worth a retry, "
                f"e.g. on=(TimeoutError, RateLimitError)) and/or checks= (content checks whose "
                f"anomalies are retried). agentguard never retries every exception by default."
            )
        if wait is not None and not callable(wait):
            raise ConfigurationError(
                f"{where}: wait= expects a wait strategy (ag.wait.exponential(), ag.wait.fixed(s), "
                f"ag.wait.none() or any tenacity wait), got {wait!r}."
            )
        if retry_budget is not None and not retry_budget > 0:
            raise ConfigurationError(
                f"{where}: retry_budget={retry_budget!r}; expected a share > 0 (0.2: retries may "
                f"add at most 20% to the route's calls) or None for no budget."
            )
        if not isinstance(window, int) or window < 1:
            raise ConfigurationError(f"{where}: window={window!r}; expected an int >= 1.")
        if alert_rate is not None and not 0 <= alert_rate < 1:
            raise ConfigurationError(
                f"{where}: alert_rate={alert_rate!r}; expected a share in [0, 1) (0.1 alerts "
                f"when more than 10% of calls need a retry) or None to turn the alert off."
            )
        self.route = route
        self.name = where
        self.attempts = attempts
        self.check = checks
        self.wait: WaitStrategy = wait if wait is not None else exponential()
        self.timeout = _seconds(timeout, "timeout", where)
        self.retry_budget = retry_budget
        self.retry_budget_min = max(0, int(retry_budget_min))
        self.window = window
        self.alert_rate = alert_rate
        self.alert_min_calls = max(1, int(alert_min_calls))
        self.guard_id = f"retry:{route}"
        self.stats = _stats_for(route)
        self.span_name = telemetry.SPAN_RETRY.format(route=route)
        self.attempt_span_name = telemetry.SPAN_RETRY_ATTEMPT.format(route=route)
        r = telemetry.ATTR.ROUTE
        o = telemetry.ATTR.OUTCOME
        self.attempt_attrs = {
            k: {r: route, o: k} for k in (OK, EXCEPTION, ANOMALY, CHECK_ERROR, CANCELLED)
        }
        self.call_attrs = {
            k: {r: route, o: k} for k in (OK, _EXHAUSTED, _ERROR, CHECK_ERROR, CANCELLED)
        }
        self.retried_attrs = {r: route}
        self.span_attrs_default: dict[str, Any] = {
            r: route,
            telemetry.ATTR.RETRY_MAX_ATTEMPTS: attempts,
        }
        self.first_attempt_attrs: dict[str, Any] = {r: route, telemetry.ATTR.ATTEMPT: 1}
        declare_guard(self.guard_id, where)
        if checks is not None:
            for c in checks.checks if isinstance(checks, AllOf) else (checks,):
                declare_guard(c.guard_id(route), where)

    def span_attrs(self) -> dict[str, Any]:
        """Attributes of the call span at its start (attempts as the testing mode sets)."""
        if _testing is not None and _testing.attempts is not None:
            return {**self.span_attrs_default, telemetry.ATTR.RETRY_MAX_ATTEMPTS: _testing.attempts}
        return self.span_attrs_default

    def max_attempts(self) -> int:
        testing = _testing
        if testing is not None and testing.attempts is not None:
            return testing.attempts
        return self.attempts

    def retryable(self, exc: BaseException) -> bool:
        """Whether `exc` ends this attempt with a retry (see the module doc for the rule)."""
        if not isinstance(exc, Exception) or isinstance(exc, _NEVER_RETRIED):
            return False
        if self.predicate is not None:
            try:
                return bool(self.predicate(exc))
            except Exception as err:
                raise ConfigurationError(
                    f"{self.name}: the on= predicate {self.predicate!r} raised "
                    f"{type(err).__name__} while judging a {type(exc).__name__} from route "
                    f"{self.route!r}. Fix the predicate: it must return True or False."
                ) from err
        if isinstance(exc, AgentGuardError):
            return bool(self.explicit) and isinstance(exc, self.explicit)
        return isinstance(exc, self.on)

    def judge(self, value: Any, duration: float) -> CheckResult:
        """Run the checks (good outputs go into the route's history); a raising check is a
        `CheckError`, never an anomaly of the output."""
        assert self.check is not None
        try:
            return run_checks(
                self.check, value, route=self.route, duration=duration, report=False
            )
        except Exception as err:
            name = _culprit(self.check, err)
            raise CheckError(
                f"content check {name} raised {type(err).__name__} while judging an output of "
                f"route {self.route!r}: the check is broken, the output was not judged and is "
                f"not passed on. Expected: evaluate() returns a CheckResult. Fix the check "
                f"(its exception is chained below).",
                route=self.route,
                check=name,
            ) from err

    def bypassed(self, verdict: CheckResult) -> bool:
        """True when every failed check is covered by an active bypass (each use recorded)."""
        entries = []
        for anomaly in verdict.anomalies:
            gid = f"checks:{self.route}.{anomaly.check}"
            entry = active_bypass(gid)
            if entry is None:
                return False
            entries.append((entry, gid, anomaly.reason))
        for entry, gid, reason in entries:
            record_bypass_use(
                entry, gid, would_have=f"would have retried: {reason}", route=self.route
            )
        return True

    def finish_first_ok(self, duration: float) -> None:
        """The fast path's bookkeeping: first attempt ok (statistics, ledger row, metrics).

        The ledger row is the one `finish()` would write, built directly (no `record_event`
        keyword call and detail copy).
        """
        alert = self.stats.record_first_ok(self, duration)
        pool = _current_pool.get()
        row: tuple[Any, ...] = (_ledger_now(), pool, self.route, "retry", {}, OK, None, (), {
            "attempts": 1, "duration": duration, "first_duration": duration,
            "guard_id": self.guard_id,
        })
        if pool is not None:
            pool._ledger.append(row)
        else:
            append_row(row)
        if telemetry.metrics_enabled():
            telemetry.counter(telemetry.METRIC.RETRY_ATTEMPTS).add(1, self.attempt_attrs[OK])
            telemetry.histogram(
                telemetry.METRIC.RETRY_DURATION, buckets=telemetry.DURATION_BUCKETS
            ).record(duration, self.call_attrs[OK])
        if alert is not None:
            emit_alert(alert)


def _culprit(check: Check, err: BaseException) -> str:
    """The innermost check whose method raised `err` (walking the traceback)."""
    name = repr(check)
    tb = err.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if isinstance(owner, Check) and type(owner).__name__ != "AllOf":
            name = repr(owner)
        tb = tb.tb_next
    return name


_retrying_object = tenacity.Retrying()


# -- one logical call, from its first failure (or from its start when tracing) -----------------


class _Call:
    """The state of one logical call: attempts so far, spans, waits; shared sync/async logic."""

    __slots__ = (
        "args",
        "attempt_span",
        "attempt_t0",
        "budget_taken",
        "clock",
        "done",
        "first_duration",
        "fn",
        "kwargs",
        "last_exc",
        "last_verdict",
        "n",
        "policy",
        "records",
        "span",
        "span_ctx",
        "state",
        "t0",
        "token",
        "wait_before",
        "wait_total",
    )

    def __init__(
        self,
        policy: _Policy,
        fn: Callable[..., Any] | None,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        t0: float,
        traced: bool,
    ) -> None:
        self.policy = policy
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.clock = _cfg.clock
        self.t0 = t0
        self.n = 0
        self.attempt_t0 = t0
        self.records: list[AttemptOutcome] = []
        self.first_duration: float | None = None
        self.wait_before = 0.0
        self.wait_total = 0.0
        self.budget_taken = 0
        self.state: tenacity.RetryCallState | None = None
        self.span: Any = None
        self.span_ctx: Any = None
        self.attempt_span: Any = None
        self.token: Any = None
        self.last_exc: BaseException | None = None
        self.last_verdict: CheckResult | None = None
        self.done = False
        if traced:
            self.span = telemetry.get_tracer().start_span(
                policy.span_name, attributes=policy.span_attrs()
            )
            self.span_ctx = trace.set_span_in_context(self.span)

    @classmethod
    def adopt(
        cls,
        policy: _Policy,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        t0: float,
        traced: _Traced | None,
    ) -> _Call:
        """The wrapper's inline first attempt did not simply succeed: take over the call
        with attempt 1 in flight (and its spans, when traced)."""
        call = cls(policy, fn, args, kwargs, t0, traced=False)
        call.n = 1
        if traced is not None:
            call.span, call.span_ctx, call.attempt_span, call.token = traced
        return call

    # -- attempt boundaries --------------------------------------------------------------------

    def begin_attempt(self) -> None:
        self.n += 1
        if self.span is not None:
            attrs: dict[str, Any] = {
                telemetry.ATTR.ROUTE: self.policy.route,
                telemetry.ATTR.ATTEMPT: self.n,
            }
            if self.n > 1:
                attrs[telemetry.ATTR.RESEND_COUNT] = self.n - 1
                attrs[telemetry.ATTR.WAIT_SECONDS] = self.wait_before
            span = telemetry.get_tracer().start_span(
                self.policy.attempt_span_name, context=self.span_ctx, attributes=attrs
            )
            self.attempt_span = span
            self.token = otel_context.attach(trace.set_span_in_context(span, self.span_ctx))
        self.attempt_t0 = self.clock.monotonic()

    def _end_attempt(
        self, outcome: str, reason: str | None, error_type: str | None, duration: float
    ) -> None:
        if self.n == 1:
            self.first_duration = duration
            if outcome is not OK:  # an ok first attempt needs no record: nobody reads it
                self.records.append(AttemptOutcome(1, outcome, reason, error_type, duration, 0.0))
        else:
            self.records.append(
                AttemptOutcome(self.n, outcome, reason, error_type, duration, self.wait_before)
            )
        span = self.attempt_span
        if span is not None:
            self.attempt_span = None
            otel_context.detach(self.token)
            attrs: dict[str, Any] = {telemetry.ATTR.OUTCOME: outcome}
            if reason is not None:
                attrs[telemetry.ATTR.REASON] = reason
            if error_type is not None:
                attrs[telemetry.ATTR.ERROR_TYPE] = error_type
                _set_error(span, f"{outcome}: {reason}")
            span.set_attributes(attrs)
            span.end()
        if telemetry.metrics_enabled():
            policy = self.policy
            telemetry.counter(telemetry.METRIC.RETRY_ATTEMPTS).add(
                1, policy.attempt_attrs[outcome]
            )

    def elapsed(self) -> float:
        return self.clock.monotonic() - self.attempt_t0

    # -- how an attempt ended ------------------------------------------------------------------

    def ok(self, duration: float) -> None:
        self._end_attempt(OK, None, None, duration)
        self.finish(OK)

    def result(self, value: Any) -> float | None:
        """The attempt returned `value`: None to return it, or the wait before a retry."""
        duration = self.elapsed()
        if self.policy.check is not None:
            verdict = self.judge(value, duration)
            if verdict is not None:
                return self.anomaly(value, verdict, duration)
        self.ok(duration)
        return None

    def judge(self, value: Any, duration: float) -> CheckResult | None:
        """None when `value` passed (or every anomaly is bypassed), else the verdict."""
        try:
            verdict = self.policy.judge(value, duration)
        except CheckError as err:
            self._end_attempt(CHECK_ERROR, str(err.check), type(err.__cause__).__name__, duration)
            self.finish(CHECK_ERROR, error_type="CheckError")
            raise
        if verdict.ok or self.policy.bypassed(verdict):
            return None
        return verdict

    def anomaly(self, value: Any, verdict: CheckResult, duration: float) -> float:
        """The attempt's output failed the checks: the wait before a retry, or raise."""
        self.last_verdict = verdict
        self.last_exc = None
        self._end_attempt(ANOMALY, "; ".join(verdict.reasons), "ContentAnomaly", duration)
        wait = self._next_wait(value, None)  # the last anomaly is reported by _stop
        if telemetry.metrics_enabled():  # a retried anomaly: the metric, no alert
            anomalies = telemetry.counter(telemetry.METRIC.ANOMALIES)
            for a in verdict.anomalies:
                anomalies.add(1, {telemetry.ATTR.ROUTE: self.policy.route,
                                  telemetry.ATTR.CHECK: a.check})
        return wait

    def exception(self, exc: BaseException) -> float | None:
        """The attempt raised `exc`: None to re-raise it unchanged, or the wait before a retry.

        Raises `RetriesExhausted` (from `exc`) when no further attempt may be made.
        """
        duration = self.elapsed()
        try:
            retry = self.policy.retryable(exc)
        except ConfigurationError:
            self._end_attempt(EXCEPTION, _exception_reason(exc), type(exc).__qualname__, duration)
            self.finish(_ERROR, error_type=type(exc).__qualname__)
            raise
        if not retry:
            cancelled = not isinstance(exc, Exception)
            outcome = CANCELLED if cancelled else EXCEPTION
            self._end_attempt(outcome, _exception_reason(exc), type(exc).__qualname__, duration)
            self.finish(
                CANCELLED if cancelled else _ERROR,
                error_type=type(exc).__qualname__,
                stop="terminal" if isinstance(exc, _NEVER_RETRIED) else "not_retryable",
            )
            return None
        self.last_exc = exc
        self.last_verdict = None
        self._end_attempt(EXCEPTION, _exception_reason(exc), type(exc).__qualname__, duration)
        return self._next_wait(None, exc)

    def abort(self, exc: BaseException) -> None:
        """A wait was interrupted (task cancelled, KeyboardInterrupt): no further attempt."""
        if self.done:
            return
        self.finish(CANCELLED, error_type=type(exc).__qualname__, stop="cancelled")

    # -- the decision to retry -----------------------------------------------------------------

    def _next_wait(self, value: Any, exc: BaseException | None) -> float:
        policy = self.policy
        n = self.n
        if n >= policy.max_attempts():
            self._stop("attempts", f"all {n} allowed attempts were used")
        state = self.state
        if state is None:
            state = self.state = tenacity.RetryCallState(
                _retrying_object, self.fn, self.args, self.kwargs
            )
        state.attempt_number = n
        if exc is not None:
            state.set_exception((type(exc), exc, exc.__traceback__))
        else:
            state.set_result(value)
        wait = float(policy.wait(state))
        state.outcome = None  # do not keep the bad value or the exception alive
        if wait < 0 or wait != wait:
            wait = 0.0
        if policy.timeout is not None:
            elapsed = self.clock.monotonic() - self.t0
            if elapsed + wait >= policy.timeout:
                self._stop(
                    "timeout",
                    f"{elapsed:.3g}s elapsed and the next wait of {wait:.3g}s would pass "
                    f"timeout={policy.timeout:g}s",
                )
        allowed, allowance, used = policy.stats.take_retry(policy)
        if not allowed:
            self._budget_exhausted(allowance, used)
        else:
            self.budget_taken += 1 if policy.retry_budget is not None else 0
        self.wait_before = wait
        self.wait_total += wait
        return wait

    def _budget_exhausted(self, allowance: float, used: int) -> None:
        policy = self.policy
        detail = (
            f"retry budget exhausted: retries already added {used} attempts to the last "
            f"{len(policy.stats.window)} calls (allowed {allowance:.0f}: "
            f"retry_budget={policy.retry_budget:g}, minimum {policy.retry_budget_min})"
        )
        if telemetry.metrics_enabled():
            telemetry.counter(telemetry.METRIC.RETRY_BUDGET_EXHAUSTED).add(
                1, policy.retried_attrs
            )
        entry = active_bypass(policy.guard_id)
        if entry is not None:
            record_bypass_use(
                entry, policy.guard_id, would_have=f"would have stopped retrying: {detail}",
                route=policy.route,
            )
            return
        if policy.stats.budget_alert_due(policy):
            emit_alert(
                Alert(
                    kind="retry.budget",
                    message=(
                        f"route {policy.route!r}: {detail}; calls now fail at their first "
                        f"failure instead of multiplying the upstream's load. Look at the "
                        f"upstream (agentguard audit shows the route's retry rate)."
                    ),
                    guard_id=policy.guard_id,
                    route=policy.route,
                    data={"allowance": allowance, "used": used, "budget": policy.retry_budget},
                )
            )
        self._stop("retry_budget", detail)

    def _stop(self, stop: str, why: str) -> None:
        """No further attempt: finish the call and raise the failure of the last attempt."""
        policy = self.policy
        exc = self.last_exc
        n = self.n
        history = "; ".join(r.describe() for r in self.records)
        if exc is not None:
            self.finish(_EXHAUSTED, error_type=type(exc).__qualname__, stop=stop)
            raise RetriesExhausted(
                f"route {policy.route!r}: {n} attempt(s) failed and no further attempt was "
                f"made: {why}. {history}. The last exception is chained below. Expected: an "
                f"attempt that succeeds. Fix: look at the upstream (`agentguard audit` and the "
                f"agentguard.retry.* metrics show this route's retry rate); raise attempts= or "
                f"timeout= only if the failures are transient.",
                route=policy.route,
                attempts=self.records,
                stop=stop,
            ) from exc
        verdict = self.last_verdict
        assert verdict is not None
        self.finish(_EXHAUSTED, error_type="ContentAnomaly", stop=stop)
        report_anomalies(
            verdict, policy.route, subject=f"the last of {n} attempt(s) of a retried call"
        )
        raise ContentAnomaly(
            f"route {policy.route!r}: the output failed its content checks at attempt {n} "
            f"and no further attempt was made: {why}. {history}. The anomalous output was not "
            f"passed on. Expected: an output that passes {policy.check!r}. Fix: look at the "
            f"upstream that produced it (expired key, empty query, truncated response).",
            route=policy.route,
            check=verdict.anomalies[0].check,
            reasons=verdict.reasons,
            details={"stop": stop, "measured": dict(verdict.measured)},
            attempts=self.records,
        )

    # -- the end of the logical call -----------------------------------------------------------

    def finish(
        self, outcome: str, *, error_type: str | None = None, stop: str | None = None
    ) -> None:
        if self.done:
            return
        self.done = True
        policy = self.policy
        total = self.clock.monotonic() - self.t0
        records = self.records
        attempts = self.n
        first = self.first_duration if self.first_duration is not None else total
        reason = None
        if records and records[0].outcome != OK:
            r0 = records[0]
            reason = r0.error_type if r0.outcome == EXCEPTION else _anomaly_key(r0.reason)
        alert = policy.stats.record(
            policy, attempts, total, first, outcome == OK, reason, self.budget_taken
        )
        detail: dict[str, Any] = {
            "attempts": attempts,
            "duration": total,
            "first_duration": first,
        }
        if attempts > 1:
            detail["wait"] = self.wait_total
        failed = [r for r in records if r.outcome != OK]
        if failed:
            detail["reasons"] = [f"{r.number}:{r.outcome}:{r.reason}" for r in failed]
        if stop is not None:
            detail["stop"] = stop
        if error_type is not None:
            detail["error.type"] = error_type
        record_event("retry", outcome=outcome, route=policy.route, guard_id=policy.guard_id,
                     detail=detail)
        if telemetry.metrics_enabled():
            telemetry.histogram(
                telemetry.METRIC.RETRY_DURATION, buckets=telemetry.DURATION_BUCKETS
            ).record(total, policy.call_attrs[outcome])
            if attempts > 1:
                telemetry.counter(telemetry.METRIC.RETRY_CALLS_RETRIED).add(
                    1, policy.retried_attrs
                )
        span = self.span
        if span is not None:
            if self.attempt_span is not None:  # interrupted inside an attempt we never ended
                otel_context.detach(self.token)
                _set_error(self.attempt_span, f"{outcome}: {error_type}")
                self.attempt_span.end()
                self.attempt_span = None
            attrs: dict[str, Any] = {
                telemetry.ATTR.RETRY_ATTEMPTS: attempts,
                telemetry.ATTR.OUTCOME: outcome,
            }
            if stop is not None:
                attrs[telemetry.ATTR.RETRY_STOP] = stop
            if error_type is not None:
                attrs[telemetry.ATTR.ERROR_TYPE] = error_type
                _set_error(span, f"{outcome} after {attempts} attempt(s): {error_type}")
            span.set_attributes(attrs)
            span.end()
        if alert is not None:
            emit_alert(alert)


def _anomaly_key(reason: str | None) -> str:
    """`NotEmpty` from `NotEmpty: the output is ''; LengthVsMedian: ...` (low cardinality)."""
    if not reason:
        return "anomaly"
    return "anomaly:" + reason.split(":", 1)[0]


def _set_error(span: Any, description: str) -> None:
    span.set_status(Status(StatusCode.ERROR, description[:200]))


# -- the loops (only the I/O edge differs between sync and async) ------------------------------


def _run_sync(call: _Call, func: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    while True:
        call.begin_attempt()
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            wait = call.exception(exc)
            if wait is None:
                raise
        else:
            wait = call.result(result)
            if wait is None:
                return result
        try:
            _sleep(wait)
        except BaseException as exc:
            call.abort(exc)
            raise


async def _run_async(
    call: _Call, func: Callable[..., Awaitable[Any]], args: Any, kwargs: Any
) -> Any:
    while True:
        call.begin_attempt()
        try:
            result = await func(*args, **kwargs)
        except BaseException as exc:
            wait = call.exception(exc)
            if wait is None:
                raise
        else:
            wait = call.result(result)
            if wait is None:
                return result
        try:
            await _async_sleep(wait)
        except BaseException as exc:
            call.abort(exc)
            raise


_Traced = tuple[Any, Any, Any, Any]
"""(call span, its context, attempt span, context token) of a traced first attempt."""


def _traced_begin(policy: _Policy, tracer: trace.Tracer) -> _Traced:
    """Start the call span and the first attempt span (made current for the attempt)."""
    attrs = policy.span_attrs_default if _testing is None else policy.span_attrs()
    span = tracer.start_span(policy.span_name, attributes=attrs)
    ctx = trace.set_span_in_context(span)
    attempt = tracer.start_span(
        policy.attempt_span_name, context=ctx, attributes=policy.first_attempt_attrs
    )
    return span, ctx, attempt, otel_context.attach(trace.set_span_in_context(attempt, ctx))


def _traced_ok(traced: _Traced) -> None:
    span, _, attempt, token = traced
    otel_context.detach(token)
    attempt.set_attributes(_ATTEMPT_OK_ATTRS)
    attempt.end()
    span.set_attributes(_CALL_OK_ATTRS)
    span.end()


_ATTEMPT_OK_ATTRS = {telemetry.ATTR.OUTCOME: OK}
_CALL_OK_ATTRS = {telemetry.ATTR.RETRY_ATTEMPTS: 1, telemetry.ATTR.OUTCOME: OK}


def _first_checked(
    policy: _Policy,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    t0: float,
    result: Any,
    duration: float,
    traced: _Traced | None,
) -> _Call | None:
    """Judge the inline first result: None when it passed (bookkeeping done), else the call
    to continue after `call.wait_before`. Raises `CheckError`, or the final failure."""
    try:
        verdict = policy.judge(result, duration)
    except CheckError:
        call = _Call.adopt(policy, fn, args, kwargs, t0, traced)
        call.judge(result, duration)  # records the check error the same way, and raises
        raise
    if verdict.ok or policy.bypassed(verdict):
        if traced is not None:
            _traced_ok(traced)
        policy.finish_first_ok(duration)
        return None
    call = _Call.adopt(policy, fn, args, kwargs, t0, traced)
    call.anomaly(result, verdict, duration)
    return call


# -- @ag.retry ---------------------------------------------------------------------------------


def retry(
    *,
    route: str | None = None,
    attempts: int = 3,
    on: OnSpec | None = None,
    checks: Check | None = None,
    wait: WaitStrategy | None = None,
    timeout: float | timedelta | None = None,
    retry_budget: float | None = None,
    retry_budget_min: int = 10,
    window: int = 100,
    alert_rate: float | None = 0.10,
    alert_min_calls: int = 20,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Retry a sync or async function on the exceptions `on` names and on content anomalies.

    Args:
        route: the route in metrics, spans, ledger rows and alerts (default: the inner
            `@ag.llm_call`/`@ag.tool_call` route, else the function's qualified name).
        attempts: attempts in all, the first included (3: at most two retries).
        on: exception classes (or a predicate `exc -> bool`) worth a retry. Terminal errors,
            `ToolArgumentError` and cancellations never are; other agentguard errors only when
            named explicitly.
        checks: content checks (`ag.checks.NotEmpty() & ...`); an anomaly is retried like an
            exception, and the anomalous output is never returned.
        wait: wait strategy (`ag.wait.*` or any tenacity wait); default
            `ag.wait.exponential(initial=0.5, max=8, jitter=0.5)`.
        timeout: seconds for all attempts and waits together (no attempt starts, and no wait
            is begun, that would end past it; a running attempt is not interrupted).
        retry_budget: at most this share of extra attempts over the route's last `window`
            calls (0.2: retries add at most 20%), with `retry_budget_min` always allowed; when
            spent, a failure is raised at once (`stop="retry_budget"`). None: no budget.
        window: calls in the sliding window of the retry-rate alert and the retry budget.
        alert_rate: the `retry.rate` alert fires (at most once per window) when more than this
            share of the window's calls needed a retry; None turns it off.
        alert_min_calls: calls needed in the window before the alert may fire.

    Raises `RetriesExhausted` (from the last exception) or `ContentAnomaly` after the last
    failed attempt, `CheckError` when a check itself raises, `ConfigurationError` for bad
    settings; anything not retried passes through unchanged. Thread-safe; the first attempt
    costs ~0.9 us over the bare call without a tracer provider (no tenacity, no span).
    """

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        meta = getattr(func, "__agentguard__", None)
        rte = route or (meta.get("route") if isinstance(meta, dict) else None)
        rte = rte or getattr(func, "__qualname__", None) or repr(func)
        policy = _Policy(
            route=rte,
            attempts=attempts,
            on=on,
            checks=checks,
            wait=wait,
            timeout=timeout,
            retry_budget=retry_budget,
            retry_budget_min=retry_budget_min,
            window=window,
            alert_rate=alert_rate,
            alert_min_calls=alert_min_calls,
            where=f"@ag.retry(route={rte!r})",
        )
        check = policy.check
        finish_ok = policy.finish_first_ok
        cfg = _cfg

        if inspect.iscoroutinefunction(func):
            afunc: Callable[..., Awaitable[Any]] = func

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                clock = cfg.clock
                tracer = _active_tracer()
                traced = None if tracer is None else _traced_begin(policy, tracer)
                t0 = clock.monotonic()
                try:
                    result = await afunc(*args, **kwargs)
                except BaseException as exc:
                    call = _Call.adopt(policy, afunc, args, kwargs, t0, traced)
                    wait = call.exception(exc)
                    if wait is None:
                        raise
                else:
                    duration = clock.monotonic() - t0
                    if check is None:
                        if traced is not None:
                            _traced_ok(traced)
                        finish_ok(duration)
                        return result
                    checked = _first_checked(
                        policy, afunc, args, kwargs, t0, result, duration, traced
                    )
                    if checked is None:
                        return result
                    call, wait = checked, checked.wait_before
                try:
                    await _async_sleep(wait)
                except BaseException as err:
                    call.abort(err)
                    raise
                return await _run_async(call, afunc, args, kwargs)

            async_wrapper.__agentguard_retry__ = policy  # type: ignore[attr-defined]
            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            clock = cfg.clock
            tracer = _active_tracer()
            traced = None if tracer is None else _traced_begin(policy, tracer)
            t0 = clock.monotonic()
            try:
                result = func(*args, **kwargs)
            except BaseException as exc:
                call = _Call.adopt(policy, func, args, kwargs, t0, traced)
                wait = call.exception(exc)
                if wait is None:
                    raise
            else:
                duration = clock.monotonic() - t0
                if check is None:
                    if traced is not None:
                        _traced_ok(traced)
                    finish_ok(duration)
                    return result
                checked = _first_checked(
                    policy, func, args, kwargs, t0, result, duration, traced
                )
                if checked is None:
                    return result
                call, wait = checked, checked.wait_before
            try:
                _sleep(wait)
            except BaseException as err:
                call.abort(err)
                raise
            return _run_sync(call, func, args, kwargs)

        wrapper.__agentguard_retry__ = policy  # type: ignore[attr-defined]
        return wrapper

    return decorate


# -- the loop form: for attempt in ag.retrying(...): with attempt: ... -------------------------


class Attempt:
    """One attempt of a `retrying()` loop; use as `with attempt:` around the attempt's code.

    With `checks=`, pass the attempt's result through `attempt.check(value)`; an exception the
    loop retries is suppressed by the `with` block, any other passes through.
    """

    __slots__ = ("_call", "_checked", "_entered", "_exited", "_raised", "_value", "_verdict")

    def __init__(self, call: _Call) -> None:
        self._call = call
        self._entered = False
        self._exited = False
        self._checked = False
        self._value: Any = None
        self._verdict: CheckResult | None = None
        self._raised: ContentAnomaly | None = None

    @property
    def number(self) -> int:
        """This attempt's number (1 for the first)."""
        return self._call.n

    def __enter__(self) -> Attempt:
        if self._entered:
            raise ConfigurationError(
                f"ag.retrying(route={self._call.policy.route!r}): an attempt was entered twice; "
                f"use each attempt in exactly one `with attempt:` block."
            )
        self._entered = True
        self._call.begin_attempt()
        return self

    def check(self, value: R) -> R:
        """Run the loop's checks on `value`: return it, or raise to fail this attempt."""
        call = self._call
        if call.policy.check is None:
            raise ConfigurationError(
                f"ag.retrying(route={call.policy.route!r}): attempt.check() was called but the "
                f"loop has no checks=. Fix: pass checks=ag.checks.NotEmpty() (or others)."
            )
        self._checked = True
        verdict = call.judge(value, call.elapsed())
        if verdict is None:
            return value
        self._value = value
        self._verdict = verdict
        anomaly = ContentAnomaly(
            f"route {call.policy.route!r}: attempt {call.n} failed its content checks: "
            + "; ".join(verdict.reasons),
            route=call.policy.route,
            check=verdict.anomalies[0].check,
            reasons=verdict.reasons,
        )
        self._raised = anomaly
        raise anomaly

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        self._exited = True
        call = self._call
        if call.done:  # the call ended inside the block (a CheckError)
            return False
        if exc is None:
            if call.policy.check is not None and not self._checked:
                call._end_attempt(CHECK_ERROR, "attempt.check() never called", None, 0.0)
                call.finish(CHECK_ERROR, error_type="ConfigurationError")
                raise ConfigurationError(
                    f"ag.retrying(route={call.policy.route!r}) has checks= but attempt "
                    f"{call.n} ended without attempt.check(value): its output was never "
                    f"judged. Fix: `result = attempt.check(compute())` inside the block."
                )
            call.ok(call.elapsed())
            return False
        if exc is self._raised and self._verdict is not None:
            call.wait_before = call.anomaly(self._value, self._verdict, call.elapsed())
            self._value = None
            return True
        return call.exception(exc) is not None


class _Attempts:
    """Iterator over the attempts of one logical call (sync and async share this state)."""

    def __init__(self, policy: _Policy) -> None:
        self.policy = policy
        self.call: _Call | None = None
        self.current: Attempt | None = None

    def _advance(self) -> tuple[Attempt | None, float]:
        """The next attempt and the wait before it; None when the call is over."""
        if self.call is None:
            clock = _cfg.clock
            self.call = _Call(self.policy, None, (), {}, clock.monotonic(), traced=_tracing())
            self.current = Attempt(self.call)
            return self.current, 0.0
        current = self.current
        assert current is not None
        if not current._exited:
            error = ConfigurationError(
                f"ag.retrying(route={self.policy.route!r}): attempt {self.call.n} was not used "
                f"as `with attempt:`; its outcome is unknown, so the loop cannot go on. Fix: "
                f"put the attempt's code inside `with attempt:`."
            )
            self.call.finish(_ERROR, error_type="ConfigurationError")
            raise error
        if self.call.done:
            return None, 0.0
        self.current = Attempt(self.call)
        return self.current, self.call.wait_before

    def __iter__(self) -> Iterator[Attempt]:
        return self

    def __next__(self) -> Attempt:
        attempt, wait = self._advance()
        if attempt is None:
            raise StopIteration
        if attempt._call.n:
            try:
                _sleep(wait)
            except BaseException as exc:
                attempt._call.abort(exc)
                raise
        return attempt

    def __aiter__(self) -> AsyncIterator[Attempt]:
        return self

    async def __anext__(self) -> Attempt:
        attempt, wait = self._advance()
        if attempt is None:
            raise StopAsyncIteration
        if attempt._call.n:
            try:
                await _async_sleep(wait)
            except BaseException as exc:
                attempt._call.abort(exc)
                raise
        return attempt


class RetryLoop:
    """A reusable retry policy for code blocks: each `for`/`async for` is one logical call."""

    def __init__(self, policy: _Policy) -> None:
        self._policy = policy

    @property
    def route(self) -> str:
        return self._policy.route

    def __iter__(self) -> Iterator[Attempt]:
        return _Attempts(self._policy)

    def __aiter__(self) -> AsyncIterator[Attempt]:
        return _Attempts(self._policy)


def retrying(
    *,
    route: str,
    attempts: int = 3,
    on: OnSpec | None = None,
    checks: Check | None = None,
    wait: WaitStrategy | None = None,
    timeout: float | timedelta | None = None,
    retry_budget: float | None = None,
    retry_budget_min: int = 10,
    window: int = 100,
    alert_rate: float | None = 0.10,
    alert_min_calls: int = 20,
) -> RetryLoop:
    """The loop form of `@ag.retry` for a block of code (same arguments, same telemetry).

    ```python
    for attempt in ag.retrying(route="fetch", on=TimeoutError, checks=ag.checks.NotEmpty()):
        with attempt:
            rows = attempt.check(fetch_rows())
    ```

    `async for` works the same and waits with `asyncio.sleep`. After the last failed attempt
    the loop raises `RetriesExhausted` or `ContentAnomaly`; a non-retried exception leaves
    the loop unchanged. Build it once and reuse it: each iteration of it is one logical call.
    """
    return RetryLoop(
        _Policy(
            route=route,
            attempts=attempts,
            on=on,
            checks=checks,
            wait=wait,
            timeout=timeout,
            retry_budget=retry_budget,
            retry_budget_min=retry_budget_min,
            window=window,
            alert_rate=alert_rate,
            alert_min_calls=alert_min_calls,
            where=f"ag.retrying(route={route!r})",
        )
    )


# -- reports from ledger rows ------------------------------------------------------------------


def _row_fields(row: Any) -> tuple[Any, Any, Any, Any]:
    """(kind, route, outcome, detail) of a `LedgerRow`, a mapping, or a raw ledger tuple."""
    if isinstance(row, Mapping):
        kind, route, outcome, detail = (
            row.get("kind"), row.get("route"), row.get("outcome"), row.get("detail")
        )
    elif hasattr(row, "kind"):
        kind, route, outcome, detail = row.kind, row.route, row.outcome, row.detail
    else:
        _, _, route, kind, _, outcome, _, _, detail = row
    if isinstance(detail, (str, bytes)):
        try:
            detail = json.loads(detail)
        except ValueError:
            detail = None
    return kind, route, outcome, detail


def summarize_retries(rows: Iterable[Any]) -> dict[str, RetryStats]:
    """Per-route retry figures from ledger rows (`kind == "retry"`; other rows are skipped).

    Accepts `LedgerRow`s, mappings with `kind`/`route`/`outcome`/`detail` (detail may be a
    JSON string, as a store keeps it) or raw ledger tuples.
    """
    acc: dict[str, dict[str, Any]] = {}
    for row in rows:
        kind, route, outcome, detail = _row_fields(row)
        if kind != "retry" or not isinstance(detail, Mapping):
            continue
        a = acc.setdefault(
            str(route),
            {"calls": 0, "retried": 0, "attempts": 0, "failed": 0, "stops": 0, "d": [], "f": []},
        )
        n = int(detail.get("attempts", 1))
        a["calls"] += 1
        a["attempts"] += n
        a["retried"] += n > 1
        a["failed"] += outcome != OK
        a["stops"] += detail.get("stop") == "retry_budget"
        if detail.get("duration") is not None:
            a["d"].append(float(detail["duration"]))
        if detail.get("first_duration") is not None:
            a["f"].append(float(detail["first_duration"]))
    return {
        route: RetryStats(
            route=route,
            calls=a["calls"],
            retried=a["retried"],
            attempts=a["attempts"],
            failed=a["failed"],
            budget_stops=a["stops"],
            retry_rate=a["retried"] / a["calls"],
            mean_attempts=a["attempts"] / a["calls"],
            p50=_percentile(a["d"], 0.5),
            p99=_percentile(a["d"], 0.99),
            first_p50=_percentile(a["f"], 0.5),
            first_p99=_percentile(a["f"], 0.99),
        )
        for route, a in sorted(acc.items())
    }


def _fmt_s(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 0.001:
        return f"{value * 1e6:.0f} us"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    return f"{value:.2f} s"


_TABLE_HEADER = (
    "route", "calls", "retried", "attempts/call", "failed",
    "p50 first", "p50 after", "p99 first", "p99 after",
)


def _table_rows(stats: Mapping[str, RetryStats]) -> list[tuple[str, ...]]:
    return [
        (
            s.route,
            str(s.calls),
            f"{s.retry_rate:.1%}",
            f"{s.mean_attempts:.3f}",
            f"{s.failed / s.calls:.1%}",
            _fmt_s(s.first_p50),
            _fmt_s(s.p50),
            _fmt_s(s.first_p99),
            _fmt_s(s.p99),
        )
        for s in stats.values()
    ]


def render_retry_table(rows: Iterable[Any]) -> str:
    """The per-route retry table of `agentguard audit`, from ledger rows (see
    `summarize_retries` for the row shapes): calls, retry rate, mean attempts per call,
    failed calls, and p50/p99 latency of the first attempt vs the whole call after retries."""
    stats = summarize_retries(rows)
    if not stats:
        return "retries: no retried routes recorded (no @ag.retry call has run)."
    lines = [_TABLE_HEADER, *_table_rows(stats)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(_TABLE_HEADER))]
    out = []
    for line in lines:
        cells = [line[0].ljust(widths[0])]
        cells += [cell.rjust(w) for cell, w in zip(line[1:], widths[1:], strict=True)]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)


def audit_section(ctx: Any) -> Any:
    """The `agentguard audit` section: per-route retry figures from the store's `retry` rows.

    `ctx` is an `agentguard._audit.AuditContext`; returns an `AuditSection`.
    """
    from ._audit import AuditSection

    stats = summarize_retries(ctx.store.ledger(kind="retry", since=ctx.since))
    calls = sum(s.calls for s in stats.values())
    retried = sum(s.retried for s in stats.values())
    attempts = sum(s.attempts for s in stats.values())
    summary = (
        f"{calls} call(s) on {len(stats)} route(s), {retried} needed a retry"
        + (f", {attempts / calls:.3f} attempts per call" if calls else "")
    )
    return AuditSection(
        title="Retries (@ag.retry)",
        summary=summary,
        columns=tuple(h.upper() for h in _TABLE_HEADER),
        rows=_table_rows(stats),
        note=(
            "latency 'after' is the whole call, retries and backoff included; 'first' is the "
            "first attempt alone"
        )
        if stats
        else None,
    )
