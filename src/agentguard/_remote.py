"""Charging pools that live in a distributed backend (see `agentguard.backends`).

The in-memory pool calls these functions when it or its root has a `backend`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from .errors import ConfigurationError

if TYPE_CHECKING:
    from .budget import BudgetPool, Reservation

__all__ = ["remote_admit", "remote_settle", "remote_release"]


def _unsupported(pool: BudgetPool) -> ConfigurationError:
    return ConfigurationError(
        f"BudgetPool {pool.name!r} was given backend={pool.backend!r}, which this version of "
        f"agentguard cannot charge. Fix: use agentguard.RedisBackend, or leave backend=None "
        f"for an in-process pool."
    )


def remote_admit(
    pool: BudgetPool,
    charge: Mapping[str, float],
    reserve: Mapping[str, float],
    route: str | None,
    function: str | None,
    kind: str,
) -> Reservation:
    raise _unsupported(pool)


def remote_settle(reservation: Reservation, actual: Mapping[str, float]) -> None:
    raise _unsupported(reservation.pool)


def remote_release(reservation: Reservation) -> None:
    raise _unsupported(reservation.pool)
