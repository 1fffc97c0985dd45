"""`ag.instrument()`: every raw OpenAI and Anthropic SDK call charged, with no decorator to forget.

After `ag.instrument()`, the provider SDK itself is the innermost call site: each request
to a generation endpoint charges one LLM call and reserves tokens (and cost, when a pool
limits it) on the active `BudgetPool` *before* the request leaves the process, whatever
code made it, then settles the usage the response reports.

Where it hooks: the SDK client's single request entry point (`SyncAPIClient.request` and
`AsyncAPIClient.request` of each SDK), so every client instance, every resource method and
helper that posts to a covered endpoint (`create`, `parse`, `stream`, `with_raw_response`,
Azure and Bedrock/Vertex clients) is covered; and `BaseClient._build_request`, which the
SDK calls once per HTTP attempt, so each SDK-level retry is charged as one more LLM call.

Covered endpoints (`COVERED_ENDPOINTS`): OpenAI `/chat/completions`, `/responses`,
`/responses/compact`, `/completions`, `/embeddings`, `/decisions`; Anthropic `/v1/messages`
(including the beta messages API). Everything else the SDKs send (files, batches,
count_tokens, ...) passes through untouched.

Fail closed: outside any `BudgetPool`, an instrumented generation request raises
`NoActivePool` unless `ag.configure(default_pool=...)` is set. This changes the behaviour of
every SDK call in the process.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass, replace
from time import perf_counter
from typing import Any

from . import _config, telemetry
from .budget import _LLM_CHARGE, _current, _resolve
from .calls import (
    _MAX_TOKEN_KWARGS,
    CallInfo,
    _active_call,
    _call_listeners,
    _estimate_body_tokens,
    _estimate_text_tokens,
    _finish_llm,
    _llm_telemetry,
    _LLMSettings,
    _notify,
    _plan,
    _reserve_cost,
)
from .errors import ConfigurationError
from .telemetry import metrics_enabled as _metrics
from .telemetry import tracing_enabled as _tracing
from .usage import Usage, _from_usage_block, read_usage

__all__ = ["COVERED_ENDPOINTS", "instrument", "instrumented", "uninstrument"]

SDKS = ("openai", "anthropic")


@dataclass(frozen=True)
class _Op:
    """One covered endpoint: how it is named, reserved and read."""

    sdk: str
    path: str
    operation: str  # GenAI `gen_ai.operation.name`
    settings: _LLMSettings
    stream_usage: bool  # the API only reports usage in a stream when asked (stream_options)


def _op(sdk: str, path: str, route: str, operation: str, *, stream_usage: bool = False) -> _Op:
    settings = _LLMSettings(
        name=route,
        route=route,
        model=None,
        provider=sdk,
        max_tokens=0 if operation == "embeddings" else None,
        input_tokens=None,
        usage=None,
    )
    return _Op(sdk, path, operation, settings, stream_usage)


_OPS: dict[str, dict[str, _Op]] = {
    "openai": {
        "/chat/completions": _op(
            "openai", "/chat/completions", "openai.chat.completions", "chat", stream_usage=True
        ),
        "/responses": _op("openai", "/responses", "openai.responses", "chat"),
        "/responses/compact": _op(
            "openai", "/responses/compact", "openai.responses.compact", "chat"
        ),
        "/completions": _op(
            "openai", "/completions", "openai.completions", "text_completion", stream_usage=True
        ),
        "/embeddings": _op("openai", "/embeddings", "openai.embeddings", "embeddings"),
        "/decisions": _op("openai", "/decisions", "openai.decisions", "chat"),
    },
    "anthropic": {
        "/v1/messages": _op("anthropic", "/v1/messages", "anthropic.messages", "chat"),
    },
}

COVERED_ENDPOINTS: Mapping[str, tuple[str, ...]] = {sdk: tuple(ops) for sdk, ops in _OPS.items()}
"""The request paths charged per SDK (POST only). Default route names: see `docs/instrument.md`."""


class _Sdk:
    """What is patched in one SDK, and whether its wrappers are live."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.active = False
        self.stream_usage = True
        self.ops = _OPS[name]
        self.patches: list[tuple[type, str, Any, Any]] = []
        self.stream_types: tuple[type, ...] = ()
        self.async_stream_types: tuple[type, ...] = ()
        self.any_stream_types: tuple[type, ...] = ()
        self.raw_response_types: tuple[type, ...] = ()


_lock = threading.Lock()
_sdks: dict[str, _Sdk] = {}


class _Request:
    """One SDK request in flight: who charges it and how many attempts it made."""

    __slots__ = (
        "annotate",
        "annotate_sdk",
        "attempts",
        "estimate",
        "info",
        "op",
        "owned",
        "reserve",
        "sdk",
        "span",
        "t0",
        "token_call",
        "token_request",
    )

    def __init__(self, sdk: _Sdk, op: _Op, info: CallInfo, owned: bool, t0: float) -> None:
        self.sdk = sdk
        self.op = op
        self.info = info  # ours when owned, else the outer @llm_call / adapter call
        self.owned = owned
        self.attempts = 0
        self.span: Any = None
        self.annotate: Any = None  # a span that is not ours: add attributes, never end it
        self.annotate_sdk = False  # the SDK starts its own span: annotate it at the 1st attempt
        self.t0 = t0
        self.token_call: Token[CallInfo | None] | None = None
        self.token_request: Token[_Request | None] | None = None
        self.reserve: dict[str, float] = {}
        self.estimate: Usage | None = None  # built only when the usage is unknown


_request: ContextVar[_Request | None] = ContextVar("agentguard_sdk_request", default=None)


# -- public API -------------------------------------------------------------------------------


def instrument(
    *,
    openai: bool | None = None,
    anthropic: bool | None = None,
    stream_usage: bool = True,
) -> frozenset[str]:
    """Charge every OpenAI / Anthropic SDK generation request to the active `BudgetPool`.

    Args:
        openai, anthropic: True to require the SDK (`ConfigurationError` when it is not
            installed), False to leave it alone, None (default) to instrument it when it is
            installed. An SDK that is not installed is never imported.
        stream_usage: for OpenAI chat/text completions with `stream=True` and no
            `stream_options`, send `stream_options={"include_usage": True}` so the stream
            ends with a usage chunk (whose `choices` is empty). False leaves the request
            alone; such streams settle at the estimate, flagged `usage_unknown`.

    Returns the names of the SDKs now instrumented. Idempotent and thread-safe; reversed by
    `ag.uninstrument()`. Once instrumented, a generation request outside any pool raises
    `NoActivePool` unless `ag.configure(default_pool=...)` is set.
    """
    wanted = {"openai": openai, "anthropic": anthropic}
    with _lock:
        for name, want in wanted.items():
            if want is False:
                continue
            if importlib.util.find_spec(name) is None:
                if want:
                    raise ConfigurationError(
                        f"ag.instrument({name}=True): the {name!r} package is not installed in "
                        f"this environment. Fix: pip install 'agentguard[{name}]', or call "
                        f"ag.instrument({name}=False)."
                    )
                continue
            sdk = _sdks.get(name)
            if sdk is None:
                sdk = _sdks[name] = _Sdk(name)
            sdk.stream_usage = stream_usage
            if not sdk.active:
                _install(sdk)
        return frozenset(n for n, s in _sdks.items() if s.active)


def uninstrument(*, openai: bool = True, anthropic: bool = True) -> frozenset[str]:
    """Undo `ag.instrument()` for the SDKs named; returns the SDKs still instrumented.

    Idempotent and thread-safe. When another library has wrapped the same SDK method after
    agentguard, its wrapper is kept and ours stays underneath, inactive (a WARNING says so).
    """
    wanted = {"openai": openai, "anthropic": anthropic}
    with _lock:
        for name, want in wanted.items():
            sdk = _sdks.get(name)
            if want and sdk is not None and sdk.active:
                _uninstall(sdk)
        return frozenset(n for n, s in _sdks.items() if s.active)


def instrumented() -> frozenset[str]:
    """The SDKs whose requests are charged right now."""
    return frozenset(n for n, s in _sdks.items() if s.active)


# -- patching ---------------------------------------------------------------------------------


def _install(sdk: _Sdk) -> None:
    base = importlib.import_module(f"{sdk.name}._base_client")
    streaming = importlib.import_module(f"{sdk.name}._streaming")
    response = importlib.import_module(f"{sdk.name}._response")
    legacy = importlib.util.find_spec(f"{sdk.name}._legacy_response")
    raw: list[type] = [response.BaseAPIResponse]
    if legacy is not None:
        raw.append(importlib.import_module(f"{sdk.name}._legacy_response").LegacyAPIResponse)
    sdk.stream_types = (streaming.Stream,)
    sdk.async_stream_types = (streaming.AsyncStream,)
    sdk.any_stream_types = (streaming.Stream, streaming.AsyncStream)
    sdk.raw_response_types = tuple(raw)
    targets = [
        (base.SyncAPIClient, "request", _sync_request_wrapper),
        (base.AsyncAPIClient, "request", _async_request_wrapper),
        (base.BaseClient, "_build_request", _build_request_wrapper),
    ]
    for owner, attr, _ in targets:
        if not callable(owner.__dict__.get(attr)):
            raise ConfigurationError(
                f"ag.instrument(): {sdk.name} {_version(sdk.name)} has no "
                f"{owner.__name__}.{attr}, which agentguard hooks to charge every request. "
                f"Fix: install a supported {sdk.name} version (see docs/instrument.md), or "
                f"call ag.instrument({sdk.name}=False) and decorate call sites with "
                f"@ag.llm_call."
            )
    for owner, attr, make in targets:
        original = owner.__dict__[attr]
        wrapper = make(sdk, original)
        setattr(owner, attr, wrapper)
        sdk.patches.append((owner, attr, original, wrapper))
    sdk.active = True


def _uninstall(sdk: _Sdk) -> None:
    sdk.active = False  # wrappers left in place (see below) now pass straight through
    for owner, attr, original, wrapper in reversed(sdk.patches):
        if owner.__dict__.get(attr) is wrapper:
            setattr(owner, attr, original)
        else:
            import logging

            logging.getLogger("agentguard").warning(
                "ag.uninstrument(): %s.%s of %s was wrapped again after agentguard (by %r); "
                "that wrapper is kept and agentguard's, underneath it, is now inactive.",
                owner.__name__,
                attr,
                sdk.name,
                owner.__dict__.get(attr),
            )
    sdk.patches.clear()


def _version(name: str) -> str:
    try:
        return str(importlib.import_module(name).__version__)
    except (ImportError, AttributeError):
        return "(unknown version)"


# The hooked methods' signatures in the supported SDK versions. When a method has exactly
# this signature, its wrapper takes and forwards these keywords by name; forwarding them
# through *args/**kwargs instead cost ~19k more CPU instructions per request (measured with
# cachegrind). Any other signature gets the generic wrapper, which forwards everything.
_REQUEST_KEYWORDS: Mapping[str, Any] = {"stream": False, "stream_cls": None}
_BUILD_KEYWORDS: Mapping[str, Any] = {"retries_taken": 0}


def _takes_exactly(fn: Callable[..., Any], positional: int, keywords: Mapping[str, Any]) -> bool:
    """True when `fn`'s whole signature is `positional` positional parameters (self
    included), then `keywords` as keyword-only parameters with these defaults."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # no signature to read: forward everything
        return False
    head, tail = params[:positional], params[positional:]
    return (
        len(head) == positional
        and all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in head)
        and [(p.name, p.kind, p.default) for p in tail]
        == [(name, inspect.Parameter.KEYWORD_ONLY, d) for name, d in keywords.items()]
    )


def _sync_request_wrapper(sdk: _Sdk, original: Callable[..., Any]) -> Callable[..., Any]:
    if not _takes_exactly(original, 3, _REQUEST_KEYWORDS):
        return _generic_sync_request_wrapper(sdk, original)

    @functools.wraps(original)
    def request(
        self: Any, cast_to: Any, options: Any, *, stream: bool = False, stream_cls: Any = None
    ) -> Any:
        req = _begin(sdk, self, options) if sdk.active else None
        if req is None:
            return original(self, cast_to, options, stream=stream, stream_cls=stream_cls)
        try:
            result = original(self, cast_to, options, stream=stream, stream_cls=stream_cls)
        except BaseException as exc:
            _fail(req, exc)
            raise
        finally:
            if req.token_request is not None:  # `_detach`, inlined
                _request.reset(req.token_request)
            if req.token_call is not None:
                _active_call.reset(req.token_call)
        return _done(req, result)

    request.__agentguard_instrument__ = True  # type: ignore[attr-defined]
    return request


def _generic_sync_request_wrapper(
    sdk: _Sdk, original: Callable[..., Any]
) -> Callable[..., Any]:
    @functools.wraps(original)
    def request(self: Any, cast_to: Any, options: Any, *args: Any, **kwargs: Any) -> Any:
        req = _begin(sdk, self, options) if sdk.active else None
        if req is None:
            return original(self, cast_to, options, *args, **kwargs)
        try:
            result = original(self, cast_to, options, *args, **kwargs)
        except BaseException as exc:
            _fail(req, exc)
            raise
        finally:
            _detach(req)
        return _done(req, result)

    request.__agentguard_instrument__ = True  # type: ignore[attr-defined]
    return request


def _async_request_wrapper(sdk: _Sdk, original: Callable[..., Any]) -> Callable[..., Any]:
    if not _takes_exactly(original, 3, _REQUEST_KEYWORDS):
        return _generic_async_request_wrapper(sdk, original)

    @functools.wraps(original)
    async def request(
        self: Any, cast_to: Any, options: Any, *, stream: bool = False, stream_cls: Any = None
    ) -> Any:
        req = _begin(sdk, self, options) if sdk.active else None
        if req is None:
            return await original(self, cast_to, options, stream=stream, stream_cls=stream_cls)
        try:
            result = await original(self, cast_to, options, stream=stream, stream_cls=stream_cls)
        except BaseException as exc:
            _fail(req, exc)
            raise
        finally:
            _detach(req)
        return _done(req, result)

    request.__agentguard_instrument__ = True  # type: ignore[attr-defined]
    return request


def _generic_async_request_wrapper(
    sdk: _Sdk, original: Callable[..., Any]
) -> Callable[..., Any]:
    @functools.wraps(original)
    async def request(self: Any, cast_to: Any, options: Any, *args: Any, **kwargs: Any) -> Any:
        req = _begin(sdk, self, options) if sdk.active else None
        if req is None:
            return await original(self, cast_to, options, *args, **kwargs)
        try:
            result = await original(self, cast_to, options, *args, **kwargs)
        except BaseException as exc:
            _fail(req, exc)
            raise
        finally:
            _detach(req)
        return _done(req, result)

    request.__agentguard_instrument__ = True  # type: ignore[attr-defined]
    return request


def _build_request_wrapper(sdk: _Sdk, original: Callable[..., Any]) -> Callable[..., Any]:
    if not _takes_exactly(original, 2, _BUILD_KEYWORDS):
        return _generic_build_request_wrapper(sdk, original)

    @functools.wraps(original)
    def build_request(self: Any, options: Any, *, retries_taken: int = 0) -> Any:
        req = _request.get()
        if req is not None and req.sdk is sdk:  # `_attempt`, inlined
            req.attempts += 1
            if req.attempts > 1:
                _charge_retry(req)
            elif req.annotate_sdk:
                _annotate_sdk_span(req)
        return original(self, options, retries_taken=retries_taken)

    build_request.__agentguard_instrument__ = True  # type: ignore[attr-defined]
    return build_request


def _generic_build_request_wrapper(
    sdk: _Sdk, original: Callable[..., Any]
) -> Callable[..., Any]:
    @functools.wraps(original)
    def build_request(self: Any, options: Any, *args: Any, **kwargs: Any) -> Any:
        req = _request.get()
        if req is not None and req.sdk is sdk:
            _attempt(req)
        return original(self, options, *args, **kwargs)

    build_request.__agentguard_instrument__ = True  # type: ignore[attr-defined]
    return build_request


def _attempt(req: _Request) -> None:
    """One HTTP attempt of a request in flight (the SDK builds each attempt's request)."""
    req.attempts += 1
    if req.attempts > 1:
        _charge_retry(req)
    elif req.annotate_sdk:
        _annotate_sdk_span(req)


# -- one request ------------------------------------------------------------------------------


_NO_BODY: Mapping[str, Any] = {}


def _begin(sdk: _Sdk, client: Any, options: Any) -> _Request | None:
    """Charge (or join the outer call), before anything is sent. Raises on refusal.

    None: the request does not go to a covered endpoint (it passes through untouched).
    """
    try:  # `_op_for`, inlined: this runs on every request the SDK sends
        method = options.method
        url = options.url if method == "post" or method == "POST" else None
    except AttributeError:
        return None
    op = sdk.ops.get(url.partition("?")[0]) if type(url) is str else None
    if op is None:
        return None
    body = options.json_data
    if type(body) is not dict and not isinstance(body, Mapping):
        body = _NO_BODY
    outer = _active_call.get()
    if outer is not None and outer.kind == "llm":
        # One logical call, one charge: @ag.llm_call or an adapter already charged it.
        req = _Request(sdk, op, outer, False, perf_counter())
        req.token_request = _request.set(req)
        return req
    s = op.settings
    pool = _current.get() or _resolve("LLM call", s.route, f"{s.name} (ag.instrument)")
    estimate: Usage | None = None
    cfg = _config._config
    if cfg.routes and s.route in cfg.routes:
        reserve, model, estimate = _plan(s, pool, body, ())  # route settings apply
    else:
        # `calls._plan` for a JSON body without route settings, in this frame: the hot path
        # of every request. The estimate `Usage` is built only to price the reservation
        # (a cost limit) or when the response's usage turns out unreadable.
        for key in _MAX_TOKEN_KWARGS:
            out = body.get(key)
            if type(out) is int and out > 0:
                break
        else:
            out = s.max_tokens if s.max_tokens is not None else cfg.default_max_tokens
        # no input_tokens setting for an endpoint: always estimated
        inp = _estimate_body_tokens(body) if type(body) is dict else _estimate_text_tokens(body)
        model = body.get("model")
        if type(model) is not str or not model:
            model = s.model
        reserve = {
            "input_tokens": float(inp),
            "output_tokens": float(out),
            "total_tokens": float(inp + out),
        }
        estimate = _reserve_cost(s, pool, reserve, model, s.provider)
    reservation = pool._admit(_LLM_CHARGE, reserve, s.route, s.name, "llm")
    info = CallInfo("llm", s.name, s.route, pool, reservation, model, sdk.name)
    req = _Request(sdk, op, info, True, reservation.started)
    req.reserve = reserve
    req.estimate = estimate
    try:
        if op.stream_usage and sdk.stream_usage and body.get("stream") is True:
            stream_options = body.get("stream_options")
            if stream_options is None:
                options.json_data = {**body, "stream_options": {"include_usage": True}}
            elif isinstance(stream_options, Mapping) and "include_usage" not in stream_options:
                options.json_data = {
                    **body,
                    "stream_options": {**stream_options, "include_usage": True},
                }
        if _tracing():
            _start_span(req, client, model)
    except BaseException as exc:
        _fail(req, exc)
        raise
    req.token_call = _active_call.set(info)
    req.token_request = _request.set(req)
    return req


def _detach(req: _Request) -> None:
    if req.token_request is not None:
        _request.reset(req.token_request)
    if req.token_call is not None:
        _active_call.reset(req.token_call)


def _fail(req: _Request, exc: BaseException) -> None:
    """The request raised (refused retry, HTTP error, timeout): give the tokens back."""
    if not req.owned:
        return
    info = req.info
    info.duration = perf_counter() - req.t0
    info.outcome = "error"
    assert info.reservation is not None
    info.reservation.release(outcome="error", detail={"error.type": type(exc).__name__})
    span = req.span or req.annotate
    if span is not None and span.is_recording():
        span.set_attribute(telemetry.ATTR.ERROR_TYPE, type(exc).__qualname__)
        if req.span is not None:
            from opentelemetry.trace import Status, StatusCode

            req.span.set_status(Status(StatusCode.ERROR, str(exc)[:200]))
            req.span.end()
    if _call_listeners:
        _notify(info)


def _done(req: _Request, result: Any) -> Any:
    sdk = req.sdk
    if isinstance(result, sdk.any_stream_types):  # one check on the common (parsed) path
        if req.owned:
            if isinstance(result, sdk.stream_types):
                _watch_sync_stream(result, _StreamWatch(req))
            else:
                _watch_async_stream(result, _StreamWatch(req))
        return result
    if req.owned and not _config._config.usage_extractors:
        # The common case, read in this frame: the usage block of the SDK's own pydantic
        # model, as a dict (a missing attribute on a pydantic model costs an exception).
        fields = getattr(getattr(result, "usage", None), "__dict__", None)
        if type(fields) is dict and not isinstance(result, sdk.raw_response_types):
            model = getattr(result, "model", None)
            usage = _from_usage_block(fields, model if type(model) is str else None, sdk.name)
            if usage is not None and usage.output_tokens is None:
                usage = _complete(req.op, usage)  # embeddings: no output tokens
            req.info.usage = usage
            _settle(req, result)
            return result
    usage = _usage_of(req, result)
    if not req.owned:
        if usage is not None:
            _add_usage(req.info, usage)
        return result
    req.info.usage = usage
    source = None
    if usage is None and isinstance(result, sdk.raw_response_types):
        source = f"the raw response of {req.op.settings.name!r} (its body was not read yet)"
    _settle(req, result, source=source, fix=_FIX_RAW if source else _FIX_RESPONSE)
    return result


_FIX_RESPONSE = (
    "Fix: report it at https://github.com/agentguard/agentguard/issues with the SDK version, "
    "or pass ag.configure(usage_extractors=[...]) that reads this response"
)
_FIX_RAW = (
    "A .with_streaming_response call is settled when the request returns, before its body "
    "is read. Fix: use the plain method or .with_raw_response"
)
_FIX_STREAM = (
    "The stream ended without a usage event: it was closed before its end, or the request "
    "set stream_options={'include_usage': False} (or ag.instrument(stream_usage=False)). "
    "Fix: consume streams to their end, and leave include_usage on"
)


def _usage_of(req: _Request, result: Any) -> Usage | None:
    extractors = _config._config.usage_extractors
    if isinstance(result, req.sdk.raw_response_types):
        http = getattr(result, "http_response", None)
        if http is None or not getattr(http, "is_stream_consumed", False):
            return None
        try:
            result = http.json()
        except ValueError:  # an SSE body (stream=True) or not JSON at all
            return None
    elif not extractors:
        # Fast path for the SDK's own pydantic models: read the usage block's fields as a
        # dict (a missing attribute on a pydantic model costs an exception per probe).
        block = getattr(result, "usage", None)
        fields = getattr(block, "__dict__", None)
        if isinstance(fields, dict):
            model = getattr(result, "model", None)
            usage = _from_usage_block(fields, model if isinstance(model, str) else None, req.op.sdk)
            return _complete(req.op, usage)
    return _complete(req.op, read_usage(result, extractors))


def _complete(op: _Op, usage: Usage | None) -> Usage | None:
    if usage is None:
        return None
    if op.operation == "embeddings" and usage.output_tokens is None:
        usage = replace(usage, output_tokens=0)
    if usage.provider is None:
        usage = replace(usage, provider=op.sdk)
    return usage


def _add_usage(info: CallInfo, usage: Usage) -> None:
    """Hand the exact usage to the outer call; several SDK requests in one call add up."""
    seen = info.extra.get("sdk_usage")
    if isinstance(seen, Usage) and info.usage is seen:
        usage = Usage(
            input_tokens=(seen.input_tokens or 0) + (usage.input_tokens or 0),
            output_tokens=(seen.output_tokens or 0) + (usage.output_tokens or 0),
            model=usage.model or seen.model,
            provider=usage.provider or seen.provider,
            cache_read_tokens=seen.cache_read_tokens + usage.cache_read_tokens,
            cache_write_tokens=seen.cache_write_tokens + usage.cache_write_tokens,
        )
    elif info.usage is not None:
        return  # the body reported its usage itself (ag.record_usage): it wins
    info.usage = usage
    info.extra["sdk_usage"] = usage


def _settle(
    req: _Request,
    result: Any,
    *,
    source: str | None = None,
    fix: str = _FIX_RESPONSE,
    outcome: str = "ok",
) -> None:
    info = req.info
    info.duration = perf_counter() - req.t0
    s = req.op.settings
    estimate = req.estimate
    usage = info.usage
    if estimate is None and (
        usage is None or usage.input_tokens is None or usage.output_tokens is None
    ):
        estimate = req.estimate = Usage(
            input_tokens=int(req.reserve["input_tokens"]),
            output_tokens=int(req.reserve["output_tokens"]),
            model=info.model,
            provider=s.provider,
        )
    _finish_llm(
        s,
        info,
        result,
        req.reserve,
        info.model,
        estimate or _KNOWN,
        source=source if usage is None else None,
        fix=fix,
        outcome=outcome,
    )
    if req.annotate is not None:
        _usage_attributes(req.annotate, info)
    if req.span is not None or _metrics():
        _llm_telemetry(info, req.span, req.op.operation)
    if _call_listeners:
        _notify(info)


_KNOWN = Usage()  # the estimate argument when the usage is known (then it is not read)


def _charge_retry(req: _Request) -> None:
    """One more HTTP attempt by the SDK's own retry loop: one more LLM call, or a refusal."""
    info = req.info
    pool = info.pool
    resend = req.attempts - 1
    reservation = pool._admit(_LLM_CHARGE, {}, info.route, info.name, "llm")
    reservation.settle({}, outcome="retry", detail={telemetry.ATTR.RESEND_COUNT: resend})
    telemetry.counter(telemetry.METRIC.SDK_RETRIES).add(1, {telemetry.ATTR.ROUTE: info.route})
    span = req.span or req.annotate
    if span is not None:
        span.set_attribute(telemetry.ATTR.RESEND_COUNT, resend)


# -- spans ------------------------------------------------------------------------------------


def _is_genai_client_span(span: Any) -> bool:
    attributes = getattr(span, "attributes", None)
    if not isinstance(attributes, Mapping):
        return False
    return (
        telemetry.ATTR.GEN_AI_OPERATION_NAME in attributes
        or "gen_ai.system" in attributes
        or telemetry.ATTR.GEN_AI_PROVIDER_NAME in attributes
    )


def _start_span(req: _Request, client: Any, model: str | None) -> None:
    """Our GenAI client span, unless another instrumentation of this call already has one.

    The rule: a recording GenAI span current at the call (e.g. an OpenTelemetry
    instrumentation that wraps the SDK's methods) gets our attributes instead of a nested
    twin; an SDK that traces itself (anthropic's built-in tracing) gets them on its own span,
    from the first attempt. Otherwise we start `{operation} {model}` (CLIENT).
    """
    from opentelemetry import trace

    current = trace.get_current_span()
    if current.is_recording() and _is_genai_client_span(current):
        req.annotate = current
        _pool_attributes(current, req.info)
        return
    if getattr(client, "_tracer", None) is not None:
        req.annotate_sdk = True  # the SDK starts its own span inside request()
        return
    op = req.op
    attrs: dict[str, Any] = {
        telemetry.ATTR.GEN_AI_OPERATION_NAME: op.operation,
        telemetry.ATTR.GEN_AI_PROVIDER_NAME: op.sdk,
        telemetry.ATTR.ROUTE: req.info.route,
        telemetry.ATTR.POOL: req.info.pool.name,
        telemetry.ATTR.RUN_ID: req.info.pool.run_id,
        telemetry.ATTR.INSTRUMENTED: True,
    }
    if model:
        attrs[telemetry.ATTR.GEN_AI_REQUEST_MODEL] = model
    req.span = telemetry.get_tracer().start_span(
        telemetry.SPAN_INFERENCE.format(operation=op.operation, model=model or op.sdk),
        kind=trace.SpanKind.CLIENT,
        attributes=attrs,
    )


def _annotate_sdk_span(req: _Request) -> None:
    if not req.owned:
        return
    from opentelemetry import trace

    current = trace.get_current_span()
    if current.is_recording():
        req.annotate = current
        _pool_attributes(current, req.info)


def _pool_attributes(span: Any, info: CallInfo) -> None:
    span.set_attribute(telemetry.ATTR.ROUTE, info.route or "")
    span.set_attribute(telemetry.ATTR.POOL, info.pool.name)
    span.set_attribute(telemetry.ATTR.RUN_ID, info.pool.run_id)
    span.set_attribute(telemetry.ATTR.INSTRUMENTED, True)


def _usage_attributes(span: Any, info: CallInfo) -> None:
    if not span.is_recording():
        return  # the other instrumentation already ended its span
    if info.cost_usd is not None:
        span.set_attribute(telemetry.ATTR.COST_USD, info.cost_usd)
    if "usage_unknown" in info.flags:
        span.set_attribute(telemetry.ATTR.USAGE_UNKNOWN, True)


# -- streams ----------------------------------------------------------------------------------


class _StreamWatch:
    """Reads usage from a stream's events as the caller consumes them; settles once."""

    __slots__ = ("done", "input", "lock", "model", "output", "req", "usage")

    def __init__(self, req: _Request) -> None:
        self.req = req
        self.usage: Usage | None = None
        self.input: int | None = None  # anthropic: message_start, then message_delta
        self.output: int | None = None
        self.model: str | None = None
        self.done = False
        self.lock = threading.Lock()

    def see(self, event: Any) -> None:
        kind = getattr(event, "type", None)
        if kind == "message_start":  # anthropic: input tokens up front
            message = getattr(event, "message", None)
            usage = read_usage(message) if message is not None else None
            if usage is not None:
                self.input = usage.input_tokens
                self.output = usage.output_tokens
                self.model = usage.model
        elif kind == "message_delta":  # anthropic: cumulative output tokens
            block = getattr(event, "usage", None)
            if block is not None:
                out = getattr(block, "output_tokens", None)
                if isinstance(out, int):
                    self.output = out
                inp = getattr(block, "input_tokens", None)
                if isinstance(inp, int) and inp:
                    self.input = inp
            if self.input is not None and self.output is not None:
                self.usage = Usage(
                    input_tokens=self.input,
                    output_tokens=self.output,
                    model=self.model,
                    provider="anthropic",
                )
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            response = getattr(event, "response", None)
            if response is not None:
                self.usage = read_usage(response) or self.usage
        elif getattr(event, "usage", None) is not None:  # openai chat / completions chunk
            self.usage = read_usage(event) or self.usage

    def finish(self, error: BaseException | None = None) -> None:
        with self.lock:
            if self.done:
                return
            self.done = True
        req = self.req
        req.info.usage = _complete(req.op, self.usage)
        source = f"the stream of {req.op.settings.name!r}"
        try:
            _settle(
                req,
                None,
                source=source,
                fix=_FIX_STREAM,
                outcome="ok" if error is None else "error",
            )
        finally:
            if error is not None and req.span is not None and req.span.is_recording():
                req.span.set_attribute(telemetry.ATTR.ERROR_TYPE, type(error).__qualname__)


def _observe(iterator: Iterator[Any], watch: _StreamWatch) -> Iterator[Any]:
    try:
        for event in iterator:
            watch.see(event)
            yield event
    except GeneratorExit:
        watch.finish()
        raise
    except BaseException as exc:
        watch.finish(exc)
        raise
    watch.finish()


async def _aobserve(iterator: Any, watch: _StreamWatch) -> Any:
    try:
        async for event in iterator:
            watch.see(event)
            yield event
    except GeneratorExit:
        watch.finish()
        raise
    except BaseException as exc:
        watch.finish(exc)
        raise
    watch.finish()


def _watch_sync_stream(stream: Any, watch: _StreamWatch) -> None:
    stream.__dict__["_iterator"] = _observe(stream._iterator, watch)
    response = stream.response
    close = response.__dict__.get("close")
    ref = weakref.ref(response)
    unbound = type(response).close

    def closing() -> None:
        try:
            if close is not None:
                close()
            else:
                target = ref()
                if target is not None:
                    unbound(target)
        finally:
            watch.finish()

    response.close = closing
    weakref.finalize(stream, watch.finish)


def _watch_async_stream(stream: Any, watch: _StreamWatch) -> None:
    stream.__dict__["_iterator"] = _aobserve(stream._iterator, watch)
    response = stream.response
    aclose = response.__dict__.get("aclose")
    ref = weakref.ref(response)
    unbound = type(response).aclose

    async def closing() -> None:
        try:
            if aclose is not None:
                await aclose()
            else:
                target = ref()
                if target is not None:
                    await unbound(target)
        finally:
            watch.finish()

    response.aclose = closing
    weakref.finalize(stream, watch.finish)
