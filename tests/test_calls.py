"""@llm_call: reserve before, settle after, release on error; usage read from real shapes."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from anthropic.types import Message
from hypothesis import given, settings
from hypothesis import strategies as st
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, LLMResult
from openai.types.chat import ChatCompletion
from openai.types.responses import Response

import agentguard as ag
from agentguard import calls
from agentguard.usage import read_usage

OPENAI_CHAT = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "hello"},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150},
}
ANTHROPIC_MESSAGE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-3-5-haiku-20241022",
    "content": [{"type": "text", "text": "hi"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 100,
        "output_tokens": 20,
        "cache_read_input_tokens": 50,
        "cache_creation_input_tokens": 0,
    },
}
OPENAI_RESPONSE = {
    "id": "resp_1",
    "object": "response",
    "created_at": 1,
    "model": "gpt-4o-mini",
    "output": [],
    "parallel_tool_calls": True,
    "tool_choice": "auto",
    "tools": [],
    "status": "completed",
    "usage": {
        "input_tokens": 80,
        "output_tokens": 40,
        "total_tokens": 120,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0},
    },
}


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (ChatCompletion.model_validate(OPENAI_CHAT), (120, 30, 150)),
        (OPENAI_CHAT, (120, 30, 150)),
        (Message.model_validate(ANTHROPIC_MESSAGE), (150, 20, 170)),
        (ANTHROPIC_MESSAGE, (150, 20, 170)),
        (Response.model_validate(OPENAI_RESPONSE), (80, 40, 120)),
        (
            AIMessage(
                content="x",
                usage_metadata={"input_tokens": 7, "output_tokens": 3, "total_tokens": 10},
                response_metadata={"model_name": "gpt-4o"},
            ),
            (7, 3, 10),
        ),
        (
            LLMResult(
                generations=[
                    [
                        ChatGeneration(
                            message=AIMessage(
                                content="x",
                                usage_metadata={
                                    "input_tokens": 5,
                                    "output_tokens": 6,
                                    "total_tokens": 11,
                                },
                            )
                        )
                    ]
                ]
            ),
            (5, 6, 11),
        ),
    ],
    ids=["openai-obj", "openai-dict", "anthropic-obj", "anthropic-dict", "responses-api",
         "langchain-aimessage", "langchain-llmresult"],
)
def test_usage_is_read_from_the_shapes_people_get(response: Any, expected: tuple[int, ...]) -> None:
    usage = read_usage(response)
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.total) == expected


def test_usage_reads_the_model_name() -> None:
    usage = read_usage(ChatCompletion.model_validate(OPENAI_CHAT))
    assert usage is not None and usage.model == "gpt-4o-mini-2024-07-18"
    assert read_usage("plain text") is None


def test_llm_call_reserves_then_settles_actual_usage_and_leaves_no_reservation() -> None:
    seen_reserved: list[dict[str, float]] = []

    @ag.llm_call(route="triage.classify")
    def classify(text: str, max_tokens: int = 200) -> dict[str, Any]:
        seen_reserved.append(ag.current_pool().reserved)
        return OPENAI_CHAT

    with ag.BudgetPool(llm_calls=5, total_tokens=10_000, name="run") as pool:
        classify("x" * 400, max_tokens=200)
    assert seen_reserved[0]["output_tokens"] == 200
    assert seen_reserved[0]["input_tokens"] >= 100  # ~400 chars / 4
    assert pool.reserved == {}
    assert pool.spent["input_tokens"] == 120
    assert pool.spent["output_tokens"] == 30
    assert pool.spent["total_tokens"] == 150
    row = pool.ledger[-1]
    assert row.kind == "llm" and row.outcome == "ok" and row.route == "triage.classify"
    assert row.amounts["llm_calls"] == 1 and row.amounts["total_tokens"] == 150


def test_error_releases_the_reservation_but_keeps_the_call_counted() -> None:
    @ag.llm_call(max_tokens=500)
    def flaky(prompt: str) -> None:
        raise TimeoutError("upstream")

    with ag.BudgetPool(llm_calls=5, output_tokens=1000, name="run") as pool:
        with pytest.raises(TimeoutError):
            flaky("p")
        assert pool.reserved == {}
        assert pool.spent["llm_calls"] == 1
        assert pool.spent["output_tokens"] == 0
    assert pool.ledger[-1].outcome == "error"
    assert pool.ledger[-1].flags == ("released",)


def test_reservation_refuses_a_call_that_could_overspend_tokens() -> None:
    ran = 0

    @ag.llm_call
    def chat(prompt: str, max_tokens: int) -> dict[str, Any]:
        nonlocal ran
        ran += 1
        return {"usage": {"input_tokens": 1, "output_tokens": 1}}

    with ag.BudgetPool(output_tokens=1000, name="run"):
        chat("p", max_tokens=600)
        with pytest.raises(ag.BudgetExceeded) as info:
            chat("p", max_tokens=1000)  # 1 spent + 1000 reserved > 1000
    assert ran == 1
    assert info.value.dimension == "output_tokens"


async def test_concurrent_calls_cannot_jointly_overspend_tokens() -> None:
    started = 0

    @ag.llm_call(max_tokens=100)
    async def chat(i: int) -> dict[str, Any]:
        nonlocal started
        started += 1
        await asyncio.sleep(0.01)
        return {"usage": {"input_tokens": 0, "output_tokens": 100}}

    async with ag.BudgetPool(output_tokens=1000, name="run") as pool:
        results = await asyncio.gather(*(chat(i) for i in range(50)), return_exceptions=True)
    assert started == 10
    assert pool.spent["output_tokens"] == 1000
    assert sum(isinstance(r, ag.BudgetExceeded) for r in results) == 40


def test_unreadable_usage_is_flagged_and_the_estimate_is_charged_not_zero(
    agentguard_logs: pytest.LogCaptureFixture,
) -> None:
    @ag.llm_call(route="summarize", max_tokens=300)
    def summarize(doc: str) -> str:
        return "a summary"  # the raw response was thrown away

    with ag.BudgetPool(total_tokens=100_000, name="run") as pool:
        summarize("d" * 40)
        summarize("d" * 40)
    rows = [r for r in pool.ledger if r.kind == "llm"]
    assert all("usage_unknown" in r.flags for r in rows)
    assert pool.spent["output_tokens"] == 600
    warnings = [r for r in agentguard_logs.records if r.levelname == "WARNING"]
    assert len([w for w in warnings if "could not read token usage" in w.getMessage()]) == 1


def test_record_usage_reports_usage_from_inside_the_body() -> None:
    @ag.llm_call(route="extract")
    def extract(text: str) -> dict[str, str]:
        ag.record_usage(input_tokens=40, output_tokens=12, model="gpt-4o-mini")
        return {"name": "Ada"}

    with ag.BudgetPool(name="run") as pool:
        extract("x")
    assert pool.spent["total_tokens"] == 52
    assert "usage_unknown" not in pool.ledger[-1].flags
    with pytest.raises(ag.ConfigurationError, match=r"outside an @ag\.llm_call"):
        ag.record_usage(input_tokens=1, output_tokens=1)


def test_user_supplied_usage_extractor() -> None:
    def from_tuple(result: Any) -> ag.Usage | None:
        if isinstance(result, tuple):
            return ag.Usage(input_tokens=result[1], output_tokens=result[2])
        return None

    @ag.llm_call(usage=from_tuple)
    def chat(prompt: str) -> tuple[str, int, int]:
        return ("ok", 9, 4)

    with ag.BudgetPool(name="run") as pool:
        chat("p")
    assert pool.spent["total_tokens"] == 13


def test_unknown_price_with_a_cost_limit_is_refused_before_the_call() -> None:
    ran = False

    @ag.llm_call(model="my-private-finetune")
    def chat(prompt: str) -> dict[str, Any]:
        nonlocal ran
        ran = True
        return OPENAI_CHAT

    with ag.BudgetPool(cost_usd=1.0, name="run") as pool, pytest.raises(ag.UnknownPrice) as info:
        chat("p")
    assert not ran
    assert "'my-private-finetune'" in str(info.value) and "fallback_price" in str(info.value)
    assert pool.spent["llm_calls"] == 0
    # With a fallback price it runs, and the cost is never zero.
    ag.configure(fallback_price=ag.Price(input_per_mtok=1.0, output_per_mtok=2.0))
    with ag.BudgetPool(cost_usd=1.0, name="run2") as pool2:
        chat("p")
    assert pool2.spent["cost_usd"] == pytest.approx((120 * 1.0 + 30 * 2.0) / 1e6)


def test_genai_prices_prices_a_known_model_offline() -> None:
    @ag.llm_call(model="gpt-4o-mini", provider="openai")
    def chat(prompt: str, max_tokens: int = 100) -> dict[str, Any]:
        return {"usage": {"input_tokens": 1000, "output_tokens": 500}, "model": "gpt-4o-mini"}

    with ag.BudgetPool(cost_usd=0.01, name="run") as pool:
        chat("p")
    assert pool.spent["cost_usd"] == pytest.approx(0.00045)
    assert pool.reserved == {}


@pytest.mark.parametrize(
    ("model", "provider"),
    [
        ("gpt-4o-mini", "openai"),
        ("claude-sonnet-4-20250514", "anthropic"),  # cache read and write priced apart
        ("gemini-2.5-pro", "google"),  # tiered: a rate that depends on the prompt size
    ],
)
def test_cached_genai_price_is_exactly_genai_prices_own_figure(model: str, provider: str) -> None:
    import genai_prices

    usages = [
        (1000, 500, 0, 0),
        (250_000, 4096, 0, 0),  # above the 200k tier of the tiered model
        (12_345, 77, 4000, 0),
        (12_345, 77, 0, 345),
        (98_765, 1234, 5000, 4321),
        (0, 0, 0, 0),
    ]
    for _ in range(2):  # the first call of each cache-token pattern builds the cached path
        for inp, out, read, write in usages:
            usage = ag.Usage(
                input_tokens=inp,
                output_tokens=out,
                cache_read_tokens=read,
                cache_write_tokens=write,
                provider=provider,
            )
            expected = genai_prices.calc_price(
                genai_prices.Usage(
                    input_tokens=inp,
                    output_tokens=out,
                    cache_read_tokens=read or None,
                    cache_write_tokens=write or None,
                ),
                model_ref=model,
                provider_id=provider,
            ).total_price
            assert ag.genai_price(model, usage) == float(expected), (inp, out, read, write)
    import importlib

    usage_module = importlib.import_module("agentguard.usage")
    linear = usage_module._linear_cache[(model, provider, False, False)]
    assert (linear is None) == (model == "gemini-2.5-pro")  # tiers are never linearised


def test_cached_genai_price_equals_genai_prices_on_every_model_of_the_snapshot() -> None:
    # The cached linear price (integer coefficients, one rounding) against genai-prices' own
    # Decimal figure, for every model genai-prices ships, plain and with cache tokens.
    import genai_prices
    from genai_prices import data

    compared = 0
    for provider in data.providers:
        for model in provider.models:
            for inp, out, read, write in ((12_345, 77, 0, 0), (98_765, 1234, 5000, 4321)):
                try:
                    expected = genai_prices.calc_price(
                        genai_prices.Usage(
                            input_tokens=inp,
                            output_tokens=out,
                            cache_read_tokens=read or None,
                            cache_write_tokens=write or None,
                        ),
                        model_ref=model.id,
                        provider_id=provider.id,
                    ).total_price
                except LookupError:
                    continue  # a model genai-prices itself cannot price with this usage
                usage = ag.Usage(inp, out, None, None, provider.id, read, write)
                for _ in range(2):  # the first call builds the cached path, the second uses it
                    got = ag.genai_price(model.id, usage)
                    assert got == float(expected), (provider.id, model.id, inp, read, write)
                compared += 1
    assert compared > 1000


def test_usage_fast_init_sets_every_field_and_stays_frozen() -> None:
    import dataclasses
    import inspect

    fields = [f.name for f in dataclasses.fields(ag.Usage)]
    assert list(inspect.signature(ag.Usage).parameters) == fields  # a new field needs __init__
    values = dict(zip(fields, (1, 2, 3, "m", "p", 4, 5), strict=True))
    usage = ag.Usage(**values)  # type: ignore[arg-type]
    assert dataclasses.asdict(usage) == values
    assert ag.Usage() == ag.Usage(None, None, None, None, None, 0, 0)
    assert hash(usage) == hash(ag.Usage(**values))  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        usage.model = "other"  # type: ignore[misc]


def test_input_estimate_reads_a_bounded_sample_of_a_huge_conversation() -> None:

    reads = {"items": 0, "iterations": 0}

    class Conversation(list[Any]):
        def __getitem__(self, index: Any) -> Any:
            reads["items"] += 1
            return super().__getitem__(index)

        def __iter__(self) -> Any:
            reads["iterations"] += 1
            return super().__iter__()

    message = {"role": "user", "content": "x" * 396}  # 100 + 2 tokens
    history = Conversation([message] * 100_000)
    estimate = calls._estimate_text_tokens({"messages": history})
    assert estimate == 102 * 100_000  # uniform messages: the sample scales exactly
    assert reads == {"items": calls._ESTIMATE_ITEMS, "iterations": 0}


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=10), _JSON, max_size=6))
def test_body_estimate_equals_the_general_estimate(body: dict[str, Any]) -> None:
    # The instrumented SDK's unrolled estimate must give what the general one gives.
    assert calls._estimate_body_tokens(body) == calls._estimate_text_tokens(body)


def test_body_estimate_on_long_and_deep_bodies() -> None:
    message = {"role": "user", "content": [{"type": "text", "text": "y" * 81}], "n": 1}
    deep: Any = "z" * 40
    for _ in range(8):
        deep = {"k": [deep, 3]}
    for body in (
        {"model": "m", "messages": [message] * 1000},  # sampled past _ESTIMATE_ITEMS
        {"messages": [message, ("a tuple", "of text")], "tools": [{"f": deep}]},
        {"input": "q" * 4001, "max_output_tokens": 5, "metadata": {"a": ["b", None, 2.5]}},
    ):
        assert calls._estimate_body_tokens(body) == calls._estimate_text_tokens(body)


def test_user_price_function_and_cost_limit_stop_the_run() -> None:
    ag.configure(price=lambda model, usage: 0.01 * (usage.total or 0) / 100)

    @ag.llm_call(model="m", max_tokens=50)
    def chat(prompt: str) -> dict[str, Any]:
        return {"usage": {"input_tokens": 50, "output_tokens": 50}}

    with ag.BudgetPool(cost_usd=0.05, name="run") as pool:
        for _ in range(5):
            chat("p")  # each reserves ~0.005 (estimate) and settles 0.01 (actual)
        with pytest.raises(ag.BudgetExceeded) as info:
            chat("p")
    assert info.value.dimension == "cost_usd"
    assert pool.spent["cost_usd"] == pytest.approx(0.05)


def test_settlement_overrun_is_recorded_as_spent_and_stops_the_pool(
    captured_alerts: list[ag.Alert],
) -> None:
    @ag.llm_call(max_tokens=10, input_tokens=10)
    def chat(prompt: str) -> dict[str, Any]:
        return {"usage": {"input_tokens": 500, "output_tokens": 10}}

    with ag.BudgetPool(total_tokens=100, name="run") as pool:
        chat("p")
        with pytest.raises(ag.BudgetExceeded, match="stopped since an earlier refusal"):
            chat("p")
    assert pool.spent["total_tokens"] == 510  # the truth, not a clamp
    assert "budget.overrun" in [a.kind for a in captured_alerts]


async def test_async_llm_call_and_tool_call_keep_signatures_and_results() -> None:
    @ag.llm_call(route="a")
    async def chat(prompt: str, *, max_tokens: int = 10) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"usage": {"input_tokens": 2, "output_tokens": 3}}

    @ag.tool_call(route="t")
    async def tool(x: int) -> int:
        return x * 2

    async with ag.BudgetPool(name="run") as pool:
        assert (await chat("p"))["usage"]["output_tokens"] == 3
        assert await tool(21) == 42
    assert pool.spent["llm_calls"] == 1 and pool.spent["tool_calls"] == 1
    assert chat.__name__ == "chat" and tool.__wrapped__.__name__ == "tool"  # type: ignore[attr-defined]


def test_totals_equal_the_sum_of_the_ledger() -> None:
    @ag.llm_call(max_tokens=5)
    def chat(i: int) -> dict[str, Any]:
        return {"usage": {"input_tokens": i, "output_tokens": 2}}

    @ag.tool_call(loop_limit=None)
    def tool() -> None:
        return None

    with ag.BudgetPool(name="root", custom={"emails": 10}) as root:
        for i in range(3):
            chat(i)
            tool()
        with ag.BudgetPool(name="child") as child:
            chat(10)
            tool()
            ag.charge(emails=2)
    for pool in (root, child):
        totals: dict[str, float] = {}
        for row in pool.ledger:
            for dim, amount in row.amounts.items():
                totals[dim] = totals.get(dim, 0.0) + amount
        spent = {k: v for k, v in pool.spent.items() if v and k != "wall_seconds"}
        assert totals == pytest.approx(spent)


def test_tool_and_llm_spans_follow_genai_conventions() -> None:
    from tests import otel

    exporter, _ = otel.install()
    exporter.clear()

    @ag.tool_call(route="crm.lookup")
    def lookup(order_id: str) -> str:
        return order_id

    @ag.llm_call(model="gpt-4o-mini", provider="openai")
    def chat(prompt: str, max_tokens: int = 5) -> dict[str, Any]:
        return OPENAI_CHAT

    with ag.BudgetPool(name="run"):
        lookup("o-1")
        chat("hi")
    spans = {s.name: s for s in exporter.get_finished_spans()}
    tool_span = spans["execute_tool lookup"]
    assert tool_span.attributes is not None
    assert tool_span.attributes["gen_ai.tool.name"] == "lookup"
    assert "o-1" not in str(dict(tool_span.attributes))
    chat_span = spans["chat gpt-4o-mini"]
    assert chat_span.attributes is not None
    assert chat_span.attributes["gen_ai.usage.input_tokens"] == 120
    assert chat_span.attributes["gen_ai.usage.output_tokens"] == 30
    assert chat_span.attributes["gen_ai.provider.name"] == "openai"


def test_logging_never_contains_argument_values(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="agentguard")

    @ag.tool_call
    def send(email: str) -> None:
        return None

    with ag.BudgetPool(name="run"):
        for _ in range(3):
            send("ana@example.com")
        with pytest.raises(ag.LoopDetected):
            send("ana@example.com")
    assert "ana@example.com" not in caplog.text
