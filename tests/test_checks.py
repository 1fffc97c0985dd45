"""Content checks: every variant of catalog entry 1 (exit 0, empty output) is caught."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import agentguard as ag
from agentguard import checks
from agentguard.checks import (
    CheckContext,
    DurationVsMedian,
    ExpectedPattern,
    LengthVsMedian,
    MemoryHistory,
    NoErrorKeywords,
    NotEmpty,
    run_checks,
)
from tests import otel


def ctx(
    route: str = "job", duration: float | None = None, history: MemoryHistory | None = None
) -> CheckContext:
    return CheckContext(route=route, duration=duration, history=history or MemoryHistory())


def history_of(metric: str, values: list[float], key: str = "job") -> MemoryHistory:
    hist = MemoryHistory()
    for v in values:
        hist.add(key, metric, v)
    return hist


def scan(
    check: checks.Check, data: bytes, context: CheckContext, size: int = 7
) -> ag.checks.CheckResult:
    scanner = check.scanner()
    for i in range(0, len(data), size):
        scanner.feed(data[i : i + size])
    return scanner.result(context)


# -- the catalog's variants ---------------------------------------------------------------------


def test_summary_with_rows_empty_list_and_an_empty_body_is_an_anomaly() -> None:
    rows: list[str] = []
    body = "\n".join(rows)
    result = NotEmpty().evaluate(body, ctx())
    assert not result.ok
    assert "empty" in result.reasons[0] or "''" in result.reasons[0]
    # the same body streamed by a cron job: a lone newline is nothing
    assert not scan(NotEmpty(), b"\n", ctx()).ok


def test_http_200_with_empty_results_is_an_anomaly() -> None:
    payload = json.loads('{"results": []}')
    result = NotEmpty().evaluate(payload, ctx())
    assert not result.ok
    assert "every value of the mapping is empty" in result.reasons[0]
    assert NotEmpty().evaluate({"results": [{"id": 1}]}, ctx()).ok
    assert NotEmpty().evaluate({"results": [], "total": 0}, ctx()).ok  # a number is content


def test_no_rows_placeholder_string_is_an_anomaly() -> None:
    for text in ("<no rows>", "  <NO ROWS>\n", "null", "[]"):
        assert not NotEmpty().evaluate(text, ctx()).ok, text
    assert not scan(NotEmpty(), b"<no rows>\n", ctx()).ok
    assert NotEmpty().evaluate("3 rows", ctx()).ok


def test_zero_byte_backup_file_is_an_anomaly(tmp_path: Path) -> None:
    backup = tmp_path / "backup.tar.gz"
    backup.write_bytes(b"")
    result = NotEmpty().evaluate(backup, ctx())
    assert result.reasons == (f"NotEmpty: the file {str(backup)!r} is 0 bytes",)
    backup.write_bytes(b"\x1f\x8b data")
    assert NotEmpty().evaluate(backup, ctx()).ok


def test_snapshot_file_never_written_is_an_anomaly(tmp_path: Path) -> None:
    snapshot = tmp_path / "snapshot.json"
    result = NotEmpty().evaluate(snapshot, ctx())
    assert not result.ok and "never written" in result.reasons[0]
    assert checks.measure_length(snapshot) == 0.0


def test_traceback_in_a_successful_output_is_an_anomaly() -> None:
    output = "Summary: 3 rows\nTraceback (most recent call last):\n  File 'x.py'\nKeyError: 'k'\n"
    result = NoErrorKeywords().evaluate(output, ctx())
    assert not result.ok and "'Traceback'" in result.reasons[0]
    assert not scan(NoErrorKeywords(), output.encode(), ctx(), size=5).ok
    # words that merely contain the keyword letters do not fire
    assert NoErrorKeywords().evaluate("TERRORS in the ERRORLOG were 0", ctx()).ok


@pytest.mark.parametrize("text", ["429 Rate limit reached", "monthly quota exceeded", "ERROR x"])
def test_rate_limit_quota_and_error_words_are_anomalies(text: str) -> None:
    assert not NoErrorKeywords().evaluate(text, ctx()).ok


def test_job_ten_times_slower_than_usual_is_an_anomaly() -> None:
    hist = history_of(checks.METRIC_DURATION, [1.0, 1.1, 0.9, 1.0, 1.2])
    result = DurationVsMedian().evaluate(None, ctx(duration=10.0, history=hist))
    assert not result.ok
    assert "10.0x the median 1s" in result.reasons[0]
    assert DurationVsMedian().evaluate(None, ctx(duration=2.0, history=hist)).ok


def test_output_far_shorter_than_its_median_is_an_anomaly() -> None:
    hist = history_of(checks.METRIC_LENGTH, [1000, 980, 1020, 1005, 995])
    short = LengthVsMedian(0.3).evaluate("x" * 200, ctx(history=hist))
    assert not short.ok and "20% of the median 1000" in short.reasons[0]
    assert LengthVsMedian(0.3).evaluate("x" * 400, ctx(history=hist)).ok
    streamed = scan(LengthVsMedian(0.3), b"\n  " + b"x" * 200 + b"  \n\n", ctx(history=hist))
    assert not streamed.ok and streamed.measured["length"] == 200


def test_missing_expected_line_is_an_anomaly() -> None:
    check = ExpectedPattern(r"^Summary:")
    assert not check.evaluate("Report\nno summary here: Summary: inline\n", ctx()).ok
    assert check.evaluate("Report\nSummary: 3 rows\n", ctx()).ok
    assert scan(check, b"Report\nSummary: 3 rows\n", ctx(), size=3).ok
    assert not scan(check, b"Report\n", ctx(), size=3).ok


# -- history: never silent, never poisoned ------------------------------------------------------


def test_too_little_history_is_said_not_passed_silently() -> None:
    hist = history_of(checks.METRIC_LENGTH, [100, 100])
    result = LengthVsMedian(min_history=5).evaluate("x", ctx(history=hist))
    assert result.ok
    assert result.insufficient_history
    assert "too little history for 'job' (2 of 5" in result.notes[0]
    assert DurationVsMedian().evaluate(None, ctx(duration=None)).notes


def test_history_grows_only_from_outputs_that_passed() -> None:
    hist = MemoryHistory()
    check = NotEmpty() & LengthVsMedian(min_history=1)
    run_checks(check, "x" * 100, route="r", history=hist, report=False)
    run_checks(check, "", route="r", history=hist, report=False)
    run_checks(check, "x" * 10, route="r", history=hist, report=False)
    assert hist.values("r", "length") == [100.0]


def test_history_check_without_a_store_says_history_is_in_process_only() -> None:
    result = run_checks(LengthVsMedian(), "hello", route="no-store", report=False)
    assert checks.MEMORY_HISTORY_NOTE in result.notes
    # a check with no history needs no store, and says nothing about it
    assert checks.MEMORY_HISTORY_NOTE not in run_checks(NotEmpty(), "x", route="r").notes


def test_history_lives_in_the_store_when_one_is_configured(tmp_path: Path) -> None:
    ag.configure(store=tmp_path / "s.db")
    for _ in range(5):
        result = run_checks(LengthVsMedian(), "x" * 100, route="store-route")
        assert checks.MEMORY_HISTORY_NOTE not in result.notes
    reopened = ag.store.SQLiteStore(tmp_path / "s.db")
    assert reopened.history.values("store-route", "length") == [100.0] * 5
    reopened.close()
    assert not run_checks(LengthVsMedian(), "x" * 10, route="store-route", report=False).ok


def test_memory_history_window_is_bounded() -> None:
    hist = MemoryHistory(window=3)
    for v in range(10):
        hist.add("k", "m", v)
    assert hist.values("k", "m") == [7.0, 8.0, 9.0]


# -- composition and reporting ------------------------------------------------------------------


def test_composed_checks_report_every_anomaly_not_the_first_only() -> None:
    check = NotEmpty() & ExpectedPattern("^Summary:") & NoErrorKeywords()
    assert isinstance(check, checks.AllOf) and len(check.checks) == 3
    result = check.evaluate("", ctx())
    assert [a.check for a in result.anomalies] == ["NotEmpty", "ExpectedPattern"]
    assert check.uses_history is False
    assert (check & LengthVsMedian()).uses_history is True


def test_raise_for_anomaly_names_route_and_every_failed_check() -> None:
    result = (NotEmpty() & ExpectedPattern("^Summary:")).evaluate("", ctx())
    with pytest.raises(ag.ContentAnomaly) as info:
        result.raise_for_anomaly("daily-summary")
    err = info.value
    assert err.route == "daily-summary" and err.check == "NotEmpty"
    assert "route 'daily-summary'" in str(err) and "ExpectedPattern" in str(err)
    assert len(err.reasons) == 2
    NotEmpty().evaluate("ok", ctx()).raise_for_anomaly("r")  # ok: returns


def test_an_anomaly_is_a_ledger_row_a_metric_and_an_alert(
    captured_alerts: list[ag.Alert],
) -> None:
    _, reader = otel.install()
    before = otel.counter_total(
        reader, "agentguard.content.anomalies", **{"agentguard.check": "NotEmpty"}
    )
    with ag.BudgetPool(name="run") as pool:
        result = run_checks(NotEmpty(), {"results": []}, route="search")
    assert not result.ok
    rows = [r for r in pool.ledger if r.kind == "anomaly"]
    assert len(rows) == 1
    assert rows[0].route == "search" and rows[0].detail is not None
    assert rows[0].detail["guard_id"] == "checks:search.NotEmpty"
    assert rows[0].detail["check"] == "NotEmpty"
    after = otel.counter_total(
        reader, "agentguard.content.anomalies", **{"agentguard.check": "NotEmpty"}
    )
    assert after == before + 1
    [alert] = [a for a in captured_alerts if a.kind == "content.anomaly"]
    assert alert.route == "search" and alert.run_id == pool.run_id
    assert alert.guard_id == "checks:search.NotEmpty"


def test_report_false_leaves_reporting_to_the_caller(captured_alerts: list[ag.Alert]) -> None:
    run_checks(NotEmpty(), "", route="r", report=False)
    assert captured_alerts == []


def test_guard_ids_name_route_and_check() -> None:
    assert NotEmpty().guard_id("daily") == "checks:daily.NotEmpty"
    assert LengthVsMedian().guard_id(None) == "checks:*.LengthVsMedian"


@pytest.mark.parametrize(
    "bad",
    [
        lambda: LengthVsMedian(min_ratio=1.5),
        lambda: LengthVsMedian(max_ratio=0.5),
        lambda: DurationVsMedian(max_ratio=1),
        lambda: ExpectedPattern("("),
        lambda: NoErrorKeywords({"x": "("}),
        lambda: NotEmpty() & "not a check",  # type: ignore[operator]
    ],
)
def test_misconfigured_checks_fail_at_construction(bad: object) -> None:
    with pytest.raises(ag.ConfigurationError):
        bad()  # type: ignore[operator]


# -- streams ------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    text=st.text(alphabet="ab \nERROR:Sumry", max_size=80),
    size=st.integers(min_value=1, max_value=17),
)
def test_streamed_verdict_equals_in_memory_verdict(text: str, size: int) -> None:
    hist = history_of(checks.METRIC_LENGTH, [20, 20, 20, 20, 20])
    check = (
        NotEmpty(placeholders=())
        & LengthVsMedian(0.3)
        & NoErrorKeywords()
        & ExpectedPattern("^Summary:")
    )
    data = text.encode()
    whole = check.evaluate(text, ctx(history=hist))
    streamed = scan(check, data, ctx(history=hist), size=size)
    assert [a.check for a in streamed.anomalies] == [a.check for a in whole.anomalies]
    assert streamed.measured.get("length") == whole.measured.get("length")


def test_scanner_memory_is_bounded_for_a_line_without_newline() -> None:
    scanner = NoErrorKeywords().scanner()
    chunk = b"x" * 65536
    for _ in range(40):  # 2.5 MiB without a newline
        scanner.feed(chunk)
    assert len(scanner.partial) <= scanner.MAX_LINE + len(chunk)  # type: ignore[attr-defined]
    scanner.feed(b"\nERROR\n")
    assert not scanner.result(ctx()).ok


def test_file_larger_than_64_mib_must_be_streamed(tmp_path: Path) -> None:
    big = tmp_path / "big.txt"
    with big.open("wb") as fh:
        fh.truncate(65 * 1024 * 1024)
    with pytest.raises(ag.ConfigurationError, match="scanner"):
        NoErrorKeywords().evaluate(big, ctx())


def test_json_text_with_empty_results_is_an_anomaly_in_a_stream_too() -> None:
    body = b'{"results": []}\n'
    result = scan(NotEmpty(), body, ctx(), size=4)
    assert not result.ok and "(the output is JSON)" in result.reasons[0]
    assert NotEmpty().evaluate('{"results": [1]}', ctx()).ok
    assert NotEmpty().evaluate("{not json", ctx()).ok


# -- the success path's shortcuts give the same verdicts as the long way ----------------------


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), max_size=40),
    st.integers(min_value=1, max_value=12),
)
def test_memory_history_median_shortcut_equals_statistics_median_through_evictions(
    values: list[float], window: int
) -> None:
    import statistics

    hist = MemoryHistory(window=window)
    for v in values:
        hist.add("r", "length", v)
        kept = hist.values("r", "length")
        assert hist.count_and_median("r", "length") == (len(kept), statistics.median(kept))
    if not values:
        assert hist.count_and_median("r", "length") == (0, None)


class ListHistory:
    """A History with only the protocol's two methods (as a store's may be)."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, str], list[float]] = {}

    def values(self, key: str, metric: str) -> list[float]:
        return list(self.data.get((key, metric), []))

    def add(self, key: str, metric: str, value: float) -> None:
        self.data.setdefault((key, metric), []).append(value)


def test_length_vs_median_judges_the_same_with_and_without_the_median_shortcut() -> None:
    lengths = [400.0, 380.0, 410.0, 395.0, 420.0, 405.0]
    plain, fast = ListHistory(), history_of("length", lengths, key="r")
    for v in lengths:
        plain.add("r", "length", v)
    check = LengthVsMedian(min_ratio=0.3)
    for output in ("x" * 12, "x" * 400):
        a = check.evaluate(output, CheckContext(route="r", duration=None, history=plain))
        b = check.evaluate(output, CheckContext(route="r", duration=None, history=fast))
        assert a == b
    assert not check.evaluate("x" * 12, ctx("r", history=fast)).ok


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet="ERORabcdlimtquoa -_\nTrcebk(s)", max_size=60))
def test_no_error_keywords_single_scan_agrees_with_each_pattern(text: str) -> None:
    check = NoErrorKeywords()
    expected = [label for label, rx in check._regexes if rx.search(text)]
    result = check.evaluate(text, ctx())
    assert result.ok == (not expected)
    if expected:
        assert result.anomalies[0].details["patterns"] == sorted(expected)


def test_no_error_keywords_with_group_references_falls_back_to_each_pattern() -> None:
    check = NoErrorKeywords({"doubled": r"(\w)\1", "shout": "(?i)help"})
    assert check._any is None  # joining would renumber the group the reference names
    assert not check.evaluate("aa", ctx()).ok
    assert check.evaluate("ab", ctx()).ok
    assert not check.evaluate("HeLp", ctx()).ok
    assert NoErrorKeywords({"shout": "(?i)help"})._any is not None


def test_a_passing_verdict_is_shared_and_cannot_be_changed_by_its_receiver() -> None:
    first = NotEmpty().evaluate("a summary", ctx())
    second = (NotEmpty() & NoErrorKeywords()).evaluate("another summary", ctx())
    assert first.ok and second.ok and first is second
    with pytest.raises(TypeError):
        first.measured["length"] = 1.0  # type: ignore[index]
    assert dict(first.measured) == {}


def test_run_checks_context_is_an_ordinary_check_context() -> None:
    seen: list[CheckContext] = []

    class Spy(checks.Check):
        name = "Spy"

        def evaluate(self, output: object, context: CheckContext) -> checks.CheckResult:
            seen.append(context)
            return checks.CheckResult()

    hist = MemoryHistory()
    run_checks(Spy(), "x", route="r", duration=0.5, history=hist)
    assert seen == [CheckContext(route="r", duration=0.5, history=hist)]
    with pytest.raises(AttributeError):
        seen[0].route = "other"  # type: ignore[misc]


def test_a_check_can_be_called_standalone_without_building_a_context() -> None:
    """`NotEmpty().check(x)` / `NotEmpty()(x)`: the one-liner a new user reaches for."""
    history = ag.checks.MemoryHistory()
    assert not ag.checks.NotEmpty().check("", history=history).ok
    assert not ag.checks.NotEmpty()({"results": []}, history=history).ok
    combined = ag.checks.NotEmpty() & ag.checks.NoErrorKeywords()
    assert combined("Summary: 3 rows", history=history).ok
    bad = combined("Traceback (most recent call last):\n  boom", route="r", history=history)
    assert [a.check for a in bad.anomalies] == ["NoErrorKeywords"]
    with pytest.raises(ag.ContentAnomaly):
        bad.raise_for_anomaly("r")
