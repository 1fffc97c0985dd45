"""The job runner behind `agentguard run`: exit status and output content, two signals.

The command's stdout and stderr are streamed through unchanged (64 KiB chunks) while the
checks' scanners read them, so memory stays bounded whatever the output's size. After the
command exits, the verdict combines its exit status with the content checks (present, length
vs the job's median, expected patterns, error keywords, duration vs median, and an output
file when the job writes one); the run is recorded in the store and history grows only from
healthy runs.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from . import _config, telemetry
from .checks import (
    DEFAULT_ERROR_PATTERNS,
    METRIC_DURATION,
    METRIC_LENGTH,
    Anomaly,
    Check,
    CheckContext,
    CheckResult,
    DurationVsMedian,
    ExpectedPattern,
    LengthVsMedian,
    NoErrorKeywords,
    NotEmpty,
    Scanner,
    report_anomalies,
)
from .errors import ConfigurationError, StoreError
from .store import ENV_STORE, RunRecord, SQLiteStore
from .store._sqlite import new_run_id

__all__ = [
    "EXIT_CHECK_FAILED",
    "EXIT_STORE_FAILED",
    "EXIT_NOT_EXECUTABLE",
    "EXIT_NOT_FOUND",
    "JobSpec",
    "JobVerdict",
    "run_job",
]

EXIT_CHECK_FAILED = 3
"""The command exited 0 but a content check failed (its output is not usable)."""
EXIT_STORE_FAILED = 4
"""The command and its checks passed but the run could not be recorded in the store."""
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127
CHUNK = 1 << 16
FORWARDED = tuple(
    s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGHUP")) if s
)


@dataclass(frozen=True)
class JobSpec:
    """What to run and how to judge it (the `agentguard run` options)."""

    name: str
    command: Sequence[str]
    expect: Sequence[str] = ()
    min_ratio: float = 0.3
    max_duration_ratio: float = 5.0
    min_history: int = 5
    output_file: Path | None = None
    error_keywords: Sequence[str] = ()
    check_error_keywords: bool = True


@dataclass(frozen=True)
class JobVerdict:
    """The outcome of one job run; `exit` is what `agentguard run` exits with."""

    run_id: str
    name: str
    status: str
    exit: int
    command_exit: int | None
    duration: float
    stdout_bytes: int
    stderr_bytes: int
    output_length: float | None
    anomalies: tuple[Anomaly, ...] = ()
    notes: tuple[str, ...] = ()
    signal: str | None = None
    store: str | None = None
    errors: tuple[str, ...] = field(default_factory=tuple)

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(f"{a.check}: {a.reason}" for a in self.anomalies)

    def line(self) -> str:
        """The one-line verdict printed to stderr."""
        head = f"agentguard run: {self.name} {self.status.upper()} in {self.duration:.3g}s"
        if self.status == "ok":
            size = f"{self.output_length:,.0f} bytes of output" if self.output_length else ""
            body = f"(exit 0{', ' + size if size else ''})"
            learning = [n for n in self.notes if "too little history" in n]
            if learning:
                body += f"; learning: {len(learning)} check(s) need more history"
        elif self.status == "anomaly":
            body = "(exit 0, but the output is not usable): " + "; ".join(self.reasons)
        elif self.status == "interrupted":
            body = f"(signal {self.signal} forwarded; command exit {self.command_exit})"
        elif self.command_exit is None:
            body = "(the command could not be started)"
        else:
            body = f"(command exit {self.command_exit})"
            if self.reasons:
                body += ": " + "; ".join(self.reasons)
        for err in self.errors:
            body += f"; {err}"
        return f"{head} {body} -> exit {self.exit} [run {self.run_id}]"

    def to_json(self) -> dict[str, Any]:
        return {
            "agentguard": "run",
            "name": self.name,
            "run_id": self.run_id,
            "status": self.status,
            "exit": self.exit,
            "command_exit": self.command_exit,
            "duration": self.duration,
            "stdout_bytes": self.stdout_bytes,
            "stderr_bytes": self.stderr_bytes,
            "output_length": self.output_length,
            "anomalies": [
                {"check": a.check, "reason": a.reason, "details": dict(a.details)}
                for a in self.anomalies
            ],
            "notes": list(self.notes),
            "signal": self.signal,
            "store": self.store,
            "errors": list(self.errors),
        }


class _Labelled(Scanner):
    """Prefixes every anomaly reason of a scanner with the stream it read (`stderr`, ...)."""

    def __init__(self, inner: Scanner, label: str) -> None:
        self.inner = inner
        self.label = label

    def feed(self, chunk: bytes) -> None:
        self.inner.feed(chunk)

    def result(self, ctx: CheckContext) -> CheckResult:
        got = self.inner.result(ctx)
        return CheckResult(
            anomalies=tuple(
                Anomaly(a.check, f"in {self.label}: {a.reason}", a.details) for a in got.anomalies
            ),
            notes=got.notes,
            measured=got.measured,
            insufficient_history=got.insufficient_history,
        )


def _output_check(spec: JobSpec) -> Check:
    check: Check = NotEmpty() & LengthVsMedian(spec.min_ratio, min_history=spec.min_history)
    for pattern in spec.expect:
        check = check & ExpectedPattern(pattern)
    return check


def _keywords_check(spec: JobSpec) -> NoErrorKeywords | None:
    if not spec.check_error_keywords:
        return None
    patterns = dict(DEFAULT_ERROR_PATTERNS)
    for word in spec.error_keywords:
        patterns[word] = _literal(word)
    return NoErrorKeywords(patterns)


def _literal(word: str) -> str:
    return re.escape(word)


class _Pump(threading.Thread):
    """Copies one pipe of the child to our stream, feeding the scanners on the way."""

    def __init__(self, source: IO[bytes], sink: Any, scanners: list[Scanner], label: str) -> None:
        super().__init__(name=f"agentguard-run-{label}", daemon=True)
        self.source = source
        self.sink = sink
        self.scanners = scanners
        self.bytes = 0
        self.sink_error: str | None = None
        self.label = label

    def run(self) -> None:
        fd = self.source.fileno()
        while True:
            chunk = os.read(fd, CHUNK)
            if not chunk:
                break
            self.bytes += len(chunk)
            if self.sink_error is None:
                try:
                    self.sink.write(chunk)
                    self.sink.flush()
                except (BrokenPipeError, ValueError, OSError) as exc:
                    # our reader went away (`| head`): keep draining and checking the child
                    self.sink_error = f"{self.label} could not be passed on ({exc})"
            for scanner in self.scanners:
                scanner.feed(chunk)


def _binary(stream: Any) -> Any:
    return getattr(stream, "buffer", stream)


@contextlib.contextmanager
def _forward_signals(proc: subprocess.Popen[bytes], seen: list[int]) -> Iterator[None]:
    """Forward SIGINT/SIGTERM/SIGHUP to the child while it runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def forward(signum: int, _frame: object) -> None:
        seen.append(signum)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)

    previous: list[tuple[int, Any]] = []
    for sig in FORWARDED:
        previous.append((sig, signal.signal(sig, forward)))
    try:
        yield
    finally:
        for sig, handler in previous:
            signal.signal(sig, handler)


def _describe_command(command: Sequence[str]) -> str:
    if _config.get_config().record_values:
        return shlex.join(command)
    extra = len(command) - 1
    return os.path.basename(command[0]) + (f" (+{extra} args)" if extra else "")


def _file_result(
    spec: JobSpec, check: Check, ctx: CheckContext, started_wall: float
) -> tuple[CheckResult, float | None]:
    path = spec.output_file
    assert path is not None
    if not path.exists():
        reason = f"the output file {str(path)!r} was never written"
        return CheckResult(anomalies=(Anomaly("NotEmpty", reason),)), 0.0
    stat = path.stat()
    if stat.st_mtime < started_wall - 1.0:
        age = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stat.st_mtime))
        reason = (
            f"the output file {str(path)!r} was not written by this run (last modified {age}, "
            f"before the run started): an old file is not a new output"
        )
        return CheckResult(anomalies=(Anomaly("NotEmpty", reason),)), float(stat.st_size)
    if stat.st_size == 0:
        reason = f"the output file {str(path)!r} is 0 bytes"
        return CheckResult(anomalies=(Anomaly("NotEmpty", reason),)), 0.0
    scanner = _Labelled(check.scanner(), f"file {path.name}")
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            scanner.feed(chunk)
    result = scanner.result(ctx)
    return result, result.measured.get(METRIC_LENGTH)


def run_job(
    spec: JobSpec,
    store: SQLiteStore,
    *,
    stdout: Any = None,
    stderr: Any = None,
    env: dict[str, str] | None = None,
) -> JobVerdict:
    """Run `spec.command`, stream and check its output, record the run, return the verdict.

    Raises `ConfigurationError` for an empty command; a command that cannot start gives a
    verdict with exit 127 (not found) or 126 (not executable).
    """
    import sys

    if not spec.command:
        raise ConfigurationError(
            "agentguard run: no command given. Usage: agentguard run --name NAME [checks] -- "
            "COMMAND [ARGS...]"
        )
    out = _binary(stdout if stdout is not None else sys.stdout)
    err = _binary(stderr if stderr is not None else sys.stderr)
    clock = _config.get_config().clock
    run_id = new_run_id()
    output_check = _output_check(spec)
    keywords = _keywords_check(spec)
    duration_check = DurationVsMedian(spec.max_duration_ratio, min_history=spec.min_history)

    out_scanners: list[Scanner] = []
    err_scanners: list[Scanner] = []
    if spec.output_file is None:
        out_scanners.append(output_check.scanner())
    if keywords is not None:
        out_scanners.append(_Labelled(keywords.scanner(), "stdout"))
        err_scanners.append(_Labelled(keywords.scanner(), "stderr"))

    child_env = dict(os.environ if env is None else env)
    child_env.setdefault(ENV_STORE, str(store.path))
    started_wall = time.time()
    t0 = clock.monotonic()
    try:
        proc = subprocess.Popen(
            list(spec.command),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env,
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        return _cannot_start(spec, store, run_id, EXIT_NOT_FOUND, exc, started_wall)
    except PermissionError as exc:
        return _cannot_start(spec, store, run_id, EXIT_NOT_EXECUTABLE, exc, started_wall)
    assert proc.stdout is not None and proc.stderr is not None
    pumps = [
        _Pump(proc.stdout, out, out_scanners, "stdout"),
        _Pump(proc.stderr, err, err_scanners, "stderr"),
    ]
    seen: list[int] = []
    with _forward_signals(proc, seen):
        for pump in pumps:
            pump.start()
        code = proc.wait()
        for pump in pumps:
            pump.join()
    proc.stdout.close()
    proc.stderr.close()
    duration = clock.monotonic() - t0

    ctx = CheckContext(route=spec.name, duration=duration, history=store.history)
    result = CheckResult()
    output_length: float | None
    if spec.output_file is None:
        stream = out_scanners[0].result(ctx)
        output_length = stream.measured.get(METRIC_LENGTH)
        result = result + stream
    else:
        file_result, output_length = _file_result(spec, output_check, ctx, started_wall)
        result = result + file_result
    for scanner in out_scanners[1:] + err_scanners:
        result = result + scanner.result(ctx)
    result = result + duration_check.evaluate(None, ctx)

    signal_name: str | None = None
    if code < 0:
        signal_name = signal.Signals(-code).name
        exit_code = 128 - code
    else:
        exit_code = code
    if seen:
        status = "interrupted"
        signal_name = signal_name or signal.Signals(seen[0]).name
        exit_code = exit_code or 128 + seen[0]
    elif exit_code != 0:
        status = "failed"
    elif not result.ok:
        status = "anomaly"
        exit_code = EXIT_CHECK_FAILED
    else:
        status = "ok"

    errors = [p.sink_error for p in pumps if p.sink_error]
    record = RunRecord(
        run_id=run_id,
        kind="job",
        name=spec.name,
        started=started_wall,
        ended=started_wall + duration,
        duration=duration,
        status=status,
        exit_code=code,
        output_length=output_length,
        reasons=result.reasons,
        notes=result.notes,
        detail={
            "stdout_bytes": pumps[0].bytes,
            "stderr_bytes": pumps[1].bytes,
            "signal": signal_name,
            "output_file": str(spec.output_file) if spec.output_file else None,
        },
        command=_describe_command(spec.command),
    )
    errors += _record(store, record, result, spec, status, output_length, duration)
    if errors and status == "ok":
        exit_code = EXIT_STORE_FAILED
    telemetry.counter(telemetry.METRIC.JOB_RUNS).add(
        1, {telemetry.ATTR.JOB: spec.name, telemetry.ATTR.STATUS: status}
    )
    return JobVerdict(
        run_id=run_id,
        name=spec.name,
        status=status,
        exit=exit_code,
        command_exit=code,
        duration=duration,
        stdout_bytes=pumps[0].bytes,
        stderr_bytes=pumps[1].bytes,
        output_length=output_length,
        anomalies=result.anomalies,
        notes=result.notes,
        signal=signal_name,
        store=str(store.path),
        errors=tuple(errors),
    )


def _record(
    store: SQLiteStore,
    record: RunRecord,
    result: CheckResult,
    spec: JobSpec,
    status: str,
    output_length: float | None,
    duration: float,
) -> list[str]:
    """Write the run, its anomalies (ledger rows + alert) and, when healthy, its history."""
    errors: list[str] = []
    if not result.ok:
        report_anomalies(
            result, spec.name, run_id=record.run_id, subject=f"the output of job {spec.name!r}"
        )
    steps: list[tuple[str, Callable[[], object]]] = [
        ("record the run", lambda: store.record_run(record)),
        ("write its ledger rows", store.flush),
    ]
    if status == "ok":
        entries = [(spec.name, METRIC_DURATION, duration, time.time())]
        if output_length is not None:
            entries.append((spec.name, METRIC_LENGTH, output_length, time.time()))
        steps.append(("add it to the history", lambda: store.history.add_many(entries)))
    for what, step in steps:
        try:
            step()
        except StoreError as exc:
            errors.append(f"could not {what} in the store: {exc}")
    return errors


def _cannot_start(
    spec: JobSpec,
    store: SQLiteStore,
    run_id: str,
    code: int,
    exc: OSError,
    started_wall: float,
) -> JobVerdict:
    reason = f"the command {spec.command[0]!r} could not be started: {exc.strerror or exc}"
    anomaly = Anomaly("Command", reason)
    record = RunRecord(
        run_id=run_id,
        kind="job",
        name=spec.name,
        started=started_wall,
        ended=started_wall,
        duration=0.0,
        status="failed",
        exit_code=code,
        reasons=(f"Command: {reason}",),
        command=_describe_command(spec.command),
    )
    errors = _record(store, record, CheckResult(anomalies=(anomaly,)), spec, "failed", None, 0.0)
    return JobVerdict(
        run_id=run_id,
        name=spec.name,
        status="failed",
        exit=code,
        command_exit=None,
        duration=0.0,
        stdout_bytes=0,
        stderr_bytes=0,
        output_length=None,
        anomalies=(anomaly,),
        store=str(store.path),
        errors=tuple(errors),
    )
