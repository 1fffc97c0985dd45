"""The argument guard inside @ag.tool_call: all problems at once, bounded correction rounds."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Annotated, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, TypeAdapter

import agentguard as ag
from agentguard import _config, budget, telemetry
from agentguard import validators as v
from agentguard._argcheck import compile_arguments

from . import otel

USERS = {"u_123": {"id": "u_123", "name": "Ann"}, "u_456": {"id": "u_456", "name": "Bo"}}
LOOKUPS: list[str] = []


def find_user(uid: str) -> dict[str, str] | None:
    LOOKUPS.append(uid)
    return USERS.get(uid)


class FixedClock(_config.Clock):
    def now(self) -> datetime:
        return datetime(2026, 1, 5, 12, tzinfo=timezone.utc)


@pytest.fixture(autouse=True)
def _today() -> Any:
    restore = _config._set_clock(FixedClock())
    LOOKUPS.clear()
    yield
    restore()


@ag.tool_call
def lookup_order(query: str) -> dict[str, Any]:
    return {"order_ref": "ORD-2026-0042", "item": "blue sweater", "total": "125.50"}


BODY_RUNS: list[dict[str, Any]] = []


@ag.tool_call(route="support.escalate", max_corrections=2)
def escalate_to_human(
    user_id: Annotated[str, v.Resolves(find_user, what="user id")],
    email: Annotated[str, v.Email()],
    amount: Annotated[Decimal, v.Amount(min=0, max=10_000)],
    due: Annotated[date, v.DateRange(not_before="today", within_days=365)],
    order_ref: Annotated[str, v.Verbatim(from_tool="lookup_order")],
    reason: Annotated[str, v.NotPlaceholder()],
) -> str:
    BODY_RUNS.append({"user": v.resolved(user_id), "email": email, "amount": amount, "due": due})
    return "escalated"


BAD = {
    "user_id": "the user mentioned in the conversation",
    "email": "his email",
    "amount": "the same amount as last time",
    "due": "3024-01-05",
    "order_ref": "the order for the blue sweater",
    "reason": "TBD",
}
GOOD = {
    "user_id": "u_123",
    "email": "Ann@Example.org",
    "amount": "125.50",
    "due": "2026-02-01",
    "order_ref": "ORD-2026-0042",
    "reason": "Customer was charged twice",
}


def test_catalog_arguments_are_all_rejected_at_once_before_the_body() -> None:
    BODY_RUNS.clear()
    with ag.BudgetPool(tool_calls=10) as pool:
        lookup_order("sweater")
        with pytest.raises(ag.ToolArgumentError) as info:
            escalate_to_human(**BAD)
        assert pool.spent["tool_calls"] == 1  # the rejected call was not charged
    err = info.value
    assert [p.argument for p in err.problems] == list(BAD)
    assert err.rounds_left == 1
    assert BODY_RUNS == []
    assert LOOKUPS == []  # a description is never looked up
    message = err.model_message
    for name, value in BAD.items():
        assert f"`{name}`" in message
        assert repr(value) in message
    assert "1 correction round(s) remain" in message
    assert "ORD-2026-0042" in message  # the candidate the model could have meant


def test_good_arguments_are_converted_and_the_record_is_handed_to_the_body() -> None:
    BODY_RUNS.clear()
    with ag.BudgetPool(tool_calls=10) as pool:
        lookup_order("sweater")
        assert escalate_to_human(**GOOD) == "escalated"
        assert pool.spent["tool_calls"] == 2
    (run,) = BODY_RUNS
    assert run == {
        "user": USERS["u_123"],
        "email": "Ann@example.org",
        "amount": Decimal("125.50"),
        "due": date(2026, 2, 1),
    }


def test_positional_arguments_are_validated_and_converted_too() -> None:
    BODY_RUNS.clear()
    with ag.BudgetPool():
        lookup_order("sweater")
        escalate_to_human(*GOOD.values())
        with pytest.raises(ag.ToolArgumentError) as info:
            escalate_to_human("u_123", "his email", *list(GOOD.values())[2:])
    assert BODY_RUNS[0]["amount"] == Decimal("125.50")
    assert [p.argument for p in info.value.problems] == ["email"]


def test_correction_rounds_are_bounded_then_the_run_stops(
    captured_alerts: list[ag.Alert],
) -> None:
    stops: list[tuple[Any, ...]] = []

    def listener(*args: Any) -> None:
        stops.append(args)

    budget._stop_listeners.append(listener)
    try:
        with ag.BudgetPool(tool_calls=10, name="support-run") as pool:
            lookup_order("sweater")
            lefts = []
            for _ in range(2):
                with pytest.raises(ag.ToolArgumentError) as info:
                    escalate_to_human(**BAD)
                lefts.append(info.value.rounds_left)
            assert lefts == [1, 0]
            assert "last correction round" in info.value.model_message
            with pytest.raises(ag.CorrectionsExhausted) as exhausted:
                escalate_to_human(**BAD)
            assert not isinstance(exhausted.value, ag.ToolArgumentError)
            assert exhausted.value.rounds == 3
            assert exhausted.value.last.problems[0].argument == "user_id"
            assert pool.stopped
            stop = pool.stop_error
            assert stop is not None and stop.dimension == "corrections"
            assert stop.__cause__ is exhausted.value
            with pytest.raises(ag.BudgetExceeded, match="stopped since an earlier refusal"):
                lookup_order("anything")  # every later charge is refused
            with pytest.raises(ag.BudgetExceeded):
                escalate_to_human(**GOOD)  # even a corrected call
    finally:
        budget._stop_listeners.remove(listener)
    assert [a.kind for a in captured_alerts] == ["corrections.exhausted"]
    assert captured_alerts[0].guard_id == "args:escalate_to_human"
    assert len(stops) == 1 and stops[0][1] is stop


def test_correction_rounds_are_counted_per_tool_per_run() -> None:
    @ag.tool_call(max_corrections=1)
    def notify(email: Annotated[str, v.Email()]) -> None:
        return None

    @ag.tool_call(max_corrections=1)
    def invite(email: Annotated[str, v.Email()]) -> None:
        return None

    with ag.BudgetPool():
        with pytest.raises(ag.ToolArgumentError):
            notify("his email")
        with pytest.raises(ag.ToolArgumentError):
            invite("her email")  # another tool has its own rounds
        notify("ann@example.org")  # a good call does not reset the run's count
        with ag.BudgetPool(name="sub-agent"):  # a sub-agent shares the run's count
            with pytest.raises(ag.CorrectionsExhausted):
                notify("his email")
    with ag.BudgetPool():  # a new run starts over
        with pytest.raises(ag.ToolArgumentError):
            notify("his email")


def test_zero_max_corrections_means_the_first_rejection_is_final() -> None:
    @ag.tool_call(max_corrections=0)
    def strict(email: Annotated[str, v.Email()]) -> None:
        return None

    with ag.BudgetPool(), pytest.raises(ag.CorrectionsExhausted):
        strict("nope")


def test_default_max_corrections_is_three() -> None:
    @ag.tool_call
    def send(email: Annotated[str, v.Email()]) -> None:
        return None

    with ag.BudgetPool():
        lefts = []
        for _ in range(3):
            with pytest.raises(ag.ToolArgumentError) as info:
                send("nope")
            lefts.append(info.value.rounds_left)
        with pytest.raises(ag.CorrectionsExhausted):
            send("nope")
    assert lefts == [2, 1, 0]


def test_a_correction_round_leaves_a_ledger_row_and_a_metric_without_clear_values() -> None:
    _, reader = otel.install()
    before = otel.counter_total(
        reader, telemetry.METRIC.CORRECTIONS, **{"gen_ai.tool.name": "escalate_to_human"}
    )
    with ag.BudgetPool() as pool:
        lookup_order("x")
        with pytest.raises(ag.ToolArgumentError):
            escalate_to_human(**BAD)
    rows = [r for r in pool.ledger if r.kind == "correction"]
    assert len(rows) == 1
    row = rows[0]
    assert row.outcome == "rejected"
    assert row.detail is not None
    assert row.detail["guard_id"] == "args:escalate_to_human"
    assert row.detail["arguments"] == list(BAD)
    assert row.route == "support.escalate"
    text = repr(row)
    for value in BAD.values():
        if len(value) > 3:
            assert value not in text
    after = otel.counter_total(
        reader,
        telemetry.METRIC.CORRECTIONS,
        **{"gen_ai.tool.name": "escalate_to_human", "agentguard.outcome": "rejected"},
    )
    assert after - before == 1


def test_missing_and_mistyped_arguments_are_problems_for_the_model() -> None:
    @ag.tool_call
    def refund(
        order_id: Annotated[int, v.Resolves(lambda i: {"id": i} if i == 7 else None)],
        amount: Annotated[Decimal, v.Amount(min=0)],
    ) -> str:
        return "ok"

    with ag.BudgetPool():
        with pytest.raises(ag.ToolArgumentError) as info:
            refund(order_id="seven")  # type: ignore[call-arg]
        assert refund(order_id="7", amount="1") == "ok"  # lax JSON typing: "7" -> 7
    problems = {p.argument: p for p in info.value.problems}
    assert "valid integer" in problems["order_id"].reason
    assert problems["order_id"].expected == "an integer"
    assert problems["amount"].reason == "it is required"
    assert "nothing" in info.value.model_message


def test_a_tool_without_validators_pays_nothing() -> None:
    def plain(a: int, b: str = "x") -> None:
        return None

    assert compile_arguments(plain, tool="plain", route="plain", max_corrections=None) is None
    assert compile_arguments(plain, tool="plain", route="plain", max_corrections=5) is None


def test_bad_max_corrections_is_refused_at_decoration() -> None:
    def tool(email: Annotated[str, v.Email()]) -> None:
        return None

    for bad in (-1, 1.5, True):
        with pytest.raises(ag.ConfigurationError, match="max_corrections"):
            ag.tool_call(max_corrections=bad)(tool)  # type: ignore[call-overload]


def test_unresolvable_annotations_that_name_validators_are_refused() -> None:
    def tool(email: Annotated[NotDefinedYet, v.Email()]) -> None:  # type: ignore[name-defined]  # noqa: F821
        return None

    tool.__annotations__["email"] = "Annotated[NotDefinedYet, v.Email()]"
    with pytest.raises(ag.ConfigurationError, match="could not be resolved"):
        ag.tool_call(tool)

    def other(x: Any) -> None:
        return None

    other.__annotations__["x"] = "NotDefinedYet"
    assert compile_arguments(other, tool="o", route="o", max_corrections=None) is None


# -- lookups -------------------------------------------------------------------------------------


def test_a_failing_lookup_is_not_a_correction_round() -> None:
    def broken(uid: str) -> Any:
        raise TimeoutError("crm timed out")

    @ag.tool_call(max_corrections=0)
    def close_ticket(user_id: Annotated[str, v.Resolves(broken, what="user id")]) -> None:
        return None

    with ag.BudgetPool() as pool:
        for _ in range(3):
            with pytest.raises(ag.LookupFailed) as info:
                close_ticket("u_123")
        assert not pool.stopped
        assert pool.spent["tool_calls"] == 0
    assert isinstance(info.value.__cause__, TimeoutError)
    assert info.value.tool == "close_ticket" and info.value.argument == "user_id"


async def test_async_tool_runs_its_async_lookups_concurrently() -> None:
    started: dict[str, asyncio.Event] = {"a": asyncio.Event(), "b": asyncio.Event()}

    async def lookup(uid: str) -> Any:
        started[uid].set()
        other = "b" if uid == "a" else "a"
        await started[other].wait()  # deadlocks unless both lookups run at once
        return {"id": uid}

    @ag.tool_call
    async def merge(
        left: Annotated[str, v.Resolves(lookup)], right: Annotated[str, v.Resolves(lookup)]
    ) -> tuple[Any, Any]:
        return v.resolved(left), v.resolved(right)

    async with ag.BudgetPool():
        result = await asyncio.wait_for(merge("a", "b"), timeout=10)
    assert result == ({"id": "a"}, {"id": "b"})


async def test_async_tool_reports_missing_records_and_lookup_failures() -> None:
    async def lookup(uid: str) -> Any:
        if uid == "boom":
            raise ConnectionError("down")
        return USERS.get(uid)

    @ag.tool_call
    async def pair(
        a: Annotated[str, v.Resolves(lookup)], b: Annotated[str, v.Resolves(lookup)]
    ) -> None:
        return None

    async with ag.BudgetPool():
        with pytest.raises(ag.ToolArgumentError) as info:
            await pair("u_000", "u_999")
        with pytest.raises(ag.LookupFailed):
            await pair("u_123", "boom")
        await pair("u_123", "u_456")
    assert [p.argument for p in info.value.problems] == ["a", "b"]


def test_sync_tool_with_an_async_lookup_runs_it_when_no_loop_is_running() -> None:
    async def afind(uid: str) -> Any:
        return USERS.get(uid)

    @ag.tool_call
    def greet(user_id: Annotated[str, v.Resolves(afind)]) -> str:
        return f"hi {v.resolved(user_id)['name']}"

    with ag.BudgetPool():
        assert greet("u_456") == "hi Bo"


async def test_sync_tool_with_an_async_lookup_inside_a_loop_is_a_clear_error() -> None:
    async def afind(uid: str) -> Any:
        return USERS.get(uid)

    @ag.tool_call
    def greet(user_id: Annotated[str, v.Resolves(afind)]) -> str:
        return "hi"

    async with ag.BudgetPool():
        with pytest.raises(ag.LookupFailed, match="make the tool async"):
            greet("u_456")


def test_nested_tools_keep_their_own_resolved_records() -> None:
    @ag.tool_call
    def inner(user_id: Annotated[str, v.Resolves(find_user)]) -> str:
        return str(v.resolved(user_id)["name"])

    @ag.tool_call
    def outer(user_id: Annotated[str, v.Resolves(find_user)]) -> tuple[str, str]:
        other = inner("u_456")
        return other, v.resolved(user_id)["name"]

    with ag.BudgetPool():
        assert outer("u_123") == ("Bo", "Ann")


# -- argument models -----------------------------------------------------------------------------


class TicketArgs(BaseModel):
    user_id: Annotated[str, v.Resolves(find_user, what="user id")]
    email: Annotated[str, v.Email()]


def test_a_pydantic_argument_model_is_validated_with_dotted_argument_names() -> None:
    @ag.tool_call
    def open_ticket(args: TicketArgs) -> str:
        return f"{v.resolved(args.user_id)['name']} <{args.email}>"

    with ag.BudgetPool():
        assert open_ticket({"user_id": "u_123", "email": "ann@example.org"}) == (  # type: ignore[arg-type]
            "Ann <ann@example.org>"
        )
        with pytest.raises(ag.ToolArgumentError) as info:
            open_ticket({"user_id": "u_000", "email": "his email"})  # type: ignore[arg-type]
    assert {p.argument for p in info.value.problems} == {"args.user_id", "args.email"}


# -- bypass integration --------------------------------------------------------------------------


def test_an_active_bypass_lets_the_argument_through_and_is_recorded() -> None:
    ag.bypass(
        "args:escalate_to_human.email",
        owner="ops",
        reason="legacy addresses during the CRM migration",
        expires="2026-01-20",
    )
    BODY_RUNS.clear()
    with ag.BudgetPool() as pool:
        lookup_order("x")
        assert escalate_to_human(**{**GOOD, "email": "legacy-address"}) == "escalated"
        with pytest.raises(ag.ToolArgumentError) as info:
            escalate_to_human(**{**GOOD, "email": "legacy", "user_id": "nobody"})
    assert BODY_RUNS[0]["email"] == "legacy-address"  # passed raw
    assert BODY_RUNS[0]["amount"] == Decimal("125.50")  # the others still converted
    assert [p.argument for p in info.value.problems] == ["user_id"]
    rows = [r for r in pool.ledger if r.kind == "bypass"]
    assert len(rows) == 2
    assert rows[0].detail is not None
    assert rows[0].detail["guard_id"] == "args:escalate_to_human.email"
    assert rows[0].detail["would_have"].startswith("would have rejected email=<str")
    assert "legacy-address" not in repr(rows[0])
    assert not [r for r in pool.ledger if r.kind == "correction" and r.outcome != "rejected"]


def test_a_tool_level_bypass_covers_every_argument() -> None:
    @ag.tool_call
    def notify(
        user_id: Annotated[str, v.Resolves(find_user)], email: Annotated[str, v.Email()]
    ) -> str:
        with pytest.raises(ag.ConfigurationError, match="no record was resolved"):
            v.resolved(user_id)  # a bypassed id resolved to nothing: there is no record
        return email

    ag.bypass("args:notify", owner="ops", reason="incident 4411", expires="2026-01-10")
    with ag.BudgetPool():
        assert notify("nobody", "x") == "x"


def test_validated_arguments_declare_their_guard_ids() -> None:
    from agentguard._guards import declared_guards

    declared = declared_guards()
    assert "args:escalate_to_human" in declared
    assert "args:escalate_to_human.order_ref" in declared


# -- concurrency ---------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_parallel_rejections_count_every_round_exactly_once() -> None:
    @ag.tool_call(max_corrections=40)
    def send(email: Annotated[str, v.Email()]) -> None:
        return None

    outcomes: list[str] = []
    lock = threading.Lock()
    with ag.BudgetPool() as pool:

        def one(_: int) -> None:
            try:
                send("not an email")
            except ag.CorrectionsExhausted:
                kind = "exhausted"
            except ag.ToolArgumentError:
                kind = "rejected"
            with lock:
                outcomes.append(kind)

        with ThreadPoolExecutor(8) as ex:
            list(ex.map(pool.bind(one), range(200)))
    assert outcomes.count("rejected") == 40
    assert outcomes.count("exhausted") == 160
    assert pool._corrections["send"] == 200


# -- messages for plain-Python agents ------------------------------------------------------------


def _rejection() -> ag.ToolArgumentError:
    with ag.BudgetPool():
        lookup_order("x")
        try:
            escalate_to_human(**BAD)
        except ag.ToolArgumentError as err:
            return err
    raise AssertionError("not rejected")


def test_tool_error_message_matches_the_openai_tool_message_type() -> None:
    from openai.types.chat import ChatCompletionToolMessageParam

    err = _rejection()
    msg = ag.tool_error_message(err, tool_call_id="call_1", style="openai")
    TypeAdapter(ChatCompletionToolMessageParam).validate_python(msg)
    assert msg["content"] == err.model_message


def test_tool_error_message_matches_the_anthropic_tool_result_type() -> None:
    from anthropic.types import ToolResultBlockParam

    err = _rejection()
    block = ag.tool_error_message(err, tool_call_id="toolu_1", style="anthropic")
    TypeAdapter(ToolResultBlockParam).validate_python(block)
    assert block["is_error"] is True
    responses = ag.tool_error_message(err, tool_call_id="c1", style="openai-responses")
    assert responses == {
        "type": "function_call_output",
        "call_id": "c1",
        "output": err.model_message,
    }


def test_tool_error_message_refuses_what_is_not_for_the_model() -> None:
    err = _rejection()
    exhausted = ag.CorrectionsExhausted(tool="t", rounds=4, max_corrections=3, last=err)
    with pytest.raises(ag.ConfigurationError, match="hard failure"):
        ag.tool_error_message(exhausted, tool_call_id="x")  # type: ignore[arg-type]
    with pytest.raises(ag.ConfigurationError, match="style"):
        ag.tool_error_message(err, tool_call_id="x", style="cohere")  # type: ignore[arg-type]


def test_tool_schema_carries_validator_descriptions_in_provider_shapes() -> None:
    from anthropic.types import ToolParam
    from openai.types.chat import ChatCompletionToolParam

    openai_tool = ag.tool_schema(escalate_to_human, style="openai")
    TypeAdapter(ChatCompletionToolParam).validate_python(openai_tool)
    params = openai_tool["function"]["parameters"]
    assert openai_tool["function"]["name"] == "escalate_to_human"
    assert set(params["required"]) == set(BAD)
    assert "existing user id" in params["properties"]["user_id"]["description"]
    assert "`lookup_order`" in params["properties"]["order_ref"]["description"]
    assert params["properties"]["email"]["format"] == "email"
    anthropic_tool = ag.tool_schema(escalate_to_human, style="anthropic")
    TypeAdapter(ToolParam).validate_python(anthropic_tool)
    assert anthropic_tool["input_schema"] == params


# -- fuzzing the whole guard ---------------------------------------------------------------------

JSONISH = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(list(BAD.values()) + list(GOOD.values())),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@pytest.mark.timeout(120)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(args=st.fixed_dictionaries({}, optional={name: JSONISH for name in BAD}))
def test_fuzz_the_guard_only_rejects_with_tool_argument_errors(args: dict[str, Any]) -> None:
    with ag.BudgetPool():
        lookup_order("x")
        try:
            escalate_to_human(**args)
        except ag.ToolArgumentError as err:
            assert err.problems
            assert err.model_message


def test_a_method_tool_validates_the_right_positional_arguments() -> None:
    class Mailer:
        @ag.tool_call
        def send(self, to: Annotated[str, v.Email()], copies: int = 1) -> str:
            return f"{to} x{copies}"

    with ag.BudgetPool():
        assert Mailer().send("Ann@Example.org", 2) == "Ann@example.org x2"
        with pytest.raises(ag.ToolArgumentError) as info:
            Mailer().send("his email")
    assert [p.argument for p in info.value.problems] == ["to"]
