"""Catalog entry 3: "20 tool calls max", checked once at the top, and the run makes 80.

An offline agent whose tools retry internally and delegate to a sub-agent. First the usual
guard (a counter checked per top-level step), then the same agent under one shared
`BudgetPool` charged at every innermost call.
"""

from __future__ import annotations

import agentguard as ag

CALLS_MADE = {"provider": 0, "crm": 0}


# -- the "provider" and the "CRM": fakes that count what actually reached them ---------------


def fake_model(prompt: str) -> dict[str, object]:
    CALLS_MADE["provider"] += 1
    return {"text": f"plan for {prompt[:20]}", "usage": {"input_tokens": 120, "output_tokens": 30}}


def fake_crm(order_id: str) -> dict[str, str]:
    CALLS_MADE["crm"] += 1
    return {"order_id": order_id, "status": "shipped"}


# -- the agent, decorated once at its innermost call sites -----------------------------------


@ag.llm_call(route="triage.plan", model="demo-model", max_tokens=64)
def plan(prompt: str) -> dict[str, object]:
    return fake_model(prompt)


@ag.tool_call(route="crm.lookup")
def lookup_order(order_id: str, attempt: int = 0) -> dict[str, str]:
    return fake_crm(order_id)


def lookup_with_retries(order_id: str) -> dict[str, str]:
    """A tool that 'helpfully' retries inside itself: three innermost calls per step."""
    result: dict[str, str] = {}
    for attempt in range(3):
        result = lookup_order(order_id, attempt)
    return result


def sub_agent(ticket: str) -> None:
    """A sub-agent with its own, bigger budget: it still draws from the parent's pool."""
    with ag.BudgetPool(tool_calls=50, llm_calls=50, name="sub-agent:refunds"):
        plan(f"refund policy for {ticket}")
        for i in range(4):
            lookup_with_retries(f"{ticket}-r{i}")


def run_agent(tickets: list[str], step_budget: int | None = None) -> int:
    steps = 0
    for ticket in tickets:
        if step_budget is not None and steps >= step_budget:  # the usual top-level check
            break
        steps += 1
        plan(f"triage {ticket}")
        lookup_with_retries(ticket)
        sub_agent(ticket)
    return steps


def main() -> None:
    ag.configure(price=lambda model, usage: 0.000002 * (usage.total or 0))
    tickets = [f"T-{n}" for n in range(1, 6)]

    print("Before: '20 calls max' as a counter checked once per top-level step")
    CALLS_MADE.update(provider=0, crm=0)
    with ag.BudgetPool(name="unguarded"):  # counts everything, limits nothing
        steps = run_agent(tickets, step_budget=20)
    made = CALLS_MADE["provider"] + CALLS_MADE["crm"]
    print(f"  the counter saw {steps} steps (of 20 allowed): all green")
    crm, model = CALLS_MADE["crm"], CALLS_MADE["provider"]
    print(f"  calls that reached the provider and the CRM: {made} ({crm} CRM, {model} model):")
    print(f"  {made / 20:.1f}x what '20 calls max' promised")
    print("\nAfter: one BudgetPool(tool_calls=20) charged at every innermost call")
    CALLS_MADE.update(provider=0, crm=0)
    pool = ag.BudgetPool(tool_calls=20, llm_calls=20, cost_usd=0.05, name="ticket-triage")
    try:
        with pool:
            run_agent(tickets)
    except ag.BudgetExceeded as exc:
        print(f"  stopped: {str(exc).split('. ')[0]}")
    print(f"  CRM calls that actually happened: {CALLS_MADE['crm']} (limit 20, the sub-agent's "
          f"own limit of 50 did not matter)")
    print(f"  provider calls: {CALLS_MADE['provider']}")
    try:
        with pool:
            lookup_order("T-99")
    except ag.BudgetExceeded:
        print("  a later call on the stopped pool is refused too (the run cannot resume)")
    print("\n  The pool tree for the report:")
    for line in pool.tree().splitlines():
        print("   ", line[:110])


if __name__ == "__main__":
    main()
