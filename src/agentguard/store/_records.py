"""Plain records read from and written to the store (runs, dead letters, per-route figures)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RunRecord", "DeadLetter", "RouteFigures"]


@dataclass(frozen=True)
class RunRecord:
    """One run: a root `BudgetPool` (kind `pool`) or a scheduled job (kind `job`).

    `status` is `ok`, `anomaly` (exit 0 but a content check failed), `failed` (non-zero
    exit), `stopped` (a budget refusal), `error` (the run raised) or `interrupted` (a signal).
    `reasons` are the failed checks; `notes` what could not be checked (too little history).
    """

    run_id: str
    kind: str
    name: str
    started: float
    status: str
    ended: float | None = None
    duration: float | None = None
    exit_code: int | None = None
    cost_usd: float | None = None
    tokens: float | None = None
    llm_calls: float | None = None
    tool_calls: float | None = None
    output_length: float | None = None
    reasons: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    detail: Mapping[str, Any] = field(default_factory=dict)
    command: str | None = None


@dataclass(frozen=True)
class DeadLetter:
    """The record of a run that was stopped: for a human to review, not to replay blindly.

    `refused` describes the refused call (route, function, dimension, limit, spent,
    requested); `snapshot` is the pool tree at the stop (`PoolSnapshot` as plain data);
    `ledger_tail` the last ledger rows of the run, oldest first.
    """

    id: int
    ts: float
    run_id: str | None
    pool: str | None
    pool_path: str | None
    error_type: str
    message: str
    refused: Mapping[str, Any]
    snapshot: Mapping[str, Any]
    ledger_tail: Sequence[Mapping[str, Any]]


@dataclass(frozen=True)
class RouteFigures:
    """Per-route figures over a period: guarded calls, failures, latency, cost."""

    route: str
    calls: int
    errors: int
    refused: int
    p50: float | None
    p99: float | None
    cost_usd: float
    tokens: float
