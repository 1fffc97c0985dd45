"""Every span, attribute and metric name agentguard emits, in one place.

Only `opentelemetry-api` is used: the user brings the SDK. When no tracer provider is
configured the hot path creates no span objects (`tracing_enabled()` is checked first), and
instruments are created lazily on first use. The full list is in `docs/telemetry.md`.
"""

from __future__ import annotations

import threading
from typing import Any

from opentelemetry import metrics, trace

__all__ = [
    "INSTRUMENTATION_NAME",
    "SPAN_EXECUTE_TOOL",
    "SPAN_CHAT",
    "SPAN_RETRY",
    "SPAN_RETRY_ATTEMPT",
    "SPAN_INFERENCE",
    "EVENT_BYPASS_USED",
    "EVENT_BYPASS_EXPIRED",
    "ATTR",
    "METRIC",
    "tracing_enabled",
    "metrics_enabled",
    "get_tracer",
    "counter",
    "histogram",
]

INSTRUMENTATION_NAME = "agentguard"

SPAN_EXECUTE_TOOL = "execute_tool {tool}"
"""GenAI semantic conventions: tool execution span (INTERNAL)."""
SPAN_CHAT = "chat {model}"
"""GenAI semantic conventions: inference span `{gen_ai.operation.name} {gen_ai.request.model}`."""
SPAN_RETRY = "retry {route}"
"""One logical call under `@ag.retry`, covering every attempt and wait (INTERNAL)."""
SPAN_RETRY_ATTEMPT = "attempt {route}"
"""One attempt of a retried call, child of the `retry {route}` span (INTERNAL)."""
SPAN_INFERENCE = "{operation} {model}"
"""The same, for any operation (`chat`, `embeddings`, `text_completion`): `ag.instrument()`."""
EVENT_BYPASS_USED = "agentguard.bypass.used"
"""Span event on the current span each time a bypass lets a call through."""
EVENT_BYPASS_EXPIRED = "agentguard.bypass.expired"
"""Span event on the current span at the first hit of a guard after its bypass expired."""


class ATTR:
    """Span and metric attribute names (GenAI conventions where they name a thing)."""

    GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
    GEN_AI_PROVIDER_NAME = "gen_ai.provider.name"
    GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
    GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
    GEN_AI_TOOL_NAME = "gen_ai.tool.name"
    GEN_AI_TOOL_CALL_ID = "gen_ai.tool.call.id"
    GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
    GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
    GEN_AI_TOKEN_TYPE = "gen_ai.token.type"
    ERROR_TYPE = "error.type"
    ROUTE = "agentguard.route"
    POOL = "agentguard.pool"
    RUN_ID = "agentguard.run_id"
    GUARD_ID = "agentguard.guard.id"
    DIMENSION = "agentguard.dimension"
    OUTCOME = "agentguard.outcome"
    REASON = "agentguard.reason"
    ALERT_KIND = "agentguard.alert.kind"
    COST_USD = "agentguard.cost_usd"
    USAGE_UNKNOWN = "agentguard.usage.unknown"
    ATTEMPT = "agentguard.retry.attempt"
    RESEND_COUNT = "http.request.resend_count"
    INSTRUMENTED = "agentguard.instrumented"  # true on a span ag.instrument() charged
    WAIT_SECONDS = "agentguard.retry.wait_seconds"
    RETRY_ATTEMPTS = "agentguard.retry.attempts"  # on the call span: attempts made
    RETRY_MAX_ATTEMPTS = "agentguard.retry.max_attempts"  # on the call span: allowed
    RETRY_STOP = "agentguard.retry.stop"  # why no further attempt: attempts/timeout/...
    OWNER = "agentguard.bypass.owner"
    FUNCTION = "agentguard.function"  # the producer named by a contract
    BYPASS_ENTRY = "agentguard.bypass.entry"  # the entry's guard id or pattern
    BYPASS_REASON = "agentguard.bypass.reason"
    BYPASS_TICKET = "agentguard.bypass.ticket"
    BYPASS_EXPIRES = "agentguard.bypass.expires"  # ISO 8601, UTC
    BYPASS_WOULD_HAVE = "agentguard.bypass.would_have"  # what the guard would have done
    CHECK = "agentguard.check"
    JOB = "agentguard.job"
    STATUS = "agentguard.status"


class METRIC:
    """Metric instrument names."""

    CALLS = "agentguard.calls"  # counter: guarded calls by kind, route, outcome
    REFUSALS = "agentguard.budget.refusals"  # counter: refused charges by pool, dimension
    BUDGET_UNAVAILABLE = "agentguard.budget.unavailable"  # counter: backend could not answer
    LEASE_RECLAIMS = "agentguard.budget.lease_reclaims"  # counter: reservations reclaimed
    ALERTS = "agentguard.alerts"  # counter: alerts by kind
    ALERT_HOOK_FAILURES = "agentguard.alert_hook.failures"  # counter
    USAGE_UNKNOWN = "agentguard.usage.unknown"  # counter: LLM calls whose usage was unreadable
    SDK_RETRIES = "agentguard.sdk.retries"  # counter: SDK-level retry attempts charged, by route
    TOKEN_USAGE = "gen_ai.client.token.usage"  # histogram {token}
    COST = "agentguard.cost"  # histogram, USD per call
    CORRECTIONS = "agentguard.tool.corrections"  # counter: rejected tool-argument rounds
    CONTRACT_VIOLATIONS = "agentguard.contract.violations"  # counter
    ANOMALIES = "agentguard.content.anomalies"  # counter by route, check
    RETRY_ATTEMPTS = "agentguard.retry.attempts"  # counter by route, outcome
    RETRY_CALLS_RETRIED = "agentguard.retry.calls_retried"  # counter by route
    RETRY_DURATION = "agentguard.retry.duration"  # histogram, s, after retries and backoff
    RETRY_BUDGET_EXHAUSTED = "agentguard.retry.budget_exhausted"  # counter by route
    BYPASS_USED = "agentguard.bypass.used"  # counter by guard id, owner
    STORE_ERRORS = "agentguard.store.errors"  # counter: store writes/reads that failed
    JOB_RUNS = "agentguard.job.runs"  # counter: `agentguard run` verdicts by job, status


_SLOW: Any = object()
_trace_globals: dict[str, Any] = vars(trace)
try:
    from opentelemetry.metrics import _internal as _metrics_internal

    _metrics_globals: dict[str, Any] = vars(_metrics_internal)
except ImportError:  # pragma: no cover - an API without the private module: slow path
    _metrics_globals = {}
_NO_METER_PROVIDERS = ("_ProxyMeterProvider", "NoOpMeterProvider")
_lock = threading.Lock()
_counters: dict[str, Any] = {}
_histograms: dict[str, Any] = {}

# Buckets for durations that include retries and backoff: reach 30 minutes (cron jobs too).
DURATION_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 60, 120, 300, 600, 1800,
)


def tracing_enabled() -> bool:
    """True when a real tracer provider is installed (not the API's proxy or no-op).

    Hot path: `trace.get_tracer_provider()` costs ~600 ns (it re-reads the environment), so
    the global it sets is read directly (~40 ns); older APIs without it take the slow path.
    """
    provider = _trace_globals.get("_TRACER_PROVIDER", _SLOW)
    if provider is _SLOW:
        provider = trace.get_tracer_provider()
        return not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))
    return provider is not None and not isinstance(provider, trace.NoOpTracerProvider)


def metrics_enabled() -> bool:
    """True when a real meter provider is installed.

    Hot path: like `tracing_enabled()`, reads the global the API sets (~60 ns instead of
    ~650 ns for `metrics.get_meter_provider()`); older APIs without it take the slow path.
    """
    provider = _metrics_globals.get("_METER_PROVIDER", _SLOW)
    if provider is _SLOW:
        provider = metrics.get_meter_provider()
    return provider is not None and type(provider).__name__ not in _NO_METER_PROVIDERS


_tracer_cache: tuple[Any, trace.Tracer | None] = (None, None)


def get_tracer() -> trace.Tracer:
    """agentguard's tracer, cached per installed provider.

    Cost: the SDK's `get_tracer` builds a new Tracer (~5 us) on every call; the cache makes
    it ~100 ns.
    """
    global _tracer_cache
    provider = _trace_globals.get("_TRACER_PROVIDER")
    cached_provider, tracer = _tracer_cache
    if tracer is not None and provider is not None and cached_provider is provider:
        return tracer
    tracer = trace.get_tracer(INSTRUMENTATION_NAME)
    if provider is not None:
        _tracer_cache = (provider, tracer)
    return tracer


_active_cache: tuple[Any, trace.Tracer | None] = (None, None)


def active_tracer() -> trace.Tracer | None:
    """`get_tracer()` when `tracing_enabled()`, else None: both checks in one (hot path).

    Cost: ~60 ns while the installed provider is the one last seen (one dict read, one
    identity test); the full checks run only when the provider changes.
    """
    global _active_cache
    provider = _trace_globals.get("_TRACER_PROVIDER", _SLOW)
    cached_provider, tracer = _active_cache
    if provider is cached_provider and provider is not None and provider is not _SLOW:
        return tracer
    if not tracing_enabled():
        return None
    tracer = get_tracer()
    if provider is not None and provider is not _SLOW:
        _active_cache = (provider, tracer)
    return tracer


def counter(name: str, unit: str = "1", description: str = "") -> Any:
    """A lazily created counter (safe to call on every event; cached per name)."""
    inst = _counters.get(name)
    if inst is None:
        with _lock:
            inst = _counters.get(name)
            if inst is None:
                meter = metrics.get_meter(INSTRUMENTATION_NAME)
                inst = meter.create_counter(name, unit=unit, description=description)
                _counters[name] = inst
    return inst


def histogram(
    name: str,
    unit: str = "s",
    description: str = "",
    buckets: tuple[float, ...] | None = None,
) -> Any:
    """A lazily created histogram (explicit bucket advice where the API supports it)."""
    inst = _histograms.get(name)
    if inst is None:
        with _lock:
            inst = _histograms.get(name)
            if inst is None:
                meter = metrics.get_meter(INSTRUMENTATION_NAME)
                kwargs: dict[str, Any] = {"unit": unit, "description": description}
                if buckets is not None:
                    kwargs["explicit_bucket_boundaries_advisory"] = list(buckets)
                try:
                    inst = meter.create_histogram(name, **kwargs)
                except TypeError:  # opentelemetry-api older than 1.23: no bucket advice
                    kwargs.pop("explicit_bucket_boundaries_advisory", None)
                    inst = meter.create_histogram(name, **kwargs)
                _histograms[name] = inst
    return inst
