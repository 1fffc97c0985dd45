"""Catalog entry 4: tool arguments that are valid JSON and nonsense.

A support agent escalates a billing dispute. The JSON schema says `user_id: str`, so
`"the user mentioned in the conversation"` is fine as far as JSON goes. Here the same
signature carries semantic validators: the first scripted model sends the catalog's bad
arguments, receives one precise, correctable tool-result message, and fixes all of them in
the next round. A second model never fixes them and hits `CorrectionsExhausted`, which stops
the run instead of looping.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Annotated, Any

import agentguard as ag
from agentguard import validators as v

# -- the systems behind the tools (offline fakes) ---------------------------------------------

CRM = {"u_8812": {"id": "u_8812", "name": "Dana Reyes", "email": "dana.reyes@example.org"}}
ESCALATIONS: list[dict[str, Any]] = []


def find_user(user_id: str) -> dict[str, str] | None:
    """The user's lookup: the record, or None when there is none."""
    return CRM.get(user_id)


class DemoClock(ag.Clock):
    """Today is 2026-01-05, so the story prints the same dates on every run."""

    def now(self) -> datetime:
        return datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)


# -- the tools ---------------------------------------------------------------------------------


@ag.tool_call(route="support.orders")
def lookup_order(customer: str) -> dict[str, Any]:
    """Find the customer's latest order."""
    return {"order_ref": "ORD-2026-0042", "item": "blue wool sweater", "total": "89.90"}


@ag.tool_call(route="support.escalate", max_corrections=2)
def escalate_to_human(
    user_id: Annotated[str, v.Resolves(find_user, what="user id")],
    email: Annotated[str, v.Email()],
    amount: Annotated[Decimal, v.Amount(min=0, max=10_000, places=2)],
    due: Annotated[date, v.DateRange(not_before="today", within_days=365)],
    order_ref: Annotated[str, v.Verbatim(from_tool="lookup_order")],
    reason: Annotated[str, v.NotPlaceholder()],
) -> str:
    """Hand a billing dispute to a human agent."""
    user = v.resolved(user_id)  # the record find_user returned during validation
    ESCALATIONS.append({"user": user["name"], "amount": amount, "due": due, "order": order_ref})
    return f"escalated {order_ref} for {user['name']} ({amount} EUR, due {due})"


TOOLS = {"lookup_order": lookup_order, "escalate_to_human": escalate_to_human}

# -- two scripted "models" -----------------------------------------------------------------------

BAD = {
    "user_id": "the user mentioned in the conversation",
    "email": "his email",
    "amount": "the same amount as last time",
    "due": "3024-01-31",
    "order_ref": "the sweater order",
    "reason": "Customer was charged twice for one order",
}
FIXED = {
    "user_id": "u_8812",
    "email": "dana.reyes@example.org",
    "amount": "89.90",
    "due": "2026-01-31",
    "order_ref": "ORD-2026-0042",
    "reason": "Customer was charged twice for one order",
}


def learning_model() -> Iterator[dict[str, Any]]:
    """Looks the order up, sends the bad arguments, then corrects them after the error."""
    yield {"id": "call_1", "name": "lookup_order", "arguments": json.dumps({"customer": "Dana"})}
    yield {"id": "call_2", "name": "escalate_to_human", "arguments": json.dumps(BAD)}
    yield {"id": "call_3", "name": "escalate_to_human", "arguments": json.dumps(FIXED)}


def stubborn_model() -> Iterator[dict[str, Any]]:
    """Never reads the tool result: the same bad arguments, round after round."""
    yield {"id": "call_1", "name": "lookup_order", "arguments": json.dumps({"customer": "Dana"})}
    for i in range(2, 10):
        yield {"id": f"call_{i}", "name": "escalate_to_human", "arguments": json.dumps(BAD)}


# -- a plain-Python agent loop (OpenAI-style tool messages) --------------------------------------


def run_agent(model: Iterator[dict[str, Any]], label: str, quote: bool) -> None:
    print(f"\n--- {label} ---")
    with ag.BudgetPool(tool_calls=20, name=label) as pool:
        for call in model:
            args = json.loads(call["arguments"])
            try:
                result = TOOLS[call["name"]](**args)
            except ag.ToolArgumentError as err:
                message = ag.tool_error_message(err, tool_call_id=call["id"], style="openai")
                print(
                    f"{call['id']} {call['name']}: REJECTED before the tool ran "
                    f"({len(err.problems)} problems, {err.rounds_left} round(s) left)"
                )
                if quote:
                    print("  the tool message sent back to the model:")
                    for line in message["content"].splitlines():
                        print(f"  | {line}")
                continue
            except ag.CorrectionsExhausted as exc:
                print(f"{call['id']} {call['name']}: CorrectionsExhausted, the run stops")
                print(f"  {str(exc).split('; the run')[0]}.")
                break
            print(f"{call['id']} {call['name']}: ok -> {result}")
        rounds = [r for r in pool.ledger if r.kind == "correction"]
        print(f"ledger: {len(rounds)} correction round(s); tool calls charged: "
              f"{int(pool.spent['tool_calls'])}; pool stopped: {pool.stopped}")  # fmt: skip


def main() -> None:
    ag.configure(clock=DemoClock())
    schema = ag.tool_schema(escalate_to_human)["function"]["parameters"]["properties"]
    print("The JSON schema the model sees carries the checks, e.g.")
    print(f"  user_id: {schema['user_id']['description']}")
    print(f"  due:     {schema['due']['description']}")
    ESCALATIONS.clear()
    run_agent(learning_model(), "model that corrects itself", quote=True)
    assert ESCALATIONS and ESCALATIONS[0]["amount"] == Decimal("89.90")
    ESCALATIONS.clear()
    run_agent(stubborn_model(), "model that never fixes its arguments", quote=False)
    assert not ESCALATIONS
    ag.configure(clock=ag.Clock())


if __name__ == "__main__":
    main()
