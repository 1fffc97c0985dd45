"""The shared budget pool: one per run, charged before every innermost call.

A `BudgetPool` lives in one `contextvars.ContextVar`. Entering a pool while another is active
makes it a *child*: each charge is checked against and applied to the child and all of its
ancestors atomically (one lock per pool tree), so a sub-agent that declares a bigger budget
still stops when its parent runs out. A refusal *stops* the pool that refused: every later
charge on it or on any of its descendants is refused too, so a framework that swallows the
first `BudgetExceeded` cannot keep spending.

What is only known after a call (tokens, cost) is *reserved* before it and *settled* after
it (`pool.reserve(...)` -> `Reservation.settle(...)` / `.release()`), so concurrent calls
can never jointly overspend and no phantom reservation outlives its call.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeVar, cast, overload

from typing_extensions import ParamSpec, Self

from . import _config
from ._redact import describe_args
from .alerts import Alert, emit_alert
from .bypasses import Bypass, alert_expired, lookup_bypass, record_bypass_use
from .errors import (
    BudgetExceeded,
    ConfigurationError,
    LoopDetected,
    NoActivePool,
)

if TYPE_CHECKING:
    from types import TracebackType

__all__ = [
    "STANDARD_DIMENSIONS",
    "BudgetPool",
    "Reservation",
    "LedgerRow",
    "PoolSnapshot",
    "current_pool",
    "charge",
]

P = ParamSpec("P")
R = TypeVar("R")

STANDARD_DIMENSIONS: tuple[str, ...] = (
    "llm_calls",
    "tool_calls",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cost_usd",
    "wall_seconds",
)
_COUNTED = STANDARD_DIMENSIONS[:-1]  # wall_seconds is measured, not charged
_EPS = 1e-9
_INHERIT: Any = object()
DEFAULT_LOOP_LIMIT = 3
DEFAULT_LOOP_WINDOW = 256

_current: ContextVar[BudgetPool | None] = ContextVar("agentguard_pool", default=None)
_ids = itertools.count(1)

# Listeners (the store, dead letters): called outside the lock, never inside the hot path.
_stop_listeners: list[Callable[[BudgetPool, BudgetExceeded, BudgetPool], None]] = []
_close_listeners: list[Callable[[BudgetPool, BaseException | None], None]] = []
_created_listeners: list[Callable[[BudgetPool], None]] = []
"""Called at the end of `BudgetPool.__init__` (the store tracks pools whose rows to flush)."""

_TOOL_CHARGE: Mapping[str, float] = {"tool_calls": 1}
_EPOCH_OFFSET = time.time() - time.perf_counter()
_now = time.perf_counter
"""Ledger rows store `perf_counter()` (one cheap clock read); `ts` adds `_EPOCH_OFFSET`."""
_LLM_CHARGE: Mapping[str, float] = {"llm_calls": 1}


class _LoopWindow:
    """Identical-call counts over the last `window` tool calls of a run (two half buckets).

    A key's count is its count in the current half plus the previous half, so every call in
    the last `window / 2` calls is always counted, and none older than `window` calls is.
    Memory is bounded by `window` keys whatever the run's length.
    """

    __slots__ = ("cur", "half", "n", "prev")

    def __init__(self, window: int) -> None:
        self.cur: dict[int, int] = {}
        self.prev: dict[int, int] = {}
        self.n = 0
        self.half = max(1, window // 2)

    def hit(self, key: int, limit: int) -> int:
        """Count one call of `key` and return its count in the window; a count over `limit`
        is not recorded (that call is refused). Caller holds the pool tree's lock.

        `BudgetPool._charge_tool`'s fast path inlines this (a method call costs ~60 ns there).
        """
        cur = self.cur
        mine = cur.get(key, 0) + 1
        n = mine + self.prev.get(key, 0)
        if n <= limit:
            cur[key] = mine
            self.n += 1
            if self.n >= self.half:
                self.prev = cur
                self.cur = {}
                self.n = 0
        return n


def _loop_key(tool: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int:
    """The identity of a tool call for the loop guard: the tool and its arguments' values.

    `BudgetPool._charge_tool` inlines this on its hot path.
    """
    try:
        return hash((tool, args, frozenset(kwargs.items()))) if kwargs else hash((tool, args))
    except TypeError:  # unhashable arguments (dicts, lists): hash their repr instead
        return hash((tool, repr(args), repr(sorted(kwargs.items(), key=_first))))


def _first(item: tuple[str, Any]) -> str:
    return item[0]


class LedgerRow(NamedTuple):
    """One guarded event: what was spent, where, and how it ended.

    `amounts` are the *spent* deltas this row applied (reservations are not spending); for
    every pool, `spent` equals the sum of the `amounts` of the rows charged to it or to any of
    its descendants. `flags` marks gaps (`usage_unknown`, `cost_unknown`, `overrun`, ...).
    """

    ts: float
    run_id: str
    pool: str
    pool_path: str
    route: str | None
    kind: str
    amounts: Mapping[str, float]
    outcome: str
    duration: float | None
    flags: tuple[str, ...]
    detail: Mapping[str, Any] | None


@dataclass(frozen=True)
class PoolSnapshot:
    """A point-in-time view of a pool and its children, for reports and tests."""

    name: str
    path: str
    run_id: str
    limits: Mapping[str, float]
    spent: Mapping[str, float]
    reserved: Mapping[str, float]
    remaining: Mapping[str, float]
    stopped: bool
    stop_reason: str | None
    children: tuple[PoolSnapshot, ...] = field(default_factory=tuple)
    stopped_by: str | None = None

    def render(self, indent: str = "") -> str:
        """A readable tree: one line per pool, limited dimensions as spent/limit."""
        parts = []
        for dim, limit in self.limits.items():
            spent = self.spent.get(dim, 0.0)
            parts.append(f"{dim} {_num(spent)}/{_num(limit)}")
        counted = [
            f"{dim} {_num(v)}"
            for dim, v in self.spent.items()
            if dim not in self.limits and v and dim != "wall_seconds"
        ]
        if not self.stopped:
            state = "ok"
        elif self.stopped_by and self.stopped_by != self.name:
            state = f"STOPPED by {self.stopped_by!r}"
        else:
            state = "STOPPED"
        line = f"{indent}{self.name} [{state}] " + ", ".join(parts + counted)
        lines = [line.rstrip()]
        if self.stop_reason and self.stopped and self.stopped_by == self.name:
            lines.append(f"{indent}  stopped: {self.stop_reason.split('. ')[0]}")
        for child in self.children:
            lines.append(child.render(indent + "  "))
        return "\n".join(lines)


def _num(value: float) -> str:
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.4g}"


class BudgetPool:
    """A budget for one run, shared by everything that runs inside it.

    Use it as `with BudgetPool(...):` or `async with BudgetPool(...):`. Every dimension is
    optional (None = unlimited, but still counted). Thread-safe; one lock per pool tree.

    Args:
        llm_calls, tool_calls: call counts charged by `@ag.llm_call` / `@ag.tool_call`.
        input_tokens, output_tokens, total_tokens, cost_usd: reserved before an LLM call
            and settled from its response.
        wall_seconds: the run is refused its next call once this much monotonic time has
            passed since the pool was entered.
        custom: extra counters, e.g. `{"emails_sent": 5}`, charged with `ag.charge(...)`.
        name: shown in errors, reports and the ledger.
        warn_at: fraction of any limit at which a `budget.warn` alert fires (None: never).
        loop_limit: how many identical calls (same tool, same arguments) are allowed within
            the last `loop_window` tool calls of the run; None disables the loop guard.
            Children inherit their parent's setting unless given one.
        backend: a distributed backend (e.g. `ag.RedisBackend(...)`); None keeps the pool in
            this process's memory (or uses `ag.configure(backend=...)` when `key` is given).
        key: the shared pool's key in the backend (instead of `RedisBackend(key=...)`), so one
            backend can serve many pools, e.g. `key=f"tenant:{tenant}"`.
        window: with a backend, a budget per time window (`"1d"`, `"1h"`, seconds or a
            timedelta), aligned to the UTC epoch: each window has its own key, so nothing
            resets at midnight; every run of that key spends from the current window.
    """

    # Slots: every guarded call reads a dozen of these (a slot is one load at a fixed offset,
    # an attribute of a ~45-key instance dict is a hashed lookup).
    __slots__ = (
        "__weakref__",
        "_chain",
        "_chain_deadline",
        "_charged",
        "_children",
        "_closed",
        "_corrections",
        "_deadline",
        "_fast",
        "_gates",
        "_has_deadline",
        "_ledger",
        "_lock",
        "_loop",
        "_loop_limit",
        "_loop_limit_given",
        "_loop_window",
        "_parent",
        "_remote",
        "_reserved",
        "_root",
        "_simple",
        "_spent",
        "_started",
        "_stopped",
        "_tokens",
        "_tool_gate",
        "_tool_limit",
        "_tool_warn",
        "_wall_limit",
        "_warn_marks",
        "backend",
        "custom_dimensions",
        "id",
        "key",
        "limits",
        "name",
        "path",
        "provenance",
        "run_id",
        "warn_at",
        "window",
    )

    def __init__(
        self,
        *,
        llm_calls: int | None = None,
        tool_calls: int | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        total_tokens: int | None = None,
        cost_usd: float | None = None,
        wall_seconds: float | None = None,
        custom: Mapping[str, float] | None = None,
        name: str | None = None,
        warn_at: float | None = 0.8,
        loop_limit: int | None = _INHERIT,
        loop_window: int = DEFAULT_LOOP_WINDOW,
        backend: Any = None,
        key: str | None = None,
        window: str | float | timedelta | None = None,
    ) -> None:
        self.id = next(_ids)
        self.name = name or f"pool-{self.id}"
        if (key is not None or window is not None) and backend is None:
            backend = _config.get_config().backend
            if backend is None:
                raise ConfigurationError(
                    f"BudgetPool {self.name!r}: key={key!r} / window={window!r} name a pool "
                    f"shared through a backend, and none is given. Fix: pass "
                    f"backend=ag.RedisBackend(url), or set one for the process with "
                    f"ag.configure(backend=ag.RedisBackend(url))."
                )
        backend_key = getattr(backend, "key", None)
        if key is not None and backend_key is not None and key != backend_key:
            raise ConfigurationError(
                f"BudgetPool {self.name!r}: key={key!r} differs from the backend's "
                f"key={backend_key!r}. Fix: give the key in one place."
            )
        self.key: str | None = key
        self.window: float | None = None
        if window is not None:
            from .backends.redis import parse_window

            self.window = parse_window(window, pool=self.name)
        limits: dict[str, float] = {}
        given = {
            "llm_calls": llm_calls,
            "tool_calls": tool_calls,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "total_tokens": total_tokens,
            "cost_usd": cost_usd,
        }
        for dim, value in given.items():
            if value is not None:
                limits[dim] = self._check_limit(dim, value)
        for dim, value in (custom or {}).items():
            if dim in STANDARD_DIMENSIONS:
                raise ConfigurationError(
                    f"BudgetPool {self.name!r}: custom counter {dim!r} clashes with the "
                    f"standard dimension of the same name; pass it as {dim}=... instead."
                )
            if not dim.isidentifier():
                raise ConfigurationError(
                    f"BudgetPool {self.name!r}: custom counter name {dim!r} must be a Python "
                    f"identifier (it is charged as ag.charge({dim}=1))."
                )
            limits[dim] = self._check_limit(dim, value)
        if warn_at is not None and not 0 < warn_at <= 1:
            raise ConfigurationError(
                f"BudgetPool {self.name!r}: warn_at must be in (0, 1] or None, got {warn_at!r}."
            )
        if loop_limit is not _INHERIT and loop_limit is not None and loop_limit < 1:
            raise ConfigurationError(
                f"BudgetPool {self.name!r}: loop_limit must be a positive int or None, got "
                f"{loop_limit!r}."
            )
        if loop_window < 1:
            raise ConfigurationError(
                f"BudgetPool {self.name!r}: loop_window must be >= 1, got {loop_window!r}."
            )
        self.limits: Mapping[str, float] = limits
        self.custom_dimensions: frozenset[str] = frozenset(custom or {})
        self.warn_at = warn_at
        self._wall_limit = (
            self._check_limit("wall_seconds", wall_seconds) if wall_seconds is not None else None
        )
        self._loop_limit_given = loop_limit
        self._loop_limit: int | None = DEFAULT_LOOP_LIMIT if loop_limit is _INHERIT else loop_limit
        self._loop_window = loop_window
        self.backend = backend
        self._spent: dict[str, float] = dict.fromkeys(_COUNTED, 0.0)
        self._reserved: dict[str, float] = dict.fromkeys(_COUNTED, 0.0)
        for dim in self.custom_dimensions:
            self._spent[dim] = 0.0
            self._reserved[dim] = 0.0
        self._warn_marks: dict[str, float] = (
            {dim: limit * warn_at for dim, limit in limits.items() if limit > 0}
            if warn_at
            else {}
        )
        self._stopped: BudgetExceeded | None = None
        self._children: list[BudgetPool] = []
        self._tokens: list[Any] = []
        self._charged = False
        self._closed = False
        # root state (re-pointed when the pool is entered under a parent)
        self._parent: BudgetPool | None = None
        self._root: BudgetPool = self
        self._chain: tuple[BudgetPool, ...] = (self,)
        self._lock: threading.Lock = threading.Lock()
        self.run_id: str = uuid.uuid4().hex[:16]
        self.path = self.name
        self._ledger: list[tuple[Any, ...]] = []
        self._loop = _LoopWindow(loop_window)
        self.provenance: dict[str, deque[Any]] = {}
        self._corrections: dict[str, int] = {}  # per tool, on the root (argument guard)
        self._started = _config.get_config().clock.monotonic()
        self._deadline: float | None = (
            self._started + self._wall_limit if self._wall_limit is not None else None
        )
        self._has_deadline = self._deadline is not None
        self._chain_deadline = self._has_deadline
        self._remote = backend is not None
        self._tool_limit: float | None = limits.get("tool_calls")
        self._tool_warn: float | None = self._warn_marks.get("tool_calls")
        self._update_gate()
        if _created_listeners:
            for listener in list(_created_listeners):
                listener(self)

    def _update_gate(self) -> None:
        """Recompute the fast-path gate: the tool-call count below which nothing can happen
        (no refusal, no warn alert) for a lone in-memory pool without a deadline."""
        gate = math.inf
        if self._tool_limit is not None:
            gate = self._tool_limit + 1 - 1e-9  # used <= limit passes
        if self._tool_warn is not None:
            gate = min(gate, self._tool_warn)
        self._tool_gate = gate
        self._simple = self._parent is None and not self._remote and not self._chain_deadline
        # The same idea for `_admit` / `_settle` on any in-memory chain without deadline: per
        # limited dimension, the level below which nothing can happen (no refusal, no warn).
        # Below every gate of every pool in the chain, the fast paths apply the amounts and
        # nothing else; at or above one, the general path decides. A gate that is stale
        # (its warn mark already fired) is lower than the real one: only slower, never wrong.
        gates: dict[str, float] = {dim: limit + _EPS for dim, limit in self.limits.items()}
        for dim, mark in self._warn_marks.items():
            gates[dim] = min(mark, gates.get(dim, math.inf))
        self._gates: tuple[tuple[str, float], ...] = tuple(gates.items())
        self._fast = not self._remote and not self._chain_deadline

    @staticmethod
    def _check_limit(dim: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigurationError(
                f"BudgetPool limit {dim}= must be a number or None, got {value!r}."
            )
        if value < 0 or value != value:
            raise ConfigurationError(
                f"BudgetPool limit {dim}= must be >= 0, got {value!r}. Use None for unlimited."
            )
        return float(value)

    # -- tree ------------------------------------------------------------------------------

    @property
    def parent(self) -> BudgetPool | None:
        return self._parent

    @property
    def root(self) -> BudgetPool:
        return self._root

    @property
    def children(self) -> tuple[BudgetPool, ...]:
        with self._lock:
            return tuple(self._children)

    def _attach(self, parent: BudgetPool | None) -> None:
        if parent is None or parent is self._parent or parent is self:
            return
        if self._charged or self._parent is not None:
            where = (
                f"under {self._parent.name!r}" if self._parent else "as a root pool (it has spent)"
            )
            raise ConfigurationError(
                f"BudgetPool {self.name!r} is already in use {where} and cannot be re-entered "
                f"under {parent.name!r}. Fix: create a new BudgetPool for each sub-agent run, "
                f"and use pool.bind(fn) to hand a pool to another thread."
            )
        if self in parent._chain:
            raise ConfigurationError(
                f"BudgetPool {self.name!r} cannot be entered under its own descendant "
                f"{parent.name!r}."
            )
        root = parent._root
        with root._lock:
            self._parent = parent
            self._root = root
            self._chain = (self, *parent._chain)
            self._lock = root._lock
            self.run_id = root.run_id
            self.path = f"{parent.path}/{self.name}"
            self._ledger = root._ledger
            self._loop = root._loop
            self.provenance = root.provenance
            self._chain_deadline = any(p._wall_limit is not None for p in self._chain)
            self._remote = any(p.backend is not None for p in self._chain)
            self._update_gate()
            for dim in parent._spent:
                self._spent.setdefault(dim, 0.0)
                self._reserved.setdefault(dim, 0.0)
            if self._loop_limit_given is _INHERIT:
                self._loop_limit = parent._loop_limit
            parent._children.append(self)

    def _enter(self) -> Self:
        parent = _current.get()
        if not self._tokens:
            self._attach(parent)
            if not self._charged:
                self._started = _config.get_config().clock.monotonic()
                if self._wall_limit is not None:
                    self._deadline = self._started + self._wall_limit
        self._tokens.append(_current.set(self))
        return self

    def _exit(self, exc: BaseException | None) -> None:
        token = self._tokens.pop()
        _current.reset(token)
        if not self._tokens and self._parent is None:
            self._closed = True
            for listener in list(_close_listeners):
                listener(self, exc)

    def __enter__(self) -> Self:
        return self._enter()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exit(exc)

    async def __aenter__(self) -> Self:
        return self._enter()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exit(exc)

    @overload
    def bind(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]: ...
    @overload
    def bind(self, fn: Callable[P, R]) -> Callable[P, R]: ...
    def bind(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Wrap `fn` so that it runs with this pool active, wherever it is called from.

        For raw `threading.Thread` targets, callbacks and executors that do not carry the
        caller's context (Python copies contexts into asyncio tasks, `asyncio.to_thread` and
        `contextvars.copy_context().run`, but not into `threading.Thread`).
        """
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def bound_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                token = _current.set(self)
                try:
                    return await fn(*args, **kwargs)
                finally:
                    _current.reset(token)

            return bound_async

        @functools.wraps(fn)
        def bound(*args: P.args, **kwargs: P.kwargs) -> Any:
            token = _current.set(self)
            try:
                return fn(*args, **kwargs)
            finally:
                _current.reset(token)

        return bound

    # -- state -----------------------------------------------------------------------------

    @property
    def stopped(self) -> bool:
        """True once this pool or an ancestor has refused a charge."""
        return any(p._stopped is not None for p in self._chain)

    @property
    def stop_error(self) -> BudgetExceeded | None:
        """The refusal that stopped this pool (or the nearest stopped ancestor)."""
        for p in self._chain:
            if p._stopped is not None:
                return p._stopped
        return None

    def _elapsed(self) -> float:
        return _config.get_config().clock.monotonic() - self._started

    @property
    def spent(self) -> dict[str, float]:
        """What this pool and its descendants have spent, by dimension (a copy)."""
        with self._lock:
            spent = dict(self._spent)
        spent["wall_seconds"] = self._elapsed()
        return spent

    @property
    def reserved(self) -> dict[str, float]:
        """Estimates held by calls in flight (a copy); zero once every call has settled."""
        with self._lock:
            return {k: v for k, v in self._reserved.items() if v}

    @property
    def remaining(self) -> dict[str, float]:
        """For each limited dimension: limit - spent - reserved (never below zero)."""
        with self._lock:
            rem = {
                dim: max(0.0, limit - self._spent.get(dim, 0.0) - self._reserved.get(dim, 0.0))
                for dim, limit in self.limits.items()
            }
        if self._wall_limit is not None:
            rem["wall_seconds"] = max(0.0, self._wall_limit - self._elapsed())
        return rem

    @property
    def all_limits(self) -> dict[str, float]:
        limits = dict(self.limits)
        if self._wall_limit is not None:
            limits["wall_seconds"] = self._wall_limit
        return limits

    def snapshot(self) -> PoolSnapshot:
        """This pool and its descendants, as plain data."""
        with self._lock:
            children = tuple(self._children)
        stop = self.stop_error
        stopped_by = next((p.name for p in self._chain if p._stopped is not None), None)
        return PoolSnapshot(
            name=self.name,
            path=self.path,
            run_id=self.run_id,
            limits=self.all_limits,
            spent=self.spent,
            reserved=self.reserved,
            remaining=self.remaining,
            stopped=stop is not None,
            stop_reason=str(stop) if stop is not None else None,
            children=tuple(c.snapshot() for c in children),
            stopped_by=stopped_by,
        )

    def tree(self) -> str:
        """A readable report of this pool and its descendants."""
        return self.snapshot().render()

    @property
    def ledger(self) -> list[LedgerRow]:
        """Every row of this run's ledger charged to this pool or a descendant (a copy)."""
        with self._lock:
            raw = list(self._ledger)
        rows = [_materialize(r) for r in raw]
        if self._parent is None:
            return rows
        prefix = self.path
        return [r for r in rows if r.pool_path == prefix or r.pool_path.startswith(prefix + "/")]

    def __repr__(self) -> str:
        limits = ", ".join(f"{k}={_num(v)}" for k, v in self.all_limits.items())
        return f"BudgetPool({self.name!r}, {limits})"

    # -- charging --------------------------------------------------------------------------

    def _refusal(
        self,
        p: BudgetPool,
        dim: str,
        requested: float,
        route: str | None,
        function: str | None,
    ) -> BudgetExceeded:
        return BudgetExceeded(
            pool=p.name,
            dimension=dim,
            limit=p.limits.get(dim),
            spent=p._spent.get(dim, 0.0),
            reserved=p._reserved.get(dim, 0.0),
            requested=requested,
            route=route,
            function=function,
            charged_pool=self.name,
        )

    def _already_stopped(
        self, p: BudgetPool, route: str | None, function: str | None
    ) -> BudgetExceeded:
        first = cast(BudgetExceeded, p._stopped)
        call = f"function {function!r}" if function else "a direct ag.charge()"
        if route:
            call += f", route {route!r}"
        err = BudgetExceeded(
            f"budget pool {p.name!r} is stopped since an earlier refusal, so the call from "
            f"{call} was refused before it started (a stopped pool never resumes, even if the "
            f"first error was caught). The first refusal: {first}",
            pool=p.name,
            dimension=first.dimension,
            limit=first.limit,
            spent=p._spent.get(first.dimension, first.spent),
            requested=0.0,
            route=route,
            function=function,
            charged_pool=self.name,
            stopped_earlier=True,
        )
        err.__cause__ = first
        return err

    def _wall_refusal(
        self, p: BudgetPool, now: float, route: str | None, function: str | None
    ) -> BudgetExceeded:
        return BudgetExceeded(
            pool=p.name,
            dimension="wall_seconds",
            limit=p._wall_limit,
            spent=now - p._started,
            requested=0.0,
            route=route,
            function=function,
            charged_pool=self.name,
        )

    def _charge_tool(
        self,
        tool: str,
        route: str | None,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        loop_limit: int | None,
    ) -> None:
        """Hot path: one tool call, loop guard included. Raises; never returns a refusal."""
        if self._remote:
            from ._remote import remote_tool

            remote_tool(self, tool, route, args, kwargs, loop_limit)
            return
        loop_key = 0
        if loop_limit is not None:  # `_loop_key`, inlined (hot path)
            try:
                loop_key = (
                    hash((tool, args, frozenset(kwargs.items()))) if kwargs else hash((tool, args))
                )
            except TypeError:  # unhashable arguments (dicts, lists): hash their repr instead
                loop_key = hash((tool, repr(args), repr(sorted(kwargs.items(), key=_first))))
        if self._simple:
            # Fast path: a lone in-memory pool with no deadline, well inside its limit and its
            # warn mark, and (when guarded) a loop count below the limit. Anything else takes
            # the general path below, which re-checks everything under the lock.
            lock = self._lock
            lock.acquire()
            spent = self._spent
            used = spent["tool_calls"] + 1
            if self._stopped is None and used + self._reserved["tool_calls"] < self._tool_gate:
                if loop_limit is None:
                    spent["tool_calls"] = used
                    lock.release()
                    return
                loop = self._loop
                cur = loop.cur
                mine = cur.get(loop_key, 0) + 1
                if mine + loop.prev.get(loop_key, 0) <= loop_limit:
                    spent["tool_calls"] = used
                    cur[loop_key] = mine
                    loop.n += 1
                    if loop.n >= loop.half:
                        loop.prev = cur
                        loop.cur = {}
                        loop.n = 0
                    lock.release()
                    return
            lock.release()
        err: BudgetExceeded | None = None
        stopped: BudgetPool | None = None
        warns: list[tuple[BudgetPool, str]] | None = None
        bypasses: list[_BypassNote] | None = None
        now = _config._config.clock.monotonic() if self._chain_deadline else 0.0
        chain = self._chain
        lock = self._lock
        lock.acquire()
        try:
            for p in chain:
                if p._stopped is not None:
                    err = self._already_stopped(p, route, tool)
                    break
                if p._has_deadline and now > p._deadline:  # type: ignore[operator]
                    bypasses = _limit_bypass(p, "wall_seconds", now - p._started, bypasses)
                    if _let_through(bypasses, p):
                        continue  # one use per pool and call: the bypass covers its limits
                    err, stopped = self._wall_refusal(p, now, route, tool), p
                    break
                limit = p._tool_limit
                if limit is not None and (
                    p._spent["tool_calls"] + p._reserved["tool_calls"] + 1 > limit + _EPS
                ):
                    used = p._spent["tool_calls"] + p._reserved["tool_calls"] + 1
                    bypasses = _limit_bypass(p, "tool_calls", used, bypasses)
                    if not _let_through(bypasses, p):
                        err, stopped = self._refusal(p, "tool_calls", 1, route, tool), p
                        break
            else:
                if loop_limit is not None:
                    err = self._loop_hit(tool, args, kwargs, loop_key, loop_limit, route)
                    if err is not None:
                        stopped = self
                if err is None:
                    for p in chain:
                        spent = p._spent
                        used = spent["tool_calls"] + 1
                        spent["tool_calls"] = used
                        mark = p._tool_warn
                        if mark is not None and used + p._reserved["tool_calls"] >= mark:
                            p._tool_warn = None
                            p._warn_marks.pop("tool_calls", None)
                            p._update_gate()
                            warns = warns or []
                            warns.append((p, "tool_calls"))
                    if not self._charged:
                        self._charged = self._root._charged = True
            if err is not None:
                if stopped is not None:
                    stopped._stopped = err
                self._ledger.append(
                    (_now(), self, route, "tool", {}, "refused", None, (err.dimension,), None)
                )
        finally:
            lock.release()
        if bypasses:
            _report_bypasses(bypasses, route, tool)
        if err is not None:
            if stopped is not None:
                self._after_stop(stopped, err)
            raise err
        if warns:
            self._emit_warns(warns, route)

    def _loop_hit(
        self,
        tool: str,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        loop_key: int,
        loop_limit: int,
        route: str | None,
    ) -> LoopDetected | None:
        """Count one call of `loop_key` in the run's window (caller holds the lock); the
        `LoopDetected` refusal when it is one identical call too many."""
        n = self._loop.hit(loop_key, loop_limit)
        if n <= loop_limit:
            return None
        return LoopDetected(
            pool=self.name,
            tool=tool,
            arguments=describe_args(args, kwargs),
            count=n,
            loop_limit=loop_limit,
            route=route,
        )

    def _admit(
        self,
        charge: Mapping[str, float],
        reserve: Mapping[str, float],
        route: str | None,
        function: str | None,
        kind: str,
    ) -> Reservation:
        """Charge `charge` and reserve `reserve` on the whole chain, all or nothing.

        Every dimension named must exist on the pool (the public `reserve()` / `charge()`
        check what the user names; the guards only name standard dimensions).
        """
        if self._remote:
            return self._remote_admit(charge, reserve, route, function, kind)
        if self._fast:
            # Fast path (every LLM call goes through here): no pool of the chain stopped,
            # and every limited dimension stays below its gate (see `_update_gate`).
            lock = self._lock
            lock.acquire()
            for p in self._chain:
                if p._stopped is not None:
                    break
                gates = p._gates
                if gates:
                    sp = p._spent
                    rs = p._reserved
                    for dim, gate in gates:
                        if sp[dim] + rs[dim] + charge.get(dim, 0.0) + reserve.get(dim, 0.0) >= gate:
                            break
                    else:
                        continue
                    break
            else:
                for p in self._chain:
                    sp = p._spent
                    for dim, amount in charge.items():
                        sp[dim] += amount
                    rs = p._reserved
                    for dim, amount in reserve.items():
                        rs[dim] += amount
                if not self._charged:
                    self._charged = self._root._charged = True
                lock.release()
                return Reservation(self, charge, reserve, route, function, kind)
            lock.release()
        warns = self._admit_local(charge, reserve, route, function, kind)
        if warns:
            self._emit_warns(warns, route)
        # Not copied: every caller hands over a fresh dict or a module constant, and a
        # reservation never changes its amounts.
        return Reservation(self, charge, reserve, route, function, kind)

    def _admit_local(
        self,
        charge: Mapping[str, float],
        reserve: Mapping[str, float],
        route: str | None,
        function: str | None,
        kind: str,
    ) -> list[tuple[BudgetPool, str]] | None:
        """The general admission of the chain's in-process part, all or nothing: stops,
        deadlines, limits (with `budget:<pool>` bypasses), warn marks; raises (and stops the
        pool) on refusal; returns the warn marks reached, for the caller to alert.

        A Redis-backed pool's stop flag, limits and marks are the Redis script's (checked in
        chain order with its other Redis pools, so the same pool refuses as in memory): only
        its process-local stops (the loop guard) and its deadline are checked here. In an
        all-memory chain every pool is checked in full.
        """
        err: BudgetExceeded | None = None
        stopped: BudgetPool | None = None
        warns: list[tuple[BudgetPool, str]] | None = None
        bypasses: list[_BypassNote] | None = None
        now = _config._config.clock.monotonic() if self._chain_deadline else 0.0
        with self._lock:
            for p in self._chain:
                local = p.backend is None
                stop = p._stopped
                if stop is not None and (local or isinstance(stop, LoopDetected)):
                    err = self._already_stopped(p, route, function)
                    break
                if p._has_deadline and now > cast(float, p._deadline):
                    bypasses = _limit_bypass(p, "wall_seconds", now - p._started, bypasses)
                    if _let_through(bypasses, p):
                        continue  # one use per pool and call: the bypass covers its limits
                    err, stopped = self._wall_refusal(p, now, route, function), p
                    break
                limits = p.limits
                if not limits or not local:
                    continue
                for dim, limit in limits.items():  # a pool's few limits, not every amount
                    if dim not in charge and dim not in reserve:
                        continue
                    need = charge.get(dim, 0.0) + reserve.get(dim, 0.0)
                    if p._spent[dim] + p._reserved[dim] + need > limit + _EPS:
                        used = p._spent[dim] + p._reserved[dim] + need
                        bypasses = _limit_bypass(p, dim, used, bypasses)
                        if _let_through(bypasses, p):
                            break  # one use per pool and call; the pool's other limits too
                        err, stopped = self._refusal(p, dim, need, route, function), p
                        break
                if err is not None:
                    break
            if err is None:
                for p in self._chain:
                    for dim, amount in charge.items():
                        p._spent[dim] += amount
                    for dim, amount in reserve.items():
                        p._reserved[dim] += amount
                    if p._warn_marks and p.backend is None:
                        for dim in itertools.chain(charge, reserve):
                            mark = p._warn_marks.get(dim)
                            if mark is not None and p._spent[dim] + p._reserved[dim] >= mark:
                                del p._warn_marks[dim]
                                if dim == "tool_calls":
                                    p._tool_warn = None
                                p._update_gate()
                                warns = warns or []
                                warns.append((p, dim))
                if not self._charged:
                    self._charged = self._root._charged = True
            else:
                if stopped is not None:
                    stopped._stopped = err
                self._ledger.append(
                    (_now(), self, route, kind, {}, "refused", None, (err.dimension,), None)
                )
        if bypasses:
            _report_bypasses(bypasses, route, function)
        if err is not None:
            if stopped is not None:
                self._after_stop(stopped, err)
            raise err
        return warns

    def _tool_row(
        self,
        route: str | None,
        started: float,
        outcome: str,
        duration: float | None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        """The ledger row of a tool call charged with `_charge_tool` (for adapters).

        `started` is a `time.perf_counter()` reading taken when the tool started.
        """
        self._ledger.append(
            (started, self, route, "tool", _TOOL_CHARGE, outcome, duration, (), detail)
        )

    def _known_dimensions(self, amounts: Mapping[str, float]) -> None:
        if not amounts.keys() <= self._spent.keys():
            for dim in amounts:
                if dim not in self._spent:
                    self._unknown_dimension(dim)

    def _unknown_dimension(self, dim: str) -> None:
        declared = sorted({d for p in self._chain for d in p.custom_dimensions})
        raise ConfigurationError(
            f"ag.charge({dim}=...): no pool in the active chain "
            f"({' <- '.join(p.name for p in self._chain)}) declares a counter named {dim!r}. "
            f"Declared custom counters: {declared or 'none'}. Standard dimensions: "
            f"{', '.join(_COUNTED)}. Fix: declare it with BudgetPool(custom={{{dim!r}: N}}) "
            f"or correct the name."
        )

    def _settle(
        self, reservation: Reservation, actual: Mapping[str, float], once: bool = False
    ) -> bool:
        """Return the reservation and charge `actual` (may overrun: the pool then stops).

        `once=True` (an in-memory `Reservation.settle`): mark the reservation finished under
        the pool's lock, and return False, doing nothing, when it already was. The remote
        path marks it itself (`Reservation._finish`) before the round trip.
        """
        over: list[tuple[BudgetPool, str]] = []
        warns: list[tuple[BudgetPool, str]] | None = None
        bypasses: list[_BypassNote] | None = None
        if not actual.keys() <= self._spent.keys():
            for dim in actual:
                if dim not in self._spent:
                    self._unknown_dimension(dim)
        with self._lock:
            if once:
                if reservation.done:
                    return False
                reservation.done = True
            for p in self._chain:
                for dim, amount in reservation.reserved.items():
                    left = p._reserved[dim] - amount
                    p._reserved[dim] = left if left > 0.0 else 0.0
                limits = p.limits
                marks = p._warn_marks
                for dim, amount in actual.items():
                    p._spent[dim] += amount
                    if not limits and not marks:
                        continue  # a pool that only counts (the common child pool)
                    limit = limits.get(dim)
                    if limit is not None and p._spent[dim] + p._reserved[dim] > limit + _EPS:
                        over.append((p, dim))
                    mark = marks.get(dim)
                    if mark is not None and p._spent[dim] + p._reserved[dim] >= mark:
                        del p._warn_marks[dim]
                        if dim == "tool_calls":
                            p._tool_warn = None
                        p._update_gate()
                        warns = warns or []
                        warns.append((p, dim))
            first_err: tuple[BudgetPool, BudgetExceeded] | None = None
            for p, dim in over:
                if p._stopped is None:
                    used = p._spent[dim] + p._reserved[dim]
                    bypasses = _limit_bypass(p, dim, used, bypasses, verb="stopped the pool at")
                    if _let_through(bypasses, p):
                        continue
                    err = _overrun_error(
                        p, dim, p.limits[dim], p._spent[dim], actual, reservation, self
                    )
                    p._stopped = err
                    first_err = first_err or (p, err)
        if bypasses:
            _report_bypasses(bypasses, reservation.route, reservation.function)
        if first_err is not None:
            self._overrun_stopped(first_err[0], first_err[1], reservation.route)
        if warns:
            self._emit_warns(warns, reservation.route)
        return True

    def _settle_fast(self, reservation: Reservation, actual: Mapping[str, float]) -> bool:
        """`_settle(reservation, actual, once=True)` when every limited dimension of the chain
        stays below its gate after it (computed exactly as `_settle` computes it). False:
        nothing done, the general path decides (and answers a finished reservation).
        Every dimension of `actual` must exist on the pool (`Reservation.settle` checks)."""
        reserved = reservation.reserved
        lock = self._lock
        lock.acquire()
        if reservation.done:
            lock.release()
            return False
        for p in self._chain:
            gates = p._gates
            if gates:
                sp = p._spent
                rs = p._reserved
                for dim, gate in gates:
                    left = rs[dim] - reserved.get(dim, 0.0)
                    if (sp[dim] + actual.get(dim, 0.0)) + (left if left > 0.0 else 0.0) >= gate:
                        lock.release()
                        return False
        reservation.done = True
        for p in self._chain:
            rs = p._reserved
            for dim, amount in reserved.items():
                left = rs[dim] - amount
                rs[dim] = left if left > 0.0 else 0.0
            sp = p._spent
            for dim, amount in actual.items():
                sp[dim] += amount
        lock.release()
        return True

    def _overrun_stopped(self, stopped: BudgetPool, err: BudgetExceeded, route: str | None) -> None:
        """Report an overrun that stopped `stopped`: one `budget.overrun` alert, then the stop
        listeners (dead letter). Called outside the lock, by in-memory and remote settles."""
        emit_alert(
            Alert(
                kind="budget.overrun",
                message=str(err),
                guard_id=f"budget:{stopped.name}",
                pool=stopped.name,
                route=route,
                run_id=self.run_id,
                severity="error",
            )
        )
        self._after_stop(stopped, err, alert=False)

    def _release(self, reservation: Reservation, once: bool = False) -> bool:
        """Give the reservation back; `once`: as in `_settle`."""
        with self._lock:
            if once:
                if reservation.done:
                    return False
                reservation.done = True
            for p in self._chain:
                for dim, amount in reservation.reserved.items():
                    p._reserved[dim] = max(0.0, p._reserved[dim] - amount)
        return True

    def _remote_admit(
        self,
        charge: Mapping[str, float],
        reserve: Mapping[str, float],
        route: str | None,
        function: str | None,
        kind: str = "tool",
    ) -> Reservation:
        from ._remote import remote_admit

        return remote_admit(self, charge, reserve, route, function, kind)

    def _emit_warns(self, warns: list[tuple[BudgetPool, str]], route: str | None) -> None:
        for p, dim in warns:
            limit = p.limits[dim]
            with p._lock:
                used = p._spent[dim] + p._reserved[dim]
            emit_alert(
                Alert(
                    kind="budget.warn",
                    message=(
                        f"budget pool {p.name!r} has used {_num(used)} of its {dim} limit "
                        f"{_num(limit)} ({used / limit:.0%} >= warn_at {p.warn_at:.0%})"
                        + (f"; last call from route {route!r}" if route else "")
                    ),
                    guard_id=f"budget:{p.name}",
                    pool=p.name,
                    route=route,
                    run_id=p.run_id,
                    data={"dimension": dim, "used": used, "limit": limit},
                )
            )

    def _after_stop(self, stopped: BudgetPool, err: BudgetExceeded, alert: bool = True) -> None:
        if alert:
            emit_alert(
                Alert(
                    kind="budget.stopped",
                    message=str(err),
                    guard_id=f"budget:{stopped.name}",
                    pool=stopped.name,
                    route=err.route,
                    run_id=self.run_id,
                    severity="error",
                    data={
                        "dimension": err.dimension,
                        "limit": err.limit,
                        "spent": err.spent,
                        "requested": err.requested,
                        "function": err.function,
                    },
                )
            )
        from . import telemetry

        telemetry.counter(telemetry.METRIC.REFUSALS).add(
            1, {"agentguard.pool": stopped.name, "agentguard.dimension": err.dimension}
        )
        for listener in list(_stop_listeners):
            listener(stopped, err, self)

    def _stop_for(
        self,
        cause: BaseException,
        guard_id: str,
        *,
        dimension: str,
        limit: float | None,
        spent: float,
        route: str | None,
        function: str | None,
        alert_kind: str,
    ) -> BudgetExceeded:
        """Stop this pool because a non-budget guard gave up (e.g. `CorrectionsExhausted`).

        Recorded like a budget refusal: the pool is stopped (every later charge on it or a
        descendant is refused), a `refused` ledger row is written, `alert_kind` fires, the
        refusal metric and the stop listeners run. Returns the `BudgetExceeded` recorded as
        the stop (its `__cause__` is `cause`); the caller raises `cause` itself.
        """
        err = BudgetExceeded(
            f"budget pool {self.name!r} was stopped by guard {guard_id!r}: {cause}",
            pool=self.name,
            dimension=dimension,
            limit=limit,
            spent=spent,
            requested=1.0,
            route=route,
            function=function,
        )
        err.__cause__ = cause
        with self._lock:
            first = self._stopped is None
            if first:
                self._stopped = err
            self._ledger.append(
                (_now(), self, route, "tool", {}, "refused", None, (dimension,), None)
            )
        if first:
            emit_alert(
                Alert(
                    kind=alert_kind,
                    message=str(cause),
                    guard_id=guard_id,
                    pool=self.name,
                    route=route,
                    run_id=self.run_id,
                    severity="error",
                    data={"dimension": dimension, "limit": limit, "spent": spent},
                )
            )
            self._after_stop(self, err, alert=False)
        return err

    def reserve(
        self, *, route: str | None = None, function: str | None = None, **amounts: float
    ) -> Reservation:
        """Reserve `amounts` (e.g. `output_tokens=4096, cost_usd=0.02`) on this pool's chain.

        Returns a `Reservation` to `settle(...)` with the actual usage or `release()` on
        error (it is also a context manager that releases unless settled). Raises
        `BudgetExceeded` when the reservation does not fit (and stops the pool).
        """
        if not self._remote:  # a Redis pool checks once it has read the shared limits
            self._known_dimensions(amounts)
        return self._admit({}, amounts, route, function, "reserve")

    def charge(
        self, *, route: str | None = None, function: str | None = None, **amounts: float
    ) -> None:
        """Charge `amounts` to this pool and its ancestors now, all or nothing."""
        for dim, amount in amounts.items():
            if amount < 0 or amount != amount:
                raise ConfigurationError(
                    f"charge({dim}={amount!r}) on pool {self.name!r}: amounts must be >= 0."
                )
        if not self._remote:  # a Redis pool checks once it has read the shared limits
            self._known_dimensions(amounts)
        t0 = time.perf_counter()
        reservation = self._admit(amounts, {}, route, function, "charge")
        reservation.settle({}, duration=time.perf_counter() - t0)

    async def acharge(
        self, *, route: str | None = None, function: str | None = None, **amounts: float
    ) -> None:
        """`charge()` for async code: a Redis-backed pool awaits its asyncio client."""
        if not self._remote:
            self.charge(route=route, function=function, **amounts)
            return
        from ._remote import aremote_charge

        await aremote_charge(self, amounts, route, function)

    async def areserve(
        self, *, route: str | None = None, function: str | None = None, **amounts: float
    ) -> Reservation:
        """`reserve()` for async code: a Redis-backed pool awaits its asyncio client."""
        if not self._remote:
            return self.reserve(route=route, function=function, **amounts)
        from ._remote import aremote_admit

        return await aremote_admit(self, {}, amounts, route, function, "reserve")


def _overrun_error(
    p: BudgetPool,
    dim: str,
    limit: float,
    spent: float,
    actual: Mapping[str, float],
    reservation: Reservation,
    charged: BudgetPool,
    *,
    shared: bool = False,
) -> BudgetExceeded:
    """The error that stops a pool whose settled usage went past a limit (it happened: the
    usage stays spent). `shared` for a pool whose state lives in a distributed backend."""
    where = " (shared in Redis)" if shared else ""
    everywhere = " in every process" if shared else ""
    return BudgetExceeded(
        f"budget pool {p.name!r} overran its {dim} limit of {_num(limit)}{where}: the call "
        f"from route {reservation.route!r} reported {_num(actual.get(dim, 0.0))} {dim} against "
        f"{_num(reservation.reserved.get(dim, 0.0))} reserved for it, bringing the pool to "
        f"{_num(spent)}. The usage already happened, so it is recorded as spent and the pool "
        f"is now stopped{everywhere}. Fix: reserve enough before the call (max_tokens= on the "
        f"call or ag.configure_route(...)), or raise the limit.",
        pool=p.name,
        dimension=dim,
        limit=limit,
        spent=spent,
        requested=actual.get(dim, 0.0),
        route=reservation.route,
        function=reservation.function,
        charged_pool=charged.name,
    )


_finish_lock = threading.Lock()


class Reservation:
    """Amounts charged and reserved for one call in flight; settle or release it once.

    Thread-safe to settle or release from any thread; the second settle/release is a no-op.
    """

    __slots__ = (
        "charged",
        "done",
        "function",
        "kind",
        "pool",
        "reserved",
        "route",
        "started",
    )

    def __init__(
        self,
        pool: BudgetPool,
        charged: Mapping[str, float],
        reserved: Mapping[str, float],
        route: str | None,
        function: str | None,
        kind: str,
    ) -> None:
        self.pool = pool
        self.charged = charged
        self.reserved = reserved
        self.route = route
        self.function = function
        self.kind = kind
        self.started = _now()
        self.done = False

    def _finish(self) -> bool:
        # One lock for every reservation (held for two bytecodes): a lock per reservation
        # cost an allocation on every call.
        with _finish_lock:
            if self.done:
                return False
            self.done = True
            return True

    def settle(
        self,
        actual: Mapping[str, float],
        *,
        outcome: str = "ok",
        flags: tuple[str, ...] = (),
        detail: Mapping[str, Any] | None = None,
        duration: float | None = None,
    ) -> None:
        """Replace the reservation by the `actual` amounts and write the ledger row."""
        pool = self.pool
        if pool._fast and actual.keys() <= pool._spent.keys() and pool._settle_fast(self, actual):
            pass  # the common case: below every gate (`BudgetPool._settle_fast`)
        elif pool._remote:
            if not self._finish():
                return
            from ._remote import remote_settle

            remote_settle(self, actual)
        elif not pool._settle(self, actual, once=True):
            return
        charged = self.charged
        if charged.keys().isdisjoint(actual):
            amounts = {**charged, **actual}
        else:
            amounts = dict(charged)
            for dim, amount in actual.items():
                amounts[dim] = amounts.get(dim, 0.0) + amount
        now = _now()
        if duration is None:
            duration = now - self.started
        pool._ledger.append(
            (now, pool, self.route, self.kind, amounts, outcome, duration, flags, detail)
        )

    def _settle_owned(
        self,
        actual: dict[str, float],
        outcome: str,
        flags: tuple[str, ...],
        detail: Mapping[str, Any] | None,
    ) -> None:
        """`settle()` for a guard's own `actual` of standard dimensions, disjoint from the
        charged ones (an LLM call: tokens and cost vs `llm_calls`): no dimension check, and
        `actual` itself becomes the ledger row's amounts. The hot path of every LLM call."""
        pool = self.pool
        if not (pool._fast and pool._settle_fast(self, actual)):
            self.settle(actual, outcome=outcome, flags=flags, detail=detail)
            return
        actual.update(self.charged)
        now = _now()
        pool._ledger.append(
            (now, pool, self.route, self.kind, actual, outcome, now - self.started, flags, detail)
        )

    def release(self, *, outcome: str = "error", detail: Mapping[str, Any] | None = None) -> None:
        """Give the reservation back (the call failed); the charged amounts stay spent."""
        pool = self.pool
        if pool._remote:
            if not self._finish():
                return
            from ._remote import remote_release

            remote_release(self)
        elif not pool._release(self, once=True):
            return
        pool._ledger.append(
            (
                _now(),
                pool,
                self.route,
                self.kind,
                dict(self.charged),
                outcome,
                time.perf_counter() - self.started,
                ("released",) if self.reserved else (),
                detail,
            )
        )

    async def asettle(
        self,
        actual: Mapping[str, float],
        *,
        outcome: str = "ok",
        flags: tuple[str, ...] = (),
        detail: Mapping[str, Any] | None = None,
        duration: float | None = None,
    ) -> None:
        """`settle()` for async code: a Redis-backed pool awaits its asyncio client."""
        if not self.pool._remote:
            self.settle(actual, outcome=outcome, flags=flags, detail=detail, duration=duration)
            return
        from ._remote import aremote_settle

        await aremote_settle(
            self, actual, outcome=outcome, flags=flags, detail=detail, duration=duration
        )

    async def arelease(
        self, *, outcome: str = "error", detail: Mapping[str, Any] | None = None
    ) -> None:
        """`release()` for async code: a Redis-backed pool awaits its asyncio client."""
        if not self.pool._remote:
            self.release(outcome=outcome, detail=detail)
            return
        from ._remote import aremote_release

        await aremote_release(self, outcome=outcome, detail=detail)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


_BypassNote = tuple[Bypass, str, "BudgetPool", "str | None"]
"""(entry, guard id, pool, what the guard would have done; None: the entry just expired)."""


def _limit_bypass(
    p: BudgetPool,
    dim: str,
    used: float,
    notes: list[_BypassNote] | None,
    verb: str = "refused",
) -> list[_BypassNote] | None:
    """Slow path, under the pool lock: look up a bypass of `budget:<pool>` for a refusal.

    Queues the use (or the first hit after the entry expired) for `_report_bypasses`, which
    runs after the lock is released. Returns the (possibly new) notes list.
    """
    guard_id = f"budget:{p.name}"
    active, expired = lookup_bypass(guard_id)
    if active is None and expired is None:
        return notes
    notes = notes if notes is not None else []
    if active is None:
        notes.append((cast(Bypass, expired), guard_id, p, None))
        return notes
    limit = p._wall_limit if dim == "wall_seconds" else p.limits.get(dim)
    unit = " s" if dim == "wall_seconds" else ""
    notes.append(
        (
            active,
            guard_id,
            p,
            f"would have {verb} {dim} {_num(used)}{unit} > {_num(limit or 0.0)}{unit}",
        )
    )
    return notes


def _let_through(notes: list[_BypassNote] | None, p: BudgetPool) -> bool:
    """True when the last note is an active bypass of pool `p` (just queued)."""
    return bool(notes) and notes[-1][2] is p and notes[-1][3] is not None  # type: ignore[index]


def _report_bypasses(notes: list[_BypassNote], route: str | None, function: str | None) -> None:
    """Outside the lock: record each bypass use, or alert on the first hit after expiry."""
    for entry, guard_id, p, would_have in notes:
        if would_have is None:
            alert_expired(entry, guard_id, pool=p.name, route=route)
        else:
            record_bypass_use(
                entry, guard_id, would_have, pool=p.name, route=route, function=function
            )


def _materialize(raw: tuple[Any, ...]) -> LedgerRow:
    ts, pool, route, kind, amounts, outcome, duration, flags, detail = raw
    return LedgerRow(
        ts=_EPOCH_OFFSET + ts,
        run_id=pool.run_id,
        pool=pool.name,
        pool_path=pool.path,
        route=route,
        kind=kind,
        amounts=amounts,
        outcome=outcome,
        duration=duration,
        flags=tuple(flags),
        detail=detail,
    )


@overload
def current_pool() -> BudgetPool: ...
@overload
def current_pool(required: Literal[True]) -> BudgetPool: ...
@overload
def current_pool(required: Literal[False]) -> BudgetPool | None: ...
def current_pool(required: bool = True) -> BudgetPool | None:
    """The pool guarded calls in this context charge: the active one, else the default.

    Raises `NoActivePool` when there is none, unless `required=False` (then returns None).
    """
    pool = _current.get()
    if pool is None:
        pool = _config.get_config().default_pool
        if pool is None and required:
            raise NoActivePool(kind="current_pool()", route=None, function=None)
    return pool


def _resolve(kind: str, route: str | None, function: str) -> BudgetPool:
    pool = _current.get()
    if pool is None:
        pool = _config.get_config().default_pool
        if pool is None:
            raise NoActivePool(kind=kind, route=route, function=function)
    return pool


def charge(*, route: str | None = None, **amounts: float) -> None:
    """Charge the current pool, e.g. `ag.charge(emails_sent=1)`; refused when over a limit.

    Raises `NoActivePool` outside any pool, `BudgetExceeded` when a limit would be crossed,
    and `ConfigurationError` for a counter no pool in the chain declares (a typo is not free).
    """
    pool = _resolve("ag.charge()", route, "ag.charge")
    pool.charge(route=route, function="ag.charge", **amounts)


def _iter_tree(pool: BudgetPool) -> Iterator[BudgetPool]:
    yield pool
    for child in pool.children:
        yield from _iter_tree(child)
