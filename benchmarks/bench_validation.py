"""Validation overhead: the issue's signature vs pydantic.validate_call, and @ag.contract.

Run with the harness: `.venv/bin/python benchmarks/bench.py` (ratios are to the first row of
each section), or alone: `.venv/bin/python benchmarks/bench_validation.py`.

The pydantic-only baseline is the nearest equivalent a team would write by hand: `EmailStr`,
`condecimal`, and `AfterValidator`s for the user lookup, the date range and the order
reference (pydantic has no notion of a run's tool outputs, so that one checks a set).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, timedelta
from decimal import Decimal
from typing import Annotated, Any

from pydantic import AfterValidator, EmailStr, condecimal, constr, validate_call

import agentguard as ag
from agentguard import validators as v
from agentguard._argcheck import compile_arguments

USERS = {"u_123": {"id": "u_123", "name": "Ann"}}
ORDER_REFS = {"ORD-2026-0042"}
ARGS: dict[str, Any] = {
    "user_id": "u_123",
    "email": "ann@example.org",
    "amount": "125.50",
    "due": (date.today() + timedelta(days=30)).isoformat(),
    "order_ref": "ORD-2026-0042",
    "reason": "Customer was charged twice",
}


def find_user(uid: str) -> dict[str, str] | None:
    return USERS.get(uid)


# -- pydantic only ------------------------------------------------------------------------------


def _user(uid: str) -> str:
    if uid not in USERS:
        raise ValueError("unknown user id")
    return uid


def _due(d: date) -> date:
    today = date.today()
    if not today <= d <= today + timedelta(days=365):
        raise ValueError("out of range")
    return d


def _ref(ref: str) -> str:
    if ref not in ORDER_REFS:
        raise ValueError("not an order reference from lookup_order")
    return ref


@validate_call
def escalate_pydantic(
    user_id: Annotated[str, AfterValidator(_user)],
    email: EmailStr,
    amount: condecimal(ge=0, le=10_000),  # type: ignore[valid-type]
    due: Annotated[date, AfterValidator(_due)],
    order_ref: Annotated[str, AfterValidator(_ref)],
    reason: constr(strip_whitespace=True, min_length=1),  # type: ignore[valid-type]
) -> str:
    return "escalated"


# -- agentguard ---------------------------------------------------------------------------------


def _escalate(
    user_id: Annotated[str, v.Resolves(find_user, what="user id")],
    email: Annotated[str, v.Email()],
    amount: Annotated[Decimal, v.Amount(min=0, max=10_000)],
    due: Annotated[date, v.DateRange(not_before="today", within_days=365)],
    order_ref: Annotated[str, v.Verbatim(from_tool="lookup_order")],
    reason: Annotated[str, v.NotPlaceholder()],
) -> str:
    return "escalated"


escalate_guarded = ag.tool_call(name="escalate", loop_limit=None)(_escalate)


@ag.tool_call(loop_limit=None)
def lookup_order(q: str) -> dict[str, str]:
    return {"order_ref": "ORD-2026-0042", "item": "blue sweater"}


@ag.tool_call(loop_limit=None)
def escalate_unvalidated(
    user_id: str, email: str, amount: str, due: str, order_ref: str, reason: str
) -> str:
    return "escalated"


# -- contracts ----------------------------------------------------------------------------------

FEATURES = {"momentum": 0.12, "volatility": 0.3, "volume": 1e6}


def features_bare() -> dict[str, float]:
    return FEATURES


features_contract = ag.contract(features_bare)
features_contract_keys = ag.contract(not_empty=True, required_keys=("momentum", "volatility"))(
    features_bare
)
features_pydantic = validate_call(validate_return=True)(features_bare)


def _interleaved(
    measure: Callable[..., float], rows: list[tuple[str, Callable[[], object]]], number: int
) -> list[tuple[str, float]]:
    """Best of 3 rounds per row, the rows interleaved: load on the machine hits all alike."""
    best = [float("inf")] * len(rows)
    for _ in range(3):
        for i, (_, fn) in enumerate(rows):
            best[i] = min(best[i], measure(fn, number=number))
    return [(name, ns) for (name, _), ns in zip(rows, best, strict=True)]


def run(measure: Callable[..., float]) -> list[tuple[str, list[tuple[str, float]]]]:
    pool = ag.BudgetPool(name="bench")
    pool.__enter__()
    try:
        lookup_order("x")
        guard = compile_arguments(
            _escalate, tool="escalate", route="escalate", max_corrections=None
        )
        assert guard is not None
        assert escalate_pydantic(**ARGS) == escalate_guarded(**ARGS) == "escalated"
        empty: tuple[Any, ...] = ()
        validation = _interleaved(
            measure,
            [
                (
                    "pydantic.validate_call, nearest pydantic-only equivalent",
                    lambda: escalate_pydantic(**ARGS),
                ),
                (
                    "agentguard argument guard alone (guard.check)",
                    lambda: guard.check(pool, empty, dict(ARGS)),
                ),
                (
                    "@ag.tool_call with the validators (whole call)",
                    lambda: escalate_guarded(**ARGS),
                ),
                (
                    "@ag.tool_call, same tool without validators",
                    lambda: escalate_unvalidated(**ARGS),
                ),
            ],
            number=10_000,
        )
        pool._ledger.clear()
    finally:
        pool.__exit__(None, None, None)
    contracts = _interleaved(
        measure,
        [
            ("bare function returning dict[str, float]", features_bare),
            ("@ag.contract (return annotation)", features_contract),
            ("@ag.contract(not_empty, required_keys)", features_contract_keys),
            ("pydantic.validate_call(validate_return=True)", features_pydantic),
        ],
        number=100_000,
    )
    return [
        ("Tool-argument validation (issue 4 signature, 6 arguments)", validation),
        ("Contracts at boundaries (@ag.contract)", contracts),
    ]


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from bench import measure as _measure
    from bench import print_table

    for title, rows in run(_measure):
        print_table(title, rows)
