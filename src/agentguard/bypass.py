"""Guard bypasses: the only way to turn a guard off, and every one of them expires.

(Skeleton: the registry, expiry, declarative entries and telemetry are built by the bypass
issue. Guards already call `active_bypass()` at the point where they would refuse, so a
bypass costs nothing on the hot path.)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = ["Bypass", "active_bypass", "record_bypass_use"]


@dataclass(frozen=True)
class Bypass:
    """A registered exception to a guard: who, why, until when."""

    guard: str
    owner: str
    reason: str
    expires: datetime
    ticket: str | None = None


def active_bypass(guard_id: str) -> Bypass | None:
    """The active (unexpired) bypass covering `guard_id`, or None when the guard is on."""
    return None


def record_bypass_use(entry: Bypass, guard_id: str, would_have: str, **context: Any) -> None:
    """Record that `entry` let a call through that `guard_id` would have stopped."""
