"""The SQLite schema as an ordered list of migrations; `schema_version` records those applied.

The ledger has two indexes only (run id, timestamp): every index costs the write-behind
thread several microseconds per row, and reports filter by time first.

Each migration runs once, in its own `BEGIN IMMEDIATE` transaction together with the version
bump, so several processes opening a fresh file at once apply it exactly once. A file written
by a newer agentguard (a higher version than `LATEST`) is refused, not silently misread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import StoreError

__all__ = ["LATEST", "MIGRATIONS", "current_version", "migrate"]

MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "ledger, history, runs, dead letters",
        """
        CREATE TABLE ledger (
            id INTEGER PRIMARY KEY,
            ts REAL NOT NULL,
            run_id TEXT,
            pool TEXT,
            pool_path TEXT,
            route TEXT,
            kind TEXT NOT NULL,
            outcome TEXT,
            amounts TEXT,
            cost_usd REAL,
            tokens REAL,
            duration REAL,
            flags TEXT,
            detail TEXT
        );
        CREATE INDEX ledger_run ON ledger(run_id);
        CREATE INDEX ledger_ts ON ledger(ts);
        CREATE TABLE history (
            id INTEGER PRIMARY KEY,
            key TEXT NOT NULL,
            metric TEXT NOT NULL,
            value REAL NOT NULL,
            ts REAL NOT NULL
        );
        CREATE INDEX history_key ON history(key, metric, id);
        CREATE TABLE runs (
            run_id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            name TEXT NOT NULL,
            started REAL NOT NULL,
            ended REAL,
            duration REAL,
            status TEXT NOT NULL,
            exit_code INTEGER,
            cost_usd REAL,
            tokens REAL,
            llm_calls REAL,
            tool_calls REAL,
            output_length REAL,
            reasons TEXT,
            notes TEXT,
            detail TEXT
        );
        CREATE INDEX runs_name ON runs(name, started);
        CREATE TABLE dead_letters (
            id INTEGER PRIMARY KEY,
            ts REAL NOT NULL,
            run_id TEXT,
            pool TEXT,
            pool_path TEXT,
            error_type TEXT NOT NULL,
            message TEXT NOT NULL,
            refused TEXT,
            snapshot TEXT,
            ledger_tail TEXT
        );
        CREATE INDEX dead_letters_ts ON dead_letters(ts);
        """,
    ),
    (
        2,
        "the command of a job run; runs by status and dead letters by run for reports",
        """
        ALTER TABLE runs ADD COLUMN command TEXT;
        CREATE INDEX runs_status ON runs(status, started);
        CREATE INDEX dead_letters_run ON dead_letters(run_id);
        """,
    ),
]
LATEST = MIGRATIONS[-1][0]


def current_version(conn: sqlite3.Connection) -> int:
    """The schema version of an open database (0 for a fresh file)."""
    row = conn.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name='schema_version'"
    ).fetchone()
    if row is None:
        return 0
    got = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(got[0] or 0)


def migrate(conn: sqlite3.Connection, path: str, target: int = LATEST) -> int:
    """Apply every migration above the file's version up to `target`; return the version.

    `conn` must be in autocommit mode (`isolation_level=None`). Raises `StoreError` when the
    file is newer than this agentguard.
    """
    version = current_version(conn)
    if version > LATEST:
        raise StoreError(
            f"the store {path!r} has schema version {version}, newer than this agentguard "
            f"understands (up to {LATEST}). Fix: upgrade agentguard in this environment, or "
            f"point AGENTGUARD_STORE / configure(store=...) at another file."
        )
    if version >= target:
        return version
    for number, _what, sql in MIGRATIONS:
        if number > target:
            break
        with immediate(conn):
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                "version INTEGER PRIMARY KEY, applied REAL NOT NULL)"
            )
            done = conn.execute(
                "SELECT 1 FROM schema_version WHERE version = ?", (number,)
            ).fetchone()
            if done is None:
                for statement in _statements(sql):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_version(version, applied) VALUES (?, julianday('now'))",
                    (number,),
                )
    return current_version(conn)


@contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """One `BEGIN IMMEDIATE` transaction on an autocommit connection: committed when the
    block ends, rolled back (and the error re-raised unchanged) when anything escapes it,
    a KeyboardInterrupt included, so the file never keeps a half-written transaction. The
    rollback is skipped when SQLite already ended the transaction, so it cannot mask the
    error that ended it."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _statements(sql: str) -> list[str]:
    return [s.strip() for s in sql.split(";") if s.strip()]
