"""Distributed backends for `BudgetPool`: one pool shared by many processes and machines.

`RedisBackend` keeps a pool's counters in Redis and charges them with one server-side Lua
script per call (see `docs/redis.md`). The `redis` package is the optional extra
`agentguard[redis]`; it is imported only when a backend is first used.
"""

from __future__ import annotations

from .redis import RedisBackend, RemoteState

__all__ = ["RedisBackend", "RemoteState"]
