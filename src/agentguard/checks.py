"""Content checks: an output that raised nothing can still be wrong.

A check looks at an output (text, bytes, a file path, a JSON value) and its duration, and
returns a `CheckResult`: ok, or anomalies with reasons. The same checks serve the retry
wrapper (an anomaly is a retry trigger), `@ag.contract` and `agentguard run` (cron jobs).

- `NotEmpty()`: None, "", whitespace, `[]`, `{}`, `{"results": []}`, `<no rows>`, a 0-byte or
  missing file.
- `LengthVsMedian(min_ratio=0.3)`: shorter than 30% of the route's or job's typical length.
- `NoErrorKeywords()`: `Traceback`, `ERROR`, `rate limit`, `quota` in an output that "worked".
- `ExpectedPattern(regex)`: a line that must be there (e.g. `^Summary:`).
- `DurationVsMedian(max_ratio=5)`: far slower (or, optionally, faster) than usual.

Checks compose with `&`. A check that needs history and has too little says so in
`CheckResult.notes` (and `insufficient_history`) instead of passing silently. History comes
from a `History` (the store's, or the in-process `MemoryHistory` by default); only outputs that
passed are added to it, so a broken run cannot drag the median down.

For outputs too large to hold (a job's 10 GB stdout), every check offers `scanner()`: an
incremental `Scanner` fed with chunks (bounded memory), evaluated at the end.
"""

from __future__ import annotations

import bisect
import json
import math
import re
import statistics
import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

from .errors import ConfigurationError, ContentAnomaly

__all__ = [
    "Anomaly",
    "CheckResult",
    "CheckContext",
    "History",
    "MemoryHistory",
    "Check",
    "AllOf",
    "Scanner",
    "NotEmpty",
    "LengthVsMedian",
    "NoErrorKeywords",
    "ExpectedPattern",
    "DurationVsMedian",
    "run_checks",
    "report_anomalies",
    "measure_length",
    "default_history",
]

METRIC_LENGTH = "length"
METRIC_DURATION = "duration"


@dataclass(frozen=True)
class Anomaly:
    """One reason an output is wrong: which check, why, and the figures behind it."""

    check: str
    reason: str
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckResult:
    """The verdict of one or more checks on one output."""

    anomalies: tuple[Anomaly, ...] = ()
    notes: tuple[str, ...] = ()
    measured: Mapping[str, float] = field(default_factory=dict)
    insufficient_history: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.anomalies

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(f"{a.check}: {a.reason}" for a in self.anomalies)

    def __add__(self, other: CheckResult) -> CheckResult:
        if other is _PASSED or _is_blank(other):
            return self
        if self is _PASSED or _is_blank(self):
            return other
        return _make_result(
            self.anomalies + other.anomalies,
            self.notes + other.notes,
            {**self.measured, **other.measured},
            self.insufficient_history + other.insufficient_history,
        )

    def raise_for_anomaly(self, route: str | None = None) -> None:
        """Raise `ContentAnomaly` naming every failed check, or return when ok."""
        if self.ok:
            return
        where = f"route {route!r}" if route else "an output"
        raise ContentAnomaly(
            f"content check failed for {where}: " + "; ".join(self.reasons) + ". The output "
            "raised no exception but is not usable; it was not passed on. Fix: look at the "
            "upstream that produced it (expired key, empty query, truncated response).",
            route=route,
            check=self.anomalies[0].check,
            reasons=self.reasons,
            details={"measured": dict(self.measured), "notes": list(self.notes)},
        )


_NOTHING_MEASURED: Mapping[str, float] = MappingProxyType({})
_PASSED = CheckResult(measured=_NOTHING_MEASURED)
"""The shared verdict of a passing check that has nothing to say (immutable, like every
result): the success path allocates no result per check."""


def _make_result(
    anomalies: tuple[Anomaly, ...],
    notes: tuple[str, ...],
    measured: Mapping[str, float],
    insufficient_history: tuple[str, ...],
) -> CheckResult:
    """`CheckResult(...)` for the hot paths: the same frozen object, filled without the frozen
    dataclass's per-field `object.__setattr__` (~400 -> ~150 ns)."""
    result = object.__new__(CheckResult)
    vars(result).update(
        anomalies=anomalies, notes=notes, measured=measured,
        insufficient_history=insufficient_history,
    )
    return result


def _is_blank(result: CheckResult) -> bool:
    return not (
        result.anomalies or result.notes or result.measured or result.insufficient_history
    )


@runtime_checkable
class History(Protocol):
    """Recent observations per key (route or job) and metric (`length`, `duration`, ...)."""

    def values(self, key: str, metric: str) -> Sequence[float]:
        """The recent window of values, oldest first."""
        ...

    def add(self, key: str, metric: str, value: float) -> None: ...


class MemoryHistory:
    """In-process history: a bounded window per (key, metric). Thread-safe.

    Does not survive the process: a cron job needs the store's history (`configure(store=)`).
    """

    def __init__(self, window: int = 50) -> None:
        self.window = window
        self._data: dict[tuple[str, str], deque[float]] = {}
        self._sorted: dict[tuple[str, str], list[float]] = {}  # the same values, in order
        self._lock = threading.Lock()

    def values(self, key: str, metric: str) -> Sequence[float]:
        with self._lock:
            return list(self._data.get((key, metric), ()))

    def count_and_median(self, key: str, metric: str) -> tuple[int, float | None]:
        """How many values the window holds and their median (`statistics.median`'s value).

        Cost: O(1) (a sorted copy of the window is kept by `add`); no list is copied.
        """
        with self._lock:
            ordered = self._sorted.get((key, metric))
            if not ordered:
                return 0, None
            n = len(ordered)
            mid = n // 2
            if n % 2:
                return n, ordered[mid]
            return n, (ordered[mid - 1] + ordered[mid]) / 2

    def add(self, key: str, metric: str, value: float) -> None:
        value = float(value)
        with self._lock:
            window = self._data.get((key, metric))
            if window is None:
                window = self._data[(key, metric)] = deque(maxlen=self.window)
                self._sorted[(key, metric)] = []
            ordered = self._sorted[(key, metric)]
            if len(window) == window.maxlen:
                del ordered[bisect.bisect_left(ordered, window[0])]
            window.append(value)
            bisect.insort(ordered, value)


_memory_history = MemoryHistory()


def default_history() -> History:
    """The store's history when a store is configured, else the process's memory history."""
    global _live_config
    cfg = _live_config
    if cfg is None:  # imported here: _config imports the modules that import checks
        from . import _config

        cfg = _live_config = _config.get_config()  # the live object, mutated in place
    store = cfg.store
    if store is None:
        return _memory_history
    history = getattr(store, "history", None)
    if history is not None:
        return history  # type: ignore[no-any-return]
    return _memory_history


_live_config: Any = None


def _context(route: str | None, duration: float | None, history: History) -> CheckContext:
    """`CheckContext(route=, duration=, history=)` for the hot path: the same frozen object,
    filled without the frozen dataclass's per-field `object.__setattr__` (~400 -> ~150 ns)."""
    ctx = object.__new__(CheckContext)
    vars(ctx).update(route=route, duration=duration, history=history)
    return ctx


@dataclass(frozen=True)
class CheckContext:
    """What a check may know besides the output: the key for history, the duration."""

    route: str | None
    duration: float | None
    history: History


def measure_length(output: Any) -> float | None:
    """Length of an output: characters of stripped text, bytes, file size, JSON characters.

    None when the output has no meaningful length (e.g. a number).
    """
    if output is None:
        return 0.0
    if isinstance(output, str):
        return float(len(output.strip()))
    if isinstance(output, (bytes, bytearray, memoryview)):
        return float(len(bytes(output).strip()))
    if isinstance(output, Path):
        try:
            return float(output.stat().st_size)
        except FileNotFoundError:
            return 0.0
    if isinstance(output, (Mapping, list, tuple)):
        try:
            return float(len(json.dumps(output, default=str, separators=(",", ":"))))
        except (TypeError, ValueError):
            return float(len(repr(output)))
    if isinstance(output, (int, float, bool)):
        return None
    text = getattr(output, "content", None)
    if isinstance(text, str):
        return float(len(text.strip()))
    return float(len(str(output)))


class Scanner:
    """Incremental evaluation of a check over a stream of byte chunks (bounded memory)."""

    def feed(self, chunk: bytes) -> None:
        raise NotImplementedError

    def result(self, ctx: CheckContext) -> CheckResult:
        raise NotImplementedError


class Check:
    """Base class: one method, `evaluate(output, ctx)`; compose with `&`."""

    name: str = "Check"
    uses_history: bool = False
    """True for checks that compare with history (they need a store to work across runs)."""

    def evaluate(self, output: Any, ctx: CheckContext) -> CheckResult:
        raise NotImplementedError

    def scanner(self) -> Scanner:
        """A `Scanner` for streamed output (every built-in check has one)."""
        raise ConfigurationError(
            f"check {self.name} cannot evaluate a stream; use it on in-memory outputs only."
        )

    def observe(self, output: Any, ctx: CheckContext, measured: Mapping[str, float]) -> None:
        """Called after an output passed every check: record history if this check uses it."""

    def __and__(self, other: Check) -> AllOf:
        return AllOf([*_flatten(self), *_flatten(other)])

    def check(
        self,
        output: Any,
        *,
        route: str | None = None,
        duration: float | None = None,
        history: History | None = None,
        record: bool = True,
        report: bool = True,
    ) -> CheckResult:
        """Evaluate this check on `output` standalone: `NotEmpty().check("")`.

        The same as `run_checks(self, output, ...)`: a passing output is added to the route's
        history, an anomaly is reported (ledger row, metric, alert). It returns the result and
        does not raise for an anomaly; call `result.raise_for_anomaly(route)` for that.
        """
        return run_checks(
            self,
            output,
            route=route,
            duration=duration,
            history=history,
            record=record,
            report=report,
        )

    __call__ = check

    def guard_id(self, route: str | None) -> str:
        return f"checks:{route or '*'}.{self.name}"

    def __repr__(self) -> str:
        return f"{self.name}()"


def _flatten(check: Check) -> list[Check]:
    return list(check.checks) if isinstance(check, AllOf) else [check]


class AllOf(Check):
    """Every check must pass; all anomalies are reported, not the first only."""

    name = "AllOf"

    def __init__(self, checks: Iterable[Check]) -> None:
        self.checks: tuple[Check, ...] = tuple(checks)
        for c in self.checks:
            if not isinstance(c, Check):
                raise ConfigurationError(
                    f"checks compose with &: expected agentguard.checks.Check instances, got "
                    f"{c!r}."
                )
        self.uses_history = any(c.uses_history for c in self.checks)

    def evaluate(self, output: Any, ctx: CheckContext) -> CheckResult:
        result = _PASSED
        for check in self.checks:
            verdict = check.evaluate(output, ctx)
            if verdict is not _PASSED:
                result = verdict if result is _PASSED else result + verdict
        return result

    def scanner(self) -> Scanner:
        return _AllScanner([c.scanner() for c in self.checks])

    def observe(self, output: Any, ctx: CheckContext, measured: Mapping[str, float]) -> None:
        for check in self.checks:
            check.observe(output, ctx, measured)

    def __repr__(self) -> str:
        return " & ".join(repr(c) for c in self.checks)


class _AllScanner(Scanner):
    def __init__(self, scanners: list[Scanner]) -> None:
        self.scanners = scanners

    def feed(self, chunk: bytes) -> None:
        for s in self.scanners:
            s.feed(chunk)

    def result(self, ctx: CheckContext) -> CheckResult:
        result = CheckResult()
        for s in self.scanners:
            result = result + s.result(ctx)
        return result


# -- NotEmpty ----------------------------------------------------------------------------------

DEFAULT_PLACEHOLDERS: tuple[str, ...] = (
    "<no rows>",
    "no rows",
    "(no rows)",
    "no results",
    "null",
    "none",
    "nil",
    "n/a",
    "[]",
    "{}",
    '""',
)


class NotEmpty(Check):
    """The output has content: not None, blank, an empty container or a placeholder string."""

    name = "NotEmpty"
    JSON_LIMIT = 4096
    """Text outputs up to this size that look like JSON are parsed and checked as JSON."""

    def __init__(self, placeholders: Iterable[str] = DEFAULT_PLACEHOLDERS) -> None:
        self.placeholders = frozenset(p.strip().lower() for p in placeholders)

    def _why_empty(self, output: Any, depth: int = 0) -> str | None:
        if output is None:
            return "the output is None"
        if isinstance(output, str):
            text = output.strip()
            if not text:
                return "the output is empty or whitespace" if output else "the output is ''"
            if text.lower() in self.placeholders:
                return f"the output is the placeholder {text[:40]!r}"
            if depth == 0 and text[0] in "[{" and len(text) <= self.JSON_LIMIT:
                # a job or an HTTP body that prints JSON: `{"results": []}` is empty too
                try:
                    parsed = json.loads(text)
                except ValueError:
                    return None
                why = self._why_empty(parsed, depth + 1)
                return f"{why} (the output is JSON)" if why else None
            return None
        if isinstance(output, (bytes, bytearray, memoryview)):
            data = bytes(output)
            if not data.strip():
                unit = "byte" if len(data) == 1 else "bytes"
                return f"the output is {len(data)} {unit} of nothing"
            if len(data) > self.JSON_LIMIT:
                return None
            return self._why_empty(data.decode("utf-8", "replace"), depth)
        if isinstance(output, Path):
            if not output.exists():
                return f"the file {str(output)!r} was never written"
            size = output.stat().st_size
            if size == 0:
                return f"the file {str(output)!r} is 0 bytes"
            return None
        if isinstance(output, Mapping):
            if not output:
                return "the output is an empty mapping {}"
            if depth < 2 and all(
                self._why_empty(v, depth + 1) is not None
                for v in output.values()
                if isinstance(v, (list, tuple, Mapping, str)) or v is None
            ) and all(
                isinstance(v, (list, tuple, Mapping, str)) or v is None for v in output.values()
            ):
                keys = ", ".join(repr(k) for k in list(output)[:3])
                return f"every value of the mapping is empty ({keys})"
            return None
        if isinstance(output, (list, tuple, set, frozenset)):
            return "the output is an empty collection" if not output else None
        content = getattr(output, "content", None)
        if isinstance(content, str):
            return self._why_empty(content, depth)
        return None

    def evaluate(self, output: Any, ctx: CheckContext) -> CheckResult:
        why = self._why_empty(output)
        if why is None:
            return _PASSED
        return CheckResult(anomalies=(Anomaly(self.name, why),))

    def scanner(self) -> Scanner:
        return _NotEmptyScanner(self)


class _NotEmptyScanner(Scanner):
    HEAD = NotEmpty.JSON_LIMIT

    def __init__(self, check: NotEmpty) -> None:
        self.check = check
        self.nonblank = 0
        self.total = 0
        self.head = bytearray()

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        if self.nonblank <= self.HEAD:
            self.nonblank += len(chunk.strip())
        if len(self.head) < self.HEAD:
            self.head += chunk[: self.HEAD - len(self.head)]

    def result(self, ctx: CheckContext) -> CheckResult:
        if self.nonblank == 0:
            unit = "byte" if self.total == 1 else "bytes"
            why = f"the output is {self.total} {unit} of nothing"
            return CheckResult(anomalies=(Anomaly(self.check.name, why),))
        if self.total <= self.HEAD:
            return self.check.evaluate(bytes(self.head), ctx)
        return CheckResult()


# -- LengthVsMedian ----------------------------------------------------------------------------


class LengthVsMedian(Check):
    """Flags an output shorter than `min_ratio` of the median of recent good outputs.

    Needs `min_history` earlier outputs for the same route or job; with fewer it passes but
    says so (`insufficient_history`). Optionally flags outputs longer than `max_ratio`.
    """

    name = "LengthVsMedian"
    uses_history = True

    def __init__(
        self, min_ratio: float = 0.3, *, max_ratio: float | None = None, min_history: int = 5
    ) -> None:
        if not 0 < min_ratio < 1:
            raise ConfigurationError(
                f"LengthVsMedian(min_ratio={min_ratio!r}): expected a ratio between 0 and 1."
            )
        if max_ratio is not None and max_ratio <= 1:
            raise ConfigurationError(
                f"LengthVsMedian(max_ratio={max_ratio!r}): expected a ratio above 1."
            )
        self.min_ratio = min_ratio
        self.max_ratio = max_ratio
        self.min_history = max(1, min_history)

    def _judge(self, length: float | None, ctx: CheckContext) -> CheckResult:
        if length is None:
            return CheckResult(notes=(f"{self.name}: the output has no length to compare",))
        measured = {METRIC_LENGTH: length}
        key = ctx.route or "*"
        fast = getattr(ctx.history, "count_and_median", None)  # MemoryHistory: O(1)
        if fast is not None:
            count, median_or_none = fast(key, METRIC_LENGTH)
        else:
            past = ctx.history.values(key, METRIC_LENGTH)
            count = len(past)
            median_or_none = statistics.median(past) if past else None
        if count < self.min_history or median_or_none is None:
            note = (
                f"{self.name}: too little history for {key!r} ({count} of "
                f"{self.min_history} earlier outputs); length {length:.0f} not compared"
            )
            return CheckResult(notes=(note,), measured=measured, insufficient_history=(note,))
        median = median_or_none
        if median > 0 and length < self.min_ratio * median:
            reason = (
                f"length {length:.0f} is {length / median:.0%} of the median {median:.0f} of "
                f"the last {count} outputs (minimum {self.min_ratio:.0%})"
            )
            details = {"length": length, "median": median, "ratio": length / median}
            return CheckResult(anomalies=(Anomaly(self.name, reason, details),), measured=measured)
        if self.max_ratio is not None and median > 0 and length > self.max_ratio * median:
            reason = (
                f"length {length:.0f} is {length / median:.1f}x the median {median:.0f} "
                f"(maximum {self.max_ratio:.1f}x)"
            )
            details = {"length": length, "median": median, "ratio": length / median}
            return CheckResult(anomalies=(Anomaly(self.name, reason, details),), measured=measured)
        return _make_result((), (), measured, ())

    def evaluate(self, output: Any, ctx: CheckContext) -> CheckResult:
        return self._judge(measure_length(output), ctx)

    def observe(self, output: Any, ctx: CheckContext, measured: Mapping[str, float]) -> None:
        length = measured.get(METRIC_LENGTH)
        if length is None:
            length = measure_length(output)
        if length is not None:
            ctx.history.add(ctx.route or "*", METRIC_LENGTH, length)

    def scanner(self) -> Scanner:
        return _LengthScanner(self)


class _LengthScanner(Scanner):
    def __init__(self, check: LengthVsMedian) -> None:
        self.check = check
        self.length = 0
        self.pending_ws = 0
        self.started = False

    def feed(self, chunk: bytes) -> None:
        # counts bytes of the stream without leading/trailing whitespace, like str.strip()
        if not self.started:
            stripped = chunk.lstrip()
            if not stripped:
                return
            self.started = True
            chunk = stripped
        body = chunk.rstrip()
        if body:
            self.length += self.pending_ws + len(body)
            self.pending_ws = len(chunk) - len(body)
        else:
            self.pending_ws += len(chunk)

    def result(self, ctx: CheckContext) -> CheckResult:
        return self.check._judge(float(self.length), ctx)


# -- NoErrorKeywords ---------------------------------------------------------------------------

DEFAULT_ERROR_PATTERNS: Mapping[str, str] = {
    "Traceback": r"Traceback \(most recent call last\)",
    "ERROR": r"\bERROR\b",
    "rate limit": r"(?i)\brate[ -]?limit(ed)?\b",
    "quota": r"(?i)\bquota\b",
}


class NoErrorKeywords(Check):
    """Flags error text in an output that came with success (exit 0, HTTP 200, no raise).

    `keywords`: plain strings (matched literally) or a mapping of label -> regular expression;
    default: Traceback, ERROR (as a word, upper case), rate limit, quota (any case).
    """

    name = "NoErrorKeywords"

    def __init__(
        self, keywords: Iterable[str] | Mapping[str, str] = DEFAULT_ERROR_PATTERNS
    ) -> None:
        if isinstance(keywords, Mapping):
            patterns = dict(keywords)
        else:
            patterns = {k: re.escape(k) for k in keywords}
        self.patterns: Mapping[str, str] = patterns
        try:
            self._regexes = tuple((label, re.compile(rx)) for label, rx in patterns.items())
        except re.error as exc:
            raise ConfigurationError(
                f"NoErrorKeywords: invalid regular expression ({exc}); patterns: "
                f"{patterns!r}"
            ) from exc
        self._any = _alternation(list(patterns.values()))

    def _hits(self, text: str) -> list[str]:
        return [label for label, rx in self._regexes if rx.search(text)]

    def _result(self, hits: Iterable[str]) -> CheckResult:
        found = sorted(set(hits))
        if not found:
            return _PASSED
        reason = "error text in a successful output: " + ", ".join(repr(h) for h in found)
        return CheckResult(anomalies=(Anomaly(self.name, reason, {"patterns": found}),))

    def evaluate(self, output: Any, ctx: CheckContext) -> CheckResult:
        text = _as_text(output)
        if self._any is not None and self._any.search(text) is None:
            return _PASSED  # one scan for the common case: no pattern matches at all
        return self._result(self._hits(text))

    def scanner(self) -> Scanner:
        total = len(self._regexes)
        return _LineScanner(self._hits, self._result, lambda hits: len(hits) >= total)


_GLOBAL_FLAGS = re.compile(r"\(\?([aiLmsux]+)\)(.*)", re.DOTALL)
_REFERS_TO_GROUPS = re.compile(r"\\[1-9]|\(\?P=|\(\?\(")


def _alternation(patterns: list[str]) -> re.Pattern[str] | None:
    """One regex that matches where any of `patterns` does (a leading `(?i)` becomes a scoped
    `(?i:...)`), or None when they cannot be joined safely (group references, bad syntax)."""
    parts = []
    for rx in patterns:
        if _REFERS_TO_GROUPS.search(rx):
            return None  # joined, group numbers would shift
        flagged = _GLOBAL_FLAGS.fullmatch(rx)
        parts.append(f"(?{flagged[1]}:{flagged[2]})" if flagged else f"(?:{rx})")
    if not parts:
        return None
    try:
        return re.compile("|".join(parts))
    except re.error:  # e.g. a flag that cannot be scoped, or duplicate group names
        return None


# -- ExpectedPattern ---------------------------------------------------------------------------


class ExpectedPattern(Check):
    """The output must contain a match of `regex` (multiline: `^` matches at each line)."""

    name = "ExpectedPattern"

    def __init__(self, regex: str, *, flags: int = re.MULTILINE) -> None:
        try:
            self.regex = re.compile(regex, flags)
        except re.error as exc:
            raise ConfigurationError(
                f"ExpectedPattern({regex!r}): invalid regular expression: {exc}"
            ) from exc

    def _result(self, found: bool) -> CheckResult:
        if found:
            return CheckResult()
        reason = f"no match for the expected pattern {self.regex.pattern!r}"
        return CheckResult(anomalies=(Anomaly(self.name, reason, {"pattern": self.regex.pattern}),))

    def evaluate(self, output: Any, ctx: CheckContext) -> CheckResult:
        return self._result(self.regex.search(_as_text(output)) is not None)

    def scanner(self) -> Scanner:
        rx = self.regex
        return _LineScanner(
            lambda text: ["hit"] if rx.search(text) else [],
            lambda hits: self._result(bool(hits)),
            bool,
        )


class _LineScanner(Scanner):
    """Feeds blocks of complete lines to a text function and collects its hits.

    Memory is bounded: at most one chunk plus one partial line (cut at 1 MiB) is held. Stops
    looking once `done(hits)` says every answer is known (e.g. the pattern was found).
    """

    MAX_LINE = 1 << 20

    def __init__(self, on_text: Any, finish: Any, done: Any = None) -> None:
        self.on_text = on_text
        self.finish = finish
        self.done = done
        self.partial = bytearray()
        self.hits: set[str] = set()
        self.finished = False

    def _text(self, raw: bytes) -> None:
        self.hits.update(self.on_text(raw.decode("utf-8", "replace")))
        if self.done is not None and self.done(self.hits):
            self.finished = True
            self.partial = bytearray()

    def feed(self, chunk: bytes) -> None:
        if self.finished or not chunk:
            return
        nl = chunk.rfind(b"\n")
        if nl < 0:
            self.partial += chunk
            if len(self.partial) > self.MAX_LINE:
                self._text(bytes(self.partial))
                self.partial.clear()
            return
        block = bytes(self.partial) + chunk[:nl] if self.partial else chunk[:nl]
        self.partial = bytearray(chunk[nl + 1 :])
        self._text(block)

    def result(self, ctx: CheckContext) -> CheckResult:
        if self.partial and not self.finished:
            self._text(bytes(self.partial))
            self.partial.clear()
        result: CheckResult = self.finish(self.hits)
        return result


# -- DurationVsMedian --------------------------------------------------------------------------


class DurationVsMedian(Check):
    """Flags a duration above `max_ratio` (or below `min_ratio`) times the usual median."""

    name = "DurationVsMedian"
    uses_history = True

    def __init__(
        self, max_ratio: float = 5.0, *, min_ratio: float | None = None, min_history: int = 5
    ) -> None:
        if max_ratio <= 1:
            raise ConfigurationError(
                f"DurationVsMedian(max_ratio={max_ratio!r}): expected a ratio above 1."
            )
        self.max_ratio = max_ratio
        self.min_ratio = min_ratio
        self.min_history = max(1, min_history)

    def evaluate(self, output: Any, ctx: CheckContext) -> CheckResult:
        duration = ctx.duration
        if duration is None or math.isnan(duration):
            return CheckResult(notes=(f"{self.name}: no duration was measured",))
        measured = {METRIC_DURATION: duration}
        key = ctx.route or "*"
        past = ctx.history.values(key, METRIC_DURATION)
        if len(past) < self.min_history:
            note = (
                f"{self.name}: too little history for {key!r} ({len(past)} of "
                f"{self.min_history} earlier runs); duration {duration:.3g}s not compared"
            )
            return CheckResult(notes=(note,), measured=measured, insufficient_history=(note,))
        median = statistics.median(past)
        details = {"duration": duration, "median": median}
        if median > 0 and duration > self.max_ratio * median:
            reason = (
                f"took {duration:.3g}s, {duration / median:.1f}x the median {median:.3g}s of "
                f"the last {len(past)} runs (maximum {self.max_ratio:g}x)"
            )
            return CheckResult(anomalies=(Anomaly(self.name, reason, details),), measured=measured)
        if self.min_ratio is not None and median > 0 and duration < self.min_ratio * median:
            reason = (
                f"took {duration:.3g}s, only {duration / median:.0%} of the median "
                f"{median:.3g}s (minimum {self.min_ratio:.0%}): did it skip its work?"
            )
            return CheckResult(anomalies=(Anomaly(self.name, reason, details),), measured=measured)
        return CheckResult(measured=measured)

    def observe(self, output: Any, ctx: CheckContext, measured: Mapping[str, float]) -> None:
        if ctx.duration is not None:
            ctx.history.add(ctx.route or "*", METRIC_DURATION, ctx.duration)

    def scanner(self) -> Scanner:
        return _DurationScanner(self)


class _DurationScanner(Scanner):
    def __init__(self, check: DurationVsMedian) -> None:
        self.check = check

    def feed(self, chunk: bytes) -> None:
        return

    def result(self, ctx: CheckContext) -> CheckResult:
        return self.check.evaluate(None, ctx)


def _as_text(output: Any) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, (bytes, bytearray, memoryview)):
        return bytes(output).decode("utf-8", "replace")
    if isinstance(output, Path):
        if not output.exists():
            return ""
        if output.stat().st_size > 64 * 1024 * 1024:
            raise ConfigurationError(
                f"content check on file {str(output)!r}: the file is larger than 64 MiB; use "
                f"check.scanner() to stream it instead of reading it whole."
            )
        return output.read_text("utf-8", "replace")
    if isinstance(output, (Mapping, list, tuple)):
        try:
            return json.dumps(output, default=str)
        except (TypeError, ValueError):
            return repr(output)
    content = getattr(output, "content", None)
    if isinstance(content, str):
        return content
    return str(output)


MEMORY_HISTORY_NOTE = (
    "history is kept in this process only (no store configured): it starts empty in every "
    "new process, so a cron job never builds one. Fix: ag.configure(store=True) or set "
    "AGENTGUARD_STORE=/path/to/agentguard.db"
)
_MEMORY_NOTE = CheckResult(notes=(MEMORY_HISTORY_NOTE,), measured=_NOTHING_MEASURED)


def run_checks(
    check: Check,
    output: Any,
    *,
    route: str | None,
    duration: float | None = None,
    history: History | None = None,
    record: bool = True,
    report: bool = True,
) -> CheckResult:
    """Evaluate `check` on `output`; when it passes and `record`, add it to the history.

    With `report` (the default) every anomaly is made visible at once: a ledger row of kind
    `anomaly`, the `agentguard.content.anomalies` metric and one `content.anomaly` alert
    (see `report_anomalies`). When a history-based check runs on the in-process default
    history, the result says so in its notes. Raises only for a broken check (its own
    exception, not an anomaly of the output); call `result.raise_for_anomaly(route)` to turn
    anomalies into `ContentAnomaly`.
    """
    hist = history if history is not None else default_history()
    ctx = _context(route, duration, hist)
    result = check.evaluate(output, ctx)
    if history is None and hist is _memory_history and check.uses_history:
        result = result + _MEMORY_NOTE
    if record and result.ok:
        check.observe(output, ctx, result.measured)
    if report and not result.ok:
        report_anomalies(result, route)
    return result


def report_anomalies(
    result: CheckResult,
    route: str | None,
    *,
    run_id: str | None = None,
    subject: str = "an output",
) -> None:
    """Make a failed result visible: one ledger row per anomaly, a metric, one alert.

    The rows go to the active pool's ledger (or the process's orphan rows, written by the
    store); `run_id` names the run when there is no pool (the job runner). Never raises
    because of an alert hook.
    """
    if result.ok:
        return
    from . import telemetry
    from ._events import record_event
    from .alerts import Alert, emit_alert
    from .budget import _current

    pool = _current.get()
    rid = run_id or (pool.run_id if pool is not None else None)
    anomalies_counter = telemetry.counter(telemetry.METRIC.ANOMALIES)
    for anomaly in result.anomalies:
        detail: dict[str, Any] = {"check": anomaly.check, "reason": anomaly.reason}
        if anomaly.details:
            detail["figures"] = dict(anomaly.details)
        if rid is not None:
            detail["run_id"] = rid
        record_event(
            "anomaly",
            outcome="anomaly",
            route=route,
            guard_id=f"checks:{route or '*'}.{anomaly.check}",
            detail=detail,
        )
        anomalies_counter.add(
            1, {telemetry.ATTR.ROUTE: route or "*", telemetry.ATTR.CHECK: anomaly.check}
        )
    where = f"route {route!r}" if route else "an unnamed route"
    emit_alert(
        Alert(
            kind="content.anomaly",
            message=f"content check failed for {subject} of {where}: "
            + "; ".join(result.reasons),
            guard_id=f"checks:{route or '*'}.{result.anomalies[0].check}",
            pool=pool.name if pool is not None else None,
            route=route,
            run_id=rid,
            severity="error",
            data={
                "checks": [a.check for a in result.anomalies],
                "reasons": list(result.reasons),
                "measured": dict(result.measured),
            },
        )
    )
