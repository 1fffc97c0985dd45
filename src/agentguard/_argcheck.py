"""Compiling a tool's annotated semantic validators into one argument guard.

`compile_arguments(fn, ...)` runs once, at decoration time. It returns None when the
signature carries no agentguard validator, so an unvalidated tool pays nothing per call.
Otherwise the per-call path is: pick the validated arguments out of (args, kwargs), one
pydantic `validate_python` on a `TypeAdapter` built from the signature (every field's type
and semantic checks, all problems collected), then the `Resolves` lookups (async ones
concurrently), then either the converted arguments or one `ToolArgumentError` listing every
problem. A rejection is a correction round of the run; past `max_corrections` it is
`CorrectionsExhausted`, which stops the pool.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import sys
import typing
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any, Protocol, get_args, get_origin

from pydantic import BaseModel, ConfigDict, PydanticSchemaGenerationError, TypeAdapter
from pydantic import ValidationError as _PydanticError
from typing_extensions import NotRequired, TypedDict

from . import bypasses, telemetry
from ._events import record_event
from ._guards import declare_guard
from ._redact import describe
from .errors import (
    ArgumentProblem,
    ConfigurationError,
    CorrectionsExhausted,
    ToolArgumentError,
)
from .validators import _ERROR_TYPE, Validator, _Ctx, _remember

if TYPE_CHECKING:
    from .budget import BudgetPool

__all__ = ["ArgumentGuard", "compile_arguments", "DEFAULT_MAX_CORRECTIONS"]

DEFAULT_MAX_CORRECTIONS = 3
_VALIDATOR_NAMES = re.compile(r"\b(?:Resolves|Email|Amount|DateRange|Verbatim|NotPlaceholder)\(")
_CONFIG = ConfigDict(arbitrary_types_allowed=True, coerce_numbers_to_str=True)


class ArgumentGuard(Protocol):
    """Validates (and may convert) a call's arguments before the tool body runs."""

    def check(
        self, pool: BudgetPool, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]: ...

    async def acheck(
        self, pool: BudgetPool, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]: ...


class _MissingArgument:
    def __repr__(self) -> str:
        return "nothing (the argument is missing)"


MISSING = _MissingArgument()

_EXPECTED_BY_TYPE = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "decimal_type": "a number",
    "decimal_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "date_type": "a date as YYYY-MM-DD",
    "date_parsing": "a date as YYYY-MM-DD",
    "date_from_datetime_parsing": "a date as YYYY-MM-DD",
    "datetime_type": "a date and time as YYYY-MM-DDTHH:MM:SS",
    "datetime_parsing": "a date and time as YYYY-MM-DDTHH:MM:SS",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "list_type": "a list",
}


def _loc_text(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "arguments"


def _problems_from(error: _PydanticError) -> list[ArgumentProblem]:
    """One `ArgumentProblem` per pydantic error (ours carry reason/expected/candidates)."""
    problems: list[ArgumentProblem] = []
    for err in error.errors(include_url=False):
        argument = _loc_text(tuple(err["loc"]))
        kind = err["type"]
        ctx = err.get("ctx") or {}
        if kind == _ERROR_TYPE:
            problems.append(
                ArgumentProblem(
                    argument,
                    err["input"],
                    ctx["reason"],
                    ctx["expected"],
                    tuple(ctx.get("candidates", ())),
                )
            )
            continue
        if kind == "missing":
            problems.append(
                ArgumentProblem(argument, MISSING, "it is required", f"a value for `{argument}`")
            )
            continue
        msg = err["msg"]
        expected = _EXPECTED_BY_TYPE.get(kind)
        if expected is None and kind in ("literal_error", "enum") and "expected" in ctx:
            expected = f"one of {ctx['expected']}"
        if expected is None:
            body = msg.split(",")[0]
            expected = (
                body[len("Input should be ") :]
                if body.startswith("Input should be ")
                else ("a value of the declared type")
            )
        reason = msg[:1].lower() + msg[1:]
        problems.append(
            ArgumentProblem(argument, err["input"], f"it is invalid: {reason}", expected)
        )
    return problems


def _find(obj: Any, key: str, value: Any, depth: int) -> str | None:
    """The path suffix (`.field`, `[0].field`) under `obj` where `key` holds `value`."""
    if depth > 6:
        return None
    if isinstance(obj, BaseModel):
        obj = obj.__dict__
    if isinstance(obj, dict):
        if key in obj and obj[key] == value:
            return f".{key}"
        for name, item in obj.items():
            found = _find(item, key, value, depth + 1)
            if found is not None:
                return f".{name}{found}"
    elif isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            found = _find(item, key, value, depth + 1)
            if found is not None:
                return f"[{i}]{found}"
    return None


def _carries_validator(annotation: Any, seen: set[int] | None = None, depth: int = 0) -> bool:
    """True when `annotation` (or a pydantic model / generic argument in it) has a Validator."""
    if annotation is None or depth > 8:
        return False
    seen = seen if seen is not None else set()
    if id(annotation) in seen:
        return False
    seen.add(id(annotation))
    if get_origin(annotation) is Annotated:
        base, *metadata = get_args(annotation)
        if any(isinstance(m, Validator) for m in metadata):
            return True
        return _carries_validator(base, seen, depth + 1)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        for field in annotation.model_fields.values():
            if any(isinstance(m, Validator) for m in field.metadata):
                return True
            if _carries_validator(field.annotation, seen, depth + 1):
                return True
        return False
    return any(_carries_validator(arg, seen, depth + 1) for arg in get_args(annotation))


def caller_namespace() -> dict[str, Any] | None:
    """The local namespace of the nearest frame outside agentguard (where a tool is defined).

    With `from __future__ import annotations`, a tool defined inside a function names local
    objects (its lookup, its types) in string annotations that only that frame can resolve
    (pydantic resolves its models' annotations the same way). None at module level.
    """
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module != "agentguard" and not module.startswith("agentguard."):
            break
        frame = frame.f_back
    if frame is None or frame.f_code.co_name == "<module>":
        return None
    return dict(frame.f_locals)


def resolve_hints(fn: Callable[..., Any], localns: dict[str, Any] | None) -> dict[str, Any]:
    """`typing.get_type_hints` of the unwrapped `fn`, extras kept. Raises NameError & co."""
    return typing.get_type_hints(inspect.unwrap(fn), localns=localns, include_extras=True)


def _type_hints(fn: Callable[..., Any], tool: str) -> dict[str, Any] | None:
    target = inspect.unwrap(fn)
    try:
        return resolve_hints(fn, caller_namespace())
    except (NameError, TypeError, AttributeError) as exc:
        raw = getattr(target, "__annotations__", {}) or {}
        mentions = any(isinstance(a, str) and _VALIDATOR_NAMES.search(a) for a in raw.values())
        if mentions:
            raise ConfigurationError(
                f"@ag.tool_call({tool!r}): the annotations of {target.__qualname__} could not be "
                f"resolved at decoration time ({type(exc).__name__}: {exc}), so its argument "
                f"validators cannot be compiled. Fix: define the types used in the signature "
                f"before the decorated function (or import them at module level)."
            ) from exc
        return None


class _Guard:
    """The compiled argument guard of one tool (immutable; thread- and task-safe)."""

    def __init__(
        self,
        *,
        tool: str,
        route: str,
        max_corrections: int,
        fields: tuple[tuple[str, int], ...],
        annotations: dict[str, Any],
        adapter: TypeAdapter[Any],
    ) -> None:
        self.tool = tool
        self.route = route
        self.max_corrections = max_corrections
        self.guard_id = f"args:{tool}"
        self._fields = fields
        self._annotations = annotations
        self._adapter = adapter
        self._validate = adapter.validate_python
        self._field_adapters: dict[str, TypeAdapter[Any]] = {}
        self._order = {name: i for i, (name, _) in enumerate(fields)}

    # -- the per-call path -------------------------------------------------------------------

    def _collect(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        data: dict[str, Any] = {}
        n = len(args)
        for name, pos in self._fields:
            if 0 <= pos < n:
                data[name] = args[pos]
            elif name in kwargs:
                data[name] = kwargs[name]
        return data

    def _first_pass(
        self, data: dict[str, Any], ctx: _Ctx
    ) -> tuple[dict[str, Any] | None, list[ArgumentProblem]]:
        try:
            return self._validate(data, context=ctx), []
        except _PydanticError as exc:
            return None, _problems_from(exc)

    def check(
        self, pool: BudgetPool, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Validate and convert; raises `ToolArgumentError` / `CorrectionsExhausted`."""
        data = self._collect(args, kwargs)
        ctx = _Ctx(pool, self.tool)
        out, problems = self._first_pass(data, ctx)
        if ctx.deferred:
            found = []
            for validator, value, argument in ctx.deferred:
                record = validator.call(value, argument, self.tool)
                if record is None:
                    path = self._path(argument, value, data)
                    problems.append(validator._not_found(value).problem(path, value))
                else:
                    found.append((value, record))
            _remember(found)
        if problems:
            out = self._reject(pool, self._ordered(problems), data)
        return self._apply(out, args, kwargs)

    async def acheck(
        self, pool: BudgetPool, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """`check` for async tools: async lookups are awaited, concurrently."""
        data = self._collect(args, kwargs)
        ctx = _Ctx(pool, self.tool)
        out, problems = self._first_pass(data, ctx)
        if ctx.deferred:
            deferred = ctx.deferred
            if len(deferred) == 1:
                validator, value, argument = deferred[0]
                results: list[Any] = [await validator.acall(value, argument, self.tool)]
            else:
                results = list(
                    await asyncio.gather(
                        *(v.acall(value, arg, self.tool) for v, value, arg in deferred),
                        return_exceptions=True,
                    )
                )
                for result in results:
                    if isinstance(result, BaseException):
                        raise result
            found = []
            for (validator, value, argument), record in zip(deferred, results, strict=True):
                if record is None:
                    path = self._path(argument, value, data)
                    problems.append(validator._not_found(value).problem(path, value))
                else:
                    found.append((value, record))
            _remember(found)
        if problems:
            out = self._reject(pool, self._ordered(problems), data)
        return self._apply(out, args, kwargs)

    def _path(self, argument: str, value: Any, data: dict[str, Any]) -> str:
        """Where a deferred value sits: a parameter, or a field of a model argument."""
        if argument in self._order and argument in data:
            return argument
        for name, raw in data.items():
            found = _find(raw, argument, value, 0)
            if found is not None:
                return f"{name}{found}"
        return argument

    def _apply(
        self, out: dict[str, Any] | None, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The call's arguments with the converted values (new objects; inputs untouched)."""
        if not out:
            return args, kwargs
        new_args: list[Any] | None = None
        new_kwargs: dict[str, Any] | None = None
        n = len(args)
        for name, pos in self._fields:
            if name not in out:
                continue
            if 0 <= pos < n:
                if new_args is None:
                    new_args = list(args)
                new_args[pos] = out[name]
            else:
                if new_kwargs is None:
                    new_kwargs = dict(kwargs)
                new_kwargs[name] = out[name]
        return (
            tuple(new_args) if new_args is not None else args,
            new_kwargs if new_kwargs is not None else kwargs,
        )

    # -- rejection ---------------------------------------------------------------------------

    def _bypass(self, problem: ArgumentProblem) -> str | None:
        """The argument name when an active bypass lets `problem` through (recorded).

        Asked with the argument's id (`args:<tool>.<argument>`); a bypass of `args:<tool>`
        covers it. Only called on the rejection path: a bypass costs nothing otherwise.
        """
        guard_id = f"{self.guard_id}.{problem.argument}"
        entry = bypasses.active_bypass(guard_id)
        if entry is None:
            return None
        bypasses.record_bypass_use(
            entry,
            guard_id,
            would_have=f"would have rejected {problem.argument}={describe(problem.received)}",
            tool=self.tool,
            route=self.route,
        )
        return problem.argument.split(".")[0].split("[")[0]

    def _ordered(self, problems: list[ArgumentProblem]) -> list[ArgumentProblem]:
        """Problems in signature order (lookups run after the type checks)."""
        order = self._order
        return sorted(
            problems, key=lambda p: order.get(p.argument.split(".")[0].split("[")[0], len(order))
        )

    def _field_adapter(self, name: str) -> TypeAdapter[Any]:
        adapter = self._field_adapters.get(name)
        if adapter is None:
            adapter = TypeAdapter(self._annotations[name], config=_CONFIG)
            self._field_adapters[name] = adapter
        return adapter

    def _reject(
        self, pool: BudgetPool, problems: list[ArgumentProblem], data: dict[str, Any]
    ) -> dict[str, Any]:
        """Raise for `problems`, unless bypasses cover all of them (then: the arguments)."""
        kept: list[ArgumentProblem] = []
        bypassed: set[str] = set()
        for problem in problems:
            name = self._bypass(problem)
            if name is None:
                kept.append(problem)
            else:
                bypassed.add(name)
        if kept:
            raise self._count_round(pool, kept)
        # Every problem is bypassed: convert the other arguments one by one, pass the rest raw.
        out: dict[str, Any] = {}
        ctx = _Ctx(pool, self.tool)
        for name, value in data.items():
            if name in bypassed:
                out[name] = value
            else:
                out[name] = self._field_adapter(name).validate_python(value, context=ctx)
        return out

    def _count_round(self, pool: BudgetPool, problems: list[ArgumentProblem]) -> Exception:
        root = pool._root
        with pool._lock:
            rounds = root._corrections.get(self.tool, 0) + 1
            root._corrections[self.tool] = rounds
        left = self.max_corrections - rounds
        outcome = "rejected" if left >= 0 else "exhausted"
        detail: dict[str, Any] = {
            "tool": self.tool,
            "round": rounds,
            "max_corrections": self.max_corrections,
            "arguments": [p.argument for p in problems],
            "received": [describe(p.received) for p in problems],
        }
        record_event(
            "correction", outcome=outcome, route=self.route, guard_id=self.guard_id, detail=detail
        )
        telemetry.counter(telemetry.METRIC.CORRECTIONS).add(
            1,
            {
                telemetry.ATTR.GEN_AI_TOOL_NAME: self.tool,
                telemetry.ATTR.ROUTE: self.route,
                telemetry.ATTR.OUTCOME: outcome,
            },
        )
        if left >= 0:
            return ToolArgumentError(tool=self.tool, problems=problems, rounds_left=left)
        last = ToolArgumentError(tool=self.tool, problems=problems, rounds_left=0)
        exhausted = CorrectionsExhausted(
            tool=self.tool, rounds=rounds, max_corrections=self.max_corrections, last=last
        )
        exhausted.__cause__ = last
        pool._stop_for(
            exhausted,
            self.guard_id,
            dimension="corrections",
            limit=float(self.max_corrections),
            spent=float(rounds),
            route=self.route,
            function=self.tool,
            alert_kind="corrections.exhausted",
        )
        return exhausted

    # -- introspection -----------------------------------------------------------------------

    @property
    def arguments(self) -> tuple[str, ...]:
        """The names of the validated arguments."""
        return tuple(name for name, _ in self._fields)

    def json_schema(self) -> dict[str, Any]:
        """The JSON schema of the validated arguments (with the validators' descriptions)."""
        return self._adapter.json_schema()


def compile_arguments(
    fn: Callable[..., Any], *, tool: str, route: str, max_corrections: int | None
) -> ArgumentGuard | None:
    """The argument guard for `fn`, or None when it declares no semantic validator.

    Raises `ConfigurationError` for a bad `max_corrections`, annotations that cannot be
    resolved while they name validators, or a validated type pydantic cannot build.
    Cost: once per decorated function.
    """
    if max_corrections is not None and (
        isinstance(max_corrections, bool)
        or not isinstance(max_corrections, int)
        or max_corrections < 0
    ):
        raise ConfigurationError(
            f"@ag.tool_call({tool!r}, max_corrections=...) must be an int >= 0 or None, got "
            f"{max_corrections!r}."
        )
    hints = _type_hints(fn, tool)
    if not hints:
        return None
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    fields: list[tuple[str, int]] = []
    td_fields: dict[str, Any] = {}
    annotations: dict[str, Any] = {}
    position = 0
    for param in signature.parameters.values():
        kind = param.kind
        if kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        pos = -1
        if kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            pos = position
            position += 1
        annotation = hints.get(param.name)
        if annotation is None or not _carries_validator(annotation):
            continue
        fields.append((param.name, pos))
        annotations[param.name] = annotation
        td_fields[param.name] = (
            annotation if param.default is param.empty else NotRequired[annotation]
        )
    if not fields:
        return None
    where = f"@tool_call {getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', tool)}"
    declare_guard(f"args:{tool}", where)
    for name, _ in fields:
        declare_guard(f"args:{tool}.{name}", where)
    arguments = TypedDict(f"{tool}_arguments", td_fields)  # type: ignore[misc]
    arguments.__pydantic_config__ = _CONFIG  # type: ignore[attr-defined]
    try:
        adapter: TypeAdapter[Any] = TypeAdapter(arguments)
    except PydanticSchemaGenerationError as exc:
        raise ConfigurationError(
            f"@ag.tool_call({tool!r}): pydantic cannot validate the annotated arguments "
            f"{', '.join(annotations)}: {exc}. Fix: use types pydantic understands for the "
            f"arguments that carry validators."
        ) from exc
    return _Guard(
        tool=tool,
        route=route,
        max_corrections=DEFAULT_MAX_CORRECTIONS if max_corrections is None else max_corrections,
        fields=tuple(fields),
        annotations=annotations,
        adapter=adapter,
    )
