"""`@ag.contract`: a function's result is checked where it is produced, not three steps later.

```python
@ag.contract(not_empty=True, required_keys=("momentum", "volatility"))
def extract_features(prices: list[float]) -> dict[str, float]: ...
```

The return value is checked against the return annotation (pydantic, strict: the function
must return what it says, nothing is coerced) and against optional content checks: not None
(on by default unless the annotation admits None), not empty, required keys. A violation
raises `ContractViolation` naming the producing function, the expected shape and what came
back (truncated repr), records a `contract` ledger row and the
`agentguard.contract.violations` metric. Works on sync and async functions, stacked with
`@ag.tool_call` in either order. Guard id: `contract:<function qualname>` (for bypasses).
"""

from __future__ import annotations

import functools
import inspect
import threading
import types
import typing
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar, Union, overload

from pydantic import (
    ConfigDict,
    PydanticSchemaGenerationError,
    PydanticUserError,
    TypeAdapter,
    ValidationError,
)
from typing_extensions import ParamSpec, is_typeddict

from . import _config, bypasses, telemetry
from ._argcheck import caller_namespace, resolve_hints
from ._events import record_event
from ._guards import declare_guard
from ._redact import describe
from .errors import ConfigurationError, ContractViolation

__all__ = ["contract"]

P = ParamSpec("P")
R = TypeVar("R")

_NO_ANNOTATION: Any = object()
_UNRESOLVED: Any = object()
_ARBITRARY = ConfigDict(arbitrary_types_allowed=True)


def _type_text(annotation: Any) -> str:
    if annotation is _NO_ANNOTATION:
        return "any value"
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__qualname__
    return str(annotation).replace("typing.", "").replace("typing_extensions.", "")


def _admits_none(annotation: Any) -> bool:
    if annotation is _NO_ANNOTATION:
        return False
    if annotation is None or annotation is type(None) or annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _admits_none(typing.get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return any(_admits_none(a) for a in typing.get_args(annotation))
    return False


class _Contract:
    """The compiled contract of one function (the TypeAdapter is built once, lazily)."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        not_none: bool | None,
        not_empty: bool,
        required_keys: tuple[str, ...],
        name: str | None,
    ) -> None:
        self.fn = fn
        self.name = name or getattr(fn, "__qualname__", None) or repr(fn)
        self.guard_id = f"contract:{self.name}"
        declare_guard(self.guard_id, f"@contract {getattr(fn, '__module__', '?')}.{self.name}")
        self.not_none_given = not_none
        self.not_empty = not_empty
        self.required_keys = required_keys
        self._lock = threading.Lock()
        self._annotation: Any = _UNRESOLVED
        self._adapter: TypeAdapter[Any] | None = None
        self._instance_of: type | None = None
        self.not_none = bool(not_none)
        self.expected = ""
        try:
            self._compile(caller_namespace())
        except NameError:
            pass  # a forward reference defined later in the module: resolved at first call

    def _compile(self, localns: dict[str, Any] | None = None) -> None:
        hints = resolve_hints(self.fn, localns)
        annotation = hints.get("return", _NO_ANNOTATION)
        adapter: TypeAdapter[Any] | None = None
        instance_of: type | None = None
        if (
            isinstance(annotation, type)
            and annotation.__module__ != "builtins"
            and not is_typeddict(annotation)
        ):
            instance_of = annotation  # a model or class: the instance itself is the contract
        elif annotation not in (_NO_ANNOTATION, Any, object) and annotation is not type(None):
            adapter = self._adapter_for(annotation)
        not_none = self.not_none_given
        if not_none is None:
            not_none = annotation is not type(None) and not _admits_none(annotation)
        parts = [_type_text(annotation)]
        if not_none and annotation is _NO_ANNOTATION:
            parts = ["a value"]
        if not_none and _admits_none(annotation):
            parts.append("not None")
        if self.not_empty:
            parts.append("not empty")
        if self.required_keys:
            parts.append("with keys " + ", ".join(repr(k) for k in self.required_keys))
        with self._lock:
            self._adapter = adapter
            self._instance_of = instance_of
            self.not_none = not_none
            self.expected = ", ".join(parts)
            self._annotation = annotation

    def _adapter_for(self, annotation: Any) -> TypeAdapter[Any]:
        try:
            try:
                return TypeAdapter(annotation, config=_ARBITRARY)
            except PydanticUserError as exc:
                if exc.code != "type-adapter-config-unused":
                    raise
                return TypeAdapter(annotation)  # models, dataclasses, TypedDicts: own config
        except (PydanticUserError, PydanticSchemaGenerationError) as exc:
            raise ConfigurationError(
                f"@ag.contract on {self.name!r}: pydantic cannot check the return annotation "
                f"{_type_text(annotation)} ({exc}). Fix: use a type pydantic can validate, or "
                f"drop the annotation and rely on not_none / not_empty / required_keys."
            ) from exc

    def check(self, result: Any) -> None:
        """Raise `ContractViolation` unless `result` honours the contract."""
        if self._annotation is _UNRESOLVED:
            try:
                self._compile()
            except NameError as exc:
                raise ConfigurationError(
                    f"@ag.contract on {self.name!r}: its return annotation cannot be resolved "
                    f"({exc}). Fix: define or import the type at module level."
                ) from exc
        found = self._violation(result)
        if found is not None:
            self._violated(result, *found)

    def _violation(self, result: Any) -> tuple[str, str] | None:
        """(check, reason) of the first failed check, or None."""
        if result is None:
            if self.not_none:
                return "not_none", "it returned None"
            return None
        instance_of = self._instance_of
        if instance_of is not None and not isinstance(result, instance_of):
            return "annotation", (
                f"it returned a {type(result).__name__} where its annotation promises a "
                f"{instance_of.__qualname__}"
            )
        adapter = self._adapter
        if adapter is not None:
            try:
                adapter.validate_python(result, strict=True)
            except ValidationError as exc:
                details = "; ".join(
                    f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}"
                    for e in exc.errors(include_url=False)[:3]
                )
                more = f" (+{exc.error_count() - 3} more)" if exc.error_count() > 3 else ""
                return "annotation", (
                    f"it returned a {type(result).__name__} that does not match the return "
                    f"annotation ({details}{more})"
                )
        if self.not_empty:
            try:
                size = len(result)
            except TypeError:
                kind = type(result).__name__
                return (
                    "not_empty",
                    f"not_empty is set but it returned a {kind}, which has no length",
                )
            if size == 0 or (isinstance(result, str) and not result.strip()):
                return "not_empty", f"it returned an empty {type(result).__name__}"
        if self.required_keys:
            if type(result) is dict or isinstance(result, Mapping):
                missing = [k for k in self.required_keys if k not in result]
            else:
                missing = [k for k in self.required_keys if not hasattr(result, k)]
            if missing:
                names = ", ".join(repr(k) for k in missing)
                return "required_keys", f"it returned a {type(result).__name__} without {names}"
        return None

    def _violated(self, result: Any, check: str, reason: str) -> None:
        entry = bypasses.active_bypass(self.guard_id)
        if entry is not None:
            bypasses.record_bypass_use(
                entry,
                self.guard_id,
                would_have=f"would have rejected the result {describe(result)} ({reason})",
                function=self.name,
            )
            return
        detail = {"function": self.name, "check": check, "received": describe(result)}
        if _config.get_config().record_values:
            detail["reason"] = reason  # may name keys of the result
        record_event("contract", outcome="violated", guard_id=self.guard_id, detail=detail)
        telemetry.counter(telemetry.METRIC.CONTRACT_VIOLATIONS).add(
            1, {telemetry.ATTR.FUNCTION: self.name}
        )
        raise ContractViolation(
            function=self.name, expected=self.expected, received=result, reason=reason
        )


@overload
def contract(fn: Callable[P, R], /) -> Callable[P, R]: ...
@overload
def contract(
    *,
    not_none: bool | None = None,
    not_empty: bool = False,
    required_keys: Iterable[str] = (),
    name: str | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...
def contract(
    fn: Callable[P, R] | None = None,
    /,
    *,
    not_none: bool | None = None,
    not_empty: bool = False,
    required_keys: Iterable[str] = (),
    name: str | None = None,
) -> Any:
    """Check what a function returns, where it returns it.

    Args:
        not_none: reject None (default: on, unless the return annotation admits None).
        not_empty: reject a result whose `len()` is 0 (and a whitespace-only string).
        required_keys: keys a mapping result must have (attributes for other objects).
        name: the function's name in errors, metrics and the guard id (default: qualname).

    Raises `ContractViolation` after the function returned (its own exceptions pass through
    unchanged). Cost per call: one strict pydantic validation of the result (skipped when
    there is no return annotation) plus the content checks.
    """
    keys = tuple(required_keys)
    if isinstance(required_keys, str):
        raise ConfigurationError(
            f"@ag.contract(required_keys={required_keys!r}): pass a list of key names, not a "
            f"single string."
        )

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        spec = _Contract(
            func, not_none=not_none, not_empty=not_empty, required_keys=keys, name=name
        )
        check = spec.check

        if inspect.iscoroutinefunction(func):
            afunc: Callable[..., Awaitable[Any]] = func

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                result = await afunc(*args, **kwargs)
                check(result)
                return result

            async_wrapper.__agentguard_contract__ = spec  # type: ignore[attr-defined]
            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            result = func(*args, **kwargs)
            check(result)
            return result

        wrapper.__agentguard_contract__ = spec  # type: ignore[attr-defined]
        return wrapper

    if fn is not None:
        return decorate(fn)
    return decorate
