"""Catalog entry 5: the "successful" retry that hides repeated failure.

A nightly job summarizes 1,000 documents through an upstream that fails half the time. With
three retries (waits of 3, 6 and 12 s) the dashboard shows 94% success: nobody sees the 1.875x
upstream calls or the callers who waited 24 s. Then the other half of the failure: a `200` full
of garbage that nothing retries. Time is simulated (a virtual clock and agentguard's testing
mode), so the story runs in a second and prints the same figures every time.
"""

from __future__ import annotations

import random

import tenacity

import agentguard as ag

N = 1000
LATENCY = 0.8  # seconds per upstream call
SUMMARY = "Summary: revenue grew 12% on the year, driven by the new enterprise tier. " * 6


class SimulatedClock(ag.Clock):
    """Virtual seconds: the upstream and the waits advance it; nothing really sleeps."""

    def __init__(self) -> None:
        self.t = 0.0

    def monotonic(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class Upstream:
    """The summarizer API: fails with TimeoutError half the time (seeded, reproducible)."""

    def __init__(self, clock: SimulatedClock, seed: int = 76) -> None:
        self.clock = clock
        self.rng = random.Random(seed)
        self.calls = 0

    def summarize(self, doc: str) -> str:
        self.calls += 1
        self.clock.advance(LATENCY)
        if self.rng.random() < 0.5:
            raise TimeoutError("upstream timed out after 0.8 s")
        return SUMMARY


def without_agentguard(clock: SimulatedClock) -> None:
    upstream = Upstream(clock)
    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(4),
        wait=tenacity.wait_exponential(multiplier=3, exp_base=2),  # 3, 6, 12 s
        retry=tenacity.retry_if_exception_type(TimeoutError),
        sleep=clock.advance,
        reraise=True,
    )
    ok, worst = 0, 0.0
    for i in range(N):
        start = clock.monotonic()
        try:
            retrying(upstream.summarize, f"doc {i}")
            ok += 1
        except TimeoutError:
            pass
        worst = max(worst, clock.monotonic() - start)
    print("Without agentguard (tenacity: 4 attempts, waits 3/6/12 s):")
    print(f"  dashboard: {N} requests, {ok} ok ({ok / N:.1%}), {N - ok} errors -- looks fine")
    print(
        f"  what nobody sees: {upstream.calls} upstream calls ({upstream.calls / N:.3f}x) and "
        f"callers waiting up to {worst:.1f} s"
    )


def with_agentguard(clock: SimulatedClock) -> None:
    upstream = Upstream(clock)
    alerts: list[ag.Alert] = []
    ag.on_alert(alerts.append)

    @ag.retry(
        route="summarize",
        attempts=4,
        on=TimeoutError,
        wait=ag.wait.exponential(initial=3, max=12, jitter=0),
        window=500,  # the retry-rate alert fires at most once per 500 calls
    )
    @ag.llm_call(route="summarize", model="demo-model", max_tokens=300)
    def summarize(doc: str) -> str:
        text = upstream.summarize(doc)
        ag.record_usage(input_tokens=900, output_tokens=120)
        return text

    with ag.BudgetPool(name="nightly-summaries") as pool:
        for i in range(N):
            try:
                summarize(f"doc {i}")
            except ag.RetriesExhausted:
                pass
    ag.remove_alert_hook(alerts.append)
    print("\nWith agentguard (@ag.retry outside @ag.llm_call, same policy):")
    rate = [a for a in alerts if a.kind == "retry.rate"]
    first = rate[0].data
    print(
        f"  {len(rate)} retry.rate alert(s); the first after {first['window']} calls: "
        f"{first['rate']:.0%} needed a retry (threshold {first['threshold']:.0%}), "
        f"{first['extra_calls']} extra calls, dominant reason {first['dominant_reason']}"
    )
    print("  the audit table (agentguard audit), from the run's ledger:")
    for line in ag.render_retry_table(pool.ledger).splitlines():
        print(f"    {line}")
    spent = int(pool.snapshot().spent["llm_calls"])
    print(f"  pool {pool.name!r} was charged {spent} LLM calls for {N} summaries (every attempt).")


def garbage_is_retried(clock: SimulatedClock) -> None:
    answers = iter([SUMMARY] * 6 + ["", SUMMARY, "Summary: ok.", SUMMARY])

    def upstream(doc: str) -> str:
        clock.advance(LATENCY)
        return next(answers)

    @ag.retry(
        route="digest",
        attempts=3,
        on=TimeoutError,
        checks=ag.checks.NotEmpty() & ag.checks.LengthVsMedian(min_ratio=0.3),
        wait=ag.wait.fixed(1),
    )
    def digest(doc: str) -> str:
        return upstream(doc)

    for i in range(6):  # the route's usual length (~440 characters) is learnt from good runs
        digest(f"warm-up {i}")
    print("\nAnd the 200 full of garbage:")
    print("  without checks, an empty body or a 12-character 'summary' is a success.")
    for label in ("an empty body", "a 12-character answer"):
        result = digest(label)
        attempts = ag.retry_stats("digest").attempts
        print(
            f"  with checks, {label} was retried; the caller got the {len(result.strip())}-"
            f"character summary (digest attempts so far: {attempts})"
        )
    try:
        ag.retry(route="digest.dead", attempts=2, checks=ag.checks.NotEmpty())(lambda: "")()
    except ag.ContentAnomaly as err:
        outcomes = ", ".join(a.outcome for a in err.attempts)
        print(f"  an upstream that only returns garbage ends in ContentAnomaly ({outcomes}).")


def main() -> None:
    clock = SimulatedClock()
    ag.configure(clock=clock)
    try:
        with ag.set_testing(True):  # waits advance the simulated clock instead of sleeping
            without_agentguard(clock)
            with_agentguard(clock)
            garbage_is_retried(clock)
    finally:
        ag.configure(clock=ag.Clock())


if __name__ == "__main__":
    main()
