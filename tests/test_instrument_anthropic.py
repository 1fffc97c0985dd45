"""ag.instrument() on the real anthropic SDK (sync and async clients) against an offline server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from opentelemetry import trace

import agentguard as ag
from agentguard import calls
from tests import otel
from tests.sdk_mock import USAGE_IN, USAGE_OUT, Provider, surface_gaps

MODEL = "claude-haiku-4-5"
MESSAGES = [{"role": "user", "content": "Summarise the ticket."}]


@pytest.fixture(autouse=True)
def _instrumented() -> Iterator[None]:
    ag.instrument(anthropic=True)
    calls._warned_routes.clear()
    yield
    ag.uninstrument()


@pytest.fixture
def provider() -> Provider:
    return Provider()


def create(client: anthropic.Anthropic, max_tokens: int = 256, **kwargs: Any) -> Any:
    return client.messages.create(
        model=MODEL,
        max_tokens=max_tokens,
        messages=MESSAGES,
        **kwargs,  # type: ignore[arg-type]
    )


def test_raw_messages_create_outside_any_pool_is_refused_before_it_leaves(
    provider: Provider,
) -> None:
    with pytest.raises(ag.NoActivePool, match=r"anthropic\.messages"):
        create(provider.anthropic())
    assert provider.sent == 0


def test_messages_create_is_charged_and_settled_exactly(provider: Provider) -> None:
    client = provider.anthropic()
    with ag.BudgetPool(llm_calls=1, output_tokens=1000, name="run") as pool:
        message = create(client, max_tokens=700)
        assert message.content[0].text == "Hello there"
        with pytest.raises(ag.BudgetExceeded):
            create(client)
    assert provider.sent == 1
    assert pool.spent["input_tokens"] == USAGE_IN
    assert pool.spent["output_tokens"] == USAGE_OUT
    assert pool.reserved == {}
    assert pool.ledger[0].route == "anthropic.messages"


def test_max_tokens_is_what_is_reserved_while_in_flight(provider: Provider) -> None:
    held: list[dict[str, float]] = []
    answer = provider.answer

    def spy(request: Any) -> Any:
        held.append(pool.reserved)
        return answer(request)

    provider.answer = spy  # type: ignore[method-assign]
    with ag.BudgetPool(name="run") as pool:
        create(provider.anthropic(), max_tokens=4321)
    assert held[0]["output_tokens"] == 4321


def test_100_sequential_calls_on_a_pool_of_5_send_exactly_5(provider: Provider) -> None:
    client = provider.anthropic()
    with ag.BudgetPool(llm_calls=5, name="run") as pool:
        for _ in range(100):
            try:
                create(client)
            except ag.BudgetExceeded:
                pass
    assert provider.sent == 5
    assert pool.spent["llm_calls"] == 5


async def test_100_concurrent_async_calls_on_a_pool_of_5_send_exactly_5(
    provider: Provider,
) -> None:
    client = provider.async_anthropic()

    async def one() -> bool:
        try:
            await client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)  # type: ignore[arg-type]
        except ag.BudgetExceeded:
            return False
        return True

    async with ag.BudgetPool(llm_calls=5, name="run") as pool:
        results = await asyncio.gather(*(one() for _ in range(100)))
    assert sum(results) == 5
    assert provider.sent == 5
    assert pool.spent["output_tokens"] == 5 * USAGE_OUT
    assert pool.reserved == {}


def test_messages_stream_helper_settles_from_start_and_delta_events(provider: Provider) -> None:
    client = provider.anthropic()
    with ag.BudgetPool(name="run") as pool:
        with client.messages.stream(model=MODEL, max_tokens=300, messages=MESSAGES) as stream:  # type: ignore[arg-type]
            assert pool.reserved["output_tokens"] == 300
            text = "".join(stream.text_stream)
    assert text == "Hi"
    assert provider.sent == 1
    assert pool.spent["input_tokens"] == USAGE_IN
    assert pool.spent["output_tokens"] == USAGE_OUT
    assert pool.reserved == {}
    assert pool.ledger[0].flags == ()


def test_create_with_stream_true_settles_when_consumed(provider: Provider) -> None:
    client = provider.anthropic()
    with ag.BudgetPool(name="run") as pool:
        for _ in create(client, stream=True):
            pass
    assert pool.spent["output_tokens"] == USAGE_OUT
    assert pool.reserved == {}


def test_a_stream_cut_before_message_delta_is_charged_at_the_estimate(
    provider: Provider, agentguard_logs: pytest.LogCaptureFixture
) -> None:
    provider.message_stream_ends = False
    client = provider.anthropic()
    with ag.BudgetPool(name="run") as pool:
        for _ in create(client, max_tokens=500, stream=True):
            pass
    assert pool.spent["output_tokens"] == 500  # never free
    assert "usage_unknown" in pool.ledger[0].flags
    assert "stream of 'anthropic.messages'" in agentguard_logs.text


async def test_async_messages_stream_helper_is_charged_once_and_settled(
    provider: Provider,
) -> None:
    client = provider.async_anthropic()
    async with ag.BudgetPool(llm_calls=1, name="run") as pool:
        async with client.messages.stream(model=MODEL, max_tokens=300, messages=MESSAGES) as s:  # type: ignore[arg-type]
            async for _ in s.text_stream:
                pass
    assert provider.sent == 1
    assert pool.spent["output_tokens"] == USAGE_OUT
    assert pool.reserved == {}


def test_beta_messages_are_charged_too(provider: Provider) -> None:
    client = provider.anthropic()
    with ag.BudgetPool(name="run") as pool:
        client.beta.messages.create(model=MODEL, max_tokens=100, messages=MESSAGES)  # type: ignore[arg-type]
    assert pool.spent["llm_calls"] == 1
    assert pool.spent["output_tokens"] == USAGE_OUT


def test_count_tokens_is_free_and_passes_through(provider: Provider) -> None:
    client = provider.anthropic()
    count = client.messages.count_tokens(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
    assert count.input_tokens == USAGE_IN
    assert provider.sent == 1


def test_http_500_releases_the_reservation(provider: Provider) -> None:
    provider.always_fail = 500
    client = provider.anthropic()
    with ag.BudgetPool(output_tokens=1000, name="run") as pool:
        with pytest.raises(anthropic.InternalServerError):
            create(client, max_tokens=900)
        assert pool.reserved == {}
        assert pool.spent["output_tokens"] == 0
        provider.always_fail = None
        create(client, max_tokens=900)  # the tokens are usable again


def test_every_sdk_retry_is_charged_and_stops_at_the_limit(provider: Provider) -> None:
    provider.always_fail = 529
    client = provider.anthropic(max_retries=10)
    with ag.BudgetPool(llm_calls=4, name="run") as pool:
        with pytest.raises(ag.BudgetExceeded, match="llm_calls"):
            create(client)
    assert provider.sent == 4
    assert [r.outcome for r in pool.ledger] == ["retry", "retry", "retry", "refused", "error"]
    assert pool.reserved == {}


def test_no_double_charge_inside_llm_call(provider: Provider) -> None:
    client = provider.anthropic()

    @ag.llm_call(route="summarise")
    def summarise() -> str:
        return create(client).content[0].text  # type: ignore[no-any-return]

    with ag.BudgetPool(llm_calls=1, name="run") as pool:
        assert summarise() == "Hello there"
    assert provider.sent == 1
    assert pool.spent["llm_calls"] == 1
    assert pool.spent["input_tokens"] == USAGE_IN
    assert pool.ledger[0].route == "summarise"


def test_the_sdks_own_tracing_span_is_annotated_not_doubled(provider: Provider) -> None:
    exporter, _ = otel.install()
    exporter.clear()
    client = provider.anthropic()  # anthropic traces itself when a tracer provider is set
    with ag.BudgetPool(name="traced"):
        create(client)
    spans = exporter.get_finished_spans()
    genai = [s for s in spans if (s.attributes or {}).get("gen_ai.operation.name") == "chat"]
    assert len(genai) == 1
    attrs = dict(genai[0].attributes or {})
    assert attrs["agentguard.pool"] == "traced"
    assert attrs["gen_ai.usage.input_tokens"] == USAGE_IN  # set by the SDK itself
    assert attrs["agentguard.instrumented"] is True


def test_with_sdk_tracing_off_agentguard_starts_the_genai_span(provider: Provider) -> None:
    exporter, _ = otel.install()
    exporter.clear()
    client = provider.anthropic(open_telemetry=False)
    with ag.BudgetPool(name="traced"):
        create(client)
    (span,) = exporter.get_finished_spans()
    assert span.name == f"chat {MODEL}"
    assert span.kind == trace.SpanKind.CLIENT
    attrs = dict(span.attributes or {})
    assert attrs["gen_ai.provider.name"] == "anthropic"
    assert attrs["gen_ai.usage.output_tokens"] == USAGE_OUT


def test_uninstrument_restores_plain_sdk_behaviour(provider: Provider) -> None:
    ag.uninstrument(anthropic=True)
    create(provider.anthropic())  # no pool needed
    assert provider.sent == 1
    assert "anthropic" not in ag.instrumented()


def test_usage_warning_names_the_route_once(
    provider: Provider, agentguard_logs: pytest.LogCaptureFixture
) -> None:
    provider.message_stream_ends = False
    client = provider.anthropic()
    with ag.BudgetPool(name="run"):
        for _ in range(3):
            for _ in create(client, stream=True):
                pass
    warnings = [r for r in agentguard_logs.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1


# -- no silent gap ---------------------------------------------------------------------------

_STORED = "reads or manages a stored object; no model runs"
_ADMIN = "organisation and account administration; no model runs"
_SERVER = "server-side managed agents and sessions: billed by the service"
GENERATION: dict[str, dict[str, str]] = {
    "anthropic.resources.messages.messages.Messages": {
        "create": "charged",
        "parse": "charged",
        "stream": "charged",
        "count_tokens": "token counting is free",
    },
    "anthropic.resources.beta.messages.messages.Messages": {
        "create": "charged",
        "parse": "charged",
        "stream": "charged",
        "tool_runner": "charged: each model request it makes goes through create",
        "thread": "charged: sends nothing itself; each turn goes through create",
        "count_tokens": "token counting is free",
    },
}
OUT_OF_SCOPE: dict[str, tuple[str, str]] = {
    "anthropic.resources.beta.agents": (_SERVER, "archive create list retrieve update"),
    "anthropic.resources.beta.beta": ("namespace", ""),
    "anthropic.resources.beta.deployment_runs": (_SERVER, "list retrieve"),
    "anthropic.resources.beta.deployments": (
        _SERVER,
        "archive create list pause retrieve run unpause update",
    ),
    "anthropic.resources.beta.dreams": (_SERVER, "archive cancel create list retrieve"),
    "anthropic.resources.beta.environments": (
        _SERVER,
        "ack archive create delete heartbeat list poll poller retrieve stats stop update worker",
    ),
    "anthropic.resources.beta.files": (_STORED, "delete download list retrieve_metadata upload"),
    "anthropic.resources.beta.memory_stores": (
        _STORED,
        "archive create delete list redact retrieve update",
    ),
    "anthropic.resources.beta.messages.batches": (
        "deferred batches: charged by the service later",
        "cancel create delete list results retrieve",
    ),
    "anthropic.resources.beta.models": (_STORED, "list retrieve"),
    "anthropic.resources.beta.organization": (
        _ADMIN,
        "add approve archive create delete deny "
        "download list regenerate_signing_secret remove retrieve set sign_out test update "
        "validate validate_archive validate_repository",
    ),
    "anthropic.resources.beta.sessions": (
        _SERVER,
        "add archive create delete list retrieve send stream tool_runner update",
    ),
    "anthropic.resources.beta.skills": (_STORED, "create delete download list retrieve"),
    "anthropic.resources.beta.tunnels": (
        _ADMIN,
        "archive create list retrieve reveal_token rotate_token",
    ),
    "anthropic.resources.beta.user_profiles": (
        _ADMIN,
        "create create_enrollment_url delete list retrieve update",
    ),
    "anthropic.resources.beta.vaults": (
        _ADMIN,
        "archive create delete list mcp_oauth_validate retrieve update",
    ),
    "anthropic.resources.beta.webhooks": (_ADMIN, "parse_unverified unwrap"),
    "anthropic.resources.files": (_STORED, "delete download list retrieve_metadata upload"),
    "anthropic.resources.messages.batches": (
        "deferred batches: charged by the service later",
        "cancel create delete list results retrieve",
    ),
    "anthropic.resources.models": (_STORED, "list retrieve"),
    "anthropic.resources.organization": (
        _ADMIN,
        "add approve archive create delete deny list remove retrieve update validate",
    ),
    "anthropic.resources.skills": (_STORED, "create delete list retrieve"),
    "anthropic.resources.user_profiles": (_ADMIN, "create delete list retrieve update"),
}


def test_a_new_sdk_request_method_cannot_open_a_silent_gap() -> None:
    gaps = surface_gaps("anthropic", GENERATION, OUT_OF_SCOPE)
    assert gaps == [], (
        "the installed anthropic SDK has resource methods agentguard does not account for; "
        "cover them in agentguard.instrument (COVERED_ENDPOINTS) or list them here with a "
        "reason:\n" + "\n".join(gaps)
    )
