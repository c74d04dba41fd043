"""Redis access (issue 9, "Writing to a spoke's Redis means running code as the spoke").

Whoever can write a spoke's Redis can make it run things, so the harness's Redis servers
(``hubctl dev up``, the federations of these tests) require a password that only the
federation directory's owner can read, keep their data owner-only, and the daemons log
in with the password file their configs name. Real redis-server, hubd and spoked processes.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
import redis.exceptions

from hubspoke import testing
from hubspoke.client import AgentState
from hubspoke.redis_access import RedisAccess, RedisAccessError
from hubspoke.spoke.config import SpokeConfig

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def fed(tmp_path: Path) -> AsyncIterator[testing.Federation]:
    federation = testing.Federation(tmp_path / "fed", ["spoke-1", "spoke-2"])
    try:
        await federation.start()
        yield federation
    finally:
        await federation.stop()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")


async def _rewrite_done(server: redis.asyncio.Redis) -> None:
    """Wait until the AOF rewrite (a forked child writing new files) is over."""
    for _ in range(600):
        if not (await server.info("persistence"))["aof_rewrite_in_progress"]:
            return
        await asyncio.sleep(0.05)
    pytest.fail("the AOF rewrite did not finish within 30 s")


async def _raw(port: int, command: bytes) -> bytes:
    """The first reply line to an inline command from a bare connection (no AUTH)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(command + b"\r\n")
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()
        await writer.wait_closed()


async def _ping(url: str, **kwargs: Any) -> bool:
    client = redis.asyncio.Redis.from_url(url, **kwargs)
    try:
        return bool(await client.ping())
    finally:
        await client.aclose()


async def test_a_federation_runs_on_password_protected_redis(fed: testing.Federation) -> None:
    async with fed.client() as client:
        agent = await client.spawn("spoke-2", "synthetic", "duration=0.1 steps=1")
        final = await client.wait(agent, timeout=30)
    assert final.state is AgentState.SUCCEEDED

    for peer in ("hub", "spoke-1", "spoke-2"):
        access = fed.redis[peer].access
        assert access.password_file == fed.root / "redis" / "password"
        # No password, a wrong one, or the right one: only the last gets in.
        assert (await _raw(fed.redis[peer].port, b"PING")).startswith(b"-NOAUTH")
        assert (await _raw(fed.redis[peer].port, b"KEYS *")).startswith(b"-NOAUTH")
        with pytest.raises(redis.exceptions.AuthenticationError):
            await _ping(access.url)
        with pytest.raises(redis.exceptions.AuthenticationError):
            await _ping(access.url, password="not-the-password")  # noqa: S106 - a wrong one
        assert await _ping(access.url, **access.client_kwargs())

    spoke = redis.asyncio.Redis.from_url(fed.redis_url("spoke-2"))
    try:
        assert await spoke.exists(f"federation:spoke-2:agent:{final.agent_id}")
    finally:
        await spoke.aclose()


async def test_the_password_stays_in_its_owner_only_file(fed: testing.Federation) -> None:
    password_file = fed.root / "redis" / "password"
    password = password_file.read_text().strip()
    assert len(password) >= 32
    assert _mode(password_file) == 0o600

    files = fed.files
    for config in (files.hub_config, *files.spoke_configs.values()):
        text = config.read_text()
        assert 'redis_password_file = "redis/password"' in text, config
        assert password not in text, config
    assert "redis" not in files.hubctl_config.read_text()
    # Not on any command line (ps shows those to every local user), not in any log.
    for pid in fed.pids().values():
        cmdline = _cmdline(pid)
        assert password not in cmdline, cmdline
    for log in [*fed.logs.glob("*.log"), *(fed.root / "redis").glob("*/redis.log")]:
        assert password not in log.read_text(errors="replace"), log


async def test_redis_data_is_owner_only(fed: testing.Federation) -> None:
    # Writes after start: the AOF grows, and a rewrite makes new files with the server's umask.
    async with fed.client() as client:
        await client.spawn("spoke-1", "synthetic", "duration=0.1 steps=1")
    server = redis.asyncio.Redis.from_url(fed.redis_url("spoke-1"))
    try:
        await server.bgrewriteaof()
        await _rewrite_done(server)
    finally:
        await server.aclose()

    redis_dir = fed.root / "redis"
    assert _mode(redis_dir) == 0o700
    seen: list[Path] = []
    for peer in ("hub", "spoke-1", "spoke-2"):
        data_dir = redis_dir / peer
        assert _mode(data_dir) == 0o700
        for dirpath, dirnames, filenames in os.walk(data_dir):
            for name in dirnames:
                assert _mode(Path(dirpath) / name) == 0o700, name
            for name in filenames:
                path = Path(dirpath) / name
                if stat.S_ISREG(path.lstat().st_mode):
                    seen.append(path)
                    assert _mode(path) & 0o077 == 0, f"{path} is {_mode(path):04o}"
    names = {p.name for p in seen}
    assert {"redis.log", "auth.conf"} <= names
    assert any(n.startswith("appendonly") for n in names), names


async def test_files_an_earlier_run_left_readable_are_tightened(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    loose = data / "redis.log"  # appended to, never re-created, by the next run
    loose.write_bytes(b"an earlier run\n")
    loose.chmod(0o644)
    async with testing.EmbeddedRedis(data, password_file=tmp_path / "pw") as server:
        assert await _ping(server.url)
    assert _mode(data) == 0o700
    assert _mode(loose) == 0o600


async def test_a_daemon_refuses_a_password_file_others_can_read(tmp_path: Path) -> None:
    password_file = tmp_path / "redis.pass"
    password_file.write_text("s3cret\n")
    password_file.chmod(0o644)
    access = RedisAccess("redis://127.0.0.1:1/0", password_file=password_file)
    with pytest.raises(RedisAccessError, match="mode 0644"):
        access.check()

    fed = testing.Federation(tmp_path / "fed", ["spoke-1"], ready_timeout_s=20)
    try:
        await fed.prepare()
        (fed.root / "redis" / "password").chmod(0o640)
        with pytest.raises(testing.DaemonError, match="exited with status 2"):
            await fed.start_spoked("spoke-1")
        log = (fed.logs / "spoke-1.log").read_text()
        assert "redis_password_file" in log
        assert "chmod 600" in log
    finally:
        await fed.stop()


async def test_a_spoke_with_the_wrong_password_does_not_start(tmp_path: Path) -> None:
    fed = testing.Federation(tmp_path / "fed", ["spoke-1"], ready_timeout_s=20)
    try:
        await fed.prepare()
        wrong = tmp_path / "wrong.pass"
        wrong.write_text("not-the-password\n")
        wrong.chmod(0o600)
        env = {"SPOKE_REDIS_PASSWORD_FILE": str(wrong)}
        with pytest.raises(testing.DaemonError):
            await fed.start_spoked("spoke-1", env=env)
        log = (fed.logs / "spoke-1.log").read_text()
        assert "cannot reach Redis" in log
        assert "not-the-password" not in log
    finally:
        await fed.stop()


def test_config_names_the_password_file_and_never_shows_the_password(tmp_path: Path) -> None:
    password_file = tmp_path / "redis.pass"
    password_file.write_text("hunter2-hunter2\n")
    password_file.chmod(0o600)
    env = {
        "SPOKE_REDIS_URL": "rediss://redis.example:6380/0",
        "SPOKE_REDIS_USERNAME": "spoke-1",
        "SPOKE_REDIS_PASSWORD_FILE": str(password_file),
        "SPOKE_REDIS_TLS_CA_FILE": str(tmp_path / "ca.crt"),
    }
    cfg = SpokeConfig.load(None, env)
    assert cfg.redis == RedisAccess(
        "rediss://redis.example:6380/0",
        username="spoke-1",
        password_file=password_file,
        tls_ca_file=tmp_path / "ca.crt",
    )
    kwargs = cfg.redis.client_kwargs()
    assert kwargs["username"] == "spoke-1"
    assert kwargs["password"] == "hunter2-hunter2"  # noqa: S105 - the file's, read back
    assert kwargs["ssl_ca_certs"] == str(tmp_path / "ca.crt")
    assert kwargs["ssl_cert_reqs"] == "required"
    assert "hunter2" not in repr(cfg)
    assert "hunter2" not in repr(cfg.redis)

    with pytest.raises(Exception, match="rediss://"):
        SpokeConfig.load(None, {**env, "SPOKE_REDIS_URL": "redis://redis.example:6379/0"})
    with pytest.raises(Exception, match="use one of them"):
        SpokeConfig.load(None, {**env, "SPOKE_REDIS_URL": "rediss://:pw@redis.example:6380/0"})
    with pytest.raises(Exception, match="go together"):
        SpokeConfig.load(None, {**env, "SPOKE_REDIS_TLS_CERT_FILE": str(tmp_path / "c")})


def test_an_empty_optional_path_in_a_file_means_none(tmp_path: Path) -> None:
    """hubctl init writes ``# redis_password_file = ""``: uncommented, it changes nothing."""
    config = tmp_path / "spoke.toml"
    config.write_text('redis_password_file = ""\nredis_tls_ca_file = ""\n')
    loaded = SpokeConfig.load(config, {})
    assert loaded.redis_password_file is None
    assert loaded.redis == RedisAccess(loaded.redis_url)


SPOKE_ACL = {
    "keys": ["federation:spoke-1:*"],
    "channels": ["federation:spoke-1:*"],
    "categories": ["+@all", "-@dangerous"],
    "commands": ["+config|get", "+info", "+client|list", "+client|setname", "+client|getname"],
}
"""docs/operations.md's ACL user for spoke-1 (after ``reset resetchannels``)."""


async def test_a_spoke_runs_as_an_acl_user_kept_to_its_own_keys(tmp_path: Path) -> None:
    fed = testing.Federation(tmp_path / "fed", ["spoke-1"], ready_timeout_s=20)
    try:
        await fed.prepare()
        user_pass = tmp_path / "spoke-1.pass"
        user_pass.write_text("spoke-1-only\n")
        user_pass.chmod(0o600)
        admin = redis.asyncio.Redis.from_url(fed.redis_url("spoke-1"))
        try:
            await admin.acl_setuser(
                "spoke-1",
                enabled=True,
                passwords=["+spoke-1-only"],
                reset=True,
                reset_channels=True,
                keys=SPOKE_ACL["keys"],
                channels=SPOKE_ACL["channels"],
                categories=SPOKE_ACL["categories"],
                commands=SPOKE_ACL["commands"],
            )
            await admin.set("other:secret", "x")
        finally:
            await admin.aclose()
        env = {"SPOKE_REDIS_USERNAME": "spoke-1", "SPOKE_REDIS_PASSWORD_FILE": str(user_pass)}
        await fed.start_spoked("spoke-1", env=env)
        await fed.start_hub()
        async with fed.client() as client:
            agent = await client.spawn("spoke-1", "synthetic", "duration=0.1 steps=1")
            final = await client.wait(agent, timeout=30)
            assert final.state is AgentState.SUCCEEDED
            assert (await client.queue_stats("spoke-1")).workers > 0

        access = RedisAccess(fed.redis["spoke-1"].access.url, "spoke-1", user_pass)
        user = redis.asyncio.Redis.from_url(access.url, **access.client_kwargs())
        try:
            assert await user.exists(f"federation:spoke-1:agent:{final.agent_id}")
            with pytest.raises(redis.exceptions.NoPermissionError):
                await user.get("other:secret")
            with pytest.raises(redis.exceptions.NoPermissionError):
                await user.flushall()
            with pytest.raises(redis.exceptions.NoPermissionError):
                await user.config_set("save", "")
        finally:
            await user.aclose()
    finally:
        await fed.stop()
