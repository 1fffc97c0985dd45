"""Overhead of `ag.instrument()` on a raw `chat.completions.create`, both on a mock transport.

The baseline is the SDK's own client-side time (building the request, the transport call,
parsing the response into a pydantic model); the instrumented rows add the charge, the
reservation, the usage settlement, the price and the ledger row. Run:
`python benchmarks/bench_instrument.py` (or `python benchmarks/bench.py`).

Method (the machine is shared: its speed drifts by several percent within seconds, more
than the effect measured): each configuration is measured as `PAIRS` pairs of batches of
`BATCH` calls, the bare batch and the instrumented batch back to back (their order
alternating, so a drift does not favour either), on the process CPU clock (time spent
descheduled does not count), all inside the same `with pool:` so the only difference is
`ag.instrument()`. The overhead reported is the median over pairs of each pair's
difference (with the middle half of the pairs, 25th to 75th percentile), and the best
instrumented batch against the best bare batch. A warm-up comes first (genai-prices
resolves a model once, ~25 ms).
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import httpx2
import openai

import agentguard as ag

PAIRS = 12 if "--quick" in sys.argv else 60
BATCH = 40
MESSAGES = [{"role": "user", "content": "What is six times seven? Answer in one word."}]
BODY = json.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Forty-two."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 21, "completion_tokens": 4, "total_tokens": 25},
    }
).encode()


def _answer(request: httpx2.Request) -> httpx2.Response:
    return httpx2.Response(200, content=BODY, headers={"content-type": "application/json"})


def _price(model: str, usage: ag.Usage) -> float:
    return ((usage.input_tokens or 0) * 0.15 + (usage.output_tokens or 0) * 0.6) / 1e6


def _batch_ns(fn: Callable[[], object]) -> float:
    """Nanoseconds per call over one batch of `BATCH` calls, on the process CPU clock."""
    t0 = time.process_time_ns()
    for _ in range(BATCH):
        fn()
    return (time.process_time_ns() - t0) / BATCH


def run(measure: Callable[..., float]) -> list[tuple[str, list[tuple[str, float]]]]:
    del measure  # paired batches on the CPU clock instead (see the module docstring)
    http = httpx2.Client(transport=httpx2.MockTransport(_answer))
    client = openai.OpenAI(api_key="bench", http_client=http, max_retries=0)

    def call() -> object:
        return client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            max_tokens=64,  # type: ignore[arg-type]
        )

    unlimited = ag.BudgetPool(name="bench")  # counts everything, limits nothing
    limited = ag.BudgetPool(llm_calls=10**12, output_tokens=10**15, cost_usd=10**9, name="lim")
    configs: list[tuple[str, Any, ag.BudgetPool]] = [  # (row, price function, pool)
        ("price function, no limits", _price, unlimited),
        ("price function, llm_calls + tokens + cost limits", _price, limited),
        ("genai-prices, no limits", None, unlimited),
        ("genai-prices, llm_calls + tokens + cost limits", None, limited),
    ]
    bare_best = math.inf
    rows: list[tuple[str, float]] = []
    notes: list[str] = []
    for name, price, pool in configs:
        ag.configure(price=price)  # None: genai-prices (the agentguard[prices] extra)
        diffs: list[float] = []
        ratios: list[float] = []
        inst_best = math.inf
        with pool:  # bare batches run inside the pool too: only ag.instrument() differs
            ag.instrument(openai=True)
            for _ in range(BATCH):
                call()  # warm-up: first lookups, caches
            for pair in range(PAIRS):
                times: dict[bool, float] = {}
                for instrumented in (False, True) if pair % 2 == 0 else (True, False):
                    if instrumented:
                        ag.instrument(openai=True)
                    else:
                        ag.uninstrument()
                    times[instrumented] = _batch_ns(call)
                pool._ledger.clear()  # the ledger of 10^4 calls is not what is measured
                diffs.append(times[True] - times[False])
                ratios.append((times[True] - times[False]) / times[False])
                bare_best = min(bare_best, times[False])
                inst_best = min(inst_best, times[True])
            ag.uninstrument()
        q1, median, q3 = statistics.quantiles(ratios, n=4)
        # The table's ratio column is the paired median (the best batches of the two sides
        # come from different moments of a drifting machine: shown in the note only).
        rows.append((f"instrumented, {name} (paired median)", bare_best * (1 + median)))
        notes.append(
            f"  {name}: +{statistics.median(diffs) / 1000:,.1f} us per call, paired median "
            f"+{median:.1%} (middle half of {PAIRS} pairs: {q1:+.1%} to {q3:+.1%}; best "
            f"batch {inst_best / 1000:,.1f} us)"
        )
    ag.configure(price=None)
    title = "ag.instrument(): raw openai chat.completions.create on a mock transport"
    notes.append(f"  uninstrumented SDK call: best batch {bare_best / 1000:,.1f} us")
    table = [("uninstrumented SDK call (client-side time, best batch)", bare_best), *rows]
    NOTES[:] = notes
    return [(title, table)]


NOTES: list[str] = []
"""The paired overheads of the last `run()`, printed under its table."""

if __name__ == "__main__":
    from bench import measure as _measure
    from bench import print_table

    for title, rows in run(_measure):
        print_table(title, rows)
    print("\n".join(NOTES))
