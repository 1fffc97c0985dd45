"""Charging pools that live in a distributed backend (see `agentguard.backends`).

The in-memory pool calls these functions when it or an ancestor has a `backend`. A charge
on such a chain is:

1. a local step under the pool tree's lock: stopped flags known here, wall deadlines and the
   limits of the chain's *in-memory* pools are checked, and the amounts are applied to every
   pool's local mirror (`_spent` / `_reserved` = what THIS process charged, so the ledger
   invariant holds per process);
2. ONE `EVALSHA` of `charge.lua` that checks and charges every Redis-backed pool of the chain
   all or nothing (limits, sticky stop flag, warn marks, leases, idempotent charge id);
3. if Redis refuses or cannot answer, the local step is rolled back and the call raises.

The lock is never held across the network call. Sync and asyncio share every step except
the I/O (`RedisBackend.run` / `RedisBackend.arun`).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from . import _config
from . import bypasses as _byp
from .alerts import Alert, emit_alert
from .budget import (
    _EPS,
    _TOOL_CHARGE,
    BudgetPool,
    Reservation,
    _BypassNote,
    _loop_key,
    _now,
    _num,
    _overrun_error,
    _report_bypasses,
)
from .bypasses import lookup_bypass
from .errors import BudgetExceeded, BudgetUnavailable, ConfigurationError, LoopDetected

if TYPE_CHECKING:
    from .backends.redis import RedisBackend

__all__ = [
    "remote_admit",
    "remote_settle",
    "remote_release",
    "remote_tool",
    "aremote_tool",
    "aremote_admit",
    "aremote_charge",
    "aremote_settle",
    "aremote_release",
]

log = logging.getLogger("agentguard.redis")

_seq = itertools.count(1)
_TOKEN = f"{os.urandom(6).hex()}.{os.getpid():x}."


def _new_token() -> None:
    global _TOKEN, _slot_ids
    _TOKEN = f"{os.urandom(6).hex()}.{os.getpid():x}."
    _free_slots.clear()  # a forked child must never reuse its parent's slots
    _slot_ids = itertools.count()


_SLOTS = 32
"""Idempotency slots per process (see fast.lua); more concurrent charges use charge.lua."""
_free_slots: list[list[Any]] = []
_slot_ids = itertools.count()


def _take_slot() -> list[Any] | None:
    """A free idempotency slot [field, last sequence], or None when all are in use.

    Thread- and task-safe without a lock: list.pop/append are atomic, and a slot carries one
    charge at a time, so its sequence numbers reach Redis in order.
    """
    try:
        return _free_slots.pop()
    except IndexError:
        i = next(_slot_ids)
        if i >= _SLOTS:
            return None
        field = f"q:{_TOKEN}{i:x}"
        raw = field.encode()
        return [field, 0, b"$%d\r\n%s\r\n" % (len(raw), raw)]


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_token)


def _op_id() -> str:
    """A charge id unique across processes and machines (random token, pid, counter)."""
    return f"{_TOKEN}{next(_seq):x}"


def _wall_now() -> float:
    """Unix time from the configured clock (leases and windows; tests move it)."""
    clock = _config._config.clock
    if type(clock) is _config.Clock:
        return time.time()
    return clock.now().timestamp()


def _unsupported(pool: BudgetPool, backend: Any) -> ConfigurationError:
    return ConfigurationError(
        f"BudgetPool {pool.name!r} was given backend={backend!r}, which this version of "
        f"agentguard cannot charge. Fix: use agentguard.RedisBackend, or leave backend=None "
        f"for an in-process pool."
    )


class RemoteReservation(Reservation):
    """A `Reservation` on a chain with Redis-backed pools: it knows its id and keys."""

    __slots__ = ("plan", "rid", "state_keys")

    def __init__(
        self,
        pool: BudgetPool,
        charged: dict[str, float],
        reserved: dict[str, float],
        route: str | None,
        function: str | None,
        kind: str,
        rid: str,
        state_keys: list[str],
        plan: _Plan,
    ) -> None:
        super().__init__(pool, charged, reserved, route, function, kind)
        self.rid = rid
        self.state_keys = state_keys
        self.plan = plan


class _Plan:
    """How to charge one pool's chain: its Redis-backed pools, their keys, the backend.

    The wire format (see charge.lua) packs everything into 4 arguments: redis-py's cost
    grows with the number of arguments, and this keeps a charge close to a bare EVALSHA.
    """

    __slots__ = (
        "backend",
        "fast_keys",
        "head",
        "lease",
        "lease_key",
        "packed",
        "refresh_at",
        "reg_keys",
        "remote",
        "spec_keep",
        "spec_refresh",
        "top",
        "top_dims",
        "ttls",
        "windowed",
        "windows",
    )

    def __init__(self, pool: BudgetPool) -> None:
        from .backends.redis import RedisBackend

        remote = [p for p in pool._chain if p.backend is not None]
        first = remote[0].backend
        if not isinstance(first, RedisBackend):
            raise _unsupported(remote[0], first)
        backend: RedisBackend = first
        reg_keys: list[str] = []
        for p in remote:
            b = p.backend
            if not isinstance(b, RedisBackend):
                raise _unsupported(p, b)
            if not backend.same_server(b):
                raise ConfigurationError(
                    f"BudgetPool {pool.name!r}: its chain mixes Redis servers ({backend.where} "
                    f"for {remote[0].name!r}, {b.where} for {p.name!r}); one script must "
                    f"charge them all at once. Fix: keep nested Redis-backed pools on one Redis."
                )
            reg_keys.append(b.full_key(_pool_key(p)))
        self.backend = backend
        self.remote: tuple[BudgetPool, ...] = tuple(remote)
        self.reg_keys: tuple[str, ...] = tuple(reg_keys)
        self.windows: tuple[float | None, ...] = tuple(p.window for p in remote)
        self.windowed = any(w is not None for w in self.windows)
        ttl = backend.ttl_seconds
        self.ttls: tuple[int, ...] = tuple(int((ttl + (w or 0.0)) * 1000) for w in self.windows)
        self.top = reg_keys[-1]
        self.lease = backend.lease_seconds
        self.head = f"{int(backend.dedup_seconds * 1000)} {backend.lease_seconds!r}"
        self.spec_refresh = self.head + "".join(f" {t}:-" for t in self.ttls)
        self.spec_keep = self.head + " 0:-" * len(self.ttls)
        self.refresh_at = 0.0  # when this process next refreshes the keys' TTL
        self.lease_key = self.top + ":lease"
        self.fast_keys = [self.lease_key, *reg_keys]
        self.top_dims: tuple[str, ...] = tuple(remote[-1]._spent)
        # fast.lua's fixed arguments of a tool call, packed once per (route, function, keys)
        self.packed: dict[tuple[Any, ...], tuple[list[Any], bytes]] = {}

    def fast_fixed(
        self,
        pool: BudgetPool,
        charge: Mapping[str, float],
        route: str | None,
        function: str | None,
        keys: list[str],
    ) -> list[Any]:
        """fast.lua's command up to (not including) the slot, sequence and time arguments."""
        from .backends.redis import FAST

        dims = list(charge)
        fixed: list[Any] = ["EVALSHA", FAST.sha, len(keys), *keys]
        fixed.append(f"{route or ''}\t{function or ''}\t{pool.name}")
        extra = [f"r:{d}" for d in self.top_dims if d not in charge]
        fixed.append(len(dims))
        fixed.append(len(extra))
        fixed += extra
        fixed += ["c", "stop", "warn"]
        for d in dims:
            fixed += [f"l:{d}", f"s:{d}", f"r:{d}", f"w:{d}"]
        return fixed

    def cached_fixed(
        self,
        pool: BudgetPool,
        charge: Mapping[str, float],
        route: str | None,
        function: str | None,
        keys: list[str],
    ) -> tuple[list[Any], bytes]:
        """`fast_fixed`, cached per call site with its packed bytes (4 + nd args to come)."""
        ck = (route, function, tuple(charge), tuple(keys) if self.windowed else ())
        hit = self.packed.get(ck)
        if hit is None:
            fixed = self.fast_fixed(pool, charge, route, function, keys)
            hit = (fixed, _pack_head(fixed, 4 + len(charge)))
            if len(self.packed) >= 256:
                self.packed.clear()  # many routes or windows: start over (thread-safe)
            self.packed[ck] = hit
        return hit

    def state_keys(self, now: float) -> list[str]:
        if not self.windowed:
            return list(self.reg_keys)
        keys = []
        for reg, window in zip(self.reg_keys, self.windows, strict=True):
            keys.append(reg if window is None else f"{reg}:w{int(now // window)}")
        return keys

    def build(
        self,
        op: str,
        pool: BudgetPool,
        amounts: Mapping[str, float],
        reserve: Mapping[str, float],
        rid: str,
        route: str | None,
        function: str | None,
        state_keys: list[str] | None,
        bypass: str = "",
    ) -> tuple[list[str], list[Any], list[str], str]:
        """KEYS and ARGV for charge.lua; `rid="new"` makes the reservation id the op id.

        `bypass` is charge.lua's ARGV[5]: 's' (a refusal does not stop the pool) and the
        indices of pools whose limits an active bypass covers.
        """
        now = _wall_now()
        skeys = state_keys if state_keys is not None else self.state_keys(now)
        opid = _op_id()
        if rid == "new":
            rid = opid
        # Refresh the TTLs at most every 1/100 of them per process (a PEXPIRE per charge
        # costs as much as the charge's own write); windows and reservations set theirs.
        refresh = now >= self.refresh_at or op != "a" or bool(reserve)
        if refresh and op == "a":
            self.refresh_at = now + self.backend.ttl_seconds / 100
        if not self.windowed:
            spec = self.spec_refresh if refresh else self.spec_keep
        else:
            parts = [self.head]
            for i, window in enumerate(self.windows):
                if window is None:
                    parts.append(f"{self.ttls[i] if refresh else 0}:-")
                else:
                    index = int(now // window) if op == "a" else "-"
                    parts.append(f"{self.ttls[i]}:{index}")
            spec = " ".join(parts)
        if amounts is _TOOL_CHARGE:
            dims = "tool_calls 1 0"
        else:
            names = amounts if not reserve else dict.fromkeys((*amounts, *reserve))
            dims = " ".join(
                f"{d} {float(amounts.get(d, 0.0))!r} {float(reserve.get(d, 0.0))!r}" for d in names
            )
        args = [
            f"{op} {now!r} {opid} {rid or '-'}",
            spec,
            f"{route or ''}\t{function or ''}\t{pool.name}",
            dims,
        ]
        if bypass:
            args.append(bypass)
        return [self.top, *skeys], args, skeys, rid


def _pool_key(p: BudgetPool) -> str:
    key = p.key or getattr(p.backend, "key", None)
    if not key:
        raise ConfigurationError(
            f"BudgetPool {p.name!r} has a Redis backend but no key: the key names the pool "
            f"that every process shares. Fix: RedisBackend(url, key='app:run-42') or "
            f"BudgetPool(..., key='app:run-42')."
        )
    return str(key)


_plans: weakref.WeakKeyDictionary[BudgetPool, _Plan] = weakref.WeakKeyDictionary()
_opened: weakref.WeakSet[BudgetPool] = weakref.WeakSet()
_plans_lock = threading.Lock()


def _open_args(p: BudgetPool, parent_key: str) -> list[Any]:
    backend = cast("RedisBackend", p.backend)
    ttl_ms = int((backend.ttl_seconds + (p.window or 0.0)) * 1000)
    now = _wall_now()
    args: list[Any] = [
        "1" if backend.create else "0",
        repr(now),
        ttl_ms,
        "name",
        p.name,
        "warn",
        repr(p.warn_at or 0.0),
        "parent",
        parent_key,
        "win",
        repr(p.window) if p.window else "",
    ]
    for dim, limit in p.limits.items():
        args.append(f"l:{dim}")
        args.append(repr(limit))
    return args


def _missing(p: BudgetPool, key: str, backend: RedisBackend, vanished: bool) -> BudgetUnavailable:
    how = (
        "its current window's counters vanished after the window had opened"
        if vanished
        else "no process created it, or it vanished"
    )
    return BudgetUnavailable(
        f"budget pool {p.name!r}: its key {key!r} does not exist in Redis at {backend.where} "
        f"({how}: Redis restarted without persistence, the key was evicted under maxmemory, "
        f"expired after ttl_seconds={backend.ttl_seconds:g}, or was flushed). agentguard "
        f"never re-creates a pool with a full budget on its own, so the call did not start. "
        f"Fix: the process that starts the run creates the pool with RedisBackend(..., "
        f"create=True) and the others open it (create=False); to re-create a vanished pool on "
        f"purpose, do the same (or RedisBackend.delete() it first). Run Redis with persistence "
        f"(appendonly yes) and maxmemory-policy noeviction or volatile-*.",
        pool=p.name,
        backend=repr(backend),
    )


def _apply_open(p: BudgetPool, key: str, parent_key: str, reply: list[str]) -> None:
    backend = cast("RedisBackend", p.backend)
    status = reply[0]
    if status == "missing":
        raise _missing(p, key, backend, vanished=False)
    fields = dict(zip(reply[1::2], reply[2::2], strict=True))
    stored_parent = fields.get("parent", "")
    if stored_parent != parent_key:
        raise ConfigurationError(
            f"BudgetPool {p.name!r}: Redis key {key!r} was created under "
            f"{stored_parent or 'no parent pool'!r} but is opened here under "
            f"{parent_key or 'no parent pool'!r}. Every process must nest a shared pool the "
            f"same way, or some charges would skip an ancestor's limits. Fix: enter it under "
            f"the same Redis-backed parent pool in every process."
        )
    stored_win = float(fields["win"]) if fields.get("win") else None
    if stored_win != p.window:
        raise ConfigurationError(
            f"BudgetPool {p.name!r}: Redis key {key!r} was created with window="
            f"{stored_win!r} s but is opened with window={p.window!r} s. Fix: use the same "
            f"window in every process (or delete the key to change it)."
        )
    stored = {f[2:]: float(v) for f, v in fields.items() if f.startswith("l:")}
    if not p.limits:
        # an opener that passes no limits adopts the creator's
        p.limits = stored
        for dim in stored:
            if dim not in p._spent:
                p._spent[dim] = 0.0
                p._reserved[dim] = 0.0
                p.custom_dimensions = p.custom_dimensions | {dim}
        p._update_gate()
        return
    if set(stored) != set(p.limits) or any(abs(stored[d] - p.limits[d]) > _EPS for d in stored):
        raise ConfigurationError(
            f"BudgetPool {p.name!r}: Redis key {key!r} holds limits "
            f"{ {d: _num(v) for d, v in sorted(stored.items())} } but this process passes "
            f"{ {d: _num(v) for d, v in sorted(p.limits.items())} }. Every process must agree on "
            f"a shared pool's limits. Fix: pass the same limits, or none (the opener then "
            f"adopts the stored ones); to change them, delete the key and create it again."
        )


def _open_steps(pool: BudgetPool) -> list[tuple[BudgetPool, str, str]]:
    remote = [p for p in pool._chain if p.backend is not None]
    steps = []
    for i in range(len(remote) - 1, -1, -1):  # root first: a parent exists before its child
        p = remote[i]
        if p in _opened:
            continue
        backend = cast("RedisBackend", p.backend)
        key = backend.full_key(_pool_key(p))
        parent = remote[i + 1] if i + 1 < len(remote) else None
        parent_key = (
            cast("RedisBackend", parent.backend).full_key(_pool_key(parent)) if parent else ""
        )
        steps.append((p, key, parent_key))
    return steps


def _plan(pool: BudgetPool) -> _Plan:
    plan = _plans.get(pool)
    if plan is not None:
        return plan
    new = _Plan(pool)
    for p, key, parent_key in _open_steps(pool):
        from .backends.redis import OPEN

        reply = new.backend.run(OPEN, [key], _open_args(p, parent_key), p.name)
        _apply_open(p, key, parent_key, reply)
        _opened.add(p)
    with _plans_lock:
        return _plans.setdefault(pool, new)


async def _aplan(pool: BudgetPool) -> _Plan:
    plan = _plans.get(pool)
    if plan is not None:
        return plan
    new = _Plan(pool)
    for p, key, parent_key in _open_steps(pool):
        from .backends.redis import OPEN

        reply = await new.backend.arun(OPEN, [key], _open_args(p, parent_key), p.name)
        _apply_open(p, key, parent_key, reply)
        _opened.add(p)
    with _plans_lock:
        return _plans.setdefault(pool, new)


# -- the local step --------------------------------------------------------------------------


def _check_dims(pool: BudgetPool, dims: Any) -> None:
    for dim in dims:
        if dim not in pool._spent:
            pool._unknown_dimension(dim)


def _local_rollback(
    pool: BudgetPool, charge: Mapping[str, float], reserve: Mapping[str, float]
) -> None:
    with pool._lock:
        for p in pool._chain:
            for dim, amount in charge.items():
                p._spent[dim] -= amount
            for dim, amount in reserve.items():
                p._reserved[dim] = max(0.0, p._reserved[dim] - amount)


# -- interpreting the script's replies -------------------------------------------------------


def _counter(name: str, pool: BudgetPool) -> None:
    from . import telemetry

    telemetry.counter(name).add(1, {telemetry.ATTR.POOL: pool.name})


def _unavailable(pool: BudgetPool, kind: str, route: str | None, exc: BudgetUnavailable) -> None:
    from . import telemetry

    _counter(telemetry.METRIC.BUDGET_UNAVAILABLE, pool)
    pool._ledger.append(
        (
            _now(),
            pool,
            route,
            kind,
            {},
            "unavailable",
            None,
            ("backend_unavailable",),
            {"backend": exc.backend},
        )
    )


def _stop_from_json(p: BudgetPool, raw: str, charged: BudgetPool) -> BudgetExceeded:
    """The first refusal of a pool, as stored in Redis by whichever process refused it."""
    stop = json.loads(raw)
    route, function, by = ([*stop.get("info", "").split("\t"), "", "", ""])[:3]
    dim = stop.get("dim", "?")
    limit = float(stop.get("limit", 0.0))
    spent = float(stop.get("spent", 0.0))
    requested = float(stop.get("requested", 0.0))
    if stop.get("kind") == "overrun":
        return BudgetExceeded(
            f"budget pool {p.name!r} overran its {dim} limit of {_num(limit)} (shared in "
            f"Redis): a call from route {route or None!r} reported {_num(requested)} {dim}, "
            f"bringing the pool to {_num(spent)}. The usage already happened, so it is spent "
            f"and the pool is now stopped in every process. Fix: reserve enough before the "
            f"call (max_tokens=), or raise the limit.",
            pool=p.name,
            dimension=dim,
            limit=limit,
            spent=spent,
            requested=requested,
            route=route or None,
            function=function or None,
            charged_pool=by or charged.name,
        )
    return BudgetExceeded(
        pool=p.name,
        dimension=dim,
        limit=limit,
        spent=spent,
        reserved=float(stop.get("reserved", 0.0)),
        requested=requested,
        route=route or None,
        function=function or None,
        charged_pool=by or charged.name,
    )


def _tail(pool: BudgetPool, plan: _Plan, reply: list[str], route: str | None) -> list[str]:
    """Handle warns and reclaimed leases of an `ok` reply; return the overrun entries."""
    n = int(reply[2])
    at = 3
    for _ in range(n):
        i, dim, used, limit = reply[at : at + 4]
        at += 4
        _remote_warn(pool, plan.remote[int(i) - 1], dim, float(used), float(limit), route)
    n_over = int(reply[at])
    overs = reply[at + 1 : at + 1 + 4 * n_over]
    for rec in reply[at + 1 + 4 * n_over :]:
        _reclaimed(pool, rec)
    return overs


def _remote_warn(
    pool: BudgetPool, p: BudgetPool, dim: str, used: float, limit: float, route: str | None
) -> None:
    with pool._lock:
        p._warn_marks.pop(dim, None)
        if dim == "tool_calls":
            p._tool_warn = None
        p._update_gate()
    emit_alert(
        Alert(
            kind="budget.warn",
            message=(
                f"budget pool {p.name!r} (shared in Redis) has used {_num(used)} of its {dim} "
                f"limit {_num(limit)} ({used / limit if limit else 1:.0%} >= warn_at "
                f"{p.warn_at or 0:.0%})" + (f"; last call from route {route!r}" if route else "")
            ),
            guard_id=f"budget:{p.name}",
            pool=p.name,
            route=route,
            run_id=p.run_id,
            data={"dimension": dim, "used": used, "limit": limit, "shared": True},
        )
    )


def _reclaimed(pool: BudgetPool, rec: str) -> None:
    from . import telemetry

    data = json.loads(rec)
    route, function, by = ([*str(data.get("i", "")).split("\t"), "", "", ""])[:3]
    d = data.get("d", [])
    reserved = {str(d[m]): float(d[m + 1]) for m in range(0, len(d) - 1, 2)}
    detail = {
        "reservation": data.get("id"),
        "reserved": reserved,
        "keys": data.get("k", []),
        "pool": by,
        "function": function or None,
        "reserved_at": float(data.get("t", 0.0)),
    }
    pool._ledger.append(
        (_now(), pool, route or None, "lease", {}, "reclaimed", None, ("lease_expired",), detail)
    )
    _counter(telemetry.METRIC.LEASE_RECLAIMS, pool)
    log.warning(
        "agentguard: reservation %s of pool %r (%s) was reclaimed after its lease ran out: "
        "the worker that made it died or hung mid-call; its reserved %s went back to the pool",
        data.get("id"),
        by,
        function or route or "unknown call",
        reserved,
    )


_OK = ["ok", "0", "0", "0"]
"""The common reply of charge.lua, sent as the bare string 'ok' (cheaper to parse)."""


def _admitted(
    pool: BudgetPool,
    plan: _Plan,
    reply: Any,
    charge: Mapping[str, float],
    reserve: Mapping[str, float],
    route: str | None,
    function: str | None,
    kind: str,
    rid: str,
    skeys: list[str],
    warns: list[tuple[BudgetPool, str]] | None,
) -> Reservation:
    if reply == "ok":  # the common reply: nothing to report
        if warns:
            pool._emit_warns(warns, route)
        return RemoteReservation(
            pool, dict(charge), dict(reserve), route, function, kind, rid, skeys, plan
        )
    status = reply[0]
    if status == "ok":
        if len(reply) > 4 or reply[2] != "0":
            _tail(pool, plan, reply, route)
        if warns:
            pool._emit_warns(warns, route)
        return RemoteReservation(
            pool, dict(charge), dict(reserve), route, function, kind, rid, skeys, plan
        )
    _local_rollback(pool, charge, reserve)
    i = int(reply[1]) - 1
    p = plan.remote[i]
    if status in ("missing", "vanished"):
        err_u = _missing(p, skeys[i], plan.backend, vanished=status == "vanished")
        _unavailable(pool, kind, route, err_u)
        raise err_u
    if status == "refused":
        dim = reply[2]
        err = BudgetExceeded(
            pool=p.name,
            dimension=dim,
            limit=float(reply[5]),
            spent=float(reply[3]),
            reserved=float(reply[4]),
            requested=charge.get(dim, 0.0) + reserve.get(dim, 0.0),
            route=route,
            function=function,
            charged_pool=pool.name,
        )
        with pool._lock:
            if p._stopped is None:
                p._stopped = err
            pool._ledger.append((_now(), pool, route, kind, {}, "refused", None, (dim,), None))
        pool._after_stop(p, err)
        raise err
    if status == "stopped":
        with pool._lock:
            if p._stopped is None:
                p._stopped = _stop_from_json(p, reply[2], pool)
            err = pool._already_stopped(p, route, function)
            pool._ledger.append(
                (_now(), pool, route, kind, {}, "refused", None, (err.dimension,), None)
            )
        raise err
    raise BudgetUnavailable(
        f"budget pool {pool.name!r}: the Redis script answered {reply!r}, which this version "
        f"of agentguard does not understand (a newer agentguard wrote the key?). Fix: run the "
        f"same agentguard version in every process.",
        pool=pool.name,
        backend=repr(plan.backend),
    )


# -- admit -----------------------------------------------------------------------------------


def _pack_head(parts: list[Any], more: int) -> bytes:
    """RESP bytes of a command's first arguments, `more` arguments still to come."""
    out = [b"*%d\r\n" % (len(parts) + more)]
    for part in parts:
        raw = part if isinstance(part, bytes) else str(part).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


def _fast_keys(plan: _Plan, now: float) -> list[str]:
    return plan.fast_keys if not plan.windowed else [plan.lease_key, *plan.state_keys(now)]


def _fast_args(
    plan: _Plan,
    pool: BudgetPool,
    charge: Mapping[str, float],
    route: str | None,
    function: str | None,
    now: float,
    slot: list[Any],
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of fast.lua (the slot's next sequence number is taken here)."""
    keys = _fast_keys(plan, now)
    fixed = plan.cached_fixed(pool, charge, route, function, keys)[0]
    slot[1] += 1
    args = [*fixed[3 + len(keys) :], slot[0], slot[1], repr(now), "s" if _byp._maybe else "-"]
    args += [repr(float(v)) for v in charge.values()]
    return keys, args


def _fast_packed(
    plan: _Plan,
    pool: BudgetPool,
    charge: Mapping[str, float],
    route: str | None,
    function: str | None,
    now: float,
    slot: list[Any],
) -> tuple[list[str], bytes]:
    """fast.lua's whole EVALSHA command as RESP bytes (a tool call: cached but for 3 args)."""
    keys = _fast_keys(plan, now)
    head = plan.cached_fixed(pool, charge, route, function, keys)[1]
    slot[1] += 1
    seq = b"%d" % slot[1]
    at = repr(now).encode()
    if charge is _TOOL_CHARGE:
        tail = _TOOL_TAIL
    else:
        parts = []
        for v in charge.values():
            raw = repr(float(v)).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
        tail = b"".join(parts)
    return keys, b"%s%s$%d\r\n%s\r\n$%d\r\n%s\r\n%s%s" % (
        head,
        slot[2],
        len(seq),
        seq,
        len(at),
        at,
        _SOFT if _byp._maybe else _HARD,
        tail,
    )


_TOOL_TAIL = b"$3\r\n1.0\r\n"
_SOFT = b"$1\r\ns\r\n"
_HARD = b"$1\r\n-\r\n"


def _bypass_step(
    plan: _Plan,
    reply: Any,
    charge: Mapping[str, float],
    reserve: Mapping[str, float],
    forced: list[int],
    notes: list[_BypassNote] | None,
) -> tuple[str, list[_BypassNote] | None] | None:
    """After a soft refusal: what to send next (None: `reply` is final).

    A soft refusal did not stop the pool. An active `budget:<pool>` bypass lets the charge
    through that pool's limits (re-sent with its index forced, the use noted like the
    in-memory pool does); without one the charge is re-sent hard, so the refusal stops the
    pool in Redis (or succeeds, if budget came free meanwhile). Rare path: 2+ round trips.
    """
    if reply == "ok" or reply[0] != "refused":
        return None
    i = int(reply[1])
    if i in forced:
        return None
    p = plan.remote[i - 1]
    dim = reply[2]
    active, expired = lookup_bypass(f"budget:{p.name}")
    notes = notes if notes is not None else []
    if active is None:
        if expired is not None:
            notes.append((expired, f"budget:{p.name}", p, None))
        return "", notes
    used = float(reply[3]) + float(reply[4]) + charge.get(dim, 0.0) + reserve.get(dim, 0.0)
    limit = float(reply[5])
    notes.append(
        (active, f"budget:{p.name}", p, f"would have refused {dim} {_num(used)} > {_num(limit)}")
    )
    forced.append(i)
    return "s", notes


def remote_admit(
    pool: BudgetPool,
    charge: Mapping[str, float],
    reserve: Mapping[str, float],
    route: str | None,
    function: str | None,
    kind: str,
) -> Reservation:
    """Charge `charge` and reserve `reserve` on the chain: one round trip, all or nothing.

    Raises `BudgetExceeded` (the refusing pool stops, in Redis too) or `BudgetUnavailable`.
    """
    plan = _plans.get(pool) or _plan(pool)
    reply, warns, rid, skeys = _admit_io(pool, plan, charge, reserve, route, function, kind)
    return _admitted(pool, plan, reply, charge, reserve, route, function, kind, rid, skeys, warns)


def _admit_io(
    pool: BudgetPool,
    plan: _Plan,
    charge: Mapping[str, float],
    reserve: Mapping[str, float],
    route: str | None,
    function: str | None,
    kind: str,
) -> tuple[Any, list[tuple[BudgetPool, str]] | None, str, list[str]]:
    """The local step, then fast.lua (a plain charge) or charge.lua; rolls back on failure."""
    if charge is not _TOOL_CHARGE:
        _check_dims(pool, itertools.chain(charge, reserve))
    warns = pool._admit_local(charge, reserve, route, function, kind)
    backend = plan.backend
    reply: Any = "slow"
    rid = ""
    skeys: list[str] = []
    try:
        if not reserve:
            now = _wall_now()
            slot = _take_slot() if now < plan.refresh_at else None
            if slot is not None:
                keys, data = _fast_packed(plan, pool, charge, route, function, now, slot)
                try:
                    reply = backend.run_packed(_script(1), data, pool.name, keys[1])
                finally:
                    _free_slots.append(slot)
                skeys = keys[1:]
                if reply != "slow" and (reply == "ok" or reply[0] != "refused" or not _byp._maybe):
                    return reply, warns, "", skeys
        soft = "s" if _byp._maybe else ""
        forced: list[int] = []
        notes: list[_BypassNote] | None = None
        while True:
            if reply != "slow":
                step = _bypass_step(plan, reply, charge, reserve, forced, notes)
                if step is None:
                    break
                soft, notes = step
            rid = "new" if any(reserve.values()) else ""
            flag = " ".join([soft, *map(str, forced)]).strip()
            keys, args, skeys, rid = plan.build(
                "a", pool, charge, reserve, rid, route, function, None, flag
            )
            reply = backend.run(_script(0), keys, args, pool.name)
            if not soft:
                break  # a hard send's reply is final
    except BudgetUnavailable as exc:
        _local_rollback(pool, charge, reserve)
        _unavailable(pool, kind, route, exc)
        raise
    if notes:
        _report_bypasses(notes, route, function)
    return reply, warns, rid, skeys


async def _aadmit_io(
    pool: BudgetPool,
    plan: _Plan,
    charge: Mapping[str, float],
    reserve: Mapping[str, float],
    route: str | None,
    function: str | None,
    kind: str,
) -> tuple[Any, list[tuple[BudgetPool, str]] | None, str, list[str]]:
    """`_admit_io` on the asyncio client."""
    if charge is not _TOOL_CHARGE:
        _check_dims(pool, itertools.chain(charge, reserve))
    warns = pool._admit_local(charge, reserve, route, function, kind)
    backend = plan.backend
    reply: Any = "slow"
    rid = ""
    skeys: list[str] = []
    try:
        if not reserve:
            now = _wall_now()
            slot = _take_slot() if now < plan.refresh_at else None
            if slot is not None:
                keys, args = _fast_args(plan, pool, charge, route, function, now, slot)
                try:
                    reply = await backend.arun(_script(1), keys, args, pool.name)
                finally:
                    _free_slots.append(slot)
                skeys = keys[1:]
                if reply != "slow" and (reply == "ok" or reply[0] != "refused" or not _byp._maybe):
                    return reply, warns, "", skeys
        soft = "s" if _byp._maybe else ""
        forced: list[int] = []
        notes: list[_BypassNote] | None = None
        while True:
            if reply != "slow":
                step = _bypass_step(plan, reply, charge, reserve, forced, notes)
                if step is None:
                    break
                soft, notes = step
            rid = "new" if any(reserve.values()) else ""
            flag = " ".join([soft, *map(str, forced)]).strip()
            keys, args, skeys, rid = plan.build(
                "a", pool, charge, reserve, rid, route, function, None, flag
            )
            reply = await backend.arun(_script(0), keys, args, pool.name)
            if not soft:
                break  # a hard send's reply is final
    except BudgetUnavailable as exc:
        _local_rollback(pool, charge, reserve)
        _unavailable(pool, kind, route, exc)
        raise
    if notes:
        _report_bypasses(notes, route, function)
    return reply, warns, rid, skeys


async def aremote_admit(
    pool: BudgetPool,
    charge: Mapping[str, float],
    reserve: Mapping[str, float],
    route: str | None,
    function: str | None,
    kind: str,
) -> Reservation:
    """`remote_admit` on the asyncio client (the event loop is never blocked)."""
    plan = _plans.get(pool) or await _aplan(pool)
    reply, warns, rid, skeys = await _aadmit_io(pool, plan, charge, reserve, route, function, kind)
    return _admitted(pool, plan, reply, charge, reserve, route, function, kind, rid, skeys, warns)


def _check_amounts(pool: BudgetPool, amounts: Mapping[str, float]) -> None:
    for dim, amount in amounts.items():
        if amount < 0 or amount != amount:
            raise ConfigurationError(
                f"charge({dim}={amount!r}) on pool {pool.name!r}: amounts must be >= 0."
            )


async def aremote_charge(
    pool: BudgetPool, amounts: Mapping[str, float], route: str | None, function: str | None
) -> None:
    """`BudgetPool.acharge` on a Redis-backed chain: one awaited round trip."""
    _check_amounts(pool, amounts)
    t0 = time.perf_counter()
    reservation = await aremote_admit(pool, amounts, {}, route, function, "charge")
    reservation.settle({}, duration=time.perf_counter() - t0)  # nothing reserved: no I/O


def _loop_guard(
    pool: BudgetPool,
    tool: str,
    route: str | None,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    loop_limit: int,
) -> None:
    """The per-process loop guard of a tool call on a Redis-backed pool (raises LoopDetected)."""
    loop_key = _loop_key(tool, args, kwargs)
    err: LoopDetected | None = None
    with pool._lock:
        err = pool._loop_hit(tool, args, kwargs, loop_key, loop_limit, route)
        if err is not None:
            if pool._stopped is None:
                pool._stopped = err
            pool._ledger.append((_now(), pool, route, "tool", {}, "refused", None, ("loop",), None))
    if err is not None:
        pool._after_stop(pool, err)
        raise err


def remote_tool(
    pool: BudgetPool,
    tool: str,
    route: str | None,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    loop_limit: int | None,
) -> None:
    """A tool call on a Redis-backed chain: the loop guard (per process), then one charge."""
    if loop_limit is not None:
        _loop_guard(pool, tool, route, args, kwargs, loop_limit)
    plan = _plans.get(pool) or _plan(pool)
    reply, warns, rid, skeys = _admit_io(pool, plan, _TOOL_CHARGE, {}, route, tool, "tool")
    if reply != "ok" or warns:
        _admitted(pool, plan, reply, _TOOL_CHARGE, {}, route, tool, "tool", rid, skeys, warns)


async def aremote_tool(
    pool: BudgetPool,
    tool: str,
    route: str | None,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    loop_limit: int | None,
) -> None:
    """`remote_tool` for an async tool: awaits the asyncio client (the loop never blocks)."""
    if loop_limit is not None:
        _loop_guard(pool, tool, route, args, kwargs, loop_limit)
    plan = _plans.get(pool) or await _aplan(pool)
    reply, warns, rid, skeys = await _aadmit_io(pool, plan, _TOOL_CHARGE, {}, route, tool, "tool")
    if reply != "ok" or warns:
        _admitted(pool, plan, reply, _TOOL_CHARGE, {}, route, tool, "tool", rid, skeys, warns)


# -- settle and release ----------------------------------------------------------------------


def _settled(r: RemoteReservation, actual: Mapping[str, float], reply: Any) -> None:
    pool = r.pool
    plan = r.plan
    if reply == "ok":
        reply = _OK
    if reply[0] != "ok":
        i = int(reply[1]) - 1
        err = _missing(plan.remote[i], r.state_keys[i], plan.backend, vanished=False)
        pool._settle(r, actual)
        _unavailable(pool, r.kind, r.route, err)
        raise err
    overs = _tail(pool, plan, reply, r.route)
    first: tuple[BudgetPool, BudgetExceeded] | None = None
    for at in range(0, len(overs), 4):
        p = plan.remote[int(overs[at]) - 1]
        dim = overs[at + 1]
        spent, limit = float(overs[at + 2]), float(overs[at + 3])
        err_o = _overrun_error(p, dim, limit, spent, actual, r, pool, shared=True)
        with pool._lock:
            if p._stopped is None:
                p._stopped = err_o
                first = first or (p, err_o)
    if first is not None:
        pool._overrun_stopped(first[0], first[1], r.route)
    pool._settle(r, actual)
    if reply[1] == "1" and r.rid:
        pool._ledger.append(
            (
                _now(),
                pool,
                r.route,
                r.kind,
                {},
                "late_settle",
                None,
                ("lease_expired",),
                {"reservation": r.rid},
            )
        )


def _settle_call(
    r: RemoteReservation, actual: Mapping[str, float]
) -> tuple[list[str], list[Any]] | None:
    _check_dims(r.pool, actual)
    if not r.rid and not any(actual.values()):
        return None  # a charge with nothing reserved: nothing to do in Redis
    keys, args, _, _ = r.plan.build(
        "s",
        r.pool,
        {d: v for d, v in actual.items() if v},
        {},
        r.rid,
        r.route,
        r.function,
        r.state_keys,
    )
    return keys, args


def _settle_failed(
    r: RemoteReservation, actual: Mapping[str, float], exc: BudgetUnavailable
) -> None:
    pool = r.pool
    pool._settle(r, actual)  # this process's record keeps the usage
    _unavailable(pool, r.kind, r.route, exc)


def remote_settle(reservation: Reservation, actual: Mapping[str, float]) -> None:
    """Give back the reservation and charge `actual` in Redis (one round trip).

    Raises `BudgetUnavailable` when Redis cannot record it (the reservation then stays
    held until its lease runs out, so the pool is not under-counted meanwhile).
    """
    r = cast(RemoteReservation, reservation)
    if not actual and not r.reserved:
        return  # a plain charge: nothing was reserved, nothing to add
    call = _settle_call(r, actual)
    if call is None:
        r.pool._settle(r, actual)
        return
    try:
        reply = r.plan.backend.run(_charge_script(), call[0], call[1], r.pool.name)
    except BudgetUnavailable as exc:
        _settle_failed(r, actual, exc)
        raise
    _settled(r, actual, reply)


async def aremote_settle(
    reservation: Reservation,
    actual: Mapping[str, float],
    *,
    outcome: str = "ok",
    flags: tuple[str, ...] = (),
    detail: Mapping[str, Any] | None = None,
    duration: float | None = None,
) -> None:
    """`Reservation.asettle` on a Redis-backed chain (awaits the asyncio client)."""
    r = cast(RemoteReservation, reservation)
    if not r._finish():
        return
    call = _settle_call(r, actual)
    if call is None:
        r.pool._settle(r, actual)
    else:
        try:
            reply = await r.plan.backend.arun(_charge_script(), call[0], call[1], r.pool.name)
        except BudgetUnavailable as exc:
            _settle_failed(r, actual, exc)
            raise
        _settled(r, actual, reply)
    amounts = dict(r.charged)
    for dim, amount in actual.items():
        amounts[dim] = amounts.get(dim, 0.0) + amount
    if duration is None:
        duration = time.perf_counter() - r.started
    r.pool._ledger.append(
        (_now(), r.pool, r.route, r.kind, amounts, outcome, duration, flags, detail)
    )


def _release_failed(r: RemoteReservation, exc: BudgetUnavailable) -> None:
    # Release runs on error paths: raising here would hide the caller's own exception. The
    # lease gives the reservation back; the gap is made visible (log, metric, ledger row).
    _unavailable(r.pool, r.kind, r.route, exc)
    log.warning(
        "agentguard: could not release reservation %s of pool %r in Redis (%s); it is "
        "reclaimed when its lease of %g s runs out",
        r.rid,
        r.pool.name,
        exc,
        r.plan.lease,
    )


def _released(r: RemoteReservation, reply: Any) -> None:
    if reply == "ok":
        reply = _OK
    if reply[0] == "ok":
        _tail(r.pool, r.plan, reply, r.route)
    r.pool._release(r)


def remote_release(reservation: Reservation) -> None:
    """Give the reservation back in Redis; a Redis failure is logged (the lease reclaims it)."""
    r = cast(RemoteReservation, reservation)
    if not r.rid:
        r.pool._release(r)
        return
    keys, args, _, _ = r.plan.build("r", r.pool, {}, {}, r.rid, r.route, r.function, r.state_keys)
    try:
        reply = r.plan.backend.run(_charge_script(), keys, args, r.pool.name)
    except BudgetUnavailable as exc:
        _release_failed(r, exc)
        r.pool._release(r)
        return
    _released(r, reply)


async def aremote_release(
    reservation: Reservation, *, outcome: str = "error", detail: Mapping[str, Any] | None = None
) -> None:
    """`Reservation.arelease` on a Redis-backed chain (awaits the asyncio client)."""
    r = cast(RemoteReservation, reservation)
    if not r._finish():
        return
    if r.rid:
        keys, args, _, _ = r.plan.build(
            "r", r.pool, {}, {}, r.rid, r.route, r.function, r.state_keys
        )
        try:
            reply = await r.plan.backend.arun(_charge_script(), keys, args, r.pool.name)
        except BudgetUnavailable as exc:
            _release_failed(r, exc)
            r.pool._release(r)
        else:
            _released(r, reply)
    else:
        r.pool._release(r)
    r.pool._ledger.append(
        (
            _now(),
            r.pool,
            r.route,
            r.kind,
            dict(r.charged),
            outcome,
            time.perf_counter() - r.started,
            ("released",) if r.reserved else (),
            detail,
        )
    )


_SCRIPTS: list[Any] = []


def _script(i: int) -> Any:
    """charge.lua (0) or fast.lua (1), imported on first use."""
    if not _SCRIPTS:
        from .backends.redis import CHARGE, FAST

        _SCRIPTS[:] = [CHARGE, FAST]
    return _SCRIPTS[i]


def _charge_script() -> Any:
    return _script(0)
