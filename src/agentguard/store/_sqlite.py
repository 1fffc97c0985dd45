"""The embedded store: one SQLite file in WAL mode, safe with several processes writing at once.

Writes are short `BEGIN IMMEDIATE` transactions (so SQLite's busy timeout applies to the
writer lock) retried with backoff while another process holds the lock. Ledger rows are
written behind the hot path: guarded calls append raw tuples to their pool's in-memory
ledger as before; a daemon thread flushes them every `flush_interval` seconds, a root pool's
rows are flushed when it closes, and everything left is flushed at interpreter exit.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import sqlite3
import statistics
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .. import _config, telemetry
from .._redact import describe
from ..budget import _EPOCH_OFFSET, _LLM_CHARGE, _TOOL_CHARGE, LedgerRow
from ..errors import StoreError
from . import _schema
from ._records import DeadLetter, RouteFigures, RunRecord

if TYPE_CHECKING:
    from ..alerts import Alert
    from ..budget import BudgetPool
    from ..calls import CallInfo

__all__ = ["SQLiteStore", "StoreHistory"]

logger = logging.getLogger("agentguard")
T = TypeVar("T")

_CONSTANT_AMOUNTS: dict[int, str] = {
    id(_TOOL_CHARGE): json.dumps(dict(_TOOL_CHARGE), separators=(",", ":")),
    id(_LLM_CHARGE): json.dumps(dict(_LLM_CHARGE), separators=(",", ":")),
}
_LEDGER_INSERT = (
    "INSERT INTO ledger(ts, run_id, pool, pool_path, route, kind, outcome, amounts, cost_usd, "
    "tokens, duration, flags, detail) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
MAX_PENDING = 100_000
"""Rows kept for a later retry when the store cannot be written (oldest dropped, counted)."""
DEAD_LETTER_TAIL = 50


def _dumps(value: Any) -> str:
    return json.dumps(value, default=describe, separators=(",", ":"))


def _loads(text: str | None, empty: Any) -> Any:
    if not text:
        return empty
    return json.loads(text)


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


class StoreHistory:
    """The store's rolling window per (key, metric): the `History` checks read and add to.

    `values()` is one indexed SELECT; `add()` one short transaction that also prunes the key
    to the last `window` values. Thread-safe and multi-process safe.
    """

    def __init__(self, store: SQLiteStore) -> None:
        self._store = store

    @property
    def window(self) -> int:
        return self._store.history_window

    def values(self, key: str, metric: str) -> Sequence[float]:
        rows = self._store._read(
            "SELECT value FROM history WHERE key = ? AND metric = ? ORDER BY id DESC LIMIT ?",
            (key, metric, self._store.history_window),
        )
        return [float(r[0]) for r in reversed(rows)]

    def add(self, key: str, metric: str, value: float) -> None:
        self.add_many([(key, metric, float(value), time.time())])

    def add_many(self, entries: Sequence[tuple[str, str, float, float]]) -> None:
        """Add `(key, metric, value, ts)` entries in one transaction, then prune their keys."""
        if not entries:
            return
        window = self._store.history_window

        self._store._write(lambda conn: _insert_history(conn, entries, window))

    def keys(self) -> list[tuple[str, str, int]]:
        """Every (key, metric, count) held."""
        rows = self._store._read(
            "SELECT key, metric, COUNT(*) FROM history GROUP BY key, metric ORDER BY key, metric"
        )
        return [(str(k), str(m), int(n)) for k, m, n in rows]


class SQLiteStore:
    """The run store in one SQLite file: ledger, history, runs, dead letters, alerts.

    Args:
        path: the database file (created with mode 0600, its directory with 0700).
        flush_interval: seconds between write-behind flushes of ledger rows (the most a
            SIGKILL can lose; a normal exit or an exception flushes everything).
        history_window: values kept per (key, metric) for medians; older ones are pruned.
        keep_ledger_rows: rows kept in a run's in-memory `pool.ledger` once written (the full
            ledger is `store.ledger(run_id)`); memory stays bounded in long runs.
        retention_days: ledger rows, runs and dead letters older than this are deleted when
            the store is opened (None keeps everything).
        busy_timeout: seconds to wait for another process's write lock before `StoreError`.
        outlier_ratio, outlier_min_history: a call or run costing more than `outlier_ratio`
            times its route's median, once `outlier_min_history` values exist, alerts.

    Thread-safe: one connection guarded by a lock; re-opened after `fork()`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        flush_interval: float = 1.0,
        history_window: int = 200,
        keep_ledger_rows: int = 10_000,
        retention_days: float | None = 90,
        busy_timeout: float = 10.0,
        outlier_ratio: float = 5.0,
        outlier_min_history: int = 5,
    ) -> None:
        if str(path) == ":memory:":
            raise StoreError(
                "SQLiteStore(':memory:') is not supported: the store must survive the process. "
                "Fix: pass a file path (a temporary file in tests)."
            )
        self.path = Path(path).expanduser()
        self.flush_interval = float(flush_interval)
        self.history_window = int(history_window)
        self.keep_ledger_rows = int(keep_ledger_rows)
        self.retention_days = retention_days
        self.busy_timeout = float(busy_timeout)
        self.outlier_ratio = float(outlier_ratio)
        self.outlier_min_history = int(outlier_min_history)
        self.history = StoreHistory(self)
        self._lock = threading.RLock()
        self._flush_lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._pools: weakref.WeakSet[BudgetPool] = weakref.WeakSet()
        self._flushed: weakref.WeakKeyDictionary[BudgetPool, int] = weakref.WeakKeyDictionary()
        self._pending_events: list[tuple[Any, ...]] = []
        self._pending_history: list[tuple[str, str, float, float]] = []
        self._pending_lock = threading.Lock()
        self._dropped = 0
        self._writer: threading.Thread | None = None
        self._stop = threading.Event()
        self._closed = False
        self._seen_active = False
        self._failures = 0
        from ._watch import CostWatch

        self._watch = CostWatch(self)
        self._connect()

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    # -- connection ---------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        path = str(self.path)
        try:
            if not self.path.parent.exists():
                self.path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
                os.close(fd)
            except FileExistsError:
                pass
            conn = sqlite3.connect(
                path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(
                f"cannot open the agentguard store {path!r}: {exc}. Fix: check that the "
                f"directory is writable, or point AGENTGUARD_STORE / configure(store=...) at "
                f"another file."
            ) from exc
        try:
            self._retry(lambda: conn.execute("PRAGMA journal_mode=WAL").fetchone(), "open")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
            self._retry(lambda: _schema.migrate(conn, path), "migrate")
            if self.retention_days is not None:
                cutoff = time.time() - self.retention_days * 86400
                self._retry(lambda: self._prune(conn, cutoff), "prune")
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(
                f"cannot prepare the agentguard store {path!r}: {exc}. Fix: check the file is "
                f"an agentguard SQLite store and not corrupted (sqlite3 {path} 'PRAGMA "
                f"integrity_check'), or use another path."
            ) from exc
        except StoreError:
            conn.close()
            raise
        self._conn = conn
        self._pid = os.getpid()
        return conn

    @staticmethod
    def _prune(conn: sqlite3.Connection, cutoff: float) -> None:
        with _schema.immediate(conn):
            conn.execute("DELETE FROM ledger WHERE ts < ?", (cutoff,))
            conn.execute("DELETE FROM runs WHERE started < ?", (cutoff,))
            conn.execute("DELETE FROM dead_letters WHERE ts < ?", (cutoff,))

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"the agentguard store {str(self.path)!r} is closed.")
        conn = self._conn
        if conn is None or self._pid != os.getpid():
            # after fork(): never share the parent's connection
            self._conn = None
            conn = self._connect()
        return conn

    def _retry(self, fn: Callable[[], T], what: str) -> T:
        deadline = time.monotonic() + self.busy_timeout
        delay = 0.005
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.2)

    def _write(self, fn: Callable[[sqlite3.Connection], object]) -> None:
        """Run `fn` in one `BEGIN IMMEDIATE` transaction, retried while the file is busy."""
        with self._lock:
            conn = self._connection()

            def attempt() -> None:
                with _schema.immediate(conn):
                    fn(conn)

            try:
                self._retry(attempt, "write")
            except sqlite3.Error as exc:
                raise StoreError(
                    f"cannot write to the agentguard store {str(self.path)!r}: {exc}. Fix: "
                    f"check free disk space and permissions; another process may hold the "
                    f"write lock longer than busy_timeout={self.busy_timeout:g}s."
                ) from exc

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            conn = self._connection()
            try:
                return self._retry(lambda: conn.execute(sql, params).fetchall(), "read")
            except sqlite3.Error as exc:
                raise StoreError(
                    f"cannot read the agentguard store {str(self.path)!r}: {exc}."
                ) from exc

    @property
    def schema_version(self) -> int:
        with self._lock:
            return _schema.current_version(self._connection())

    # -- write-behind ledger ------------------------------------------------------------------

    def _track(self, pool: BudgetPool) -> None:
        self._pools.add(pool)

    def _roots(self) -> list[BudgetPool]:
        roots = {id(p._root): p._root for p in list(self._pools)}
        default = _config.get_config().default_pool
        if default is not None:
            roots.setdefault(id(default._root), default._root)
        return list(roots.values())

    def flush(self) -> int:
        """Write every pending ledger row, event and history value now; return rows written.

        Raises `StoreError` when the file cannot be written (the rows stay pending).
        """
        return self._flush(self._roots(), drain_orphans=True)

    def _flush(self, roots: Iterable[BudgetPool], *, drain_orphans: bool) -> int:
        from .._events import drain_orphan_events

        with self._flush_lock:
            batches: list[tuple[BudgetPool, int, list[tuple[Any, ...]]]] = []
            for root in roots:
                start = self._flushed.get(root, 0)
                ledger = root._ledger
                if len(ledger) > start:
                    batches.append((root, start, ledger[start:]))
            with self._pending_lock:
                if drain_orphans:
                    self._pending_events.extend(drain_orphan_events())
                events = self._pending_events
                history = self._pending_history
                self._pending_events = []
                self._pending_history = []
            values: list[tuple[Any, ...]] = []
            cache: dict[int, tuple[str, str, str]] = {}
            for _root, _start, rows in batches:
                values.extend(_ledger_values(rows, cache))
            values.extend(_ledger_values(events, cache))
            if not values and not history:
                return 0
            window = self.history_window

            def write(conn: sqlite3.Connection) -> None:
                conn.executemany(_LEDGER_INSERT, values)
                if history:
                    _insert_history(conn, history, window)

            try:
                self._write(write)
            except StoreError:
                with self._pending_lock:
                    self._pending_events[:0] = events
                    self._pending_history[:0] = history
                    self._bound_pending()
                raise
            keep = self.keep_ledger_rows
            for root, start, rows in batches:
                flushed = start + len(rows)
                ledger = root._ledger
                excess = len(ledger) - keep
                if excess > 0:
                    with root._lock:
                        cut = min(len(ledger) - keep, flushed)
                        if cut > 0:
                            del ledger[:cut]
                            flushed -= cut
                self._flushed[root] = flushed
            return len(values)

    def _bound_pending(self) -> None:
        over = len(self._pending_events) - MAX_PENDING
        if over > 0:
            del self._pending_events[:over]
            self._dropped += over
        over = len(self._pending_history) - MAX_PENDING
        if over > 0:
            del self._pending_history[:over]
            self._dropped += over

    def _queue_history(self, key: str, metric: str, value: float) -> None:
        with self._pending_lock:
            self._pending_history.append((key, metric, float(value), time.time()))

    def pending_history(self, key: str, metric: str) -> list[float]:
        """History values queued in this process and not yet written (oldest first)."""
        with self._pending_lock:
            return [v for k, m, v, _t in self._pending_history if k == key and m == metric]

    def _start_writer(self) -> None:
        if self._writer is not None and self._writer.is_alive():
            return
        self._stop.clear()
        self._writer = threading.Thread(
            target=self._writer_loop, name=f"agentguard-store-writer:{self.path.name}", daemon=True
        )
        self._writer.start()

    def _writer_loop(self) -> None:
        started = time.monotonic()
        while not self._stop.wait(self.flush_interval):
            active = _config.get_config().store is self
            if active:
                self._seen_active = True
            elif self._seen_active or time.monotonic() - started > 1.0:
                break  # replaced by configure(store=...): a last flush, then stop
            try:
                self.flush()
            except StoreError as exc:
                report_failure("flush the ledger", exc)
        if not self._closed:
            try:
                self.flush()
            except StoreError as exc:
                report_failure("flush the ledger", exc)

    def close(self) -> None:
        """Flush what is pending, stop the writer thread and close the file."""
        if self._closed:
            return
        self._stop.set()
        writer = self._writer
        if writer is not None and writer is not threading.current_thread():
            writer.join(timeout=self.busy_timeout + 1)
        try:
            if self._pid == os.getpid():
                self.flush()
        finally:
            self._closed = True
            with self._lock:
                if self._conn is not None and self._pid == os.getpid():
                    self._conn.close()
                self._conn = None

    # -- run records --------------------------------------------------------------------------

    def _run_closed(self, pool: BudgetPool, exc: BaseException | None) -> None:
        """A root pool closed: flush its rows, record the run, check its cost against history."""
        self._flush([pool], drain_orphans=False)
        spent = pool.spent
        ended = time.time()
        wall = spent.get("wall_seconds", 0.0)
        tokens = spent.get("total_tokens") or (
            spent.get("input_tokens", 0.0) + spent.get("output_tokens", 0.0)
        )
        if pool.stopped:
            status = "stopped"
        elif exc is not None:
            status = "error"
        else:
            status = "ok"
        detail: dict[str, Any] = {}
        if exc is not None:
            detail["error.type"] = type(exc).__name__
        record = RunRecord(
            run_id=pool.run_id,
            kind="pool",
            name=pool.name,
            started=ended - wall,
            ended=ended,
            duration=wall,
            status=status,
            cost_usd=spent.get("cost_usd"),
            tokens=tokens,
            llm_calls=spent.get("llm_calls"),
            tool_calls=spent.get("tool_calls"),
            detail=detail,
        )
        self._watch.run_closed(pool, record)
        self.record_run(record)

    def record_run(self, record: RunRecord) -> None:
        """Insert (or replace, for the same run id) a run record, with pending history."""
        with self._pending_lock:
            history = self._pending_history
            self._pending_history = []
        window = self.history_window

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO runs(run_id, kind, name, started, ended, duration, "
                "status, exit_code, cost_usd, tokens, llm_calls, tool_calls, output_length, "
                "reasons, notes, detail, command) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    record.run_id,
                    record.kind,
                    record.name,
                    record.started,
                    record.ended,
                    record.duration,
                    record.status,
                    record.exit_code,
                    record.cost_usd,
                    record.tokens,
                    record.llm_calls,
                    record.tool_calls,
                    record.output_length,
                    _dumps(list(record.reasons)) if record.reasons else None,
                    _dumps(list(record.notes)) if record.notes else None,
                    _dumps(dict(record.detail)) if record.detail else None,
                    record.command,
                ),
            )
            if history:
                _insert_history(conn, history, window)

        try:
            self._write(write)
        except StoreError:
            with self._pending_lock:
                self._pending_history[:0] = history
            raise

    def record_events(self, rows: Sequence[LedgerRow]) -> None:
        """Write already materialized ledger rows now (the job runner's anomalies)."""
        values = [
            (
                r.ts,
                r.run_id,
                r.pool,
                r.pool_path,
                r.route,
                r.kind,
                r.outcome,
                _dumps(dict(r.amounts)) if r.amounts else None,
                r.amounts.get("cost_usd") if r.amounts else None,
                r.amounts.get("total_tokens") if r.amounts else None,
                r.duration,
                ",".join(r.flags) or None,
                _dumps(dict(r.detail)) if r.detail else None,
            )
            for r in rows
        ]
        self._write(lambda conn: conn.executemany(_LEDGER_INSERT, values))

    def _dead_letter(self, stopped: BudgetPool, error: BaseException, charged: Any) -> None:
        root = stopped.root
        snapshot = dataclasses.asdict(root.snapshot())
        tail = list(root._ledger[-DEAD_LETTER_TAIL:])
        tail_rows = [_row_dict(r) for r in tail]
        refused = {
            "route": getattr(error, "route", None),
            "function": getattr(error, "function", None),
            "dimension": getattr(error, "dimension", None),
            "limit": getattr(error, "limit", None),
            "spent": getattr(error, "spent", None),
            "requested": getattr(error, "requested", None),
            "charged_pool": getattr(charged, "path", None),
        }
        values = (
            time.time(),
            root.run_id,
            stopped.name,
            stopped.path,
            type(error).__name__,
            str(error),
            _dumps(refused),
            _dumps(snapshot),
            _dumps(tail_rows),
        )
        self._write(
            lambda conn: conn.execute(
                "INSERT INTO dead_letters(ts, run_id, pool, pool_path, error_type, message, "
                "refused, snapshot, ledger_tail) VALUES (?,?,?,?,?,?,?,?,?)",
                values,
            )
        )

    def _alert(self, alert: Alert) -> None:
        """Every alert becomes a ledger row of kind `alert` (written behind)."""
        from .._events import record_event

        detail: dict[str, Any] = {
            "message": alert.message,
            "severity": alert.severity,
            "pool": alert.pool,
            "run_id": alert.run_id,
        }
        if alert.data:
            detail["data"] = dict(alert.data)
        record_event(
            "alert", outcome=alert.kind, route=alert.route, guard_id=alert.guard_id, detail=detail
        )

    def _call_finished(self, info: CallInfo) -> None:
        self._watch.observe_call(info)

    # -- queries -------------------------------------------------------------------------------

    def _flush_if_active(self) -> None:
        if _config.get_config().store is self:
            self.flush()

    def ledger(
        self,
        run_id: str | None = None,
        *,
        kind: str | None = None,
        route: str | None = None,
        since: float | None = None,
        limit: int | None = None,
    ) -> list[LedgerRow]:
        """Ledger rows (oldest first), filtered; pending rows of this process are written first."""
        self._flush_if_active()
        where, params = _where(run_id=run_id, kind=kind, route=route, since=since)
        sql = (
            "SELECT ts, run_id, pool, pool_path, route, kind, amounts, outcome, duration, flags, "
            f"detail FROM ledger{where} ORDER BY id"
        )
        if limit is not None:
            sql = (
                "SELECT * FROM (SELECT id, ts, run_id, pool, pool_path, route, kind, amounts, "
                f"outcome, duration, flags, detail FROM ledger{where} ORDER BY id DESC LIMIT ?) "
                "ORDER BY id"
            )
            params.append(limit)
        rows = self._read(sql, params)
        out = []
        for row in rows:
            r = row[1:] if limit is not None else row
            ts, rid, pool, path, rte, knd, amounts, outcome, duration, flags, detail = r
            out.append(
                LedgerRow(
                    ts=ts,
                    run_id=rid or "",
                    pool=pool or "",
                    pool_path=path or "",
                    route=rte,
                    kind=knd,
                    amounts=_loads(amounts, {}),
                    outcome=outcome,
                    duration=duration,
                    flags=tuple(flags.split(",")) if flags else (),
                    detail=_loads(detail, None),
                )
            )
        return out

    def alerts(self, *, since: float | None = None, kind: str | None = None) -> list[LedgerRow]:
        """Alert rows (`ledger` rows of kind `alert`; `outcome` is the alert kind)."""
        rows = self.ledger(kind="alert", since=since)
        if kind is not None:
            rows = [r for r in rows if r.outcome == kind]
        return rows

    def runs(
        self,
        name: str | None = None,
        *,
        kind: str | None = None,
        since: float | None = None,
        limit: int = 50,
    ) -> list[RunRecord]:
        """The most recent runs (newest first)."""
        clauses: list[str] = []
        params: list[Any] = []
        if name is not None:
            clauses.append("name = ?")
            params.append(name)
        if kind is not None:
            clauses.append("kind = ?")
            params.append(kind)
        if since is not None:
            clauses.append("started >= ?")
            params.append(since)
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        rows = self._read(
            "SELECT run_id, kind, name, started, ended, duration, status, exit_code, cost_usd, "
            "tokens, llm_calls, tool_calls, output_length, reasons, notes, detail, command "
            f"FROM runs{where} ORDER BY started DESC LIMIT ?",
            [*params, limit],
        )
        return [
            RunRecord(
                run_id=r[0],
                kind=r[1],
                name=r[2],
                started=r[3],
                ended=r[4],
                duration=r[5],
                status=r[6],
                exit_code=r[7],
                cost_usd=r[8],
                tokens=r[9],
                llm_calls=r[10],
                tool_calls=r[11],
                output_length=r[12],
                reasons=tuple(_loads(r[13], [])),
                notes=tuple(_loads(r[14], [])),
                detail=_loads(r[15], {}),
                command=r[16],
            )
            for r in rows
        ]

    def run_names(self) -> list[tuple[str, str, int]]:
        """(kind, name, number of runs) for every name recorded."""
        rows = self._read(
            "SELECT kind, name, COUNT(*) FROM runs GROUP BY kind, name ORDER BY kind, name"
        )
        return [(str(k), str(n), int(c)) for k, n, c in rows]

    def dead_letters(
        self, *, since: float | None = None, run_id: str | None = None, limit: int = 50
    ) -> list[DeadLetter]:
        """Dead letters, newest first."""
        clauses: list[str] = []
        params: list[Any] = []
        if since is not None:
            clauses.append("ts >= ?")
            params.append(since)
        if run_id is not None:
            clauses.append("run_id = ?")
            params.append(run_id)
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        rows = self._read(
            "SELECT id, ts, run_id, pool, pool_path, error_type, message, refused, snapshot, "
            f"ledger_tail FROM dead_letters{where} ORDER BY id DESC LIMIT ?",
            [*params, limit],
        )
        return [
            DeadLetter(
                id=r[0],
                ts=r[1],
                run_id=r[2],
                pool=r[3],
                pool_path=r[4],
                error_type=r[5],
                message=r[6],
                refused=_loads(r[7], {}),
                snapshot=_loads(r[8], {}),
                ledger_tail=_loads(r[9], []),
            )
            for r in rows
        ]

    def route_figures(self, *, since: float | None = None) -> list[RouteFigures]:
        """Per-route calls, errors, refusals, p50/p99 duration and cost of guarded calls."""
        self._flush_if_active()
        where, params = _where(since=since)
        extra = " AND " if where else " WHERE "
        rows = self._read(
            "SELECT route, outcome, duration, cost_usd, tokens FROM ledger"
            f"{where}{extra}kind IN ('tool', 'llm') ORDER BY route",
            params,
        )
        grouped: dict[str, list[tuple[Any, ...]]] = {}
        for row in rows:
            grouped.setdefault(row[0] or "-", []).append(row)
        figures = []
        for route, items in grouped.items():
            durations = sorted(float(r[2]) for r in items if r[2] is not None and r[1] == "ok")
            figures.append(
                RouteFigures(
                    route=route,
                    calls=sum(1 for r in items if r[1] != "refused"),
                    errors=sum(1 for r in items if r[1] not in ("ok", "refused")),
                    refused=sum(1 for r in items if r[1] == "refused"),
                    p50=_percentile(durations, 0.50),
                    p99=_percentile(durations, 0.99),
                    cost_usd=sum(float(r[3] or 0.0) for r in items),
                    tokens=sum(float(r[4] or 0.0) for r in items),
                )
            )
        return figures


def _insert_history(
    conn: sqlite3.Connection, entries: Sequence[tuple[str, str, float, float]], window: int
) -> None:
    """Insert history values, then prune each touched (key, metric) to its last `window`."""
    conn.executemany("INSERT INTO history(key, metric, value, ts) VALUES (?,?,?,?)", entries)
    for key, metric in {(k, m) for k, m, _v, _t in entries}:
        conn.execute(
            "DELETE FROM history WHERE key = ? AND metric = ? AND id <= ("
            "SELECT id FROM history WHERE key = ? AND metric = ? "
            "ORDER BY id DESC LIMIT 1 OFFSET ?)",
            (key, metric, key, metric, window),
        )


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    index = q * (len(values) - 1)
    low = int(index)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (index - low)


def median_or_none(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _where(
    *,
    run_id: str | None = None,
    kind: str | None = None,
    route: str | None = None,
    since: float | None = None,
) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in (("run_id", run_id), ("kind", kind), ("route", route)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if since is not None:
        clauses.append("ts >= ?")
        params.append(since)
    return ((" WHERE " + " AND ".join(clauses)) if clauses else ""), params


def _ledger_values(
    rows: Iterable[tuple[Any, ...]], cache: dict[int, tuple[str, str, str]]
) -> list[tuple[Any, ...]]:
    """Raw in-memory ledger tuples -> SQL parameter tuples (cheap for the common rows)."""
    out: list[tuple[Any, ...]] = []
    append = out.append
    offset = _EPOCH_OFFSET
    constant = _CONSTANT_AMOUNTS
    run_id: str | None
    name: str | None
    path: str | None
    for ts, pool, route, kind, amounts, outcome, duration, flags, detail in rows:
        if pool is not None:
            info = cache.get(id(pool))
            if info is None:
                info = cache[id(pool)] = (pool.run_id, pool.name, pool.path)
            run_id, name, path = info
        else:
            run_id = detail.get("run_id") if detail else None
            name = path = None
        if amounts:
            text = constant.get(id(amounts))
            if text is None:
                text = _dumps(dict(amounts))
            cost = amounts.get("cost_usd")
            tokens = amounts.get("total_tokens")
        else:
            text = cost = tokens = None
        append(
            (
                offset + ts,
                run_id,
                name,
                path,
                route,
                kind,
                outcome,
                text,
                cost,
                tokens,
                duration,
                ",".join(flags) if flags else None,
                _dumps(detail) if detail else None,
            )
        )
    return out


def _row_dict(raw: tuple[Any, ...]) -> dict[str, Any]:
    ts, pool, route, kind, amounts, outcome, duration, flags, detail = raw
    return {
        "ts": _EPOCH_OFFSET + ts,
        "pool_path": pool.path if pool is not None else None,
        "route": route,
        "kind": kind,
        "amounts": dict(amounts) if amounts else {},
        "outcome": outcome,
        "duration": duration,
        "flags": list(flags),
        "detail": json.loads(_dumps(detail)) if detail else None,
    }


_failure_lock = threading.Lock()
_failure_counts: dict[str, int] = {}


def report_failure(what: str, exc: BaseException) -> None:
    """A store failure the guarded code must not see: ERROR log and a metric, never silent."""
    telemetry.counter(telemetry.METRIC.STORE_ERRORS).add(1, {"agentguard.store.operation": what})
    with _failure_lock:
        n = _failure_counts[what] = _failure_counts.get(what, 0) + 1
    if n <= 3 or n % 100 == 0:
        logger.error(
            "agentguard store: could not %s (%s: %s; failure %d for this operation). The "
            "guarded run continues; the rows stay pending in memory and are retried.",
            what,
            type(exc).__name__,
            exc,
            n,
        )


def new_run_id() -> str:
    return uuid.uuid4().hex[:16]
