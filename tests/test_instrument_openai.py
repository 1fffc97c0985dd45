"""ag.instrument() on the real openai SDK (sync and async clients) against an offline server."""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx2
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai._base_client import AsyncAPIClient, BaseClient, SyncAPIClient
from opentelemetry import trace
from pydantic import BaseModel

import agentguard as ag
from agentguard import calls
from tests import otel
from tests.sdk_mock import USAGE_IN, USAGE_OUT, Provider, chat_json, surface_gaps

MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "What is six times seven?"}]


@pytest.fixture(autouse=True)
def _instrumented() -> Iterator[None]:
    ag.instrument(openai=True)
    calls._warned_routes.clear()
    yield
    ag.uninstrument()


@pytest.fixture
def provider() -> Provider:
    return Provider()


def _price(model: str, usage: ag.Usage) -> float:
    return ((usage.input_tokens or 0) * 0.15 + (usage.output_tokens or 0) * 0.6) / 1e6


def chat(client: openai.OpenAI, **kwargs: Any) -> Any:
    return client.chat.completions.create(model=MODEL, messages=MESSAGES, **kwargs)


# -- fail closed, refusals before the transport --------------------------------------------


def test_undecorated_call_outside_any_pool_is_refused_before_it_leaves(provider: Provider) -> None:
    client = provider.openai()
    with pytest.raises(ag.NoActivePool, match=r"openai\.chat\.completions"):
        chat(client)
    assert provider.sent == 0


def test_default_pool_catches_calls_made_outside_any_pool(provider: Provider) -> None:
    default = ag.BudgetPool(llm_calls=2, name="process-default")
    ag.configure(default_pool=default)
    client = provider.openai()
    chat(client)
    chat(client)
    with pytest.raises(ag.BudgetExceeded):
        chat(client)
    assert provider.sent == 2
    assert default.spent["llm_calls"] == 2


def test_100_sequential_raw_calls_on_a_pool_of_5_send_exactly_5(provider: Provider) -> None:
    client = provider.openai()
    refused = 0
    with ag.BudgetPool(llm_calls=5, name="run") as pool:
        for _ in range(100):
            try:
                chat(client, max_tokens=64)
            except ag.BudgetExceeded:
                refused += 1
    assert provider.sent == 5
    assert refused == 95
    assert pool.spent["llm_calls"] == 5
    assert pool.spent["input_tokens"] == 5 * USAGE_IN
    assert pool.spent["output_tokens"] == 5 * USAGE_OUT
    assert pool.reserved == {}


async def test_100_concurrent_async_calls_on_a_pool_of_5_send_exactly_5(
    provider: Provider,
) -> None:
    client = provider.async_openai()

    async def one() -> str:
        try:
            await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=64)
        except ag.BudgetExceeded:
            return "refused"
        return "ok"

    async with ag.BudgetPool(llm_calls=5, name="run") as pool:
        outcomes = await asyncio.gather(*(one() for _ in range(100)))
    assert outcomes.count("ok") == 5
    assert provider.sent == 5
    assert pool.spent["llm_calls"] == 5
    assert pool.spent["output_tokens"] == 5 * USAGE_OUT
    assert pool.reserved == {}


def test_8_threads_sharing_a_pool_of_5_send_exactly_5(provider: Provider) -> None:
    client = provider.openai()
    with ag.BudgetPool(llm_calls=5, name="threads") as pool:
        call = pool.bind(lambda: chat(client, max_tokens=32))

        def worker() -> int:
            ok = 0
            for _ in range(10):
                try:
                    call()
                    ok += 1
                except ag.BudgetExceeded:
                    pass
            return ok

        with ThreadPoolExecutor(8) as ex:
            done = sum(ex.map(lambda _: worker(), range(8)))
    assert done == 5
    assert provider.sent == 5
    assert pool.reserved == {}


def test_token_limit_refuses_a_request_whose_max_tokens_cannot_fit(provider: Provider) -> None:
    client = provider.openai()
    with ag.BudgetPool(output_tokens=100, name="small") as pool:
        with pytest.raises(ag.BudgetExceeded, match="output_tokens"):
            chat(client, max_tokens=500)
    assert provider.sent == 0
    assert pool.spent["llm_calls"] == 0


def test_unknown_price_under_a_cost_limit_is_refused_before_the_request(
    provider: Provider,
) -> None:
    ag.configure(price=lambda model, usage: None)
    client = provider.openai()
    with ag.BudgetPool(cost_usd=1.0, name="priced"), pytest.raises(ag.UnknownPrice):
        chat(client)
    assert provider.sent == 0


# -- settlement ------------------------------------------------------------------------------


def test_response_usage_is_settled_exactly_and_priced(provider: Provider) -> None:
    ag.configure(price=_price)
    client = provider.openai()
    with ag.BudgetPool(cost_usd=1.0, name="run") as pool:
        chat(client, max_completion_tokens=300)
    assert pool.spent["input_tokens"] == USAGE_IN
    assert pool.spent["output_tokens"] == USAGE_OUT
    assert pool.spent["cost_usd"] == pytest.approx(_price(MODEL, ag.Usage(USAGE_IN, USAGE_OUT)))
    (row,) = pool.ledger
    assert (row.route, row.kind, row.outcome) == ("openai.chat.completions", "llm", "ok")
    assert row.detail == {"model": MODEL}
    assert pool.reserved == {}


def test_reservation_uses_max_tokens_and_an_input_estimate_while_in_flight(
    provider: Provider,
) -> None:
    client = provider.openai()
    seen: list[dict[str, float]] = []
    original = provider.answer

    def spy(request: Any) -> Any:
        seen.append(pool.reserved)
        return original(request)

    provider.answer = spy  # type: ignore[method-assign]
    client = provider.openai()
    with ag.BudgetPool(name="run") as pool:
        chat(client, max_tokens=321)
    assert seen[0]["output_tokens"] == 321
    assert seen[0]["input_tokens"] >= len("What is six times seven?") // 4
    assert pool.reserved == {}


@pytest.mark.parametrize("kept", [{"prompt_tokens": 12}, {"completion_tokens": 3}, {}])
def test_a_usage_block_missing_a_count_is_charged_at_the_estimate_never_zero(
    provider: Provider, kept: dict[str, int]
) -> None:
    # A proxy that strips part of the usage block: the fast settle path must not take a
    # missing count as zero; the reservation's estimate is charged, flagged.
    original = provider.answer

    def stripped(request: Any) -> Any:
        original(request)
        body = chat_json(MODEL)
        body["usage"] = dict(kept)
        return httpx2.Response(200, json=body)

    provider.answer = stripped  # type: ignore[method-assign]
    client = provider.openai()
    with ag.BudgetPool(name="run") as pool:
        chat(client, max_tokens=200)
    (row,) = pool.ledger
    assert "usage_unknown" in row.flags
    assert row.amounts["output_tokens"] == 200  # the reserved max_tokens, not 0
    assert row.amounts["input_tokens"] >= len(MESSAGES[0]["content"]) // 4
    assert pool.reserved == {}


def test_embeddings_reserve_no_output_tokens_and_settle_input_only(provider: Provider) -> None:
    client = provider.openai()
    with ag.BudgetPool(output_tokens=0, name="embed-only", warn_at=None) as pool:
        client.embeddings.create(model="text-embedding-3-small", input="hello world")
    assert provider.sent == 1
    assert pool.spent["llm_calls"] == 1
    assert pool.spent["input_tokens"] == USAGE_IN
    assert pool.spent["output_tokens"] == 0
    assert pool.ledger[0].flags == ()


def test_responses_create_is_charged_and_settled(provider: Provider) -> None:
    client = provider.openai()
    with ag.BudgetPool(llm_calls=1, name="run") as pool:
        client.responses.create(model=MODEL, input="hi", max_output_tokens=99)
        with pytest.raises(ag.BudgetExceeded):
            client.responses.create(model=MODEL, input="hi again")
    assert provider.sent == 1
    assert pool.spent["output_tokens"] == USAGE_OUT
    assert pool.ledger[0].route == "openai.responses"


def test_parse_with_a_pydantic_format_is_charged(provider: Provider) -> None:
    class Answer(BaseModel):
        answer: str

    client = provider.openai()
    with ag.BudgetPool(name="run") as pool:
        parsed = client.chat.completions.parse(
            model=MODEL, messages=MESSAGES, response_format=Answer
        )
    assert parsed.choices[0].message.parsed == Answer(answer="42")
    assert pool.spent["llm_calls"] == 1
    assert pool.spent["output_tokens"] == USAGE_OUT


def test_with_raw_response_is_charged_and_settled_from_the_body(provider: Provider) -> None:
    client = provider.openai()
    with ag.BudgetPool(name="run") as pool:
        raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
        assert raw.parse().usage is not None
    assert pool.spent["llm_calls"] == 1
    assert pool.spent["input_tokens"] == USAGE_IN
    assert pool.ledger[0].flags == ()


# -- streams ---------------------------------------------------------------------------------


def test_stream_asks_for_usage_and_settles_it_from_the_final_chunk(provider: Provider) -> None:
    client = provider.openai()
    with ag.BudgetPool(name="run") as pool:
        stream = chat(client, stream=True, max_tokens=200)
        assert pool.reserved["output_tokens"] == 200  # held while the stream is open
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Hello there"
    assert provider.bodies[0]["stream_options"] == {"include_usage": True}
    assert pool.spent["input_tokens"] == USAGE_IN
    assert pool.spent["output_tokens"] == USAGE_OUT
    assert pool.reserved == {}
    assert pool.ledger[0].flags == ()


def test_caller_stream_options_are_kept_and_completed(provider: Provider) -> None:
    client = provider.openai()
    with ag.BudgetPool(name="run"):
        for _ in chat(client, stream=True, stream_options={"include_obfuscation": False}):
            pass
    assert provider.bodies[0]["stream_options"] == {
        "include_obfuscation": False,
        "include_usage": True,
    }


def test_stream_without_usage_is_charged_at_the_estimate_and_warned_once(
    provider: Provider, agentguard_logs: pytest.LogCaptureFixture
) -> None:
    client = provider.openai()
    with ag.BudgetPool(name="run") as pool:
        for _ in range(2):
            for _ in chat(
                client, stream=True, max_tokens=50, stream_options={"include_usage": False}
            ):
                pass
    assert pool.spent["output_tokens"] == 100  # never free: the reserved 50 each
    assert all("usage_unknown" in row.flags for row in pool.ledger)
    warnings = [r for r in agentguard_logs.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "stream of 'openai.chat.completions'" in warnings[0].getMessage()


def test_stream_closed_early_releases_nothing_for_free_and_holds_nothing(
    provider: Provider,
) -> None:
    client = provider.openai()
    with ag.BudgetPool(name="run") as pool:
        stream = chat(client, stream=True, max_tokens=80)
        next(iter(stream))
        stream.close()
        assert pool.reserved == {}
    assert pool.spent["output_tokens"] == 80
    assert "usage_unknown" in pool.ledger[0].flags


def test_stream_dropped_unread_is_settled_when_collected(provider: Provider) -> None:
    client = provider.openai()
    with ag.BudgetPool(name="run") as pool:
        stream = chat(client, stream=True, max_tokens=80)
        del stream
        import gc

        gc.collect()
        assert pool.reserved == {}
    assert pool.spent["llm_calls"] == 1


def test_chat_stream_helper_is_charged_once_and_settled(provider: Provider) -> None:
    client = provider.openai()
    with ag.BudgetPool(llm_calls=1, name="run") as pool:
        with client.chat.completions.stream(model=MODEL, messages=MESSAGES) as stream:
            final = stream.get_final_completion()
    assert final.choices[0].message.content == "Hello there"
    assert provider.sent == 1
    assert pool.spent["output_tokens"] == USAGE_OUT
    assert pool.reserved == {}


def test_responses_stream_helper_settles_from_response_completed(provider: Provider) -> None:
    client = provider.openai()
    with ag.BudgetPool(name="run") as pool:
        with client.responses.stream(model=MODEL, input="hi") as stream:
            for _ in stream:
                pass
    assert pool.spent["input_tokens"] == USAGE_IN
    assert pool.spent["output_tokens"] == USAGE_OUT
    assert pool.reserved == {}


async def test_async_stream_settles_usage(provider: Provider) -> None:
    client = provider.async_openai()
    async with ag.BudgetPool(name="run") as pool:
        stream = await client.chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=True, max_tokens=90
        )
        async for _ in stream:
            pass
    assert pool.spent["output_tokens"] == USAGE_OUT
    assert pool.reserved == {}


async def test_async_stream_helper_is_charged_once(provider: Provider) -> None:
    client = provider.async_openai()
    async with ag.BudgetPool(llm_calls=1, name="run") as pool:
        async with client.chat.completions.stream(model=MODEL, messages=MESSAGES) as stream:
            async for _ in stream:
                pass
    assert provider.sent == 1
    assert pool.spent["output_tokens"] == USAGE_OUT


# -- errors and SDK retries ------------------------------------------------------------------


def test_http_500_releases_the_token_reservation(provider: Provider) -> None:
    provider.always_fail = 500
    client = provider.openai()
    with ag.BudgetPool(output_tokens=1000, name="run") as pool:
        with pytest.raises(openai.InternalServerError):
            chat(client, max_tokens=600)
        assert pool.reserved == {}
        assert pool.spent["output_tokens"] == 0
        assert pool.spent["llm_calls"] == 1  # the request was sent: the call is spent
        row = pool.ledger[-1]
        assert row.outcome == "error"
        assert row.detail == {"error.type": "InternalServerError"}
        # the released tokens are usable again
        provider.always_fail = None
        chat(client, max_tokens=600)


def test_every_sdk_retry_attempt_is_charged(provider: Provider) -> None:
    provider.fail_with = [500, 503]
    client = provider.openai(max_retries=2)
    with ag.BudgetPool(name="run") as pool:
        chat(client)
    assert provider.sent == 3
    assert pool.spent["llm_calls"] == 3
    outcomes = [(r.outcome, r.detail) for r in pool.ledger]
    assert outcomes[:2] == [
        ("retry", {"http.request.resend_count": 1}),
        ("retry", {"http.request.resend_count": 2}),
    ]
    assert pool.spent["output_tokens"] == USAGE_OUT  # tokens once: one response


def test_sdk_retries_stop_when_the_pool_runs_out(provider: Provider) -> None:
    provider.always_fail = 500
    client = provider.openai(max_retries=10)
    with ag.BudgetPool(llm_calls=3, name="run") as pool:
        with pytest.raises(ag.BudgetExceeded, match="llm_calls"):
            chat(client)
    assert provider.sent == 3
    assert pool.reserved == {}


async def test_async_sdk_retries_are_charged(provider: Provider) -> None:
    provider.fail_with = [502]
    client = provider.async_openai(max_retries=1)
    async with ag.BudgetPool(name="run") as pool:
        await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert provider.sent == 2
    assert pool.spent["llm_calls"] == 2


# -- one logical call, one charge ----------------------------------------------------------


def test_no_double_charge_inside_llm_call_and_exact_usage_reaches_it(provider: Provider) -> None:
    client = provider.openai()

    @ag.llm_call(route="answer", max_tokens=500)
    def answer(question: str) -> str:
        response = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": question}]
        )
        return response.choices[0].message.content or ""  # a parsed value, not the response

    with ag.BudgetPool(llm_calls=1, name="run") as pool:
        assert answer("six times seven?") == '{"answer": "42"}'
    assert provider.sent == 1
    assert pool.spent["llm_calls"] == 1
    assert pool.spent["input_tokens"] == USAGE_IN  # exact, not the estimate
    assert pool.spent["output_tokens"] == USAGE_OUT
    (row,) = pool.ledger
    assert row.route == "answer"
    assert row.flags == ()


def test_two_sdk_requests_inside_one_llm_call_add_their_usage(provider: Provider) -> None:
    client = provider.openai()

    @ag.llm_call(route="two-step")
    def two_step() -> None:
        chat(client)
        chat(client)

    with ag.BudgetPool(name="run") as pool:
        two_step()
    assert pool.spent["llm_calls"] == 1
    assert pool.spent["input_tokens"] == 2 * USAGE_IN


def test_sdk_retry_inside_llm_call_is_charged_to_the_outer_call(provider: Provider) -> None:
    provider.fail_with = [500]
    client = provider.openai(max_retries=1)

    @ag.llm_call(route="outer")
    def outer() -> Any:
        return chat(client)

    with ag.BudgetPool(name="run") as pool:
        outer()
    assert provider.sent == 2
    assert pool.spent["llm_calls"] == 2
    assert [r.outcome for r in pool.ledger] == ["retry", "ok"]


# -- instrument / uninstrument -----------------------------------------------------------------


def test_instrument_is_idempotent_and_uninstrument_restores_the_sdk(provider: Provider) -> None:
    wrapped = SyncAPIClient.__dict__["request"]
    assert ag.instrument(openai=True) >= {"openai"}
    assert SyncAPIClient.__dict__["request"] is wrapped  # not wrapped twice
    assert wrapped.__wrapped__.__name__ == "request"
    assert not hasattr(wrapped.__wrapped__, "__agentguard_instrument__")
    ag.uninstrument()
    ag.uninstrument()
    assert "openai" not in ag.instrumented()
    for cls, attr in (
        (SyncAPIClient, "request"),
        (AsyncAPIClient, "request"),
        (BaseClient, "_build_request"),
    ):
        assert not hasattr(cls.__dict__[attr], "__agentguard_instrument__")
    chat(provider.openai())  # uninstrumented: no pool needed any more
    assert provider.sent == 1
    ag.instrument(openai=True)
    with pytest.raises(ag.NoActivePool):
        chat(provider.openai())


def test_hooks_forward_the_sdks_keywords_by_name_when_the_signature_matches() -> None:
    # The supported SDK versions get the wrappers without *args/**kwargs (the fast path).
    import inspect

    for cls, attr in (
        (SyncAPIClient, "request"),
        (AsyncAPIClient, "request"),
        (BaseClient, "_build_request"),
    ):
        code = cls.__dict__[attr].__code__
        assert not code.co_flags & (inspect.CO_VARARGS | inspect.CO_VARKEYWORDS), (cls, attr)


def test_an_sdk_whose_signatures_changed_gets_the_generic_hooks_and_is_still_charged(
    provider: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A future SDK with another request()/_build_request() signature: the wrappers forward
    # everything; every request is still charged, SDK retries included, streams settled.
    import inspect

    ag.uninstrument()
    module = importlib.import_module("agentguard.instrument")
    monkeypatch.setattr(module, "_REQUEST_KEYWORDS", {"stream": False, "timeout": None})
    monkeypatch.setattr(module, "_BUILD_KEYWORDS", {"attempt": 0})
    ag.instrument(openai=True)
    for cls, attr in (
        (SyncAPIClient, "request"),
        (AsyncAPIClient, "request"),
        (BaseClient, "_build_request"),
    ):
        assert cls.__dict__[attr].__code__.co_flags & inspect.CO_VARKEYWORDS, (cls, attr)
    client = provider.openai(max_retries=2)
    provider.fail_with = [500]
    with ag.BudgetPool(llm_calls=5, name="run") as pool:
        chat(client, max_tokens=64)  # one 500, then the SDK's retry succeeds
        stream = chat(client, stream=True)
        assert len(list(stream)) > 0
        aclient = provider.async_openai()
        asyncio.run(aclient.chat.completions.create(model=MODEL, messages=MESSAGES))
        for _ in range(10):
            try:
                chat(client)
            except ag.BudgetExceeded:
                pass
    assert provider.sent == 5  # 2 attempts + 1 stream + 1 async + 1 more, then refused
    assert pool.spent["llm_calls"] == 5
    assert pool.reserved == {}


def test_concurrent_instrument_and_uninstrument_never_stack_wrappers() -> None:
    def flip(n: int) -> None:
        for _ in range(50):
            ag.instrument(openai=True) if n % 2 else ag.uninstrument()

    with ThreadPoolExecutor(4) as ex:
        list(ex.map(flip, range(4)))
    ag.instrument(openai=True)
    wrapper = SyncAPIClient.__dict__["request"]
    assert hasattr(wrapper, "__agentguard_instrument__")
    assert not hasattr(wrapper.__wrapped__, "__agentguard_instrument__")


def test_uninstrument_keeps_a_wrapper_installed_on_top_of_ours(
    provider: Provider, agentguard_logs: pytest.LogCaptureFixture
) -> None:
    ours = SyncAPIClient.__dict__["request"]

    def theirs(self: Any, *args: Any, **kwargs: Any) -> Any:
        return ours(self, *args, **kwargs)

    SyncAPIClient.request = theirs  # type: ignore[method-assign]
    try:
        ag.uninstrument()
        assert SyncAPIClient.__dict__["request"] is theirs
        assert "wrapped again" in agentguard_logs.text
        chat(provider.openai())  # ours underneath is inactive: passes through
        assert provider.sent == 1
    finally:
        SyncAPIClient.request = ours.__wrapped__  # type: ignore[method-assign]


def test_requests_to_other_endpoints_pass_through_untouched(provider: Provider) -> None:
    client = provider.openai()
    client.models.list()  # no pool, no refusal: not a generation request
    assert provider.sent == 1


def test_instrumenting_a_missing_sdk_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inst = importlib.import_module("agentguard.instrument")
    real = inst.importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "anthropic" else real(name, *args)

    monkeypatch.setattr(inst.importlib.util, "find_spec", find_spec)
    ag.uninstrument(openai=False, anthropic=True)
    with pytest.raises(ag.ConfigurationError, match=r"agentguard\[anthropic\]"):
        ag.instrument(anthropic=True)
    assert "anthropic" not in ag.instrument(openai=True, anthropic=None)


def test_context_is_carried_into_executor_threads_with_copy_context(provider: Provider) -> None:
    client = provider.openai()
    with ag.BudgetPool(llm_calls=1, name="run") as pool, ThreadPoolExecutor(1) as ex:
        ctx = contextvars.copy_context()
        ex.submit(ctx.run, chat, client).result()
    assert pool.spent["llm_calls"] == 1


# -- telemetry -------------------------------------------------------------------------------


def test_span_follows_genai_conventions(provider: Provider) -> None:
    exporter, _ = otel.install()
    exporter.clear()
    client = provider.openai()
    with ag.BudgetPool(name="traced"):
        chat(client)
        client.embeddings.create(model="text-embedding-3-small", input="x")
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {f"chat {MODEL}", "embeddings text-embedding-3-small"}
    span = spans[f"chat {MODEL}"]
    assert span.kind == trace.SpanKind.CLIENT
    attrs = dict(span.attributes or {})
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "openai"
    assert attrs["gen_ai.request.model"] == MODEL
    assert attrs["gen_ai.response.model"] == MODEL
    assert attrs["gen_ai.usage.input_tokens"] == USAGE_IN
    assert attrs["gen_ai.usage.output_tokens"] == USAGE_OUT
    assert attrs["agentguard.pool"] == "traced"
    emb = dict(spans["embeddings text-embedding-3-small"].attributes or {})
    assert emb["gen_ai.operation.name"] == "embeddings"


def test_span_of_a_failed_request_carries_error_type(provider: Provider) -> None:
    exporter, _ = otel.install()
    exporter.clear()
    provider.always_fail = 500
    with ag.BudgetPool(name="traced"), pytest.raises(openai.InternalServerError):
        chat(provider.openai())
    (span,) = exporter.get_finished_spans()
    assert (span.attributes or {})["error.type"] == "InternalServerError"


def test_an_existing_genai_span_is_annotated_not_nested(provider: Provider) -> None:
    exporter, _ = otel.install()
    exporter.clear()
    tracer = trace.get_tracer("other-openai-instrumentation")
    with (
        ag.BudgetPool(name="traced"),
        tracer.start_as_current_span(
            f"chat {MODEL}",
            kind=trace.SpanKind.CLIENT,
            attributes={"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai"},
        ),
    ):
        chat(provider.openai())
    (span,) = exporter.get_finished_spans()
    assert (span.attributes or {})["agentguard.pool"] == "traced"
    assert (span.attributes or {})["agentguard.instrumented"] is True


# -- accounting property ---------------------------------------------------------------------

ACTIONS = st.lists(
    st.sampled_from(["ok", "stream", "stream_early_close", "http_500", "retry_then_ok"]),
    min_size=1,
    max_size=12,
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions=ACTIONS, limit=st.integers(min_value=0, max_value=8))
def test_every_request_that_reaches_the_transport_is_charged(
    actions: list[str], limit: int
) -> None:
    provider = Provider()
    client = provider.openai(max_retries=1)
    with ag.BudgetPool(llm_calls=limit, name="prop", warn_at=None) as pool:
        for action in actions:
            provider.fail_with = {"http_500": [500, 500], "retry_then_ok": [500]}.get(action, [])
            try:
                if action.startswith("stream"):
                    stream = chat(client, stream=True, max_tokens=10)
                    if action == "stream_early_close":
                        stream.close()
                    else:
                        for _ in stream:
                            pass
                else:
                    chat(client, max_tokens=10)
            except (ag.BudgetExceeded, openai.InternalServerError):
                pass
        assert pool.reserved == {}
    assert provider.sent == pool.spent["llm_calls"] <= limit


# -- no silent gap: every request-making method of the SDK is accounted for -----------------

_STORED = "reads or manages a stored object; no model runs"
GENERATION: dict[str, dict[str, str]] = {
    "openai.resources.chat.completions.completions.Completions": {
        "create": "charged",
        "parse": "charged",
        "stream": "charged",
        "retrieve": _STORED,
        "update": _STORED,
        "list": _STORED,
        "delete": _STORED,
    },
    "openai.resources.responses.responses.Responses": {
        "create": "charged",
        "parse": "charged",
        "stream": "charged (a resumed stream of an existing response is not: it was charged)",
        "compact": "charged",
        "retrieve": _STORED,
        "cancel": _STORED,
        "delete": _STORED,
        "connect": "websocket session: out of scope (no per-request HTTP call to charge)",
    },
    "openai.resources.beta.responses.responses.Responses": {
        "create": "charged",
        "compact": "charged",
        "retrieve": _STORED,
        "cancel": _STORED,
        "delete": _STORED,
        "connect": "websocket session: out of scope",
    },
    "openai.resources.embeddings.Embeddings": {"create": "charged"},
    "openai.resources.completions.Completions": {"create": "charged"},
    "openai.resources.decisions.Decisions": {"create": "charged"},
}

_ADMIN = "organisation and account administration; no model runs"
_MEDIA = "audio/image/video models, priced per second, character or image, not per token"
_SERVER = "server-side runs (assistants, agents, evals, fine-tuning): billed by the service"
_FILES = "file, upload, vector-store and container management; no generation"
OUT_OF_SCOPE: dict[str, tuple[str, str]] = {
    "openai.resources.admin": (
        _ADMIN,
        "activate archive audio_speeches audio_transcriptions "
        "code_interpreter_sessions completions costs create deactivate decisions delete "
        "embeddings file_search_calls images list list_rate_limits moderations retrieve "
        "update update_rate_limit validate vector_stores web_search_calls",
    ),
    "openai.resources.audio": (_MEDIA, "create delete list retrieve update"),
    "openai.resources.images": (_MEDIA, "create_variation edit generate"),
    "openai.resources.videos": (
        _MEDIA,
        "create create_and_poll create_character delete "
        "download_content edit extend get_character list poll remix retrieve",
    ),
    "openai.resources.batches": (
        "deferred batch jobs: charged by the service later",
        "cancel create list retrieve",
    ),
    "openai.resources.beta.agents": (
        _SERVER,
        "content create delete for_result list pause "
        "prepare prepare_directory resume retrieve stream update upload",
    ),
    "openai.resources.beta.assistants": (_SERVER, "create delete list retrieve update"),
    "openai.resources.beta.beta": ("namespace", ""),
    "openai.resources.beta.chatkit": (_SERVER, "cancel create delete list list_items retrieve"),
    "openai.resources.beta.realtime": ("realtime websocket sessions", "connect create"),
    "openai.resources.beta.responses": ("input items and token counting: free", "count list"),
    "openai.resources.beta.threads": (
        _SERVER,
        "cancel create create_and_poll create_and_run "
        "create_and_run_poll create_and_run_stream create_and_stream delete list poll retrieve "
        "stream submit_tool_outputs submit_tool_outputs_and_poll submit_tool_outputs_stream "
        "update",
    ),
    "openai.resources.chat.chat": ("namespace", ""),
    "openai.resources.chat.completions.messages": (_STORED, "list"),
    "openai.resources.containers": (_FILES, "create delete list retrieve"),
    "openai.resources.content_provenance_checks": ("provenance check of a file", "create"),
    "openai.resources.conversations": (_STORED, "create delete list retrieve update"),
    "openai.resources.evals": (_SERVER, "cancel create delete list retrieve update"),
    "openai.resources.files": (
        _FILES,
        "content create delete list retrieve retrieve_content wait_for_processing",
    ),
    "openai.resources.fine_tuning": (
        _SERVER,
        "cancel create delete list list_events pause resume retrieve run validate",
    ),
    "openai.resources.live": (
        "realtime websocket sessions",
        "accept connect create download_recording fork hangup refer reject",
    ),
    "openai.resources.models": (_STORED, "delete list retrieve"),
    "openai.resources.moderations": ("moderation is free", "create"),
    "openai.resources.realtime": (
        "realtime websocket sessions",
        "accept connect create hangup refer reject",
    ),
    "openai.resources.responses.input_items": (_STORED, "list"),
    "openai.resources.responses.input_tokens": ("token counting is free", "count"),
    "openai.resources.safety": (_STORED, "retrieve"),
    "openai.resources.skills": (_STORED, "create delete list retrieve update"),
    "openai.resources.uploads": (_FILES, "cancel complete create upload_file_chunked"),
    "openai.resources.vector_stores": (
        _FILES,
        "cancel content create create_and_poll delete "
        "list list_files poll retrieve search update upload upload_and_poll",
    ),
    "openai.resources.webhooks": (
        _ADMIN,
        "create delete list retrieve rotate_secret test unwrap update verify_signature",
    ),
}


def test_a_new_sdk_request_method_cannot_open_a_silent_gap() -> None:
    gaps = surface_gaps("openai", GENERATION, OUT_OF_SCOPE)
    assert gaps == [], (
        "the installed openai SDK has resource methods agentguard does not account for; "
        "cover them in agentguard.instrument (COVERED_ENDPOINTS) or list them here with a "
        "reason:\n" + "\n".join(gaps)
    )


def test_the_gap_check_reports_a_method_it_has_never_seen() -> None:
    trimmed = {k: dict(v) for k, v in GENERATION.items()}
    del trimmed["openai.resources.chat.completions.completions.Completions"]["parse"]
    out = {k: v for k, v in OUT_OF_SCOPE.items() if k != "openai.resources.images"}
    gaps = surface_gaps("openai", trimmed, out)
    assert any(g.endswith("Completions.parse: new method on a generation resource") for g in gaps)
    assert any(g.startswith("openai.resources.images.Images ") for g in gaps)


def _each_charged_method(client: openai.OpenAI) -> dict[str, Any]:
    class Answer(BaseModel):
        answer: str

    def stream_chat() -> None:
        with client.chat.completions.stream(model=MODEL, messages=MESSAGES) as s:
            s.get_final_completion()

    def stream_responses() -> None:
        with client.responses.stream(model=MODEL, input="hi") as s:
            s.get_final_response()

    return {
        "chat.completions.create": lambda: chat(client),
        "chat.completions.parse": lambda: client.chat.completions.parse(
            model=MODEL, messages=MESSAGES, response_format=Answer
        ),
        "chat.completions.stream": stream_chat,
        "responses.create": lambda: client.responses.create(model=MODEL, input="hi"),
        "responses.stream": stream_responses,
        "beta.responses.create": lambda: client.beta.responses.create(model=MODEL, input="hi"),
        "embeddings.create": lambda: client.embeddings.create(model=MODEL, input="hi"),
    }


@pytest.mark.parametrize(
    "method",
    [
        "chat.completions.create",
        "chat.completions.parse",
        "chat.completions.stream",
        "responses.create",
        "responses.stream",
        "beta.responses.create",
        "embeddings.create",
    ],
)
def test_each_charged_method_is_refused_outside_a_pool_and_charged_inside(
    provider: Provider, method: str
) -> None:
    client = provider.openai()
    call = _each_charged_method(client)[method]
    with pytest.raises(ag.NoActivePool):
        call()
    assert provider.sent == 0
    with ag.BudgetPool(name="run") as pool:
        call()
    assert provider.sent == 1
    assert pool.spent["llm_calls"] == 1
    assert pool.reserved == {}
