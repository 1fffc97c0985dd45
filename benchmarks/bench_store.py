"""Per-call cost of `@tool_call` with the run store off and on (write-behind ledger).

Rows: a bare call; `@tool_call` without a store; with the SQLite store configured (the calling
thread's cost, the writer thread flushing concurrently); and the same amortized with the
flush itself (1000 calls, then `store.flush()`, divided by 1000): the full price of putting
every call's ledger row on disk.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import agentguard as ag
from agentguard import _config

Measure = Callable[..., float]


def run(measure: Measure) -> list[tuple[str, list[tuple[str, float]]]]:
    def bare(x: int) -> int:
        return x

    @ag.tool_call(loop_limit=None)
    def tool(x: int) -> int:
        return x

    rows: list[tuple[str, float]] = [("bare function", measure(lambda: bare(1)))]

    _config.configure(store=None)
    with ag.BudgetPool(name="bench-off"):
        rows.append(("@tool_call, no store", measure(lambda: tool(1))))

    with tempfile.TemporaryDirectory() as tmp:
        store = ag.store.SQLiteStore(Path(tmp) / "bench.db", flush_interval=0.2)
        _config.configure(store=store)
        try:
            with ag.BudgetPool(name="bench-on"):
                rows.append(("@tool_call, store on (calling thread)", measure(lambda: tool(1))))

                def batch() -> None:
                    for _ in range(1000):
                        tool(1)
                    store.flush()

                per_batch = measure(batch, number=20, repeat=5)
                rows.append(("@tool_call, store on, incl. the flush to SQLite", per_batch / 1000))
        finally:
            _config.configure(store=None)
            store.close()
    return [("run store: @tool_call per-call cost, store off vs on", rows)]


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench import measure as _measure
    from bench import print_table

    for title, table in run(_measure):
        print_table(title, table)
