"""The budget pool: charged before every innermost call, hard stop at zero, shared by the tree."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import agentguard as ag
from agentguard import _config


class FakeClock(_config.Clock):
    def __init__(self) -> None:
        self.t = 1000.0

    def monotonic(self) -> float:
        return self.t


def test_call_over_the_limit_never_starts_and_names_everything() -> None:
    ran: list[str] = []

    @ag.tool_call(route="crm.lookup")
    def lookup(order_id: str) -> str:
        ran.append(order_id)
        return order_id

    with ag.BudgetPool(tool_calls=2, name="triage"):
        lookup("a")
        lookup("b")
        with pytest.raises(ag.BudgetExceeded) as info:
            lookup("c")
    assert ran == ["a", "b"]
    err = info.value
    assert (err.pool, err.dimension, err.limit, err.spent, err.requested) == (
        "triage",
        "tool_calls",
        2,
        2,
        1,
    )
    assert err.function == "lookup" and err.route == "crm.lookup"
    text = str(err)
    for part in ("'triage'", "tool_calls", "limit of 2", "2 spent", "'lookup'", "'crm.lookup'",
                 "Fix:"):
        assert part in text


def test_stopped_pool_refuses_even_after_the_first_error_was_swallowed() -> None:
    calls = 0

    @ag.llm_call(route="chat", max_tokens=10)
    def chat(prompt: str) -> dict[str, object]:
        nonlocal calls
        calls += 1
        return {"usage": {"input_tokens": 1, "output_tokens": 1}}

    pool = ag.BudgetPool(llm_calls=3, name="run")
    with pool:
        for _ in range(10):
            try:
                chat("hi")
            except ag.BudgetExceeded:
                pass  # a framework that swallows the error and keeps going
    assert calls == 3
    assert pool.stopped
    with pool, pytest.raises(ag.BudgetExceeded, match="stopped since an earlier refusal"):
        ag.charge(llm_calls=0)


def test_nested_subagent_cannot_outspend_parent_even_with_a_bigger_own_budget() -> None:
    """Limit 20 on the agent; its tools retry internally and call a sub-agent with limit 50."""
    innermost = 0

    @ag.tool_call(route="search", loop_limit=None)
    def search(q: str) -> list[str]:
        nonlocal innermost
        innermost += 1
        return []

    def tool_that_retries(q: str) -> None:
        for _ in range(3):
            search(q)

    def sub_agent(q: str) -> None:
        with ag.BudgetPool(tool_calls=50, name="sub"):
            for i in range(10):
                tool_that_retries(f"{q}/{i}")

    parent = ag.BudgetPool(tool_calls=20, name="agent")
    with parent, pytest.raises(ag.BudgetExceeded) as info:
        for step in range(10):
            tool_that_retries(f"step{step}")
            sub_agent(f"step{step}")
    assert innermost == 20
    assert info.value.pool == "agent"
    assert parent.spent["tool_calls"] == 20
    assert sum(c.spent["tool_calls"] for c in parent.children) + 3 == 20
    # The stopped pool refuses new sub-agents too, even after the error was caught.
    with parent, pytest.raises(ag.BudgetExceeded), ag.BudgetPool(tool_calls=5, name="late"):
        search("again")
    assert innermost == 20


def test_child_limit_stops_the_child_but_not_the_parent() -> None:
    @ag.tool_call(loop_limit=None)
    def work() -> None:
        return None

    with ag.BudgetPool(tool_calls=10, name="parent") as parent:
        with pytest.raises(ag.BudgetExceeded) as info, ag.BudgetPool(tool_calls=2, name="child"):
            for _ in range(5):
                work()
        assert info.value.pool == "child"
        work()  # the parent still has budget
    assert parent.spent["tool_calls"] == 3
    assert not parent.stopped


async def test_parallel_delegation_to_eight_subagents_makes_exactly_the_limit() -> None:
    """pydantic-ai-harness #696: limit 9 with 8 parallel delegations reached 16."""
    done = 0

    @ag.tool_call(loop_limit=None)
    async def delegate_step(i: int) -> int:
        nonlocal done
        await asyncio.sleep(0)
        done += 1
        return i

    async def sub_agent(i: int) -> None:
        async with ag.BudgetPool(tool_calls=20, name=f"sub{i}"):
            for _ in range(3):
                await delegate_step(i)
                await asyncio.sleep(0)

    async with ag.BudgetPool(tool_calls=9, name="parent"):
        results = await asyncio.gather(*(sub_agent(i) for i in range(8)), return_exceptions=True)
    assert done == 9
    assert sum(isinstance(r, ag.BudgetExceeded) for r in results) >= 1


def test_no_active_pool_fails_closed_with_a_fix() -> None:
    @ag.tool_call
    def tool() -> None:
        raise AssertionError("must not run")

    with pytest.raises(ag.NoActivePool) as info:
        tool()
    text = str(info.value)
    assert "with ag.BudgetPool" in text and "pool.bind" in text and "default_pool" in text


def test_process_default_pool_is_used_outside_any_pool() -> None:
    @ag.tool_call
    def tool() -> int:
        return 1

    default = ag.BudgetPool(tool_calls=1, name="default")
    ag.configure(default_pool=default)
    assert tool() == 1
    with pytest.raises(ag.BudgetExceeded):
        tool()
    assert ag.current_pool() is default


def test_raw_thread_without_bind_fails_closed_and_bind_hands_the_pool_over() -> None:
    @ag.tool_call(loop_limit=None)
    def tool() -> int:
        return 1

    outcome: dict[str, object] = {}

    def target(key: str) -> None:
        try:
            outcome[key] = tool()
        except ag.NoActivePool as exc:
            outcome[key] = exc

    with ag.BudgetPool(tool_calls=5, name="run") as pool:
        t = threading.Thread(target=target, args=("raw",))
        t.start()
        t.join()
        t = threading.Thread(target=pool.bind(target), args=("bound",))
        t.start()
        t.join()
    assert isinstance(outcome["raw"], ag.NoActivePool)
    assert outcome["bound"] == 1
    assert pool.spent["tool_calls"] == 1


async def test_context_crosses_tasks_to_thread_and_copied_executor_contexts() -> None:
    @ag.tool_call(loop_limit=None)
    def tool() -> int:
        return 1

    with ag.BudgetPool(tool_calls=10, name="run") as pool:
        await asyncio.to_thread(tool)
        await asyncio.gather(*(asyncio.create_task(asyncio.to_thread(tool)) for _ in range(3)))
        with ThreadPoolExecutor(2) as ex:
            ctx = contextvars.copy_context()
            ex.submit(ctx.run, tool).result()
            ex.submit(pool.bind(tool)).result()
    assert pool.spent["tool_calls"] == 6


def test_threads_and_tasks_together_make_exactly_the_limit() -> None:
    """10,000 asyncio tasks and 16 threads on one pool of 5,000 calls: exactly 5,000 run."""
    ran = 0
    lock = threading.Lock()

    @ag.tool_call(loop_limit=None)
    def sync_tool() -> None:
        nonlocal ran
        with lock:
            ran += 1

    @ag.tool_call(loop_limit=None)
    async def async_tool() -> None:
        nonlocal ran
        await asyncio.sleep(0)
        with lock:
            ran += 1

    pool = ag.BudgetPool(tool_calls=5000, name="stress", warn_at=None)

    def thread_worker() -> None:
        for _ in range(500):
            try:
                sync_tool()
            except ag.BudgetExceeded:
                return

    async def task_worker() -> None:
        try:
            await async_tool()
        except ag.BudgetExceeded:
            pass

    async def main() -> None:
        threads = [threading.Thread(target=pool.bind(thread_worker)) for _ in range(16)]
        for t in threads:
            t.start()
        await asyncio.gather(*(task_worker() for _ in range(10_000)))
        for t in threads:
            t.join()

    with pool:
        asyncio.run(main())
    assert ran == 5000
    assert pool.spent["tool_calls"] == 5000


def test_llm_calls_from_16_threads_over_a_pool_tree_are_exact_and_warn_once() -> None:
    """The LLM fast path (gated admit and settle) under contention: 16 threads on 4 child
    pools of one root. The root's limit binds first: exactly 700 calls, each warn mark fires
    once, nothing stays reserved, and the ledger adds up to what was spent."""
    alerts: list[ag.Alert] = []
    ag.on_alert(alerts.append)

    @ag.llm_call(model="m", max_tokens=10)
    def chat() -> dict[str, Any]:
        return {"usage": {"input_tokens": 3, "output_tokens": 5}}

    root = ag.BudgetPool(llm_calls=700, output_tokens=10**6, warn_at=0.5, name="root")
    made = [0] * 16

    def worker(i: int) -> None:
        for _ in range(400):
            try:
                chat()
            except ag.BudgetExceeded:
                return
            made[i] += 1

    with root:
        children = [
            ag.BudgetPool(llm_calls=250, output_tokens=10**6, warn_at=0.2, name=f"c{k}")
            for k in range(4)
        ]
        for child in children:
            child._attach(root)
        threads = [
            threading.Thread(target=children[i % 4].bind(worker), args=(i,)) for i in range(16)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sum(made) == 700
    assert root.spent["llm_calls"] == 700
    assert root.spent["output_tokens"] == 5 * 700
    assert sum(c.spent["llm_calls"] for c in children) == 700
    assert root.reserved == {} and all(c.reserved == {} for c in children)
    warns = [(a.pool, a.data["dimension"]) for a in alerts if a.kind == "budget.warn"]
    expected = {("root", "llm_calls")} | {
        (c.name, "llm_calls") for c in children if c.spent["llm_calls"] >= 50
    }
    assert sorted(warns) == sorted(expected)  # each mark once, none twice
    rows = [r for r in root.ledger if r.outcome == "ok"]
    assert len(rows) == 700
    assert sum(r.amounts["output_tokens"] for r in rows) == 5 * 700


def test_wall_seconds_stops_the_run_at_its_next_call() -> None:
    clock = FakeClock()
    restore = _config._set_clock(clock)
    try:

        @ag.tool_call(loop_limit=None)
        def tool() -> None:
            return None

        with ag.BudgetPool(wall_seconds=300, name="job") as pool:
            tool()
            clock.t += 299
            tool()
            clock.t += 2
            with pytest.raises(ag.BudgetExceeded) as info:
                tool()
        assert info.value.dimension == "wall_seconds"
        assert "wall-clock limit of 300 s" in str(info.value)
        assert pool.stopped
        assert pool.remaining["wall_seconds"] == 0
    finally:
        restore()


def test_custom_counters_and_unknown_counter_names() -> None:
    with ag.BudgetPool(custom={"emails_sent": 2}, name="mailer") as pool:
        ag.charge(emails_sent=1)
        ag.charge(emails_sent=1)
        with pytest.raises(ag.BudgetExceeded, match="emails_sent"):
            ag.charge(emails_sent=1)
    assert pool.spent["emails_sent"] == 2
    with ag.BudgetPool(name="typo"), pytest.raises(ag.ConfigurationError, match="emials_sent"):
        ag.charge(emials_sent=1)
    with pytest.raises(ag.NoActivePool):
        ag.charge(emails_sent=1)


def test_invalid_limits_are_rejected_with_a_fix() -> None:
    with pytest.raises(ag.ConfigurationError, match="must be >= 0"):
        ag.BudgetPool(tool_calls=-1)
    with pytest.raises(ag.ConfigurationError, match="number or None"):
        ag.BudgetPool(llm_calls="20")  # type: ignore[arg-type]
    with pytest.raises(ag.ConfigurationError, match="clashes"):
        ag.BudgetPool(custom={"llm_calls": 3})
    with pytest.raises(ag.ConfigurationError, match="warn_at"):
        ag.BudgetPool(warn_at=1.5)


def test_warn_alert_fires_once_and_stop_alert_fires(captured_alerts: list[ag.Alert]) -> None:
    @ag.tool_call(loop_limit=None)
    def tool() -> None:
        return None

    with ag.BudgetPool(tool_calls=10, name="run"):
        for _ in range(9):
            tool()
        with pytest.raises(ag.BudgetExceeded):
            tool()
            tool()
    kinds = [a.kind for a in captured_alerts]
    assert kinds == ["budget.warn", "budget.stopped"]
    warn = captured_alerts[0]
    assert warn.pool == "run" and warn.guard_id == "budget:run"
    assert warn.data["used"] == 8 and warn.data["limit"] == 10


def test_a_failing_alert_hook_is_reported_and_never_breaks_the_call(
    agentguard_logs: pytest.LogCaptureFixture,
) -> None:
    def broken(alert: ag.Alert) -> None:
        raise RuntimeError("pager down")

    ag.on_alert(broken)
    try:

        @ag.tool_call(loop_limit=None)
        def tool() -> int:
            return 7

        with ag.BudgetPool(tool_calls=1, warn_at=0.5):
            assert tool() == 7
    finally:
        ag.remove_alert_hook(broken)
    errors = [r for r in agentguard_logs.records if r.levelname == "ERROR"]
    assert any("pager down" in (r.exc_text or "") or r.exc_info for r in errors)
    assert any("alert hook" in r.getMessage() for r in errors)


async def test_async_alert_hooks_run_on_the_loop() -> None:
    seen: list[str] = []

    async def hook(alert: ag.Alert) -> None:
        await asyncio.sleep(0)
        seen.append(alert.kind)

    ag.on_alert(hook)
    try:

        @ag.tool_call(loop_limit=None)
        async def tool() -> None:
            return None

        async with ag.BudgetPool(tool_calls=2, warn_at=0.5):
            await tool()
            await asyncio.sleep(0.01)
    finally:
        ag.remove_alert_hook(hook)
    assert seen == ["budget.warn"]


def test_sync_code_runs_async_alert_hooks_to_completion() -> None:
    seen: list[str] = []

    async def hook(alert: ag.Alert) -> None:
        seen.append(alert.kind)

    ag.on_alert(hook)
    try:
        with ag.BudgetPool(custom={"x": 1}, warn_at=1.0):
            ag.charge(x=1)
    finally:
        ag.remove_alert_hook(hook)
    assert seen == ["budget.warn"]


def test_loop_guard_stops_the_search_and_retry_loop() -> None:
    calls = 0

    @ag.tool_call(route="kb.search")
    def search(query: str, k: int = 5) -> list[str]:
        nonlocal calls
        calls += 1
        return []

    with ag.BudgetPool(tool_calls=100, name="agent") as pool:
        search("refund policy", k=5)
        search("other")
        search("refund policy", k=5)
        search("refund policy", k=5)
        with pytest.raises(ag.LoopDetected) as info:
            search("refund policy", k=5)
    assert calls == 4
    err = info.value
    assert isinstance(err, ag.BudgetExceeded)
    assert err.tool == "search" and err.count == 4 and err.loop_limit == 3
    assert "<str len=13 #" in err.arguments and "k=<int #" in err.arguments  # no clear values
    assert "refund policy" not in str(err)
    assert pool.stopped


def test_loop_guard_can_be_turned_off_per_tool_or_configured_per_pool() -> None:
    @ag.tool_call(loop_limit=None)
    def poll(job: str) -> str:
        return "pending"

    @ag.tool_call
    def fetch(url: str) -> str:
        return "x"

    with ag.BudgetPool(name="poller"):
        for _ in range(20):
            poll("job-1")
    with ag.BudgetPool(loop_limit=5, name="patient"):
        for _ in range(5):
            fetch("u")
        with pytest.raises(ag.LoopDetected):
            fetch("u")
    with ag.BudgetPool(loop_limit=None, name="off"):
        for _ in range(10):
            fetch("u")


def test_loop_guard_handles_unhashable_arguments() -> None:
    @ag.tool_call
    def query(filters: dict[str, list[int]]) -> int:
        return 0

    with ag.BudgetPool(name="run"):
        for _ in range(3):
            query({"ids": [1, 2]})
        query({"ids": [1, 3]})
        with pytest.raises(ag.LoopDetected):
            query(filters={"ids": [1, 2]}) if False else query({"ids": [1, 2]})


def test_loop_window_forgets_old_calls() -> None:
    @ag.tool_call
    def tool(i: int) -> int:
        return i

    with ag.BudgetPool(loop_window=4, name="run"):
        for _ in range(3):
            tool(0)
            for j in range(1, 5):
                tool(j)  # pushes the earlier tool(0) out of the window


def test_snapshot_remaining_and_tree_report() -> None:
    @ag.tool_call(loop_limit=None)
    def tool() -> None:
        return None

    with ag.BudgetPool(tool_calls=10, llm_calls=5, name="root") as root:
        tool()
        with ag.BudgetPool(tool_calls=3, name="child"):
            tool()
            tool()
        snap = root.snapshot()
        assert root.remaining["tool_calls"] == 7
        assert root.remaining["llm_calls"] == 5
        assert ag.current_pool() is root
    assert snap.spent["tool_calls"] == 3
    assert snap.children[0].name == "child" and snap.children[0].spent["tool_calls"] == 2
    report = root.tree()
    assert "root [ok] llm_calls 0/5, tool_calls 3/10" in report
    assert "  child [ok] tool_calls 2/3" in report
    assert ag.current_pool(required=False) is None


def test_errors_share_one_base() -> None:
    from agentguard import errors

    exceptions = [getattr(errors, n) for n in errors.__all__]
    exceptions = [c for c in exceptions if isinstance(c, type) and issubclass(c, BaseException)]
    assert len(exceptions) >= 14
    for cls in exceptions:
        assert issubclass(cls, ag.AgentGuardError), cls
    for cls in (ag.BudgetExceeded, ag.LoopDetected, ag.NoActivePool, ag.BudgetUnavailable,
                ag.ToolArgumentError, ag.CorrectionsExhausted, ag.ContractViolation,
                ag.ContentAnomaly, ag.RetriesExhausted, ag.BypassError, ag.UnknownPrice):
        assert issubclass(cls, ag.AgentGuardError)


def test_a_pool_already_used_as_root_cannot_be_reparented() -> None:
    pool = ag.BudgetPool(name="first")
    with pool:
        ag.charge(llm_calls=1)
    with ag.BudgetPool(name="other"), pytest.raises(ag.ConfigurationError, match="re-entered"):
        pool.__enter__()
