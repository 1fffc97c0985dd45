"""Guard bypasses: the only way to turn a guard off, and every one of them expires.

A bypass is an entry naming a guard id (or a `*` pattern), an owner, a reason, an explicit
expiry no further than `bypass_max_days` ahead (default 30) and optionally a ticket. It is
registered in code with `ag.bypass(...)` or declared in `agentguard.toml` /
`[tool.agentguard]` of `pyproject.toml`; both go through the same checks, and anything
missing or malformed raises `BypassError`. There is no other way to turn a guard off: no
environment variable, global switch or flag.

Guards call `active_bypass(guard_id)` only at the point where they would refuse, so a bypass
costs nothing on the hot path, and `record_bypass_use(...)` when an entry let the call through
(metric `agentguard.bypass.used`, a span event, a ledger row, a rate-limited WARNING). After
its date an entry stops matching (the guard is back on by itself) and the first hit after
expiry fires a `bypass.expired` alert naming the owner. A renewal is a new entry for the same
guard with a new date; the history is kept and shown by `agentguard bypasses`.

An entry for `args:<tool>` also covers `args:<tool>.<argument>` (a guard id covers its
dotted sub-ids), and `*` matches any characters (`fnmatch` rules).
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
import re
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

from opentelemetry import trace

from . import _config, telemetry
from .alerts import Alert, emit_alert
from .errors import BypassError, ConfigurationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "GUARD_KINDS",
    "EXPIRING_DAYS",
    "LOG_INTERVAL_SECONDS",
    "Bypass",
    "BypassStatus",
    "bypass",
    "load_bypasses",
    "active_bypass",
    "lookup_bypass",
    "record_bypass_use",
    "alert_expired",
    "registered_bypasses",
    "bypass_statuses",
    "render_bypasses",
    "use_counts",
]

logger = logging.getLogger("agentguard")

GUARD_KINDS: tuple[str, ...] = ("budget", "args", "checks", "contract", "retry")
"""The guard id prefixes (`budget:<pool>`, `args:<tool>[.<argument>]`, ...)."""
EXPIRING_DAYS = 7
"""An entry that ends within this many days is listed as *expiring*."""
LOG_INTERVAL_SECONDS = 60.0
"""The WARNING for a bypassed guard is logged on first use, then at most once per interval."""
MIN_REASON_CHARS = 8
PROJECT_FILES: tuple[str, ...] = ("agentguard.toml", "pyproject.toml")

_ENTRY_KEYS: tuple[str, ...] = ("guard", "owner", "reason", "expires", "ticket", "created")
_GUARD_RE = re.compile(r"^(?P<kind>[a-z_]+):(?P<rest>\S+)$")
_UTC = timezone.utc


@dataclass(frozen=True)
class Bypass:
    """A registered exception to a guard: which guard, who, why, until when.

    `guard` is a guard id or a pattern (`args:search.*`); `expires` is an aware UTC datetime
    (a date given as `2026-12-15` is valid through the end of that day, UTC); `created` is
    when the entry was made, when known (registration time for code, `created =` in a file);
    `source` is `code` or the file the entry was read from.
    """

    guard: str
    owner: str
    reason: str
    expires: datetime
    ticket: str | None = None
    created: datetime | None = None
    source: str = "code"

    def covers(self, guard_id: str) -> bool:
        """True when this entry names `guard_id`, a parent id of it, or a matching pattern."""
        return _covers(self.guard, guard_id)

    def active_at(self, now: datetime) -> bool:
        """True until the expiry instant (exclusive)."""
        return now < self.expires

    @property
    def _key(self) -> tuple[str, str, str, datetime, str | None]:
        return (self.guard, self.owner, self.reason, self.expires, self.ticket)


# -- the registry ------------------------------------------------------------------------------
# Copy-on-write: readers take no lock; writers rebuild the index under `_lock`.

_lock = threading.Lock()
_entries: tuple[Bypass, ...] = ()
_exact: dict[str, tuple[Bypass, ...]] = {}
_patterns: tuple[tuple[re.Pattern[str], Bypass], ...] = ()
_maybe = True
"""False only when there is no entry and the project file was looked for: the hot-path check."""
_file_checked = False
_alerted: set[tuple[str, str, str, datetime, str | None]] = set()
_uses: dict[tuple[str, str, str, datetime, str | None], int] = {}
_log_state: dict[str, list[float]] = {}  # guard id -> [last logged (monotonic), suppressed]


def _rebuild(entries: Sequence[Bypass]) -> None:
    """Swap in a new index (caller holds `_lock`)."""
    global _entries, _exact, _patterns, _maybe
    exact: dict[str, list[Bypass]] = {}
    patterns: list[tuple[re.Pattern[str], Bypass]] = []
    for entry in entries:
        if _has_wildcard(entry.guard):
            patterns.append((re.compile(fnmatch.translate(entry.guard)), entry))
        else:
            exact.setdefault(entry.guard, []).append(entry)
    _exact = {k: tuple(v) for k, v in exact.items()}
    _patterns = tuple(patterns)
    _entries = tuple(entries)
    _maybe = bool(_entries) or not _file_checked


def _has_wildcard(guard: str) -> bool:
    return any(c in guard for c in "*?[")


def _covers(pattern: str, guard_id: str) -> bool:
    if _has_wildcard(pattern):
        return fnmatch.fnmatchcase(guard_id, pattern)
    return guard_id == pattern or guard_id.startswith(pattern + ".")


def _add(entries: Iterable[Bypass]) -> list[Bypass]:
    """Register `entries` (an identical entry already present is not added twice)."""
    added: list[Bypass] = []
    with _lock:
        current = list(_entries)
        keys = {e._key for e in current}
        for entry in entries:
            if entry._key not in keys:
                keys.add(entry._key)
                current.append(entry)
                added.append(entry)
        _rebuild(current)
    return added


def registered_bypasses() -> tuple[Bypass, ...]:
    """Every entry registered in this process (active, expired and superseded), in order."""
    return _entries


def _reset_for_tests(*, file_checked: bool = True) -> None:
    """Forget every entry, counter and alert; by default do not look for a project file."""
    global _file_checked
    with _lock:
        _file_checked = file_checked
        _alerted.clear()
        _uses.clear()
        _log_state.clear()
        _rebuild(())


# -- validation --------------------------------------------------------------------------------


def _now() -> datetime:
    return _config.get_config().clock.now()


def _fix(where: str, problem: str, fix: str) -> BypassError:
    return BypassError(f"{where}: {problem}. Fix: {fix}.")


def _check_guard(value: Any, where: str) -> str:
    example = "'args:escalate_to_human.user_id', 'budget:nightly-run' or 'checks:summary.*'"
    if not isinstance(value, str) or not value.strip():
        raise _fix(
            where,
            f"the guard id is missing or empty (got {value!r})",
            f"name the guard to bypass, e.g. {example}; `agentguard guards` lists the ids",
        )
    match = _GUARD_RE.match(value.strip())
    if match is None or match["kind"] not in GUARD_KINDS:
        raise _fix(
            where,
            f"{value!r} is not a guard id: expected '<kind>:<name>' with kind one of "
            f"{', '.join(GUARD_KINDS)} and no spaces",
            f"use e.g. {example}; `agentguard guards` lists the ids your code declares",
        )
    return value.strip()


def _check_text(value: Any, name: str, where: str, fix: str, minimum: int = 1) -> str:
    if value is None:
        raise _fix(where, f"{name} is missing (required)", fix)
    if not isinstance(value, str):
        raise _fix(where, f"{name} must be a string, got {type(value).__name__} {value!r}", fix)
    text = value.strip()
    if len(text) < minimum:
        got = "empty" if not text else f"{text!r} ({len(text)} characters)"
        need = "non-empty" if minimum == 1 else f"at least {minimum} characters"
        raise _fix(where, f"{name} is {got}; expected {need}", fix)
    return text


def _parse_when(value: Any, name: str, where: str, *, end_of_day: bool) -> datetime:
    """A date, an aware datetime, or an ISO 8601 string of either, as an aware UTC datetime."""
    fix = (
        f"give {name} as a date 'YYYY-MM-DD' (valid through the end of that day, UTC) or an "
        f"ISO 8601 datetime with a UTC offset, e.g. '2026-12-15' or '2026-12-15T18:00:00+00:00'"
    )
    if value is None:
        raise _fix(where, f"{name} is missing (required: every bypass ends)", fix)
    when: Any = value
    if isinstance(value, str):
        text = value.strip()
        try:
            if len(text) == 10:
                when = date.fromisoformat(text)
            else:
                when = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
        except ValueError as exc:
            raise _fix(
                where, f"{name} {value!r} is not a valid date or datetime ({exc})", fix
            ) from exc
    if isinstance(when, datetime):
        if when.tzinfo is None or when.utcoffset() is None:
            raise _fix(
                where,
                f"{name} {value!r} has no time zone, so the instant it ends is ambiguous",
                fix,
            )
        return when.astimezone(_UTC)
    if isinstance(when, date):
        day = when + timedelta(days=1) if end_of_day else when
        return datetime.combine(day, time(0), tzinfo=_UTC)
    raise _fix(
        where, f"{name} must be a date or datetime, got {type(value).__name__} {value!r}", fix
    )


def _build(
    fields: Mapping[str, Any], *, where: str, source: str, max_days: int, now: datetime
) -> Bypass:
    """Validate one entry's fields into a `Bypass` (raises BypassError naming what is wrong)."""
    guard = _check_guard(fields.get("guard"), where)
    owner = _check_text(
        fields.get("owner"),
        "owner",
        where,
        "name the person or team accountable for the bypass, e.g. owner='ana@example.com'",
    )
    reason = _check_text(
        fields.get("reason"),
        "reason",
        where,
        "say why the guard is off and what ends the need, e.g. "
        "reason='model sends names until prompt v7 ships'",
        minimum=MIN_REASON_CHARS,
    )
    expires = _parse_when(fields.get("expires"), "expires", where, end_of_day=True)
    ticket_raw = fields.get("ticket")
    ticket = None
    if ticket_raw is not None:
        ticket = _check_text(
            ticket_raw, "ticket", where, "give the ticket id as a string, or omit it"
        )
    created = None
    if fields.get("created") is not None:
        created = _parse_when(fields["created"], "created", where, end_of_day=False)
        if created >= expires:
            raise _fix(
                where,
                f"created {created:%Y-%m-%d %H:%M} UTC is not before expires "
                f"{expires:%Y-%m-%d %H:%M} UTC",
                "set created to the day the bypass was first granted",
            )
    horizon_day = (now + timedelta(days=max_days)).date() + timedelta(days=1)
    horizon = datetime.combine(horizon_day, time(0), tzinfo=_UTC)
    if expires > horizon:
        problem = f"expires {_fmt_expiry(expires)} is {_fmt_span(expires - now)} from now"
    elif created is not None and expires - created > timedelta(days=max_days + 1):
        problem = (
            f"the entry spans {_fmt_span(expires - created)} (created {created:%Y-%m-%d}, "
            f"expires {_fmt_expiry(expires)})"
        )
    else:
        problem = ""
    if problem:
        raise _fix(
            where,
            f"{problem}, past the horizon of {max_days} days (bypass_max_days)",
            f"pick a date no later than {horizon_day - timedelta(days=1)}; renew it with a new "
            f"entry when it runs out, or (if reviewed) raise bypass_max_days (at most "
            f"{_config.MAX_BYPASS_DAYS})",
        )
    return Bypass(
        guard=guard,
        owner=owner,
        reason=reason,
        expires=expires,
        ticket=ticket,
        created=created,
        source=source,
    )


# -- registration ------------------------------------------------------------------------------


def bypass(
    guard_id: str,
    *,
    owner: str,
    reason: str,
    expires: str | date | datetime,
    ticket: str | None = None,
) -> Bypass:
    """Register a bypass of `guard_id` (an id or a `*` pattern) until `expires`; return it.

    `expires` is a date (`"2026-12-15"`, valid through the end of that day, UTC) or an aware
    datetime, at most `bypass_max_days` (default 30) from now. An entry whose date has passed
    is accepted and inactive: the guard is on, and its first hit fires a `bypass.expired`
    alert. Registering the same entry twice is a no-op; the same guard with a new date is a
    renewal (both are kept in the history).

    Raises `BypassError` when a field is missing or malformed or the expiry is past the
    horizon. Thread-safe.
    """
    where = f"ag.bypass({guard_id!r})"
    now = _now()
    entry = _build(
        {
            "guard": guard_id,
            "owner": owner,
            "reason": reason,
            "expires": expires,
            "ticket": ticket,
            "created": None,
        },
        where=where,
        source="code",
        max_days=_config.get_config().bypass_max_days,
        now=now,
    )
    entry = Bypass(entry.guard, entry.owner, entry.reason, entry.expires, entry.ticket, now, "code")
    _add([entry])
    return entry


def find_project_file(start: str | Path | None = None) -> Path | None:
    """The nearest `agentguard.toml` or `pyproject.toml` from `start` (default: cwd) upwards."""
    here = Path(start) if start is not None else Path.cwd()
    here = here.resolve()
    for folder in (here, *here.parents):
        for name in PROJECT_FILES:
            candidate = folder / name
            if candidate.is_file():
                return candidate
    return None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise BypassError(
            f"{path}: not valid TOML ({exc}), so its bypass entries cannot be read. Fix the "
            f"syntax (a date is written bare: expires = 2026-12-15)."
        ) from exc
    except OSError as exc:
        raise BypassError(f"{path}: cannot read the bypass file ({exc}).") from exc


def _settings_table(path: Path) -> tuple[dict[str, Any], str]:
    """The agentguard table of `path` and its name as written in the file."""
    data = _read_toml(path)
    if path.name == "pyproject.toml":
        tool = data.get("tool", {})
        table = tool.get("agentguard", {}) if isinstance(tool, dict) else {}
        prefix = "tool.agentguard."
    else:
        table, prefix = data, ""
    if not isinstance(table, dict):
        raise BypassError(f"{path}: [{prefix.rstrip('.')}] must be a table.")
    return table, prefix


def load_bypasses(path: str | Path | None = None) -> list[Bypass]:
    """Read and register the `[[bypass]]` entries of a project file; return the entries.

    `path` is an `agentguard.toml` (entries as `[[bypass]]`) or a `pyproject.toml` (entries
    as `[[tool.agentguard.bypass]]`); default: the nearest of either from the current
    directory upwards (`agentguard.toml` wins in the same folder). `bypass_max_days = N`
    beside the entries sets their horizon. Without an explicit call, the file is read once,
    the first time any guard would refuse.

    Raises `BypassError` naming the file, the entry and the field when anything is missing,
    malformed or past the horizon (no entry of a bad file is registered).
    """
    global _file_checked
    if path is None:
        found = find_project_file()
        if found is None:
            with _lock:
                _file_checked = True
                _rebuild(_entries)
            return []
        target = found
    else:
        target = Path(path)
        if not target.is_file():
            raise BypassError(
                f"load_bypasses({str(path)!r}): no such file. Fix: pass the path of an "
                f"agentguard.toml or pyproject.toml, or omit it to use the nearest one."
            )
    entries = _parse_file(target)
    with _lock:
        _file_checked = True
    _add(entries)
    return entries


def _parse_file(path: Path) -> list[Bypass]:
    table, prefix = _settings_table(path)
    name = f"{prefix}bypass"
    if path.name == "agentguard.toml":
        sibling = path.with_name("pyproject.toml")
        if sibling.is_file():
            other, _ = _settings_table(sibling)
            if "bypass" in other:
                raise BypassError(
                    f"{path} and {sibling} both declare bypass entries; only {path.name} would "
                    f"be read. Fix: keep every entry in one file (move the "
                    f"[[tool.agentguard.bypass]] entries into {path.name})."
                )
    for key in table:
        if key.startswith("bypass") and key not in ("bypass", "bypass_max_days"):
            raise BypassError(
                f"{path}: unknown setting [{prefix}{key}]. Expected [[{name}]] entries and "
                f"{prefix}bypass_max_days. Fix the name (a typo would silently drop entries)."
            )
    max_days = _config.get_config().bypass_max_days
    if "bypass_max_days" in table:
        try:
            max_days = _config._check_bypass_days(table["bypass_max_days"], f"{path}")
        except ConfigurationError as exc:
            raise BypassError(str(exc)) from exc
    raw = table.get("bypass", [])
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise BypassError(
            f"{path}: {name} must be an array of tables, one per entry, written [[{name}]]; got "
            f"{type(raw).__name__}. Fix: start each entry with a [[{name}]] line."
        )
    now = _now()
    entries = []
    for index, item in enumerate(raw, start=1):
        guard = item.get("guard")
        where = f"{path} [[{name}]] entry {index}" + (
            f" (guard {guard!r})" if isinstance(guard, str) else ""
        )
        unknown = sorted(set(item) - set(_ENTRY_KEYS))
        if unknown:
            hints = [
                f"{key!r} (did you mean {close[0]!r}?)"
                if (close := difflib.get_close_matches(key, _ENTRY_KEYS, n=1))
                else repr(key)
                for key in unknown
            ]
            raise _fix(
                where,
                f"unknown field(s) {', '.join(hints)}; expected {', '.join(_ENTRY_KEYS)}",
                "correct the field name (guard, owner, reason and expires are required)",
            )
        entries.append(_build(item, where=where, source=str(path), max_days=max_days, now=now))
    return entries


def _autoload() -> None:
    """Read the project file once, the first time a guard asks (never on the hot path)."""
    if not _file_checked:
        load_bypasses()


# -- the guard side ----------------------------------------------------------------------------


def lookup_bypass(guard_id: str) -> tuple[Bypass | None, Bypass | None]:
    """`(active entry or None, entry that just expired or None)` for `guard_id`, no I/O.

    For guards that decide under a lock: the second item, when not None, is an expired entry
    hit for the first time; call `alert_expired(...)` with it once the lock is released.
    Thread-safe. Cost: one global read when no entry exists.
    """
    if not _maybe:
        return None, None
    if not _file_checked:
        _autoload()
        if not _maybe:
            return None, None
    candidates = list(_exact.get(guard_id, ()))
    if "." in guard_id:
        parts = guard_id.split(".")
        for i in range(1, len(parts)):
            candidates.extend(_exact.get(".".join(parts[:i]), ()))
    for regex, entry in _patterns:
        if regex.match(guard_id):
            candidates.append(entry)
    if not candidates:
        return None, None
    now = _now()
    best: Bypass | None = None
    for entry in candidates:
        if now < entry.expires and (best is None or entry.expires > best.expires):
            best = entry
    if best is not None:
        return best, None
    latest = max(candidates, key=_expires_of)
    with _lock:
        if latest._key in _alerted:
            return None, None
        _alerted.add(latest._key)
    return None, latest


def _expires_of(entry: Bypass) -> datetime:
    return entry.expires


def active_bypass(guard_id: str) -> Bypass | None:
    """The active (unexpired) bypass covering `guard_id`, or None when the guard is on.

    Call it only where the guard would refuse. The first call that finds only an expired
    entry fires the `bypass.expired` alert (so do not call it while holding a lock that an
    alert hook could need: use `lookup_bypass` there). Near free when no entry exists.
    """
    if not _maybe:
        return None
    active, expired = lookup_bypass(guard_id)
    if expired is not None:
        alert_expired(expired, guard_id)
    return active


def _expiry_text(entry: Bypass) -> str:
    return entry.expires.isoformat().replace("+00:00", "Z")


def record_bypass_use(entry: Bypass, guard_id: str, would_have: str, **context: Any) -> None:
    """Record that `entry` let a call through that `guard_id` would have stopped.

    `would_have` says what the guard would have done, with values described by
    `agentguard._redact.describe` ("would have rejected user_id=<str len=9 #1a2b3c4d>");
    `context` holds names and figures (route, pool, dimension, limit), never argument values.
    Emits the `agentguard.bypass.used` metric (guard id, owner), a span event on the current
    span, a `bypass` ledger row, and a WARNING log (first use, then at most once a minute per
    guard). Thread-safe.
    """
    from ._events import record_event  # _events imports budget, which imports this module
    from ._redact import describe

    config = _config.get_config()
    now_mono = config.clock.monotonic()
    key = entry._key
    with _lock:
        _uses[key] = _uses.get(key, 0) + 1
        state = _log_state.get(guard_id)
        suppressed = 0
        if state is None:
            _log_state[guard_id] = [now_mono, 0.0]
            log_now = True
        elif now_mono - state[0] >= LOG_INTERVAL_SECONDS:
            suppressed = int(state[1])
            state[0], state[1] = now_mono, 0.0
            log_now = True
        else:
            state[1] += 1
            log_now = False
    ATTR = telemetry.ATTR
    telemetry.counter(
        telemetry.METRIC.BYPASS_USED, description="Calls a registered bypass let through"
    ).add(1, {ATTR.GUARD_ID: guard_id, ATTR.OWNER: entry.owner})
    extra = {
        k: v if v is None or isinstance(v, (str, int, float, bool)) else describe(v)
        for k, v in context.items()
    }
    if telemetry.tracing_enabled():
        span = trace.get_current_span()
        if span.is_recording():
            attrs: dict[str, Any] = {
                ATTR.GUARD_ID: guard_id,
                ATTR.OWNER: entry.owner,
                ATTR.BYPASS_ENTRY: entry.guard,
                ATTR.BYPASS_REASON: entry.reason,
                ATTR.BYPASS_EXPIRES: _expiry_text(entry),
                ATTR.BYPASS_WOULD_HAVE: would_have,
            }
            if entry.ticket:
                attrs[ATTR.BYPASS_TICKET] = entry.ticket
            span.add_event(telemetry.EVENT_BYPASS_USED, attrs)
    detail: dict[str, Any] = {
        "bypass": entry.guard,
        "owner": entry.owner,
        "reason": entry.reason,
        "ticket": entry.ticket,
        "expires": _expiry_text(entry),
        "would_have": would_have,
    }
    detail.update(extra)
    route = context.get("route")
    record_event(
        "bypass",
        outcome="bypassed",
        route=route if isinstance(route, str) else None,
        guard_id=guard_id,
        detail=detail,
    )
    if log_now:
        more = f" ({suppressed} more use(s) since the last line)" if suppressed else ""
        logger.warning(
            "agentguard bypass used: guard %s %s, but the bypass %r owned by %s lets the call "
            "through (reason: %s; ticket: %s; expires %s)%s.",
            guard_id,
            would_have,
            entry.guard,
            entry.owner,
            entry.reason,
            entry.ticket or "none",
            _fmt_expiry(entry.expires),
            more,
        )


def alert_expired(entry: Bypass, guard_id: str, **context: Any) -> None:
    """Fire the `bypass.expired` alert for the first hit of `guard_id` after `entry` ended.

    Also a `bypass` ledger row (outcome `expired`) and a span event. Call it outside locks.
    """
    from ._events import record_event

    now = _now()
    chain = [e for e in _entries if e.guard == entry.guard]
    ticket = f", ticket {entry.ticket}" if entry.ticket else ""
    message = (
        f"bypass of guard {guard_id!r} (entry {entry.guard!r}, owner {entry.owner}{ticket}) "
        f"expired {_fmt_span(now - entry.expires)} ago, on {_fmt_expiry(entry.expires)}: the "
        f"guard is back on and acted on this call. Reason given: {entry.reason}. Fix: if the "
        f"guard is still wrong for this case, the owner renews it with a new entry and a new "
        f"date (history kept); otherwise delete the entry from "
        f"{'the code' if entry.source == 'code' else entry.source}."
    )
    detail = {
        "bypass": entry.guard,
        "owner": entry.owner,
        "ticket": entry.ticket,
        "expires": _expiry_text(entry),
        "renewals": len(chain) - 1 if chain else 0,
    }
    route = context.get("route")
    record_event(
        "bypass",
        outcome="expired",
        route=route if isinstance(route, str) else None,
        guard_id=guard_id,
        detail=detail,
    )
    if telemetry.tracing_enabled():
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event(
                telemetry.EVENT_BYPASS_EXPIRED,
                {
                    telemetry.ATTR.GUARD_ID: guard_id,
                    telemetry.ATTR.OWNER: entry.owner,
                    telemetry.ATTR.BYPASS_ENTRY: entry.guard,
                    telemetry.ATTR.BYPASS_EXPIRES: _expiry_text(entry),
                },
            )
    pool = context.get("pool")
    emit_alert(
        Alert(
            kind="bypass.expired",
            message=message,
            guard_id=guard_id,
            pool=pool if isinstance(pool, str) else None,
            route=route if isinstance(route, str) else None,
            data=detail,
        )
    )


# -- listing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BypassStatus:
    """One guard's bypass as the audit sees it: the current entry and its renewal history."""

    guard: str
    state: Literal["active", "expiring", "expired"]
    current: Bypass
    history: tuple[Bypass, ...]
    uses: int | None
    now: datetime

    @property
    def renewals(self) -> int:
        return len(self.history) - 1

    @property
    def remaining(self) -> timedelta:
        """Time left (negative once expired)."""
        return self.current.expires - self.now

    @property
    def age(self) -> timedelta | None:
        """Since the first entry of the history was created, when known."""
        created = [e.created for e in self.history if e.created is not None]
        return self.now - min(created) if created else None

    def as_dict(self) -> dict[str, Any]:
        """Plain data for `--json`."""
        age = self.age
        return {
            "guard": self.guard,
            "state": self.state,
            "owner": self.current.owner,
            "reason": self.current.reason,
            "ticket": self.current.ticket,
            "expires": _expiry_text(self.current),
            "remaining_days": round(self.remaining.total_seconds() / 86400, 2),
            "age_days": None if age is None else round(age.total_seconds() / 86400, 2),
            "renewals": self.renewals,
            "uses": self.uses,
            "source": self.current.source,
            "history": [
                {
                    "owner": e.owner,
                    "reason": e.reason,
                    "ticket": e.ticket,
                    "expires": _expiry_text(e),
                    "created": None if e.created is None else e.created.isoformat(),
                    "source": e.source,
                }
                for e in self.history
            ],
        }


def use_counts() -> dict[str, int]:
    """Uses in this process per entry guard (id or pattern), summed over its renewals."""
    with _lock:
        items = list(_uses.items())
    counts: dict[str, int] = {}
    for key, n in items:
        counts[key[0]] = counts.get(key[0], 0) + n
    return counts


def bypass_statuses(
    entries: Iterable[Bypass] | None = None,
    *,
    now: datetime | None = None,
    uses: Mapping[str, int] | None = None,
    count_uses: bool = True,
    warn_days: int = EXPIRING_DAYS,
) -> list[BypassStatus]:
    """Group entries by guard (renewals together) and classify each: expired first.

    `uses` maps an entry's guard (id or pattern) to a use count (e.g. from the store's
    ledger); default: this process's counters. `count_uses=False` marks the counts unknown
    (shown as `-`, never as 0).
    """
    now = now or _now()
    counts = use_counts() if uses is None else uses
    chains: dict[str, list[Bypass]] = {}
    for entry in registered_bypasses() if entries is None else entries:
        chains.setdefault(entry.guard, []).append(entry)
    order = {"expired": 0, "expiring": 1, "active": 2}
    statuses = []
    for guard, chain in chains.items():
        chain.sort(key=_expires_of)
        current = chain[-1]
        if current.expires <= now:
            state: Literal["active", "expiring", "expired"] = "expired"
        elif current.expires - now <= timedelta(days=warn_days):
            state = "expiring"
        else:
            state = "active"
        uses_of = counts.get(guard, 0) if count_uses else None
        statuses.append(BypassStatus(guard, state, current, tuple(chain), uses_of, now))
    statuses.sort(key=lambda s: (order[s.state], s.current.expires))
    return statuses


def _fmt_span(delta: timedelta) -> str:
    seconds = abs(delta.total_seconds())
    if seconds >= 86400:
        return f"{int(seconds // 86400)}d"
    if seconds >= 3600:
        return f"{int(seconds // 3600)}h"
    return f"{int(seconds // 60)}m"


def _fmt_expiry(when: datetime) -> str:
    """`2026-12-15 (end of day UTC)` for a date entry, else `2026-12-15 18:00 UTC`."""
    if when.time() == time(0):
        return f"{(when - timedelta(days=1)).date()} (end of day UTC)"
    return f"{when:%Y-%m-%d %H:%M} UTC"


def render_bypasses(
    statuses: Sequence[BypassStatus] | None = None,
    *,
    warn_days: int = EXPIRING_DAYS,
    uses_note: str | None = None,
) -> str:
    """The bypass table of `agentguard bypasses` (and the audit): state, owner, expiry, uses.

    `statuses` defaults to every registered entry; `uses_note` is printed under the table
    (e.g. where the use counts come from).
    """
    if statuses is None:
        statuses = bypass_statuses(warn_days=warn_days)
    if not statuses:
        return "bypasses: none registered (every guard is on)."
    n = {s: sum(1 for x in statuses if x.state == s) for s in ("active", "expiring", "expired")}
    lines = [
        f"bypasses: {n['active']} active, {n['expiring']} expiring within {warn_days} days, "
        f"{n['expired']} expired (guard back on)"
    ]
    header = ("STATE", "GUARD", "OWNER", "EXPIRES", "LEFT", "AGE", "RENEWALS", "USES", "TICKET")
    rows = [header]
    for s in statuses:
        left = _fmt_span(s.remaining)
        age = s.age
        rows.append(
            (
                s.state.upper(),
                s.guard,
                s.current.owner,
                _fmt_expiry(s.current.expires),
                f"{left} ago" if s.state == "expired" else left,
                "-" if age is None else _fmt_span(age),
                str(s.renewals),
                "-" if s.uses is None else str(s.uses),
                s.current.ticket or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    lines.append("")
    for s in statuses:
        lines.append(f"{s.guard}: {s.current.reason}")
        if s.renewals:
            history = ", ".join(
                f"{_fmt_expiry(e.expires)}" + (f" ({e.ticket})" if e.ticket else "")
                for e in s.history[:-1]
            )
            lines.append(f"  renewed {s.renewals}x; earlier entries ended: {history}")
        if s.state == "expired":
            lines.append(
                f"  expired: the guard is back on. {s.current.owner}: delete the entry, or "
                f"renew it with a new entry and date if still needed."
            )
        elif s.state == "expiring":
            lines.append(
                f"  expiring: {s.current.owner}, fix the cause or renew it before "
                f"{_fmt_expiry(s.current.expires)}."
            )
        lines.append(f"  source: {s.current.source}")
    if uses_note:
        lines.append("")
        lines.append(uses_note)
    return "\n".join(lines)
