"""`@ag.retry` on the success path (first attempt succeeds), side by side with tenacity/stamina.

Rows without a tracer provider are measured first; then the real OTel SDK is installed (a
process may set the global tracer provider only once) with a SimpleSpanProcessor and an
in-memory exporter, for the `@ag.retry` + SDK row and its reference: two nested SDK spans
(what the call span and the attempt span cost the SDK by themselves). No pool is active, so
each logical call's ledger row goes to the process list, which is drained between repeats.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import stamina
import tenacity

import agentguard as ag
from agentguard._events import drain_orphan_events

Measure = Callable[..., float]


def _bare(a: int, b: int, c: int) -> int:
    return a + b + c


def _drained(measure: Measure, fn: Callable[[], object], number: int) -> float:
    result = measure(fn, number=number)
    drain_orphan_events()
    return result


def run(measure: Measure) -> list[tuple[str, list[tuple[str, float]]]]:
    from opentelemetry import context, trace

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

    rows: list[tuple[str, float]] = [
        ("bare call", measure(lambda: _bare(1, 2, 3), number=200_000)),
        ("tenacity.retry", measure(lambda: ten(1, 2, 3), number=20_000)),
        ("stamina.retry", measure(lambda: sta(1, 2, 3), number=20_000)),
        ("@ag.retry, no tracer provider", _drained(measure, lambda: agr(1, 2, 3), 20_000)),
        (
            "@ag.retry + checks=NotEmpty(), no provider",
            _drained(measure, lambda: agc(1, 2, 3), 20_000),
        ),
    ]

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

    loops = 200
    async_rows = [
        ("async bare call", measure(_loop_of(_abare, loops), number=20) / loops),
        ("async tenacity.retry", measure(_loop_of(aten, loops), number=20) / loops),
        ("async stamina.retry", measure(_loop_of(asta, loops), number=20) / loops),
        ("async @ag.retry, no provider", measure(_loop_of(aagr, loops), number=20) / loops),
    ]
    drain_orphan_events()

    # -- with the SDK (installed once per process) -------------------------------------------
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    tracer = trace.get_tracer("bench")

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

    def sdk(fn: Callable[[], object], number: int) -> float:
        result = measure(fn, number=number)
        exporter.clear()
        drain_orphan_events()
        return result

    sdk_rows = [
        ("two nested SDK spans (reference)", sdk(two_spans, 5_000)),
        ("@ag.retry + SDK, in-memory exporter", sdk(lambda: agr(1, 2, 3), 5_000)),
    ]
    return [
        ("retry wrapper, success at the first attempt (sync)", rows),
        ("retry wrapper, success at the first attempt (async, per call)", async_rows),
        ("retry wrapper with the OTel SDK (call span + attempt span)", sdk_rows),
    ]


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench import measure as _measure
    from bench import print_table

    for title, table in run(_measure):
        print_table(title, table)
