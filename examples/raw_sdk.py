"""Catalog entry 3, the integration: an undecorated SDK call site is a budget leak nobody sees.

The agent's main model call is decorated with `@ag.llm_call`, but a helper written later
calls `client.chat.completions.create(...)` directly, in a loop, from deep inside a tool.
The pool counts the decorated calls and never sees the helper's. With `ag.instrument()`, the
SDK itself is the innermost call site: every request is charged before it leaves, whoever
made it. The "provider" is an offline mock transport that counts what reached it.
"""

from __future__ import annotations

import json

import httpx2
import openai

import agentguard as ag

REACHED = {"provider": 0}


def provider(request: httpx2.Request) -> httpx2.Response:
    """The OpenAI API, offline: counts requests and answers a realistic chat completion."""
    REACHED["provider"] += 1
    body = json.loads(request.content)
    return httpx2.Response(
        200,
        json={
            "id": f"chatcmpl-{REACHED['provider']}",
            "object": "chat.completion",
            "created": 1700000000,
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "ok"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 900, "completion_tokens": 100, "total_tokens": 1000},
        },
    )


client = openai.OpenAI(
    api_key="offline",
    http_client=httpx2.Client(transport=httpx2.MockTransport(provider)),
    max_retries=0,
)


@ag.llm_call(route="agent.plan")
def plan(ticket: str) -> str:
    """The call everyone remembered to decorate."""
    response = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": ticket}], max_tokens=200
    )
    ag.record_usage(response)
    return response.choices[0].message.content or ""


def summarise_attachments(ticket: str, attachments: int) -> None:
    """The helper added later: one raw SDK call per attachment, no decorator."""
    for n in range(attachments):
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": f"summarise attachment {n} of {ticket}"}],
            max_tokens=200,
        )


def run(tickets: list[str]) -> None:
    for ticket in tickets:
        plan(ticket)
        summarise_attachments(ticket, attachments=5)


def main() -> None:
    tickets = ["T-1", "T-2", "T-3"]

    print("Before: only the decorated call site is charged (limit: 6 LLM calls)")
    REACHED["provider"] = 0
    with ag.BudgetPool(llm_calls=6, name="run") as pool:
        run(tickets)
    print(f"  the pool counted {int(pool.spent['llm_calls'])} LLM calls and did not stop")
    print(f"  requests that reached the provider: {REACHED['provider']}")

    print("\nAfter: ag.instrument() charges every raw SDK request before it leaves")
    ag.instrument(openai=True)
    try:
        REACHED["provider"] = 0
        with ag.BudgetPool(llm_calls=6, name="run") as pool:
            try:
                run(tickets)
            except ag.BudgetExceeded as exc:
                print(f"  stopped: {str(exc).split('. ')[0]}")
        print(f"  requests that reached the provider: {REACHED['provider']} (limit 6)")
        print(f"  tokens settled from the responses: {int(pool.spent['total_tokens'])}")
        outside = "no pool"
        try:
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
        except ag.NoActivePool:
            outside = "refused with NoActivePool (fail closed)"
        print(f"  a raw call outside any pool: {outside}")
    finally:
        ag.uninstrument()


if __name__ == "__main__":
    main()
