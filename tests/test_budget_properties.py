"""Property tests: for any sequence of charges, reservations, settlements and releases over any
pool tree, no pool ever spends past its limit, refusals are exact, and totals equal the ledger.
"""

from __future__ import annotations

from typing import Any

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    rule,
)

import agentguard as ag

DIMS = ("llm_calls", "tool_calls", "total_tokens", "jobs")
limits_st = st.fixed_dictionaries(
    {},
    optional={
        "llm_calls": st.integers(0, 12),
        "tool_calls": st.integers(0, 12),
        "total_tokens": st.integers(0, 400),
    },
)
amounts_st = st.dictionaries(
    st.sampled_from(DIMS), st.integers(0, 60), min_size=1, max_size=3
)


class Model:
    """An independent, obviously-correct model of one pool."""

    def __init__(self, limits: dict[str, int], parent: Model | None) -> None:
        self.limits = limits
        self.parent = parent
        self.spent = dict.fromkeys(DIMS, 0)
        self.reserved = dict.fromkeys(DIMS, 0)
        self.stopped = False

    @property
    def chain(self) -> list[Model]:
        out: list[Model] = []
        node: Model | None = self
        while node is not None:
            out.append(node)
            node = node.parent
        return out

    def admit(self, need: dict[str, int]) -> bool:
        for m in self.chain:
            if m.stopped:
                return False
            for dim, amount in need.items():
                limit = m.limits.get(dim)
                if limit is not None and m.spent[dim] + m.reserved[dim] + amount > limit:
                    m.stopped = True
                    return False
        return True


class PoolMachine(RuleBasedStateMachine):
    pools = Bundle("pools")
    reservations = Bundle("reservations")

    @initialize(target=pools, limits=limits_st)
    def root(self, limits: dict[str, int]) -> Any:
        self.models: dict[int, Model] = {}
        self.all: list[ag.BudgetPool] = []
        pool = ag.BudgetPool(name="root", custom={"jobs": 10**9}, **limits)
        self.models[id(pool)] = Model(dict(limits), None)
        self.all.append(pool)
        return pool

    @rule(target=pools, parent=pools, limits=limits_st)
    def child(self, parent: ag.BudgetPool, limits: dict[str, int]) -> Any:
        if len(self.all) >= 6:
            return multiple()
        pool = ag.BudgetPool(name=f"p{len(self.all)}", warn_at=None, **limits)
        pool._attach(parent)
        self.models[id(pool)] = Model(dict(limits), self.models[id(parent)])
        self.all.append(pool)
        return pool

    @rule(pool=pools, amounts=amounts_st)
    def charge(self, pool: ag.BudgetPool, amounts: dict[str, int]) -> None:
        expected = self.models[id(pool)].admit(amounts)
        try:
            pool.charge(**amounts)
        except ag.BudgetExceeded:
            assert not expected, "refused a charge that fits"
            return
        assert expected, "accepted a charge that does not fit"
        for m in self.models[id(pool)].chain:
            for dim, amount in amounts.items():
                m.spent[dim] += amount

    @rule(pool=pools, same_args=st.booleans())
    def tool_call(self, pool: ag.BudgetPool, same_args: bool) -> None:
        """The hot path of @tool_call (fast path for a lone pool, general path otherwise)."""
        expected = self.models[id(pool)].admit({"tool_calls": 1})
        self.calls = getattr(self, "calls", 0) + 1
        args = ("same",) if same_args else (self.calls,)
        try:
            pool._charge_tool("tool", "route", args, {}, None)
        except ag.BudgetExceeded:
            assert not expected, "refused a tool call that fits"
            return
        assert expected, "accepted a tool call that does not fit"
        pool._tool_row("route", 0.0, "ok", 0.0)
        for m in self.models[id(pool)].chain:
            m.spent["tool_calls"] += 1

    @rule(target=reservations, pool=pools, amounts=amounts_st)
    def reserve(self, pool: ag.BudgetPool, amounts: dict[str, int]) -> Any:
        model = self.models[id(pool)]
        expected = model.admit(amounts)
        try:
            res = pool.reserve(**amounts)
        except ag.BudgetExceeded:
            assert not expected, "refused a reservation that fits"
            return multiple()
        assert expected, "accepted a reservation that does not fit"
        for m in model.chain:
            for dim, amount in amounts.items():
                m.reserved[dim] += amount
        return (res, pool, amounts)

    @rule(entry=consumes(reservations), fraction=st.sampled_from([0.0, 0.5, 1.0]))
    def settle(self, entry: tuple[Any, ag.BudgetPool, dict[str, int]], fraction: float) -> None:
        res, pool, amounts = entry
        actual = {dim: int(amount * fraction) for dim, amount in amounts.items()}
        res.settle(actual)
        for m in self.models[id(pool)].chain:
            for dim, amount in amounts.items():
                m.reserved[dim] -= amount
                m.spent[dim] += actual[dim]

    @rule(entry=consumes(reservations))
    def release(self, entry: tuple[Any, ag.BudgetPool, dict[str, int]]) -> None:
        res, pool, amounts = entry
        res.release()
        res.release()  # idempotent
        for m in self.models[id(pool)].chain:
            for dim, amount in amounts.items():
                m.reserved[dim] -= amount

    @invariant()
    def never_over_the_limit_and_matches_the_model(self) -> None:
        for pool in getattr(self, "all", []):
            model = self.models[id(pool)]
            spent = pool.spent
            reserved = pool.reserved
            for dim in DIMS:
                assert spent.get(dim, 0) == model.spent[dim], (pool.name, dim)
                assert reserved.get(dim, 0) == model.reserved[dim], (pool.name, dim)
                limit = pool.limits.get(dim)
                if limit is not None:
                    assert spent[dim] + reserved.get(dim, 0) <= limit
            assert pool.stopped == any(m.stopped for m in model.chain)

    @invariant()
    def totals_equal_the_sum_of_the_ledger(self) -> None:
        for pool in getattr(self, "all", []):
            totals = dict.fromkeys(DIMS, 0.0)
            for row in pool.ledger:
                for dim, amount in row.amounts.items():
                    totals[dim] += amount
            spent = pool.spent
            for dim in DIMS:
                assert totals[dim] == spent.get(dim, 0), (pool.name, dim)


TestPoolMachine = PoolMachine.TestCase
TestPoolMachine.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
