"""Wait strategies for `@ag.retry`: how long to wait before attempt n+1.

Each strategy is a tenacity `wait_base` (so it composes with `+` and any tenacity wait works
in its place): called with a `tenacity.RetryCallState` whose `attempt_number` is the attempt
that just failed, it returns seconds.

```python
ag.wait.exponential(initial=0.5, max=8, jitter=0.5)  # 0.5, 1, 2, 4, 8, 8 ... + U(0, 0.5)
ag.wait.fixed(2)                                     # 2 s before every retry
ag.wait.none()                                       # retry at once
```

Under `ag.set_testing(True)` no wait is slept (the computed wait is still recorded).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import timedelta

import tenacity
from tenacity import RetryCallState

from .errors import ConfigurationError

__all__ = ["WaitStrategy", "Exponential", "exponential", "fixed", "none"]

WaitStrategy = tenacity.wait.wait_base | Callable[[RetryCallState], float]
"""A tenacity wait: `wait(retry_state) -> seconds`."""


def _seconds(value: float | timedelta, what: str) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds < 0 or seconds != seconds:
        raise ConfigurationError(
            f"ag.wait: {what}={value!r} is not a usable duration. Expected: seconds >= 0 "
            f"(a number or a timedelta)."
        )
    return seconds


class Exponential(tenacity.wait.wait_base):
    """`min(initial * exp_base ** (n - 1) + U(0, jitter), max)` seconds after attempt n.

    Thread-safe; `seed` makes the jitter reproducible (tests, examples).
    """

    def __init__(
        self,
        initial: float | timedelta = 0.5,
        max: float | timedelta = 8.0,
        jitter: float | timedelta = 0.5,
        exp_base: float = 2.0,
        seed: int | None = None,
    ) -> None:
        self.initial = _seconds(initial, "initial")
        self.max = _seconds(max, "max")
        self.jitter = _seconds(jitter, "jitter")
        if exp_base < 1:
            raise ConfigurationError(
                f"ag.wait.exponential(exp_base={exp_base!r}): expected a base >= 1 (2 doubles "
                f"the wait after each failed attempt)."
            )
        self.exp_base = float(exp_base)
        self._random = random.Random(seed)

    def __call__(self, retry_state: RetryCallState) -> float:
        n = max(1, retry_state.attempt_number)
        try:
            base = self.initial * self.exp_base ** (n - 1)
        except OverflowError:
            base = self.max
        jitter = self._random.uniform(0, self.jitter) if self.jitter else 0.0
        return max(0.0, min(base + jitter, self.max))

    def __repr__(self) -> str:
        return (
            f"ag.wait.exponential(initial={self.initial:g}, max={self.max:g}, "
            f"jitter={self.jitter:g}, exp_base={self.exp_base:g})"
        )


def exponential(
    initial: float | timedelta = 0.5,
    max: float | timedelta = 8.0,
    jitter: float | timedelta = 0.5,
    exp_base: float = 2.0,
    *,
    seed: int | None = None,
) -> Exponential:
    """Exponential backoff with additive jitter, capped at `max` seconds (jitter included)."""
    return Exponential(initial=initial, max=max, jitter=jitter, exp_base=exp_base, seed=seed)


def fixed(seconds: float | timedelta) -> tenacity.wait.wait_fixed:
    """The same wait before every retry."""
    return tenacity.wait.wait_fixed(_seconds(seconds, "seconds"))


def none() -> tenacity.wait.wait_none:
    """No wait: retry at once (think twice: this is how retry storms start)."""
    return tenacity.wait.wait_none()
