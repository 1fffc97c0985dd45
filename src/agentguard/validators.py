"""Semantic validators for tool arguments: valid JSON is not enough, the value must mean something.

Each validator is pydantic-compatible `Annotated` metadata, so one signature gives both the
JSON schema sent to the model (with the validator's description) and the semantic check run
by `@ag.tool_call` before the tool body:

```python
from typing import Annotated
from agentguard import validators as v

@ag.tool_call(max_corrections=2)
def escalate(
    user_id: Annotated[str, v.Resolves(find_user, what="user id")],
    email: Annotated[str, v.Email()],
) -> str:
    user = v.resolved(user_id)      # the record find_user returned for this call
    ...
```

They also work inside a pydantic `BaseModel` (the model's own validation runs them) and
standalone: `v.Email().validate("ann@example.com")`. A validator only ever raises
`ToolArgumentError` for a bad value (inside pydantic: a validation error that `@tool_call`
turns into one), except `Resolves`, whose lookup failing is an infrastructure error
(`LookupFailed`, with the lookup's exception as `__cause__`).

Every validator given a `str` also rejects placeholders and references first (`"his email"`,
`"TBD"`, `"<user_id>"`, see `NotPlaceholder`), unless built with `placeholders=False`.
"""

from __future__ import annotations

import asyncio
import difflib
import inspect
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextvars import ContextVar
from datetime import date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic_core import PydanticCustomError, core_schema

from . import _config
from .errors import ArgumentProblem, ConfigurationError, LookupFailed, ToolArgumentError

if TYPE_CHECKING:
    from pydantic.json_schema import JsonSchemaValue

    from .budget import BudgetPool

__all__ = [
    "Validator",
    "Resolves",
    "Email",
    "Amount",
    "DateRange",
    "Verbatim",
    "NotPlaceholder",
    "resolved",
    "placeholder_reason",
]

_ERROR_TYPE = "agentguard_argument"
_MAX_RECORDS = 64


class _Invalid(Exception):
    """Internal: one rejected value (never leaves this package)."""

    def __init__(self, reason: str, expected: str, candidates: tuple[str, ...] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.expected = expected
        self.candidates = candidates

    @property
    def sentence(self) -> str:
        """The reason as a clause about the value: `it is empty`."""
        return "it " + self.reason

    def problem(self, argument: str, received: Any) -> ArgumentProblem:
        return ArgumentProblem(argument, received, self.sentence, self.expected, self.candidates)


class _Ctx:
    """Per-call validation context handed to pydantic by the argument guard."""

    __slots__ = ("defer", "deferred", "pool", "tool")

    def __init__(self, pool: BudgetPool | None, tool: str | None, defer: bool = True) -> None:
        self.pool = pool
        self.tool = tool
        self.defer = defer
        self.deferred: list[tuple[Resolves, Any, str]] = []


# -- placeholders ------------------------------------------------------------------------------

_FILLERS = frozenset(
    {
        "tbd", "tba", "tbc", "to be determined", "to be confirmed", "to be announced",
        "n/a", "n.a.", "n.a", "not applicable", "not available", "none", "null", "nil",
        "undefined", "unknown", "not known", "unspecified", "not specified", "not provided",
        "no value", "placeholder", "todo", "fixme", "?", "??", "???", "...", "…", "-", "--",
        "---", "_", "same", "same as before", "as before", "as above", "idem", "ditto",
        "whatever", "anything", "something", "someone", "somebody", "string", "str", "value",
        "your value here", "insert here", "insert value", "fill in", "etc", "etc.",
        "example", "sample", "dummy", "foo", "bar", "foobar", "lorem ipsum",
    }
)  # fmt: skip
_TEMPLATE = re.compile(
    r"<[A-Za-z][A-Za-z0-9 _.\-]{0,60}>"  # <user_id>
    r"|\{\{[^{}]{0,60}\}\}"  # {{id}}
    r"|\{[A-Za-z][A-Za-z0-9 _.\-]{0,60}\}"  # {id}
    r"|\$\{[^{}]{0,60}\}"  # ${ID}
    r"|\[[A-Za-z][A-Za-z0-9 _\-]{0,60}\]"  # [user id]
    r"|%[sdif]|\$[A-Z][A-Z0-9_]{1,40}"  # %s, $USER_ID
    r"|__[A-Za-z][A-Za-z0-9_]{0,40}__"  # __ID__
    r"|[xX*#]{3,}(?:[ .@\-_][xX*#]{2,})*(?:\.[a-z]{2,4})?"  # XXX-XXX, xxx@xxx.com
    r"|[xX]{2,}@[xX]{2,}\.[a-z]{2,4}"
)
_NOUN = (
    r"(?:id|ids|identifier|email|e-mail|email address|address|number|name|account|"
    r"account id|account number|phone|phone number|order|order id|order number|amount|date|"
    r"details|info|information|reference|ref|user id|customer id|record|ticket|value)"
)
_WHO = r"(?:user|customer|client|caller|person|recipient|sender|buyer|account holder|guy|lady)"
_TAIL = (
    r"(?:(?:mentioned|referenced|discussed|described|specified|named|given|provided|stated|"
    r"gave|sent|shared|quoted|listed)(?: \w+){0,4}|above|earlier|before|previously|"
    r"(?:in|from) (?:the |this |our |that )?(?:conversation|chat|thread|context|prompt|"
    r"messages?|email|ticket|history|call)(?: \w+){0,2}|from (?:before|earlier|above|last time)|"
    r"(?:we|i|you|they|he|she) (?:discussed|mentioned|talked about|spoke about|saw|used)"
    r"(?: \w+){0,3})"
)
_REFERENCES: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(
            rf"(?:the |that |this |a |an )?(?:{_WHO}|{_NOUN}|one|record)(?: [\w']+){{0,4}} {_TAIL}"
        ),
        "is a description of the value, not the value itself",
    ),
    (
        re.compile(
            rf"(?:his|her|hers|their|its|my|our|your|the {_WHO}'?s?|the {_WHO}s'|"
            rf"this {_WHO}'?s|that {_WHO}'?s)(?: \w+){{0,2}} {_NOUN}"
        ),
        "says whose value is meant instead of giving the value",
    ),
    (
        re.compile(
            r"(?:the |just |use )?(?:same|identical)(?: (?:one|thing|value|amount|id|email|"
            r"address|date|number|user|customer|order|account|person|as (?:before|last time|"
            r"previous(?:ly)?|above|earlier|usual|the (?:last|previous|other) (?:one|time|call|"
            r"order|message))))*"
        ),
        "refers to an earlier value instead of repeating it",
    ),
    (
        re.compile(
            r"(?:the |as |use )?(?:previous|prior|earlier|last|above|aforementioned|usual)"
            r"(?: \w+){0,2}(?: as (?:before|last time|usual))?"
        ),
        "refers to an earlier value instead of repeating it",
    ),
    (
        re.compile(r".{0,60}\b(?:as (?:before|last time|usual|above|discussed|mentioned))"),
        "refers to an earlier value instead of repeating it",
    ),
    (
        re.compile(
            r"(?:see|check|refer to|look at|per|from|in) (?:the )?(?:above|below|conversation|"
            r"chat|thread|context|prompt|history|previous messages?|earlier messages?|ticket)"
        ),
        "points to where the value is instead of giving it",
    ),
    (
        re.compile(
            rf"(?:him|her|them|it|that|this|that one|this one|the one|they|he|she|"
            rf"the {_WHO}|the account|the order|the ticket|the amount|the date|the email|"
            rf"the address|the id|the user id)"
        ),
        "is a reference (a pronoun or a role), not a value",
    ),
)
_MAX_REFERENCE_WORDS = 12
_SPACES = re.compile(r"\s+")


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_PREVIOUS = _words("previous prior earlier last above aforementioned usual")
# When each reference pattern can apply: ("any", words) / ("first", words) / ("as", _) /
# ("short", _). Checking these sets first keeps real values away from the regexes.
_GATES: tuple[tuple[str, frozenset[str]], ...] = (
    (
        "any",
        frozenset(
            _words(
                "mentioned referenced discussed described specified named given provided stated "
                "gave sent shared quoted listed above earlier before previously conversation "
                "chat thread context prompt message messages email ticket history call talked "
                "spoke saw used last"
            )
        ),
    ),
    ("first", _words("his her hers their its my our your the this that")),
    ("any", frozenset({"same", "identical"})),
    ("any", _PREVIOUS),
    ("as", frozenset()),
    ("first", _words("see check refer look per from in")),
    ("short", _words("him her them it that this the they he she")),
)
_ANY_FIRST = frozenset().union(*(g for kind, g in _GATES if kind in ("first", "short")))
_ANY_WORD = frozenset({"as"}).union(*(g for kind, g in _GATES if kind == "any"))
_TEMPLATE_STARTS = frozenset("<{$[%_xX*#")
_DIGIT = re.compile(r"\d")


def placeholder_reason(value: str, argument: str | None = None) -> str | None:
    """Why `value` is a placeholder or a reference instead of a value, or None if it is not.

    Recognises: empty or whitespace; template markers (`<user_id>`, `{{id}}`, `${ID}`,
    `XXX-XXXX`); fillers (`TBD`, `N/A`, `unknown`, `none`, `string`, ...); descriptions and
    references that make up the whole value (`the user mentioned in the conversation`,
    `his email`, `the same amount as last time`, `same as before`); and the argument's own
    name sent as its value (`user_id` for `user_id`). Text that merely *contains* such a
    phrase among other words is accepted. Pure function; cost: well under a microsecond for
    an id or an email, one regex match for short phrases.
    """
    stripped = value.strip()
    if not stripped:
        return "is empty"
    if len(stripped) > 200:
        return None
    if stripped[0] in _TEMPLATE_STARTS and _TEMPLATE.fullmatch(stripped):
        return "is a template placeholder, not a value"
    if "@" in stripped:
        return None  # no filler or reference contains "@"
    if _DIGIT.search(stripped) is not None and (
        argument is None or _DIGIT.search(argument) is None
    ):
        return None  # nor a digit: ids, amounts, dates and refs leave here
    norm = " ".join(stripped.casefold().split())
    if norm in _FILLERS or stripped in ("NA", "N/A"):
        return "is a placeholder, not a value"
    trimmed = norm.rstrip(".!")
    if trimmed is not norm and trimmed in _FILLERS:
        return "is a placeholder, not a value"
    if argument is not None and len(trimmed) == len(argument):
        name = argument.casefold().replace("_", " ").replace("-", " ")
        if trimmed.replace("_", " ").replace("-", " ") == name:
            return "is the argument's name, not a value for it"
    if _DIGIT.search(trimmed) is not None:
        return None
    words = trimmed.replace("\u2019", "'").split(" ")
    if len(words) > _MAX_REFERENCE_WORDS:
        return None
    present = set(words)
    if words[0] not in _ANY_FIRST and present.isdisjoint(_ANY_WORD):
        return None
    text = " ".join(words)
    for (pattern, reason), (kind, gate) in zip(_REFERENCES, _GATES, strict=True):
        if kind == "any":
            applies = not gate.isdisjoint(present)
        elif kind == "first":
            applies = words[0] in gate
        elif kind == "as":
            applies = "as" in present
        else:
            applies = len(words) <= 3 and words[0] in gate
        if applies and pattern.fullmatch(text):
            return reason
    return None


# -- base ---------------------------------------------------------------------------------------


def _raise_pydantic(exc: _Invalid) -> PydanticCustomError:
    return PydanticCustomError(
        _ERROR_TYPE,
        "{reason}",
        {"reason": exc.sentence, "expected": exc.expected, "candidates": exc.candidates},
    )


def _identity(value: Any) -> Any:
    return value


class Validator:
    """Base of the semantic validators: pydantic metadata, a description, one check.

    Subclasses implement `_check(value, target, argument, ctx)` (raise `_Invalid`), and set
    `description` (shown to the model in the JSON schema) and `expected` (what to send
    instead). Instances are immutable after construction and safe to share across threads.
    """

    description: str = ""
    expected: str = "a usable value"
    placeholders: bool = True
    default_target: Any = None

    def _check(self, value: Any, target: Any, argument: str | None, ctx: _Ctx | None) -> Any:
        return value

    def _json_extra(self, schema: dict[str, Any]) -> None:
        """Add keywords (format, minimum, ...) to the argument's JSON schema."""

    # -- standalone --------------------------------------------------------------------------

    def validate(self, value: Any, *, argument: str = "value", tool: str | None = None) -> Any:
        """Check one value outside any tool; return it (possibly converted).

        Raises `ToolArgumentError` (one problem, `argument` names it) for a bad value, and
        for `Resolves` `LookupFailed` when the lookup raises.
        """
        try:
            result = self._run(value, _identity, argument, None)
        except _Invalid as exc:
            raise ToolArgumentError(
                tool=tool or f"{type(self).__name__}.validate",
                problems=[exc.problem(argument, value)],
            ) from None
        return result

    def _run(
        self,
        value: Any,
        handler: Callable[[Any], Any],
        argument: str | None,
        ctx: _Ctx | None,
        target: Any = None,
    ) -> Any:
        if self.placeholders and isinstance(value, str):
            reason = placeholder_reason(value, argument)
            if reason is not None:
                raise _Invalid(reason, self.expected)
        if target is None:
            target = self.default_target
        return self._check(handler(self._prepare(value, target)), target, argument, ctx)

    def _prepare(self, value: Any, target: Any) -> Any:
        """Before the type's own validation: parsers (Amount, DateRange) convert here."""
        return value

    # -- pydantic ----------------------------------------------------------------------------

    def __get_pydantic_core_schema__(
        self, source_type: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        inner = handler(source_type)
        target = source_type
        placeholders = self.placeholders
        expected = self.expected
        cls = type(self)
        prepare = self._prepare if cls._prepare is not Validator._prepare else None
        check = self._check if cls._check is not Validator._check else None

        def validate(
            value: Any,
            nxt: core_schema.ValidatorFunctionWrapHandler,
            info: core_schema.ValidationInfo,
        ) -> Any:
            # Hot path: one call per validated argument; the steps of _run(), inlined.
            try:
                if placeholders and type(value) is str:
                    reason = placeholder_reason(value, info.field_name)
                    if reason is not None:
                        raise _Invalid(reason, expected)
                if prepare is not None:
                    value = prepare(value, target)
                value = nxt(value)
                if check is None:
                    return value
                context = info.context
                return check(
                    value, target, info.field_name, context if type(context) is _Ctx else None
                )
            except _Invalid as exc:
                raise _raise_pydantic(exc) from None

        return core_schema.with_info_wrap_validator_function(validate, inner)

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        js = handler(schema)
        target = handler.resolve_ref_schema(js) if "$ref" in js else js
        if self.description:
            previous = target.get("description")
            target["description"] = (
                f"{previous} {self.description}" if previous else self.description
            )
        self._json_extra(target)
        return js

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


# -- Resolves ----------------------------------------------------------------------------------

_NO_RECORDS: dict[Any, Any] = {}
_records: ContextVar[dict[Any, Any]] = ContextVar("agentguard_resolved", default=_NO_RECORDS)
_reuse_records: ContextVar[bool] = ContextVar("agentguard_reuse_resolved", default=False)
"""Set by an adapter around a tool call its argument guard already validated (the LangChain
middleware): the framework's own pydantic pass over the same signature then reuses the
records instead of running every lookup again (an async lookup could not run there at all)."""


def _record_key(value: Any) -> Any:
    try:
        hash(value)
    except TypeError:
        return (type(value), repr(value))
    return (type(value), value)


def _remember(pairs: Iterable[tuple[Any, Any]]) -> None:
    """Keep the records of this call for `resolved()` (copy on write: safe across tasks)."""
    records = dict(_records.get())
    for value, record in pairs:
        key = _record_key(value)
        records.pop(key, None)
        records[key] = record
    while len(records) > _MAX_RECORDS:
        del records[next(iter(records))]
    _records.set(records)


def resolved(value: Any) -> Any:
    """The record a `Resolves` lookup returned for `value` in the current tool call.

    Call it in the body of a tool whose argument carries `Resolves`, with the argument's
    value: `user = v.resolved(user_id)`. The record is the one the lookup returned while the
    arguments were validated (no second lookup). Raises `ConfigurationError` when no record
    was resolved for this value in this context (wrong value, or no `Resolves` on it).
    Cost: a scan of at most 64 recent records.
    """
    records = _records.get()
    key = _record_key(value)
    if key in records:
        return records[key]
    from ._redact import describe

    raise ConfigurationError(
        f"v.resolved({describe(value)}): no record was resolved for this value in this "
        f"context. Expected: the value of an argument annotated with v.Resolves(...), called "
        f"inside the tool body after @ag.tool_call validated it. Fix: pass the argument itself "
        f"(v.resolved(user_id)), and make sure the tool is decorated with @ag.tool_call."
    )


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


class Resolves(Validator):
    """The value must resolve to a real record through `lookup(value)`.

    `lookup` is sync or async and returns the record, or None when there is none (a rejected
    argument the model can correct). A lookup that *raises* is an infrastructure error, not
    the model's: `LookupFailed` is raised with the lookup's exception as `__cause__`, and the
    call is not counted as a correction round. In an `@ag.tool_call`, lookups run after the
    type checks of every argument (async lookups of one call run concurrently) and the record
    is available in the body through `v.resolved(value)`.

    A sync tool whose lookup is async: the lookup runs on a private event loop when no loop is
    running in this thread; inside a running loop it cannot be awaited from sync code, and
    `LookupFailed` says so (make the tool async, or pass a sync lookup).
    """

    def __init__(
        self,
        lookup: Callable[[Any], Any],
        *,
        what: str = "record",
        placeholders: bool = True,
    ) -> None:
        if not callable(lookup):
            raise ConfigurationError(
                f"v.Resolves(lookup=...) expects a callable lookup(value) -> record | None "
                f"(sync or async), got {type(lookup).__name__}."
            )
        self.lookup = lookup
        self.what = what
        self.placeholders = placeholders
        self.is_async = inspect.iscoroutinefunction(lookup) or inspect.iscoroutinefunction(
            getattr(lookup, "__call__", None)  # noqa: B004 - async callable objects
        )
        self.lookup_name = getattr(lookup, "__qualname__", None) or repr(lookup)
        self.expected = f"the exact {what} of an existing record (not a description of it)"
        self.description = (
            f"An existing {what}, copied exactly; it is looked up before the tool runs, and a "
            f"description such as 'the one mentioned above' is rejected."
        )

    def __repr__(self) -> str:
        return f"Resolves({self.lookup_name}, what={self.what!r})"

    def _not_found(self, value: Any) -> _Invalid:
        return _Invalid(
            f"matches no existing {self.what} (the lookup found nothing)", self.expected
        )

    def _check(self, value: Any, target: Any, argument: str | None, ctx: _Ctx | None) -> Any:
        if ctx is not None and ctx.defer:
            ctx.deferred.append((self, value, argument or "value"))
            return value
        if ctx is None and _reuse_records.get() and _record_key(value) in _records.get():
            return value
        record = self.call(value, argument or "value", ctx.tool if ctx is not None else None)
        if record is None:
            raise self._not_found(value)
        _remember(((value, record),))
        return value

    def _failed(self, exc: BaseException, argument: str, tool: str | None) -> LookupFailed:
        where = f"tool {tool!r}, argument {argument!r}" if tool else f"argument {argument!r}"
        hint = ""
        if isinstance(exc, LookupError):
            hint = (
                " If this exception means 'not found', make the lookup return None instead: "
                "then the model is asked to correct the value."
            )
        return LookupFailed(
            f"the lookup {self.lookup_name} of {self.what} ({where}) raised "
            f"{type(exc).__name__}: {exc}. This is an infrastructure error, not the model's: "
            f"the call did not run and no correction round was counted.{hint} Fix the lookup "
            f"or its backend; it must return the record, or None when there is none.",
            tool=tool,
            argument=argument,
            what=self.what,
            lookup=self.lookup_name,
        )

    def call(self, value: Any, argument: str = "value", tool: str | None = None) -> Any:
        """Run the lookup synchronously: the record, or None. Raises `LookupFailed`."""
        try:
            result = self.lookup(value)
        except Exception as exc:  # re-raised: the lookup's failure is infrastructure
            raise self._failed(exc, argument, tool) from exc
        if not inspect.isawaitable(result):
            return result
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            try:
                return asyncio.run(_await(result))
            except Exception as exc:  # re-raised with the cause attached
                raise self._failed(exc, argument, tool) from exc
        if inspect.iscoroutine(result):
            result.close()
        where = f"tool {tool!r}" if tool else "this validation"
        raise LookupFailed(
            f"the lookup {self.lookup_name} of {self.what} (argument {argument!r}) is async, "
            f"but {where} runs synchronously inside a running event loop, where it cannot be "
            f"awaited without blocking the loop. Fix: make the tool async (async def), "
            f"validate with `await` (an async @ag.tool_call), or give Resolves a sync lookup.",
            tool=tool,
            argument=argument,
            what=self.what,
            lookup=self.lookup_name,
        )

    async def acall(self, value: Any, argument: str = "value", tool: str | None = None) -> Any:
        """Run the lookup from async code: the record, or None. Raises `LookupFailed`."""
        try:
            result = self.lookup(value)
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:  # re-raised: the lookup's failure is infrastructure
            raise self._failed(exc, argument, tool) from exc
        return result

    async def avalidate(
        self, value: Any, *, argument: str = "value", tool: str | None = None
    ) -> Any:
        """`validate()` for async code: awaits an async lookup instead of running a loop."""
        try:
            checked = self._run(value, _identity, argument, _Ctx(None, tool, defer=True))
        except _Invalid as exc:
            raise ToolArgumentError(
                tool=tool or "Resolves.validate",
                problems=[exc.problem(argument, value)],
            ) from None
        record = await self.acall(checked, argument, tool)
        if record is None:
            missing = self._not_found(value)
            raise ToolArgumentError(
                tool=tool or "Resolves.validate",
                problems=[missing.problem(argument, value)],
            )
        _remember(((checked, record),))
        return checked


# -- Email -------------------------------------------------------------------------------------


class Email(Validator):
    """A real email address per `email-validator`; returns its normalized form.

    Deliverability (a DNS lookup of the domain) is off by default; `deliverability=True`
    turns it on (slower, needs the network). Display names (`Ann <ann@x.org>`) are rejected.
    """

    default_target = str

    def __init__(
        self,
        *,
        deliverability: bool = False,
        allow_smtputf8: bool = True,
        normalize: bool = True,
        placeholders: bool = True,
    ) -> None:
        from email_validator import EmailNotValidError, validate_email  # 70 ms: imported on use

        self._validate_email = validate_email
        self._not_valid = EmailNotValidError
        self.deliverability = deliverability
        self.allow_smtputf8 = allow_smtputf8
        self.normalize = normalize
        self.placeholders = placeholders
        self.expected = "a complete email address such as name@example.org"
        self.description = "A complete email address (name@domain), not a description of it."

    def __repr__(self) -> str:
        return f"Email(deliverability={self.deliverability})"

    def _json_extra(self, schema: dict[str, Any]) -> None:
        schema.setdefault("format", "email")

    def _check(self, value: Any, target: Any, argument: str | None, ctx: _Ctx | None) -> Any:
        if not isinstance(value, str):
            raise _Invalid(f"is a {type(value).__name__}, not text", self.expected)
        try:
            result = self._validate_email(
                value,
                check_deliverability=self.deliverability,
                allow_smtputf8=self.allow_smtputf8,
            )
        except self._not_valid as exc:
            detail = str(exc).rstrip(".")
            raise _Invalid(f"is not a valid email address ({detail})", self.expected) from None
        return result.normalized if self.normalize else value


# -- Amount ------------------------------------------------------------------------------------

_AMOUNT = re.compile(
    r"(?P<sign>[+-])?\s?(?P<cur>[$€£¥])?\s?"
    r"(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
)
_SIMPLE_AMOUNT = re.compile(r"-?\d{1,30}(?:\.\d{1,30})?")
_Bound: TypeAlias = "int | float | Decimal | str | None"


def _to_decimal_bound(name: str, value: _Bound) -> Decimal | None:
    if value is None:
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        number = Decimal("NaN")
    if isinstance(value, bool) or not number.is_finite():
        raise ConfigurationError(f"v.Amount({name}=...) must be a finite number, got {value!r}.")
    return number


def _plain(number: Decimal) -> str:
    return (
        format(number.normalize(), "f")
        if number == number.to_integral_value()
        else format(number, "f")
    )


class Amount(Validator):
    """A number (from a number or a numeric string), with optional bounds and decimal places.

    Accepted strings: `125`, `125.50`, `-3`, `1,250.00` (well-formed thousands separators),
    with an optional leading currency symbol (`$125.50`). Rejected: words (`"the same amount
    as last time"`), malformed separators (`"$1,2"`), NaN, infinities, booleans, exponents
    in strings. `min`/`max` are inclusive; `places` is the maximum number of decimal places
    (never silently rounded). Converts to the annotated type (`Decimal`, `float`, `int`, `str`).
    """

    default_target = Decimal

    def __init__(
        self,
        *,
        min: _Bound = None,
        max: _Bound = None,
        places: int | None = None,
        placeholders: bool = True,
    ) -> None:
        self.min = _to_decimal_bound("min", min)
        self.max = _to_decimal_bound("max", max)
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ConfigurationError(f"v.Amount(min={min!r}, max={max!r}): min is above max.")
        if places is not None and (
            isinstance(places, bool) or not isinstance(places, int) or places < 0
        ):
            raise ConfigurationError(f"v.Amount(places=...) must be an int >= 0, got {places!r}.")
        self.places = places
        self.placeholders = placeholders
        expected = "a plain number such as 125.50"
        if self.min is not None and self.max is not None:
            expected += f" between {_plain(self.min)} and {_plain(self.max)}"
        elif self.min is not None:
            expected += f" of at least {_plain(self.min)}"
        elif self.max is not None:
            expected += f" of at most {_plain(self.max)}"
        if places is not None:
            expected += f" with at most {places} decimal place(s)"
        self.expected = expected
        self.description = f"An amount: {expected}."

    def __repr__(self) -> str:
        return f"Amount(min={self.min}, max={self.max}, places={self.places})"

    def _json_extra(self, schema: dict[str, Any]) -> None:
        if self.min is not None:
            schema.setdefault("minimum", float(self.min))
        if self.max is not None:
            schema.setdefault("maximum", float(self.max))

    def _parse(self, value: Any) -> Decimal:
        if isinstance(value, bool):
            raise _Invalid("is a boolean, not an amount", self.expected)
        if isinstance(value, int):
            return Decimal(value)
        if isinstance(value, float):
            if value != value or value in (float("inf"), float("-inf")):
                raise _Invalid("is not a finite number", self.expected)
            return Decimal(repr(value))
        if isinstance(value, Decimal):
            if not value.is_finite():
                raise _Invalid("is not a finite number", self.expected)
            return value
        if not isinstance(value, str):
            raise _Invalid(f"is a {type(value).__name__}, not a number", self.expected)
        if _SIMPLE_AMOUNT.fullmatch(value):
            return Decimal(value)
        text = value.strip()
        if len(text) > 64:
            raise _Invalid("is too long to be an amount", self.expected)
        match = _AMOUNT.fullmatch(text)
        if match is None:
            lowered = text.casefold()
            if lowered.lstrip("+-") in ("nan", "inf", "infinity", "snan"):
                reason = "is not a finite number"
            elif any(ch.isdigit() for ch in text) and ("," in text or "." in text):
                reason = "has malformed decimal or thousands separators"
            elif any(ch.isdigit() for ch in text):
                reason = "is not a plain number"
            else:
                reason = "is not a number"
            raise _Invalid(reason, self.expected)
        number = Decimal(match.group("num").replace(",", ""))
        return -number if match.group("sign") == "-" else number

    def _prepare(self, value: Any, target: Any) -> Any:
        number = self._parse(value)
        if self.min is not None and number < self.min:
            raise _Invalid(f"is below the minimum of {_plain(self.min)}", self.expected)
        if self.max is not None and number > self.max:
            raise _Invalid(f"is above the maximum of {_plain(self.max)}", self.expected)
        if self.places is not None:
            exponent = number.as_tuple().exponent
            used = -exponent if isinstance(exponent, int) and exponent < 0 else 0
            if used > self.places:
                raise _Invalid(
                    f"has {used} decimal places (at most {self.places} allowed)", self.expected
                )
        if target is int:
            if number != number.to_integral_value():
                raise _Invalid("is not a whole number", self.expected)
            return int(number)
        if target is float:
            result = float(number)
            if result in (float("inf"), float("-inf")):
                raise _Invalid("is too large", self.expected)
            return result
        if target is str:
            return format(number, "f")
        return number


# -- DateRange ---------------------------------------------------------------------------------

_NUMERIC_DATE = re.compile(r"(\d{1,2})[/.\-](\d{1,2})[/.\-](\d{2,4})\b")
_DEFAULT_A = datetime(2001, 2, 3)
_DEFAULT_B = datetime(2002, 4, 5)
DateBound: TypeAlias = "date | Literal['today'] | None"


def _today() -> date:
    return _config.get_config().clock.now().date()


def _check_bound(name: str, value: Any) -> None:
    if value is None or value == "today" or isinstance(value, date):
        return
    raise ConfigurationError(
        f"v.DateRange({name}=...) must be a date, a datetime, 'today' or None; got {value!r}."
    )


def _bound_text(value: date | str | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date().isoformat()
    return value.isoformat() if isinstance(value, date) else value


class DateRange(Validator):
    """A real date (or datetime) in a plausible range, parsed with `python-dateutil`.

    ISO 8601 is read directly; other formats through dateutil, with three refusals: a format
    whose day/month order is ambiguous (`03/04/2026`) unless `dayfirst=` picks one; an
    incomplete date (`March 5`, no year: dateutil would silently fill it in); and a year
    outside `[min_year, max_year]` (default 1900-2100: year 3024 is not a due date).
    Bounds are inclusive and checked at day resolution: `not_before` / `not_after` take a
    date or `"today"`; `within_days=N` keeps the date within N days of today. "today" is read
    from the injectable clock (`configure(clock=...)`), in UTC.
    """

    default_target = date

    def __init__(
        self,
        *,
        not_before: DateBound = None,
        not_after: DateBound = None,
        within_days: int | None = None,
        dayfirst: bool | None = None,
        min_year: int = 1900,
        max_year: int = 2100,
        placeholders: bool = True,
    ) -> None:
        _check_bound("not_before", not_before)
        _check_bound("not_after", not_after)
        if within_days is not None and (
            isinstance(within_days, bool) or not isinstance(within_days, int) or within_days < 0
        ):
            raise ConfigurationError(
                f"v.DateRange(within_days=...) must be an int >= 0, got {within_days!r}."
            )
        if not 1 <= min_year <= max_year <= 9999:
            raise ConfigurationError(
                f"v.DateRange(min_year={min_year}, max_year={max_year}) must satisfy "
                f"1 <= min_year <= max_year <= 9999."
            )
        self.not_before = not_before
        self.not_after = not_after
        self.within_days = within_days
        self.dayfirst = dayfirst
        self.min_year = min_year
        self.max_year = max_year
        self.placeholders = placeholders
        parts = []
        if not_before is not None:
            parts.append(f"not before {_bound_text(not_before)}")
        if not_after is not None:
            parts.append(f"not after {_bound_text(not_after)}")
        if within_days is not None:
            parts.append(f"within {within_days} days of today")
        self._range_text = ", ".join(parts)
        self._relative = within_days is not None or "today" in (not_before, not_after)
        self._fixed = self._compute_limits(None)
        self._cache: tuple[date | None, date | None, date | None] = (None, None, None)
        self.expected = "a date as YYYY-MM-DD" + (f" ({self._range_text})" if parts else "")
        self.description = (
            f"A date in ISO format (YYYY-MM-DD){', ' + self._range_text if parts else ''}."
        )

    def __repr__(self) -> str:
        return f"DateRange({self._range_text or 'any plausible date'})"

    def _json_extra(self, schema: dict[str, Any]) -> None:
        if schema.get("type") == "string" and "format" not in schema:
            schema["format"] = "date"

    def _limits(self) -> tuple[date | None, date | None]:
        if not self._relative:
            return self._fixed
        today = _today()
        cached = self._cache
        if cached[0] == today:
            return cached[1], cached[2]
        lo, hi = self._compute_limits(today)
        self._cache = (today, lo, hi)
        return lo, hi

    def _compute_limits(self, today: date | None) -> tuple[date | None, date | None]:
        lo = _as_day(self.not_before, today)
        hi = _as_day(self.not_after, today)
        if self.within_days is not None and today is not None:
            span = timedelta(days=self.within_days)
            lo = max(lo, today - span) if lo is not None else today - span
            hi = min(hi, today + span) if hi is not None else today + span
        return lo, hi

    def _parse(self, value: Any) -> date:
        if isinstance(value, date):
            return value
        if not isinstance(value, str):
            raise _Invalid(f"is a {type(value).__name__}, not a date", self.expected)
        text = value.strip()
        if len(text) > 64:
            raise _Invalid("is too long to be a date", self.expected)
        try:
            return date.fromisoformat(text)
        except ValueError:
            pass
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            pass
        numeric = _NUMERIC_DATE.match(text)
        if numeric is not None and self.dayfirst is None:
            a, b = int(numeric.group(1)), int(numeric.group(2))
            if a != b and 1 <= a <= 12 and 1 <= b <= 12:
                raise _Invalid(
                    f"is ambiguous: it could be day {a} of month {b} or day {b} of month {a}",
                    self.expected.replace("a date as YYYY-MM-DD", "an ISO date YYYY-MM-DD"),
                )
        from dateutil import parser

        kwargs: dict[str, Any] = {}
        if self.dayfirst is not None:
            kwargs["dayfirst"] = self.dayfirst
        elif numeric is not None:
            kwargs["dayfirst"] = int(numeric.group(1)) > 12
        try:
            first: datetime = parser.parse(text, default=_DEFAULT_A, **kwargs)
            second: datetime = parser.parse(text, default=_DEFAULT_B, **kwargs)
        except (ValueError, OverflowError):
            raise _Invalid("is not a date", self.expected) from None
        if first.date() != second.date():
            raise _Invalid("is incomplete: it lacks a year, a month or a day", self.expected)
        if first.tzinfo is None and first.time() == time(0):
            return first.date()
        return first

    def _prepare(self, value: Any, target: Any) -> Any:
        parsed = self._parse(value)
        day = parsed.date() if isinstance(parsed, datetime) else parsed
        if not self.min_year <= day.year <= self.max_year:
            raise _Invalid(
                f"has a year outside the plausible range {self.min_year}-{self.max_year}",
                self.expected,
            )
        lo, hi = self._limits()
        if lo is not None and day < lo:
            raise _Invalid(
                f"is before the earliest allowed date {lo.isoformat()}",
                _range_expected(lo, hi),
            )
        if hi is not None and day > hi:
            raise _Invalid(
                f"is after the latest allowed date {hi.isoformat()}",
                _range_expected(lo, hi),
            )
        if target is datetime:
            if isinstance(parsed, datetime):
                return parsed
            return datetime(parsed.year, parsed.month, parsed.day)
        if target is date:
            return day
        if target is str:
            return parsed.isoformat()
        return parsed


def _as_day(bound: date | str | None, today: date | None) -> date | None:
    if bound is None:
        return None
    if bound == "today":
        return today
    if isinstance(bound, datetime):
        return bound.date()
    return bound if isinstance(bound, date) else None


def _range_expected(lo: date | None, hi: date | None) -> str:
    if lo is not None and hi is not None:
        return f"a date as YYYY-MM-DD between {lo.isoformat()} and {hi.isoformat()}"
    if lo is not None:
        return f"a date as YYYY-MM-DD on or after {lo.isoformat()}"
    return f"a date as YYYY-MM-DD on or before {hi.isoformat() if hi else '?'}"


# -- Verbatim ----------------------------------------------------------------------------------

_MAX_LEAVES = 5000
_TOKEN = re.compile(r"[A-Za-z0-9#][\w\-./@#:+]{2,80}[A-Za-z0-9]")


def _leaves(obj: Any, out: list[str], depth: int = 0) -> None:
    if len(out) >= _MAX_LEAVES:
        return
    if isinstance(obj, str):
        out.append(obj)
        return
    if obj is None or isinstance(obj, bool):
        return
    if isinstance(obj, (int, float, Decimal)):
        out.append(str(obj))
        return
    if depth >= 6:
        return
    if isinstance(obj, dict):
        for item in obj.values():
            _leaves(item, out, depth + 1)
        return
    if isinstance(obj, (list, tuple, set, frozenset)):
        for item in obj:
            _leaves(item, out, depth + 1)
        return
    fields = getattr(obj, "__dict__", None)
    if isinstance(fields, dict):
        _leaves(fields, out, depth + 1)


def _iter_candidates(leaves: list[str]) -> Iterator[str]:
    for leaf in reversed(leaves):
        if len(leaf) <= 80:
            yield leaf
        else:
            yield from _TOKEN.findall(leaf[:20_000])


class Verbatim(Validator):
    """The value must appear literally in an earlier output of tool `from_tool` in this run.

    Every run (the root `BudgetPool`) keeps the last 50 outputs of each tool some `Verbatim`
    names (`pool.provenance`). The value matches when it equals a string or number found in
    one of them, or appears in such a string as a whole token. A paraphrase is rejected and
    the message quotes the closest strings found in the outputs (difflib), so the model can
    copy the right one. Outside a run (no pool) the check cannot be made: `NoActivePool`.
    """

    def __init__(self, *, from_tool: str, placeholders: bool = True) -> None:
        if not isinstance(from_tool, str) or not from_tool:
            raise ConfigurationError(
                f"v.Verbatim(from_tool=...) needs the name of the tool whose outputs hold the "
                f"value, got {from_tool!r}."
            )
        from .calls import _provenance_sources

        _provenance_sources.add(from_tool)
        self.from_tool = from_tool
        self.placeholders = placeholders
        self.expected = (
            f"the exact value copied character for character from an earlier result of tool "
            f"`{from_tool}`"
        )
        self.description = (
            f"Copy this value exactly from an earlier result of the tool `{from_tool}`; "
            f"paraphrases and summaries are rejected."
        )

    def __repr__(self) -> str:
        return f"Verbatim(from_tool={self.from_tool!r})"

    def _check(self, value: Any, target: Any, argument: str | None, ctx: _Ctx | None) -> Any:
        pool = ctx.pool if ctx is not None else None
        if pool is None:
            from .budget import current_pool

            pool = current_pool(required=False)
            if pool is None:
                from .errors import NoActivePool

                raise NoActivePool(kind="v.Verbatim check of", route=None, function=self.from_tool)
        needle = (value if isinstance(value, str) else str(value)).strip()
        outputs = tuple(pool.provenance.get(self.from_tool, ()))
        if not outputs:
            raise _Invalid(
                f"tool `{self.from_tool}` has not returned anything in this run yet, so the "
                f"value cannot have been copied from it",
                f"a value copied from a result of `{self.from_tool}`: call `{self.from_tool}` "
                f"first, then copy the exact value from its result",
            )
        leaves: list[str] = []
        for output in reversed(outputs):
            _leaves(output, leaves)
        if needle in leaves:
            return value
        if len(needle) >= 2:
            pattern = re.compile(r"(?<!\w)" + re.escape(needle) + r"(?!\w)")
            for leaf in leaves:
                if len(leaf) > len(needle) and needle in leaf and pattern.search(leaf):
                    return value
        seen: dict[str, None] = {}
        for candidate in _iter_candidates(leaves):
            if candidate.strip() and candidate not in seen:
                seen[candidate] = None
                if len(seen) >= 500:
                    break
        choices = list(seen)
        close = difflib.get_close_matches(needle, choices, n=5, cutoff=0.3)
        for choice in choices:
            if len(close) >= 5:
                break
            if choice not in close and len(choice) <= 40:
                close.append(choice)
        raise _Invalid(
            f"does not appear in any earlier result of tool `{self.from_tool}` in this run "
            f"(a paraphrase or a made-up value is not accepted)",
            self.expected,
            tuple(close),
        )


# -- NotPlaceholder ----------------------------------------------------------------------------


class NotPlaceholder(Validator):
    """Rejects placeholders and references sent instead of a value (see `placeholder_reason`).

    `"the user mentioned in the conversation"`, `"his email"`, `"same as before"`,
    `"<user_id>"`, `"{{id}}"`, `"TBD"`, `"N/A"`, `"unknown"`, empty or whitespace. Only
    `str` values are checked; other types pass through. `extra` adds exact (case-insensitive)
    strings to reject. Every other validator applies this check to `str` input by default.
    """

    placeholders = True

    def __init__(self, *, extra: Iterable[str] = ()) -> None:
        self.extra = frozenset(e.strip().casefold() for e in extra)
        self.expected = "the actual value itself, not a placeholder or a description of it"
        self.description = (
            "The actual value; placeholders (TBD, N/A, <id>) and references (such as 'same as "
            "before' or 'the user mentioned above') are rejected."
        )

    def _check(self, value: Any, target: Any, argument: str | None, ctx: _Ctx | None) -> Any:
        if self.extra and isinstance(value, str) and value.strip().casefold() in self.extra:
            raise _Invalid("is a placeholder, not a value", self.expected)
        return value
