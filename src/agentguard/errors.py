"""The one exception tree of agentguard.

Every error derives from :class:`AgentGuardError`, and every message says what was wrong,
where (pool, tool, argument, route, function), what was received, what was expected and how
to fix it. The tree follows what a caller wants to catch:

```
AgentGuardError
├── ConfigurationError          a setting or argument of agentguard itself is wrong
│   └── UnknownPrice            a cost limit is set and a model's price is unknown
├── BudgetError                 the run may not go on spending
│   ├── BudgetExceeded          a limit would be crossed (the pool is now stopped)
│   │   └── LoopDetected        the same tool with the same arguments, too many times
│   ├── BudgetUnavailable       the pool's state cannot be read (backend down, key gone)
│   └── NoActivePool            a guarded call with no pool to charge
├── ToolArgumentError           the model sent arguments that are valid JSON and nonsense
├── CorrectionsExhausted        the model did not fix its arguments within the allowed rounds
├── LookupFailed                a `Resolves` lookup raised: infrastructure, not the model's fault
├── ContractViolation           a function returned None / the wrong shape / an empty result
├── ContentAnomaly              an output looks wrong (empty, too short, error text, ...)
├── RetriesExhausted            every attempt failed; carries each attempt's outcome
└── BypassError                 a guard bypass entry is missing a field or is malformed
```

`BudgetExceeded`, `NoActivePool`, `BudgetUnavailable` and `CorrectionsExhausted` are
*terminal*: retry wrappers never retry them (see :data:`TERMINAL_ERRORS`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
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
    "BypassError",
    "StoreError",
    "TERMINAL_ERRORS",
]


class AgentGuardError(Exception):
    """Base of every exception agentguard raises."""


class ConfigurationError(AgentGuardError, ValueError):
    """A setting or an argument given to agentguard itself is wrong."""


class UnknownPrice(ConfigurationError):
    """A pool limits `cost_usd` and the price of the call's model is unknown.

    An unknown cost is never free: configure a price function (`ag.configure(price=...)`),
    install the `agentguard[prices]` extra, or set `ag.configure(fallback_price=...)`.
    """

    def __init__(self, message: str, *, model: str | None, route: str | None) -> None:
        super().__init__(message)
        self.model = model
        self.route = route


class BudgetError(AgentGuardError):
    """The run may not go on spending: base of the budget refusals."""


def _fmt(value: float) -> str:
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.6g}"
    return str(int(value)) if isinstance(value, float) else str(value)


class BudgetExceeded(BudgetError):
    """A call would cross a pool's limit, so it did not start; the pool is now stopped.

    Attributes name everything a report needs: the pool that refused, the dimension, its
    limit, what was spent and reserved, what the call asked for, and the call itself.
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        pool: str,
        dimension: str,
        limit: float | None,
        spent: float,
        requested: float,
        reserved: float = 0.0,
        route: str | None = None,
        function: str | None = None,
        charged_pool: str | None = None,
        stopped_earlier: bool = False,
    ) -> None:
        self.pool = pool
        self.dimension = dimension
        self.limit = limit
        self.spent = spent
        self.reserved = reserved
        self.requested = requested
        self.route = route
        self.function = function
        self.charged_pool = charged_pool or pool
        self.stopped_earlier = stopped_earlier
        super().__init__(message or self._default_message())

    def _call_text(self) -> str:
        parts = []
        if self.function:
            parts.append(f"function {self.function!r}")
        if self.route:
            parts.append(f"route {self.route!r}")
        return ", ".join(parts) if parts else "a direct ag.charge()"

    def _default_message(self) -> str:
        call = self._call_text()
        if self.dimension == "wall_seconds":
            return (
                f"budget pool {self.pool!r} is past its wall-clock limit of "
                f"{_fmt(self.limit or 0)} s ({_fmt(self.spent)} s elapsed): the call from {call} "
                f"was refused before it started. Expected: the run finishes within its "
                f"wall_seconds. Fix: give the pool more wall_seconds, or make the run faster."
            )
        reserved = f" + {_fmt(self.reserved)} reserved by calls in flight" if self.reserved else ""
        head = (
            f"budget pool {self.pool!r} would exceed its {self.dimension} limit of "
            f"{_fmt(self.limit or 0)}: {_fmt(self.spent)} spent{reserved}, and the call from "
            f"{call} asked for {_fmt(self.requested)} more. The call was refused before it "
            f"started and the pool is now stopped: every later charge on it or a child pool "
            f"is refused too."
        )
        if self.charged_pool != self.pool:
            head += f" (the call was charged to child pool {self.charged_pool!r})"
        return head + (
            f" Fix: raise {self.dimension}= on BudgetPool {self.pool!r} if this run "
            f"legitimately needs more, or find the loop that spends it (see pool.tree())."
        )


class LoopDetected(BudgetExceeded):
    """The same tool was called with the same arguments more than the loop limit allows."""

    def __init__(
        self,
        *,
        pool: str,
        tool: str,
        arguments: str,
        count: int,
        loop_limit: int,
        route: str | None = None,
    ) -> None:
        self.tool = tool
        self.arguments = arguments
        self.count = count
        self.loop_limit = loop_limit
        message = (
            f"loop detected in budget pool {pool!r}: tool {tool!r} was called with the same "
            f"arguments {arguments} {count} times (the limit is {loop_limit} identical calls). "
            f"The call was refused and the pool is now stopped. Expected: a different argument "
            f"or a different next step after an unhelpful result. Fix: make the agent change "
            f"course on empty results, or set loop_limit=None on @ag.tool_call({tool!r}) for a "
            f"polling tool that legitimately repeats."
        )
        super().__init__(
            message,
            pool=pool,
            dimension="loop",
            limit=float(loop_limit),
            spent=float(count - 1),
            requested=1.0,
            route=route,
            function=tool,
        )


class BudgetUnavailable(BudgetError):
    """The pool's state cannot be read or written (backend down, timed out, key vanished).

    Fail closed: no call proceeds on a pool whose state is unknown.
    """

    def __init__(self, message: str, *, pool: str | None = None, backend: str | None = None):
        super().__init__(message)
        self.pool = pool
        self.backend = backend


class NoActivePool(BudgetError):
    """A guarded call ran with no active `BudgetPool` and no process default pool."""

    def __init__(self, *, kind: str, route: str | None, function: str | None) -> None:
        self.kind = kind
        self.route = route
        self.function = function
        where = f"{kind} {function!r}" + (f" (route {route!r})" if route else "")
        super().__init__(
            f"no active BudgetPool for {where}: agentguard fails closed, so the call did not "
            f"start. Expected: the call runs inside `with ag.BudgetPool(...):` (or "
            f"`async with`). Fix: wrap the run in a BudgetPool; in a raw threading.Thread or a "
            f"callback that lost the context, pass `pool.bind(fn)` instead of `fn`; or set a "
            f"process default with `ag.configure(default_pool=ag.BudgetPool(...))`."
        )


@dataclass(frozen=True)
class ArgumentProblem:
    """One wrong argument: which, what was received, why it is wrong, what is expected."""

    argument: str
    received: Any
    reason: str
    expected: str
    candidates: tuple[str, ...] = ()

    def received_repr(self, limit: int = 120) -> str:
        text = repr(self.received)
        return text if len(text) <= limit else text[: limit - 3] + "..."


class ToolArgumentError(AgentGuardError):
    """A tool's arguments parsed fine but mean nothing; the model can correct them.

    `problems` lists every bad argument of the call (not only the first), and
    `model_message` is written for the model: each argument, what it sent, why it is wrong,
    what to send instead, and how many correction rounds remain.
    """

    def __init__(
        self,
        *,
        tool: str,
        problems: Sequence[ArgumentProblem],
        rounds_left: int | None = None,
    ) -> None:
        self.tool = tool
        self.problems = tuple(problems)
        self.rounds_left = rounds_left
        names = ", ".join(p.argument for p in self.problems)
        lines = [
            f"  - {p.argument}: received {p.received_repr()}; {p.reason}; expected {p.expected}"
            for p in self.problems
        ]
        super().__init__(
            f"tool {tool!r} rejected {len(self.problems)} argument(s) ({names}) before its "
            f"body ran:\n" + "\n".join(lines)
        )

    @property
    def model_message(self) -> str:
        """The correction request for the model, quoting what it sent."""
        lines = [
            f"The call to tool `{self.tool}` was not executed because "
            f"{len(self.problems)} argument(s) are not usable values:"
        ]
        for p in self.problems:
            line = (
                f"- `{p.argument}`: you sent {p.received_repr()}. {p.reason[:1].upper()}"
                f"{p.reason[1:]}. Send instead: {p.expected}."
            )
            if p.candidates:
                shown = ", ".join(repr(c) for c in p.candidates[:5])
                line += f" Values you may have meant: {shown}."
            lines.append(line)
        if self.rounds_left is not None:
            if self.rounds_left > 0:
                lines.append(
                    f"Call `{self.tool}` again with corrected arguments. "
                    f"{self.rounds_left} correction round(s) remain; after that the run stops."
                )
            else:
                lines.append(
                    f"This was the last correction round: another invalid call to "
                    f"`{self.tool}` stops the run."
                )
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """The structured problems (for logs or a tool-result payload)."""
        return {
            "tool": self.tool,
            "rounds_left": self.rounds_left,
            "problems": [
                {
                    "argument": p.argument,
                    "received": p.received_repr(),
                    "reason": p.reason,
                    "expected": p.expected,
                    "candidates": list(p.candidates),
                }
                for p in self.problems
            ],
        }


class CorrectionsExhausted(AgentGuardError):
    """The model kept sending invalid arguments past `max_corrections`: a hard failure."""

    def __init__(
        self, *, tool: str, rounds: int, max_corrections: int, last: ToolArgumentError
    ) -> None:
        self.tool = tool
        self.rounds = rounds
        self.max_corrections = max_corrections
        self.last = last
        super().__init__(
            f"tool {tool!r}: the model sent invalid arguments {rounds} times in this run, "
            f"past max_corrections={max_corrections}; the run stops here instead of looping. "
            f"Last problems: {'; '.join(f'{p.argument}: {p.reason}' for p in last.problems)}. "
            f"Fix: improve the prompt or the tool's description so the model can find the "
            f"values, or raise max_corrections on @ag.tool_call({tool!r})."
        )


class LookupFailed(AgentGuardError):
    """A `Resolves` lookup raised (or could not run): an infrastructure error, not a model error.

    The model is not asked to correct anything: its argument may be fine, the lookup is not.
    The lookup's own exception is attached as `__cause__`. Not counted as a correction round.
    """

    def __init__(
        self, message: str, *, tool: str | None, argument: str, what: str, lookup: str
    ) -> None:
        super().__init__(message)
        self.tool = tool
        self.argument = argument
        self.what = what
        self.lookup = lookup


class ContractViolation(AgentGuardError):
    """A function returned something its contract forbids, named at the producer."""

    def __init__(self, *, function: str, expected: str, received: Any, reason: str) -> None:
        self.function = function
        self.expected = expected
        self.received = received
        self.reason = reason
        text = repr(received)
        if len(text) > 200:
            text = text[:197] + "..."
        super().__init__(
            f"contract of {function!r} violated: {reason}. Expected: {expected}. Received: "
            f"{text}. The error is raised at the producer, not where the value would have "
            f"been used. Fix: make {function!r} raise on failure instead of returning a "
            f"placeholder, or correct its return annotation."
        )


class ContentAnomaly(AgentGuardError):
    """An output passed every exception check but its content is wrong."""

    def __init__(
        self,
        message: str,
        *,
        route: str | None = None,
        check: str | None = None,
        reasons: Sequence[str] = (),
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.route = route
        self.check = check
        self.reasons = tuple(reasons)
        self.details = dict(details or {})


class RetriesExhausted(AgentGuardError):
    """Every attempt failed; `attempts` holds each attempt's outcome and reason."""

    def __init__(self, message: str, *, route: str | None, attempts: Sequence[Any]) -> None:
        super().__init__(message)
        self.route = route
        self.attempts = tuple(attempts)


class BypassError(ConfigurationError):
    """A bypass entry is missing its owner, reason or expiry, or is malformed."""


class StoreError(AgentGuardError):
    """The run store cannot be opened, read or written (path, permissions, schema, disk)."""


TERMINAL_ERRORS: tuple[type[BaseException], ...] = (
    BudgetError,
    CorrectionsExhausted,
)
"""Errors that no retry may retry: the run is over, not unlucky."""
