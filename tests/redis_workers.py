"""Functions run in separate processes (spawn) by the Redis tests: each opens the same key."""

from __future__ import annotations

import time
from typing import Any


def charge_many(
    url: str, prefix: str, key: str, n: int, start: Any, results: Any, ready: Any = None
) -> None:
    """Open the shared pool, wait for the start gate, then try `n` tool-call charges."""
    import agentguard as ag

    ok = refused = 0
    backend = ag.RedisBackend(url, key=key, prefix=prefix)
    with ag.BudgetPool(name="fleet", backend=backend, warn_at=None) as pool:
        pool.charge(llm_calls=0)  # open the key before the gate (one round trip)
        if ready is not None:
            ready.put(True)
        start.wait(60)
        for _ in range(n):
            try:
                pool.charge(tool_calls=1)
                ok += 1
            except ag.BudgetExceeded:
                refused += 1
    results.put((ok, refused))


def reserve_and_hang(url: str, prefix: str, key: str, amount: float, ready: Any) -> None:
    """Reserve `amount` output tokens as an LLM call would, then hang until SIGKILLed."""
    import agentguard as ag

    backend = ag.RedisBackend(url, key=key, prefix=prefix, lease_seconds=30)
    with ag.BudgetPool(name="fleet", backend=backend) as pool:
        pool.reserve(output_tokens=amount, route="summarize")
        ready.set()
        while True:  # the test kills this process mid-call
            time.sleep(1)
