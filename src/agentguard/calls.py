"""`@llm_call` and `@tool_call`: the innermost call sites, charged before they run.

Both decorators work on sync and async functions and keep the signature (`ParamSpec`).

- `@tool_call` validates the arguments (semantic validators, see `agentguard.validators`),
  applies the loop guard, charges `tool_calls=1` to the active pool and all its ancestors,
  then runs the body and writes one ledger row.
- `@llm_call` charges `llm_calls=1` and reserves tokens (and cost, when a pool limits it)
  before the call, then settles the actual usage read from the response, or releases the
  reservation when the call raised. Unreadable usage is never counted as zero: the estimate
  stays charged, the ledger row is flagged `usage_unknown` and a WARNING is logged.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, TypeVar, overload

from typing_extensions import ParamSpec

from . import _config, telemetry
from ._argcheck import compile_arguments
from .budget import (
    _LLM_CHARGE,
    _TOOL_CHARGE,
    BudgetPool,
    Reservation,
    _current,
    _resolve,
)
from .errors import ConfigurationError, UnknownPrice
from .telemetry import _trace_globals
from .telemetry import tracing_enabled as _tracing
from .usage import Usage, UsageExtractor, _cached_linear_price, read_usage, resolve_price

__all__ = ["llm_call", "tool_call", "record_usage", "CallInfo", "current_call"]

P = ParamSpec("P")
R = TypeVar("R")

logger = logging.getLogger("agentguard")
_UNSET: Any = object()

_get_pool = _current.get

# Hot path: one dict read says "no tracer provider was ever set" before the full check.
_TP = "_TRACER_PROVIDER"
_tp_get = _trace_globals.get
_NO_TP_GLOBAL = _TP not in _trace_globals  # an API without the global: always ask
_call_listeners: list[Callable[[CallInfo], None]] = []
"""Called after each guarded call finishes (instrumentation; costs every tool call)."""
_llm_listeners: list[Callable[[CallInfo], None]] = []
"""Called after each LLM call's usage is settled (`_finish_llm`: the decorator, `ag.instrument`
and the LangChain adapter): the store's cost-outlier watch. Tool calls pay nothing for it."""

_tool_names: set[str] = set()
"""Names of every `@tool_call` function (its tool name and its `__name__`): adapters that
only see a tool's name (LangChain callbacks) leave these to the decorator, which charges them."""

class ToolClaim:
    """An adapter charged one call of `tool` before its body (the LangChain callback handler):
    the first `@tool_call` wrapper of that name inside the body takes the claim and skips its
    own charge, so the call is charged once. Everything else (validation, row, span) stays."""

    __slots__ = ("taken", "tool")

    def __init__(self, tool: str) -> None:
        self.tool = tool
        self.taken = False


_tool_claim: ContextVar[ToolClaim | None] = ContextVar("agentguard_tool_claim", default=None)
_get_claim = _tool_claim.get

_provenance_sources: set[str] = set()
"""Tool names whose outputs some `Verbatim` validator may need; only these are recorded."""
PROVENANCE_DEPTH = 50


@dataclass(slots=True)
class CallInfo:
    """The state of one guarded call in flight (for adapters, instrumentation, listeners)."""

    kind: str
    name: str
    route: str | None
    pool: BudgetPool
    reservation: Reservation | None = None
    model: str | None = None
    provider: str | None = None
    usage: Usage | None = None
    cost_usd: float | None = None
    duration: float | None = None
    outcome: str = "running"
    flags: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


_active_call: ContextVar[CallInfo | None] = ContextVar("agentguard_call", default=None)


def current_call() -> CallInfo | None:
    """The guarded LLM call running in this context, if any (used to avoid double charges)."""
    return _active_call.get()


def record_usage(
    response: Any = None,
    *,
    input_tokens: int | None = None,
    output_tokens: int | None = None,
    model: str | None = None,
) -> Usage:
    """Report the usage of the current `@llm_call` from inside its body.

    For functions that return something other than the provider's response (a parsed dict,
    a string): pass the raw response, or the token counts. Raises `ConfigurationError`
    outside an `@llm_call` (the usage would otherwise be silently lost).
    """
    info = _active_call.get()
    if info is None or info.kind != "llm":
        raise ConfigurationError(
            "ag.record_usage() was called outside an @ag.llm_call function, so there is no "
            "call to attribute the usage to. Fix: call it inside the decorated function's "
            "body, or decorate the function that makes the provider call."
        )
    if response is not None:
        usage = read_usage(response, _config.get_config().usage_extractors)
        if usage is None:
            raise ConfigurationError(
                f"ag.record_usage(): no usage found in a {type(response).__name__} (expected "
                f"an OpenAI/Anthropic response, a LangChain AIMessage, or a dict with a "
                f"'usage' block). Fix: pass input_tokens= and output_tokens= instead."
            )
    else:
        if input_tokens is None or output_tokens is None:
            raise ConfigurationError(
                "ag.record_usage() needs a response or both input_tokens= and output_tokens=."
            )
        usage = Usage(input_tokens=input_tokens, output_tokens=output_tokens, model=model)
    if model is not None and usage.model is None:
        usage = Usage(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            total_tokens=usage.total_tokens,
            model=model,
            provider=usage.provider,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
        )
    info.usage = usage
    return usage


# -- helpers ----------------------------------------------------------------------------------


_ESTIMATE_ITEMS = 256
"""List items the input estimate reads; a longer list is sampled evenly and scaled."""
_SCALARS = frozenset({int, float, bool, type(None)})


def _estimate_text_tokens(value: Any, depth: int = 0) -> int:
    """Rough input-token estimate (4 characters per token) over strings, messages, dicts.

    Cost: bounded. At most `_ESTIMATE_ITEMS` items of any list are read (a longer one is
    sampled evenly and scaled up) and nothing deeper than 5 levels; exact-type checks for
    the JSON-like common case (~60 ns per item).
    """
    kind = type(value)
    if kind is str:
        return len(value) // 4 + 1
    if kind in _SCALARS:
        return 0  # not text (and probing them for `.content` costs an exception each)
    items: Any
    if kind is dict:
        items = value.values()
    elif kind is list or kind is tuple:
        items = value
    elif isinstance(value, str):
        return len(value) // 4 + 1
    elif isinstance(value, Mapping):
        items = value.values()
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        if depth > 4:
            return 0
        content = getattr(value, "content", None)
        if isinstance(content, (str, list)):
            return _estimate_text_tokens(content, depth + 1)
        return 0
    if depth > 4:
        return 0
    scale = 0
    if kind is not dict and len(items) > _ESTIMATE_ITEMS:
        scale = len(items)
        step = scale / _ESTIMATE_ITEMS
        items = [items[int(i * step)] for i in range(_ESTIMATE_ITEMS)]
    total = 0
    depth += 1
    for item in items:
        kind = type(item)
        if kind is str:
            total += len(item) // 4 + 1
        elif kind not in _SCALARS:
            total += _estimate_text_tokens(item, depth)
    if scale:
        return total * scale // _ESTIMATE_ITEMS
    return total


def _estimate_body_tokens(body: dict[str, Any]) -> int:
    """`_estimate_text_tokens(body)` for a JSON request body (a dict), same result.

    The two levels every chat body has (the body's values, then each message's) are read
    in this one frame; anything deeper or unusual goes to `_estimate_text_tokens` at the
    depth it would have been reached at. A test checks both agree on generated bodies.
    """
    total = 0
    for value in body.values():
        kind = type(value)
        if kind is str:
            total += len(value) // 4 + 1
        elif kind is list and len(value) <= _ESTIMATE_ITEMS:
            for item in value:
                if type(item) is dict:
                    for field in item.values():
                        if type(field) is str:
                            total += len(field) // 4 + 1
                        elif type(field) not in _SCALARS:
                            total += _estimate_text_tokens(field, 3)
                elif type(item) is str:
                    total += len(item) // 4 + 1
                elif type(item) not in _SCALARS:
                    total += _estimate_text_tokens(item, 2)
        elif kind not in _SCALARS:
            total += _estimate_text_tokens(value, 1)
    return total


_warned_routes: set[tuple[str | None, str]] = set()


def _warn_once(route: str | None, what: str, message: str) -> None:
    key = (route, what)
    if key in _warned_routes:
        logger.debug(message)
        return
    _warned_routes.add(key)
    logger.warning(message + " (logged once per route; every ledger row is flagged)")


def _is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn)


# -- @tool_call --------------------------------------------------------------------------------


@overload
def tool_call(fn: Callable[P, R], /) -> Callable[P, R]: ...
@overload
def tool_call(
    *,
    route: str | None = None,
    name: str | None = None,
    loop_limit: int | None = ...,
    max_corrections: int | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...
def tool_call(
    fn: Callable[P, R] | None = None,
    /,
    *,
    route: str | None = None,
    name: str | None = None,
    loop_limit: int | None = _UNSET,
    max_corrections: int | None = None,
) -> Any:
    """Guard a tool: validate its arguments, then charge `tool_calls=1` before it runs.

    Args:
        route: the route name used in history, metrics and reports (default: the tool name).
        name: the tool's name as the model knows it (default: the function's name); guard
            ids are `args:<name>` and `args:<name>.<argument>`.
        loop_limit: identical calls (same arguments) allowed per run before `LoopDetected`;
            None for a polling tool; default: the pool's setting (3).
        max_corrections: rejected argument rounds allowed per run before the next rejection
            raises `CorrectionsExhausted` (default 3 when the signature has validators).

    Raises `NoActivePool`, `BudgetExceeded` / `LoopDetected`, `ToolArgumentError`,
    `CorrectionsExhausted`; the body's own exceptions pass through unchanged.
    """

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        tool = name or func.__name__
        rte = route or tool
        fixed_loop = loop_limit is not _UNSET
        guard = compile_arguments(func, tool=tool, route=rte, max_corrections=max_corrections)
        meta = {"kind": "tool", "name": tool, "route": rte, "max_corrections": max_corrections}
        names = frozenset((tool, func.__name__))

        def precharged() -> bool:
            claim = _get_claim()
            if claim is None or claim.taken or claim.tool not in names:
                return False
            claim.taken = True
            return True
        _tool_names.update((tool, func.__name__))

        def after(pool: BudgetPool, result: Any) -> None:
            if tool in _provenance_sources:
                _record_provenance(pool, tool, result)
            if _call_listeners:
                _notify(CallInfo("tool", tool, rte, pool, outcome="ok"))

        def failed(pool: BudgetPool, exc: BaseException, t0: float) -> None:
            duration = perf_counter() - t0
            pool._ledger.append(
                (
                    t0,
                    pool,
                    rte,
                    "tool",
                    _TOOL_CHARGE,
                    "error",
                    duration,
                    (),
                    {"error.type": type(exc).__name__},
                )
            )
            if _call_listeners:
                _notify(CallInfo("tool", tool, rte, pool, duration=duration, outcome="error"))

        if _is_async(func):
            afunc: Callable[..., Awaitable[Any]] = func  # type: ignore[assignment]

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                pool = _get_pool() or _resolve("tool", rte, tool)
                if guard is not None:
                    args, kwargs = await guard.acheck(pool, args, kwargs)
                if _get_claim() is None or not precharged():
                    if pool._remote:  # a Redis-backed pool: await the asyncio client
                        from ._remote import aremote_tool

                        await aremote_tool(
                            pool,
                            tool,
                            rte,
                            args,
                            kwargs,
                            loop_limit if fixed_loop else pool._loop_limit,
                        )
                    else:
                        pool._charge_tool(
                            tool, rte, args, kwargs, loop_limit if fixed_loop else pool._loop_limit
                        )
                span = (
                    _tool_span(tool, rte, pool)
                    if (_NO_TP_GLOBAL or _tp_get(_TP) is not None) and _tracing()
                    else None
                )
                t0 = perf_counter()
                try:
                    result = await afunc(*args, **kwargs)
                except BaseException as exc:
                    failed(pool, exc, t0)
                    _end_span(span, exc)
                    raise
                pool._ledger.append(
                    (t0, pool, rte, "tool", _TOOL_CHARGE, "ok", perf_counter() - t0, (), None)
                )
                if span is not None:
                    span.end()
                if _provenance_sources or _call_listeners:
                    after(pool, result)
                return result

            async_wrapper.__agentguard__ = meta  # type: ignore[attr-defined,unused-ignore]
            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            pool = _get_pool() or _resolve("tool", rte, tool)
            if guard is not None:
                args, kwargs = guard.check(pool, args, kwargs)
            if _get_claim() is None or not precharged():
                pool._charge_tool(
                    tool, rte, args, kwargs, loop_limit if fixed_loop else pool._loop_limit
                )
            span = (
                _tool_span(tool, rte, pool)
                if (_NO_TP_GLOBAL or _tp_get(_TP) is not None) and _tracing()
                else None
            )
            t0 = perf_counter()
            try:
                result = func(*args, **kwargs)
            except BaseException as exc:
                failed(pool, exc, t0)
                _end_span(span, exc)
                raise
            pool._ledger.append(
                (t0, pool, rte, "tool", _TOOL_CHARGE, "ok", perf_counter() - t0, (), None)
            )
            if span is not None:
                span.end()
            if _provenance_sources or _call_listeners:
                after(pool, result)
            return result

        wrapper.__agentguard__ = meta  # type: ignore[attr-defined]
        return wrapper

    if fn is not None:
        return decorate(fn)
    return decorate


def _record_provenance(pool: BudgetPool, tool: str, result: Any) -> None:
    from collections import deque

    store = pool.provenance
    outputs = store.get(tool)
    if outputs is None:
        outputs = store.setdefault(tool, deque(maxlen=PROVENANCE_DEPTH))
    outputs.append(result)


def _notify(info: CallInfo) -> None:
    for listener in list(_call_listeners):
        listener(info)


def _notify_llm(info: CallInfo) -> None:
    for listener in list(_llm_listeners):
        listener(info)


def _tool_span(tool: str, route: str, pool: BudgetPool, start_time: int | None = None) -> Any:
    tracer = telemetry.get_tracer()
    span = tracer.start_span(
        telemetry.SPAN_EXECUTE_TOOL.format(tool=tool),
        attributes={
            telemetry.ATTR.GEN_AI_OPERATION_NAME: "execute_tool",
            telemetry.ATTR.GEN_AI_TOOL_NAME: tool,
            telemetry.ATTR.ROUTE: route,
            telemetry.ATTR.POOL: pool.name,
            telemetry.ATTR.RUN_ID: pool.run_id,
        },
        start_time=start_time,
    )
    return span


def _end_span(span: Any, exc: BaseException | None) -> None:
    if span is None:
        return
    if exc is not None:
        from opentelemetry.trace import Status, StatusCode

        span.set_attribute(telemetry.ATTR.ERROR_TYPE, type(exc).__qualname__)
        span.set_status(Status(StatusCode.ERROR, str(exc)[:200]))
    span.end()


# -- @llm_call ---------------------------------------------------------------------------------


_MAX_TOKEN_KWARGS = ("max_tokens", "max_output_tokens", "max_completion_tokens")


@dataclass(frozen=True)
class _LLMSettings:
    name: str
    route: str
    model: str | None
    provider: str | None
    max_tokens: int | None
    input_tokens: int | None
    usage: UsageExtractor | None


def _plan(
    s: _LLMSettings, pool: BudgetPool, kwargs: Mapping[str, Any], args: tuple[Any, ...]
) -> tuple[dict[str, float], str | None, Usage]:
    """The reservation for one LLM call: tokens (and cost when a pool limits it), the
    model, and the estimate `Usage` (charged when the call's usage is unreadable)."""
    cfg = _config._config
    rs = cfg.routes.get(s.route) if cfg.routes else None
    out = None
    for key in _MAX_TOKEN_KWARGS:
        value = kwargs.get(key)
        if isinstance(value, int) and value > 0:
            out = value
            break
    if out is None:
        if s.max_tokens is not None:  # 0 is meaningful: an embeddings call has no output
            out = s.max_tokens
        else:
            out = (rs.max_tokens if rs else None) or cfg.default_max_tokens
    inp = s.input_tokens or (rs.input_tokens if rs else None)
    if inp is None:
        inp = (_estimate_text_tokens(args) if args else 0) + (
            _estimate_body_tokens(kwargs) if type(kwargs) is dict else _estimate_text_tokens(kwargs)
        )
    model = kwargs.get("model")
    if type(model) is not str:
        model = None
    model = model or s.model or (rs.model if rs else None)
    reserve: dict[str, float] = {
        "input_tokens": float(inp),
        "output_tokens": float(out),
        "total_tokens": float(inp + out),
    }
    provider = s.provider or (rs.provider if rs else None)
    estimate = _reserve_cost(s, pool, reserve, model, provider)
    if estimate is None:
        estimate = Usage(inp, out, None, model, provider)
    return reserve, model, estimate


def _reserve_cost(
    s: _LLMSettings,
    pool: BudgetPool,
    reserve: dict[str, float],
    model: str | None,
    provider: str | None,
) -> Usage | None:
    """When a pool of the chain limits cost: add the estimate's price to `reserve` (raises
    `UnknownPrice` when nothing knows the model) and return the estimate `Usage` when one
    was built to price it (None: no cost limit, or priced from genai-prices' cached linear
    price without one; the caller builds it if it needs it)."""
    for p in pool._chain:  # a loop, not any(<genexpr>): no generator per call
        if "cost_usd" in p.limits:
            break
    else:
        return None
    inp = int(reserve["input_tokens"])
    out = int(reserve["output_tokens"])
    cfg = _config._config
    if cfg.price is None and model is not None:
        cost = _cached_linear_price(model, provider, inp, out)  # = resolve_price's answer
        if cost is not None:
            reserve["cost_usd"] = cost
            return None
    estimate = Usage(inp, out, None, model, provider)
    cost = resolve_price(model, estimate, cfg.price, cfg.fallback_price)
    if cost is None:
        raise UnknownPrice(
            f"LLM call {s.name!r} (route {s.route!r}) was refused before it started: pool "
            f"{p.name!r} limits cost_usd, and the price of model {model!r} is unknown "
            f"(an unknown cost is never free). Fix: pass model= to @ag.llm_call or the "
            f"call, install agentguard[prices] (genai-prices), set ag.configure(price=...), "
            f"or ag.configure(fallback_price=ag.Price(input_per_mtok=..., "
            f"output_per_mtok=...)).",
            model=model,
            route=s.route,
        )
    reserve["cost_usd"] = cost
    return estimate


_FIX_DECORATED = (
    "Fix: return the provider's response, call ag.record_usage(...) in the body, or pass "
    "usage=<extractor> to @ag.llm_call"
)


def _finish_llm(
    s: _LLMSettings,
    info: CallInfo,
    result: Any,
    reserve: dict[str, float],
    model: str | None,
    estimate: Usage,
    *,
    source: str | None = None,
    fix: str = _FIX_DECORATED,
    outcome: str = "ok",
    defer: bool = False,
) -> tuple[dict[str, float], dict[str, Any] | None] | None:
    """Settle one LLM call from its usage (or its estimate, flagged, when unreadable).

    `source` describes where usage was looked for and `fix` how to make it readable (both
    for the warning); the instrumented SDKs pass their own (a stream without a usage chunk).
    `defer=True` settles nothing and returns `(actual, detail)` for an awaited
    `Reservation.asettle` (a Redis-backed pool in async code).
    """
    cfg = _config._config
    usage = info.usage
    if usage is None and source is None:
        extractors = (s.usage, *cfg.usage_extractors) if s.usage else cfg.usage_extractors
        usage = read_usage(result, extractors)
    flags: tuple[str, ...] = ()
    if usage is None or usage.input_tokens is None or usage.output_tokens is None:
        flags = ("usage_unknown",)
        _warn_once(
            s.route,
            "usage",
            f"agentguard: could not read token usage from "
            f"{source or f'the result of LLM call {s.name!r}, a {type(result).__name__}'} "
            f"(route {s.route!r}); the reserved estimate "
            f"({int(reserve['input_tokens'])} input + {int(reserve['output_tokens'])} output "
            f"tokens) is charged instead of zero. {fix}",
        )
        telemetry.counter(telemetry.METRIC.USAGE_UNKNOWN).add(1, {telemetry.ATTR.ROUTE: s.route})
        usage = estimate
    total = usage.total_tokens
    actual: dict[str, float] = {
        "input_tokens": float(usage.input_tokens or 0),
        "output_tokens": float(usage.output_tokens or 0),
        "total_tokens": float((total if total is not None else usage.total) or 0),
    }
    used_model = model or usage.model
    cost = resolve_price(used_model, usage, cfg.price, cfg.fallback_price)
    if cost is None:
        flags += ("cost_unknown",)
        if "cost_usd" in reserve:
            cost = reserve["cost_usd"]  # priced at the estimate: never free
    if cost is not None:
        actual["cost_usd"] = cost
    info.usage = usage
    info.cost_usd = cost
    info.model = used_model
    info.flags = flags
    detail = {"model": used_model} if used_model else None
    reservation = info.reservation
    assert reservation is not None
    if defer:
        return actual, detail
    reservation._settle_owned(actual, outcome, flags, detail)
    info.outcome = outcome
    if _llm_listeners:  # every settled LLM call: the decorator, ag.instrument, LangChain
        _notify_llm(info)
    return None


@overload
def llm_call(fn: Callable[P, R], /) -> Callable[P, R]: ...
@overload
def llm_call(
    *,
    route: str | None = None,
    model: str | None = None,
    provider: str | None = None,
    max_tokens: int | None = None,
    input_tokens: int | None = None,
    usage: UsageExtractor | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...
def llm_call(
    fn: Callable[P, R] | None = None,
    /,
    *,
    route: str | None = None,
    model: str | None = None,
    provider: str | None = None,
    max_tokens: int | None = None,
    input_tokens: int | None = None,
    usage: UsageExtractor | None = None,
) -> Any:
    """Guard an LLM call: charge `llm_calls=1` and reserve tokens/cost before it runs.

    The output-token reservation comes from the call's `max_tokens` / `max_output_tokens` /
    `max_completion_tokens` keyword, else `max_tokens=` here, else `ag.configure_route()`,
    else `configure(default_max_tokens=...)`; the input estimate from `input_tokens=` or the
    text of the arguments (4 characters per token). After the call the actual usage is read
    from the result (or from `ag.record_usage(...)` in the body) and settled.

    Raises `NoActivePool`, `BudgetExceeded`, `UnknownPrice` before the call; the body's own
    exceptions pass through unchanged after the reservation is released.
    """

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        s = _LLMSettings(
            name=func.__name__,
            route=route or func.__name__,
            model=model,
            provider=provider,
            max_tokens=max_tokens,
            input_tokens=input_tokens,
            usage=usage,
        )
        meta = {"kind": "llm", "name": s.name, "route": s.route}

        def start(
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
            pool: BudgetPool | None = None,
            admitted: tuple[Reservation, dict[str, float], str | None, Usage] | None = None,
        ) -> tuple[CallInfo, Any, Any]:
            if admitted is None:
                if pool is None:
                    pool = _resolve("llm", s.route, s.name)
                reserve, mdl, estimate = _plan(s, pool, kwargs, args)
                reservation = pool._admit(_LLM_CHARGE, reserve, s.route, s.name, "llm")
            else:
                assert pool is not None
                reservation, reserve, mdl, estimate = admitted
            info = CallInfo("llm", s.name, s.route, pool, reservation, model=mdl)
            info.extra["reserve"] = reserve
            info.extra["estimate"] = estimate
            token = _active_call.set(info)
            span = _llm_span(s, pool, mdl) if _tracing() else None
            return info, token, span

        def finish(info: CallInfo, result: Any, t0: float, span: Any) -> None:
            info.duration = perf_counter() - t0
            _finish_llm(
                s, info, result, info.extra["reserve"], info.model, info.extra["estimate"]
            )
            _llm_telemetry(info, span)
            if _call_listeners:
                _notify(info)

        def fail(info: CallInfo, exc: BaseException, t0: float, span: Any) -> None:
            info.duration = perf_counter() - t0
            info.outcome = "error"
            assert info.reservation is not None
            info.reservation.release(outcome="error", detail={"error.type": type(exc).__name__})
            _end_span(span, exc)
            if _call_listeners:
                _notify(info)

        if _is_async(func):
            afunc: Callable[..., Awaitable[Any]] = func  # type: ignore[assignment]

            async def remote_call(pool: BudgetPool, args: Any, kwargs: Any) -> Any:
                # A Redis-backed pool: admit, settle and release await the asyncio client.
                from ._remote import aremote_admit

                reserve, mdl, estimate = _plan(s, pool, kwargs, args)
                reservation = await aremote_admit(
                    pool, _LLM_CHARGE, reserve, s.route, s.name, "llm"
                )
                info, token, span = start(args, kwargs, pool, (reservation, reserve, mdl, estimate))
                t0 = perf_counter()
                try:
                    result = await afunc(*args, **kwargs)
                except BaseException as exc:
                    info.duration = perf_counter() - t0
                    info.outcome = "error"
                    await reservation.arelease(
                        outcome="error", detail={"error.type": type(exc).__name__}
                    )
                    _end_span(span, exc)
                    if _call_listeners:
                        _notify(info)
                    raise
                finally:
                    _active_call.reset(token)
                info.duration = perf_counter() - t0
                deferred = _finish_llm(s, info, result, reserve, info.model, estimate, defer=True)
                assert deferred is not None
                actual, detail = deferred
                await reservation.asettle(actual, outcome="ok", flags=info.flags, detail=detail)
                info.outcome = "ok"
                if _llm_listeners:
                    _notify_llm(info)
                _llm_telemetry(info, span)
                if _call_listeners:
                    _notify(info)
                return result

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                pool = _resolve("llm", s.route, s.name)
                if pool._remote:
                    return await remote_call(pool, args, kwargs)
                info, token, span = start(args, kwargs, pool)
                t0 = perf_counter()
                try:
                    result = await afunc(*args, **kwargs)
                except BaseException as exc:
                    fail(info, exc, t0, span)
                    raise
                finally:
                    _active_call.reset(token)
                finish(info, result, t0, span)
                return result

            async_wrapper.__agentguard__ = meta  # type: ignore[attr-defined,unused-ignore]
            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            info, token, span = start(args, kwargs)
            t0 = perf_counter()
            try:
                result = func(*args, **kwargs)
            except BaseException as exc:
                fail(info, exc, t0, span)
                raise
            finally:
                _active_call.reset(token)
            finish(info, result, t0, span)
            return result

        wrapper.__agentguard__ = meta  # type: ignore[attr-defined]
        return wrapper

    if fn is not None:
        return decorate(fn)
    return decorate


def _llm_span(s: _LLMSettings, pool: BudgetPool, model: str | None) -> Any:
    tracer = telemetry.get_tracer()
    attrs: dict[str, Any] = {
        telemetry.ATTR.GEN_AI_OPERATION_NAME: "chat",
        telemetry.ATTR.ROUTE: s.route,
        telemetry.ATTR.POOL: pool.name,
        telemetry.ATTR.RUN_ID: pool.run_id,
    }
    if model:
        attrs[telemetry.ATTR.GEN_AI_REQUEST_MODEL] = model
    if s.provider:
        attrs[telemetry.ATTR.GEN_AI_PROVIDER_NAME] = s.provider
    from opentelemetry.trace import SpanKind

    return tracer.start_span(
        telemetry.SPAN_CHAT.format(model=model or s.route), kind=SpanKind.CLIENT, attributes=attrs
    )


def _llm_telemetry(info: CallInfo, span: Any, operation: str = "chat") -> None:
    usage = info.usage
    if span is not None:
        if usage is not None:
            if usage.input_tokens is not None:
                span.set_attribute(telemetry.ATTR.GEN_AI_USAGE_INPUT_TOKENS, usage.input_tokens)
            if usage.output_tokens is not None:
                span.set_attribute(telemetry.ATTR.GEN_AI_USAGE_OUTPUT_TOKENS, usage.output_tokens)
        if info.model:
            span.set_attribute(telemetry.ATTR.GEN_AI_RESPONSE_MODEL, info.model)
        if info.cost_usd is not None:
            span.set_attribute(telemetry.ATTR.COST_USD, info.cost_usd)
        if "usage_unknown" in info.flags:
            span.set_attribute(telemetry.ATTR.USAGE_UNKNOWN, True)
        span.end()
    if usage is not None and "usage_unknown" not in info.flags and telemetry.metrics_enabled():
        hist = telemetry.histogram(telemetry.METRIC.TOKEN_USAGE, unit="{token}")
        base = {telemetry.ATTR.GEN_AI_OPERATION_NAME: operation, telemetry.ATTR.ROUTE: info.route}
        if info.model:
            base[telemetry.ATTR.GEN_AI_REQUEST_MODEL] = info.model
        hist.record(usage.input_tokens or 0, {**base, telemetry.ATTR.GEN_AI_TOKEN_TYPE: "input"})
        hist.record(usage.output_tokens or 0, {**base, telemetry.ATTR.GEN_AI_TOKEN_TYPE: "output"})
        if info.cost_usd is not None:
            telemetry.histogram(telemetry.METRIC.COST, unit="USD").record(info.cost_usd, base)
