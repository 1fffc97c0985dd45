"""@ag.contract: a bad result fails at its producer, not three steps later."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any, Optional

import pytest
from pydantic import BaseModel
from typing_extensions import TypedDict

import agentguard as ag
from agentguard import telemetry

from . import otel


def extract_features_swallowing(prices: list[float]) -> dict[str, float] | None:
    try:
        return {"momentum": prices[-1] - prices[0], "volatility": max(prices) - min(prices)}
    except Exception:
        return None  # the swallowed error of catalog entry 6


def backtest(features: dict[str, float]) -> float:
    return len(features) * features["momentum"]


def test_without_a_contract_the_error_surfaces_far_from_its_cause() -> None:
    features = extract_features_swallowing([])
    with pytest.raises(TypeError) as info:
        backtest(features)  # type: ignore[arg-type]
    assert "extract_features" not in str(info.value)  # the symptom names the wrong function


def test_with_a_contract_the_producer_is_named() -> None:
    @ag.contract(required_keys=("momentum", "volatility"))
    def extract_features(prices: list[float]) -> dict[str, float]:
        return extract_features_swallowing(prices)  # type: ignore[return-value]

    assert extract_features([1.0, 2.0])["momentum"] == 1.0
    with pytest.raises(ag.ContractViolation) as info:
        backtest(extract_features([]))
    err = info.value
    assert err.function.endswith("extract_features")
    assert "returned None" in err.reason
    assert "dict[str, float]" in err.expected
    assert "'momentum'" in err.expected
    assert "extract_features" in str(err)


@pytest.mark.parametrize(
    ("result", "reason"),
    [
        (None, "returned None"),
        ({}, "returned an empty dict"),
        ({"momentum": 1.0}, "without 'volatility'"),
        ({"momentum": "high", "volatility": 1.0}, "does not match the return annotation"),
        ([1.0], "returned a list that does not match"),
    ],
)
def test_each_content_check_names_what_came_back(result: Any, reason: str) -> None:
    @ag.contract(not_empty=True, required_keys=["momentum", "volatility"])
    def produce() -> dict[str, float]:
        return result  # type: ignore[no-any-return]

    with pytest.raises(ag.ContractViolation, match=r"contract of .*produce") as info:
        produce()
    assert reason in info.value.reason
    assert info.value.received is result


def test_the_received_repr_is_truncated() -> None:
    @ag.contract
    def produce() -> int:
        return "x" * 10_000  # type: ignore[return-value]

    with pytest.raises(ag.ContractViolation) as info:
        produce()
    assert len(str(info.value)) < 800
    assert "..." in str(info.value)


def test_the_annotation_is_checked_strictly_without_coercion() -> None:
    @ag.contract
    def count() -> int:
        return "3"  # type: ignore[return-value]

    with pytest.raises(ag.ContractViolation):
        count()


def test_optional_results_may_be_none_unless_not_none_is_asked() -> None:
    @ag.contract
    def maybe() -> Optional[int]:  # noqa: UP045 - the typing spelling on purpose
        return None

    @ag.contract(not_none=True)
    def required() -> int | None:
        return None

    @ag.contract
    def nothing() -> None:
        return None

    assert maybe() is None
    assert nothing() is None
    with pytest.raises(ag.ContractViolation, match="not None"):
        required()


def test_no_annotation_still_rejects_none_and_empty() -> None:
    @ag.contract(not_empty=True)
    def rows():  # type: ignore[no-untyped-def]
        return []

    with pytest.raises(ag.ContractViolation, match="empty list"):
        rows()
    with pytest.raises(ag.ContractViolation, match="empty str"):
        ag.contract(not_empty=True)(lambda: "   ")()


def test_models_and_typed_dicts_and_arbitrary_classes_are_checked() -> None:
    class Report(BaseModel):
        rows: int

    class Row(TypedDict):
        id: str

    class Frame:
        def __len__(self) -> int:
            return 0

    @ag.contract
    def report(ok: bool) -> Report:
        return Report(rows=1) if ok else {"rows": 1}  # type: ignore[return-value]

    @ag.contract
    def row(ok: bool) -> Row:
        return {"id": "a"} if ok else {"name": "a"}  # type: ignore[return-value,typeddict-item]

    @ag.contract(not_empty=True)
    def frame() -> Frame:
        return Frame()

    assert report(True).rows == 1
    with pytest.raises(ag.ContractViolation):
        report(False)
    assert row(True) == {"id": "a"}
    with pytest.raises(ag.ContractViolation):
        row(False)
    with pytest.raises(ag.ContractViolation, match="empty Frame"):
        frame()


def test_a_forward_reference_is_resolved_at_the_first_call() -> None:
    @ag.contract
    def later() -> DefinedLater:
        return DefinedLater()

    assert isinstance(later(), DefinedLater)


class DefinedLater:
    pass


async def test_async_functions_are_checked_after_they_are_awaited() -> None:
    @ag.contract(not_empty=True)
    async def fetch() -> list[int]:
        await asyncio.sleep(0)
        return []

    with pytest.raises(ag.ContractViolation, match="fetch"):
        await fetch()


def test_stacked_with_tool_call_in_both_orders() -> None:
    @ag.tool_call
    @ag.contract(required_keys=["rows"])
    def inner_contract() -> dict[str, Any]:
        return {}

    @ag.contract(required_keys=["rows"])
    @ag.tool_call
    def outer_contract() -> dict[str, Any]:
        return {}

    with ag.BudgetPool() as pool:
        with pytest.raises(ag.ContractViolation, match="inner_contract"):
            inner_contract()
        with pytest.raises(ag.ContractViolation, match="outer_contract"):
            outer_contract()
    tool_rows = [r for r in pool.ledger if r.kind == "tool"]
    assert [r.outcome for r in tool_rows] == ["error", "ok"]
    assert tool_rows[0].detail == {"error.type": "ContractViolation"}


def test_a_tool_returning_none_fails_at_the_tool() -> None:
    @ag.tool_call
    @ag.contract
    def search(q: str) -> list[str]:
        return None  # type: ignore[return-value]

    with ag.BudgetPool(), pytest.raises(ag.ContractViolation, match="search"):
        search("x")


def test_a_violation_leaves_a_ledger_row_and_a_metric_without_the_value() -> None:
    _, reader = otel.install()

    @ag.contract(name="pipeline.extract")
    def extract() -> dict[str, str]:
        return {"secret": 42}  # type: ignore[dict-item]

    before = otel.counter_total(
        reader, telemetry.METRIC.CONTRACT_VIOLATIONS, **{"agentguard.function": "pipeline.extract"}
    )
    with ag.BudgetPool() as pool, pytest.raises(ag.ContractViolation):
        extract()
    (row,) = [r for r in pool.ledger if r.kind == "contract"]
    assert row.outcome == "violated"
    assert row.detail is not None
    assert row.detail["guard_id"] == "contract:pipeline.extract"
    assert row.detail["check"] == "annotation"
    assert "secret" not in repr(row.detail)
    after = otel.counter_total(
        reader, telemetry.METRIC.CONTRACT_VIOLATIONS, **{"agentguard.function": "pipeline.extract"}
    )
    assert after - before == 1


def test_an_active_bypass_lets_the_result_through_and_is_recorded() -> None:
    ag.bypass(
        "contract:legacy",
        owner="data-team@example.com",
        reason="the legacy feed returns None until the migration",
        expires=ag.get_config().clock.now() + timedelta(days=10),
    )

    @ag.contract(name="legacy")
    def legacy() -> list[int]:
        return None  # type: ignore[return-value]

    with ag.BudgetPool() as pool:
        assert legacy() is None
    uses = [r for r in pool.ledger if r.kind == "bypass"]
    assert uses and uses[0].detail is not None
    assert str(uses[0].detail["would_have"]).startswith("would have rejected the result None")


def test_required_keys_must_be_a_list_of_names() -> None:
    with pytest.raises(ag.ConfigurationError):
        ag.contract(required_keys="momentum")


def test_the_signature_and_metadata_are_kept() -> None:
    import inspect

    @ag.contract
    def documented(a: int, b: str = "x") -> str:
        """Doc."""
        return b * a

    assert documented.__doc__ == "Doc."
    assert list(inspect.signature(documented).parameters) == ["a", "b"]
