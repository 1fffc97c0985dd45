"""`@ag.retry` on the success path (first attempt succeeds), side by side with tenacity/stamina.

The rows without a tracer provider run in this process. The SDK rows run in a child process
(OTel sets the global tracer provider once per process, and the sections after this one must
not pay for spans): the real SDK with a SimpleSpanProcessor and an in-memory exporter, for
`@ag.retry` and its reference, the same two nested spans with the same attributes started and
ended by hand (what the call span and the attempt span cost the SDK by themselves). No pool
is active, so each call's ledger row goes to the process list, drained between repeats.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import stamina
import tenacity

import agentguard as ag
from agentguard._events import drain_orphan_events

Measure = Callable[..., float]


def _bare(a: int, b: int, c: int) -> int:
    return a + b + c


QUICK = "--quick" in sys.argv
ROUNDS = 2 if QUICK else 7
"""Rounds of the interleaved measurements: every row is measured once per round, in turn, and
keeps its best round, so a burst of machine load hits all rows alike, not one row."""


def _interleaved(
    measure: Measure,
    rows: list[tuple[str, Callable[[], object], int]],
    *,
    rounds: int = ROUNDS,
    between: Callable[[], object] = drain_orphan_events,
) -> list[tuple[str, float]]:
    """(name, best ns per call) for each (name, fn, number): interleaved, best of `rounds`."""
    best = [float("inf")] * len(rows)
    for _ in range(rounds):
        for i, (_name, fn, number) in enumerate(rows):
            best[i] = min(best[i], measure(fn, number=number, repeat=2))
            between()  # ledger rows recorded outside a pool (and spans) do not pile up
    return [(name, ns) for (name, _fn, _number), ns in zip(rows, best, strict=True)]


def _sdk_rows(measure: Measure) -> list[tuple[str, float]]:
    """The two SDK rows, measured in a process whose tracer provider is the real SDK."""
    from opentelemetry import context, trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    tracer = trace.get_tracer("bench")
    agr = ag.retry(route="bench.retry", attempts=3, on=TimeoutError)(_bare)

    def two_spans() -> None:
        # the same two spans @ag.retry emits, with the same attributes, by hand
        outer = tracer.start_span(
            "retry bench", attributes={"agentguard.route": "bench", "agentguard.retry.max": 3}
        )
        ctx = trace.set_span_in_context(outer)
        inner = tracer.start_span(
            "attempt bench",
            context=ctx,
            attributes={"agentguard.route": "bench", "agentguard.retry.attempt": 1},
        )
        token = context.attach(trace.set_span_in_context(inner, ctx))
        _bare(1, 2, 3)
        context.detach(token)
        inner.set_attributes({"agentguard.outcome": "ok"})
        inner.end()
        outer.set_attributes({"agentguard.retry.attempts": 1, "agentguard.outcome": "ok"})
        outer.end()

    def between() -> None:
        exporter.clear()
        drain_orphan_events()

    return _interleaved(
        measure,
        [
            ("two nested SDK spans, same attributes (reference)", two_spans, 2_000),
            ("@ag.retry + SDK, in-memory exporter", lambda: agr(1, 2, 3), 2_000),
        ],
        rounds=3 * ROUNDS,
        between=between,
    )


def _sdk_rows_in_child() -> list[tuple[str, float]]:
    args = [sys.executable, str(Path(__file__).resolve()), "--sdk-json"]
    if "--quick" in sys.argv:
        args.append("--quick")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parent.parent / "src"), env.get("PYTHONPATH", "")]
    )
    done = subprocess.run(args, capture_output=True, text=True, env=env, check=True)
    return [(name, float(ns)) for name, ns in json.loads(done.stdout.strip().splitlines()[-1])]


def run(measure: Measure) -> list[tuple[str, list[tuple[str, float]]]]:
    from opentelemetry import trace

    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        raise RuntimeError("bench_retry must run before any tracer provider is installed")

    ten = tenacity.retry(
        stop=tenacity.stop_after_attempt(3),
        retry=tenacity.retry_if_exception_type(TimeoutError),
        wait=tenacity.wait_exponential_jitter(max=8, jitter=0.5),
    )(_bare)
    sta = stamina.retry(on=TimeoutError, attempts=3)(_bare)
    agr = ag.retry(route="bench.retry", attempts=3, on=TimeoutError)(_bare)
    agc = ag.retry(route="bench.checked", attempts=3, on=TimeoutError, checks=ag.checks.NotEmpty())(
        lambda a, b, c: "a summary"
    )
    three = ag.checks.NotEmpty() & ag.checks.LengthVsMedian() & ag.checks.NoErrorKeywords()
    ag3 = ag.retry(route="bench.checked3", attempts=3, on=TimeoutError, checks=three)(
        lambda a, b, c: "a summary of the document, as long as usual"
    )

    rows = _interleaved(
        measure,
        [
            ("bare call", lambda: _bare(1, 2, 3), 100_000),
            ("tenacity.retry", lambda: ten(1, 2, 3), 5_000),
            ("stamina.retry", lambda: sta(1, 2, 3), 5_000),
            ("@ag.retry, no tracer provider", lambda: agr(1, 2, 3), 10_000),
            ("@ag.retry + checks=NotEmpty(), no provider", lambda: agc(1, 2, 3), 10_000),
            (
                "@ag.retry + NotEmpty & LengthVsMedian & NoErrorKeywords",
                lambda: ag3(1, 2, 3),
                10_000,
            ),
        ],
    )

    async def _abare(a: int, b: int, c: int) -> int:
        return a + b + c

    aten = tenacity.retry(
        stop=tenacity.stop_after_attempt(3),
        retry=tenacity.retry_if_exception_type(TimeoutError),
    )(_abare)
    asta = stamina.retry(on=TimeoutError, attempts=3)(_abare)
    aagr = ag.retry(route="bench.async", attempts=3, on=TimeoutError)(_abare)

    def _loop_of(fn: Callable[..., object], n: int = 200) -> Callable[[], object]:
        async def many() -> None:
            for _ in range(n):
                await fn(1, 2, 3)  # type: ignore[misc]

        return lambda: asyncio.run(many())

    loops = 20 if QUICK else 200  # bench.measure runs >= 1000 loops in --quick mode
    async_rows = [
        (name, ns / loops)
        for name, ns in _interleaved(
            measure,
            [
                ("async bare call", _loop_of(_abare, loops), 10),
                ("async tenacity.retry", _loop_of(aten, loops), 10),
                ("async stamina.retry", _loop_of(asta, loops), 10),
                ("async @ag.retry, no provider", _loop_of(aagr, loops), 10),
            ],
        )
    ]

    # -- with the SDK: in a child process, so that this process (and the benchmark sections
    # after this one) keeps running without a tracer provider (OTel sets it once per process)
    sdk_rows = _sdk_rows_in_child()
    return [
        ("retry wrapper, success at the first attempt (sync)", rows),
        ("retry wrapper, success at the first attempt (async, per call)", async_rows),
        ("retry wrapper with the OTel SDK (call span + attempt span)", sdk_rows),
    ]


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench import measure as _measure
    from bench import print_table

    if "--sdk-json" in sys.argv:
        print(json.dumps(_sdk_rows(_measure)))
    else:
        for title, table in run(_measure):
            print_table(title, table)
