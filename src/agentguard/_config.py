"""Process-wide settings, guarded by one lock (read without it on the hot path).

Public entry points are `agentguard.configure()` and `agentguard.configure_route()`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError

if TYPE_CHECKING:
    from .budget import BudgetPool
    from .usage import Price, PriceFunction, UsageExtractor

__all__ = ["Clock", "Config", "RouteSettings", "configure", "configure_route", "get_config"]


class Clock:
    """Time as agentguard sees it; replace it in tests (`ag.testing.frozen_clock`).

    `monotonic()` measures durations and wall budgets; `now()` is the UTC wall clock used for
    ledger timestamps and bypass expiry.
    """

    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime:
        return datetime.now(timezone.utc)


@dataclass(frozen=True)
class RouteSettings:
    """Per-route estimates used to reserve tokens before an LLM call."""

    max_tokens: int | None = None
    input_tokens: int | None = None
    model: str | None = None
    provider: str | None = None


@dataclass
class Config:
    default_pool: BudgetPool | None = None
    record_values: bool = False
    price: PriceFunction | None = None
    fallback_price: Price | None = None
    default_max_tokens: int = 4096
    usage_extractors: tuple[UsageExtractor, ...] = ()
    routes: dict[str, RouteSettings] = field(default_factory=dict)
    clock: Clock = field(default_factory=Clock)
    store: Any = None  # agentguard.store.Store | None; set by configure(store=...)
    store_configured: bool = False
    bypass_max_days: int = 30
    backend: Any = None  # default backend of pools given key=/window= (ag.RedisBackend)


_lock = threading.Lock()
_config = Config()
_UNSET: Any = object()


def get_config() -> Config:
    """The live configuration object (read-only by convention)."""
    return _config


def configure(
    *,
    default_pool: BudgetPool | None = _UNSET,
    record_values: bool = _UNSET,
    price: PriceFunction | None = _UNSET,
    fallback_price: Price | None = _UNSET,
    default_max_tokens: int = _UNSET,
    usage_extractors: tuple[UsageExtractor, ...] | list[UsageExtractor] = _UNSET,
    clock: Clock = _UNSET,
    store: Any = _UNSET,
    bypass_max_days: int = _UNSET,
    backend: Any = _UNSET,
) -> None:
    """Set process-wide options; only the arguments given change.

    - `default_pool`: the pool a guarded call charges when no `BudgetPool` is active. Without
      one, such a call raises `NoActivePool` (fail closed).
    - `record_values`: keep clear argument values and outputs in the store, logs and spans
      (off by default: only names, short hashes, lengths and types are kept).
    - `price`: `price(model, usage) -> float | None` in USD; None means unknown.
    - `fallback_price`: a `Price` used when the price of a model is unknown. Without it, a
      call whose pool limits `cost_usd` and whose price is unknown is refused.
    - `default_max_tokens`: output tokens reserved for an LLM call that names no max_tokens.
    - `usage_extractors`: extra callables tried first to read usage from a response.
    - `clock`: a `Clock` (tests inject a controllable one).
    - `store`: a `Store`, a path to a SQLite file, or None to keep no store.
    - `bypass_max_days`: how far ahead a bypass may expire (default 30, at most 365).
    - `backend`: the backend (e.g. `ag.RedisBackend(url)`) of pools created with `key=` or
      `window=` and no `backend=`.
    """
    with _lock:
        changes: dict[str, Any] = {}
        if default_pool is not _UNSET:
            changes["default_pool"] = default_pool
        if record_values is not _UNSET:
            changes["record_values"] = bool(record_values)
        if price is not _UNSET:
            if price is not None and not callable(price):
                raise ConfigurationError(
                    f"configure(price=...) expects a callable price(model, usage) -> float | "
                    f"None, got {type(price).__name__}. Fix: pass a function, or "
                    f"agentguard.usage.genai_price after installing agentguard[prices]."
                )
            changes["price"] = price
        if fallback_price is not _UNSET:
            changes["fallback_price"] = fallback_price
        if default_max_tokens is not _UNSET:
            if not isinstance(default_max_tokens, int) or default_max_tokens <= 0:
                raise ConfigurationError(
                    f"configure(default_max_tokens=...) expects a positive int, got "
                    f"{default_max_tokens!r}."
                )
            changes["default_max_tokens"] = default_max_tokens
        if usage_extractors is not _UNSET:
            changes["usage_extractors"] = tuple(usage_extractors)
        if clock is not _UNSET:
            changes["clock"] = clock
        if store is not _UNSET:
            from .store import open_store

            changes["store"] = open_store(store) if store is not None else None
            changes["store_configured"] = True
        if bypass_max_days is not _UNSET:
            changes["bypass_max_days"] = _check_bypass_days(bypass_max_days, "configure")
        if backend is not _UNSET:
            changes["backend"] = backend
        for key, value in changes.items():
            setattr(_config, key, value)


MAX_BYPASS_DAYS = 365
"""The ceiling of `bypass_max_days`: no setting makes a bypass last longer than a year."""


def _check_bypass_days(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_BYPASS_DAYS:
        raise ConfigurationError(
            f"{where}: bypass_max_days expects a whole number of days from 1 to "
            f"{MAX_BYPASS_DAYS}, got {value!r}. Fix: pass e.g. bypass_max_days=30; a bypass "
            f"that must last longer is renewed with a new entry, never made permanent."
        )
    return value


def configure_route(
    route: str,
    *,
    max_tokens: int | None = None,
    input_tokens: int | None = None,
    model: str | None = None,
    provider: str | None = None,
) -> None:
    """Per-route reservation estimates (output and input tokens) and model for pricing."""
    with _lock:
        routes = dict(_config.routes)
        routes[route] = RouteSettings(
            max_tokens=max_tokens, input_tokens=input_tokens, model=model, provider=provider
        )
        _config.routes = routes


def _reset_for_tests() -> None:
    fresh = Config()
    with _lock:
        for key in fresh.__dataclass_fields__:
            setattr(_config, key, getattr(fresh, key))


def _set_clock(clock: Clock) -> Callable[[], None]:
    """Swap the clock; return a function that restores the previous one."""
    with _lock:
        previous = _config.clock
        _config.clock = clock

    def restore() -> None:
        with _lock:
            _config.clock = previous

    return restore
