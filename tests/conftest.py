"""Fixtures shared by the whole suite: a real Redis, and the venv's console scripts on PATH.

One redis-server runs for the session (or ``--redis-url`` names an external one); each test
starts from an empty keyspace. Tests that kill or restart Redis get their own servers from
``embedded_redis_factory``. ``scrape_metrics`` reads a daemon's Prometheus endpoint.
"""

from __future__ import annotations

import asyncio
import os
import sys
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Protocol

import pytest
import redis
import redis.asyncio
from prometheus_client.parser import text_string_to_metric_families

from hubspoke import testing


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


@pytest.fixture(scope="session")
def redis_server_url(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    _venv_bin_on_path: None,
) -> Iterator[str]:
    """URL of the session's Redis: ``--redis-url`` if given, else a private redis-server.

    Sync on purpose: a session-scoped async fixture would live on another event loop than
    the function-scoped tests (see PITFALLS.md, pytest-asyncio); the server belongs to a
    loop on a thread of its own.
    """
    external: str | None = request.config.getoption("--redis-url")
    if external:
        yield external
        return
    server = testing.EmbeddedRedis(tmp_path_factory.mktemp("redis-session"))
    with testing.LoopThread("redis-session") as loop:
        loop.run(server.start())
        try:
            yield server.url
        finally:
            loop.run(server.stop())


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
        appendfsync: testing.AppendFsync = "everysec",
        unix_socket: bool = False,
    ) -> Awaitable[testing.EmbeddedRedis]: ...


@pytest.fixture
async def embedded_redis_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[EmbeddedRedisFactory]:
    """Private, started servers for tests that kill or restart Redis; all stopped at teardown."""
    servers: list[testing.EmbeddedRedis] = []

    async def start(
        *,
        port: int = 0,
        appendonly: bool = True,
        appendfsync: testing.AppendFsync = "everysec",
        unix_socket: bool = False,
    ) -> testing.EmbeddedRedis:
        # mktemp keeps the path short enough for a unix socket, unlike a long test name.
        server = testing.EmbeddedRedis(
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
