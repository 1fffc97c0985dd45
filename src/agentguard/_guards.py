"""The guard ids a codebase declares, so an owner can find the id a bypass must name.

Guards call `declare_guard(guard_id, where)` once, at decoration or construction time (a dict
insert; never per call). `agentguard guards -m pkg.module` imports the named modules and lists
these ids plus the ids derived from the `__agentguard__` metadata of `@tool_call` /
`@llm_call` wrappers found in them.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from types import ModuleType

__all__ = ["declare_guard", "declared_guards", "guards_in_module"]

_declared: dict[str, set[str]] = {}
_lock = threading.Lock()


def declare_guard(guard_id: str, where: str = "") -> None:
    """Note that the code declares `guard_id` (`where`: e.g. `@tool_call mypkg.tools.search`).

    Cost: one dict insert under a lock; call it at decoration time, not per call.
    """
    with _lock:
        _declared.setdefault(guard_id, set()).add(where)


def declared_guards() -> dict[str, tuple[str, ...]]:
    """Every declared guard id and where it was declared, sorted."""
    with _lock:
        return {
            gid: tuple(sorted(w for w in where if w)) for gid, where in sorted(_declared.items())
        }


def guards_in_module(module: ModuleType) -> dict[str, set[str]]:
    """Guard ids derived from the guarded callables defined at the top level of `module`.

    A wrapper's `__agentguard__` metadata may list its ids under `guards`; a `@tool_call`
    wrapper always declares `args:<tool>` (which covers `args:<tool>.<argument>`).
    """
    found: dict[str, set[str]] = {}
    for attr, value in vars(module).items():
        meta = getattr(value, "__agentguard__", None) if callable(value) else None
        if not isinstance(meta, Mapping):
            continue
        kind = meta.get("kind")
        where = f"@{kind}_call {module.__name__}.{attr}" if kind else f"{module.__name__}.{attr}"
        ids = [str(g) for g in meta.get("guards", ())]
        if kind == "tool" and meta.get("name"):
            ids.append(f"args:{meta['name']}")
        for gid in ids:
            found.setdefault(gid, set()).add(where)
    return found


def _reset_for_tests() -> None:
    with _lock:
        _declared.clear()
