"""LangChain and LangGraph adapters: charge every model and tool call, validate tool arguments.

Two ways in, on the same guards as `@ag.llm_call` / `@ag.tool_call`:

- `BudgetCallbackHandler`: a synchronous LangChain callback handler (`raise_error=True`).
  Attach it once in `config={"callbacks": [...]}`; it covers every chat model, LLM and tool
  that inherits the config (sub-graphs, sub-agents, parallel tool calls). It charges one LLM
  call and reserves tokens in `on_chat_model_start` / `on_llm_start` (so a refused call never
  reaches the provider), settles the usage from `usage_metadata` in `on_llm_end`, releases
  in `on_llm_error`, charges one tool call in `on_tool_start` and records tool outputs for
  `Verbatim` provenance in `on_tool_end`.
- `AgentGuardMiddleware`: a middleware for `langchain.agents.create_agent`. Its
  `wrap_model_call` / `wrap_tool_call` (sync and async) charge the pool, validate tool
  arguments against the tool's annotated validators and hand a rejected call back to the
  model as an error `ToolMessage`; a spent budget either raises (`exit_behavior="error"`) or
  ends the run with a final `AIMessage` saying why (`exit_behavior="end"`).

Every call is charged once: a tool whose function is decorated with `@ag.tool_call` is left
to the decorator, and a model call that is already being charged (`ag.current_call()`, set by
`@ag.llm_call`, by the middleware or by the handler) is not charged again.

Needs `pip install 'agentguard[langchain]'` (langchain-core, langchain, langgraph 1.x).
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass
from time import perf_counter, time_ns
from typing import Any, Literal
from uuid import UUID

try:
    from langchain.agents.middleware import AgentMiddleware, AgentState, hook_config
    from langchain.agents.middleware.types import ModelRequest, ModelResponse
    from langchain_core.callbacks import BaseCallbackHandler
    from langchain_core.messages import AIMessage, AnyMessage, BaseMessage, ToolMessage
    from langgraph.prebuilt.tool_node import ToolCallRequest
    from langgraph.runtime import Runtime
    from langgraph.types import Command
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "agentguard.integrations.langchain needs langchain-core, langchain and langgraph 1.x "
        f"({exc}). Fix: pip install 'agentguard[langchain]'."
    ) from exc

from .. import _argcheck, _config, telemetry
from .._events import record_event
from ..budget import _LLM_CHARGE, _TOOL_CHARGE, BudgetPool, _current
from ..calls import (
    CallInfo,
    ToolClaim,
    _active_call,
    _call_listeners,
    _end_span,
    _estimate_text_tokens,
    _finish_llm,
    _llm_span,
    _llm_telemetry,
    _LLMSettings,
    _notify,
    _plan,
    _provenance_sources,
    _record_provenance,
    _tool_claim,
    _tool_span,
)
from ..errors import (
    TERMINAL_ERRORS,
    BudgetExceeded,
    ConfigurationError,
    CorrectionsExhausted,
    NoActivePool,
    ToolArgumentError,
)
from ..telemetry import tracing_enabled as _tracing
from ..usage import Usage, _from_usage_block
from ..validators import _reuse_records

__all__ = [
    "AgentGuardMiddleware",
    "BudgetCallbackHandler",
    "ExitBehavior",
    "NOT_RETRYABLE",
    "STOP_METADATA_KEY",
    "retry_on",
]

ExitBehavior = Literal["error", "end"]
"""What `AgentGuardMiddleware` does when the budget is spent or corrections run out:
`"error"` raises the agentguard error out of `invoke`; `"end"` ends the run with a final
`AIMessage` explaining the stop (and a `ToolMessage` for each tool call that did not run)."""

STOP_METADATA_KEY = "agentguard_stop"
"""`response_metadata` key on the messages agentguard writes when it stops a run."""

NOT_RETRYABLE: tuple[type[BaseException], ...] = (
    *TERMINAL_ERRORS,
    ToolArgumentError,
    ConfigurationError,
)
"""Errors a retry can never fix: a spent budget, exhausted corrections, the same invalid
arguments again, a configuration mistake."""

_UNSET: Any = object()

_tool_charged_by: ContextVar[str | None] = ContextVar("agentguard_lc_tool", default=None)
"""The id of the tool call the middleware charged, set while its tool runs (handler skips it)."""


# -- shared helpers ---------------------------------------------------------------------------


def retry_on(
    base: tuple[type[Exception], ...] | Callable[[Exception], bool] | None = None,
) -> Callable[[Exception], bool]:
    """A `retry_on=` for `ModelRetryMiddleware` / `ToolRetryMiddleware` that never retries
    agentguard's non-retryable errors (`NOT_RETRYABLE`: budget, corrections, arguments).

    `base` decides for every other error: a tuple of exception types, a predicate, or None
    for LangChain's default (retry everything except non-retryable provider errors). Usage:
    `ModelRetryMiddleware(retry_on=retry_on())`. Errors it refuses propagate unchanged
    (LangChain does not pass them to `on_failure`).
    """
    if base is None:
        from langchain.agents.middleware._retry import default_retry_on

        decide: Callable[[Exception], bool] = default_retry_on
    elif isinstance(base, tuple):
        types = base

        def decide(exc: Exception) -> bool:
            return isinstance(exc, types)
    elif callable(base):
        decide = base
    else:
        raise ConfigurationError(
            f"retry_on(base=...) expects a tuple of exception types, a predicate or None, got "
            f"{type(base).__name__}."
        )

    def should_retry(exc: Exception) -> bool:
        if isinstance(exc, NOT_RETRYABLE):
            return False
        return bool(decide(exc))

    return should_retry


def _resolve_pool(fixed: BudgetPool | None, kind: str, route: str | None, fn: str) -> BudgetPool:
    if fixed is not None:
        return fixed
    pool = _current.get() or _config.get_config().default_pool
    if pool is None:
        raise NoActivePool(kind=kind, route=route, function=fn)
    return pool


def _llm_running() -> bool:
    """True when an LLM call is already being charged in this context (do not charge again)."""
    info = _active_call.get()
    return info is not None and info.kind == "llm" and info.outcome == "running"


def _is_guarded(fn: Any) -> bool:
    meta = getattr(fn, "__agentguard__", None)
    return isinstance(meta, Mapping) and meta.get("kind") == "tool"


def _tool_functions(tool: Any) -> list[Any]:
    """The Python callables behind a LangChain tool (StructuredTool func/coroutine, or _run)."""
    fns = [f for f in (getattr(tool, "func", None), getattr(tool, "coroutine", None)) if f]
    if not fns:
        run = getattr(type(tool), "_run", None)
        if run is not None:
            fns.append(run)
    return fns


def _tool_is_guarded(tool: Any) -> bool:
    return any(_is_guarded(f) for f in _tool_functions(tool))


def _tool_row(
    pool: BudgetPool,
    route: str,
    t0: float,
    outcome: str,
    detail: Mapping[str, Any] | None,
) -> None:
    pool._ledger.append(
        (t0, pool, route, "tool", _TOOL_CHARGE, outcome, perf_counter() - t0, (), detail)
    )


def _output_value(output: Any) -> Any:
    """What the model saw of a tool's result: a ToolMessage's content, else the value."""
    if isinstance(output, ToolMessage):
        return output.content
    return output


def _stop_reason(err: BaseException) -> dict[str, Any]:
    info: dict[str, Any] = {"error.type": type(err).__name__, "message": str(err)}
    if isinstance(err, BudgetExceeded):
        info.update(
            pool=err.pool,
            dimension=err.dimension,
            limit=err.limit,
            spent=err.spent,
        )
    elif isinstance(err, CorrectionsExhausted):
        info.update(tool=err.tool, rounds=err.rounds, max_corrections=err.max_corrections)
    return info


# -- the callback handler ---------------------------------------------------------------------


@dataclass
class _LLMRun:
    settings: _LLMSettings
    info: CallInfo
    token: Token[CallInfo | None]
    span: Any
    t0: float


@dataclass
class _ToolRun:
    pool: BudgetPool
    name: str
    route: str
    t0: float
    t0_ns: int
    claim: ToolClaim
    token: Token[ToolClaim | None]
    call_id: Any


class BudgetCallbackHandler(BaseCallbackHandler):
    """Charge every LangChain model and tool call to the active `BudgetPool`, before it runs.

    Attach it once: `graph.invoke(inputs, config={"callbacks": [BudgetCallbackHandler()]})`
    inside `with ag.BudgetPool(...):`. Children (sub-graphs, sub-agents, tools, parallel tool
    calls) inherit it through the config. It is a synchronous handler on purpose: LangChain
    honours `raise_error` for sync handlers on both `invoke` and `ainvoke`, while errors of an
    async handler are logged and swallowed for sync tools.

    Args:
        pool: a fixed pool to charge; default: the pool active where the call starts (else
            the configured default pool, else `NoActivePool`: fail closed).
        route: route name for model calls (default: the model's name).
        loop_limit: identical tool calls allowed per run (default: the pool's setting).
        tools: optional, the agent's LangChain tools: the handler then leaves the tools whose
            function is decorated with `@ag.tool_call` to their decorator entirely (argument
            validation before the charge). Without it, the handler charges every tool before
            its body, and an `@ag.tool_call` function of the same name inside the body skips
            its own charge (charged once either way).

    Raises (out of `invoke`, unchanged): `BudgetExceeded` / `LoopDetected` before a refused
    call starts, `NoActivePool`, `UnknownPrice`. Thread-safe: per-call state is keyed by the
    LangChain `run_id`. Cost: one dict insert and one pool charge per call.
    """

    raise_error: bool = True
    run_inline: bool = True

    def __init__(
        self,
        *,
        pool: BudgetPool | None = None,
        route: str | None = None,
        loop_limit: int | None = _UNSET,
        tools: Sequence[Any] = (),
    ) -> None:
        super().__init__()
        self.pool = pool
        self.route = route
        self._loop_limit = loop_limit
        self._llm: dict[UUID, _LLMRun] = {}
        self._tools: dict[UUID, _ToolRun] = {}
        self._lock = threading.Lock()
        self._guarded: set[str] = set()
        for tool in tools:
            name = getattr(tool, "name", None)
            if not isinstance(name, str):
                raise ConfigurationError(
                    f"BudgetCallbackHandler(tools=...): {tool!r} is not a LangChain tool (no "
                    f"name). Fix: pass the same tool objects you give the agent."
                )
            if _tool_is_guarded(tool):
                self._guarded.add(name)

    # Events this handler does not need (LangChain then skips calling it for them). Not
    # ignore_agent: LangChain uses that flag for the tool events too.
    @property
    def ignore_chain(self) -> bool:
        return True

    @property
    def ignore_retriever(self) -> bool:
        return True

    @property
    def ignore_retry(self) -> bool:
        return True

    @property
    def ignore_custom_event(self) -> bool:
        return True

    # -- model calls --------------------------------------------------------------------------

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Charge one LLM call and reserve its tokens before the provider is called."""
        self._start_llm(serialized, messages, run_id, metadata, kwargs)

    def on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Charge one LLM call (text completion model) before the provider is called."""
        self._start_llm(serialized, prompts, run_id, metadata, kwargs)

    def _start_llm(
        self,
        serialized: Mapping[str, Any] | None,
        prompt: Any,
        run_id: UUID,
        metadata: Mapping[str, Any] | None,
        kwargs: Mapping[str, Any],
    ) -> None:
        if _llm_running():
            return  # an @ag.llm_call, the middleware or an outer handler charges this call
        meta = metadata or {}
        params = kwargs.get("invocation_params") or {}
        model = _first_str(meta.get("ls_model_name"), params.get("model"), params.get("model_name"))
        name = _first_str(kwargs.get("name"), _serialized_name(serialized)) or "chat_model"
        route = self.route or model or name
        settings = _llm_settings(
            name, route, model, meta.get("ls_provider"), meta.get("ls_max_tokens"), prompt
        )
        pool = _resolve_pool(self.pool, "llm", route, name)
        reserve, mdl, estimate = _plan(settings, pool, params, ())
        reservation = pool._admit(_LLM_CHARGE, reserve, route, name, "llm")
        info = CallInfo(
            "llm", name, route, pool, reservation, model=mdl, provider=settings.provider
        )
        info.extra["reserve"] = reserve
        info.extra["estimate"] = estimate
        info.extra["langchain_run_id"] = str(run_id)
        span = _llm_span(settings, pool, mdl) if _tracing() else None
        token = _active_call.set(info)
        with self._lock:
            self._llm[run_id] = _LLMRun(settings, info, token, span, perf_counter())

    def on_llm_end(self, response: Any, *, run_id: UUID, **kwargs: Any) -> Any:
        """Settle the reservation with the usage in the response (`usage_metadata`)."""
        with self._lock:
            run = self._llm.pop(run_id, None)
        if run is None:
            return
        info = run.info
        info.duration = perf_counter() - run.t0
        _reset_active(run.token)
        info.usage = _message_usage(_first_message(response))
        _finish_llm(
            run.settings,
            info,
            response,
            info.extra["reserve"],
            info.model,
            info.extra["estimate"],
        )
        _llm_telemetry(info, run.span)
        if _call_listeners:
            _notify(info)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> Any:
        """Release the reservation of a failed model call (the call itself stays counted)."""
        with self._lock:
            run = self._llm.pop(run_id, None)
        if run is None:
            return
        info = run.info
        info.duration = perf_counter() - run.t0
        info.outcome = "error"
        _reset_active(run.token)
        assert info.reservation is not None
        info.reservation.release(outcome="error", detail={"error.type": type(error).__name__})
        _end_span(run.span, error)
        if _call_listeners:
            _notify(info)

    # -- tool calls ---------------------------------------------------------------------------

    def on_tool_start(
        self,
        serialized: dict[str, Any],
        input_str: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        inputs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Charge one tool call (loop guard included) before the tool body runs."""
        name = _first_str(_serialized_name(serialized), kwargs.get("name")) or "tool"
        call_id = kwargs.get("tool_call_id")
        if call_id is not None and call_id == _tool_charged_by.get():
            return  # AgentGuardMiddleware charged this call
        if name in self._guarded:
            return  # tools= says an @ag.tool_call function runs here: its decorator charges
        pool = _resolve_pool(self.pool, "tool", name, name)
        arguments = inputs if isinstance(inputs, dict) else {"input": input_str}
        loop_limit = pool._loop_limit if self._loop_limit is _UNSET else self._loop_limit
        pool._charge_tool(name, name, (), arguments, loop_limit)
        # An @ag.tool_call function of the same name in the body takes this claim instead
        # of charging again (the body runs in a copy of this context).
        claim = ToolClaim(name)
        token = _tool_claim.set(claim)
        with self._lock:
            self._tools[run_id] = _ToolRun(
                pool, name, name, perf_counter(), time_ns(), claim, token, call_id
            )

    def _end_tool(self, run_id: UUID, error: BaseException | None, output: Any) -> None:
        with self._lock:
            run = self._tools.pop(run_id, None)
        if run is None:
            return
        try:
            _tool_claim.reset(run.token)
        except ValueError:  # ended in another context than it started: nothing to undo here
            pass
        if run.claim.taken:
            return  # the decorator wrote the row, the span and the provenance of this call
        outcome = "ok" if error is None else "error"
        detail = None if error is None else {"error.type": type(error).__name__}
        _tool_row(run.pool, run.route, run.t0, outcome, detail)
        if _tracing():
            span = _tool_span(run.name, run.route, run.pool, start_time=run.t0_ns)
            if isinstance(run.call_id, str):
                span.set_attribute(telemetry.ATTR.GEN_AI_TOOL_CALL_ID, run.call_id)
            _end_span(span, error)
        if error is None and run.name in _provenance_sources:
            _record_provenance(run.pool, run.name, _output_value(output))
        if _call_listeners:
            _notify(
                CallInfo(
                    "tool",
                    run.name,
                    run.route,
                    run.pool,
                    duration=perf_counter() - run.t0,
                    outcome=outcome,
                )
            )

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> Any:
        """Write the tool's ledger row and keep its output for `Verbatim` provenance."""
        self._end_tool(run_id, None, output)

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> Any:
        """Write the failed tool's ledger row (its call stays counted)."""
        self._end_tool(run_id, error, None)

    @property
    def in_flight(self) -> int:
        """Model and tool calls started and not yet ended (0 once a run is over)."""
        with self._lock:
            return len(self._llm) + len(self._tools)


def _estimate_prompt(prompts: Any) -> int:
    """Input tokens of LangChain prompts (lists of messages, or strings): 4 characters a token."""
    total = 0
    for prompt in prompts:
        items = [prompt] if isinstance(prompt, str) else prompt
        for item in items:
            content = item if isinstance(item, str) else getattr(item, "content", None)
            if isinstance(content, str):
                total += len(content) // 4 + 1
            elif content is not None:
                total += _estimate_text_tokens(content)
    return total


def _llm_settings(
    name: str, route: str, model: str | None, provider: Any, max_tokens: Any, prompts: Any
) -> _LLMSettings:
    """How to reserve for one model call: `max_tokens` from the model, input from the prompt
    (unless `ag.configure_route(route, input_tokens=...)` says otherwise)."""
    rs = _config.get_config().routes.get(route)
    estimate = None if rs is not None and rs.input_tokens else _estimate_prompt(prompts)
    return _LLMSettings(
        name=name,
        route=route,
        model=model,
        provider=provider if isinstance(provider, str) and provider else None,
        max_tokens=max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else None,
        input_tokens=estimate or None,
        usage=None,
    )


def _first_str(*values: Any) -> str | None:
    for value in values:
        if isinstance(value, str) and value:
            return value
    return None


def _serialized_name(serialized: Mapping[str, Any] | None) -> str | None:
    if not serialized:
        return None
    name = serialized.get("name")
    if isinstance(name, str):
        return name
    ident = serialized.get("id")
    if isinstance(ident, list) and ident and isinstance(ident[-1], str):
        return ident[-1]
    return None


def _reset_active(token: Token[CallInfo | None]) -> None:
    """Undo the handler's `current_call()` marker; LangChain ends a model run in the context
    it started it in, except when a stream is consumed across contexts: then clear it here."""
    try:
        _active_call.reset(token)
    except ValueError:
        _active_call.set(None)


# -- the create_agent middleware --------------------------------------------------------------


class AgentGuardMiddleware(AgentMiddleware[AgentState[Any], Any, Any]):
    """Budgets and argument validation for `langchain.agents.create_agent`.

    `create_agent(model, tools, middleware=[..., AgentGuardMiddleware()])`, run inside
    `with ag.BudgetPool(...):`. Put it LAST in the list (innermost), so that every attempt
    of a retry middleware placed before it is charged as a call of its own.

    - Model calls: charge `llm_calls=1` and reserve tokens (and cost when limited) before the
      model runs; settle from the `AIMessage.usage_metadata`; sets `ag.current_call()` while
      the model runs, so an instrumented SDK or the callback handler does not charge it again.
    - Tool calls: validate the arguments against the validators annotated on the tool
      function (a rejected call goes back to the model as an error `ToolMessage` with
      `ToolArgumentError.model_message`, for a bounded number of rounds), then charge
      `tool_calls=1` with the loop guard. A tool decorated with `@ag.tool_call` is charged
      and validated by its decorator instead, and its `ToolArgumentError` is handed back the
      same way.
    - A spent budget (`BudgetExceeded`, `LoopDetected`) or `CorrectionsExhausted`:
      `exit_behavior="error"` (default) raises it out of `invoke`; `"end"` gives each
      refused tool call an error `ToolMessage` and ends the run with a final `AIMessage`
      explaining the stop (both carry `response_metadata["agentguard_stop"]`), the way
      LangChain's `ToolCallLimitMiddleware(exit_behavior="end")` does. Either way the pool is
      stopped (every later charge is refused) and its stop listeners (dead letters) ran.
      A run whose pool is stopped cannot finish quietly: if a retry middleware or a
      `ToolNode` error handler swallowed the refusal, the end of the run raises it again
      ("error") or appends the explanation ("end").

    Args:
        pool: a fixed pool to charge; default: the pool active when each call starts.
        exit_behavior: "error" or "end" (see above).
        route: route name for model calls (default: the model's name).
        max_corrections: rejected argument rounds allowed per run for tools validated here
            (default: 3 when the tool has validators).
        loop_limit: identical tool calls allowed per run (default: the pool's setting).

    Thread-safe; one instance can serve many concurrent runs (state lives in the pool and
    the graph state, never on the instance).
    """

    def __init__(
        self,
        *,
        pool: BudgetPool | None = None,
        exit_behavior: ExitBehavior = "error",
        route: str | None = None,
        max_corrections: int | None = None,
        loop_limit: int | None = _UNSET,
    ) -> None:
        super().__init__()
        if exit_behavior not in ("error", "end"):
            raise ConfigurationError(
                f"AgentGuardMiddleware(exit_behavior={exit_behavior!r}): expected 'error' "
                f"(raise out of invoke) or 'end' (end the run with a final message)."
            )
        self.pool = pool
        self.exit_behavior: ExitBehavior = exit_behavior
        self.route = route
        self.max_corrections = max_corrections
        self._loop_limit = loop_limit
        self._guards: dict[int, tuple[Any, Any]] = {}
        self._guards_lock = threading.Lock()

    # -- stop handling ------------------------------------------------------------------------

    def _final_message(self, err: BaseException) -> AIMessage:
        return AIMessage(
            content=f"agentguard stopped this run: {err}",
            response_metadata={STOP_METADATA_KEY: _stop_reason(err)},
        )

    def _stop_tool_message(self, request: ToolCallRequest, err: BaseException) -> ToolMessage:
        if isinstance(err, CorrectionsExhausted):
            text = (
                f"The call to tool `{err.tool}` was not executed and the run is stopping: "
                f"the arguments were rejected {err.rounds} times. Do not call more tools."
            )
        else:
            text = (
                "This tool call was not executed: the run's budget is spent and the run is "
                "stopping. Do not call more tools."
            )
        return ToolMessage(
            content=text,
            tool_call_id=request.tool_call["id"],
            name=request.tool_call["name"],
            status="error",
            response_metadata={STOP_METADATA_KEY: _stop_reason(err)},
        )

    def _record_end(self, err: BaseException, where: str) -> None:
        record_event(
            "agent_stop",
            outcome="ended",
            route=self.route,
            guard_id=f"budget:{err.pool}" if isinstance(err, BudgetExceeded) else None,
            detail={"where": where, "error.type": type(err).__name__},
        )

    def _pending_stop(self, state: Mapping[str, Any]) -> BaseException | None:
        """The refusal that ends this run: a stopped pool, or a stop marker from a tool."""
        pool = self.pool or _current.get()
        if pool is None:
            pool = _config.get_config().default_pool
        if pool is not None:
            first = pool.stop_error
            if first is not None:
                return first
        messages = state.get("messages") or []
        for message in reversed(messages):
            if isinstance(message, AIMessage):
                break
            if isinstance(message, ToolMessage):
                reason = message.response_metadata.get(STOP_METADATA_KEY)
                if reason is not None:
                    return _MarkedStop(reason)
        return None

    @hook_config(can_jump_to=["end"])
    def before_model(self, state: AgentState[Any], runtime: Runtime[Any]) -> dict[str, Any] | None:
        """With exit_behavior="end": jump to the end once the budget is spent."""
        if self.exit_behavior != "end":
            return None
        err = self._pending_stop(state)
        if err is None:
            return None
        self._record_end(err, "before_model")
        return {"jump_to": "end", "messages": [self._final_message(err)]}

    @hook_config(can_jump_to=["end"])
    async def abefore_model(
        self, state: AgentState[Any], runtime: Runtime[Any]
    ) -> dict[str, Any] | None:
        return self.before_model(state, runtime)

    def after_agent(self, state: AgentState[Any], runtime: Runtime[Any]) -> dict[str, Any] | None:
        """A run whose pool stopped never ends quietly, even if something swallowed the error."""
        err = self._pending_stop(state)
        if err is None:
            return None
        if self.exit_behavior == "error":
            if isinstance(err, _MarkedStop):
                return None  # a correction stop already raised; nothing was swallowed
            pool = self.pool or _current.get()
            raise _restate_stop(pool, self.route) if pool is not None else err
        messages = state.get("messages") or []
        last = messages[-1] if messages else None
        if isinstance(last, AIMessage) and STOP_METADATA_KEY in last.response_metadata:
            return None
        self._record_end(err, "after_agent")
        return {"messages": [self._final_message(err)]}

    async def aafter_agent(
        self, state: AgentState[Any], runtime: Runtime[Any]
    ) -> dict[str, Any] | None:
        return self.after_agent(state, runtime)

    # -- model calls --------------------------------------------------------------------------

    def _start_model(self, request: ModelRequest[Any]) -> _LLMRun | AIMessage | None:
        if _llm_running():
            return None
        model = request.model
        ls: Mapping[str, Any] = model._get_ls_params(**request.model_settings)
        model_name = _first_str(ls.get("ls_model_name"))
        name = type(model).__name__
        route = self.route or model_name or name
        messages: list[Any] = list(request.messages)
        if request.system_message is not None:
            messages.insert(0, request.system_message)
        settings = _llm_settings(
            name, route, model_name, ls.get("ls_provider"), ls.get("ls_max_tokens"), [messages]
        )
        pool = _resolve_pool(self.pool, "llm", route, name)
        reserve, mdl, estimate = _plan(settings, pool, request.model_settings, ())
        try:
            reservation = pool._admit(_LLM_CHARGE, reserve, route, name, "llm")
        except BudgetExceeded as err:
            if self.exit_behavior == "error":
                raise
            self._record_end(err, "model")
            return self._final_message(err)
        info = CallInfo(
            "llm", name, route, pool, reservation, model=mdl, provider=settings.provider
        )
        info.extra["reserve"] = reserve
        info.extra["estimate"] = estimate
        span = _llm_span(settings, pool, mdl) if _tracing() else None
        token = _active_call.set(info)
        return _LLMRun(settings, info, token, span, perf_counter())

    @staticmethod
    def _model_failed(run: _LLMRun, exc: BaseException) -> None:
        info = run.info
        info.duration = perf_counter() - run.t0
        info.outcome = "error"
        assert info.reservation is not None
        info.reservation.release(outcome="error", detail={"error.type": type(exc).__name__})
        _end_span(run.span, exc)
        if _call_listeners:
            _notify(info)

    @staticmethod
    def _model_done(run: _LLMRun, result: Any) -> None:
        info = run.info
        info.duration = perf_counter() - run.t0
        message = _response_message(result)
        info.usage = _message_usage(message)
        _finish_llm(
            run.settings,
            info,
            message,
            info.extra["reserve"],
            info.model,
            info.extra["estimate"],
        )
        _llm_telemetry(info, run.span)
        if _call_listeners:
            _notify(info)

    def wrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], ModelResponse[Any]],
    ) -> Any:
        """Charge the model call before it runs; settle its token usage after."""
        run = self._start_model(request)
        if run is None:
            return handler(request)
        if isinstance(run, AIMessage):
            return run
        try:
            result = handler(request)
        except BaseException as exc:
            self._model_failed(run, exc)
            raise
        finally:
            _reset_active(run.token)
        self._model_done(run, result)
        return result

    async def awrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]],
    ) -> Any:
        """Async `wrap_model_call`."""
        run = self._start_model(request)
        if run is None:
            return await handler(request)
        if isinstance(run, AIMessage):
            return run
        try:
            result = await handler(request)
        except BaseException as exc:
            self._model_failed(run, exc)
            raise
        finally:
            _reset_active(run.token)
        self._model_done(run, result)
        return result

    # -- tool calls ---------------------------------------------------------------------------

    def _guard_for(self, tool: Any, name: str) -> Any:
        """The compiled argument guard of a tool's function (None: no validators); cached.

        For an `@ag.tool_call` function the decorator's name, route and `max_corrections`
        apply, so its correction rounds are the same count as the decorator's own.
        """
        fns = _tool_functions(tool)
        if not fns:
            return None
        fn = fns[0]
        cached = self._guards.get(id(fn))
        if cached is not None and cached[0] is fn:
            return cached[1]
        meta = getattr(fn, "__agentguard__", None)
        route = name
        max_corrections = self.max_corrections
        if isinstance(meta, Mapping) and meta.get("kind") == "tool":
            name = meta.get("name") or name
            route = meta.get("route") or name
            if meta.get("max_corrections") is not None:
                max_corrections = meta["max_corrections"]
        guard = _argcheck.compile_arguments(
            fn, tool=name, route=route, max_corrections=max_corrections
        )
        with self._guards_lock:
            self._guards[id(fn)] = (fn, guard)
        return guard

    def _correction(self, request: ToolCallRequest, err: ToolArgumentError) -> ToolMessage:
        return ToolMessage(
            content=err.model_message,
            tool_call_id=request.tool_call["id"],
            name=request.tool_call["name"],
            status="error",
        )

    def _refused(self, request: ToolCallRequest, err: BaseException) -> ToolMessage:
        """exit_behavior="end": the refused tool call gets an error message with a marker."""
        if self.exit_behavior == "error":
            raise err
        return self._stop_tool_message(request, err)

    def _admit_tool(
        self, request: ToolCallRequest, kwargs: dict[str, Any]
    ) -> tuple[BudgetPool, float, Any]:
        name = request.tool_call["name"]
        pool = _resolve_pool(self.pool, "tool", name, name)
        loop_limit = pool._loop_limit if self._loop_limit is _UNSET else self._loop_limit
        pool._charge_tool(name, name, (), kwargs, loop_limit)
        span = _tool_span(name, name, pool) if _tracing() else None
        if span is not None and request.tool_call.get("id"):
            span.set_attribute(telemetry.ATTR.GEN_AI_TOOL_CALL_ID, request.tool_call["id"])
        return pool, perf_counter(), span

    def _tool_done(
        self, request: ToolCallRequest, pool: BudgetPool, t0: float, span: Any, result: Any
    ) -> None:
        name = request.tool_call["name"]
        failed = isinstance(result, ToolMessage) and result.status == "error"
        _tool_row(pool, name, t0, "error" if failed else "ok", None)
        if span is not None:
            span.end()
        if name in _provenance_sources and isinstance(result, ToolMessage) and not failed:
            _record_provenance(pool, name, result.content)
        if _call_listeners:
            _notify(
                CallInfo(
                    "tool",
                    name,
                    name,
                    pool,
                    duration=perf_counter() - t0,
                    outcome="error" if failed else "ok",
                )
            )

    def _tool_failed(
        self,
        request: ToolCallRequest,
        pool: BudgetPool,
        t0: float,
        span: Any,
        exc: BaseException,
    ) -> None:
        name = request.tool_call["name"]
        _tool_row(pool, name, t0, "error", {"error.type": type(exc).__name__})
        _end_span(span, exc)
        if _call_listeners:
            _notify(
                CallInfo("tool", name, name, pool, duration=perf_counter() - t0, outcome="error")
            )

    def _prepare_tool(self, request: ToolCallRequest) -> tuple[Any, BudgetPool | None, bool]:
        """(argument guard or None, pool when the guard needs one, decorated?)."""
        tool = request.tool
        name = request.tool_call["name"]
        guard = self._guard_for(tool, name)
        pool = _resolve_pool(self.pool, "tool", name, name) if guard is not None else None
        return guard, pool, _tool_is_guarded(tool)

    def wrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], ToolMessage | Command[Any]],
    ) -> ToolMessage | Command[Any]:
        """Validate the arguments, charge the call, then run the tool."""
        if request.tool is None:
            return handler(request)  # unknown tool: ToolNode answers with its own error
        admitted: tuple[BudgetPool, float, Any] | None = None
        try:
            guard, pool, decorated = self._prepare_tool(request)
            if guard is not None:
                guard.check(pool, (), dict(request.tool_call["args"]))
            if not decorated:
                admitted = self._admit_tool(request, request.tool_call["args"])
        except ToolArgumentError as err:
            return self._correction(request, err)
        except (BudgetExceeded, CorrectionsExhausted) as err:
            return self._refused(request, err)
        marker = _tool_charged_by.set(request.tool_call.get("id"))
        reuse = _reuse_records.set(guard is not None)
        try:
            result = handler(request)
        except ToolArgumentError as err:  # raised by an @ag.tool_call body
            return self._correction(request, err)
        except (BudgetExceeded, CorrectionsExhausted) as err:
            if admitted is not None:
                self._tool_failed(request, *admitted, err)
            return self._refused(request, err)
        except BaseException as exc:
            if admitted is not None:
                self._tool_failed(request, *admitted, exc)
            raise
        finally:
            _reuse_records.reset(reuse)
            _tool_charged_by.reset(marker)
        if admitted is not None:
            self._tool_done(request, *admitted, result)
        return result

    async def awrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], Awaitable[ToolMessage | Command[Any]]],
    ) -> ToolMessage | Command[Any]:
        """Async `wrap_tool_call` (async lookups of the validators are awaited)."""
        if request.tool is None:
            return await handler(request)
        admitted: tuple[BudgetPool, float, Any] | None = None
        try:
            guard, pool, decorated = self._prepare_tool(request)
            if guard is not None:
                await guard.acheck(pool, (), dict(request.tool_call["args"]))
            if not decorated:
                admitted = self._admit_tool(request, request.tool_call["args"])
        except ToolArgumentError as err:
            return self._correction(request, err)
        except (BudgetExceeded, CorrectionsExhausted) as err:
            return self._refused(request, err)
        marker = _tool_charged_by.set(request.tool_call.get("id"))
        reuse = _reuse_records.set(guard is not None)
        try:
            result = await handler(request)
        except ToolArgumentError as err:
            return self._correction(request, err)
        except (BudgetExceeded, CorrectionsExhausted) as err:
            if admitted is not None:
                self._tool_failed(request, *admitted, err)
            return self._refused(request, err)
        except BaseException as exc:
            if admitted is not None:
                self._tool_failed(request, *admitted, exc)
            raise
        finally:
            _reuse_records.reset(reuse)
            _tool_charged_by.reset(marker)
        if admitted is not None:
            self._tool_done(request, *admitted, result)
        return result


class _MarkedStop(Exception):
    """A stop recorded on a ToolMessage (e.g. corrections exhausted) found in the state."""

    def __init__(self, reason: Mapping[str, Any]) -> None:
        self.reason = dict(reason)
        super().__init__(str(self.reason.get("message", "the run was stopped by agentguard")))


def _restate_stop(pool: BudgetPool, route: str | None) -> BudgetExceeded:
    """A fresh 'pool is stopped' error naming the first refusal (for the end of a run)."""
    for p in pool._chain:
        if p._stopped is not None:
            return pool._already_stopped(p, route, "AgentGuardMiddleware")
    raise ConfigurationError(f"pool {pool.name!r} is not stopped")  # pragma: no cover


def _first_message(response: Any) -> Any:
    """The message of an LLMResult's first generation (None for text-completion models)."""
    generations = getattr(response, "generations", None)
    if generations and generations[0]:
        return getattr(generations[0][0], "message", None)
    return None


def _message_usage(message: Any) -> Usage | None:
    """Fast path: the usage of a LangChain AIMessage from its `usage_metadata`.

    None when a user usage extractor is configured (it must see the response) or the message
    carries no usage; `_finish_llm` then reads the response the general way.
    """
    if message is None or _config.get_config().usage_extractors:
        return None
    meta = getattr(message, "usage_metadata", None)
    if not meta:
        return None
    response_meta = getattr(message, "response_metadata", None) or {}
    model = response_meta.get("model_name") or response_meta.get("model")
    return _from_usage_block(meta, model if isinstance(model, str) else None, None)


def _response_message(result: Any) -> Any:
    """The AIMessage of a model response (ModelResponse, ExtendedModelResponse or AIMessage)."""
    inner = getattr(result, "model_response", None)
    if inner is not None:
        result = inner
    messages: Sequence[AnyMessage] | None = getattr(result, "result", None)
    if messages is None:
        return result
    for message in messages:
        if isinstance(message, AIMessage):
            return message
    return messages[0] if messages else result
