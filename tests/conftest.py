"""Fixtures shared by the whole suite: a real Redis, and the venv's console scripts on PATH.

One redis-server runs for the session (or ``--redis-url`` names an external one); each test
starts from an empty keyspace. Tests that kill or restart Redis get their own servers from
``embedded_redis_factory``. ``scrape_metrics`` reads a daemon's Prometheus endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Protocol

import pytest
import redis
import redis.asyncio
from prometheus_client.parser import text_string_to_metric_families

from hubspoke import redis_server

_START_TIMEOUT = 10.0


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--redis-url",
        default=None,
        help="run the suite against this Redis (e.g. redis://localhost:6379/15) instead of "
        "a private redis-server; each test FLUSHDBs that database",
    )


@pytest.fixture(scope="session", autouse=True)
def _venv_bin_on_path() -> Iterator[None]:
    """Put the interpreter's bin dir first on PATH so subprocesses find spoked, hubd, hubctl.

    Not resolved: a venv's python is a symlink, and its own bin dir is the one we want.
    """
    bindir = str(Path(sys.executable).parent)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATH", os.pathsep.join([bindir, os.environ.get("PATH", "")]))
        yield


def _wait_for_ping(proc: subprocess.Popen[bytes], port: int) -> str | None:
    """None once the server answers PING, else why it never will."""
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, socket_connect_timeout=1)
    try:
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return f"exited with status {proc.returncode}"
            try:
                if client.ping():
                    return None
            except redis.RedisError:
                pass
            time.sleep(0.02)
        return f"no PONG within {_START_TIMEOUT:g} s"
    finally:
        client.close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group, SIGKILL it if it lingers; always reap."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)
            return


def _start_session_server(data_dir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start redis-server on a free port, trying new ports while they turn out taken."""
    binary = redis_server.find_redis_server()
    log = data_dir / "redis.log"
    reason = ""
    for _ in range(3):
        port = redis_server.pick_free_port()
        argv = redis_server.redis_server_argv(binary, port=port, data_dir=data_dir)
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
            )
        problem = _wait_for_ping(proc, port)
        if problem is None:
            return proc, port
        _stop(proc)
        tail = " | ".join(log.read_text(errors="replace").splitlines()[-10:])
        reason = f"{problem}; log tail: {tail}"
        if "Address already in use" not in tail:
            break
    raise redis_server.RedisServerError(f"session redis-server did not start: {reason}")


@pytest.fixture(scope="session")
def redis_server_url(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    _venv_bin_on_path: None,
) -> Iterator[str]:
    """URL of the session's Redis: ``--redis-url`` if given, else a private redis-server.

    Sync on purpose: a session-scoped async fixture would live on another event loop than
    the function-scoped tests (see PITFALLS.md, pytest-asyncio).
    """
    external: str | None = request.config.getoption("--redis-url")
    if external:
        yield external
        return
    proc, port = _start_session_server(tmp_path_factory.mktemp("redis-session"))
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(proc)


@pytest.fixture
def redis_url(request: pytest.FixtureRequest, redis_server_url: str) -> str:
    """The session Redis, emptied for this test.

    Our own server is FLUSHALLed; an external ``--redis-url`` only has its own database
    flushed, so pointing the suite at a shared Redis cannot wipe other databases.
    """
    client = redis.Redis.from_url(redis_server_url)
    try:
        if request.config.getoption("--redis-url"):
            client.flushdb()
        else:
            client.flushall()
    finally:
        client.close()
    return redis_server_url


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """An asyncio client on the emptied session Redis, returning bytes."""
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=False)
    try:
        yield client
    finally:
        await client.aclose()


class EmbeddedRedisFactory(Protocol):
    """Starts a fresh `EmbeddedRedis` in its own temporary directory."""

    def __call__(
        self,
        *,
        port: int = 0,
        appendonly: bool = True,
        appendfsync: redis_server.AppendFsync = "everysec",
        unix_socket: bool = False,
    ) -> Awaitable[redis_server.EmbeddedRedis]: ...


@pytest.fixture
async def embedded_redis_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[EmbeddedRedisFactory]:
    """Private, started servers for tests that kill or restart Redis; all stopped at teardown."""
    servers: list[redis_server.EmbeddedRedis] = []

    async def start(
        *,
        port: int = 0,
        appendonly: bool = True,
        appendfsync: redis_server.AppendFsync = "everysec",
        unix_socket: bool = False,
    ) -> redis_server.EmbeddedRedis:
        # mktemp keeps the path short enough for a unix socket, unlike a long test name.
        server = redis_server.EmbeddedRedis(
            tmp_path_factory.mktemp("redis"),
            port=port,
            appendonly=appendonly,
            appendfsync=appendfsync,
            unix_socket=unix_socket,
        )
        servers.append(server)
        await server.start()
        return server

    try:
        yield start
    finally:
        for server in servers:
            await server.stop()


class Scrape:
    """One scrape of a ``/metrics`` endpoint, parsed."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._samples = {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def value(self, name: str, **labels: str) -> float:
        """The sample with exactly these labels, or 0 if the endpoint does not show it."""
        return self._samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def scrape_metrics() -> Callable[[int], Awaitable[Scrape]]:
    """``await scrape_metrics(port)``: GET http://127.0.0.1:port/metrics, parsed."""

    async def scrape(port: int) -> Scrape:
        def fetch() -> str:
            url = f"http://127.0.0.1:{port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as response:
                return str(response.read().decode())

        return Scrape(await asyncio.to_thread(fetch))

    return scrape


@pytest.fixture(autouse=True)
def _collect_garbage_after_each_test() -> Iterator[None]:
    """Collect after every test, so an unclosed connection or transport raises its
    ResourceWarning (an error here) in the test that leaked it, not in a later one."""
    yield
    import gc

    gc.collect()
