"""`agentguard audit`, `history` and `dead-letters`: what happened, readable after the fact."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import agentguard as ag
from agentguard import _audit
from agentguard.cli import main
from agentguard.store import SQLiteStore

PY = sys.executable


@ag.tool_call(loop_limit=None)
def search(q: int) -> int:
    if q < 0:
        raise LookupError("not found")
    return q


@ag.llm_call(route="draft", model="m")
def draft(tokens: int) -> str:
    ag.record_usage(input_tokens=tokens, output_tokens=0)
    return "draft"


@pytest.fixture
def busy_store(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> Iterator[Path]:
    """A store after a week of work: jobs, agent runs, an outlier, a stopped run."""
    path = tmp_path / "audit.db"
    for printed in ["Summary: 5 orders"] * 2 + [""]:
        main(["run", "--store", str(path), "--name", "daily-summary", "--", PY, "-c",
              f"print({printed!r})"])  # fmt: skip
    ag.configure(store=path, price=lambda model, usage: (usage.total or 0) * 1e-5)
    for _ in range(5):
        with ag.BudgetPool(name="support-agent"):
            search(1)
            draft(1000)
    with ag.BudgetPool(name="support-agent"):
        try:
            search(-1)
        except LookupError:
            pass
        draft(9000)  # a cost outlier, call and run
    with pytest.raises(ag.BudgetExceeded), ag.BudgetPool(name="support-agent", tool_calls=2):
        for i in range(5):
            search(i)
    ag.get_config().store.flush()
    ag.configure(store=None)
    capfd.readouterr()
    yield path


def test_audit_lists_jobs_runs_anomalies_outliers_dead_letters_and_routes(
    busy_store: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", "--store", str(busy_store)]) == 0
    out = capfd.readouterr().out
    assert "Scheduled jobs (agentguard run): 3 runs of 1 job, 1 not ok" in out
    assert "daily-summary" in out and "ANOMALY" in out
    assert "Agent runs (root budget pools): 7 runs of 1 pool" in out
    assert "Content anomalies: 1 anomaly, latest 1 shown" in out and "NotEmpty" in out
    assert "Cost outliers (a call or run above 5x its median): 4 outliers" in out
    assert "9.0x" in out
    assert "Dead letters (stopped runs, for review): 1 shown" in out
    assert "BudgetExceeded" in out
    route_lines = [ln.split() for ln in out.splitlines() if ln.strip().startswith("search ")]
    # calls, errors (rate), refused
    assert route_lines[0][1:5] == ["8", "1", "(12%)", "1"]  # 5 + 1 failed + 2, 1 refused
    assert "Bypasses" in out


def test_audit_as_json_for_machines(busy_store: Path, capfd: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "--store", str(busy_store), "--json", "--since", "all"]) == 0
    data = json.loads(capfd.readouterr().out)
    titles = [s["title"] for s in data["sections"]]
    assert titles[:3] == [
        "Scheduled jobs (agentguard run)",
        "Agent runs (root budget pools)",
        "Content anomalies",
    ]
    routes = next(s for s in data["sections"] if s["title"].startswith("Per-route"))
    assert {row[0] for row in routes["rows"]} == {"search", "draft"}


def test_audit_sections_can_be_added_by_other_modules(
    busy_store: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def retries(ctx: _audit.AuditContext) -> _audit.AuditSection:
        return _audit.AuditSection(
            title="Retries", columns=("ROUTE", "RATE"), rows=[("search", "12%")]
        )

    monkeypatch.setattr(_audit, "SECTION_PROVIDERS", list(_audit.SECTION_PROVIDERS))
    _audit.register_audit_section(retries)
    _audit.register_audit_section("agentguard.no_such_module:audit_section")
    assert main(["audit", "--store", str(busy_store)]) == 0
    out = capfd.readouterr().out
    assert "Retries" in out and "12%" in out
    assert "agentguard.no_such_module:audit_section: section unavailable" in out


def test_history_shows_runs_newest_first_and_the_medians(
    busy_store: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    assert main(["history", "daily-summary", "--store", str(busy_store)]) == 0
    out = capfd.readouterr().out.splitlines()
    assert out[0].startswith("daily-summary: last 3 runs")
    assert out[1].split()[:3] == ["STARTED", "STATUS", "EXIT"]
    assert "ANOMALY" in out[2] and "NotEmpty" in out[2]
    assert "length: median 17 over the last 2 healthy runs" in "\n".join(out)


def test_history_of_a_pool_shows_costs(busy_store: Path, capfd: pytest.CaptureFixture[str]) -> None:
    assert main(["history", "support-agent", "--store", str(busy_store), "--json"]) == 0
    data = json.loads(capfd.readouterr().out)
    assert len(data["runs"]) == 7
    assert data["runs"][0]["status"] == "stopped"
    assert len(data["history"]["run_cost_usd"]) == 6


def test_dead_letters_list_and_one_in_full(
    busy_store: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    assert main(["dead-letters", "--store", str(busy_store)]) == 0
    listing = capfd.readouterr().out
    assert "BudgetExceeded" in listing and "search" in listing
    assert main(["dead-letters", "--store", str(busy_store), "--id", "1"]) == 0
    full = capfd.readouterr().out
    assert "refused call: route=search" in full
    assert "support-agent [STOPPED] tool_calls 2/2" in full
    assert "last 4 ledger rows" in full or "ledger rows:" in full
    assert main(["dead-letters", "--store", str(busy_store), "--id", "99"]) == 1


def test_reports_on_a_missing_store_say_where_they_looked(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nothing.db"
    assert main(["audit", "--store", str(missing)]) == 1
    assert f"no store at {missing}" in capfd.readouterr().err
    assert not missing.exists()  # reading never creates a store


def test_bad_period_is_a_usage_error(busy_store: Path, capfd: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "--store", str(busy_store), "--since", "seven days"]) == 2
    assert "expected a number and a unit" in capfd.readouterr().err


def test_audit_reads_a_store_another_process_is_writing(
    busy_store: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    writer = SQLiteStore(busy_store)
    writer.history.add("k", "m", 1.0)  # an open writer connection does not block readers
    assert main(["audit", "--store", str(busy_store)]) == 0
    writer.close()
    assert "Scheduled jobs" in capfd.readouterr().out


def test_audit_shows_bypasses_with_uses_counted_from_the_store(
    busy_store: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from datetime import datetime, timedelta, timezone

    from agentguard import bypasses

    until = (datetime.now(timezone.utc) + timedelta(days=10)).date().isoformat()
    bypasses.bypass(
        "budget:support-agent", owner="ana", reason="launch week traffic", expires=until
    )
    assert main(["audit", "--store", str(busy_store)]) == 0
    out = capfd.readouterr().out
    section = out[out.index("Bypasses") :]
    assert "budget:support-agent" in section and "ana" in section
    assert "counted from the run store" in section
