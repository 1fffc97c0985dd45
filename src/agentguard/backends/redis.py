"""`RedisBackend`: a budget pool whose counters live in Redis, shared by every process.

Each charge is ONE round trip: an `EVALSHA` of `charge.lua`, which checks every dimension of
the pool and of all its Redis-backed ancestors and charges them all or nothing. The Python
side (planning a chain, the local mirror, errors) lives in `agentguard._remote`; this module
holds the connection, the scripts and the key layout.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import re
import threading
import weakref
from dataclasses import dataclass, field
from datetime import timedelta
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from ..errors import BudgetUnavailable, ConfigurationError

if TYPE_CHECKING:
    import redis as redis_sync
    import redis.asyncio as redis_async

__all__ = ["RedisBackend", "RemoteState", "parse_window"]

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_WINDOW_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


class _Script:
    """A Lua script shipped with agentguard, called by its SHA1 (EVALSHA)."""

    __slots__ = ("load", "name", "sha", "text")

    def __init__(self, name: str) -> None:
        self.name = name
        self.text = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
        self.sha = hashlib.sha1(self.text.encode("utf-8")).hexdigest()
        raw = self.text.encode("utf-8")
        self.load = b"*3\r\n$6\r\nSCRIPT\r\n$4\r\nLOAD\r\n$%d\r\n%s\r\n" % (len(raw), raw)


_FORKS = [0]
"""Bumped in a forked child: connections made before the fork are never reused after it."""


def _after_fork() -> None:
    _FORKS[0] += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


CHARGE = _Script("charge.lua")
OPEN = _Script("open.lua")
FAST = _Script("fast.lua")


def parse_window(window: str | float | timedelta, *, pool: str) -> float:
    """Seconds of a budget window: `"1d"`, `"12h"`, `"30m"`, `"1w"`, seconds, or a timedelta."""
    if isinstance(window, timedelta):
        seconds = window.total_seconds()
    elif isinstance(window, str):
        m = _WINDOW_RE.match(window)
        if m is None:
            raise ConfigurationError(
                f"BudgetPool {pool!r}: window={window!r} is not a duration. Expected a number "
                f"and a unit (s, m, h, d, w), e.g. window='1d' or window='12h', a number of "
                f"seconds, or a datetime.timedelta."
            )
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    elif isinstance(window, (int, float)) and not isinstance(window, bool):
        seconds = float(window)
    else:
        raise ConfigurationError(
            f"BudgetPool {pool!r}: window= expects '1d', seconds or a timedelta, got "
            f"{type(window).__name__}."
        )
    if not seconds >= 1:
        raise ConfigurationError(
            f"BudgetPool {pool!r}: window={window!r} must last at least one second."
        )
    return seconds


def _redact_url(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable redis url>"
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))


@dataclass(frozen=True)
class RemoteState:
    """What Redis holds for one pool (all processes together), read by `RedisBackend.state`."""

    key: str
    exists: bool
    name: str | None = None
    limits: dict[str, float] = field(default_factory=dict)
    spent: dict[str, float] = field(default_factory=dict)
    reserved: dict[str, float] = field(default_factory=dict)
    stopped: bool = False
    stop: str | None = None
    reservations: int = 0
    ttl_seconds: float | None = None


class RedisBackend:
    """Keep a `BudgetPool` in Redis so that every process opening the same key shares it.

    `BudgetPool(tool_calls=5000, backend=RedisBackend("redis://host:6379/0",
    key="triage:run-42", create=True))` in the process that starts a run creates the pool;
    every other process passes the same key with `create=False` (the default) and opens
    it. A key that does not exist is never created by a charge: it raises
    `BudgetUnavailable` (fail closed, see `docs/redis.md`).

    Args:
        url: a `redis://` / `rediss://` / `unix://` URL.
        key: the pool's key (the prefix is added); may instead be given as
            `BudgetPool(key=...)`, which lets one backend serve many pools.
        create: create the key on first use when it does not exist (else open it).
        prefix: prepended to every key this backend writes.
        socket_timeout, connect_timeout: seconds before an unanswered Redis raises
            `BudgetUnavailable` (bounded; one retry on a dropped connection).
        lease_seconds: how long a reservation (an LLM call in flight) may stay unsettled
            before any process reclaims it (its worker is presumed dead).
        ttl_seconds: pool keys expire this long after their last write (windowed keys: one
            window plus this).
        dedup_seconds: how long a charge id is remembered so a retried charge is not
            charged twice.
        retries: how many times a charge is re-sent after a connection error (same id).
        max_connections: size of each connection pool (the asyncio one blocks when full).
        client, async_client: ready-made `redis.Redis` / `redis.asyncio.Redis` clients (e.g.
            from Sentinel); they must use `decode_responses=True`.

    Thread-safe; usable from many threads and event loops (one asyncio client per loop).
    """

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        key: str | None = None,
        create: bool = False,
        prefix: str = "agentguard:",
        socket_timeout: float = 0.5,
        connect_timeout: float | None = None,
        lease_seconds: float = 600.0,
        ttl_seconds: float = 7 * 86400.0,
        dedup_seconds: float = 30.0,
        retries: int = 1,
        max_connections: int = 64,
        client: redis_sync.Redis | None = None,
        async_client: redis_async.Redis | None = None,
    ) -> None:
        for name, value in (
            ("socket_timeout", socket_timeout),
            ("lease_seconds", lease_seconds),
            ("ttl_seconds", ttl_seconds),
            ("dedup_seconds", dedup_seconds),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigurationError(
                    f"RedisBackend(key={key!r}): {name}= must be a positive number of "
                    f"seconds, got {value!r}."
                )
        if not isinstance(retries, int) or retries < 0:
            raise ConfigurationError(
                f"RedisBackend(key={key!r}): retries= must be an int >= 0, got {retries!r}."
            )
        if key is not None and (not isinstance(key, str) or not key):
            raise ConfigurationError(f"RedisBackend: key= must be a non-empty string, got {key!r}.")
        self.url = url
        self.key = key
        self.create = bool(create)
        self.prefix = prefix
        self.socket_timeout = float(socket_timeout)
        self.connect_timeout = float(connect_timeout or socket_timeout)
        self.lease_seconds = float(lease_seconds)
        self.ttl_seconds = float(ttl_seconds)
        self.dedup_seconds = float(dedup_seconds)
        self.retries = retries
        self.max_connections = max_connections
        self.where = _redact_url(url)
        self._client = client
        self._given_async = async_client
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, redis_async.Redis] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()
        self._conns: list[Any] = []  # idle connections of run_packed
        self._fork = _FORKS[0]

    # -- pickling (multiprocessing hands a backend to a worker: it reconnects there) ----------

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for name in ("_client", "_given_async", "_async", "_lock", "_conns"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._client = None
        self._given_async = None
        self._async = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._conns = []
        self._fork = _FORKS[0]

    def __repr__(self) -> str:
        return f"RedisBackend({self.where!r}, key={self.key!r}, prefix={self.prefix!r})"

    def same_server(self, other: RedisBackend) -> bool:
        """True when `other` talks to the same Redis (so one script can charge both)."""
        return other is self or other.url == self.url

    # -- keys ------------------------------------------------------------------------------

    def full_key(self, key: str) -> str:
        return self.prefix + key

    # -- clients ---------------------------------------------------------------------------

    def _import(self) -> Any:
        try:
            import redis
        except ImportError as exc:
            raise ConfigurationError(
                "RedisBackend needs the redis package, which is not installed. Fix: "
                "pip install 'agentguard[redis]'."
            ) from exc
        return redis

    def sync_client(self) -> redis_sync.Redis:
        """The synchronous client (created on first use)."""
        client = self._client
        if client is not None:
            return client
        redis = self._import()
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        with self._lock:
            if self._client is None:
                self._client = redis.Redis.from_url(
                    self.url,
                    socket_timeout=self.socket_timeout,
                    socket_connect_timeout=self.connect_timeout,
                    retry=Retry(NoBackoff(), 0),
                    decode_responses=True,
                    max_connections=self.max_connections,
                )
            return self._client

    def async_client(self) -> redis_async.Redis:
        """The asyncio client of the running event loop (one per loop, created on first use)."""
        if self._given_async is not None:
            return self._given_async
        loop = asyncio.get_running_loop()
        client = self._async.get(loop)
        if client is not None:
            return client
        self._import()
        import redis.asyncio as aredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        pool = aredis.BlockingConnectionPool.from_url(
            self.url,
            max_connections=self.max_connections,
            socket_timeout=self.socket_timeout,
            socket_connect_timeout=self.connect_timeout,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )
        client = aredis.Redis(connection_pool=pool)
        self._async[loop] = client
        return client

    def close(self) -> None:
        """Close the synchronous client's connections (asyncio clients close with their loop)."""
        with self._lock:
            client, self._client = self._client, None
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.disconnect()
        if client is not None:
            client.close()

    # -- running scripts -------------------------------------------------------------------

    def unavailable(self, pool: str, key: str, exc: BaseException) -> BudgetUnavailable:
        """The `BudgetUnavailable` for a Redis error while charging `pool`."""
        return BudgetUnavailable(
            f"budget pool {pool!r} is unavailable: its state in Redis ({self.where}, key "
            f"{key!r}) could not be read or written ({type(exc).__name__}: {exc}). agentguard "
            f"fails closed, so the call did not start. Expected: Redis answers within "
            f"socket_timeout={self.socket_timeout:g} s. Fix: check that Redis is up and "
            f"reachable (redis-cli -u {self.where} ping); if it is only slow, raise "
            f"RedisBackend(socket_timeout=...); if it refuses writes (OOM, READONLY replica), "
            f"fix maxmemory / point the URL at the primary.",
            pool=pool,
            backend=repr(self),
        )

    def run(self, script: _Script, keys: list[str], args: list[Any], pool: str) -> Any:
        """EVALSHA `script` (re-loading it on NOSCRIPT); Redis errors -> BudgetUnavailable."""
        parts = ["EVALSHA", script.sha, len(keys), *keys, *args]
        out = [b"*%d\r\n" % len(parts)]
        for part in parts:
            raw = part if isinstance(part, bytes) else str(part).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
        return self.run_packed(script, b"".join(out), pool, keys[min(1, len(keys) - 1)])

    def run_packed(self, script: _Script, data: bytes, pool: str, key: str) -> Any:
        """`run` of an EVALSHA already packed as RESP bytes, on a connection of our own.

        The hot path of a charge: no argument encoding, no connection-pool lock or
        readiness poll (a connection goes back to the free list only after a complete
        request and reply; any failure disconnects it). Thread-safe (list pop/append).
        """
        if self._fork != _FORKS[0]:
            self._conns = []
            self._fork = _FORKS[0]
        conns = self._conns
        no_script, transient, redis_error = _errors()
        last: BaseException | None = None
        loaded = False
        attempt = 0
        while attempt <= self.retries:
            try:
                conn = conns.pop()
            except IndexError:
                conn = (self._client or self.sync_client()).connection_pool.make_connection()
            try:
                conn.send_packed_command((data,), check_health=False)
                reply = conn.read_response()
            except no_script as exc:
                if loaded:
                    conns.append(conn)
                    raise self.unavailable(pool, key, exc) from exc
                # Redis restarted or SCRIPT FLUSH: load it again and re-send once (same id).
                loaded = True
                try:
                    conn.send_packed_command((script.load,), check_health=False)
                    conn.read_response()
                except transient as exc2:
                    conn.disconnect()
                    conns.append(conn)
                    last = exc2
                    attempt += 1
                    continue
                except redis_error as exc2:
                    conns.append(conn)
                    raise self.unavailable(pool, key, exc2) from exc2
                conns.append(conn)
                continue
            except transient as exc:
                conn.disconnect()
                conns.append(conn)
                last = exc
                attempt += 1
                continue
            except redis_error as exc:
                conns.append(conn)  # an error reply: the connection is in sync
                raise self.unavailable(pool, key, exc) from exc
            except BaseException:
                conn.disconnect()  # interrupted mid-command: the reply may still be unread
                conns.append(conn)
                raise
            conns.append(conn)
            return reply
        assert last is not None
        raise self.unavailable(pool, key, last) from last

    async def arun(self, script: _Script, keys: list[str], args: list[Any], pool: str) -> Any:
        """`run` on the asyncio client of the running loop."""
        execute: Any = self.async_client().execute_command
        no_script, transient, redis_error = _errors()
        retried: tuple[type[BaseException], ...] = (*transient, asyncio.TimeoutError)
        last: BaseException | None = None
        for _attempt in range(self.retries + 1):
            try:
                try:
                    return await execute("EVALSHA", script.sha, len(keys), *keys, *args)
                except no_script:
                    await execute("SCRIPT", "LOAD", script.text)
                    return await execute("EVALSHA", script.sha, len(keys), *keys, *args)
            except retried as exc:
                last = exc
            except redis_error as exc:
                raise self.unavailable(pool, keys[min(1, len(keys) - 1)], exc) from exc
        assert last is not None
        raise self.unavailable(pool, keys[min(1, len(keys) - 1)], last) from last

    # -- inspection and explicit lifecycle -------------------------------------------------

    def state(self, key: str | None = None, *, window: float | None = None) -> RemoteState:
        """Read what Redis holds for a pool, all processes together (one HGETALL).

        `key` defaults to this backend's key; for a windowed pool pass `window=` (seconds)
        to read the current window. Raises `BudgetUnavailable` when Redis cannot answer.
        """
        from .. import _config

        name = self._key_or_error(key, "state")
        full = self.full_key(name)
        if window is not None:
            now = _config.get_config().clock.now().timestamp()
            full = f"{full}:w{math.floor(now / window)}"
        client = self.sync_client()
        from redis.exceptions import RedisError

        try:
            raw: dict[str, str] = client.hgetall(full)  # type: ignore[assignment]
            ttl_ms = client.pttl(full)
            top = self.full_key(name)
            reservations = client.hlen(top + ":res")
        except RedisError as exc:
            raise self.unavailable(name, full, exc) from exc
        if not raw:
            return RemoteState(key=full, exists=False)
        limits: dict[str, float] = {}
        spent: dict[str, float] = {}
        reserved: dict[str, float] = {}
        for f, v in raw.items():
            kind, _, dim = f.partition(":")
            if not dim:
                continue
            if kind == "l":
                limits[dim] = float(v)
            elif kind == "s":
                spent[dim] = float(v)
            elif kind == "r":
                reserved[dim] = float(v)
        return RemoteState(
            key=full,
            exists=True,
            name=raw.get("name"),
            limits=limits,
            spent=spent,
            reserved={k: v for k, v in reserved.items() if v},
            stopped="stop" in raw,
            stop=raw.get("stop"),
            reservations=int(reservations),
            ttl_seconds=ttl_ms / 1000 if isinstance(ttl_ms, int) and ttl_ms > 0 else None,
        )

    def delete(self, key: str | None = None) -> int:
        """Delete a pool (its state, windows, reservations): the explicit reset.

        The next process must create it again (`create=True`). Returns how many Redis keys
        were removed. Raises `BudgetUnavailable` when Redis cannot answer.
        """
        name = self._key_or_error(key, "delete")
        full = self.full_key(name)
        client = self.sync_client()
        from redis.exceptions import RedisError

        try:
            doomed = [full, full + ":res", full + ":lease"]
            doomed += list(client.scan_iter(match=_glob_escape(full) + ":w*", count=500))
            doomed += list(client.scan_iter(match=_glob_escape(full) + ":op:*", count=500))
            return int(client.delete(*doomed))
        except RedisError as exc:
            raise self.unavailable(name, full, exc) from exc

    def _key_or_error(self, key: str | None, what: str) -> str:
        name = key or self.key
        if not name:
            raise ConfigurationError(
                f"RedisBackend.{what}(): no key given and the backend has none. Fix: pass "
                f"key=... (the same key as the BudgetPool's)."
            )
        return name


_ERRORS: tuple[type[Exception], tuple[type[Exception], ...], type[Exception]] | None = None


def _errors() -> tuple[type[Exception], tuple[type[Exception], ...], type[Exception]]:
    """(NOSCRIPT, errors worth one retry with the same charge id, any other Redis error)."""
    global _ERRORS
    if _ERRORS is None:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import NoScriptError, RedisError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        _ERRORS = (NoScriptError, (RedisConnectionError, RedisTimeoutError), RedisError)
    return _ERRORS


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)
