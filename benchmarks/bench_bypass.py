"""The cost of bypasses: the lookup a guard makes at a refusal point, and a bypassed charge.

Guards call `active_bypass()` only where they would refuse, so an unbypassed call never pays
any of this; the numbers below are the price of the slow path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import date, timedelta

import agentguard as ag
from agentguard import bypasses
from agentguard.bypasses import active_bypass

Measure = Callable[..., float]


def _register(n: int) -> None:
    bypasses._reset_for_tests()
    expires = (date.today() + timedelta(days=20)).isoformat()
    for i in range(n):
        guard = f"args:tool{i}.*" if i % 5 == 0 else f"args:tool{i}.arg"
        ag.bypass(guard, owner="bench", reason="benchmark entry", expires=expires)


def run(measure: Measure) -> list[tuple[str, list[tuple[str, float]]]]:
    logging.getLogger("agentguard").addHandler(logging.NullHandler())
    logging.getLogger("agentguard").propagate = False
    lookup_rows: list[tuple[str, float]] = []
    bypasses._reset_for_tests()
    lookup_rows.append(("active_bypass, no entry", measure(lambda: active_bypass("budget:run"))))
    _register(50)
    lookup_rows.append(
        ("active_bypass, 50 entries, miss", measure(lambda: active_bypass("budget:run")))
    )
    lookup_rows.append(
        ("active_bypass, 50 entries, exact hit", measure(lambda: active_bypass("args:tool49.arg")))
    )
    lookup_rows.append(
        ("active_bypass, 50 entries, pattern hit", measure(lambda: active_bypass("args:tool45.x")))
    )

    @ag.tool_call(loop_limit=None)
    def tool() -> None:
        return None

    charge_rows: list[tuple[str, float]] = []
    bypasses._reset_for_tests()
    with ag.BudgetPool(name="open", tool_calls=10**12, warn_at=None):
        charge_rows.append(("@tool_call, under its limit", measure(tool, number=10_000, repeat=5)))
    _register(0)
    ag.bypass(
        "budget:full",
        owner="bench",
        reason="benchmark entry",
        expires=(date.today() + timedelta(days=20)).isoformat(),
    )
    with ag.BudgetPool(name="full", tool_calls=1, warn_at=None):
        tool()
        charge_rows.append(
            (
                "@tool_call, over its limit, bypassed (metric, ledger row, log check)",
                measure(tool, number=10_000, repeat=5),
            )
        )
    bypasses._reset_for_tests()
    return [
        ("bypass lookup at a refusal point (ns/call)", lookup_rows),
        ("a tool charge whose refusal is bypassed (ns/call)", charge_rows),
    ]
