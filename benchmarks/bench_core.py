"""Per-call overhead of a guarded tool call against the wrappers people already pay for."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from typing import Any

import pydantic
import stamina
import tenacity
from opentelemetry import trace

import agentguard as ag

Measure = Callable[..., float]


def bare(a: int, b: str, c: float) -> int:
    return a


@ag.tool_call(route="bench")
def guarded(a: int, b: str, c: float) -> int:
    return a


@ag.tool_call(route="bench", loop_limit=None)
def guarded_no_loop_guard(a: int, b: str, c: float) -> int:
    return a


@tenacity.retry(stop=tenacity.stop_after_attempt(3))
def with_tenacity(a: int, b: str, c: float) -> int:
    return a


@stamina.retry(on=ValueError, attempts=3)
def with_stamina(a: int, b: str, c: float) -> int:
    return a


@pydantic.validate_call
def with_validate_call(a: int, b: str, c: float) -> int:
    return a


_var: contextvars.ContextVar[list[int]] = contextvars.ContextVar("bench")
_var.set([0])
_lock = threading.Lock()


def contextvar_locked_decrement(a: int, b: str, c: float) -> int:
    box = _var.get()
    with _lock:
        box[0] -= 1
    return a


def _otel_span_no_sdk() -> None:
    with trace.get_tracer("bench").start_as_current_span("x"):
        pass


def _steady(pool: ag.BudgetPool, fn: Callable[[], Any]) -> Callable[[], Any]:
    """Keep the in-memory ledger from growing across repeats (the store drains it in real use)."""
    ledger = pool.root._ledger

    def call() -> Any:
        if len(ledger) > 50_000:
            ledger.clear()
        return fn()

    return call


def run(measure: Measure) -> list[tuple[str, list[tuple[str, float]]]]:
    args = (1, "x", 2.0)
    rows: list[tuple[str, float]] = [("bare call", measure(lambda: bare(*args)))]
    rows.append(
        ("ContextVar get + locked decrement", measure(lambda: contextvar_locked_decrement(*args)))
    )
    with ag.BudgetPool(name="bench", loop_limit=10**9) as pool:
        rows.append(
            (
                "@ag.tool_call, depth 1 (loop guard on)",
                measure(_steady(pool, lambda: guarded(*args))),
            )
        )
        rows.append(
            (
                "@ag.tool_call, depth 1, loop_limit=None",
                measure(_steady(pool, lambda: guarded_no_loop_guard(*args))),
            )
        )
    with (
        ag.BudgetPool(name="a", tool_calls=10**12, loop_limit=10**9),
        ag.BudgetPool(name="b", tool_calls=10**12),
        ag.BudgetPool(name="c", tool_calls=10**12) as leaf,
    ):
        rows.append(
            ("@ag.tool_call, depth 3, all limited", measure(_steady(leaf, lambda: guarded(*args))))
        )
    rows.append(("pydantic.validate_call", measure(lambda: with_validate_call(*args))))
    rows.append(("stamina.retry (success)", measure(lambda: with_stamina(*args), number=20_000)))
    rows.append(("tenacity.retry (success)", measure(lambda: with_tenacity(*args), number=20_000)))
    rows.append(("OTel span, no SDK (ProxyTracer)", measure(_otel_span_no_sdk, number=20_000)))
    return [("Guarded tool call overhead (no tracer provider)", rows)]
