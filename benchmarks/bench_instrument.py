"""Overhead of `ag.instrument()` on a raw `chat.completions.create`, both on a mock transport.

The baseline is the SDK's own client-side time (building the request, the transport call,
parsing the response into a pydantic model); the instrumented rows add the charge, the
reservation, the usage settlement, the price and the ledger row. Run:
`python benchmarks/bench_instrument.py` (or `python benchmarks/bench.py`).

Method (the machine is shared, and one configuration measured after another mostly
measures the neighbours): every configuration is measured in each of `ROUNDS` interleaved
rounds, `NUMBER` calls at a time, on the process CPU clock (time spent descheduled does not
count), and each keeps its best round. The overhead is reported two ways: best against
best, and the median over rounds of the overhead against the bare call of the same round
(robust to the load drifting between rounds). A warm-up round comes first (genai-prices
resolves a model once, ~25 ms).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import httpx2
import openai

import agentguard as ag

ROUNDS = 4 if "--quick" in sys.argv else 16
NUMBER = 200
REPEAT = 3
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


def _best_us(fn: Callable[[], object]) -> float:
    """Best of `REPEAT` runs of `NUMBER` calls, in ns per call, on the process CPU clock."""
    runs = timeit.repeat(fn, number=NUMBER, repeat=REPEAT, timer=time.process_time)
    return min(runs) / NUMBER * 1e9


def run(measure: Callable[..., float]) -> list[tuple[str, list[tuple[str, float]]]]:
    del measure  # interleaved rounds on the CPU clock instead (see the module docstring)
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
    configs: list[tuple[str, Any, Any]] = [  # (row, price function, pool); None: bare
        ("uninstrumented SDK call (client-side time)", None, None),
        ("instrumented, price function, no limits", _price, unlimited),
        ("instrumented, price function, llm_calls + tokens + cost limits", _price, limited),
        ("instrumented, genai-prices, no limits", None, unlimited),
        ("instrumented, genai-prices, llm_calls + tokens + cost limits", None, limited),
    ]
    best: dict[str, float] = {}
    paired: dict[str, list[float]] = {}  # per round: overhead against that round's bare call
    for round_ in range(ROUNDS + 1):
        bare = 0.0
        for name, price, pool in configs:
            if pool is None:
                ag.uninstrument()
                ns = bare = _best_us(call)
            else:
                ag.instrument(openai=True)
                ag.configure(price=price)  # None: genai-prices (the agentguard[prices] extra)
                with pool:
                    if round_ == 0:
                        call()  # warm-up round: first lookups, caches
                    ns = _best_us(call)
                    pool._ledger.clear()  # the ledger of 10^5 calls is not what is measured
            if round_:
                best[name] = min(best.get(name, ns), ns)
                paired.setdefault(name, []).append((ns - bare) / bare)
    ag.uninstrument()
    ag.configure(price=None)
    base = best[configs[0][0]]
    rows = [(configs[0][0], base)]
    for name, _, _ in configs[1:]:
        median = statistics.median(paired[name])
        label = f"{name} (best +{(best[name] - base) / base:.1%}, paired median +{median:.1%})"
        rows.append((label, best[name]))
    return [("ag.instrument(): raw openai chat.completions.create on a mock transport", rows)]


if __name__ == "__main__":
    from bench import measure as _measure
    from bench import print_table

    for title, rows in run(_measure):
        print_table(title, rows)
        base = rows[0][1]
        for name, ns in rows[1:]:
            print(f"  {name.rsplit(' (best', 1)[0]}: +{(ns - base) / 1000:,.1f} us")
