"""The in-memory pool is the specification: a Redis-backed tree must behave exactly like it.

A hypothesis state machine applies the same charges, reservations, settlements and releases
to two trees of the same shape (root -> {a, b}): one all in memory, one whose root and `a`
live in Redis (and `b` in memory under the Redis root). After every step both trees must have
refused the same calls, and hold the same spent, reserved and stopped state.
"""

from __future__ import annotations

import uuid
from typing import Any

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
    run_state_machine_as_test,
)

import agentguard as ag

DIMS = ("output_tokens", "cost_usd")
LIMITS = {
    "root": {"output_tokens": 40.0, "cost_usd": 10.0},
    "a": {"output_tokens": 25.0},
    "b": {"cost_usd": 6.0},
}
amounts = st.integers(0, 16).map(lambda q: q / 4)  # exact in binary: no rounding drift
targets = st.sampled_from(("root", "a", "b"))
dims = st.sampled_from(DIMS)


def build_tree(backend: Any | None, create: bool = True) -> dict[str, ag.BudgetPool]:
    def remote(key: str) -> Any:
        if backend is None:
            return None
        return ag.RedisBackend(backend["url"], key=key, prefix=backend["prefix"], create=create)

    root = ag.BudgetPool(**LIMITS["root"], name="root", warn_at=None, backend=remote("root"))
    a = ag.BudgetPool(**LIMITS["a"], name="a", warn_at=None, backend=remote("a"))
    b = ag.BudgetPool(**LIMITS["b"], name="b", warn_at=None)
    with root:
        with a:
            pass
        with b:
            pass
    return {"root": root, "a": a, "b": b}


def outcome(fn: Any) -> tuple[str, Any]:
    try:
        return "ok", fn()
    except ag.BudgetExceeded as exc:
        return f"refused by {exc.pool}", None


def test_redis_tree_behaves_like_the_in_memory_tree(redis_url: str) -> None:
    class Differential(RuleBasedStateMachine):
        reservations = Bundle("reservations")

        def __init__(self) -> None:
            super().__init__()
            self.conf = {"url": redis_url, "prefix": f"sm:{uuid.uuid4().hex[:10]}:"}
            self.mem = build_tree(None)
            self.red = build_tree(self.conf)
            self.reader = ag.RedisBackend(redis_url, prefix=self.conf["prefix"])

        @rule(pool=targets, dim=dims, amount=amounts)
        def charge(self, pool: str, dim: str, amount: float) -> None:
            m = outcome(lambda: self.mem[pool].charge(**{dim: amount}))
            r = outcome(lambda: self.red[pool].charge(**{dim: amount}))
            assert m[0] == r[0]

        @rule(target=reservations, pool=targets, dim=dims, amount=amounts)
        def reserve(self, pool: str, dim: str, amount: float) -> Any:
            m = outcome(lambda: self.mem[pool].reserve(**{dim: amount}))
            r = outcome(lambda: self.red[pool].reserve(**{dim: amount}))
            assert m[0] == r[0]
            return (m[1], r[1], dim)

        @rule(pair=consumes(reservations), actual=amounts)
        def settle(self, pair: Any, actual: float) -> None:
            m, r, dim = pair
            if m is None:
                return
            m.settle({dim: actual})
            r.settle({dim: actual})

        @rule(pair=consumes(reservations))
        def release(self, pair: Any) -> None:
            m, r, _ = pair
            if m is None:
                return
            m.release()
            r.release()

        @invariant()
        def same_state(self) -> None:
            for name, mem in self.mem.items():
                red = self.red[name]
                if red.backend is not None:
                    state = self.reader.state(name)
                    spent, reserved, stopped = state.spent, state.reserved, state.stopped
                else:
                    spent, reserved = red.spent, red.reserved
                    stopped = red._stopped is not None
                for dim in DIMS:
                    assert abs(spent.get(dim, 0.0) - mem.spent[dim]) < 1e-9, (name, dim)
                    assert abs(reserved.get(dim, 0.0) - mem.reserved.get(dim, 0.0)) < 1e-9
                assert stopped == (mem._stopped is not None), name
                # the ledger invariant holds per process on the Redis tree too
                assert red.spent[DIMS[0]] == mem.spent[DIMS[0]]

        def teardown(self) -> None:
            self.reader.delete("root")
            self.reader.delete("a")
            self.reader.close()

    run_state_machine_as_test(
        Differential,
        settings=settings(
            max_examples=40,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
