"""Overhead of `ag.instrument()` on a raw `chat.completions.create`, both on a mock transport.

The baseline is the SDK's own client-side time (building the request, the transport call,
parsing the response into a pydantic model); the instrumented rows add the charge, the
reservation, the usage settlement and the ledger row. Run: `python benchmarks/bench.py`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import httpx2
import openai

import agentguard as ag

ROUNDS = 4
NUMBER = 500
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


def run(measure: Callable[..., float]) -> list[tuple[str, list[tuple[str, float]]]]:
    http = httpx2.Client(transport=httpx2.MockTransport(_answer))
    client = openai.OpenAI(api_key="bench", http_client=http, max_retries=0)

    def call() -> object:
        return client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            max_tokens=64,  # type: ignore[arg-type]
        )

    # Alternate the configurations for several rounds and keep each one's best: on a busy
    # machine, a single pass measures the neighbours' load more than the code.
    best: dict[str, float] = {}

    def keep(name: str, ns: float) -> None:
        best[name] = min(best.get(name, ns), ns)

    bare_pool = ag.BudgetPool(name="bench")  # counts everything, limits nothing
    limited = ag.BudgetPool(llm_calls=10**9, output_tokens=10**12, cost_usd=10**6, name="lim")
    genai_pool = ag.BudgetPool(name="bench-genai")
    for _ in range(ROUNDS):
        ag.uninstrument()
        keep("bare", measure(call, number=NUMBER, repeat=5))
        ag.instrument(openai=True)
        ag.configure(price=_price)
        with bare_pool:
            keep("priced", measure(call, number=NUMBER, repeat=5))
        with limited:
            keep("limits", measure(call, number=NUMBER, repeat=5))
        ag.configure(price=None)  # genai-prices (the agentguard[prices] extra) if installed
        with genai_pool:
            keep("genai", measure(call, number=NUMBER, repeat=5))
    ag.uninstrument()
    bare, priced_fn, limits, genai = best["bare"], best["priced"], best["limits"], best["genai"]
    return [
        (
            "ag.instrument(): raw openai chat.completions.create on a mock transport",
            [
                ("uninstrumented SDK call (client-side time)", bare),
                ("instrumented, price function, no limits", priced_fn),
                ("instrumented, llm_calls + tokens + cost limits", limits),
                ("instrumented, genai-prices lookup", genai),
            ],
        )
    ]


if __name__ == "__main__":
    from bench import measure as _measure
    from bench import print_table

    for title, rows in run(_measure):
        print_table(title, rows)
        base = rows[0][1]
        for name, ns in rows[1:]:
            print(f"  {name}: +{ns - base:,.0f} ns (+{(ns - base) / base:.1%})")
