"""Catalog entry 2: the validator "disabled just for the launch" that stays off for months.

The user-id validator of `escalate_to_human` rejects names; on launch day the model still
sends them, so the team turns the validator off. Before: a flag nobody turns back on. After:
a registered bypass with an owner, a reason and a date; every use is recorded, and on the day
after the date the validator is back on by itself and the owner is alerted.

Time is simulated (an injectable clock), so the story runs offline in milliseconds.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import agentguard as ag
from agentguard import bypasses
from agentguard._redact import describe
from agentguard.bypasses import active_bypass, record_bypass_use
from agentguard.errors import ArgumentProblem, ToolArgumentError

USERS = {"u_48213": "Dana Ruiz", "u_51007": "Ken Ito"}
ESCALATED: list[str] = []


class StoryClock(ag.Clock):
    """The wall clock of the story: it moves only when the story says so."""

    def __init__(self) -> None:
        self.wall = datetime(2026, 6, 1, 9, 0, tzinfo=timezone.utc)
        self.mono = 0.0

    def now(self) -> datetime:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def to(self, when: datetime) -> None:
        self.mono += (when - self.wall).total_seconds()
        self.wall = when


def check_user_id(user_id: str) -> None:
    """The `args:escalate_to_human.user_id` guard: an id that resolves to a real user.

    (The shape of every agentguard guard: it consults the bypass registry only at the point
    where it would reject, and records what it would have done.)
    """
    if user_id in USERS:
        return
    guard_id = "args:escalate_to_human.user_id"
    entry = active_bypass(guard_id)
    if entry is not None:
        record_bypass_use(
            entry,
            guard_id,
            f"would have rejected user_id={describe(user_id)}",
            route="escalate_to_human",
        )
        return
    raise ToolArgumentError(
        tool="escalate_to_human",
        problems=[
            ArgumentProblem(
                argument="user_id",
                received=user_id,
                reason="no user has this id",
                expected="an id such as 'u_48213' from the search_users result",
                candidates=tuple(USERS),
            )
        ],
    )


@ag.tool_call
def escalate_to_human(user_id: str) -> str:
    check_user_id(user_id)
    ESCALATED.append(user_id)
    return f"ticket opened for {user_id}"


def main() -> None:
    bypasses._reset_for_tests()
    clock = StoryClock()
    ag.configure(clock=clock)
    alerts: list[ag.Alert] = []
    ag.on_alert(alerts.append)
    try:
        _story(clock, alerts)
    finally:
        ag.remove_alert_hook(alerts.append)
        bypasses._reset_for_tests()
        ag.configure(clock=ag.Clock())


def _story(clock: StoryClock, alerts: list[ag.Alert]) -> None:
    print("Before: `VALIDATE_USER_IDS = False  # just for the launch` ... six months later,")
    print("  escalations still go to 'the user mentioned above'; nothing says the check is off.")
    print()
    print("After: the only off switch is a registered bypass (owner, reason, date <= 30 days):")
    try:
        ag.bypass(
            "args:escalate_to_human.user_id",
            owner="ana@example.com",
            reason="launch",
            expires="2026-06-15",
        )
    except ag.BypassError as exc:
        print(f"  reason='launch': BypassError: {str(exc).split(': ', 1)[1].split('. Fix')[0]}")
    try:
        ag.bypass(
            "args:escalate_to_human.user_id",
            owner="ana@example.com",
            reason="model sends names until prompt v7",
            expires="2027-01-01",
        )
    except ag.BypassError as exc:
        print(f"  a far date: BypassError: {str(exc).split(': ', 1)[1].split(' (bypass_')[0]}")
    ag.bypass(
        "args:escalate_to_human.user_id",
        owner="ana@example.com",
        reason="model sends names until prompt v7",
        expires="2026-06-15",
        ticket="OPS-123",
    )
    print(
        "  registered: args:escalate_to_human.user_id, ana@example.com, until 2026-06-15 (OPS-123)"
    )

    print("\nLaunch week: the model sends names; the bypass lets them through, visibly")
    with ag.BudgetPool(name="support-run", tool_calls=20) as pool:
        for when, user_id in [(3, "the user mentioned above"), (4, "Dana"), (9, "u_51007")]:
            clock.to(datetime(2026, 6, when, 10, 0, tzinfo=timezone.utc))
            escalate_to_human(user_id)
    for row in pool.ledger:
        if row.kind == "bypass" and row.detail:
            print(f"  ledger: {row.detail['guard_id']} {row.outcome}: {row.detail['would_have']}")
    print(f"  escalations that went out: {len(ESCALATED)} (2 with a name instead of an id)")
    print(f"  uses counted: {bypasses.use_counts()}")

    print("\nMonthly audit on 2026-06-10 (`agentguard bypasses --check` in CI exits 1):")
    clock.to(datetime(2026, 6, 10, 8, 0, tzinfo=timezone.utc))
    for line in bypasses.render_bypasses().splitlines():
        print(f"  | {line}".rstrip())

    print("\n2026-06-16: the date has passed. Nobody touched the code; the validator is back on:")
    clock.to(datetime(2026, 6, 16, 0, 0, tzinfo=timezone.utc) + timedelta(hours=7))
    with ag.BudgetPool(name="support-run", tool_calls=20):
        try:
            escalate_to_human("the customer from before")
        except ToolArgumentError as exc:
            print(f"  rejected: {exc.model_message.splitlines()[1]}")
    for alert in alerts:
        if alert.kind == "bypass.expired":
            print(f"  ALERT [{alert.kind}] {alert.message[:140]}...")
    for line in bypasses.render_bypasses().splitlines()[:3]:
        print(f"  | {line}".rstrip())


if __name__ == "__main__":
    main()
