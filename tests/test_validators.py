"""The semantic validators on their own, inside pydantic models, and under fuzzing."""

from __future__ import annotations

import asyncio
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Annotated, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, TypeAdapter, ValidationError

import agentguard as ag
from agentguard import _config
from agentguard import validators as v

from .realistic_values import ALL, EMAILS, PLACEHOLDERS

USERS = {"u_123": {"id": "u_123", "name": "Ann"}, "u_456": {"id": "u_456", "name": "Bo"}}


def find_user(uid: Any) -> dict[str, str] | None:
    return USERS.get(uid) if isinstance(uid, str) else None


class FixedClock(_config.Clock):
    def __init__(self, now: datetime) -> None:
        self._now = now

    def now(self) -> datetime:
        return self._now


@pytest.fixture
def today_is_2026_01_05() -> Any:
    restore = _config._set_clock(FixedClock(datetime(2026, 1, 5, 12, tzinfo=timezone.utc)))
    yield date(2026, 1, 5)
    restore()


def rejects(validator: v.Validator, value: Any) -> ag.ToolArgumentError:
    with pytest.raises(ag.ToolArgumentError) as info:
        validator.validate(value, argument="arg")
    return info.value


# -- NotPlaceholder ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", PLACEHOLDERS)
def test_placeholders_and_references_are_not_values(value: str) -> None:
    err = rejects(v.NotPlaceholder(), value)
    problem = err.problems[0]
    assert problem.argument == "arg"
    assert problem.received == value
    assert problem.reason.startswith("it ")
    assert problem.expected.startswith("the actual value")


def test_not_placeholder_false_positive_rate_on_real_values_is_as_documented() -> None:
    """docs/validation.md quotes this figure: keep them in step."""
    flagged = [x for x in ALL if v.placeholder_reason(x) is not None]
    assert len(ALL) >= 200
    assert flagged == ["Customer mentioned a refund", "The user gave a wrong address before"]
    rate = len(flagged) / len(ALL)
    assert round(rate * 100, 1) == 0.8
    # the same figure is in the docs
    from pathlib import Path

    docs = (Path(__file__).parents[1] / "docs" / "validation.md").read_text(encoding="utf-8")
    assert f"{len(flagged)} of {len(ALL)}" in docs


def test_argument_name_sent_as_its_own_value_is_a_placeholder() -> None:
    assert v.placeholder_reason("user_id", "user_id") is not None
    assert v.placeholder_reason("user id", "user_id") is not None
    assert v.placeholder_reason("u_123", "user_id") is None


def test_not_placeholder_passes_non_text_and_extra_words() -> None:
    assert v.NotPlaceholder().validate(42) == 42
    rejects(v.NotPlaceholder(extra=["pending"]), "Pending")


def test_free_text_that_merely_contains_a_reference_is_accepted() -> None:
    text = "Customer says the refund should be the same amount as last time, 125.50 EUR"
    assert v.NotPlaceholder().validate(text) == text


# -- Resolves ------------------------------------------------------------------------------------


def test_resolves_accepts_a_real_id_and_hands_over_the_record() -> None:
    assert v.Resolves(find_user, what="user id").validate("u_123") == "u_123"
    assert v.resolved("u_123") == USERS["u_123"]


def test_resolves_rejects_an_unknown_id_and_a_description_without_a_lookup() -> None:
    calls: list[Any] = []

    def lookup(uid: Any) -> Any:
        calls.append(uid)
        return None

    err = rejects(v.Resolves(lookup, what="user id"), "u_999")
    assert "matches no existing user id" in err.problems[0].reason
    err = rejects(v.Resolves(lookup, what="user id"), "the user mentioned in the conversation")
    assert "description" in err.problems[0].reason
    assert calls == ["u_999"]  # the description was never looked up


def test_a_lookup_that_raises_is_an_infrastructure_error_with_its_cause() -> None:
    def broken(uid: str) -> Any:
        raise ConnectionError("crm down")

    with pytest.raises(ag.LookupFailed) as info:
        v.Resolves(broken, what="user id").validate("u_123")
    assert isinstance(info.value.__cause__, ConnectionError)
    assert "infrastructure" in str(info.value)
    assert not isinstance(info.value, ag.ToolArgumentError)


def test_a_lookup_raising_keyerror_gets_a_hint_to_return_none() -> None:
    with pytest.raises(ag.LookupFailed, match="return None instead"):
        v.Resolves(lambda uid: USERS[uid]).validate("nobody")


def test_async_lookup_runs_from_sync_code_without_a_loop() -> None:
    async def afind(uid: str) -> Any:
        await asyncio.sleep(0)
        return USERS.get(uid)

    assert v.Resolves(afind).validate("u_456") == "u_456"
    assert v.resolved("u_456")["name"] == "Bo"
    rejects(v.Resolves(afind), "u_000")


async def test_async_lookup_inside_a_running_loop_needs_avalidate() -> None:
    async def afind(uid: str) -> Any:
        return USERS.get(uid)

    with pytest.raises(ag.LookupFailed, match="running event loop"):
        v.Resolves(afind).validate("u_123")
    assert await v.Resolves(afind).avalidate("u_123") == "u_123"
    with pytest.raises(ag.ToolArgumentError):
        await v.Resolves(afind).avalidate("u_000")


def test_resolved_without_a_record_is_a_clear_error() -> None:
    with pytest.raises(ag.ConfigurationError, match="no record was resolved"):
        v.resolved("never-looked-up")


def test_resolves_requires_a_callable() -> None:
    with pytest.raises(ag.ConfigurationError):
        v.Resolves("find_user")  # type: ignore[arg-type]


# -- Email ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [e for e in EMAILS if not e.startswith(("his.", "the.", "tbd@", "unknown."))],
)
def test_real_email_addresses_are_accepted(value: str) -> None:
    assert "@" in v.Email().validate(value)


@pytest.mark.parametrize(
    "value", ["his email", "ann at example dot org", "a@b", "ann@", "@example.org",
              "Ann <ann@example.org>", "ann@@example.org", "ann@exa mple.org", "", 42]
)  # fmt: skip
def test_not_email_addresses_are_rejected(value: Any) -> None:
    err = rejects(v.Email(), value)
    assert err.problems[0].expected.startswith("a complete email address")


def test_email_is_normalized() -> None:
    assert v.Email().validate("Ann@Example.ORG") == "Ann@example.org"
    assert v.Email(normalize=False).validate("Ann@Example.ORG") == "Ann@Example.ORG"


# -- Amount --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("125.50", Decimal("125.50")), (125, Decimal(125)), (0.1, Decimal("0.1")),
     ("1,250.00", Decimal("1250.00")), ("$99.99", Decimal("99.99")), (" 7 ", Decimal(7)),
     (Decimal("3.25"), Decimal("3.25")), ("-0", Decimal("0")), (".5", Decimal("0.5"))],
)  # fmt: skip
def test_amounts_are_parsed_exactly(value: Any, expected: Decimal) -> None:
    assert v.Amount().validate(value) == expected


@pytest.mark.parametrize(
    "value",
    ["the same amount as last time", "$1,2", "1,23.4", "NaN", "nan", "inf", "-Infinity",
     float("nan"), float("inf"), Decimal("NaN"), Decimal("-Infinity"), True, "1e5", "1_000",
     "12 euros", "", "about 50", [1], None],
)  # fmt: skip
def test_non_amounts_are_rejected(value: Any) -> None:
    rejects(v.Amount(), value)


def test_amount_bounds_and_places_are_never_rounded_away() -> None:
    amount = v.Amount(min=0, max=10_000, places=2)
    assert amount.validate("10000") == Decimal(10000)
    assert "below the minimum" in rejects(amount, "-0.01").problems[0].reason
    assert "above the maximum" in rejects(amount, 10_000.01).problems[0].reason
    assert "decimal places" in rejects(amount, "1.005").problems[0].reason
    assert "between 0 and 10000" in amount.expected


def test_amount_bad_configuration_is_refused() -> None:
    with pytest.raises(ag.ConfigurationError):
        v.Amount(min=10, max=1)
    with pytest.raises(ag.ConfigurationError):
        v.Amount(places=-1)
    with pytest.raises(ag.ConfigurationError):
        v.Amount(min=float("nan"))


def test_amount_converts_to_the_annotated_type() -> None:
    ta_float = TypeAdapter(Annotated[float, v.Amount()])
    ta_int = TypeAdapter(Annotated[int, v.Amount()])
    ta_str = TypeAdapter(Annotated[str, v.Amount()])
    assert ta_float.validate_python("1,250.5") == 1250.5
    assert ta_int.validate_python("12") == 12
    assert ta_str.validate_python("$3.50") == "3.50"
    with pytest.raises(ValidationError, match="whole number"):
        ta_int.validate_python("12.5")
    with pytest.raises(ValidationError, match="too large"):
        ta_float.validate_python(Decimal("1e400"))


# -- DateRange -----------------------------------------------------------------------------------


def test_iso_and_unambiguous_dates_are_accepted(today_is_2026_01_05: date) -> None:
    due = v.DateRange(not_before="today", within_days=365)
    assert due.validate("2026-03-04") == date(2026, 3, 4)
    assert due.validate("4 March 2026") == date(2026, 3, 4)
    assert due.validate("March 4, 2026") == date(2026, 3, 4)
    assert due.validate("25/03/2026") == date(2026, 3, 25)  # 25 cannot be a month
    assert due.validate(date(2026, 1, 5)) == date(2026, 1, 5)
    assert due.validate(datetime(2026, 6, 1, 15, 30)) == date(2026, 6, 1)


def test_year_3024_is_rejected_even_without_bounds() -> None:
    err = rejects(v.DateRange(), "3024-01-05")
    assert "plausible range 1900-2100" in err.problems[0].reason


def test_ambiguous_day_month_order_is_rejected_unless_chosen() -> None:
    err = rejects(v.DateRange(), "03/04/2026")
    assert "ambiguous" in err.problems[0].reason
    assert "ISO" in err.problems[0].expected
    assert v.DateRange(dayfirst=True).validate("03/04/2026") == date(2026, 4, 3)
    assert v.DateRange(dayfirst=False).validate("03/04/2026") == date(2026, 3, 4)
    assert v.DateRange().validate("04/04/2026") == date(2026, 4, 4)  # same either way


@pytest.mark.parametrize(
    "value", ["March 5", "tomorrow", "next friday", "2026-02-30", "10:30", "soon", 20260105, ""]
)
def test_incomplete_or_relative_dates_are_rejected(value: Any) -> None:
    rejects(v.DateRange(), value)


def test_relative_bounds_use_the_injectable_clock(today_is_2026_01_05: date) -> None:
    due = v.DateRange(not_before="today", within_days=30)
    assert due.validate("2026-02-04") == date(2026, 2, 4)
    late = rejects(due, "2026-02-05").problems[0]
    assert "after the latest allowed date 2026-02-04" in late.reason
    assert "between 2026-01-05 and 2026-02-04" in late.expected
    early = rejects(due, "2026-01-04").problems[0]
    assert "before the earliest allowed date 2026-01-05" in early.reason
    fixed = v.DateRange(not_before=date(2020, 1, 1), not_after=datetime(2020, 12, 31, 8))
    assert fixed.validate("2020-12-31") == date(2020, 12, 31)


def test_date_range_converts_to_the_annotated_type(today_is_2026_01_05: date) -> None:
    ta_dt = TypeAdapter(Annotated[datetime, v.DateRange()])
    ta_str = TypeAdapter(Annotated[str, v.DateRange()])
    assert ta_dt.validate_python("2026-03-04") == datetime(2026, 3, 4)
    assert ta_dt.validate_python("2026-03-04T10:30:00") == datetime(2026, 3, 4, 10, 30)
    assert ta_str.validate_python("4 March 2026") == "2026-03-04"


def test_date_range_bad_configuration_is_refused() -> None:
    with pytest.raises(ag.ConfigurationError):
        v.DateRange(not_before="yesterday")  # type: ignore[arg-type]
    with pytest.raises(ag.ConfigurationError):
        v.DateRange(within_days=-1)
    with pytest.raises(ag.ConfigurationError):
        v.DateRange(min_year=2100, max_year=1900)


# -- Verbatim ------------------------------------------------------------------------------------


def test_verbatim_registers_its_source_tool_for_provenance() -> None:
    from agentguard.calls import _provenance_sources

    v.Verbatim(from_tool="search_orders_registered")
    assert "search_orders_registered" in _provenance_sources


def test_verbatim_accepts_literal_copies_and_rejects_paraphrases() -> None:
    @ag.tool_call
    def search_orders(q: str) -> dict[str, Any]:
        return {
            "orders": [{"ref": "ORD-2026-0042", "item": "blue sweater", "total": 125.5}],
            "note": "Order ORD-2026-0043 ships Monday",
        }

    check = v.Verbatim(from_tool="search_orders")
    with ag.BudgetPool():
        search_orders("sweater")
        assert check.validate("ORD-2026-0042") == "ORD-2026-0042"
        assert check.validate("ORD-2026-0043") == "ORD-2026-0043"  # a whole token in text
        assert check.validate(125.5) == 125.5
        err = rejects(check, "the order for the blue sweater")
        assert "does not appear" in err.problems[0].reason
        assert "ORD-2026-0042" in err.problems[0].candidates
        err = rejects(check, "ORD-2026-004")  # a prefix is not a copy
        assert err.problems[0].candidates[0].startswith("ORD-2026-004")
        assert "ORD-2026-0042" in err.model_message


def test_verbatim_before_the_source_tool_ran_says_to_call_it_first() -> None:
    with ag.BudgetPool():
        err = rejects(v.Verbatim(from_tool="never_called_tool"), "ORD-1")
    assert "has not returned anything in this run" in err.problems[0].reason
    assert "call `never_called_tool` first" in err.problems[0].expected


def test_verbatim_outputs_do_not_leak_between_runs() -> None:
    @ag.tool_call
    def list_refs() -> list[str]:
        return ["REF-1"]

    check = v.Verbatim(from_tool="list_refs")
    with ag.BudgetPool():
        list_refs()
        assert check.validate("REF-1") == "REF-1"
    with ag.BudgetPool():
        rejects(check, "REF-1")


def test_verbatim_outside_a_run_fails_closed() -> None:
    with pytest.raises(ag.NoActivePool):
        v.Verbatim(from_tool="x").validate("y")


# -- pydantic integration ------------------------------------------------------------------------


class EscalationArgs(BaseModel):
    user_id: Annotated[str, v.Resolves(find_user, what="user id")]
    email: Annotated[str, v.Email()]
    amount: Annotated[Decimal, v.Amount(min=0, max=10_000)]
    due: Annotated[date, v.DateRange(min_year=2000)]


def test_validators_run_inside_a_pydantic_model_and_collect_every_problem() -> None:
    ok = EscalationArgs(user_id="u_123", email="ann@example.org", amount="12.5", due="2026-03-04")
    assert ok.amount == Decimal("12.5")
    with pytest.raises(ValidationError) as info:
        EscalationArgs(
            user_id="the user mentioned in the conversation",
            email="his email",
            amount="the same amount as last time",
            due="3024-01-05",
        )
    errors = info.value.errors()
    assert [e["loc"][0] for e in errors] == ["user_id", "email", "amount", "due"]
    assert all(e["type"] == "agentguard_argument" for e in errors)


def test_json_schema_carries_the_validators_descriptions() -> None:
    schema = EscalationArgs.model_json_schema()["properties"]
    assert "existing user id" in schema["user_id"]["description"]
    assert schema["email"]["format"] == "email"
    assert "between 0 and 10000" in schema["amount"]["description"]
    assert schema["due"]["format"] == "date"
    stacked = TypeAdapter(Annotated[str, v.Resolves(find_user), v.NotPlaceholder()]).json_schema()
    assert "existing record" in stacked["description"]
    assert "placeholders" in stacked["description"]


def test_a_validator_error_inside_pydantic_is_a_validation_error_not_a_crash() -> None:
    with pytest.raises(ValidationError):
        TypeAdapter(Annotated[str, v.Email()]).validate_python(12)


# -- fuzzing: only ToolArgumentError, never anything else ----------------------------------------

ANYTHING = st.one_of(
    st.text(max_size=80),
    st.text(alphabet="0123456789.,$-+ eE/:", max_size=30),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.none(),
    st.booleans(),
    st.dates(),
    st.datetimes(),
    st.binary(max_size=20),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def _only_tool_argument_errors(validator: v.Validator, value: Any) -> None:
    try:
        validator.validate(value)
    except ag.ToolArgumentError:
        pass


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.timeout(120)
@FUZZ
@given(value=ANYTHING)
def test_fuzz_every_validator_only_raises_tool_argument_error(value: Any) -> None:
    for validator in (
        v.NotPlaceholder(),
        v.Email(),
        v.Amount(min=0, max=10_000, places=2),
        v.DateRange(not_before="today", within_days=365),
        v.DateRange(dayfirst=True),
        v.Resolves(find_user, what="user id"),
    ):
        _only_tool_argument_errors(validator, value)


@pytest.mark.timeout(120)
@FUZZ
@given(value=ANYTHING)
def test_fuzz_verbatim_only_raises_tool_argument_error(value: Any) -> None:
    with ag.BudgetPool() as pool:
        from collections import deque

        pool.provenance["fuzz_source"] = deque([{"ref": "ORD-1", "text": "see ORD-2 now"}])
        _only_tool_argument_errors(v.Verbatim(from_tool="fuzz_source"), value)


@pytest.mark.timeout(120)
@FUZZ
@given(value=st.text(alphabet=st.characters(codec="utf-8"), max_size=200))
def test_fuzz_placeholder_detection_is_total(value: str) -> None:
    reason = v.placeholder_reason(value, "user_id")
    assert reason is None or isinstance(reason, str)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "value",
    ["a" * 100_000, "the " * 50_000, "1," * 50_000, "<" + "a" * 100_000 + ">", "x@" * 30_000,
     "{{" * 40_000, " " * 100_000 + "TBD", "9" * 100_000, "03/04/" + "2" * 50_000],
)  # fmt: skip
def test_pathological_inputs_do_not_hang(value: str) -> None:
    for validator in (v.NotPlaceholder(), v.Email(), v.Amount(), v.DateRange()):
        _only_tool_argument_errors(validator, value)
