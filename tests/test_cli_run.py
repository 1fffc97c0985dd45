"""`agentguard run`: exit status and content are two signals; every catalog variant fails."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentguard import _config
from agentguard._jobs import EXIT_CHECK_FAILED
from agentguard.cli import main
from agentguard.store import SQLiteStore

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


class StepClock(_config.Clock):
    """A clock whose monotonic() returns the given readings in turn (the runner reads two)."""

    def __init__(self, *readings: float) -> None:
        self.readings = list(readings)

    def monotonic(self) -> float:
        return self.readings.pop(0) if len(self.readings) > 1 else self.readings[0]


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "jobs.db"


def seed(store_path: Path, name: str, *, length: float = 200, duration: float = 1.0) -> None:
    """Five healthy earlier runs of `name` in the job's history."""
    store = SQLiteStore(store_path)
    for _ in range(5):
        store.history.add(name, "length", length)
        store.history.add(name, "duration", duration)
    store.close()


def run(store_path: Path, *args: str) -> int:
    return main(["run", "--store", str(store_path), *args])


def verdict(err: str) -> dict[str, object]:
    line = [ln for ln in err.splitlines() if ln.startswith('{"agentguard": "run"')][-1]
    data: dict[str, object] = json.loads(line)
    return data


@pytest.fixture
def steady_clock() -> Iterator[None]:
    """Duration 1.0s for every run, so duration never interferes with the content checks."""
    restore = _config._set_clock(StepClock(0.0, 1.0))
    yield
    restore()


SUMMARY_JOB = """
import sys
rows = [] if "broken" in sys.argv else [f"order {i}: 12.50 EUR" for i in range(8)]
body = "\\n".join(rows)
if rows:
    print("Summary:", len(rows), "orders")
print(body)
"""


def test_summary_job_with_rows_empty_fails_although_it_exits_0(
    store_path: Path, capfd: pytest.CaptureFixture[str], steady_clock: None
) -> None:
    seed(store_path, "daily-summary")
    code = run(
        store_path, "--name", "daily-summary", "--expect", "^Summary:", "--json",
        "--", PY, "-c", SUMMARY_JOB, "broken",
    )  # fmt: skip
    out, err = capfd.readouterr()
    assert code == EXIT_CHECK_FAILED == 3
    v = verdict(err)
    assert v["status"] == "anomaly" and v["command_exit"] == 0
    checks = [a["check"] for a in v["anomalies"]]  # type: ignore[attr-defined]
    assert checks == ["NotEmpty", "LengthVsMedian", "ExpectedPattern"]
    assert out == "\n"  # the output was passed through unchanged


def test_healthy_summary_job_passes_and_grows_the_history(
    store_path: Path, capfd: pytest.CaptureFixture[str], steady_clock: None
) -> None:
    seed(store_path, "daily-summary")
    code = run(
        store_path, "--name", "daily-summary", "--expect", "^Summary:", "--", PY, "-c", SUMMARY_JOB
    )
    out, err = capfd.readouterr()
    assert code == 0, err
    assert out.startswith("Summary: 8 orders\n")
    assert "daily-summary OK" in err.splitlines()[-1]
    store = SQLiteStore(store_path)
    assert len(store.history.values("daily-summary", "length")) == 6
    [r] = store.runs("daily-summary")
    assert r.status == "ok" and r.exit_code == 0 and r.kind == "job"
    store.close()


@pytest.mark.parametrize(
    ("printed", "check"),
    [
        ('{"results": []}', "NotEmpty"),
        ("<no rows>", "NotEmpty"),
        ("Summary: 3\nTraceback (most recent call last):\n  KeyError: 'x'", "NoErrorKeywords"),
    ],
    ids=["http-200-empty-results", "no-rows-placeholder", "traceback-in-stdout"],
)
def test_exit_0_with_unusable_output_exits_3(
    store_path: Path, capfd: pytest.CaptureFixture[str], printed: str, check: str
) -> None:
    code = run(store_path, "--name", "job", "--json", "--", PY, "-c", f"print({printed!r})")
    _, err = capfd.readouterr()
    assert code == 3
    v = verdict(err)
    assert check in [a["check"] for a in v["anomalies"]]  # type: ignore[attr-defined]


def test_zero_byte_backup_file_exits_3(
    store_path: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    backup = tmp_path / "backup.tar.gz"
    job = f"open({str(backup)!r}, 'wb').close(); print('backup uploaded')"
    code = run(store_path, "--name", "backup", "--output-file", str(backup), "--", PY, "-c", job)
    _, err = capfd.readouterr()
    assert code == 3
    assert "is 0 bytes" in err.splitlines()[-1]


def test_snapshot_never_written_exits_3(
    store_path: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    snapshot = tmp_path / "snapshot.json"
    job = "import sys; print('disk full, snapshot skipped', file=sys.stderr)"
    code = run(store_path, "--name", "snap", "--output-file", str(snapshot), "--", PY, "-c", job)
    _, err = capfd.readouterr()
    assert code == 3
    assert "was never written" in err.splitlines()[-1]


def test_stale_snapshot_left_by_an_earlier_run_exits_3(
    store_path: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    snapshot = tmp_path / "snapshot.json"
    snapshot.write_text('{"rows": [1, 2, 3]}')
    old = time.time() - 86400
    os.utime(snapshot, (old, old))
    code = run(store_path, "--name", "snap", "--output-file", str(snapshot), "--", PY, "-c", "0")
    _, err = capfd.readouterr()
    assert code == 3
    assert "not written by this run" in err.splitlines()[-1]


def test_output_file_shorter_than_usual_exits_3(
    store_path: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str], steady_clock: None
) -> None:
    seed(store_path, "export", length=10_000)
    out_file = tmp_path / "export.csv"
    job = f"open({str(out_file)!r}, 'w').write('id,name\\n1,a\\n')"
    code = run(store_path, "--name", "export", "--output-file", str(out_file), "--", PY, "-c", job)
    _, err = capfd.readouterr()
    assert code == 3
    assert "LengthVsMedian" in err.splitlines()[-1]


def test_job_ten_times_slower_than_usual_exits_3(
    store_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    seed(store_path, "slow-job", length=3, duration=1.0)
    restore = _config._set_clock(StepClock(100.0, 110.0))  # this run: 10 s, usual: 1 s
    try:
        code = run(store_path, "--name", "slow-job", "--json", "--", PY, "-c", "print('yes')")
    finally:
        restore()
    _, err = capfd.readouterr()
    assert code == 3
    v = verdict(err)
    [anomaly] = v["anomalies"]  # type: ignore[misc]
    assert anomaly["check"] == "DurationVsMedian"
    assert "10.0x the median 1s" in anomaly["reason"]


def test_failed_command_keeps_its_exit_code_and_content_is_still_checked(
    store_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    code = run(store_path, "--name", "crash", "--json", "--", PY, "-c", "import sys; sys.exit(7)")
    _, err = capfd.readouterr()
    assert code == 7
    v = verdict(err)
    assert v["status"] == "failed" and v["command_exit"] == 7
    assert [a["check"] for a in v["anomalies"]] == ["NotEmpty"]  # type: ignore[attr-defined]


def test_command_not_found_exits_127(store_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    code = run(store_path, "--name", "typo", "--", "no-such-command-agentguard")
    _, err = capfd.readouterr()
    assert code == 127
    assert "could not be started" in err.splitlines()[-1]


def test_no_command_is_a_usage_error(store_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    assert run(store_path, "--name", "x") == 2
    assert "no command given" in capfd.readouterr().err


def test_history_of_a_job_needs_healthy_runs_before_comparing(
    store_path: Path, capfd: pytest.CaptureFixture[str], steady_clock: None
) -> None:
    code = run(store_path, "--name", "new-job", "--json", "--", PY, "-c", "print('x' * 10)")
    _, err = capfd.readouterr()
    assert code == 0
    notes = verdict(err)["notes"]
    assert any("too little history for 'new-job' (0 of 5" in n for n in notes)  # type: ignore[attr-defined]
    # a broken run does not count as history
    code = run(store_path, "--name", "new-job", "--", PY, "-c", "print()")
    capfd.readouterr()
    assert code == 3
    store = SQLiteStore(store_path)
    assert store.history.values("new-job", "length") == [10.0]
    store.close()


def test_anomalies_of_a_job_are_ledger_rows_and_alerts_in_the_store(
    store_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    assert run(store_path, "--name", "empty", "--", PY, "-c", "print('<no rows>')") == 3
    capfd.readouterr()
    store = SQLiteStore(store_path)
    [r] = store.runs("empty")
    rows = store.ledger(r.run_id)
    assert [(x.kind, x.outcome) for x in rows] == [
        ("anomaly", "anomaly"),
        ("alert", "content.anomaly"),
    ]
    store.close()


# -- real processes: passthrough, memory, signals ----------------------------------------------


def cli_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    env.pop("AGENTGUARD_STORE", None)
    return env


def test_output_passes_through_byte_for_byte(store_path: Path) -> None:
    payload = bytes(range(256)) * 300 + b"\nSummary: binary ok\n"
    job = (
        "import sys; out = sys.stdout.buffer;"
        " out.write(bytes(range(256)) * 300 + b'\\nSummary: binary ok\\n');"
        " sys.stderr.write('log line\\n')"
    )
    done = subprocess.run(
        [PY, "-m", "agentguard", "run", "--store", str(store_path), "--name", "bin",
         "--no-error-keywords", "--", PY, "-c", job],
        capture_output=True, env=cli_env(), timeout=60, check=False,
    )  # fmt: skip
    assert done.stdout == payload
    assert done.stderr.startswith(b"log line\n")
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_200_mb_output_streams_through_in_bounded_memory(store_path: Path) -> None:
    """The runner holds chunks, never the output: its peak RSS stays far below 200 MB."""
    generator = (
        "import sys\n"
        "line = b'x' * 1023 + b'\\n'\n"
        "block = line * 1024\n"
        "for _ in range(200): sys.stdout.buffer.write(block)\n"
        "sys.stdout.buffer.write(b'Summary: done\\n')\n"
    )
    runner = (
        "import resource, sys\n"
        "from agentguard.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "try:\n"  # VmHWM: this process's own peak; ru_maxrss also counts the pre-exec image
        "    status = open('/proc/self/status').read().split('\\n')\n"
        "    peak = int([ln for ln in status if ln.startswith('VmHWM')][0].split()[1])\n"
        "except OSError:\n"
        "    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print('PEAK_KB', peak, 'EXIT', code, file=sys.stderr)\n"
    )
    done = subprocess.run(
        [PY, "-c", runner, "run", "--store", str(store_path), "--name", "big", "--json",
         "--expect", "^Summary: done", "--", PY, "-c", generator],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=cli_env(),
        timeout=240, check=False,
    )  # fmt: skip
    tail = done.stderr.strip().splitlines()
    peak_kb = int(tail[-1].split()[1])
    v = json.loads(tail[-2])
    assert v["stdout_bytes"] == 200 * 1024 * 1024 + len(b"Summary: done\n")
    assert v["status"] == "ok", v
    unit = 1024 if sys.platform == "darwin" else 1  # macOS reports bytes
    assert peak_kb / unit < 120 * 1024, f"peak RSS {peak_kb / unit / 1024:.0f} MB"


SIGNAL_JOB = """
import signal, sys, time
def stop(signum, frame):
    print("child got", signal.Signals(signum).name, flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
print("ready", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_are_forwarded_to_the_job(store_path: Path, sig: signal.Signals) -> None:
    proc = subprocess.Popen(
        [PY, "-m", "agentguard", "run", "--store", str(store_path), "--name", "sig",
         "--", PY, "-c", SIGNAL_JOB],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(), text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert out == f"child got {sig.name}\n"
    assert proc.returncode == 128 + sig
    assert "INTERRUPTED" in err and sig.name in err
    store = SQLiteStore(store_path)
    [r] = store.runs("sig")
    assert r.status == "interrupted"
    store.close()
