"""Bypasses: every one has an owner, a reason and an end; every use is visible."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import agentguard as ag
from agentguard import _config, _events, _guards, bypasses, telemetry
from agentguard.bypasses import active_bypass, record_bypass_use

from . import otel

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
SRC = Path(__file__).resolve().parents[1] / "src" / "agentguard"


class ManualClock(ag.Clock):
    """Wall and monotonic time that only move when the test says so."""

    def __init__(self, start: datetime = T0) -> None:
        self.wall = start
        self.mono = 1000.0

    def now(self) -> datetime:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, **delta: float) -> None:
        step = timedelta(**delta)
        self.wall += step
        self.mono += step.total_seconds()


@pytest.fixture(autouse=True)
def _fresh_registry() -> Iterator[None]:
    bypasses._reset_for_tests()
    _guards._reset_for_tests()
    _events.drain_orphan_events()
    yield
    bypasses._reset_for_tests()
    _guards._reset_for_tests()


@pytest.fixture
def clock() -> ManualClock:
    c = ManualClock()
    ag.configure(clock=c)
    return c


def _entry(**over: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "owner": "ana@example.com",
        "reason": "model sends names until prompt v7",
        "expires": "2026-06-15",
        "ticket": "OPS-123",
    }
    fields.update(over)
    return fields


def _tool_pool(limit: int = 2, name: str = "run") -> ag.BudgetPool:
    return ag.BudgetPool(name=name, tool_calls=limit, warn_at=None)


@ag.tool_call
def lookup(key: str) -> str:
    return key.upper()


# -- registration: every field required, nothing silently defaulted ---------------------------


@pytest.mark.parametrize("missing", ["owner", "reason", "expires"])
def test_bypass_without_required_field_is_refused_in_code(clock: ManualClock, missing: str) -> None:
    fields = _entry()
    fields[missing] = None
    with pytest.raises(ag.BypassError, match=rf"{missing} is missing.*Fix:"):
        ag.bypass("budget:run", **fields)
    assert bypasses.registered_bypasses() == ()


@pytest.mark.parametrize("missing", ["guard", "owner", "reason", "expires"])
def test_bypass_without_required_field_is_refused_in_file(
    clock: ManualClock, tmp_path: Path, missing: str
) -> None:
    fields = {"guard": "budget:run", **_entry()}
    del fields[missing]
    body = "\n".join(f'{k} = "{v}"' for k, v in fields.items())
    path = tmp_path / "agentguard.toml"
    path.write_text(f"[[bypass]]\n{body}\n")
    with pytest.raises(ag.BypassError) as info:
        ag.load_bypasses(path)
    message = str(info.value)
    assert str(path) in message and "entry 1" in message
    assert ("guard id is missing" if missing == "guard" else f"{missing} is missing") in message
    assert bypasses.registered_bypasses() == ()


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("owner", "   ", "owner is empty"),
        ("owner", 42, "owner must be a string"),
        ("reason", "launch", "reason is 'launch' (6 characters); expected at least 8"),
        ("ticket", "", "ticket is empty"),
    ],
)
def test_blank_or_wrong_type_text_fields_are_refused(
    clock: ManualClock, field: str, value: Any, expected: str
) -> None:
    with pytest.raises(ag.BypassError, match=re.escape(expected)):
        ag.bypass("budget:run", **_entry(**{field: value}))


@pytest.mark.parametrize(
    ("expires", "expected"),
    [
        ("15/06/2026", "is not a valid date or datetime"),
        ("2026-13-01", "is not a valid date or datetime"),
        ("next friday", "is not a valid date or datetime"),
        ("2026-06-10T10:00:00", "has no time zone"),
        (datetime(2026, 6, 10, 10, 0), "has no time zone"),
        (20260610, "must be a date or datetime"),
    ],
)
def test_malformed_expiry_is_refused_with_the_format_to_use(
    clock: ManualClock, expires: Any, expected: str
) -> None:
    with pytest.raises(ag.BypassError) as info:
        ag.bypass("budget:run", **_entry(expires=expires))
    assert expected in str(info.value)
    assert "YYYY-MM-DD" in str(info.value)


@pytest.mark.parametrize("guard", ["run", "budgets:run", "budget:", "args:my tool", "*", ""])
def test_malformed_guard_id_is_refused(clock: ManualClock, guard: str) -> None:
    with pytest.raises(ag.BypassError, match="agentguard guards"):
        ag.bypass(guard, **_entry())


def test_expiry_past_the_horizon_is_refused(clock: ManualClock) -> None:
    # T0 is 2026-06-01: the default horizon (30 days) ends with 2026-07-01.
    assert ag.bypass("budget:run", **_entry(expires="2026-07-01")).guard == "budget:run"
    with pytest.raises(
        ag.BypassError, match=r"past the horizon of 30 days.*no later than 2026-07-01"
    ):
        ag.bypass("budget:other", **_entry(expires="2026-07-02"))


def test_horizon_is_configurable_but_capped(clock: ManualClock) -> None:
    ag.configure(bypass_max_days=90)
    ag.bypass("budget:run", **_entry(expires="2026-08-20"))
    with pytest.raises(ag.ConfigurationError, match="from 1 to 365"):
        ag.configure(bypass_max_days=10_000)
    with pytest.raises(ag.ConfigurationError, match="from 1 to 365"):
        ag.configure(bypass_max_days=0)


def test_accepts_dates_aware_datetimes_and_z_suffix(clock: ManualClock) -> None:
    a = ag.bypass("budget:a", **_entry(expires=date(2026, 6, 15)))
    b = ag.bypass("budget:b", **_entry(expires="2026-06-15T18:00:00Z"))
    c = ag.bypass(
        "budget:c",
        **_entry(expires=datetime(2026, 6, 15, 20, 0, tzinfo=timezone(timedelta(hours=2)))),
    )
    assert a.expires == datetime(2026, 6, 16, tzinfo=timezone.utc)  # through the end of the day
    assert b.expires == datetime(2026, 6, 15, 18, tzinfo=timezone.utc)
    assert c.expires == datetime(2026, 6, 15, 18, tzinfo=timezone.utc)


def test_registering_the_same_entry_twice_is_idempotent(clock: ManualClock) -> None:
    ag.bypass("budget:run", **_entry())
    ag.bypass("budget:run", **_entry())
    assert len(bypasses.registered_bypasses()) == 1


def test_no_environment_switch_can_disable_a_guard() -> None:
    """The only way to turn a guard off is an entry: no env var, global flag or kill switch."""
    env_read = re.compile(r"os\.environ|os\.getenv|environ\.get")
    switch = re.compile(r"DISABLE|BYPASS|SKIP|NO_GUARD|GUARDS_OFF|_OFF\b", re.IGNORECASE)
    offenders = []
    for path in SRC.rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if env_read.search(line) and switch.search(line):
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert offenders == []
    flags = [name for name in vars(_config.get_config()) if switch.search(name)]
    assert flags == ["bypass_max_days"]  # a horizon, not a switch


# -- the guard side ---------------------------------------------------------------------------


def test_no_entry_means_no_bypass(clock: ManualClock) -> None:
    assert active_bypass("budget:run") is None


def test_pool_refusal_is_let_through_and_recorded(clock: ManualClock) -> None:
    entry = ag.bypass("budget:run", **_entry())
    with _tool_pool(2) as pool:
        for i in range(4):
            lookup(f"k{i}")
        assert pool.spent["tool_calls"] == 4
        assert not pool.stopped
    rows = [r for r in pool.ledger if r.kind == "bypass"]
    assert [r.detail["would_have"] for r in rows if r.detail] == [
        "would have refused tool_calls 3 > 2",
        "would have refused tool_calls 4 > 2",
    ]
    assert all(r.outcome == "bypassed" and r.route == "lookup" for r in rows)
    assert rows[0].detail is not None and rows[0].detail["guard_id"] == "budget:run"
    assert rows[0].detail["owner"] == "ana@example.com"
    assert bypasses.use_counts() == {entry.guard: 2}


def test_bypass_of_another_pool_does_not_open_this_one(clock: ManualClock) -> None:
    ag.bypass("budget:other", **_entry())
    with _tool_pool(1) as pool:
        lookup("a")
        with pytest.raises(ag.BudgetExceeded):
            lookup("b")
    assert pool.stopped


def test_expired_entry_turns_the_guard_back_on_and_alerts_the_owner_once(
    clock: ManualClock, captured_alerts: list[ag.Alert]
) -> None:
    ag.bypass("budget:run", **_entry(expires="2026-06-03"))
    with _tool_pool(1, name="run"):
        lookup("a")
        lookup("b")  # bypassed
    clock.advance(days=2, hours=11, minutes=59)  # 2026-06-03 23:59 UTC: still on the date
    assert active_bypass("budget:run") is not None
    clock.advance(minutes=1)  # 2026-06-04 00:00 UTC: expired
    assert active_bypass("budget:run") is None
    expired = [a for a in captured_alerts if a.kind == "bypass.expired"]
    assert len(expired) == 1
    assert "ana@example.com" in expired[0].message and "OPS-123" in expired[0].message
    assert expired[0].guard_id == "budget:run"
    with _tool_pool(1, name="run") as pool:
        lookup("c")
        with pytest.raises(ag.BudgetExceeded):
            lookup("d")
    assert pool.stopped
    assert len([a for a in captured_alerts if a.kind == "bypass.expired"]) == 1


def test_first_refusal_after_expiry_alerts_from_inside_the_pool(
    clock: ManualClock, captured_alerts: list[ag.Alert]
) -> None:
    ag.bypass("budget:run", **_entry(expires="2026-06-01"))
    clock.advance(days=1)
    with _tool_pool(1) as pool:
        lookup("a")
        with pytest.raises(ag.BudgetExceeded):
            lookup("b")
    [alert] = [a for a in captured_alerts if a.kind == "bypass.expired"]
    assert alert.pool == "run" and alert.route == "lookup"
    rows = [r for r in pool.ledger if r.kind == "bypass"]
    assert [r.outcome for r in rows] == ["expired"]


def test_renewal_is_a_new_entry_and_history_is_kept(clock: ManualClock) -> None:
    ag.bypass("budget:run", **_entry(expires="2026-06-03"))
    clock.advance(days=3)
    ag.bypass("budget:run", **_entry(expires="2026-06-20", ticket="OPS-124"))
    active = active_bypass("budget:run")
    assert active is not None and active.ticket == "OPS-124"
    [status] = bypasses.bypass_statuses()
    assert status.renewals == 1 and status.state == "active"
    assert [e.ticket for e in status.history] == ["OPS-123", "OPS-124"]
    text = bypasses.render_bypasses()
    assert "renewed 1x" in text and "2026-06-03" in text


def test_bypass_on_parent_pool_lets_a_nested_subagent_through(clock: ManualClock) -> None:
    ag.bypass("budget:run", **_entry())
    with ag.BudgetPool(name="run", tool_calls=2, warn_at=None) as run:
        lookup("a")
        lookup("b")
        with ag.BudgetPool(name="subagent", tool_calls=5, warn_at=None) as sub:
            lookup("c")  # run is full: its bypass lets it through; subagent's own limit holds
        with ag.BudgetPool(name="tight", tool_calls=1, warn_at=None):
            lookup("d")
            with pytest.raises(ag.BudgetExceeded) as info:
                lookup("e")  # the child's own limit is not bypassed
            assert info.value.pool == "tight"
    assert sub.spent["tool_calls"] == 1
    assert run.spent["tool_calls"] == 4
    uses = [r for r in run.ledger if r.kind == "bypass" and r.outcome == "bypassed"]
    assert {r.pool for r in uses} == {"subagent", "tight"}
    assert all(r.detail is not None and r.detail["guard_id"] == "budget:run" for r in uses)


async def test_bypass_used_in_an_async_tool(clock: ManualClock) -> None:
    ag.bypass("budget:run", **_entry())

    @ag.tool_call
    async def fetch(key: str) -> str:
        await asyncio.sleep(0)
        return key

    async with _tool_pool(1) as pool:
        results = await asyncio.gather(*(fetch(f"k{i}") for i in range(5)))
    assert results == [f"k{i}" for i in range(5)]
    assert pool.spent["tool_calls"] == 5
    assert bypasses.use_counts() == {"budget:run": 4}


def test_llm_limits_and_overruns_are_bypassed_without_stopping_the_pool(
    clock: ManualClock, captured_alerts: list[ag.Alert]
) -> None:
    ag.bypass("budget:run", **_entry())

    @ag.llm_call(max_tokens=100, input_tokens=10)
    def ask(prompt: str) -> str:
        ag.record_usage(input_tokens=10, output_tokens=500)  # overruns its reservation
        return "answer"

    with ag.BudgetPool(name="run", llm_calls=1, output_tokens=200, warn_at=None) as pool:
        ask("a")  # overrun: would have stopped the pool
        ask("b")  # llm_calls 2 > 1 and output_tokens: would have refused
    assert not pool.stopped
    assert pool.spent["output_tokens"] == 1000
    texts = [r.detail["would_have"] for r in pool.ledger if r.kind == "bypass" and r.detail]
    assert texts[0] == "would have stopped the pool at output_tokens 500 > 200"
    assert texts[1].startswith("would have refused ")
    assert not [a for a in captured_alerts if a.kind in ("budget.stopped", "budget.overrun")]


def test_wall_clock_limit_is_bypassed_with_the_elapsed_time(clock: ManualClock) -> None:
    ag.bypass("budget:run", **_entry())
    with ag.BudgetPool(name="run", wall_seconds=10, warn_at=None) as pool:
        clock.advance(seconds=12)
        lookup("a")
    [row] = [r for r in pool.ledger if r.kind == "bypass"]
    assert row.detail is not None
    assert row.detail["would_have"] == "would have refused wall_seconds 12 s > 10 s"


def test_patterns_and_parent_ids_cover_sub_ids(clock: ManualClock) -> None:
    ag.bypass("args:escalate_to_human", **_entry())
    ag.bypass("checks:summary.*", **_entry())
    assert active_bypass("args:escalate_to_human.user_id") is not None
    assert active_bypass("args:escalate_to_human") is not None
    assert active_bypass("args:escalate_to_humans.user_id") is None
    assert active_bypass("checks:summary.NotEmpty") is not None
    assert active_bypass("checks:summary") is None
    assert active_bypass("checks:summaryx.NotEmpty") is None


def test_latest_active_entry_wins_among_overlapping_ones(clock: ManualClock) -> None:
    ag.bypass("args:*", **_entry(expires="2026-06-05", owner="platform"))
    ag.bypass("args:search.query", **_entry(expires="2026-06-20", owner="search-team"))
    entry = active_bypass("args:search.query")
    assert entry is not None and entry.owner == "search-team"
    clock.advance(days=30)
    assert active_bypass("args:search.query") is None


# -- telemetry --------------------------------------------------------------------------------


def test_use_is_counted_by_the_real_otel_sdk_with_guard_and_owner(clock: ManualClock) -> None:
    _, reader = otel.install()
    attrs = {"agentguard.guard.id": "budget:run", "agentguard.bypass.owner": "ana@example.com"}
    before = otel.counter_total(reader, "agentguard.bypass.used", **attrs)
    ag.bypass("budget:run", **_entry())
    with _tool_pool(1):
        for i in range(4):
            lookup(f"k{i}")
    after = otel.counter_total(reader, "agentguard.bypass.used", **attrs)
    assert after - before == 3


def test_use_adds_an_event_to_the_current_span(clock: ManualClock) -> None:
    exporter, _ = otel.install()
    exporter.clear()
    entry = ag.bypass("args:escalate_to_human.user_id", **_entry())
    tracer = telemetry.get_tracer()
    with tracer.start_as_current_span("agent step"):
        record_bypass_use(
            entry,
            "args:escalate_to_human.user_id",
            "would have rejected user_id=<str len=9 #abcd1234>",
            route="escalate_to_human",
        )
    [span] = [s for s in exporter.get_finished_spans() if s.name == "agent step"]
    [event] = [e for e in span.events if e.name == telemetry.EVENT_BYPASS_USED]
    assert event.attributes is not None
    assert event.attributes["agentguard.guard.id"] == "args:escalate_to_human.user_id"
    assert event.attributes["agentguard.bypass.owner"] == "ana@example.com"
    assert event.attributes["agentguard.bypass.ticket"] == "OPS-123"
    assert "would have rejected" in str(event.attributes["agentguard.bypass.would_have"])


def test_use_outside_a_pool_still_leaves_a_ledger_row(clock: ManualClock) -> None:
    entry = ag.bypass("contract:load_rows", **_entry())
    record_bypass_use(entry, "contract:load_rows", "would have rejected None", value=[1, 2])
    [row] = [r for r in _events.drain_orphan_events() if r[3] == "bypass"]
    detail = row[-1]
    assert detail["guard_id"] == "contract:load_rows"
    assert detail["value"].startswith("<list len=2 #")  # context values are described, not kept


def test_warning_is_rate_limited_per_guard(
    clock: ManualClock, agentguard_logs: pytest.LogCaptureFixture
) -> None:
    entry = ag.bypass("args:*", **_entry())

    def warnings_for(guard: str) -> list[str]:
        return [
            r.getMessage()
            for r in agentguard_logs.records
            if r.levelno == logging.WARNING and f"guard {guard} " in r.getMessage()
        ]

    for _ in range(5):
        record_bypass_use(entry, "args:a.x", "would have rejected x")
    record_bypass_use(entry, "args:b.y", "would have rejected y")
    assert len(warnings_for("args:a.x")) == 1
    assert len(warnings_for("args:b.y")) == 1
    clock.advance(seconds=59)
    record_bypass_use(entry, "args:a.x", "would have rejected x")
    assert len(warnings_for("args:a.x")) == 1
    clock.advance(seconds=1)
    record_bypass_use(entry, "args:a.x", "would have rejected x")
    lines = warnings_for("args:a.x")
    assert len(lines) == 2
    assert "5 more use(s) since the last line" in lines[1]
    assert "ana@example.com" in lines[0] and "OPS-123" in lines[0]
    assert bypasses.use_counts() == {"args:*": 8}


def test_uses_from_many_threads_are_all_counted(clock: ManualClock) -> None:
    entry = ag.bypass("budget:run", **_entry())

    def work() -> None:
        for _ in range(200):
            record_bypass_use(entry, "budget:run", "would have refused")

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bypasses.use_counts() == {"budget:run": 1600}
    _events.drain_orphan_events()


# -- declarative entries ----------------------------------------------------------------------

PYPROJECT = """
[project]
name = "demo"

[tool.agentguard]
bypass_max_days = 45

[[tool.agentguard.bypass]]
guard = "budget:nightly"
owner = "ops@example.com"
reason = "black friday traffic spike"
expires = 2026-07-10
ticket = "OPS-9"
created = 2026-05-30
"""


def test_pyproject_entries_load_with_their_own_horizon(clock: ManualClock, tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    [entry] = ag.load_bypasses(tmp_path / "pyproject.toml")
    assert entry.guard == "budget:nightly" and entry.ticket == "OPS-9"
    assert entry.created == datetime(2026, 5, 30, tzinfo=timezone.utc)
    assert entry.source.endswith("pyproject.toml")
    assert active_bypass("budget:nightly") is entry


def test_file_entry_past_the_horizon_is_refused(clock: ManualClock, tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(PYPROJECT.replace("bypass_max_days = 45", ""))
    with pytest.raises(ag.BypassError, match="past the horizon of 30 days"):
        ag.load_bypasses(tmp_path / "pyproject.toml")
    assert bypasses.registered_bypasses() == ()


def test_unknown_field_in_file_is_refused_with_a_suggestion(
    clock: ManualClock, tmp_path: Path
) -> None:
    path = tmp_path / "agentguard.toml"
    path.write_text(
        '[[bypass]]\nguard = "budget:run"\nowner = "ana"\nreason = "launch traffic"\n'
        "expiry = 2026-06-10\n"
    )
    with pytest.raises(ag.BypassError, match=r"'expiry' \(did you mean 'expires'\?\)"):
        ag.load_bypasses(path)


def test_misspelled_table_is_refused_not_ignored(clock: ManualClock, tmp_path: Path) -> None:
    path = tmp_path / "agentguard.toml"
    path.write_text('[[bypasses]]\nguard = "budget:run"\n')
    with pytest.raises(ag.BypassError, match=r"unknown setting \[bypasses\]"):
        ag.load_bypasses(path)


def test_invalid_toml_is_a_bypass_error(clock: ManualClock, tmp_path: Path) -> None:
    path = tmp_path / "agentguard.toml"
    path.write_text("[[bypass]\nguard = \n")
    with pytest.raises(ag.BypassError, match="not valid TOML"):
        ag.load_bypasses(path)


def test_entries_split_over_two_files_are_refused(clock: ManualClock, tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    (tmp_path / "agentguard.toml").write_text("")
    with pytest.raises(ag.BypassError, match="both declare bypass entries"):
        ag.load_bypasses(tmp_path / "agentguard.toml")


def test_project_file_is_read_at_the_first_refusal(
    clock: ManualClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pyproject.toml").write_text(PYPROJECT.replace("budget:nightly", "budget:run"))
    nested = tmp_path / "jobs" / "nightly"
    nested.mkdir(parents=True)
    monkeypatch.chdir(nested)
    bypasses._reset_for_tests(file_checked=False)
    with _tool_pool(1) as pool:
        lookup("a")
        lookup("b")  # refused by the limit, let through by the entry in ../../pyproject.toml
    assert not pool.stopped
    assert [e.guard for e in bypasses.registered_bypasses()] == ["budget:run"]


def test_no_project_file_leaves_every_guard_on(
    clock: ManualClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    bypasses._reset_for_tests(file_checked=False)
    assert bypasses.find_project_file() is None or bypasses.find_project_file() != tmp_path
    with _tool_pool(1), pytest.raises(ag.BudgetExceeded):
        lookup("a")
        lookup("b")


# -- listing ----------------------------------------------------------------------------------


def test_statuses_classify_active_expiring_and_expired(clock: ManualClock) -> None:
    ag.bypass("budget:old", **_entry(expires="2026-06-01"))
    ag.bypass("budget:soon", **_entry(expires="2026-06-05"))
    ag.bypass("budget:later", **_entry(expires="2026-06-25"))
    clock.advance(days=1)
    states = {s.guard: s.state for s in bypasses.bypass_statuses()}
    assert states == {"budget:old": "expired", "budget:soon": "expiring", "budget:later": "active"}
    text = bypasses.render_bypasses()
    assert text.splitlines()[0] == (
        "bypasses: 1 active, 1 expiring within 7 days, 1 expired (guard back on)"
    )
    assert text.index("budget:old") < text.index("budget:soon") < text.index("budget:later")
    assert "expired: the guard is back on" in text


def test_unknown_uses_are_shown_as_unknown_not_zero(clock: ManualClock) -> None:
    ag.bypass("budget:run", **_entry())
    [status] = bypasses.bypass_statuses(count_uses=False)
    assert status.uses is None
    assert status.as_dict()["uses"] is None
    row = bypasses.render_bypasses([status]).splitlines()[2]
    assert re.search(r"\s-\s+OPS-123$", row)


def test_declared_guards_are_listed_from_modules(clock: ManualClock) -> None:
    import sys
    import types

    module = types.ModuleType("demo_tools")
    module.lookup = lookup  # type: ignore[attr-defined]
    sys.modules["demo_tools"] = module
    _guards.declare_guard("args:lookup.key", "Email() on demo_tools.lookup")
    found = _guards.guards_in_module(module)
    assert found == {"args:lookup": {"@tool_call demo_tools.lookup"}}
    assert _guards.declared_guards() == {"args:lookup.key": ("Email() on demo_tools.lookup",)}
    del sys.modules["demo_tools"]


# -- properties and stress --------------------------------------------------------------------

GUARDS = ["budget:run", "args:t.a", "args:t.b", "args:u.a", "checks:r.NotEmpty"]
PATTERNS = [*GUARDS, "args:t", "args:*", "args:*.a", "checks:r.*", "budget:r*"]


@settings(max_examples=150, deadline=None)
@given(
    entries=st.lists(
        st.tuples(st.sampled_from(PATTERNS), st.integers(min_value=0, max_value=29)),
        max_size=8,
    ),
    elapsed=st.integers(min_value=0, max_value=40 * 24),
    guard=st.sampled_from(GUARDS),
)
def test_lookup_returns_the_covering_entry_that_ends_last_and_none_after(
    entries: list[tuple[str, int]], elapsed: int, guard: str
) -> None:
    bypasses._reset_for_tests()
    clock = ManualClock()
    ag.configure(clock=clock)
    made = [
        ag.bypass(p, **_entry(expires=(T0.date() + timedelta(days=d)).isoformat()))
        for p, d in entries
    ]
    clock.advance(hours=elapsed)
    covering = [
        e
        for e in made
        if e.guard == guard
        or guard.startswith(e.guard + ".")
        or ("*" in e.guard and re.fullmatch(e.guard.replace(".", r"\.").replace("*", ".*"), guard))
    ]
    live = [e for e in covering if clock.now() < e.expires]
    found, expired = bypasses.lookup_bypass(guard)
    if live:
        assert found is not None and found.expires == max(e.expires for e in live)
        assert expired is None
    else:
        assert found is None
        assert (expired is not None) == bool(covering)
        assert bypasses.lookup_bypass(guard) == (None, None)  # the expiry alert fires once


@pytest.mark.slow
def test_bypassed_charges_from_many_threads_are_all_counted(clock: ManualClock) -> None:
    ag.bypass("budget:run", **_entry())

    @ag.tool_call(loop_limit=None)
    def work(i: int) -> int:
        return i

    with ag.BudgetPool(name="run", tool_calls=10, warn_at=None) as pool:
        bound = pool.bind(lambda: [work(i) for i in range(50)])
        threads = [threading.Thread(target=bound) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert pool.spent["tool_calls"] == 400
    assert bypasses.use_counts() == {"budget:run": 390}
    assert sum(1 for r in pool.ledger if r.kind == "bypass") == 390
