"""BudgetCallbackHandler on real LangChain models and tools: charge before, settle after."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.tools import tool

import agentguard as ag
from agentguard import calls
from agentguard.integrations.langchain import BudgetCallbackHandler
from tests import otel
from tests.lc_fakes import USAGE, BodyCounter, ScriptedChatModel


def answers(n: int, usage: dict[str, int] | None = USAGE) -> Any:
    return iter([AIMessage(content=f"answer {i}", usage_metadata=usage) for i in range(n)])  # type: ignore[arg-type]


def config(handler: BudgetCallbackHandler | None = None) -> dict[str, Any]:
    return {"callbacks": [handler or BudgetCallbackHandler()]}


def test_refused_model_call_never_reaches_the_provider() -> None:
    model = ScriptedChatModel(messages=answers(5))
    with ag.BudgetPool(llm_calls=2) as pool:
        model.invoke("q1", config=config())
        model.invoke("q2", config=config())
        with pytest.raises(ag.BudgetExceeded) as info:
            model.invoke("q3", config=config())
    assert len(model.provider_calls) == 2
    assert info.value.dimension == "llm_calls"
    assert pool.spent["llm_calls"] == 2
    assert pool.stopped


async def test_refused_model_call_never_reaches_the_provider_async() -> None:
    model = ScriptedChatModel(messages=answers(5))
    async with ag.BudgetPool(llm_calls=1):
        await model.ainvoke("q1", config=config())
        with pytest.raises(ag.BudgetExceeded):
            await model.ainvoke("q2", config=config())
    assert len(model.provider_calls) == 1


def test_tokens_settle_from_usage_metadata_with_model_name_and_cost() -> None:
    prices: list[tuple[str, ag.Usage]] = []

    def price(model: str, usage: ag.Usage) -> float:
        prices.append((model, usage))
        return ((usage.input_tokens or 0) * 2 + (usage.output_tokens or 0) * 10) / 1e6

    ag.configure(price=price)
    model = ScriptedChatModel(messages=answers(2))
    with ag.BudgetPool(total_tokens=10_000, cost_usd=1.0) as pool:
        model.invoke("hello", config=config())
        model.invoke("again", config=config())
        assert pool.reserved == {}
    spent = pool.spent
    assert spent["input_tokens"] == 200
    assert spent["output_tokens"] == 40
    assert spent["total_tokens"] == 240
    assert spent["cost_usd"] == pytest.approx(2 * (100 * 2 + 20 * 10) / 1e6)
    rows = [r for r in pool.ledger if r.kind == "llm"]
    assert [r.outcome for r in rows] == ["ok", "ok"]
    assert rows[0].detail == {"model": "fake-gpt"}
    assert rows[0].route == "fake-gpt"
    assert rows[0].amounts["llm_calls"] == 1
    assert rows[0].amounts["output_tokens"] == 20
    # the price function saw the model name from the run (reservation + settlement per call)
    assert {m for m, _ in prices} == {"fake-gpt"}


def test_reservation_uses_max_tokens_and_blocks_an_oversized_call() -> None:
    model = ScriptedChatModel(messages=answers(3), max_tokens=500)
    with ag.BudgetPool(output_tokens=400) as pool:
        with pytest.raises(ag.BudgetExceeded) as info:
            model.invoke("q", config=config())
    assert info.value.dimension == "output_tokens"
    assert info.value.requested >= 500
    assert model.provider_calls == []
    assert pool.spent["llm_calls"] == 0


def test_failed_model_call_releases_its_reservation_and_stays_counted() -> None:
    def boom() -> None:
        raise ConnectionError("provider down")

    model = ScriptedChatModel(messages=answers(3), on_generate=boom)
    handler = BudgetCallbackHandler()
    with ag.BudgetPool(output_tokens=1000) as pool:
        with pytest.raises(ConnectionError):
            model.invoke("q", config=config(handler))
        assert pool.reserved == {}
    assert pool.spent["llm_calls"] == 1
    assert pool.spent["output_tokens"] == 0
    row = next(r for r in pool.ledger if r.kind == "llm")
    assert row.outcome == "error"
    assert row.detail == {"error.type": "ConnectionError"}
    assert handler.in_flight == 0


def test_unreadable_usage_is_charged_at_the_estimate_not_zero() -> None:
    model = ScriptedChatModel(messages=answers(1, usage=None), max_tokens=64)
    with ag.BudgetPool() as pool:
        model.invoke("q", config=config())
    row = next(r for r in pool.ledger if r.kind == "llm")
    assert "usage_unknown" in row.flags
    assert pool.spent["output_tokens"] == 64


def test_unknown_price_under_a_cost_limit_is_refused_before_the_call() -> None:
    ag.configure(price=lambda model, usage: None)
    model = ScriptedChatModel(messages=answers(1))
    with ag.BudgetPool(cost_usd=1.0), pytest.raises(ag.UnknownPrice):
        model.invoke("q", config=config())
    assert model.provider_calls == []


def test_no_pool_fails_closed_before_the_provider() -> None:
    model = ScriptedChatModel(messages=answers(1))
    with pytest.raises(ag.NoActivePool):
        model.invoke("q", config=config())
    assert model.provider_calls == []


def test_fixed_pool_is_charged_without_an_active_context() -> None:
    pool = ag.BudgetPool(llm_calls=1)
    model = ScriptedChatModel(messages=answers(2))
    model.invoke("q", config=config(BudgetCallbackHandler(pool=pool)))
    with pytest.raises(ag.BudgetExceeded):
        model.invoke("q", config=config(BudgetCallbackHandler(pool=pool)))
    assert pool.spent["llm_calls"] == 1


@pytest.mark.parametrize("mode", ["invoke", "stream", "ainvoke", "astream"])
def test_handler_marks_the_model_call_for_sdk_instrumentation(mode: str) -> None:
    """While the provider runs, ag.current_call() is the handler's charge (an instrumented SDK
    skips charging it again); after the call it is cleared."""
    seen: list[ag.CallInfo | None] = []
    model = ScriptedChatModel(
        messages=answers(1), on_generate=lambda: seen.append(ag.current_call())
    )

    async def arun() -> None:
        if mode == "ainvoke":
            await model.ainvoke("q", config=config())
        else:
            async for _ in model.astream("q", config=config()):
                pass

    with ag.BudgetPool() as pool:
        if mode == "invoke":
            model.invoke("q", config=config())
        elif mode == "stream":
            for _ in model.stream("q", config=config()):
                pass
        else:
            asyncio.run(arun())
        assert ag.current_call() is None
    assert len(seen) == 1 and seen[0] is not None
    assert seen[0].kind == "llm" and seen[0].pool is pool and seen[0].model == "fake-gpt"
    assert pool.spent["llm_calls"] == 1
    assert pool.spent["output_tokens"] == 20


def test_model_call_inside_llm_call_decorator_is_charged_once() -> None:
    model = ScriptedChatModel(messages=answers(1))

    @ag.llm_call(model="fake-gpt", max_tokens=50)
    def ask(q: str) -> AIMessage:
        return model.invoke(q, config=config())  # type: ignore[return-value]

    with ag.BudgetPool() as pool:
        ask("q")
    assert pool.spent["llm_calls"] == 1
    assert pool.spent["output_tokens"] == 20


# -- tools ------------------------------------------------------------------------------------


def test_tool_call_is_charged_before_the_body_and_refused_at_the_limit() -> None:
    bodies = BodyCounter()

    @tool
    def lookup_order(order_id: str) -> str:
        """Look up an order."""
        bodies.hit(order_id)
        return f"{order_id}: shipped"

    with ag.BudgetPool(tool_calls=2) as pool:
        lookup_order.invoke({"order_id": "a"}, config=config())
        lookup_order.invoke({"order_id": "b"}, config=config())
        with pytest.raises(ag.BudgetExceeded):
            lookup_order.invoke({"order_id": "c"}, config=config())
    assert bodies.calls == ["a", "b"]
    rows = [r for r in pool.ledger if r.kind == "tool"]
    assert [r.outcome for r in rows] == ["ok", "ok", "refused"]
    assert rows[0].route == "lookup_order"


def test_loop_guard_refuses_the_same_tool_call_repeated() -> None:
    bodies = BodyCounter()

    @tool
    def poll(job: str) -> str:
        """Poll a job."""
        bodies.hit(job)
        return "pending"

    with ag.BudgetPool(loop_limit=2):
        poll.invoke({"job": "j1"}, config=config())
        poll.invoke({"job": "j1"}, config=config())
        with pytest.raises(ag.LoopDetected):
            poll.invoke({"job": "j1"}, config=config())
    assert len(bodies) == 2


def test_failing_tool_keeps_its_charge_and_writes_an_error_row() -> None:
    @tool
    def flaky(x: int) -> str:
        """Fails."""
        raise TimeoutError("upstream")

    with ag.BudgetPool() as pool:
        with pytest.raises(TimeoutError):
            flaky.invoke({"x": 1}, config=config())
    row = next(r for r in pool.ledger if r.kind == "tool")
    assert row.outcome == "error" and row.detail == {"error.type": "TimeoutError"}
    assert pool.spent["tool_calls"] == 1


def ledger_tool_calls(pool: ag.BudgetPool) -> float:
    return sum(r.amounts.get("tool_calls", 0.0) for r in pool.ledger)


@pytest.mark.parametrize("known", [False, True], ids=["claim", "tools="])
def test_decorated_tool_seen_by_the_handler_is_charged_once(known: bool) -> None:
    bodies = BodyCounter()

    @tool
    @ag.tool_call
    def lookup_ticket(ticket_id: str) -> str:
        """Look up a ticket."""
        bodies.hit(ticket_id)
        return "open"

    handler = BudgetCallbackHandler(tools=[lookup_ticket] if known else ())
    with ag.BudgetPool(tool_calls=2) as pool:
        lookup_ticket.invoke({"ticket_id": "t1"}, config=config(handler))
        lookup_ticket.invoke({"ticket_id": "t2"}, config=config(handler))
        assert pool.spent["tool_calls"] == 2
        with pytest.raises(ag.BudgetExceeded):
            lookup_ticket.invoke({"ticket_id": "t3"}, config=config(handler))
    assert len(bodies) == 2
    assert len([r for r in pool.ledger if r.kind == "tool" and r.outcome == "ok"]) == 2
    assert ledger_tool_calls(pool) == pool.spent["tool_calls"]
    assert handler.in_flight == 0


def test_decorated_tools_are_charged_once_under_ainvoke_sync_and_async() -> None:
    @tool
    @ag.tool_call
    def sync_lookup(ticket_id: str) -> str:
        """Sync lookup (LangChain runs it in an executor under ainvoke)."""
        return "open"

    @tool
    @ag.tool_call
    async def async_lookup(ticket_id: str) -> str:
        """Async lookup."""
        return "open"

    async def run() -> None:
        for i in range(3):
            await sync_lookup.ainvoke({"ticket_id": f"s{i}"}, config=config())
            await async_lookup.ainvoke({"ticket_id": f"a{i}"}, config=config())

    with ag.BudgetPool() as pool:
        asyncio.run(run())
    assert pool.spent["tool_calls"] == 6
    assert ledger_tool_calls(pool) == 6


def test_undecorated_tool_calling_a_decorated_helper_pays_for_both() -> None:
    """The claim is for the tool's own name: a different @ag.tool_call inside is its own call."""

    @ag.tool_call
    def fetch_invoice(invoice_id: str) -> str:
        return "paid"

    @tool
    def billing_summary(customer: str) -> str:
        """Summarise billing."""
        return fetch_invoice("i-1") + fetch_invoice("i-2")

    with ag.BudgetPool() as pool:
        billing_summary.invoke({"customer": "c"}, config=config())
    assert pool.spent["tool_calls"] == 3
    assert ledger_tool_calls(pool) == 3


def test_decorated_tool_with_rejected_body_keeps_the_handler_charge_in_the_ledger() -> None:
    @tool
    @ag.tool_call
    def broken(x: int) -> str:
        """Fails."""
        raise KeyError("missing")

    with ag.BudgetPool() as pool, pytest.raises(KeyError):
        broken.invoke({"x": 1}, config=config())
    assert pool.spent["tool_calls"] == 1
    assert ledger_tool_calls(pool) == 1


def test_renamed_decorated_tool_is_charged_once_when_the_handler_knows_the_tools() -> None:
    @ag.tool_call
    def find_customer_record(customer: str) -> str:
        return "c-1"

    renamed = tool("find_customer", description="Find a customer.")(find_customer_record)
    with ag.BudgetPool() as pool:
        renamed.invoke({"customer": "x"}, config=config(BudgetCallbackHandler(tools=[renamed])))
    assert pool.spent["tool_calls"] == 1


def test_handler_rejects_tools_that_are_not_langchain_tools() -> None:
    with pytest.raises(ag.ConfigurationError, match="not a LangChain tool"):
        BudgetCallbackHandler(tools=[object()])


def test_tool_output_is_kept_for_verbatim_provenance() -> None:
    @tool
    def list_orders(customer: str) -> str:
        """List orders."""
        return "ORD-1234, ORD-5678"

    calls._provenance_sources.add("list_orders")
    try:
        with ag.BudgetPool() as pool:
            list_orders.invoke(
                {"type": "tool_call", "name": "list_orders", "args": {"customer": "c"}, "id": "t1"},
                config=config(),
            )
            list_orders.invoke({"customer": "d"}, config=config())
    finally:
        calls._provenance_sources.discard("list_orders")
    assert list(pool.provenance["list_orders"]) == ["ORD-1234, ORD-5678"] * 2


def test_spans_name_the_model_and_the_tool() -> None:
    exporter, reader = otel.install()
    exporter.clear()

    @tool
    def lookup_order(order_id: str) -> str:
        """Look up an order."""
        return "shipped"

    model = ScriptedChatModel(messages=answers(1))
    with ag.BudgetPool():
        model.invoke("q", config=config())
        lookup_order.invoke(
            {"type": "tool_call", "name": "lookup_order", "args": {"order_id": "1"}, "id": "x"},
            config=config(),
        )
    spans = {s.name: s for s in exporter.get_finished_spans()}
    chat = spans["chat fake-gpt"]
    assert chat.attributes["gen_ai.request.model"] == "fake-gpt"
    assert chat.attributes["gen_ai.usage.input_tokens"] == 100
    assert chat.attributes["gen_ai.usage.output_tokens"] == 20
    assert chat.attributes["gen_ai.provider.name"] == "scriptedchatmodel"
    tool_span = spans["execute_tool lookup_order"]
    assert tool_span.attributes["gen_ai.tool.name"] == "lookup_order"
    assert tool_span.attributes["gen_ai.tool.call.id"] == "x"
    points = otel.metric_points(reader, "gen_ai.client.token.usage")
    assert any(p.attributes.get("gen_ai.request.model") == "fake-gpt" for p in points)


def test_messages_from_a_chat_prompt_are_estimated_for_the_reservation() -> None:
    model = ScriptedChatModel(messages=answers(1), max_tokens=10)
    long_prompt = [HumanMessage("x" * 4000)]
    with ag.BudgetPool(input_tokens=500), pytest.raises(ag.BudgetExceeded) as info:
        model.invoke(long_prompt, config=config())
    assert info.value.dimension == "input_tokens"
    assert model.provider_calls == []
