"""agentguard: guardrails for LLM agents in production.

Every name a user needs is re-exported here; the logic lives in one module per concept.
"""

from __future__ import annotations

from . import checks, store, validators, wait
from ._config import Clock, configure, configure_route, get_config
from .alerts import Alert, on_alert, remove_alert_hook
from .backends import RedisBackend
from .budget import BudgetPool, LedgerRow, PoolSnapshot, Reservation, charge, current_pool
from .bypasses import Bypass, bypass, load_bypasses
from .calls import CallInfo, current_call, llm_call, record_usage, tool_call
from .contracts import contract
from .errors import (
    AgentGuardError,
    ArgumentProblem,
    BudgetError,
    BudgetExceeded,
    BudgetUnavailable,
    BypassError,
    CheckError,
    ConfigurationError,
    ContentAnomaly,
    ContractViolation,
    CorrectionsExhausted,
    LookupFailed,
    LoopDetected,
    NoActivePool,
    RetriesExhausted,
    StoreError,
    ToolArgumentError,
    UnknownPrice,
)
from .instrument import instrument, instrumented, uninstrument
from .retry import (
    Attempt,
    AttemptOutcome,
    RetryLoop,
    RetryStats,
    is_testing,
    render_retry_table,
    retry,
    retry_stats,
    retrying,
    set_testing,
)
from .tool_messages import tool_error_message, tool_schema
from .usage import Price, Usage, genai_price, read_usage

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "checks",
    "store",
    "wait",
    # budget
    "BudgetPool",
    "Reservation",
    "LedgerRow",
    "PoolSnapshot",
    "current_pool",
    "charge",
    "RedisBackend",
    # calls
    "llm_call",
    "tool_call",
    "record_usage",
    "current_call",
    "CallInfo",
    # validation and contracts
    "validators",
    "contract",
    "tool_error_message",
    "tool_schema",
    # SDK instrumentation
    "instrument",
    "uninstrument",
    "instrumented",
    # retries
    "retry",
    "retrying",
    "RetryLoop",
    "Attempt",
    "AttemptOutcome",
    "RetryStats",
    "retry_stats",
    "render_retry_table",
    "set_testing",
    "is_testing",
    # usage and price
    "Usage",
    "Price",
    "read_usage",
    "genai_price",
    # bypasses
    "bypass",
    "Bypass",
    "load_bypasses",
    # configuration and alerts
    "configure",
    "configure_route",
    "get_config",
    "Clock",
    "Alert",
    "on_alert",
    "remove_alert_hook",
    # errors
    "AgentGuardError",
    "ConfigurationError",
    "UnknownPrice",
    "BudgetError",
    "BudgetExceeded",
    "LoopDetected",
    "BudgetUnavailable",
    "NoActivePool",
    "ArgumentProblem",
    "ToolArgumentError",
    "CorrectionsExhausted",
    "LookupFailed",
    "ContractViolation",
    "ContentAnomaly",
    "RetriesExhausted",
    "CheckError",
    "BypassError",
    "StoreError",
]

from .store import _configure_from_env

_configure_from_env()
