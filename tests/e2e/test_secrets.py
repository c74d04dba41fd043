"""Profile secrets (issue 9, "Secrets travel in task text"): a profile names environment
variables whose values spoked reads from owner-only files when it starts each agent, so no
caller ever puts a credential in a task.

Real processes: spoked and hubd as daemons (logs at debug level in files), each with its own
redis-server, hubctl as a subprocess. The agent (tests/agents/secret_hash.py) prints only the
SHA-256 of what it got.
"""

from __future__ import annotations

import hashlib
import secrets
import sys
from pathlib import Path

import pytest
import redis.asyncio

from hubspoke import testing
from hubspoke.gen.federation.v1 import agent_pb2

from .conftest import REPO, wait_final

Agent = agent_pb2.Agent
pytestmark = pytest.mark.slow

AGENT = REPO / "tests" / "agents" / "secret_hash.py"
VAR = "GITHUB_TOKEN"


def _profiles(secret_file: Path) -> str:
    return testing.DEFAULT_PROFILES + (
        "\n[profiles.secretive]\n"
        f'argv = ["{sys.executable}", "{AGENT}", "{VAR}"]\n'
        f'secrets = {{ {VAR} = "{secret_file}" }}\n'
    )


def _write_secret(path: Path, value: str, mode: int = 0o600) -> None:
    path.write_text(value + "\n")
    path.chmod(mode)


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


async def _redis_dump(url: str) -> bytes:
    """Every key and value in a Redis, as one byte string."""
    client = redis.asyncio.Redis.from_url(url, decode_responses=False)
    parts: list[bytes] = []
    try:
        async for key in client.scan_iter(count=500):
            parts.append(key)
            kind = (await client.type(key)).decode()
            if kind == "string":
                parts.append(await client.get(key) or b"")
            elif kind == "hash":
                for k, v in (await client.hgetall(key)).items():
                    parts += [k, v]
            elif kind == "list":
                parts += await client.lrange(key, 0, -1)
            elif kind == "set":
                parts += list(await client.smembers(key))
            elif kind == "zset":
                parts += [m for m, _ in await client.zrange(key, 0, -1, withscores=True)]
            elif kind == "stream":
                for _, fields in await client.xrange(key):
                    for k, v in fields.items():
                        parts += [k, v]
    finally:
        await client.aclose()
    return b"\n".join(parts)


async def _hubctl(fed: testing.Federation, *argv: str) -> tuple[int, str, str]:
    """hubctl as the operator: exit code, stdout and stderr."""
    run = await fed.hubctl(*argv)
    return run.code, run.stdout, run.stderr


async def test_the_agent_gets_its_secret_and_nothing_else_ever_holds_it(tmp_path: Path) -> None:
    secret_dir = tmp_path / "secrets"
    secret_dir.mkdir(mode=0o700)
    secret_file = secret_dir / "gh"
    first = "ghp_" + secrets.token_hex(20)
    _write_secret(secret_file, first)
    fed = testing.Federation(
        tmp_path / "fed",
        ["spoke-1"],
        spoke_profiles=_profiles(secret_file),
        spoke_env={"SPOKE_LOG_LEVEL": "debug"},
        hub_env={"HUB_LOG_LEVEL": "debug"},
    )
    try:
        await fed.start()
        async with fed.client() as client:
            agent = await client.spawn("spoke-1", "secretive", "build it")
            final = await wait_final(client, agent.agent_id)
            assert final.state == Agent.STATE_SUCCEEDED, final
            assert f"SECRET {VAR} {_sha(first)}" in final.stdout_tail

            # Rotation: the file is read at every start, not once at start-up.
            second = "ghp_" + secrets.token_hex(20)
            _write_secret(secret_file, second)
            rotated = await client.spawn("spoke-1", "secretive", "again")
            rotated = await wait_final(client, rotated.agent_id)
            assert f"SECRET {VAR} {_sha(second)}" in rotated.stdout_tail

            # Unreadable now (group-readable): the start fails, naming the variable only.
            secret_file.chmod(0o640)
            refused = await client.spawn("spoke-1", "secretive", "once more")
            refused = await wait_final(client, refused.agent_id)
            assert refused.state == Agent.STATE_FAILED
            assert refused.reason == "START_FAILED"
            assert VAR in refused.stderr_tail
            assert "not owner-only" in refused.stderr_tail
            secret_file.chmod(0o600)

        shown = []
        for agent_id in (agent.agent_id, rotated.agent_id, refused.agent_id):
            for argv in (("status", agent_id), ("status", agent_id, "--json")):
                code, out, err = await _hubctl(fed, *argv)
                assert code == 0, err
                shown.append(out + err)
        code, out, err = await _hubctl(fed, "list", "--json")
        assert code == 0, err
        shown.append(out)
        assert len(shown) == 7
        dumps = [await _redis_dump(fed.redis_url(peer)) for peer in ("spoke-1", "hub")]
        assert agent.agent_id.encode() in dumps[0]  # the dump does see the records
    finally:
        await fed.stop()
    logs = [d.log_file.read_bytes() for d in fed.daemons]
    assert b"agent_started" in logs[0]  # the spoke's log is at debug level, and complete
    for value in (first, second):
        assert all(value not in text for text in shown)
        assert all(value.encode() not in dump for dump in dumps)
        assert all(value.encode() not in log for log in logs)


async def test_a_secret_file_others_may_read_stops_spoked_at_start_up(tmp_path: Path) -> None:
    secret_file = tmp_path / "gh"
    _write_secret(secret_file, "ghp_" + secrets.token_hex(20), mode=0o644)
    fed = testing.Federation(tmp_path / "fed", ["spoke-1"], spoke_profiles=_profiles(secret_file))
    try:
        with pytest.raises(testing.DaemonError):
            await fed.start(hub=False)
        log = fed.spoked().log_file.read_text()
    finally:
        await fed.stop()
    line = next(line for line in log.splitlines() if line.startswith("Error:"))
    assert "profile 'secretive'" in line
    assert str(secret_file) in line
    assert "0644" in line
    assert VAR in line


async def test_a_missing_secret_file_stops_spoked_at_start_up(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    fed = testing.Federation(tmp_path / "fed", ["spoke-1"], spoke_profiles=_profiles(missing))
    try:
        with pytest.raises(testing.DaemonError):
            await fed.start(hub=False)
        log = fed.spoked().log_file.read_text()
    finally:
        await fed.stop()
    assert "profile 'secretive'" in log
    assert str(missing) in log
