"""AgentGuardMiddleware on real `create_agent` agents: exact stops, clear ends, no double charge."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import ModelRetryMiddleware, ToolRetryMiddleware
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import BaseTool, tool

import agentguard as ag
from agentguard import validators as v
from agentguard.integrations.langchain import (
    NOT_RETRYABLE,
    STOP_METADATA_KEY,
    AgentGuardMiddleware,
    BudgetCallbackHandler,
    retry_on,
)
from tests import otel
from tests.lc_fakes import USAGE, BodyCounter, ScriptedChatModel, tool_call_script

INPUT = {"messages": [HumanMessage("check every order")]}
CFG: dict[str, Any] = {"recursion_limit": 200}


def make_tool(bodies: BodyCounter, name: str = "lookup_order") -> BaseTool:
    def lookup(order_id: str) -> str:
        bodies.hit(order_id)
        return f"{order_id}: shipped"

    return tool(name, description="Look up an order.")(lookup)


def agent_for(model: ScriptedChatModel, tools: list[BaseTool], *middleware: Any, **kw: Any) -> Any:
    return create_agent(model, tools=tools, middleware=[*middleware, AgentGuardMiddleware(**kw)])


# -- thirty requested, five allowed -----------------------------------------------------------


@pytest.mark.parametrize("run", ["invoke", "ainvoke", "stream", "astream"])
def test_thirty_requested_tool_calls_on_a_pool_of_five_run_exactly_five(run: str) -> None:
    bodies = BodyCounter()
    model = ScriptedChatModel(messages=tool_call_script(30))
    agent = agent_for(model, [make_tool(bodies)])

    async def arun() -> None:
        if run == "ainvoke":
            await agent.ainvoke(INPUT, config=CFG)
        else:
            async for _ in agent.astream(INPUT, config=CFG, stream_mode="messages"):
                pass

    with ag.BudgetPool(tool_calls=5) as pool, pytest.raises(ag.BudgetExceeded) as info:
        if run == "invoke":
            agent.invoke(INPUT, config=CFG)
        elif run == "stream":
            for _ in agent.stream(INPUT, config=CFG, stream_mode="messages"):
                pass
        else:
            asyncio.run(arun())
    assert len(bodies) == 5
    assert "o-c5" not in bodies.calls
    assert info.value.dimension == "tool_calls" and not info.value.stopped_earlier
    assert pool.spent["tool_calls"] == 5 and pool.spent["llm_calls"] == 6


def test_exit_behavior_end_finishes_with_a_final_message_explaining_the_stop() -> None:
    bodies = BodyCounter()
    model = ScriptedChatModel(messages=tool_call_script(30))
    agent = agent_for(model, [make_tool(bodies)], exit_behavior="end")
    with ag.BudgetPool(tool_calls=5, name="triage-run") as pool:
        out = agent.invoke(INPUT, config=CFG)
    assert len(bodies) == 5
    final = out["messages"][-1]
    assert isinstance(final, AIMessage) and not final.tool_calls
    assert "agentguard stopped this run" in final.content and "triage-run" in final.content
    stop = final.response_metadata[STOP_METADATA_KEY]
    assert stop["pool"] == "triage-run" and stop["dimension"] == "tool_calls"
    refused = out["messages"][-2]
    assert isinstance(refused, ToolMessage) and refused.status == "error"
    assert refused.tool_call_id == "c5"
    assert len(model.provider_calls) == 6  # no model call after the stop
    assert pool.stopped
    events = [r for r in pool.ledger if r.kind == "agent_stop"]
    assert len(events) == 1 and events[0].outcome == "ended"
    assert events[0].detail is not None and events[0].detail["guard_id"] == "budget:triage-run"


async def test_exit_behavior_end_under_ainvoke() -> None:
    bodies = BodyCounter()
    agent = agent_for(
        ScriptedChatModel(messages=tool_call_script(30)), [make_tool(bodies)], exit_behavior="end"
    )
    async with ag.BudgetPool(tool_calls=5):
        out = await agent.ainvoke(INPUT, config=CFG)
    assert len(bodies) == 5
    assert STOP_METADATA_KEY in out["messages"][-1].response_metadata


@pytest.mark.parametrize("exit_behavior", ["error", "end"])
@pytest.mark.parametrize("run", ["sync", "async"])
def test_eight_parallel_calls_against_a_limit_of_three_run_exactly_three(
    exit_behavior: str, run: str
) -> None:
    bodies = BodyCounter()
    model = ScriptedChatModel(messages=tool_call_script(8, per_message=8))
    agent = agent_for(model, [make_tool(bodies)], exit_behavior=exit_behavior)

    def go() -> Any:
        if run == "sync":
            return agent.invoke(INPUT, config=CFG)
        return asyncio.run(agent.ainvoke(INPUT, config=CFG))

    with ag.BudgetPool(tool_calls=3) as pool:
        if exit_behavior == "error":
            with pytest.raises(ag.BudgetExceeded):
                go()
        else:
            out = go()
            refused = [
                m for m in out["messages"] if isinstance(m, ToolMessage) and m.status == "error"
            ]
            assert len(refused) == 5
            assert all(STOP_METADATA_KEY in m.response_metadata for m in refused)
    assert len(bodies) == 3
    assert pool.spent["tool_calls"] == 3


@pytest.mark.parametrize("exit_behavior", ["error", "end"])
def test_refused_model_call_never_reaches_the_provider(exit_behavior: str) -> None:
    bodies = BodyCounter()
    model = ScriptedChatModel(messages=tool_call_script(30))
    agent = agent_for(model, [make_tool(bodies)], exit_behavior=exit_behavior)
    with ag.BudgetPool(llm_calls=3):
        if exit_behavior == "error":
            with pytest.raises(ag.BudgetExceeded) as info:
                agent.invoke(INPUT, config=CFG)
            assert info.value.dimension == "llm_calls"
        else:
            out = agent.invoke(INPUT, config=CFG)
            assert out["messages"][-1].response_metadata[STOP_METADATA_KEY]["dimension"] == (
                "llm_calls"
            )
    assert len(model.provider_calls) == 3
    assert len(bodies) == 3


# -- tokens, cost, telemetry ------------------------------------------------------------------


def test_tokens_and_cost_settle_per_model_call_with_the_model_name() -> None:
    exporter, _ = otel.install()
    exporter.clear()
    ag.configure(price=lambda model, usage: 0.001 if model == "fake-gpt" else None)
    bodies = BodyCounter()
    agent = agent_for(ScriptedChatModel(messages=tool_call_script(2)), [make_tool(bodies)])
    with ag.BudgetPool(total_tokens=10_000, cost_usd=1.0) as pool:
        agent.invoke(INPUT, config=CFG)
        assert pool.reserved == {}
    assert pool.spent["llm_calls"] == 3
    assert pool.spent["input_tokens"] == 300 and pool.spent["output_tokens"] == 60
    assert pool.spent["cost_usd"] == pytest.approx(0.003)
    rows = [r for r in pool.ledger if r.kind == "llm"]
    assert len(rows) == 3 and all(r.detail == {"model": "fake-gpt"} for r in rows)
    assert all(r.amounts["cost_usd"] == pytest.approx(0.001) for r in rows)
    chats = [s for s in exporter.get_finished_spans() if s.name == "chat fake-gpt"]
    assert len(chats) == 3
    assert chats[0].attributes["gen_ai.usage.output_tokens"] == 20
    assert chats[0].attributes["agentguard.cost_usd"] == pytest.approx(0.001)
    tools = [s for s in exporter.get_finished_spans() if s.name == "execute_tool lookup_order"]
    assert len(tools) == 2 and tools[0].attributes["gen_ai.tool.call.id"] in {"c0", "c1"}


def test_model_sees_the_middleware_charge_as_the_current_call() -> None:
    seen: list[ag.CallInfo | None] = []
    model = ScriptedChatModel(
        messages=tool_call_script(0), on_generate=lambda: seen.append(ag.current_call())
    )
    agent = agent_for(model, [])
    with ag.BudgetPool() as pool:
        agent.invoke(INPUT, config=CFG)
        assert ag.current_call() is None
    assert seen and seen[0] is not None and seen[0].pool is pool and seen[0].kind == "llm"


# -- no double charging -----------------------------------------------------------------------


def test_middleware_and_handler_together_charge_each_call_once() -> None:
    bodies = BodyCounter()
    agent = agent_for(ScriptedChatModel(messages=tool_call_script(3)), [make_tool(bodies)])
    with ag.BudgetPool() as pool:
        agent.invoke(INPUT, config={"callbacks": [BudgetCallbackHandler()], **CFG})
    assert len(bodies) == 3
    assert pool.spent["tool_calls"] == 3
    assert pool.spent["llm_calls"] == 4
    assert pool.spent["output_tokens"] == 4 * USAGE["output_tokens"]


def test_decorated_tool_under_the_middleware_is_charged_once() -> None:
    bodies = BodyCounter()

    @tool
    @ag.tool_call
    def lookup_order(order_id: str) -> str:
        """Look up an order."""
        bodies.hit(order_id)
        return "shipped"

    agent = agent_for(ScriptedChatModel(messages=tool_call_script(30)), [lookup_order])
    with ag.BudgetPool(tool_calls=4) as pool, pytest.raises(ag.BudgetExceeded):
        agent.invoke(INPUT, config={"callbacks": [BudgetCallbackHandler()], **CFG})
    assert len(bodies) == 4
    assert pool.spent["tool_calls"] == 4


def test_decorated_tool_refusal_ends_the_run_with_exit_behavior_end() -> None:
    bodies = BodyCounter()

    @tool
    @ag.tool_call
    def lookup_order(order_id: str) -> str:
        """Look up an order."""
        bodies.hit(order_id)
        return "shipped"

    agent = agent_for(
        ScriptedChatModel(messages=tool_call_script(30)), [lookup_order], exit_behavior="end"
    )
    with ag.BudgetPool(tool_calls=2):
        out = agent.invoke(INPUT, config=CFG)
    assert len(bodies) == 2
    assert STOP_METADATA_KEY in out["messages"][-1].response_metadata


# -- LangChain's retry middlewares ------------------------------------------------------------


def test_default_model_retry_cannot_swallow_the_stop() -> None:
    """ModelRetryMiddleware's defaults (retry any Exception, then on_failure='continue') turn
    BudgetExceeded into an AIMessage; the end of the run raises it again."""
    bodies = BodyCounter()
    model = ScriptedChatModel(messages=tool_call_script(30))
    retry = ModelRetryMiddleware(max_retries=2, initial_delay=0, jitter=False)
    agent = agent_for(model, [make_tool(bodies)], retry)
    with ag.BudgetPool(llm_calls=3) as pool, pytest.raises(ag.BudgetExceeded) as info:
        agent.invoke(INPUT, config=CFG)
    assert info.value.stopped_earlier
    assert len(model.provider_calls) == 3
    assert pool.spent["llm_calls"] == 3
    refusals = [r for r in pool.ledger if r.outcome == "refused"]
    assert len(refusals) == 3  # the first refusal, then two retries on the stopped pool


def test_default_model_retry_with_end_still_ends_with_the_explanation() -> None:
    bodies = BodyCounter()
    model = ScriptedChatModel(messages=tool_call_script(30))
    retry = ModelRetryMiddleware(max_retries=1, initial_delay=0, jitter=False)
    agent = agent_for(model, [make_tool(bodies)], retry, exit_behavior="end")
    with ag.BudgetPool(tool_calls=2):
        out = agent.invoke(INPUT, config=CFG)
    assert len(bodies) == 2
    assert STOP_METADATA_KEY in out["messages"][-1].response_metadata


def test_model_retry_with_agentguard_retry_on_raises_at_once() -> None:
    model = ScriptedChatModel(messages=tool_call_script(30))
    retry = ModelRetryMiddleware(max_retries=5, initial_delay=0, retry_on=retry_on())
    agent = agent_for(model, [make_tool(BodyCounter())], retry)
    with ag.BudgetPool(llm_calls=2) as pool, pytest.raises(ag.BudgetExceeded) as info:
        agent.invoke(INPUT, config=CFG)
    assert not info.value.stopped_earlier
    assert len([r for r in pool.ledger if r.outcome == "refused"]) == 1


def test_every_retry_attempt_of_the_model_is_charged() -> None:
    """Retry middleware before AgentGuardMiddleware: each attempt is a charged call."""
    attempts: list[int] = []

    def flaky() -> None:
        attempts.append(1)
        if len(attempts) <= 2:
            raise TimeoutError("provider timeout")

    model = ScriptedChatModel(messages=tool_call_script(0), on_generate=flaky)
    retry = ModelRetryMiddleware(max_retries=3, initial_delay=0, jitter=False, retry_on=retry_on())
    agent = agent_for(model, [], retry)
    with ag.BudgetPool(llm_calls=10) as pool:
        agent.invoke(INPUT, config=CFG)
        assert pool.reserved == {}
    assert pool.spent["llm_calls"] == 3
    outcomes = [r.outcome for r in pool.ledger if r.kind == "llm"]
    assert outcomes == ["error", "error", "ok"]


def test_default_tool_retry_cannot_keep_the_run_going() -> None:
    """ToolRetryMiddleware (outer) swallows the refusal into a ToolMessage; the stopped pool
    refuses the next model call."""
    bodies = BodyCounter()
    model = ScriptedChatModel(messages=tool_call_script(30))
    retry = ToolRetryMiddleware(max_retries=2, initial_delay=0, jitter=False)
    agent = agent_for(model, [make_tool(bodies)], retry)
    with ag.BudgetPool(tool_calls=5), pytest.raises(ag.BudgetExceeded) as info:
        agent.invoke(INPUT, config=CFG)
    assert len(bodies) == 5
    assert info.value.stopped_earlier
    assert len(model.provider_calls) == 6


def test_retry_on_never_retries_agentguard_terminal_errors() -> None:
    decide = retry_on()
    stop = ag.BudgetExceeded(pool="p", dimension="tool_calls", limit=1, spent=1, requested=1)
    assert decide(stop) is False
    assert decide(ag.NoActivePool(kind="llm", route=None, function="f")) is False
    assert decide(ag.ToolArgumentError(tool="t", problems=[])) is False
    assert decide(TimeoutError()) is True
    only_timeouts = retry_on((TimeoutError,))
    assert only_timeouts(TimeoutError()) and not only_timeouts(ValueError())
    assert not retry_on(lambda exc: True)(stop)
    assert ag.CorrectionsExhausted in NOT_RETRYABLE
    with pytest.raises(ag.ConfigurationError):
        retry_on("all")  # type: ignore[arg-type]


# -- sub-agents -------------------------------------------------------------------------------


def test_supervisor_with_two_subagents_shares_one_pool() -> None:
    billing_bodies, shipping_bodies = BodyCounter(), BodyCounter()
    billing = agent_for(
        ScriptedChatModel(messages=tool_call_script(30, tool="refund", prefix="b")),
        [make_tool(billing_bodies, "refund")],
    )
    shipping = agent_for(
        ScriptedChatModel(messages=tool_call_script(30, tool="track", prefix="s")),
        [make_tool(shipping_bodies, "track")],
    )

    @tool
    def ask_billing(question: str) -> str:
        """Delegate to the billing agent."""
        return str(billing.invoke({"messages": [HumanMessage(question)]}, config=CFG))

    @tool
    def ask_shipping(question: str) -> str:
        """Delegate to the shipping agent."""
        return str(shipping.invoke({"messages": [HumanMessage(question)]}, config=CFG))

    supervisor_script = iter(
        [
            AIMessage(
                content="",
                tool_calls=[
                    {"name": "ask_billing", "args": {"question": "refund?"}, "id": "d1"},
                    {"name": "ask_shipping", "args": {"question": "where?"}, "id": "d2"},
                ],
            ),
            AIMessage(content="done"),
        ]
    )
    supervisor = agent_for(
        ScriptedChatModel(messages=supervisor_script), [ask_billing, ask_shipping]
    )
    with (
        ag.BudgetPool(tool_calls=12, name="support") as pool,
        pytest.raises(ag.BudgetExceeded) as info,
    ):
        supervisor.invoke(INPUT, config=CFG)
    # 2 delegations + 10 sub-agent tool bodies, never more, whatever the interleaving
    assert len(billing_bodies) + len(shipping_bodies) == 10
    assert pool.spent["tool_calls"] == 12
    assert info.value.pool == "support"


def test_exit_behavior_is_checked() -> None:
    with pytest.raises(ag.ConfigurationError, match="exit_behavior"):
        AgentGuardMiddleware(exit_behavior="continue")  # type: ignore[arg-type]


def test_no_pool_fails_closed_before_the_provider() -> None:
    model = ScriptedChatModel(messages=tool_call_script(1))
    agent = agent_for(model, [make_tool(BodyCounter())])
    with pytest.raises(ag.NoActivePool):
        agent.invoke(INPUT, config=CFG)
    assert model.provider_calls == []


# -- argument validation and bounded correction rounds ----------------------------------------

USERS = {"u-42": {"name": "Ann"}}
DESCRIBED = "the user mentioned in the conversation"


class Directory:
    """A user directory that records every lookup (sync and async)."""

    def __init__(self) -> None:
        self.lookups: list[str] = []

    def find(self, user_id: str) -> dict[str, str] | None:
        self.lookups.append(user_id)
        return USERS.get(user_id)

    async def afind(self, user_id: str) -> dict[str, str] | None:
        self.lookups.append(user_id)
        return USERS.get(user_id)


def user_id_type(directory: Directory, *, is_async: bool) -> Any:
    """`Annotated[str, v.Resolves(...)]` built at runtime (this module has lazy annotations)."""
    lookup = directory.afind if is_async else directory.find
    return Annotated[str, v.Resolves(lookup, what="user id")]


def escalation_tool(directory: Directory, bodies: BodyCounter, *, is_async: bool) -> BaseTool:
    if is_async:

        async def escalate_to_human(user_id: str) -> str:
            """Hand the conversation to a human agent for this user."""
            bodies.hit(user_id)
            return f"escalated {v.resolved(user_id)['name']}"

        fn: Any = escalate_to_human
    else:

        def escalate_to_human_sync(user_id: str) -> str:
            """Hand the conversation to a human agent for this user."""
            bodies.hit(user_id)
            return f"escalated {v.resolved(user_id)['name']}"

        fn = escalate_to_human_sync
    fn.__annotations__ = {"user_id": user_id_type(directory, is_async=is_async), "return": str}
    return tool("escalate_to_human", description="Escalate to a human.")(fn)


def escalations(*user_ids: str) -> Any:
    for i, user_id in enumerate(user_ids):
        yield AIMessage(
            content="",
            tool_calls=[{"name": "escalate_to_human", "args": {"user_id": user_id}, "id": f"e{i}"}],
            usage_metadata=USAGE,  # type: ignore[arg-type]
        )
    yield AIMessage(content="escalated", usage_metadata=USAGE)  # type: ignore[arg-type]


@pytest.mark.parametrize("run", ["sync", "async"])
def test_model_corrects_a_described_user_id_after_the_correction_message(run: str) -> None:
    directory, bodies = Directory(), BodyCounter()
    model = ScriptedChatModel(messages=escalations(DESCRIBED, "u-42"))
    agent = agent_for(
        model, [escalation_tool(directory, bodies, is_async=run == "async")], max_corrections=2
    )
    with ag.BudgetPool(tool_calls=5) as pool:
        if run == "sync":
            out = agent.invoke(INPUT, config=CFG)
        else:
            out = asyncio.run(agent.ainvoke(INPUT, config=CFG))
    rejected = out["messages"][2]
    assert isinstance(rejected, ToolMessage) and rejected.status == "error"
    assert rejected.tool_call_id == "e0"
    assert f"you sent {DESCRIBED!r}" in rejected.content
    assert "`user_id`" in rejected.content and "1 correction round(s) remain" in rejected.content
    assert out["messages"][4].content == "escalated Ann"
    assert bodies.calls == ["u-42"]  # the body ran once, with the real id
    assert directory.lookups == ["u-42"]  # one lookup: LangChain's own pass reused the record
    assert pool.spent["tool_calls"] == 1  # a rejected call is a correction round, not a call
    corrections = [r for r in pool.ledger if r.kind == "correction"]
    assert len(corrections) == 1 and corrections[0].outcome == "rejected"
    assert DESCRIBED not in repr(corrections[0].detail)  # the ledger never holds the value


@pytest.mark.parametrize("exit_behavior", ["error", "end"])
def test_model_that_never_corrects_hits_the_round_limit(exit_behavior: str) -> None:
    directory, bodies = Directory(), BodyCounter()
    model = ScriptedChatModel(
        messages=escalations(DESCRIBED, "his user id", "u-999", "the same user", "u-42")
    )
    agent = agent_for(
        model,
        [escalation_tool(directory, bodies, is_async=False)],
        max_corrections=2,
        exit_behavior=exit_behavior,
    )
    with ag.BudgetPool() as pool:
        if exit_behavior == "error":
            with pytest.raises(ag.CorrectionsExhausted) as info:
                agent.invoke(INPUT, config=CFG)
            assert info.value.rounds == 3 and info.value.max_corrections == 2
        else:
            out = agent.invoke(INPUT, config=CFG)
            final = out["messages"][-1]
            stop = final.response_metadata[STOP_METADATA_KEY]
            assert stop["error.type"] in {"CorrectionsExhausted", "BudgetExceeded"}
            assert "escalate_to_human" in final.content
    assert bodies.calls == []
    assert len(model.provider_calls) == 3  # no model call after the last round
    assert directory.lookups == ["u-999"]  # placeholders are rejected without a lookup
    assert pool.stopped
    outcomes = [r.outcome for r in pool.ledger if r.kind == "correction"]
    assert outcomes == ["rejected", "rejected", "exhausted"]


def test_decorated_tool_is_validated_before_langchain_parses_it() -> None:
    """Without the middleware's check first, LangChain's own schema validation would answer
    the model with a pydantic error and no round would be counted."""
    directory, bodies = Directory(), BodyCounter()

    def escalate_to_human(user_id: str) -> str:
        """Escalate to a human."""
        bodies.hit(user_id)
        return "ok"

    escalate_to_human.__annotations__ = {
        "user_id": user_id_type(directory, is_async=False),
        "return": str,
    }
    decorated = tool(ag.tool_call(max_corrections=1)(escalate_to_human))
    model = ScriptedChatModel(messages=escalations(DESCRIBED, "u-42"))
    agent = agent_for(model, [decorated])
    with ag.BudgetPool() as pool:
        out = agent.invoke(INPUT, config=CFG)
    assert "This was the last correction round" in out["messages"][2].content
    assert bodies.calls == ["u-42"]
    assert pool.spent["tool_calls"] == 1  # charged once, by the decorator


def test_tool_node_with_the_middleware_wrappers_validates_in_a_hand_built_graph() -> None:
    from langgraph.graph import START, MessagesState, StateGraph
    from langgraph.prebuilt import ToolNode, tools_condition

    directory, bodies = Directory(), BodyCounter()
    model = ScriptedChatModel(messages=escalations(DESCRIBED, "u-42"))
    guard = AgentGuardMiddleware(max_corrections=1)

    def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", agent)
    graph.add_node(
        "tools",
        ToolNode(
            [escalation_tool(directory, bodies, is_async=False)],
            wrap_tool_call=guard.wrap_tool_call,
            awrap_tool_call=guard.awrap_tool_call,
        ),
    )
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    with ag.BudgetPool(tool_calls=3) as pool:
        out = graph.compile().invoke(INPUT, config={"callbacks": [BudgetCallbackHandler()]})
    assert out["messages"][2].status == "error"
    assert bodies.calls == ["u-42"]
    assert pool.spent["tool_calls"] == 1  # middleware wrapper charged; the handler skipped
    assert pool.spent["llm_calls"] == 3


@pytest.mark.slow
@pytest.mark.parametrize("run", ["sync", "async"])
def test_fifty_parallel_calls_under_the_middleware_never_exceed_seven(run: str) -> None:
    for _ in range(5):
        bodies = BodyCounter()
        model = ScriptedChatModel(messages=tool_call_script(50, per_message=50))
        agent = agent_for(model, [make_tool(bodies)], exit_behavior="end")
        with ag.BudgetPool(tool_calls=7) as pool:
            if run == "sync":
                out = agent.invoke(INPUT, config=CFG)
            else:
                out = asyncio.run(agent.ainvoke(INPUT, config=CFG))
        assert len(bodies) == 7
        assert pool.spent["tool_calls"] == 7
        assert sum(r.amounts.get("tool_calls", 0) for r in pool.ledger) == 7
        refused = [m for m in out["messages"] if isinstance(m, ToolMessage) and m.status == "error"]
        assert len(refused) == 43
