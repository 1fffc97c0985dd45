"""The SQLite run store: write-behind ledger, history, dead letters, alerts, cost outliers."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import agentguard as ag
from agentguard import _config
from agentguard.store import SQLiteStore, _schema, default_store_path, open_store
from tests import otel

ROOT = Path(__file__).resolve().parent.parent


def python(code: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter with this worktree's agentguard."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + str(ROOT)
    env.pop("AGENTGUARD_STORE", None)
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"subprocess failed ({done.returncode}):\n{done.stderr}")
    return done


@ag.tool_call(loop_limit=None)
def lookup(n: int) -> int:
    return n


@ag.llm_call(route="summarize", model="test-model")
def summarize(tokens: int) -> str:
    ag.record_usage(input_tokens=tokens, output_tokens=0)
    return "summary"


def price(model: str, usage: ag.Usage) -> float:
    return (usage.total or 0) * 1e-5


# -- the file ----------------------------------------------------------------------------------


def test_store_file_and_directory_are_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "agentguard" / "agentguard.db"
    store = SQLiteStore(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert store.schema_version == _schema.LATEST
    mode = store._read("PRAGMA journal_mode")[0][0]
    assert mode == "wal"
    store.close()


def test_default_path_is_under_the_state_directory_and_env_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AGENTGUARD_STORE", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert default_store_path() == tmp_path / "xdg" / "agentguard" / "agentguard.db"
    monkeypatch.setenv("AGENTGUARD_STORE", str(tmp_path / "elsewhere.db"))
    assert default_store_path() == tmp_path / "elsewhere.db"


def test_agentguard_store_env_turns_the_store_on_at_import(tmp_path: Path) -> None:
    path = tmp_path / "env.db"
    env_code = f"""
        import os
        os.environ["AGENTGUARD_STORE"] = {str(path)!r}
        import agentguard as ag
        assert ag.get_config().store is not None, "AGENTGUARD_STORE was ignored"
        with ag.BudgetPool(name="env-run"):
            ag.charge(tool_calls=1)
    """
    python(env_code)
    store = SQLiteStore(path)
    assert [r.name for r in store.runs()] == ["env-run"]
    store.close()


def test_configure_store_rejects_what_is_not_a_store() -> None:
    with pytest.raises(ag.ConfigurationError, match="expected a path"):
        ag.configure(store=42)
    with pytest.raises(ag.StoreError, match="memory"):
        SQLiteStore(":memory:")


def test_configure_store_accepts_a_path_or_an_instance(tmp_path: Path) -> None:
    ag.configure(store=str(tmp_path / "a.db"))
    assert isinstance(ag.get_config().store, SQLiteStore)
    mine = SQLiteStore(tmp_path / "b.db")
    ag.configure(store=mine)
    assert ag.get_config().store is mine
    assert open_store(mine) is mine


# -- migrations -------------------------------------------------------------------------------


def test_store_written_by_schema_v1_is_migrated_without_losing_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    assert _schema.migrate(conn, str(path), target=1) == 1
    conn.execute(
        "INSERT INTO runs(run_id, kind, name, started, status) VALUES ('r1', 'job', 'old', 1, 'ok')"
    )
    conn.close()
    store = SQLiteStore(path, retention_days=None)
    assert store.schema_version == _schema.LATEST == 2
    [run] = store.runs("old")
    assert run.run_id == "r1" and run.command is None
    store.close()


def test_store_from_a_newer_agentguard_is_refused_not_misread(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    SQLiteStore(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("INSERT INTO schema_version(version, applied) VALUES (99, 0)")
    conn.close()
    with pytest.raises(ag.StoreError, match="schema version 99"):
        SQLiteStore(path)


# -- write-behind ledger ------------------------------------------------------------------------


def test_guarded_calls_do_not_write_to_disk_until_the_flush(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db", flush_interval=3600)
    ag.configure(store=store)
    with ag.BudgetPool(name="long-run") as pool:
        for i in range(50):
            lookup(i)
        on_disk = store._read("SELECT COUNT(*) FROM ledger")[0][0]
        assert on_disk == 0, "a guarded call wrote to disk synchronously"
        # a query sees everything: it writes the pending rows first
        assert len(store.ledger(pool.run_id)) == 50
    assert store._read("SELECT COUNT(*) FROM ledger")[0][0] == 50


def test_run_end_flushes_its_rows_and_records_the_run(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db", flush_interval=3600)
    ag.configure(store=store, price=price)
    with ag.BudgetPool(name="agent") as pool, ag.BudgetPool(name="sub"):
        lookup(1)
        summarize(100)
    rows = SQLiteStore(tmp_path / "s.db").ledger(pool.run_id)  # another reader, same file
    assert [(r.kind, r.pool_path, r.outcome) for r in rows] == [
        ("tool", "agent/sub", "ok"),
        ("llm", "agent/sub", "ok"),
    ]
    assert rows[1].amounts["cost_usd"] == pytest.approx(1e-3)
    [run] = store.runs("agent")
    assert run.status == "ok" and run.llm_calls == 1 and run.tool_calls == 1
    assert run.cost_usd == pytest.approx(1e-3) and run.tokens == 100


def test_long_run_memory_stays_bounded_and_the_store_has_every_row(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db", flush_interval=3600, keep_ledger_rows=100)
    ag.configure(store=store)
    with ag.BudgetPool(name="long") as pool:
        for round_ in range(5):
            for i in range(400):
                lookup(i)
            store.flush()
            assert len(pool._ledger) <= 100, f"round {round_}"
        assert len(pool.ledger) == 100  # the in-memory view is the tail
    assert len(store.ledger(pool.run_id)) == 2000


def test_without_a_store_the_in_memory_ledger_stays_complete() -> None:
    with ag.BudgetPool(name="no-store") as pool:
        for i in range(12_000):
            lookup(i)
    assert len(pool.ledger) == 12_000


NO_ROW_LOST = """
import sys, agentguard as ag
from agentguard.store import SQLiteStore
ag.configure(store=SQLiteStore(sys.argv[1], flush_interval=3600))
@ag.tool_call(loop_limit=None)
def work(i):
    return i
mode = sys.argv[2]
if mode == "default-pool":
    ag.configure(default_pool=ag.BudgetPool(name="default"))
    for i in range(1000):
        work(i)
    raise SystemExit(0)
if mode == "raise-outside":
    ag.configure(default_pool=ag.BudgetPool(name="default"))
    for i in range(1000):
        work(i)
    raise RuntimeError("the job crashed")
with ag.BudgetPool(name="crashing"):
    for i in range(1000):
        work(i)
    raise RuntimeError("the job crashed inside its run")
"""


@pytest.mark.parametrize("mode", ["default-pool", "raise-outside", "raise-inside"])
def test_normal_exit_and_exit_by_exception_lose_no_ledger_row(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "s.db"
    done = python(NO_ROW_LOST, str(path), mode, check=False)
    assert done.returncode == (0 if mode == "default-pool" else 1), done.stderr
    store = SQLiteStore(path)
    rows = store.ledger(kind="tool")
    assert len(rows) == 1000
    assert sorted({r.outcome for r in rows}) == ["ok"]
    if mode == "raise-inside":
        [run] = store.runs("crashing")
        assert run.status == "error" and run.detail["error.type"] == "RuntimeError"
    store.close()


def test_store_failure_is_reported_and_never_breaks_the_run(
    tmp_path: Path, agentguard_logs: pytest.LogCaptureFixture
) -> None:
    _, reader = otel.install()
    store = SQLiteStore(tmp_path / "s.db", flush_interval=3600)
    ag.configure(store=store)
    store._connection().execute("PRAGMA query_only=ON")  # every write now fails in SQLite
    before = otel.counter_total(reader, "agentguard.store.errors")
    with ag.BudgetPool(name="r") as pool:
        lookup(1)
    assert otel.counter_total(reader, "agentguard.store.errors") == before + 1
    assert any(
        "could not record the run" in r.getMessage() and r.levelno == logging.ERROR
        for r in agentguard_logs.records
    )
    assert len(pool._ledger) == 1  # still pending, retried on the next flush
    store._connection().execute("PRAGMA query_only=OFF")
    store.flush()
    assert len(store.ledger(pool.run_id)) == 1


# -- dead letters and alerts ---------------------------------------------------------------------


def test_stopped_pool_writes_a_dead_letter_with_tree_refused_call_and_ledger_tail(
    tmp_path: Path, captured_alerts: list[ag.Alert]
) -> None:
    ag.configure(store=tmp_path / "s.db")
    store = ag.get_config().store
    with pytest.raises(ag.BudgetExceeded), ag.BudgetPool(name="agent", tool_calls=3) as pool:
        with ag.BudgetPool(name="researcher"):
            for i in range(10):
                lookup(i)
    [letter] = store.dead_letters()
    assert letter.run_id == pool.run_id and letter.pool == "agent"
    assert letter.error_type == "BudgetExceeded" and "tool_calls" in letter.message
    assert letter.refused["route"] == "lookup"
    assert letter.refused["charged_pool"] == "agent/researcher"
    assert letter.refused["dimension"] == "tool_calls" and letter.refused["limit"] == 3
    assert letter.snapshot["name"] == "agent" and letter.snapshot["stopped"] is True
    assert letter.snapshot["children"][0]["name"] == "researcher"
    outcomes = [r["outcome"] for r in letter.ledger_tail]
    assert outcomes.count("ok") == 3 and "refused" in outcomes
    assert "budget.stopped" in [a.kind for a in captured_alerts]
    [run] = store.runs("agent")
    assert run.status == "stopped"


def test_every_alert_is_a_ledger_row_in_the_store(tmp_path: Path) -> None:
    ag.configure(store=tmp_path / "s.db")
    store = ag.get_config().store
    with ag.BudgetPool(name="warned", tool_calls=10, warn_at=0.5) as pool:
        for i in range(6):
            lookup(i)
    ag.alerts.emit_alert(ag.Alert(kind="custom.check", message="outside any pool"))
    kinds = [(r.outcome, r.run_id) for r in store.alerts()]
    assert ("budget.warn", pool.run_id) in kinds
    assert ("custom.check", "") in kinds
    [warn] = store.alerts(kind="budget.warn")
    assert warn.detail is not None and warn.detail["guard_id"] == "budget:warned"
    assert warn.detail["data"]["limit"] == 10


def test_ledger_rows_hold_no_argument_values(tmp_path: Path) -> None:
    ag.configure(store=tmp_path / "s.db")
    store = ag.get_config().store

    @ag.tool_call
    def send(email: str) -> None:
        raise ValueError(f"bounced: {email}")

    with pytest.raises(ValueError), ag.BudgetPool(name="p"):
        send("alice@example.com")
    store.flush()
    dump = "\n".join(store._connection().iterdump())
    assert "alice@example.com" not in dump


# -- cost outliers ----------------------------------------------------------------------------


def test_call_costing_five_times_its_median_alerts_at_once(
    tmp_path: Path, captured_alerts: list[ag.Alert]
) -> None:
    ag.configure(store=tmp_path / "s.db", price=price)
    with ag.BudgetPool(name="agent"):
        for _ in range(5):
            summarize(1000)
        assert not [a for a in captured_alerts if a.kind == "cost.outlier"]
        summarize(6000)
        # fired during the call, before the run ended
        outliers = [a for a in captured_alerts if a.kind == "cost.outlier"]
        assert {a.data["measure"] for a in outliers} == {"cost", "tokens"}
        cost = next(a for a in outliers if a.data["measure"] == "cost")
        assert cost.route == "summarize" and cost.data["scope"] == "call"
        assert cost.data["ratio"] == pytest.approx(6.0)
        assert "6.0x the median" in cost.message
    assert len(ag.get_config().store.alerts(kind="cost.outlier")) == 2


def test_no_cost_outlier_before_enough_history(
    tmp_path: Path, captured_alerts: list[ag.Alert]
) -> None:
    ag.configure(store=tmp_path / "s.db", price=price)
    with ag.BudgetPool(name="agent"):
        summarize(10)
        summarize(10_000)
    assert not [a for a in captured_alerts if a.kind == "cost.outlier"]


def test_cost_history_survives_the_process(tmp_path: Path, captured_alerts: list[ag.Alert]) -> None:
    path = tmp_path / "s.db"
    python(
        """
        import sys, agentguard as ag
        ag.configure(store=sys.argv[1], price=lambda m, u: u.total * 1e-5)
        @ag.llm_call(route="summarize", model="test-model")
        def summarize(n):
            ag.record_usage(input_tokens=n, output_tokens=0)
            return "s"
        for _ in range(5):
            with ag.BudgetPool(name="nightly"):
                summarize(1000)
        """,
        str(path),
    )
    ag.configure(store=path, price=price)
    with ag.BudgetPool(name="nightly"):
        summarize(20_000)
        scopes = {(a.data["scope"], a.data["measure"]) for a in captured_alerts}
        # the call and the run so far are both 20x their medians from the earlier processes
        assert scopes == {("call", "cost"), ("call", "tokens"), ("run", "cost"), ("run", "tokens")}


def test_run_costing_five_times_its_median_alerts_while_still_going(
    tmp_path: Path, captured_alerts: list[ag.Alert]
) -> None:
    ag.configure(store=tmp_path / "s.db", price=price)
    for _ in range(5):
        with ag.BudgetPool(name="nightly"):
            summarize(1000)  # each run: $0.01
    with ag.BudgetPool(name="nightly") as run:
        for i in range(8):
            summarize(1000)  # each call is normal; the run is not
            if i == 4:
                alerts = [a for a in captured_alerts if a.data.get("scope") == "run"]
                assert [a.data["measure"] for a in alerts] == []  # 5x: not above yet
        alerts = [a for a in captured_alerts if a.data.get("scope") == "run"]
        assert {a.data["measure"] for a in alerts} == {"cost", "tokens"}
        assert all(a.run_id == run.run_id for a in alerts)
        assert "still going" in alerts[0].message
    # closing the run does not alert a second time
    assert len([a for a in captured_alerts if a.data.get("scope") == "run"]) == 2


# -- history and concurrency ----------------------------------------------------------------------


def test_history_window_is_pruned_on_insert(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db", history_window=10)
    for v in range(25):
        store.history.add("job", "length", v)
    assert store.history.values("job", "length") == [float(v) for v in range(15, 25)]
    assert store._read("SELECT COUNT(*) FROM history")[0][0] == 10
    store.close()


WRITER = """
import sys, agentguard as ag
from agentguard.store import SQLiteStore
store = SQLiteStore(sys.argv[1], history_window=10_000, flush_interval=0.01)
ag.configure(store=store)
me = int(sys.argv[2])
@ag.tool_call(loop_limit=None)
def work(i):
    return i
with ag.BudgetPool(name=f"writer-{me}"):
    for i in range(100):
        store.history.add("shared-job", "length", me * 1000 + i)
        store.history.add(f"job-{me}", "duration", i)
        work(i)
"""


@pytest.mark.slow
def test_eight_processes_writing_the_same_store_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    env.pop("AGENTGUARD_STORE", None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(n)],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(8)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    store = SQLiteStore(path, history_window=10_000)
    shared = store.history.values("shared-job", "length")
    assert sorted(shared) == sorted(float(n * 1000 + i) for n in range(8) for i in range(100))
    for n in range(8):
        assert len(store.history.values(f"job-{n}", "duration")) == 100
    assert len(store.ledger(kind="tool")) == 800
    assert len(store.runs(kind="pool")) == 8
    store.close()


def test_store_is_reopened_after_fork(tmp_path: Path) -> None:
    if not hasattr(os, "fork"):
        pytest.skip("no fork on this platform")
    store = SQLiteStore(tmp_path / "s.db")
    store.history.add("k", "m", 1)
    code = python(
        """
        import os, sys
        from agentguard.store import SQLiteStore
        store = SQLiteStore(sys.argv[1])
        store.history.add("k", "m", 2)
        pid = os.fork()
        if pid == 0:
            store.history.add("k", "m", 3)  # the child must not reuse the parent's connection
            os._exit(0)
        os.waitpid(pid, 0)
        store.history.add("k", "m", 4)
        """,
        str(tmp_path / "s.db"),
    )
    assert code.returncode == 0
    assert sorted(store.history.values("k", "m")) == [1.0, 2.0, 3.0, 4.0]
    store.close()


def test_closed_store_says_so(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    store.close()
    with pytest.raises(ag.StoreError, match="closed"):
        store.history.values("k", "m")


def test_writer_thread_stops_when_the_store_is_replaced(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db", flush_interval=0.01)
    ag.configure(store=store)
    writer = store._writer
    assert writer is not None and writer.is_alive()
    with ag.BudgetPool(name="before-replace"):
        lookup(1)
    _config.configure(store=None)
    writer.join(timeout=10)
    assert not writer.is_alive()


def test_raw_sdk_calls_under_instrument_reach_the_cost_outlier_watch(
    tmp_path: Path, captured_alerts: list[ag.Alert]
) -> None:
    from tests.sdk_mock import USAGE_IN, USAGE_OUT, Provider

    store = SQLiteStore(tmp_path / "s.db")
    for _ in range(5):
        store.history.add("openai.chat.completions", "call_tokens", 1.0)
    ag.configure(store=store)
    ag.instrument(openai=True)
    try:
        client = Provider().openai()
        with ag.BudgetPool(name="sdk-run"):
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
    finally:
        ag.uninstrument()
    [alert] = [a for a in captured_alerts if a.kind == "cost.outlier"]
    assert alert.route == "openai.chat.completions"
    assert alert.data["value"] == USAGE_IN + USAGE_OUT and alert.data["median"] == 1.0


def test_a_transaction_interrupted_midway_leaves_nothing_half_written(tmp_path: Path) -> None:
    from agentguard.store import _schema

    conn = sqlite3.connect(tmp_path / "t.db", isolation_level=None)
    conn.execute("CREATE TABLE t (x INTEGER)")
    with pytest.raises(KeyboardInterrupt):
        with _schema.immediate(conn):
            conn.execute("INSERT INTO t VALUES (1)")
            raise KeyboardInterrupt  # even a Ctrl-C between two statements
    assert not conn.in_transaction
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
    with _schema.immediate(conn):
        conn.execute("INSERT INTO t VALUES (2)")
    assert conn.execute("SELECT x FROM t").fetchall() == [(2,)]
    conn.close()
