"""Shared fixtures: a clean agentguard configuration per test, real OpenTelemetry SDK readers."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

import agentguard as ag
from agentguard import _config, alerts, bypasses
from tests.redis_server import own_redis, redis_prefix, redis_server, redis_url  # noqa: F401


@pytest.fixture(autouse=True)
def _clean_agentguard() -> Iterator[None]:
    """Each test starts with default settings, no alert hooks, no default pool, no bypass."""
    _config._reset_for_tests()
    bypasses._reset_for_tests()
    saved_hooks = list(alerts._hooks)
    saved_sinks = list(alerts._sinks)
    yield
    _config._reset_for_tests()
    bypasses._reset_for_tests()
    alerts._hooks[:] = saved_hooks
    alerts._sinks[:] = saved_sinks


@pytest.fixture
def captured_alerts() -> Iterator[list[ag.Alert]]:
    """Every alert emitted during the test, in order."""
    seen: list[ag.Alert] = []
    ag.on_alert(seen.append)
    yield seen
    ag.remove_alert_hook(seen.append)


@pytest.fixture
def agentguard_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="agentguard")
    return caplog
