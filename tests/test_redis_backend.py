"""The Redis backend against a real redis-server on loopback (see tests/redis_server.py)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest
import redis

import agentguard as ag
from agentguard import _config, _remote, bypasses
from agentguard.backends.redis import CHARGE, FAST
from tests import redis_workers
from tests.redis_server import RedisServer


class ShiftedClock(ag.Clock):
    """Real time plus an offset the test moves (no sleeping for leases and windows)."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(timezone.utc) + self.offset


@pytest.fixture
def clock() -> Iterator[ShiftedClock]:
    c = ShiftedClock()
    restore = _config._set_clock(c)
    yield c
    restore()


@pytest.fixture
def backend(redis_url: str, redis_prefix: str) -> Callable[..., ag.RedisBackend]:
    """A factory of backends on this test's prefix (each is a separate client: a 'process')."""

    def make(key: str = "run", **kw: Any) -> ag.RedisBackend:
        return ag.RedisBackend(redis_url, key=key, prefix=redis_prefix, **kw)

    return make


@pytest.fixture
def admin(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


class Monitor:
    """Every command clients send to the server (MONITOR), minus those run inside scripts."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url, decode_responses=True)
        self.marker_client = redis.Redis.from_url(url, decode_responses=True)
        self.marker_client.ping()  # connect now: the end marker adds no handshake to the log
        self.monitor = self.client.monitor()
        self.monitor.__enter__()
        self.marker = f"monitor-end-{os.getpid()}-{id(self)}"

    def commands(self) -> list[str]:
        """Stop watching; the client-sent commands seen since start, in order."""
        self.marker_client.echo(self.marker)
        seen: list[str] = []
        while True:
            cmd = self.monitor.next_command()
            if self.marker in cmd["command"]:
                break
            if cmd.get("client_type") != "lua":
                seen.append(cmd["command"].split(" ")[0].upper())
        self.monitor.__exit__(None, None, None)
        self.client.close()
        self.marker_client.close()
        return seen


# -- sharing across processes -------------------------------------------------------------


@pytest.mark.slow
def test_eight_processes_cannot_jointly_overspend_a_shared_pool(
    backend: Callable[..., ag.RedisBackend], redis_url: str, redis_prefix: str
) -> None:
    creator = backend("fleet-run", create=True)
    with ag.BudgetPool(tool_calls=5000, name="fleet", backend=creator, warn_at=None) as pool:
        pool.charge(llm_calls=0)  # creates the key
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    results = ctx.Queue()
    ready = ctx.Queue()
    procs = [
        ctx.Process(
            target=redis_workers.charge_many,
            args=(redis_url, redis_prefix, "fleet-run", 2000, start, results, ready),
        )
        for _ in range(8)
    ]
    for p in procs:
        p.start()
    for _ in procs:  # every worker has opened the pool before any charges (else a late
        ready.get(timeout=120)  # one could find it already stopped while opening)
    start.set()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert sum(ok for ok, _ in outcomes) == 5000
    assert sum(refused for _, refused in outcomes) == 16000 - 5000
    state = creator.state()
    assert state.spent["tool_calls"] == 5000
    assert state.stopped


async def test_ten_thousand_tasks_on_the_asyncio_client_spend_exactly_the_limit(
    backend: Callable[..., ag.RedisBackend],
) -> None:
    b = backend("async-run", create=True, max_connections=16)
    ok = refused = 0
    async with ag.BudgetPool(tool_calls=5000, name="async", backend=b, warn_at=None) as pool:

        async def one() -> None:
            nonlocal ok, refused
            try:
                await pool.acharge(tool_calls=1)
                ok += 1
            except ag.BudgetExceeded:
                refused += 1

        await asyncio.gather(*(one() for _ in range(10_000)))
    assert (ok, refused) == (5000, 5000)
    assert b.state().spent["tool_calls"] == 5000


async def test_async_reserve_settle_and_release_round_trip(
    backend: Callable[..., ag.RedisBackend],
) -> None:
    b = backend(create=True)
    async with ag.BudgetPool(output_tokens=1000, name="a", backend=b) as pool:
        r = await pool.areserve(output_tokens=600, route="chat")
        assert b.state().reserved == {"output_tokens": 600}
        await r.asettle({"output_tokens": 250})
        r2 = await pool.areserve(output_tokens=700)
        await r2.arelease()
    state = b.state()
    assert state.spent["output_tokens"] == 250
    assert state.reserved == {}
    assert [row.outcome for row in pool.ledger] == ["ok", "error"]


class _AsyncOnlyBackend(ag.RedisBackend):
    """A backend whose synchronous side raises: async code must never block on it."""

    def sync_client(self) -> redis.Redis:
        raise AssertionError("the synchronous Redis client was used from async code")

    def run(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a synchronous Redis round trip blocked the event loop")

    def run_packed(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a synchronous Redis round trip blocked the event loop")


async def test_async_tools_and_llm_calls_on_redis_never_block_the_event_loop(
    redis_url: str, redis_prefix: str
) -> None:
    b = _AsyncOnlyBackend(redis_url, key="run", prefix=redis_prefix, create=True)

    @ag.tool_call
    async def lookup(q: str) -> str:
        return q

    @ag.llm_call(max_tokens=200, input_tokens=50)
    async def ask(prompt: str) -> str:
        ag.record_usage(input_tokens=40, output_tokens=120)
        return prompt

    @ag.llm_call(max_tokens=200, input_tokens=50)
    async def broken(prompt: str) -> str:
        raise ValueError(prompt)

    async with ag.BudgetPool(
        tool_calls=10, llm_calls=10, output_tokens=10_000, name="run", backend=b
    ) as pool:
        await asyncio.gather(*(lookup(f"q{i}") for i in range(5)))
        assert await ask("hi") == "hi"
        with pytest.raises(ValueError):
            await broken("boom")
    reader = ag.RedisBackend(redis_url, key="run", prefix=redis_prefix)
    state = reader.state()
    reader.close()
    assert state.spent["tool_calls"] == 5
    assert state.spent["llm_calls"] == 2
    assert state.spent["output_tokens"] == 120
    assert state.reserved == {}  # the failed call's reservation was released
    assert pool.spent["output_tokens"] == 120


# -- one round trip per charge -------------------------------------------------------------


def test_a_charge_is_one_round_trip(
    backend: Callable[..., ag.RedisBackend], redis_url: str
) -> None:
    root_b = backend("root", create=True)
    child_b = backend("child", create=True)
    with ag.BudgetPool(tool_calls=1000, cost_usd=5, name="root", backend=root_b):
        with ag.BudgetPool(tool_calls=500, name="child", backend=child_b):
            with ag.BudgetPool(tool_calls=100, name="local") as leaf:

                @ag.tool_call
                def lookup(q: str) -> str:
                    return q

                lookup("warm-up")  # opens both keys, loads the script
                watch = Monitor(redis_url)
                for i in range(40):
                    lookup(f"q{i}")
                for _ in range(10):
                    leaf.charge(cost_usd=0.01)
                seen = watch.commands()
    assert seen == ["EVALSHA"] * 50


def test_script_flush_is_recovered_transparently(
    backend: Callable[..., ag.RedisBackend], admin: redis.Redis, redis_url: str
) -> None:
    b = backend(create=True)
    with ag.BudgetPool(tool_calls=10, name="run", backend=b) as pool:
        pool.charge(tool_calls=1)
        admin.script_flush()
        watch = Monitor(redis_url)
        pool.charge(tool_calls=1)  # NOSCRIPT -> SCRIPT LOAD -> EVALSHA, once
        pool.charge(tool_calls=1)
        assert watch.commands() == ["EVALSHA", "SCRIPT", "EVALSHA", "EVALSHA"]
    assert b.state().spent["tool_calls"] == 3


def test_a_retried_charge_id_is_charged_once(backend: Callable[..., ag.RedisBackend]) -> None:
    b = backend(create=True)
    with ag.BudgetPool(tool_calls=10, name="run", backend=b) as pool:
        pool.charge(tool_calls=0)
        plan = _remote._plan(pool)
        keys, args, _, _ = plan.build("a", pool, {"tool_calls": 3.0}, {}, "", None, None, None)
        first = b.run(CHARGE, keys, args, pool.name)
        again = b.run(CHARGE, keys, args, pool.name)  # a reconnect re-sends the same id
    assert first == again
    assert b.state().spent["tool_calls"] == 3


def test_a_resent_plain_charge_is_charged_once(backend: Callable[..., ag.RedisBackend]) -> None:
    b = backend(create=True)
    with ag.BudgetPool(tool_calls=10, name="run", backend=b) as pool:
        pool.charge(tool_calls=0)
        plan = _remote._plan(pool)
        slot = _remote._take_slot()
        assert slot is not None
        now = _remote._wall_now()
        keys, data = _remote._fast_packed(plan, pool, {"tool_calls": 3.0}, None, None, now, slot)
        first = b.run_packed(FAST, data, pool.name, keys[1])
        again = b.run_packed(FAST, data, pool.name, keys[1])  # a reconnect re-sends it
        assert first == again == "ok"
        assert b.state().spent["tool_calls"] == 3
        # the slot's next charge is a new one: it is applied
        keys, data = _remote._fast_packed(plan, pool, {"tool_calls": 2.0}, None, None, now, slot)
        assert b.run_packed(FAST, data, pool.name, keys[1]) == "ok"
    assert b.state().spent["tool_calls"] == 5


def test_forty_threads_cannot_overspend_when_slots_run_out(
    backend: Callable[..., ag.RedisBackend],
) -> None:
    # more threads than idempotency slots: some charges take charge.lua, all stay exact
    b = backend(create=True)
    pool = ag.BudgetPool(tool_calls=3000, name="run", backend=b, warn_at=None)
    pool.charge(tool_calls=0)
    counts = {"ok": 0, "refused": 0}
    lock = threading.Lock()
    gate = threading.Barrier(40)

    def work() -> None:
        gate.wait()
        for _ in range(100):
            try:
                pool.charge(tool_calls=1)
                outcome = "ok"
            except ag.BudgetExceeded:
                outcome = "refused"
            with lock:
                counts[outcome] += 1

    threads = [threading.Thread(target=work) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counts == {"ok": 3000, "refused": 1000}
    assert b.state().spent["tool_calls"] == 3000
    assert pool.spent["tool_calls"] == 3000


def test_a_dropped_connection_is_reconnected_without_double_charge(
    backend: Callable[..., ag.RedisBackend], admin: redis.Redis
) -> None:
    b = backend(create=True)
    with ag.BudgetPool(tool_calls=10, name="run", backend=b) as pool:
        pool.charge(tool_calls=1)
        admin.client_kill_filter(_type="normal", skipme=True)
        pool.charge(tool_calls=1)
        assert pool.spent["tool_calls"] == 2  # the timed-out call did not proceed
    # The timed-out EVALSHA sat in the server's socket buffer and may run on resume: Redis
    # can count a refused call (conservative), never give one away.
    assert b.state().spent["tool_calls"] in (2, 3)


# -- nesting -------------------------------------------------------------------------------


def test_in_memory_subagent_cannot_outspend_its_redis_parent(
    backend: Callable[..., ag.RedisBackend],
) -> None:
    b = backend(create=True)
    with ag.BudgetPool(cost_usd=1.0, name="run", backend=b, warn_at=None) as run:
        with ag.BudgetPool(cost_usd=10.0, name="subagent", warn_at=None) as sub:
            sub.charge(cost_usd=0.75)
            with pytest.raises(ag.BudgetExceeded) as info:
                sub.charge(cost_usd=0.5)
    assert info.value.pool == "run"
    assert info.value.charged_pool == "subagent"
    assert b.state().spent["cost_usd"] == 0.75
    assert sub.spent["cost_usd"] == 0.75  # the refused charge was rolled back locally
    assert run.stopped and sub.stopped


def test_redis_child_is_charged_atomically_with_its_redis_parent(
    backend: Callable[..., ag.RedisBackend],
) -> None:
    parent_b = backend("tenant", create=True)
    child_b = backend("tenant:run-1", create=True)
    with ag.BudgetPool(tool_calls=3, name="tenant", backend=parent_b, warn_at=None):
        with ag.BudgetPool(tool_calls=10, name="run-1", backend=child_b, warn_at=None) as run:
            for _ in range(3):
                run.charge(tool_calls=1)
            with pytest.raises(ag.BudgetExceeded) as info:
                run.charge(tool_calls=1)
    assert info.value.pool == "tenant"
    assert parent_b.state().spent["tool_calls"] == 3
    assert child_b.state().spent["tool_calls"] == 3  # all or nothing: the child was not charged
    assert parent_b.state().stopped and not child_b.state().stopped


def test_local_child_refusal_never_reaches_redis(
    backend: Callable[..., ag.RedisBackend], redis_url: str
) -> None:
    b = backend(create=True)
    with ag.BudgetPool(tool_calls=100, name="run", backend=b):
        with ag.BudgetPool(tool_calls=1, name="step", warn_at=None) as step:
            step.charge(tool_calls=1)
            watch = Monitor(redis_url)
            with pytest.raises(ag.BudgetExceeded):
                step.charge(tool_calls=1)
            assert watch.commands() == []
    assert b.state().spent["tool_calls"] == 1


def test_opening_a_key_under_another_parent_is_refused(
    backend: Callable[..., ag.RedisBackend],
) -> None:
    with ag.BudgetPool(tool_calls=5, name="t", backend=backend("tenant", create=True)):
        with ag.BudgetPool(tool_calls=5, name="r", backend=backend("run", create=True)) as r:
            r.charge(tool_calls=1)
    with ag.BudgetPool(tool_calls=5, name="r", backend=backend("run")) as alone:
        with pytest.raises(ag.ConfigurationError, match="created under"):
            alone.charge(tool_calls=1)


# -- stop flag, limits, settle -------------------------------------------------------------


def test_a_refusal_stops_the_pool_in_every_process(
    backend: Callable[..., ag.RedisBackend],
) -> None:
    with ag.BudgetPool(tool_calls=2, name="run", backend=backend(create=True)) as a:
        a.charge(tool_calls=2)
        with pytest.raises(ag.BudgetExceeded):
            a.charge(tool_calls=1)
    with ag.BudgetPool(name="run", backend=backend()) as b:  # another process: fresh state
        with pytest.raises(ag.BudgetExceeded) as info:
            b.charge(llm_calls=1)  # a dimension with room: the stop is sticky anyway
    assert info.value.stopped_earlier
    assert "stopped since an earlier refusal" in str(info.value)
    assert b.stopped


def test_an_opener_adopts_the_creators_limits_and_rejects_different_ones(
    backend: Callable[..., ag.RedisBackend],
) -> None:
    with ag.BudgetPool(
        tool_calls=3, custom={"emails": 2}, name="run", backend=backend(create=True)
    ) as a:
        a.charge(emails=1)
    with ag.BudgetPool(name="run", backend=backend()) as b:
        b.charge(emails=1)
        assert b.limits == {"tool_calls": 3, "emails": 2}
        with pytest.raises(ag.BudgetExceeded):
            ag.charge(emails=1)
    with ag.BudgetPool(tool_calls=4, name="run", backend=backend()) as c:
        with pytest.raises(ag.ConfigurationError, match="holds limits"):
            c.charge(tool_calls=1)


def test_settle_overrun_stops_the_shared_pool(backend: Callable[..., ag.RedisBackend]) -> None:
    with ag.BudgetPool(output_tokens=1000, name="run", backend=backend(create=True)) as a:
        r = a.reserve(output_tokens=500, route="chat")
        r.settle({"output_tokens": 1200})
        assert a.stopped
    state = backend().state()
    assert state.spent["output_tokens"] == 1200
    assert state.stopped and '"overrun"' in (state.stop or "")
    with ag.BudgetPool(name="run", backend=backend()) as b:
        with pytest.raises(ag.BudgetExceeded, match="overran"):
            b.reserve(output_tokens=1)


def test_loop_guard_still_applies_on_a_redis_pool(backend: Callable[..., ag.RedisBackend]) -> None:
    @ag.tool_call(loop_limit=2)
    def search(q: str) -> list[str]:
        return []

    with ag.BudgetPool(tool_calls=100, name="run", backend=backend(create=True)):
        search("same")
        search("same")
        with pytest.raises(ag.LoopDetected):
            search("same")
        with pytest.raises(ag.BudgetExceeded, match="stopped since an earlier refusal"):
            search("different")  # the stop is sticky on a Redis-backed pool too


# -- fail closed ---------------------------------------------------------------------------


def test_a_key_that_was_never_created_is_unavailable(
    backend: Callable[..., ag.RedisBackend],
) -> None:
    with ag.BudgetPool(tool_calls=5, name="run", backend=backend("nobody-made-me")) as pool:
        with pytest.raises(ag.BudgetUnavailable) as info:
            pool.charge(tool_calls=1)
    message = str(info.value)
    assert "'run'" in message and "nobody-made-me" in message and "create=True" in message
    assert info.value.pool == "run"


def test_a_flushed_key_is_never_recreated_with_a_full_budget(
    backend: Callable[..., ag.RedisBackend], admin: redis.Redis
) -> None:
    creator = backend(create=True)
    with ag.BudgetPool(tool_calls=5, name="run", backend=creator) as pool:
        pool.charge(tool_calls=4)
        assert creator.delete() >= 1  # eviction / FLUSHALL / restart without persistence
        with pytest.raises(ag.BudgetUnavailable, match="does not exist"):
            pool.charge(tool_calls=1)  # even the creating process does not re-create it
        assert pool.spent["tool_calls"] == 4
        assert pool.ledger[-1].outcome == "unavailable"
    with ag.BudgetPool(tool_calls=5, name="run", backend=backend(create=True)) as again:
        again.charge(tool_calls=5)  # explicit re-creation: a new full budget, on purpose


def test_redis_down_fails_closed_and_persistence_resumes_the_pool(
    own_redis: Callable[..., RedisServer], redis_prefix: str
) -> None:
    server = own_redis(persist=True)
    b = ag.RedisBackend(server.url, key="run", prefix=redis_prefix, create=True)
    with ag.BudgetPool(tool_calls=100, name="run", backend=b, warn_at=None) as pool:
        for _ in range(30):
            pool.charge(tool_calls=1)
        server.kill()
        for _ in range(5):
            with pytest.raises(ag.BudgetUnavailable) as info:
                pool.charge(tool_calls=1)
        assert "fails closed" in str(info.value) and server.url.split("//")[1] in str(info.value)
        server.start()  # same port, same appendonly file
        done = 0
        with pytest.raises(ag.BudgetExceeded):
            while True:
                pool.charge(tool_calls=1)
                done += 1
    assert done == 70
    assert b.state().spent["tool_calls"] == 100


def test_restart_without_persistence_refuses_instead_of_resetting(
    own_redis: Callable[..., RedisServer], redis_prefix: str
) -> None:
    server = own_redis(persist=False)
    b = ag.RedisBackend(server.url, key="run", prefix=redis_prefix, create=True)
    with ag.BudgetPool(tool_calls=100, name="run", backend=b) as pool:
        pool.charge(tool_calls=60)
        server.kill()
        server.start()
        with pytest.raises(ag.BudgetUnavailable, match="does not exist"):
            pool.charge(tool_calls=1)


def test_a_hung_redis_times_out_into_budget_unavailable(
    own_redis: Callable[..., RedisServer], redis_prefix: str
) -> None:
    server = own_redis()
    b = ag.RedisBackend(
        server.url, key="run", prefix=redis_prefix, create=True, socket_timeout=0.2, retries=0
    )
    with ag.BudgetPool(tool_calls=10, name="run", backend=b) as pool:
        pool.charge(tool_calls=1)
        server.pause()
        try:
            with pytest.raises(ag.BudgetUnavailable, match="Timeout"):
                pool.charge(tool_calls=1)
        finally:
            server.resume()
        pool.charge(tool_calls=1)
        assert pool.spent["tool_calls"] == 2  # the timed-out call did not proceed
    # The timed-out EVALSHA sat in the server's socket buffer and may run on resume: Redis
    # can count a refused call (conservative), never give one away.
    assert b.state().spent["tool_calls"] in (2, 3)


# -- leases --------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_sigkilled_workers_reservation_is_reclaimed_after_its_lease(
    backend: Callable[..., ag.RedisBackend],
    redis_url: str,
    redis_prefix: str,
    clock: ShiftedClock,
) -> None:
    b = backend("leased", create=True, lease_seconds=30)
    with ag.BudgetPool(output_tokens=1000, llm_calls=100, name="fleet", backend=b) as pool:
        pool.charge(llm_calls=1)
        ctx = multiprocessing.get_context("spawn")
        ready = ctx.Event()
        worker = ctx.Process(
            target=redis_workers.reserve_and_hang,
            args=(redis_url, redis_prefix, "leased", 800, ready),
        )
        worker.start()
        assert ready.wait(60)
        assert worker.pid is not None
        os.kill(worker.pid, signal.SIGKILL)
        worker.join(10)
        assert b.state().reserved == {"output_tokens": 800}
        pool.charge(llm_calls=1)  # lease still running: nothing is reclaimed
        assert b.state().reserved == {"output_tokens": 800}
        clock.offset = timedelta(seconds=31)
        pool.charge(llm_calls=1)  # the next script call reclaims it
        assert b.state().reserved == {}
        rows = [r for r in pool.ledger if r.kind == "lease"]
        assert len(rows) == 1
        assert rows[0].outcome == "reclaimed"
        assert rows[0].detail is not None
        assert rows[0].detail["reserved"] == {"output_tokens": 800.0}
        assert rows[0].route == "summarize"
        pool.reserve(output_tokens=900).release()  # the budget is usable again


def test_a_settle_after_the_lease_ran_out_still_charges_the_usage(
    backend: Callable[..., ag.RedisBackend], clock: ShiftedClock
) -> None:
    b = backend(create=True, lease_seconds=10)
    with ag.BudgetPool(output_tokens=1000, name="run", backend=b) as pool:
        slow = pool.reserve(output_tokens=400)
        clock.offset = timedelta(seconds=11)
        pool.charge(output_tokens=0)  # reclaims the reservation
        slow.settle({"output_tokens": 300})  # the call did finish, late
    state = b.state()
    assert state.spent["output_tokens"] == 300 and state.reserved == {}
    assert [r.outcome for r in pool.ledger if "lease_expired" in r.flags] == [
        "reclaimed",
        "late_settle",
    ]


# -- windows -------------------------------------------------------------------------------


def test_a_tenant_window_spans_runs_and_a_new_window_starts_fresh(
    redis_url: str, redis_prefix: str, clock: ShiftedClock
) -> None:
    ag.configure(backend=ag.RedisBackend(redis_url, prefix=redis_prefix, create=True))
    for cost in (0.6, 0.3):  # two runs of the same tenant on the same day
        with ag.BudgetPool(cost_usd=1.0, window="1d", key="tenant:acme", name="acme", warn_at=None):
            with ag.BudgetPool(cost_usd=5.0, name="run", warn_at=None) as run:
                run.charge(cost_usd=cost)
    with ag.BudgetPool(cost_usd=1.0, window="1d", key="tenant:acme", name="acme", warn_at=None):
        with pytest.raises(ag.BudgetExceeded) as info:
            ag.charge(cost_usd=0.2)
    assert info.value.pool == "acme"
    clock.offset = timedelta(days=1)
    with ag.BudgetPool(cost_usd=1.0, window="1d", key="tenant:acme", name="acme") as tenant:
        tenant.charge(cost_usd=0.9)  # a new day: a new key, no reset job needed


def test_a_vanished_window_is_not_reopened(
    redis_url: str, redis_prefix: str, admin: redis.Redis, clock: ShiftedClock
) -> None:
    b = ag.RedisBackend(redis_url, prefix=redis_prefix, create=True)
    with ag.BudgetPool(cost_usd=1.0, window="1h", key="t", name="t", backend=b) as pool:
        pool.charge(cost_usd=0.5)
        window_keys = admin.keys(f"{redis_prefix}t:w*")
        assert len(window_keys) == 1
        admin.delete(*window_keys)
        with pytest.raises(ag.BudgetUnavailable, match="vanished"):
            pool.charge(cost_usd=0.1)


# -- configuration -------------------------------------------------------------------------


def test_a_key_without_any_backend_is_a_configuration_error() -> None:
    with pytest.raises(ag.ConfigurationError, match="backend"):
        ag.BudgetPool(cost_usd=1, window="1d", key="tenant:x")


def test_a_bad_window_is_a_configuration_error(redis_url: str) -> None:
    b = ag.RedisBackend(redis_url)
    with pytest.raises(ag.ConfigurationError, match="window"):
        ag.BudgetPool(cost_usd=1, window="daily", key="t", backend=b)


def test_the_redis_password_never_appears_in_errors(redis_prefix: str) -> None:
    b = ag.RedisBackend(
        "redis://user:hunter2@127.0.0.1:1/0", key="run", prefix=redis_prefix, socket_timeout=0.2
    )
    with ag.BudgetPool(tool_calls=1, name="run", backend=b) as pool:
        with pytest.raises(ag.BudgetUnavailable) as info:
            pool.charge(tool_calls=1)
    assert "hunter2" not in str(info.value) and "hunter2" not in repr(b)


def test_a_backend_survives_pickling_for_worker_processes(redis_url: str) -> None:
    import pickle

    b = ag.RedisBackend(redis_url, key="run")
    b.sync_client()
    copy = pickle.loads(pickle.dumps(b))
    assert copy.key == "run" and copy.url == redis_url


def test_one_pool_costs_well_under_a_kilobyte_of_redis_memory(
    backend: Callable[..., ag.RedisBackend], admin: redis.Redis
) -> None:
    b = backend(create=True)
    with ag.BudgetPool(
        llm_calls=100, tool_calls=500, output_tokens=100_000, cost_usd=5, name="run", backend=b
    ) as pool:
        pool.charge(llm_calls=1, tool_calls=1, output_tokens=10, cost_usd=0.01)
    usage = admin.memory_usage(f"{b.prefix}run")
    assert usage is not None and usage < 1024


# -- limit bypasses --------------------------------------------------------------------------


def _bypass_entry(guard: str) -> None:
    ag.bypass(
        guard,
        owner="ana@example.com",
        reason="backfill run needs more tool calls",
        expires=(date.today() + timedelta(days=7)).isoformat(),
        ticket="OPS-9",
    )


def test_a_limit_bypass_lets_a_redis_pool_charge_through_without_stopping_it(
    backend: Callable[..., ag.RedisBackend],
) -> None:
    b = backend(create=True)
    _bypass_entry("budget:run")
    with ag.BudgetPool(tool_calls=2, name="run", backend=b) as pool:

        @ag.tool_call(loop_limit=None)
        def lookup(q: str) -> str:
            return q

        for q in "abcd":
            lookup(q)  # c and d are over the limit: the bypass lets them through
        pool.charge(tool_calls=1)
    state = b.state()
    assert state.spent["tool_calls"] == 5
    assert not state.stopped  # no other process sees a stop the bypass prevented
    assert bypasses.use_counts() == {"budget:run": 3}
    bypasses._reset_for_tests()  # the bypass is gone: the next charge is refused and stops
    other = ag.BudgetPool(name="run", backend=backend())
    with pytest.raises(ag.BudgetExceeded):
        other.charge(tool_calls=1)
    assert b.state().stopped


def test_a_bypass_on_the_redis_parent_lets_its_redis_child_through(
    backend: Callable[..., ag.RedisBackend],
) -> None:
    _bypass_entry("budget:root")
    with ag.BudgetPool(tool_calls=2, name="root", backend=backend("root", create=True)):
        with ag.BudgetPool(tool_calls=10, name="child", backend=backend("child", create=True)):
            with ag.BudgetPool(name="leaf") as leaf:
                for _ in range(4):
                    leaf.charge(tool_calls=1)
    assert backend("root").state().spent["tool_calls"] == 4
    assert backend("child").state().spent["tool_calls"] == 4
    assert bypasses.use_counts() == {"budget:root": 2}


def test_a_bypass_on_an_in_memory_pool_of_a_redis_chain_lets_it_through(
    backend: Callable[..., ag.RedisBackend],
) -> None:
    # The local part of a mixed chain honours `budget:<pool>` like an in-memory chain does.
    _bypass_entry("budget:sub")
    with ag.BudgetPool(tool_calls=50, name="root", backend=backend(create=True)):
        with ag.BudgetPool(tool_calls=2, name="sub") as sub:
            for _ in range(4):
                sub.charge(tool_calls=1)  # the 3rd and 4th are over sub's limit
            assert not sub.stopped
    assert backend().state().spent["tool_calls"] == 4
    assert bypasses.use_counts() == {"budget:sub": 2}
    bypasses._reset_for_tests()  # no bypass: the same overrun is refused and stops sub
    with ag.BudgetPool(tool_calls=50, name="root", backend=backend()):
        with ag.BudgetPool(tool_calls=1, name="sub") as sub:
            sub.charge(tool_calls=1)
            with pytest.raises(ag.BudgetExceeded):
                sub.charge(tool_calls=1)
            assert sub.stopped
    assert backend().state().spent["tool_calls"] == 5


def test_a_bypass_of_another_pool_does_not_open_a_redis_pool(
    backend: Callable[..., ag.RedisBackend],
) -> None:
    _bypass_entry("budget:other")
    with ag.BudgetPool(tool_calls=1, name="run", backend=backend(create=True)) as pool:
        pool.charge(tool_calls=1)
        with pytest.raises(ag.BudgetExceeded):
            pool.charge(tool_calls=1)
    assert backend().state().stopped
    assert bypasses.use_counts() == {}
