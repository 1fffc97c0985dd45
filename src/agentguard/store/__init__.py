"""The run store: ledger, history, dead letters (SQLite by default, Redis for fleets)."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigurationError

__all__ = ["open_store"]


def open_store(spec: Any) -> Any:
    """A store from a `Store` object or a path (implemented by the store module)."""
    raise ConfigurationError(
        f"configure(store={spec!r}): the run store is not available in this build."
    )
