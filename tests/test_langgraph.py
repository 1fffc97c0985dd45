"""BudgetCallbackHandler on LangGraph graphs: one handler in the config stops the whole run.

A hand-built ReAct graph (StateGraph + ToolNode + tools_condition) and a supervisor with two
sub-agent sub-graphs, on real langgraph, with a scripted model asking for many tool calls.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.runnables import RunnableLambda
from langchain_core.tools import BaseTool, tool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

import agentguard as ag
from agentguard.integrations.langchain import BudgetCallbackHandler
from tests.lc_fakes import BodyCounter, ScriptedChatModel, tool_call_script

INPUT = {"messages": [HumanMessage("check every order")]}


def make_tool(bodies: BodyCounter, name: str = "lookup_order") -> BaseTool:
    def lookup(order_id: str) -> str:
        bodies.hit(order_id)
        return f"{order_id}: shipped"

    return tool(name, description="Look up an order.")(lookup)


def react_graph(model: ScriptedChatModel, tools: list[BaseTool], **tool_node: Any) -> Any:
    def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    async def aagent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await model.ainvoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", RunnableLambda(agent, afunc=aagent))
    graph.add_node("tools", ToolNode(tools, **tool_node))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    return graph.compile()


def cfg() -> dict[str, Any]:
    return {"callbacks": [BudgetCallbackHandler()], "recursion_limit": 200}


def test_thirty_requested_tool_calls_on_a_pool_of_five_run_exactly_five() -> None:
    bodies = BodyCounter()
    model = ScriptedChatModel(messages=tool_call_script(30))
    graph = react_graph(model, [make_tool(bodies)])
    with ag.BudgetPool(tool_calls=5) as pool, pytest.raises(ag.BudgetExceeded) as info:
        graph.invoke(INPUT, config=cfg())
    assert len(bodies) == 5
    assert "o-c5" not in bodies.calls  # the 6th call's body never ran
    assert info.value.dimension == "tool_calls"
    assert pool.stopped and pool.spent["tool_calls"] == 5
    assert pool.spent["llm_calls"] == 6


async def test_thirty_requested_tool_calls_stop_at_five_under_ainvoke() -> None:
    bodies = BodyCounter()
    model = ScriptedChatModel(messages=tool_call_script(30))
    graph = react_graph(model, [make_tool(bodies)])
    async with ag.BudgetPool(tool_calls=5) as pool:
        with pytest.raises(ag.BudgetExceeded):
            await graph.ainvoke(INPUT, config=cfg())
    assert len(bodies) == 5
    assert pool.spent["llm_calls"] == 6


async def test_async_tool_bodies_stop_at_five_under_ainvoke() -> None:
    bodies = BodyCounter()

    async def lookup(order_id: str) -> str:
        bodies.hit(order_id)
        return "shipped"

    async_tool = tool("lookup_order", description="Look up an order.")(lookup)
    graph = react_graph(ScriptedChatModel(messages=tool_call_script(30)), [async_tool])
    async with ag.BudgetPool(tool_calls=5):
        with pytest.raises(ag.BudgetExceeded):
            await graph.ainvoke(INPUT, config=cfg())
    assert len(bodies) == 5


@pytest.mark.parametrize("stream_mode", ["values", "updates", "messages"])
def test_streaming_run_stops_at_five(stream_mode: str) -> None:
    bodies = BodyCounter()
    model = ScriptedChatModel(messages=tool_call_script(30))
    graph = react_graph(model, [make_tool(bodies)])
    seen = 0
    with ag.BudgetPool(tool_calls=5), pytest.raises(ag.BudgetExceeded):
        for _ in graph.stream(INPUT, config=cfg(), stream_mode=stream_mode):
            seen += 1
    assert len(bodies) == 5
    assert seen > 0


async def test_async_streaming_run_stops_at_five() -> None:
    bodies = BodyCounter()
    graph = react_graph(ScriptedChatModel(messages=tool_call_script(30)), [make_tool(bodies)])
    async with ag.BudgetPool(tool_calls=5):
        with pytest.raises(ag.BudgetExceeded):
            async for _ in graph.astream(INPUT, config=cfg(), stream_mode="messages"):
                pass
    assert len(bodies) == 5


@pytest.mark.parametrize("run", ["sync", "async"])
def test_eight_parallel_calls_in_one_message_against_three_run_exactly_three(run: str) -> None:
    import asyncio

    bodies = BodyCounter()
    model = ScriptedChatModel(messages=tool_call_script(8, per_message=8))
    graph = react_graph(model, [make_tool(bodies)])
    with ag.BudgetPool(tool_calls=3) as pool, pytest.raises(ag.BudgetExceeded):
        if run == "sync":
            graph.invoke(INPUT, config=cfg())
        else:
            asyncio.run(graph.ainvoke(INPUT, config=cfg()))
    assert len(bodies) == 3
    assert pool.spent["tool_calls"] == 3


def test_toolnode_handle_tool_errors_true_cannot_keep_the_run_going() -> None:
    """ToolNode(handle_tool_errors=True) turns the refusal into an error ToolMessage; the
    stopped pool refuses the next model call, so no 6th tool body ever runs."""
    bodies = BodyCounter()
    model = ScriptedChatModel(messages=tool_call_script(30))
    graph = react_graph(model, [make_tool(bodies)], handle_tool_errors=True)
    with ag.BudgetPool(tool_calls=5) as pool, pytest.raises(ag.BudgetExceeded) as info:
        graph.invoke(INPUT, config=cfg())
    assert len(bodies) == 5 and pool.spent["tool_calls"] == 5
    assert info.value.stopped_earlier  # refused by the stopped-pool rule
    assert info.value.function == "ScriptedChatModel"
    assert len(model.provider_calls) == 6


def test_run_under_the_limit_finishes_and_settles_every_call() -> None:
    bodies = BodyCounter()
    model = ScriptedChatModel(messages=tool_call_script(3))
    graph = react_graph(model, [make_tool(bodies)])
    handler = BudgetCallbackHandler()
    with ag.BudgetPool(tool_calls=5, total_tokens=10_000) as pool:
        out = graph.invoke(INPUT, config={"callbacks": [handler]})
    assert out["messages"][-1].content == "all done"
    assert len(bodies) == 3
    assert pool.spent["llm_calls"] == 4
    assert pool.spent["total_tokens"] == 4 * 120
    assert pool.reserved == {}
    assert handler.in_flight == 0
    kinds = [r.kind for r in pool.ledger]
    assert kinds.count("llm") == 4 and kinds.count("tool") == 3


# -- a supervisor with two sub-agents (sub-graphs) sharing one pool ---------------------------


def supervisor_graph(billing: Any, shipping: Any, rounds: int) -> Any:
    """A supervisor that alternates between two compiled sub-agent graphs for `rounds`."""

    def route(state: MessagesState) -> str:
        turns = sum(1 for m in state["messages"] if isinstance(m, AIMessage))
        if turns >= rounds * 2:
            return END
        return "billing" if turns % 2 == 0 else "shipping"

    def supervisor(state: MessagesState) -> dict[str, Any]:
        return {}

    graph = StateGraph(MessagesState)
    graph.add_node("supervisor", supervisor)
    graph.add_node("billing", billing)
    graph.add_node("shipping", shipping)
    graph.add_edge(START, "supervisor")
    graph.add_conditional_edges("supervisor", route, ["billing", "shipping", END])
    graph.add_edge("billing", "supervisor")
    graph.add_edge("shipping", "supervisor")
    return graph.compile()


def endless(tool_name: str, prefix: str) -> Iterator[AIMessage]:
    """Each sub-agent turn: two tool calls, then an answer; forever."""
    i = 0
    while True:
        for _ in range(2):
            yield AIMessage(
                content="",
                tool_calls=[
                    {"name": tool_name, "args": {"order_id": f"{prefix}{i}"}, "id": f"{prefix}{i}"}
                ],
            )
            i += 1
        yield AIMessage(content=f"{prefix} turn done")


def test_supervisor_with_two_subagents_shares_one_pool() -> None:
    billing_bodies, shipping_bodies = BodyCounter(), BodyCounter()
    billing = react_graph(
        ScriptedChatModel(messages=endless("refund", "b")), [make_tool(billing_bodies, "refund")]
    )
    shipping = react_graph(
        ScriptedChatModel(messages=endless("track", "s")), [make_tool(shipping_bodies, "track")]
    )
    graph = supervisor_graph(billing, shipping, rounds=10)
    with (
        ag.BudgetPool(tool_calls=7, name="support-run") as pool,
        pytest.raises(ag.BudgetExceeded) as info,
    ):
        graph.invoke(INPUT, config=cfg())
    assert len(billing_bodies) + len(shipping_bodies) == 7
    assert len(billing_bodies) >= 2 and len(shipping_bodies) >= 2
    assert info.value.pool == "support-run"
    assert pool.spent["tool_calls"] == 7


def test_subagent_child_pool_cannot_outspend_the_supervisor_pool() -> None:
    """A sub-agent node that opens its own bigger pool still draws from the run's pool."""
    bodies = BodyCounter()
    inner = react_graph(ScriptedChatModel(messages=tool_call_script(30)), [make_tool(bodies)])

    def sub_agent(state: MessagesState) -> dict[str, Any]:
        with ag.BudgetPool(tool_calls=100, name="sub-agent"):
            return inner.invoke(state)  # type: ignore[no-any-return]

    graph = StateGraph(MessagesState)
    graph.add_node("sub", sub_agent)
    graph.add_edge(START, "sub")
    graph.add_edge("sub", END)
    with ag.BudgetPool(tool_calls=4, name="run") as pool, pytest.raises(ag.BudgetExceeded) as info:
        graph.compile().invoke(INPUT, config=cfg())
    assert len(bodies) == 4
    assert info.value.pool == "run"
    assert pool.spent["tool_calls"] == 4


def test_error_tool_message_from_refusal_names_the_pool() -> None:
    bodies = BodyCounter()
    model = ScriptedChatModel(messages=tool_call_script(30))
    graph = react_graph(model, [make_tool(bodies)], handle_tool_errors=True)
    messages: list[Any] = []
    with ag.BudgetPool(tool_calls=1, name="tiny"), pytest.raises(ag.BudgetExceeded):
        for update in graph.stream(INPUT, config=cfg(), stream_mode="updates"):
            for value in update.values():
                messages.extend(value.get("messages", []))
    refused = [m for m in messages if isinstance(m, ToolMessage) and m.status == "error"]
    assert len(refused) == 1 and "tiny" in str(refused[0].content)


@pytest.mark.slow
@pytest.mark.parametrize("run", ["sync", "async"])
def test_fifty_parallel_calls_in_one_message_never_exceed_seven(run: str) -> None:
    """Stress: a wide parallel batch, repeated, against a small limit: exact every time."""
    import asyncio

    for _ in range(5):
        bodies = BodyCounter()
        model = ScriptedChatModel(messages=tool_call_script(50, per_message=50))
        graph = react_graph(model, [make_tool(bodies)])
        with ag.BudgetPool(tool_calls=7) as pool, pytest.raises(ag.BudgetExceeded):
            if run == "sync":
                graph.invoke(INPUT, config=cfg())
            else:
                asyncio.run(graph.ainvoke(INPUT, config=cfg()))
        assert len(bodies) == 7
        assert pool.spent["tool_calls"] == 7
        assert sum(r.amounts.get("tool_calls", 0) for r in pool.ledger) == 7
