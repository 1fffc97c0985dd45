"""@ag.retry / ag.retrying: every retry visible, content anomalies retried, terminal errors not.

Real components throughout: the OTel SDK with in-memory exporters (tests/otel.py), real
BudgetPools and @ag.llm_call, real bypass entries, tenacity's own wait objects. Time is virtual
(a Clock with `advance`, and the testing mode that turns waits into clock advances).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import random
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import tenacity
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import agentguard as ag
from agentguard import _config, telemetry
from agentguard._events import drain_orphan_events
from agentguard.checks import Check, CheckContext, CheckResult

from . import otel

retry_mod = sys.modules["agentguard.retry"]


class VirtualClock(ag.Clock):
    """Monotonic time that moves only when told (the testing mode advances it by waits)."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.lock = threading.Lock()

    def monotonic(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.t += seconds


@pytest.fixture(autouse=True)
def _fresh_retry_state() -> Iterator[None]:
    retry_mod._reset_stats()
    drain_orphan_events()
    yield
    retry_mod._reset_stats()
    ag.set_testing(False)


@pytest.fixture
def clock() -> Iterator[VirtualClock]:
    vc = VirtualClock()
    restore = _config._set_clock(vc)
    yield vc
    restore()


@pytest.fixture
def route(request: pytest.FixtureRequest) -> str:
    """A route unique to the test: history, stats and metric points do not leak between tests."""
    return "r." + request.node.name.replace("[", ".").replace("]", "")


class Upstream:
    """A deterministic flaky upstream: fails with probability `p` (seeded), counts calls."""

    def __init__(self, p: float = 0.5, seed: int = 7, clock: VirtualClock | None = None,
                 latency: float = 0.0) -> None:
        self.rng = random.Random(seed)
        self.p = p
        self.calls = 0
        self.clock = clock
        self.latency = latency

    def __call__(self) -> str:
        self.calls += 1
        if self.clock is not None:
            self.clock.advance(self.latency)
        if self.rng.random() < self.p:
            raise TimeoutError("upstream timed out")
        return "a good summary " * 20


def _spans(exporter: Any, name: str) -> list[Any]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


# -- the catalog failure: a 50% failing upstream behind 3 attempts looks green ---------------


@pytest.mark.parametrize(("attempts", "mean"), [(3, 1.75), (4, 1.875)])
def test_fifty_percent_failing_upstream_is_seen_in_spans_metrics_stats_and_alerts(
    route: str, attempts: int, mean: float, captured_alerts: list[ag.Alert]
) -> None:
    exporter, reader = otel.install()
    exporter.clear()
    upstream = Upstream(p=0.5, seed=2024)
    fired_at: list[int] = []
    ag.on_alert(lambda a: fired_at.append(ag.retry_stats(route).calls))

    @ag.retry(route=route, attempts=attempts, on=TimeoutError, wait=ag.wait.exponential())
    def summarize() -> str:
        return upstream()

    ok = failed = 0
    with ag.set_testing(True):
        for _ in range(1000):
            try:
                summarize()
                ok += 1
            except ag.RetriesExhausted as err:
                failed += 1
                assert isinstance(err.__cause__, TimeoutError)
                assert [a.outcome for a in err.attempts] == ["exception"] * attempts

    stats = ag.retry_stats(route)
    assert stats.calls == 1000
    assert stats.attempts == upstream.calls
    assert stats.retry_rate == pytest.approx(0.5, abs=0.05)
    assert stats.mean_attempts == pytest.approx(mean, abs=0.06)
    assert failed / 1000 == pytest.approx(0.5**attempts, abs=0.03)

    # spans: one call span per logical call, one attempt span per upstream call, nested
    calls = _spans(exporter, f"retry {route}")
    tries = _spans(exporter, f"attempt {route}")
    assert len(calls) == 1000
    assert len(tries) == upstream.calls
    call_ids = {s.context.span_id for s in calls}
    assert all(t.parent is not None and t.parent.span_id in call_ids for t in tries)
    first = [t for t in tries if t.attributes["agentguard.retry.attempt"] == 1]
    later = [t for t in tries if t.attributes["agentguard.retry.attempt"] > 1]
    assert len(first) == 1000
    assert all("http.request.resend_count" not in t.attributes for t in first)
    assert all(
        t.attributes["http.request.resend_count"] == t.attributes["agentguard.retry.attempt"] - 1
        for t in later
    )
    assert all(t.attributes["agentguard.retry.wait_seconds"] > 0 for t in later)
    failed_tries = [t for t in tries if t.attributes["agentguard.outcome"] == "exception"]
    assert len(failed_tries) == upstream.calls - ok
    assert all(t.attributes["error.type"] == "TimeoutError" for t in failed_tries)
    assert sum(1 for c in calls if c.attributes["agentguard.retry.attempts"] > 1) == stats.retried

    # metrics
    assert otel.counter_total(
        reader, "agentguard.retry.attempts",
        **{"agentguard.route": route, "agentguard.outcome": "ok"},
    ) == ok
    assert otel.counter_total(
        reader, "agentguard.retry.attempts",
        **{"agentguard.route": route, "agentguard.outcome": "exception"},
    ) == upstream.calls - ok
    assert otel.counter_total(
        reader, "agentguard.retry.calls_retried", **{"agentguard.route": route}
    ) == stats.retried
    points = [
        p for p in otel.metric_points(reader, "agentguard.retry.duration")
        if p.attributes.get("agentguard.route") == route
    ]
    assert sum(p.count for p in points) == 1000
    assert max(points[0].explicit_bounds) >= 600  # buckets reach minutes

    # exactly one retry.rate alert per window of 100 calls (the first once 20 calls are in)
    rate_alerts = [a for a in captured_alerts if a.kind == "retry.rate"]
    assert len(rate_alerts) == 10
    assert fired_at == [20 + 100 * i for i in range(10)]
    alert = rate_alerts[-1]
    assert alert.route == route and alert.guard_id == f"retry:{route}"
    assert alert.data["dominant_reason"] == "TimeoutError"
    assert alert.data["rate"] == pytest.approx(0.5, abs=0.15)
    assert alert.data["extra_calls"] > 0


def test_the_retry_rate_alert_stays_quiet_below_its_threshold(
    route: str, captured_alerts: list[ag.Alert]
) -> None:
    upstream = Upstream(p=0.05, seed=3)

    @ag.retry(route=route, on=TimeoutError, alert_rate=0.10)
    def call() -> str:
        return upstream()

    with ag.set_testing(True):
        for _ in range(500):
            call()
    assert 0 < ag.retry_stats(route).retried < 0.1 * 500
    assert [a for a in captured_alerts if a.kind == "retry.rate"] == []


# -- content anomalies are retry triggers -----------------------------------------------------


GOOD = "The quarter closed with revenue up 12% on the year. " * 8  # ~420 characters


@pytest.mark.parametrize(
    "garbage", ["", {"results": []}, "Summary: ok."], ids=["empty", "no-results", "12-chars"]
)
def test_garbage_first_response_is_retried_and_the_good_second_answer_returned(
    route: str, garbage: Any, captured_alerts: list[ag.Alert]
) -> None:
    exporter, _ = otel.install()
    answers = iter([garbage, GOOD])
    served: list[Any] = []

    @ag.retry(
        route=route,
        attempts=3,
        on=TimeoutError,
        checks=ag.checks.NotEmpty() & ag.checks.LengthVsMedian(min_ratio=0.3),
        wait=ag.wait.fixed(1),
    )
    def summarize(learning: bool = False) -> Any:
        value = GOOD if learning else next(answers)
        served.append(value)
        return value

    with ag.set_testing(True):
        for _ in range(6):  # the route's usual length is learnt from good outputs
            summarize(learning=True)
        exporter.clear()
        served.clear()
        assert summarize() == GOOD
    assert served == [garbage, GOOD]
    tries = sorted(_spans(exporter, f"attempt {route}"), key=lambda s: s.start_time)
    assert [t.attributes["agentguard.outcome"] for t in tries] == ["anomaly", "ok"]
    reason = tries[0].attributes["agentguard.reason"]
    assert ("NotEmpty" in reason) if garbage != "Summary: ok." else ("LengthVsMedian" in reason)
    assert tries[0].attributes["error.type"] == "ContentAnomaly"
    stats = ag.retry_stats(route)
    assert (stats.calls, stats.retried, stats.failed) == (7, 1, 0)
    # a recovered anomaly is a retry (spans, metrics, the retry row), not a content alert
    assert [a for a in captured_alerts if a.kind == "content.anomaly"] == []


def test_all_garbage_ends_in_content_anomaly_never_the_value(
    route: str, captured_alerts: list[ag.Alert]
) -> None:
    upstream_calls = 0

    @ag.retry(route=route, attempts=3, checks=ag.checks.NotEmpty())
    def fetch() -> dict[str, list[int]]:
        nonlocal upstream_calls
        upstream_calls += 1
        return {"results": []}

    with ag.set_testing(True), pytest.raises(ag.ContentAnomaly) as caught:
        fetch()
    err = caught.value
    assert upstream_calls == 3
    assert err.route == route and err.check == "NotEmpty"
    assert [a.outcome for a in err.attempts] == ["anomaly"] * 3
    assert [a.number for a in err.attempts] == [1, 2, 3]
    assert err.attempts[0].wait_before == 0 and err.attempts[1].wait_before > 0
    assert "3 allowed attempts" in str(err) and "not passed on" in str(err)
    # the anomaly that reached the caller is reported once: a ledger row and an alert
    (alert,) = [a for a in captured_alerts if a.kind == "content.anomaly"]
    assert alert.route == route and alert.guard_id == f"checks:{route}.NotEmpty"
    rows = [r for r in drain_orphan_events() if r[3] == "anomaly"]
    assert len(rows) == 1 and rows[0][8]["check"] == "NotEmpty"


def test_the_last_failure_decides_between_content_anomaly_and_retries_exhausted(
    route: str,
) -> None:
    def flaky(script: list[Any]) -> Any:
        @ag.retry(route=route, attempts=3, on=TimeoutError, checks=ag.checks.NotEmpty())
        def call() -> Any:
            step = script.pop(0)
            if isinstance(step, BaseException):
                raise step
            return step

        return call

    with ag.set_testing(True):
        with pytest.raises(ag.ContentAnomaly) as anomaly:
            flaky([TimeoutError(), "", ""])()
        assert [a.outcome for a in anomaly.value.attempts] == ["exception", "anomaly", "anomaly"]

        boom = TimeoutError("third")
        with pytest.raises(ag.RetriesExhausted) as exhausted:
            flaky(["", TimeoutError(), boom])()
        assert exhausted.value.__cause__ is boom
        assert exhausted.value.stop == "attempts"
        outcomes = [a.outcome for a in exhausted.value.attempts]
        assert outcomes == ["anomaly", "exception", "exception"]


def test_attempts_one_still_refuses_garbage(route: str) -> None:
    @ag.retry(route=route, attempts=1, checks=ag.checks.NotEmpty())
    def once() -> str:
        return "   "

    with pytest.raises(ag.ContentAnomaly):
        once()


def test_a_check_that_raises_is_a_check_error_not_an_anomaly_and_is_not_retried(
    route: str,
) -> None:
    class Broken(Check):
        name = "Broken"

        def evaluate(self, output: Any, ctx: CheckContext) -> CheckResult:
            return CheckResult() if output is None else CheckResult(notes=(str(1 / 0),))

    calls = 0

    @ag.retry(route=route, attempts=3, on=TimeoutError, checks=ag.checks.NotEmpty() & Broken())
    def answer() -> str:
        nonlocal calls
        calls += 1
        return GOOD

    with ag.set_testing(True), pytest.raises(ag.CheckError) as caught:
        answer()
    assert calls == 1
    assert caught.value.check == "Broken()"
    assert isinstance(caught.value.__cause__, ZeroDivisionError)
    assert not isinstance(caught.value, ag.ContentAnomaly)
    assert "Broken()" in str(caught.value) and route in str(caught.value)
    rows = [r for r in drain_orphan_events() if r[3] == "retry"]
    assert rows[-1][5] == "check_error"


# -- what is never retried --------------------------------------------------------------------


@pytest.mark.parametrize(
    "terminal",
    [
        lambda: ag.BudgetExceeded(pool="run", dimension="llm_calls", limit=1, spent=1, requested=1),
        lambda: ag.NoActivePool(kind="llm_call", route="x", function="f"),
        lambda: ag.BudgetUnavailable("redis down", pool="run", backend="redis"),
        lambda: ag.CorrectionsExhausted(
            tool="t", rounds=4, max_corrections=3,
            last=ag.ToolArgumentError(tool="t", problems=[]),
        ),
        lambda: ag.ToolArgumentError(tool="t", problems=[]),
    ],
    ids=["BudgetExceeded", "NoActivePool", "BudgetUnavailable", "CorrectionsExhausted",
         "ToolArgumentError"],
)
@pytest.mark.parametrize("on", [(Exception,), lambda exc: True], ids=["Exception", "predicate"])
def test_terminal_errors_are_never_retried_even_with_on_exception(
    route: str, terminal: Any, on: Any
) -> None:
    calls = 0
    error = terminal()

    @ag.retry(route=route, attempts=5, on=on)
    def call() -> None:
        nonlocal calls
        calls += 1
        raise error

    with ag.set_testing(True), pytest.raises(type(error)) as caught:
        call()
    assert caught.value is error
    assert calls == 1


def test_each_attempt_is_charged_and_a_refused_charge_ends_the_retries(route: str) -> None:
    provider_calls = 0

    @ag.retry(route=route, attempts=5, on=TimeoutError)
    @ag.llm_call(route=route, max_tokens=10)
    def ask(prompt: str) -> str:
        nonlocal provider_calls
        provider_calls += 1
        raise TimeoutError("slow provider")

    with ag.set_testing(True), ag.BudgetPool(llm_calls=2, name="run") as pool:
        with pytest.raises(ag.BudgetExceeded):
            ask("hello")
    assert provider_calls == 2  # the third attempt was refused before it started
    assert pool.snapshot().spent["llm_calls"] == 2
    retry_rows = [r for r in pool.ledger if r.kind == "retry"]
    assert len(retry_rows) == 1
    assert retry_rows[0].outcome == "error" and retry_rows[0].detail["stop"] == "terminal"
    assert retry_rows[0].detail["attempts"] == 3


def test_broad_on_does_not_retry_agentguard_errors_unless_named(route: str) -> None:
    calls = 0

    def violation() -> ag.ContractViolation:
        return ag.ContractViolation(function="f", expected="a list", received=None, reason="None")

    @ag.retry(route=route, attempts=3, on=Exception)
    def broad() -> None:
        nonlocal calls
        calls += 1
        raise violation()

    with ag.set_testing(True), pytest.raises(ag.ContractViolation):
        broad()
    assert calls == 1

    @ag.retry(route=route + ".named", attempts=3, on=ag.ContractViolation)
    def named() -> None:
        nonlocal calls
        calls += 1
        raise violation()

    calls = 0
    with ag.set_testing(True), pytest.raises(ag.RetriesExhausted):
        named()
    assert calls == 3


def test_an_exception_on_does_not_name_passes_through_unchanged_after_one_attempt(
    route: str,
) -> None:
    calls = 0
    boom = KeyError("k")

    @ag.retry(route=route, on=TimeoutError)
    def call() -> None:
        nonlocal calls
        calls += 1
        raise boom

    with pytest.raises(KeyError) as caught:
        call()
    assert caught.value is boom and calls == 1
    row = [r for r in drain_orphan_events() if r[3] == "retry"][-1]
    assert row[5] == "error" and row[8]["stop"] == "not_retryable"


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({}, "nothing to retry on"),
        ({"on": ag.BudgetExceeded}, "never retries"),
        ({"on": KeyboardInterrupt}, "not an Exception subclass"),
        ({"on": "TimeoutError"}, "a tuple of them or a predicate"),
        ({"on": TimeoutError, "attempts": 0}, "attempts=0"),
        ({"on": TimeoutError, "retry_budget": 0}, "retry_budget=0"),
        ({"on": TimeoutError, "alert_rate": 1.5}, "alert_rate=1.5"),
        ({"on": TimeoutError, "timeout": -1}, "timeout=-1"),
        ({"on": TimeoutError, "wait": 3}, "wait strategy"),
        ({"checks": "NotEmpty"}, "Check instances"),
    ],
)
def test_bad_settings_are_refused_at_decoration(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ag.ConfigurationError, match=fragment):
        ag.retry(route="bad", **kwargs)(lambda: None)


def test_a_predicate_on_decides_and_a_raising_predicate_is_reported(route: str) -> None:
    calls = 0

    @ag.retry(route=route, attempts=3, on=lambda exc: "429" in str(exc))
    def call(msg: str) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError(msg)

    with ag.set_testing(True):
        with pytest.raises(ag.RetriesExhausted):
            call("HTTP 429")
        assert calls == 3
        with pytest.raises(RuntimeError):
            call("HTTP 500")
        assert calls == 4

    @ag.retry(route=route + ".bad", on=lambda exc: 1 / 0)  # type: ignore[arg-type,return-value]
    def bad() -> None:
        raise RuntimeError("x")

    with pytest.raises(ag.ConfigurationError, match="predicate"):
        bad()


# -- time: timeout over all attempts, waits, cancellation, testing mode -----------------------


def test_timeout_bounds_all_attempts_and_their_waits(route: str, clock: VirtualClock) -> None:
    upstream = Upstream(p=1.0, clock=clock, latency=10.0)

    @ag.retry(route=route, attempts=10, on=TimeoutError, wait=ag.wait.fixed(2), timeout=25)
    def call() -> str:
        return upstream()

    with ag.set_testing(True), pytest.raises(ag.RetriesExhausted) as caught:
        call()
    # t=10 fail, wait 2; t=22 fail, 22+2 < 25 so wait; t=34 fail: stop
    assert upstream.calls == 3
    assert caught.value.stop == "timeout"
    assert "timeout=25s" in str(caught.value)
    assert [a.wait_before for a in caught.value.attempts] == [0, 2, 2]


def test_a_wait_that_would_cross_the_timeout_is_not_begun(route: str, clock: VirtualClock) -> None:
    upstream = Upstream(p=1.0, clock=clock, latency=1.0)

    @ag.retry(route=route, attempts=5, on=TimeoutError, wait=ag.wait.fixed(60), timeout=30)
    def call() -> str:
        return upstream()

    start = clock.t
    with ag.set_testing(True), pytest.raises(ag.RetriesExhausted) as caught:
        call()
    assert upstream.calls == 1 and caught.value.stop == "timeout"
    assert clock.t - start == 1.0  # the 60 s wait never happened


async def test_async_cancellation_during_a_wait_propagates_and_ends_the_span(route: str) -> None:
    exporter, _ = otel.install()
    exporter.clear()
    failed_once = asyncio.Event()
    calls = 0

    @ag.retry(route=route, attempts=3, on=TimeoutError, wait=ag.wait.fixed(3600))
    async def call() -> str:
        nonlocal calls
        calls += 1
        failed_once.set()
        raise TimeoutError

    task = asyncio.ensure_future(call())
    await failed_once.wait()
    for _ in range(3):
        await asyncio.sleep(0)  # let it enter its (one hour) wait
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert calls == 1
    (span,) = _spans(exporter, f"retry {route}")
    assert span.attributes["agentguard.outcome"] == "cancelled"
    assert span.status.status_code.name == "ERROR"
    assert span.end_time is not None
    row = [r for r in drain_orphan_events() if r[3] == "retry"][-1]
    assert row[5] == "cancelled" and row[8]["stop"] == "cancelled"
    await asyncio.sleep(0)
    assert calls == 1  # no further attempt after the cancellation


async def test_async_retry_recovers_and_keeps_the_coroutine_signature(route: str) -> None:
    script = [TimeoutError(), "", "fine"]

    @ag.retry(route=route, attempts=3, on=TimeoutError, checks=ag.checks.NotEmpty())
    async def call(x: int, *, y: str = "a") -> str:
        step = script.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step

    assert inspect.iscoroutinefunction(call)
    assert str(inspect.signature(call)) == "(x: 'int', *, y: 'str' = 'a') -> 'str'"
    with ag.set_testing(True):
        assert await call(1) == "fine"
    assert ag.retry_stats(route).mean_attempts == 3


def test_testing_mode_skips_waits_caps_attempts_and_restores(route: str) -> None:
    upstream = Upstream(p=1.0)

    @ag.retry(route=route, attempts=5, on=TimeoutError, wait=ag.wait.fixed(3600))
    def call() -> str:
        return upstream()

    assert not ag.is_testing()
    with ag.set_testing(True, attempts=2):
        assert ag.is_testing()
        with pytest.raises(ag.RetriesExhausted) as caught:
            call()  # would sleep an hour without the testing mode
        assert len(caught.value.attempts) == 2
        assert caught.value.attempts[1].wait_before == 3600  # recorded, not slept
    assert not ag.is_testing()
    with pytest.raises(ag.ConfigurationError):
        ag.set_testing(True, attempts=0)


# -- the retry storm guard --------------------------------------------------------------------


def test_retry_budget_stops_a_storm_from_multiplying_the_load(
    route: str, captured_alerts: list[ag.Alert]
) -> None:
    upstream = Upstream(p=1.0)

    @ag.retry(
        route=route, attempts=3, on=TimeoutError, retry_budget=0.2, retry_budget_min=2,
        window=100, alert_rate=None,
    )
    def call() -> str:
        return upstream()

    stops = 0
    with ag.set_testing(True):
        for _ in range(100):
            with pytest.raises(ag.RetriesExhausted) as caught:
                call()
            stops += caught.value.stop == "retry_budget"
    extra = upstream.calls - 100
    assert extra <= 0.2 * 100 + 2  # without the budget: 200 extra calls
    assert stops > 50
    assert ag.retry_stats(route).budget_stops >= stops
    budget_alerts = [a for a in captured_alerts if a.kind == "retry.budget"]
    assert len(budget_alerts) == 1 and budget_alerts[0].route == route
    assert "retry budget exhausted" in str(caught.value)


def test_a_bypass_of_the_retry_guard_lifts_the_budget_and_is_recorded(route: str) -> None:
    upstream = Upstream(p=1.0)
    ag.bypass(f"retry:{route}", owner="sre@example.com", reason="incident 42 replay",
              expires=_config.get_config().clock.now().date().isoformat())

    @ag.retry(route=route, attempts=3, on=TimeoutError, retry_budget=0.1, retry_budget_min=0)
    def call() -> str:
        return upstream()

    with ag.set_testing(True), pytest.raises(ag.RetriesExhausted) as caught:
        call()
    assert caught.value.stop == "attempts" and upstream.calls == 3
    rows = [r for r in drain_orphan_events() if r[3] == "bypass"]
    assert rows and "would have stopped retrying" in rows[0][8]["would_have"]


def test_a_bypassed_check_accepts_the_output_and_records_the_use(route: str) -> None:
    ag.bypass(f"checks:{route}.NotEmpty", owner="ops@example.com", reason="known empty feed",
              expires=_config.get_config().clock.now().date().isoformat())

    @ag.retry(route=route, checks=ag.checks.NotEmpty())
    def feed() -> list[int]:
        return []

    assert feed() == []
    rows = [r for r in drain_orphan_events() if r[3] == "bypass"]
    assert rows and rows[0][8]["would_have"].startswith("would have retried: the output is")


# -- the loop form -----------------------------------------------------------------------------


def test_loop_form_retries_exceptions_and_garbage_then_returns(route: str) -> None:
    exporter, _ = otel.install()
    exporter.clear()
    loop = ag.retrying(route=route, attempts=4, on=ValueError, checks=ag.checks.NotEmpty())
    script: list[Any] = [ValueError("bad"), "", "rows"]
    with ag.set_testing(True):
        for attempt in loop:
            with attempt:
                step = script.pop(0)
                if isinstance(step, BaseException):
                    raise step
                rows = attempt.check(step)
    assert rows == "rows" and attempt.number == 3
    tries = sorted(_spans(exporter, f"attempt {route}"), key=lambda s: s.start_time)
    assert [t.attributes["agentguard.outcome"] for t in tries] == ["exception", "anomaly", "ok"]
    assert len(_spans(exporter, f"retry {route}")) == 1


def test_loop_form_raises_at_the_end_and_passes_unretried_errors(route: str) -> None:
    loop = ag.retrying(route=route, attempts=2, on=ValueError)
    with ag.set_testing(True):
        with pytest.raises(ag.RetriesExhausted):
            for attempt in loop:
                with attempt:
                    raise ValueError("again")
        with pytest.raises(KeyError):
            for attempt in loop:
                with attempt:
                    raise KeyError("not retried")
    assert ag.retry_stats(route).calls == 2


def test_loop_form_refuses_an_unchecked_output_and_an_attempt_outside_with(route: str) -> None:
    checked = ag.retrying(route=route, checks=ag.checks.NotEmpty())
    with pytest.raises(ag.ConfigurationError, match=r"attempt\.check"):
        for attempt in checked:
            with attempt:
                _ = "never judged"
    plain = ag.retrying(route=route + ".plain", on=ValueError)
    with pytest.raises(ag.ConfigurationError, match="with attempt"):
        for _attempt in plain:
            pass


async def test_async_loop_form(route: str) -> None:
    script: list[Any] = [ValueError(), "ok"]
    with ag.set_testing(True):
        async for attempt in ag.retrying(route=route, on=ValueError):
            with attempt:
                step = script.pop(0)
                if isinstance(step, BaseException):
                    raise step
                value = step
    assert value == "ok" and ag.retry_stats(route).retried == 1


# -- records: ledger rows, the audit table, privacy --------------------------------------------


def test_ledger_rows_give_the_audit_table_its_figures(route: str, clock: VirtualClock) -> None:
    upstream = Upstream(p=0.5, seed=11, clock=clock, latency=0.8)

    @ag.retry(route=route, attempts=3, on=TimeoutError, wait=ag.wait.fixed(1.0))
    def call() -> str:
        return upstream()

    with ag.set_testing(True), ag.BudgetPool(name="audit") as pool:
        for _ in range(200):
            try:
                call()
            except ag.RetriesExhausted:
                pass
    rows = [r for r in pool.ledger if r.kind == "retry"]
    assert len(rows) == 200
    assert all("guard_id" in r.detail and r.detail["guard_id"] == f"retry:{route}" for r in rows)
    stats = retry_mod.summarize_retries(rows)[route]
    live = ag.retry_stats(route)
    assert (stats.calls, stats.retried, stats.attempts) == (live.calls, live.retried, live.attempts)
    assert stats.first_p50 == pytest.approx(0.8)
    assert stats.p99 == pytest.approx(0.8 * 3 + 2.0)  # three attempts and two waits
    table = ag.render_retry_table(rows)
    header, line = table.splitlines()
    assert header.split()[:4] == ["route", "calls", "retried", "attempts/call"]
    assert line.split()[0] == route and line.split()[1] == "200"
    assert f"{stats.mean_attempts:.3f}" in line and "800 ms" in line and "4.40 s" in line
    # the same table from rows as a store keeps them (mappings with JSON detail)
    as_dicts = [
        {"kind": r.kind, "route": r.route, "outcome": r.outcome, "detail": json.dumps(r.detail)}
        for r in rows
    ]
    assert ag.render_retry_table(as_dicts) == table
    assert "no retried routes" in ag.render_retry_table([])


def test_attempt_reasons_hold_no_exception_message_unless_values_are_recorded(route: str) -> None:
    @ag.retry(route=route, attempts=2, on=TimeoutError)
    def call() -> None:
        raise TimeoutError("user alice@example.com timed out")

    with ag.set_testing(True), pytest.raises(ag.RetriesExhausted) as caught:
        call()
    assert caught.value.attempts[0].reason == "TimeoutError"
    assert "alice" not in str(drain_orphan_events()) and "alice" not in str(caught.value)
    ag.configure(record_values=True)
    with ag.set_testing(True), pytest.raises(ag.RetriesExhausted) as caught:
        call()
    assert "alice@example.com" in (caught.value.attempts[0].reason or "")


def test_attempt_spans_parent_the_inner_llm_call_span(route: str) -> None:
    exporter, _ = otel.install()
    exporter.clear()
    script = [TimeoutError(), "ok"]

    @ag.retry(route=route, on=TimeoutError)
    @ag.llm_call(route=route, max_tokens=5)
    def ask() -> str:
        step = script.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step

    with ag.set_testing(True), ag.BudgetPool(llm_calls=5):
        assert ask() == "ok"
    tries = {s.context.span_id: s for s in _spans(exporter, f"attempt {route}")}
    llm = [s for s in exporter.get_finished_spans() if s.name.startswith("chat ")]
    assert len(tries) == 2 and len(llm) == 2
    assert all(s.parent is not None and s.parent.span_id in tries for s in llm)
    assert ask.__agentguard_retry__.route == route  # type: ignore[attr-defined]


def test_route_defaults_to_the_inner_guarded_call_and_signature_is_kept() -> None:
    @ag.retry(on=TimeoutError)
    @ag.tool_call(route="crm.lookup")
    def lookup(order_id: str, verbose: bool = False) -> dict[str, str]:
        return {"id": order_id}

    assert lookup.__agentguard_retry__.route == "crm.lookup"  # type: ignore[attr-defined]
    assert str(inspect.signature(lookup)) == (
        "(order_id: 'str', verbose: 'bool' = False) -> 'dict[str, str]'"
    )
    from agentguard._guards import declared_guards

    assert "retry:crm.lookup" in declared_guards()


# -- waits --------------------------------------------------------------------------------------


def test_wait_strategies_compute_tenacity_compatible_waits() -> None:
    state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})
    exp = ag.wait.exponential(initial=0.5, max=8, jitter=0.5, seed=1)
    waits = []
    for n in range(1, 8):
        state.attempt_number = n
        waits.append(exp(state))
    assert 0.5 <= waits[0] <= 1.0 and 1.0 <= waits[1] <= 1.5 and 2.0 <= waits[2] <= 2.5
    assert waits[-1] == 8 and all(w <= 8 for w in waits)
    assert ag.wait.fixed(2)(state) == 2 and ag.wait.none()(state) == 0
    assert (ag.wait.fixed(1) + ag.wait.fixed(2))(state) == 3  # composes like tenacity's
    with pytest.raises(ag.ConfigurationError):
        ag.wait.fixed(-1)
    with pytest.raises(ag.ConfigurationError):
        ag.wait.exponential(exp_base=0.5)


def test_any_tenacity_wait_is_accepted(route: str) -> None:
    upstream = Upstream(p=1.0)

    @ag.retry(route=route, attempts=3, on=TimeoutError, wait=tenacity.wait_incrementing(5, 5))
    def call() -> str:
        return upstream()

    with ag.set_testing(True), pytest.raises(ag.RetriesExhausted) as caught:
        call()
    assert [a.wait_before for a in caught.value.attempts] == [0, 5, 10]


# -- properties and concurrency -----------------------------------------------------------------

STEP = st.sampled_from(["ok", "garbage", "timeout", "keyerror"])


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(script=st.lists(STEP, min_size=1, max_size=6), attempts=st.integers(1, 5))
def test_outcome_matches_the_documented_rule(script: list[str], attempts: int) -> None:
    """Whatever the upstream does, the wrapper returns the first good value within the
    allowed attempts, re-raises an unretried error unchanged, or raises the failure of the
    last attempt: ContentAnomaly for garbage, RetriesExhausted for an exception."""
    steps = list(script) + ["ok"] * attempts
    served = 0

    @ag.retry(route="prop", attempts=attempts, on=TimeoutError, checks=ag.checks.NotEmpty(),
              alert_rate=None)
    def call() -> str:
        nonlocal served
        step = steps[served]
        served += 1
        if step == "timeout":
            raise TimeoutError
        if step == "keyerror":
            raise KeyError("k")
        return "" if step == "garbage" else "value"

    expected_calls = 0
    expected: Any = None
    for step in steps[:attempts]:
        expected_calls += 1
        if step == "ok":
            expected = "value"
            break
        if step == "keyerror":
            expected = KeyError
            break
        expected = ag.ContentAnomaly if step == "garbage" else ag.RetriesExhausted
    with ag.set_testing(True):
        if expected == "value":
            assert call() == "value"
        else:
            with pytest.raises(expected) as caught:
                call()
            if expected is not KeyError:
                assert len(caught.value.attempts) == attempts
    assert served == expected_calls


def test_many_threads_keep_exact_counts(route: str) -> None:
    lock = threading.Lock()
    upstream_calls = 0
    rng = random.Random(5)
    plan = [rng.random() < 0.3 for _ in range(20_000)]

    @ag.retry(route=route, attempts=3, on=TimeoutError, alert_rate=None)
    def call() -> str:
        nonlocal upstream_calls
        with lock:
            i = upstream_calls
            upstream_calls += 1
        if plan[i]:
            raise TimeoutError
        return "ok"

    def worker(_: int) -> int:
        try:
            call()
            return 1
        except ag.RetriesExhausted:
            return 0

    with ag.set_testing(True), ThreadPoolExecutor(8) as pool:
        oks = sum(pool.map(worker, range(4000)))
    stats = ag.retry_stats(route)
    assert stats.calls == 4000
    assert stats.attempts == upstream_calls
    assert stats.failed == 4000 - oks
    assert len([r for r in drain_orphan_events() if r[3] == "retry" and r[2] == route]) == 4000


def test_buffered_first_attempt_successes_count_in_the_window_before_a_retried_call(
    route: str, captured_alerts: list[ag.Alert]
) -> None:
    # first-attempt successes are buffered lock-free; they must still fill the window (in
    # order) so the alert sees the right denominator and fires at the right call
    fail_next = [False]

    @ag.retry(route=route, attempts=2, on=TimeoutError, window=100, alert_min_calls=20)
    def call() -> str:
        if fail_next[0]:
            fail_next[0] = False
            raise TimeoutError
        return "ok"

    fired_at: list[int] = []
    ag.on_alert(lambda a: fired_at.append(ag.retry_stats(route).calls))
    pending_fold = retry_mod.PENDING_FOLD
    with ag.set_testing(True):
        for _ in range(pending_fold + 44):  # some folded at the threshold, some still buffered
            call()
        assert ag.retry_stats(route).calls == pending_fold + 44
        for i in range(11):  # 11 retried calls: 11% of the last 100 only at the 11th
            fail_next[0] = True
            call()
            assert fired_at == ([] if i < 10 else [pending_fold + 55]), i
    stats = ag.retry_stats(route)
    assert stats.calls == pending_fold + 55 and stats.retried == 11
    assert stats.attempts == pending_fold + 55 + 11
    assert [a.data["window"] for a in captured_alerts if a.kind == "retry.rate"] == [100]


def test_mostly_successful_threads_lose_no_call_and_no_ledger_row_while_rows_drain(
    route: str,
) -> None:
    rng = random.Random(11)
    plan = [rng.random() < 0.01 for _ in range(40_000)]
    counter = iter(range(10**9))
    upstream = threading.Lock()

    @ag.retry(route=route, attempts=3, on=TimeoutError, alert_rate=None)
    def call() -> str:
        with upstream:
            i = next(counter)
        if plan[i]:
            raise TimeoutError
        return "ok"

    drained: list[tuple[Any, ...]] = []
    stop = threading.Event()

    def drainer() -> None:
        while not stop.is_set():
            drained.extend(drain_orphan_events())

    def worker(_: int) -> None:
        for _ in range(1000):
            try:
                call()
            except ag.RetriesExhausted:
                pass  # three failures in a row: counted as a call like any other

    side = threading.Thread(target=drainer)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # interleave threads between bytecodes as often as possible
    side.start()
    try:
        with ag.set_testing(True), ThreadPoolExecutor(8) as pool:
            list(pool.map(worker, range(8)))
    finally:
        stop.set()
        side.join()
        sys.setswitchinterval(interval)
    drained.extend(drain_orphan_events())
    stats = ag.retry_stats(route)
    assert stats.calls == 8000
    assert stats.attempts == next(counter)
    assert stats.retried > 0
    assert len([r for r in drained if r[3] == "retry" and r[2] == route]) == 8000


async def test_many_tasks_keep_exact_counts(route: str) -> None:
    rng = random.Random(9)
    calls = 0

    @ag.retry(route=route, attempts=3, on=TimeoutError, alert_rate=None)
    async def call() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        if rng.random() < 0.4:
            raise TimeoutError
        return "ok"

    async def one() -> bool:
        try:
            await call()
            return True
        except ag.RetriesExhausted:
            return False

    with ag.set_testing(True):
        results = await asyncio.gather(*(one() for _ in range(2000)))
    stats = ag.retry_stats(route)
    assert stats.calls == 2000 and stats.attempts == calls
    assert stats.failed == results.count(False)


def test_metric_names_are_listed_in_telemetry() -> None:
    assert telemetry.METRIC.RETRY_ATTEMPTS == "agentguard.retry.attempts"
    assert telemetry.METRIC.RETRY_DURATION == "agentguard.retry.duration"
    assert telemetry.METRIC.RETRY_CALLS_RETRIED == "agentguard.retry.calls_retried"
    assert telemetry.SPAN_RETRY.format(route="x") == "retry x"


def test_the_retry_example_tells_the_catalog_story() -> None:
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    out = subprocess.run(
        [sys.executable, str(root / "examples" / "retry_visibility.py")],
        capture_output=True, text=True, env=env, timeout=120, check=True,
    ).stdout
    assert "1875 upstream calls (1.875x)" in out
    assert "summarize   1000    51.6%          1.875" in out
    assert "24.20 s" in out and "charged 1875 LLM calls" in out
    assert "ends in ContentAnomaly (anomaly, anomaly)" in out


def test_agentguard_audit_prints_the_retry_table_from_the_store(
    tmp_path: Any, clock: VirtualClock, capfd: pytest.CaptureFixture[str]
) -> None:
    from agentguard.cli import main

    path = tmp_path / "ag.db"
    ag.configure(store=path)
    upstream = Upstream(p=0.5, seed=76, clock=clock, latency=0.8)

    @ag.retry(route="audit.summarize", attempts=4, on=TimeoutError,
              wait=ag.wait.exponential(initial=3, max=12, jitter=0), alert_rate=None)
    @ag.llm_call(route="audit.summarize", max_tokens=10)
    def summarize() -> str:
        text = upstream()
        ag.record_usage(input_tokens=10, output_tokens=10)
        return text

    with ag.set_testing(True), ag.BudgetPool(name="nightly"):
        for _ in range(1000):
            try:
                summarize()
            except ag.RetriesExhausted:
                pass
    ag.get_config().store.flush()
    ag.configure(store=None)
    capfd.readouterr()
    assert main(["audit", "--store", str(path), "--since", "all"]) == 0
    out = capfd.readouterr().out
    section = out[out.index("Retries (@ag.retry)"):]
    assert "1000 call(s) on 1 route(s)" in section and "1.875 attempts per call" in section
    line = next(row for row in section.splitlines() if "audit.summarize" in row)
    assert line.split()[1:4] == ["1000", "51.6%", "1.875"]
    assert "800 ms" in line and "24.20 s" in line
