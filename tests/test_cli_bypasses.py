"""`agentguard bypasses` / `agentguard guards`, run as the real command in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import agentguard as ag
from agentguard import _cli_bypasses, bypasses

SRC = Path(__file__).resolve().parents[1] / "src"
TODAY = datetime.now(timezone.utc).date()


def day(offset: int) -> str:
    return (TODAY + timedelta(days=offset)).isoformat()


def entry(guard: str, expires: str, **extra: str) -> str:
    fields = {
        "guard": guard,
        "owner": "ana@example.com",
        "reason": "model sends names until prompt v7",
        **extra,
    }
    body = "".join(f'{k} = "{v}"\n' for k, v in fields.items())
    return f"[[bypass]]\n{body}expires = {expires}\n\n"


def agentguard(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run(
        [sys.executable, "-m", "agentguard", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "demo"\n')  # stops the search
    return tmp_path


def test_check_passes_when_every_entry_is_active(project: Path) -> None:
    (project / "agentguard.toml").write_text(entry("budget:nightly", day(20), ticket="OPS-1"))
    result = agentguard(project, "bypasses", "--check")
    assert result.returncode == _cli_bypasses.EXIT_OK == 0, result.stderr
    assert "1 active, 0 expiring within 7 days, 0 expired" in result.stdout
    assert "budget:nightly" in result.stdout and "OPS-1" in result.stdout
    assert "USES: unknown here, no run store is configured" in result.stdout


def test_check_fails_when_an_entry_expires_within_a_week(project: Path) -> None:
    (project / "agentguard.toml").write_text(
        entry("budget:nightly", day(20)) + entry("args:escalate_to_human.user_id", day(3))
    )
    result = agentguard(project, "bypasses", "--check")
    assert result.returncode == _cli_bypasses.EXIT_CHECK_FAILED == 1
    assert "args:escalate_to_human.user_id (expiring, owner ana@example.com)" in result.stderr
    assert agentguard(project, "bypasses", "--check", "--warn-days", "2").returncode == 0


def test_check_fails_on_an_expired_entry_but_listing_alone_succeeds(project: Path) -> None:
    (project / "agentguard.toml").write_text(
        entry("args:escalate_to_human.user_id", day(-12), created=day(-30))
        + entry("args:escalate_to_human.user_id", day(-2))
    )
    listing = agentguard(project, "bypasses")
    assert listing.returncode == 0, listing.stderr
    assert "EXPIRED" in listing.stdout and "renewed 1x" in listing.stdout
    assert "expired: the guard is back on" in listing.stdout
    row = next(line for line in listing.stdout.splitlines() if line.startswith("EXPIRED"))
    assert "1d ago" in row and "30d" in row  # ended with day -2 (UTC); age since day -30
    check = agentguard(project, "bypasses", "--check")
    assert check.returncode == 1
    assert "expired, owner ana@example.com" in check.stderr


def test_malformed_entry_exits_2_and_says_what_to_fix(project: Path) -> None:
    (project / "agentguard.toml").write_text(
        f'[[bypass]]\nguard = "budget:nightly"\nreason = "black friday spike"\nexpires = {day(5)}\n'
    )
    result = agentguard(project, "bypasses", "--check")
    assert result.returncode == _cli_bypasses.EXIT_INVALID == 2
    assert "entry 1 (guard 'budget:nightly'): owner is missing" in result.stderr
    assert "Fix:" in result.stderr


def test_entry_past_the_horizon_exits_2(project: Path) -> None:
    (project / "agentguard.toml").write_text(entry("budget:nightly", day(90)))
    result = agentguard(project, "bypasses")
    assert result.returncode == 2
    assert "past the horizon of 30 days" in result.stderr


def test_no_file_means_every_guard_is_on(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "demo"\n')
    result = agentguard(tmp_path, "bypasses", "--check")
    assert result.returncode == 0, result.stderr
    assert "none registered (every guard is on)" in result.stdout


def test_json_output_from_pyproject(project: Path) -> None:
    (project / "pyproject.toml").write_text(
        '[project]\nname = "demo"\n\n[tool.agentguard]\n\n'
        + entry("budget:nightly", day(4), ticket="OPS-7").replace(
            "[[bypass]]", "[[tool.agentguard.bypass]]"
        )
    )
    result = agentguard(project, "bypasses", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["expiring"] == 1 and data["expired"] == 0
    [item] = data["bypasses"]
    assert item["guard"] == "budget:nightly" and item["ticket"] == "OPS-7"
    assert item["state"] == "expiring" and item["uses"] is None
    assert item["source"].endswith("pyproject.toml")


GUARDED_MODULE = """
import agentguard as ag
from agentguard._guards import declare_guard

@ag.tool_call
def escalate_to_human(user_id: str) -> str:
    return user_id

declare_guard("args:escalate_to_human.user_id", "Resolves(users) on mytools.escalate_to_human")

ag.bypass(
    "args:escalate_to_human.user_id",
    owner="ana@example.com",
    reason="model sends names until prompt v7",
    expires="{expires}",
)
"""


def test_guards_lists_declared_ids_and_their_bypasses(project: Path) -> None:
    (project / "mytools.py").write_text(GUARDED_MODULE.format(expires=day(10)))
    (project / "agentguard.toml").write_text(entry("args:escalate_to_humn.user_id", day(5)))
    result = agentguard(project, "guards", "-m", "mytools")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    tool = next(line for line in lines if line.startswith("args:escalate_to_human "))
    arg = next(line for line in lines if line.startswith("args:escalate_to_human.user_id"))
    assert "@tool_call mytools.escalate_to_human" in tool and "on" in tool
    assert "BYPASSED until" in arg and "ana@example.com" in arg
    assert "no run store configured" in result.stdout
    assert "cover none of these guards: args:escalate_to_humn.user_id" in result.stdout
    # the same module's ag.bypass() entries show up in `bypasses -m`
    listing = agentguard(project, "bypasses", "-m", "mytools")
    assert "args:escalate_to_human.user_id" in listing.stdout and "source: code" in listing.stdout


def test_unknown_module_exits_2(project: Path) -> None:
    result = agentguard(project, "guards", "-m", "no_such_module_here")
    assert result.returncode == 2
    assert "cannot import module 'no_such_module_here'" in result.stderr


class LedgerOf:
    """The store's read contract (`ledger(kind=..., limit=...)`) over a real pool's ledger.

    (Stands in for the SQLite store until it lands in this branch; the rows are real.)
    """

    def __init__(self, pool: ag.BudgetPool) -> None:
        self.pool = pool

    def ledger(self, kind: str | None = None, limit: int | None = None) -> list[ag.LedgerRow]:
        rows = [r for r in self.pool.ledger if kind is None or r.kind == kind]
        return rows[-limit:] if limit else rows


def test_uses_and_guard_ids_are_read_from_the_store_ledger() -> None:
    expires = day(10)
    ag.bypass("budget:nightly", owner="ops", reason="black friday spike", expires=expires)

    @ag.tool_call
    def fetch(key: str) -> str:
        return key

    with ag.BudgetPool(name="nightly", tool_calls=1, warn_at=None) as pool:
        for key in "abc":
            fetch(key)
    store = LedgerOf(pool)
    bypasses._reset_for_tests()  # a new process: no in-process counters
    counts, note = _cli_bypasses.store_use_counts(store)
    assert counts == {"budget:nightly": 2}
    assert "run store's ledger" in note
    ids, _ = _cli_bypasses._ledger_guard_ids(store)
    assert ids == {"budget:nightly"}
