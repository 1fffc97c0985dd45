"""Integrations: a LangGraph agent that loops on tool calls and sends a described user id.

An offline `create_agent` agent (LangGraph underneath) with a scripted model: it first asks
to escalate "the user mentioned in the conversation", then looks up 30 orders one by one.
Without agentguard every call runs. With `AgentGuardMiddleware` and one `BudgetPool`, the
model gets a correction it can act on, sends the real id, and the run ends after exactly the
5 lookups the budget allows, with a final message saying why. Last, a hand-built LangGraph
`StateGraph` with only the callback handler in its config stops at the same line.

Needs `pip install 'agentguard[langchain]'`.
"""

from __future__ import annotations

import logging
import textwrap
import warnings
from collections.abc import Iterator, Sequence
from typing import Annotated, Any

from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

import agentguard as ag
from agentguard import validators as v
from agentguard.integrations.langchain import AgentGuardMiddleware, BudgetCallbackHandler

USERS = {"u-42": {"name": "Ann Lee"}}
CALLS_MADE = {"crm": 0, "escalations": 0}
USAGE = {"input_tokens": 900, "output_tokens": 60, "total_tokens": 960}


def find_user(user_id: str) -> dict[str, str] | None:
    return USERS.get(user_id)


@tool("escalate_to_human")
def escalate_unchecked(user_id: str) -> str:
    """Hand the conversation to a human agent for this user."""
    CALLS_MADE["escalations"] += 1
    return f"ticket opened for user {user_id!r}"


@tool
def escalate_to_human(
    user_id: Annotated[str, v.Resolves(find_user, what="user id")],
) -> str:
    """Hand the conversation to a human agent for this user."""
    CALLS_MADE["escalations"] += 1
    return f"escalated to a human for {v.resolved(user_id)['name']}"


@tool
def lookup_order(order_id: str) -> str:
    """Look up an order in the CRM."""
    CALLS_MADE["crm"] += 1
    return f"{order_id}: shipped"


class ScriptedModel(GenericFakeChatModel):
    """LangChain's fake chat model, with a model name and tool binding (offline, no keys)."""

    model_name: str = "gpt-4o-mini"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ScriptedModel:  # type: ignore[override]
        return self


def call(name: str, i: int, **args: str) -> AIMessage:
    return AIMessage(
        content="",
        tool_calls=[{"name": name, "args": args, "id": f"call_{i}"}],
        usage_metadata=USAGE,  # type: ignore[arg-type]
    )


def script() -> Iterator[AIMessage]:
    """What the model asks for: a described user id, the real one, then 30 order lookups."""
    yield call("escalate_to_human", 0, user_id="the user mentioned in the conversation")
    yield call("escalate_to_human", 1, user_id="u-42")
    for i in range(30):
        yield call("lookup_order", 2 + i, order_id=f"ORD-{1000 + i}")
    yield AIMessage(content="All orders checked.", usage_metadata=USAGE)  # type: ignore[arg-type]


def agent(escalate: Any, *middleware: Any) -> Any:
    model = ScriptedModel(messages=script())
    return create_agent(model, tools=[escalate, lookup_order], middleware=middleware)


def short(text: object, width: int = 96) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= width else line[: width - 3] + "..."


def main() -> None:
    warnings.filterwarnings("ignore", module="langgraph")
    # LangChain logs a WARNING each time a callback handler raises (here: the refusals).
    logging.getLogger("langchain_core.callbacks.manager").setLevel(logging.ERROR)
    ag.configure(price=lambda model, usage: ((usage.input_tokens or 0) * 0.15
                                             + (usage.output_tokens or 0) * 0.6) / 1e6)
    question = {"messages": [HumanMessage("Escalate this customer, then check all orders.")]}
    run_config = {"recursion_limit": 200}

    print("Before: create_agent, a plain `user_id: str` tool, no budget")
    CALLS_MADE.update(crm=0, escalations=0)
    out = agent(escalate_unchecked).invoke(question, config=run_config)
    bad = next(m for m in out["messages"] if isinstance(m, ToolMessage))
    print(f"  the escalation tool ran {CALLS_MADE['escalations']} times; the first: "
          f"{short(bad.content, 70)}")
    print(f"  CRM lookups that happened: {CALLS_MADE['crm']} (the model asked for 30; nothing "
          f"said stop)")

    print("\nAfter: AgentGuardMiddleware + one BudgetPool(tool_calls=6)")
    CALLS_MADE.update(crm=0, escalations=0)
    guard = AgentGuardMiddleware(exit_behavior="end", max_corrections=2)
    with ag.BudgetPool(tool_calls=6, llm_calls=40, name="support-run") as pool:
        out = agent(escalate_to_human, guard).invoke(question, config=run_config)
    correction = next(m for m in out["messages"] if isinstance(m, ToolMessage))
    print("  the model got a correction it can act on:")
    for line in str(correction.content).splitlines():
        for part in textwrap.wrap(line, 90, subsequent_indent="  "):
            print(f"    | {part}")
    print(f"  it sent user_id='u-42' next: escalations that ran: {CALLS_MADE['escalations']}")
    print(f"  CRM lookups that happened: {CALLS_MADE['crm']} (escalation + 5 lookups = the 6 "
          f"allowed; the 6th lookup never ran)")
    print(f"  the run ended with: {short(out['messages'][-1].content, 92)}")
    spent = pool.spent
    print(f"  tokens settled from usage_metadata: {int(spent['input_tokens'])} in / "
          f"{int(spent['output_tokens'])} out, cost ${spent['cost_usd']:.5f} over "
          f"{int(spent['llm_calls'])} model calls")

    print("\nA hand-built LangGraph StateGraph, only BudgetCallbackHandler in its config")
    CALLS_MADE.update(crm=0, escalations=0)
    model = ScriptedModel(messages=iter(list(script())[2:]))

    def call_model(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", call_model)
    graph.add_node("tools", ToolNode([lookup_order], handle_tool_errors=True))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    try:
        with ag.BudgetPool(tool_calls=5, name="graph-run"):
            graph.compile().invoke(
                question, config={"callbacks": [BudgetCallbackHandler()], **run_config}
            )
    except ag.BudgetExceeded as exc:
        print("  ToolNode(handle_tool_errors=True) swallowed the refusal; the next model call")
        print(f"  was refused: {short(str(exc).split(' The first refusal')[0], 84)}")
    print(f"  CRM lookups that happened: {CALLS_MADE['crm']} of 30 requested")
    print("\n  The pool tree for the report:")
    for line in pool.tree().splitlines():
        print("   ", short(line, 100))


if __name__ == "__main__":
    main()
