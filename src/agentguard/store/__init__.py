"""The run store: ledger, history, runs, dead letters and alerts, in one SQLite file (WAL).

When is it on? When you say so: `ag.configure(store=path | True | SQLiteStore(...))`, the
`AGENTGUARD_STORE` environment variable (read when agentguard is imported), or
`agentguard run` (which also hands `AGENTGUARD_STORE` to the job it runs). Without a store,
history lives in the process (`checks.MemoryHistory`, empty in every new process: checks say
so in their result notes), ledgers stay in `pool.ledger` only, and no dead letters or
cost-outlier alerts are kept.

With a store: every guarded call's ledger row is written behind (no disk write on the call
itself), each root pool's run is recorded when it closes, a stopped pool's record becomes a
dead letter, every alert becomes a ledger row, and calls or runs costing more than 5x their
median alert at once. See `docs/store.md`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError
from ._records import DeadLetter, RouteFigures, RunRecord
from ._sqlite import SQLiteStore, StoreHistory

__all__ = [
    "SQLiteStore",
    "StoreHistory",
    "RunRecord",
    "DeadLetter",
    "RouteFigures",
    "open_store",
    "default_store_path",
    "ENV_STORE",
]

ENV_STORE = "AGENTGUARD_STORE"


def default_store_path() -> Path:
    """`AGENTGUARD_STORE`, else `agentguard/agentguard.db` under the user's state directory.

    Linux and others: `$XDG_STATE_HOME` or `~/.local/state`; macOS: `~/Library/Application
    Support`; Windows: `%LOCALAPPDATA%`.
    """
    env = os.environ.get(ENV_STORE)
    if env:
        return Path(env).expanduser()
    home = Path.home()
    if sys.platform == "darwin":
        base = home / "Library" / "Application Support"
    elif sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local")
    else:
        base = Path(os.environ.get("XDG_STATE_HOME") or home / ".local" / "state")
    return base / "agentguard" / "agentguard.db"


def open_store(spec: Any) -> SQLiteStore:
    """The store for `configure(store=spec)`, activated: hooks installed, writer started.

    `spec`: a `SQLiteStore`, a path (str or `os.PathLike`), or `True` / `"default"` for
    `default_store_path()`. Raises `ConfigurationError` for anything else and `StoreError`
    when the file cannot be opened.
    """
    from ._hooks import activate

    if isinstance(spec, SQLiteStore):
        store = spec
    elif spec is True or spec == "default":
        store = SQLiteStore(default_store_path())
    elif isinstance(spec, (str, os.PathLike)):
        store = SQLiteStore(spec)
    else:
        raise ConfigurationError(
            f"configure(store={spec!r}): expected a path to a SQLite file, True for the "
            f"default location ({default_store_path()}), an agentguard.store.SQLiteStore, or "
            f"None for no store."
        )
    activate(store)
    return store


def _configure_from_env() -> None:
    """Called when agentguard is imported: `AGENTGUARD_STORE=path` turns the store on."""
    path = os.environ.get(ENV_STORE)
    if not path:
        return
    from .. import _config

    if _config.get_config().store is None:
        _config.configure(store=path)
