"""Property tests: for any sequence of charges, reservations, settlements and releases over any
pool tree, no pool ever spends past its limit (except by a settled overrun, which stops it),
refusals are exact, `budget.warn` alerts fire exactly when and where a warn mark is first
reached, and totals equal the ledger. The fast paths (a lone pool's tool calls, the gated
admit and settle of any in-memory chain) and the general path are both exercised.
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
        "llm_calls": st.integers(0, 12) | st.integers(20, 120),
        "tool_calls": st.integers(0, 12) | st.integers(20, 120),
        "total_tokens": st.integers(0, 400),
    },
)
warn_st = st.sampled_from([None, 0.5, 0.8, 1.0])
amounts_st = st.dictionaries(
    st.sampled_from(DIMS), st.integers(0, 8) | st.integers(0, 60), min_size=1, max_size=3
)


class Model:
    """An independent, obviously-correct model of one pool."""

    def __init__(
        self, name: str, limits: dict[str, int], parent: Model | None, warn_at: float | None
    ) -> None:
        self.name = name
        self.limits = limits
        self.parent = parent
        self.warn_at = warn_at
        self.warned: set[str] = set()
        self.spent = dict.fromkeys(DIMS, 0)
        self.reserved = dict.fromkeys(DIMS, 0)
        self.stopped = False
        self.overran = False

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

    def warns(self, dims: Any) -> set[tuple[str, str]]:
        """The warn alerts the amounts just applied must raise: each (pool, dimension) whose
        use first reaches `limit * warn_at` (a mark fires once)."""
        out: set[tuple[str, str]] = set()
        for m in self.chain:
            for dim in dims:
                limit = m.limits.get(dim)
                if m.warn_at is None or not limit or dim in m.warned:
                    continue
                if m.spent[dim] + m.reserved[dim] >= limit * m.warn_at:
                    m.warned.add(dim)
                    out.add((m.name, dim))
        return out

    def overruns(self, dims: Any) -> None:
        """A settle that used more than reserved: a pool now over a limit stops."""
        for m in self.chain:
            for dim in dims:
                limit = m.limits.get(dim)
                if limit is not None and m.spent[dim] + m.reserved[dim] > limit:
                    m.overran = True
                    m.stopped = True


class PoolMachine(RuleBasedStateMachine):
    pools = Bundle("pools")
    reservations = Bundle("reservations")

    @initialize(target=pools, limits=limits_st, warn_at=warn_st)
    def root(self, limits: dict[str, int], warn_at: float | None) -> Any:
        self.models: dict[int, Model] = {}
        self.all: list[ag.BudgetPool] = []
        self.alerts: list[ag.Alert] = []
        ag.on_alert(self.alerts.append)
        pool = ag.BudgetPool(name="root", custom={"jobs": 10**9}, warn_at=warn_at, **limits)
        self.models[id(pool)] = Model("root", dict(limits), None, warn_at)
        self.all.append(pool)
        return pool

    def teardown(self) -> None:
        if hasattr(self, "alerts"):
            ag.remove_alert_hook(self.alerts.append)

    def check_warns(self, since: int, expected: set[tuple[str, str]]) -> None:
        got = [
            (a.pool, a.data["dimension"])
            for a in self.alerts[since:]
            if a.kind == "budget.warn"
        ]
        assert len(got) == len(set(got)), f"a warn mark fired twice: {got}"
        assert set(got) == expected, (got, expected)

    @rule(target=pools, parent=pools, limits=limits_st, warn_at=warn_st)
    def child(self, parent: ag.BudgetPool, limits: dict[str, int], warn_at: float | None) -> Any:
        if len(self.all) >= 6:
            return multiple()
        name = f"p{len(self.all)}"
        pool = ag.BudgetPool(name=name, warn_at=warn_at, **limits)
        pool._attach(parent)
        self.models[id(pool)] = Model(name, dict(limits), self.models[id(parent)], warn_at)
        self.all.append(pool)
        return pool

    @rule(pool=pools, amounts=amounts_st)
    def charge(self, pool: ag.BudgetPool, amounts: dict[str, int]) -> None:
        model = self.models[id(pool)]
        expected = model.admit(amounts)
        since = len(self.alerts)
        try:
            pool.charge(**amounts)
        except ag.BudgetExceeded:
            assert not expected, "refused a charge that fits"
            return
        assert expected, "accepted a charge that does not fit"
        for m in model.chain:
            for dim, amount in amounts.items():
                m.spent[dim] += amount
        self.check_warns(since, model.warns(amounts))

    @rule(pool=pools, same_args=st.booleans())
    def tool_call(self, pool: ag.BudgetPool, same_args: bool) -> None:
        """The hot path of @tool_call (fast path for a lone pool, general path otherwise)."""
        model = self.models[id(pool)]
        expected = model.admit({"tool_calls": 1})
        self.calls = getattr(self, "calls", 0) + 1
        args = ("same",) if same_args else (self.calls,)
        since = len(self.alerts)
        try:
            pool._charge_tool("tool", "route", args, {}, None)
        except ag.BudgetExceeded:
            assert not expected, "refused a tool call that fits"
            return
        assert expected, "accepted a tool call that does not fit"
        pool._tool_row("route", 0.0, "ok", 0.0)
        for m in model.chain:
            m.spent["tool_calls"] += 1
        self.check_warns(since, model.warns(["tool_calls"]))

    @rule(target=reservations, pool=pools, amounts=amounts_st)
    def reserve(self, pool: ag.BudgetPool, amounts: dict[str, int]) -> Any:
        model = self.models[id(pool)]
        expected = model.admit(amounts)
        since = len(self.alerts)
        try:
            res = pool.reserve(**amounts)
        except ag.BudgetExceeded:
            assert not expected, "refused a reservation that fits"
            return multiple()
        assert expected, "accepted a reservation that does not fit"
        for m in model.chain:
            for dim, amount in amounts.items():
                m.reserved[dim] += amount
        self.check_warns(since, model.warns(amounts))
        return (res, pool, amounts)

    @rule(entry=consumes(reservations), fraction=st.sampled_from([0.0, 0.5, 1.0, 1.5, 3.0]))
    def settle(self, entry: tuple[Any, ag.BudgetPool, dict[str, int]], fraction: float) -> None:
        # 1.5, 3: the call used more than it reserved (an overrun: recorded, the pool stops)
        res, pool, amounts = entry
        actual = {dim: int(amount * fraction) for dim, amount in amounts.items()}
        model = self.models[id(pool)]
        since = len(self.alerts)
        res.settle(actual)
        for m in model.chain:
            for dim, amount in amounts.items():
                m.reserved[dim] -= amount
                m.spent[dim] += actual[dim]
        self.check_warns(since, model.warns(actual))
        model.overruns(actual)

    @rule(pool=pools, amounts=amounts_st)
    def reserve_and_overrun(self, pool: ag.BudgetPool, amounts: dict[str, int]) -> None:
        # A call that reports twice what it reserved, settled at once: near a limit this is
        # an overrun (the general path); far from it, the fast path takes it.
        model = self.models[id(pool)]
        since = len(self.alerts)
        try:
            res = pool.reserve(**amounts)
        except ag.BudgetExceeded:
            assert not model.admit(amounts), "refused a reservation that fits"
            return
        assert model.admit(amounts), "accepted a reservation that does not fit"
        actual = {dim: 2 * amount for dim, amount in amounts.items()}
        res.settle(actual)
        for m in model.chain:
            for dim in amounts:
                m.spent[dim] += actual[dim]
        self.check_warns(since, model.warns(actual))
        model.overruns(actual)

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
                if limit is not None and not model.overran:
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
