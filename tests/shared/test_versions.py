"""Schema versions in Redis: a daemon refuses a newer one and migrates an older one.

Real redis-server (the session one), real spoked subprocesses, an in-process HubApp.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio

from hubspoke import keys, policy, schema, version
from hubspoke.hub.app import HubApp
from hubspoke.hub.config import HubConfig
from hubspoke.hub.store import schema_key
from hubspoke.spoke.keys import SpokeKeys

SPOKE = "spoke-1"
SPOKE_SCHEMA = SpokeKeys(SPOKE).schema


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """Keys, trust store and policy for a hub ``hub`` and a spoke ``spoke-1``."""
    lines = []
    for name, role in (("hub", "hub"), (SPOKE, "spoke")):
        key = keys.generate(name)
        keys.write_keypair(key, tmp_path / "keys")
        public = keys.encode_public(key.public)
        lines += ["[[peer]]", f'name = "{name}"', f'role = "{role}"', f'keys = ["{public}"]', ""]
    (tmp_path / "trust.toml").write_text("\n".join(lines))
    (tmp_path / "policy.toml").write_text(policy.ALLOW_OPERATOR_EVERYTHING)
    return tmp_path


@pytest.fixture
async def db(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


async def _spoked(site: Path, redis_url: str) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "SPOKE_NAME": SPOKE,
        "SPOKE_LISTEN": "127.0.0.1:0",
        "SPOKE_KEY_FILE": str(site / "keys" / f"{SPOKE}.key"),
        "SPOKE_TRUST_FILE": str(site / "trust.toml"),
        "SPOKE_POLICY_FILE": str(site / "policy.toml"),
        "SPOKE_REDIS_URL": redis_url,
        "SPOKE_ALLOW_EVICTION": "true",
        "SPOKE_LOG_LEVEL": "error",
    }
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hubspoke.spoke",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )


async def _serves_then_stops(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
    assert line.startswith(b"serving "), line
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), timeout=30) == 0


async def test_spoked_refuses_a_redis_with_a_newer_schema(
    site: Path, redis_url: str, db: redis.asyncio.Redis
) -> None:
    await db.set(SPOKE_SCHEMA, version.SPOKE_SCHEMA_VERSION + 1)
    await db.zadd(SpokeKeys(SPOKE).agent_index, {"a1": 1})
    proc = await _spoked(site, redis_url)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 2
    assert stdout == b""
    text = stderr.decode()
    assert text.count("\n") == 1, text
    assert text.startswith(f"Error: spoke {SPOKE}: its Redis holds schema version 2"), text
    assert "newer than the 1 this hubspoke understands" in text
    assert await db.get(SPOKE_SCHEMA) == str(version.SPOKE_SCHEMA_VERSION + 1)  # untouched


async def test_spoked_refuses_a_schema_key_that_is_not_a_version(
    site: Path, redis_url: str, db: redis.asyncio.Redis
) -> None:
    await db.set(SPOKE_SCHEMA, "v2-beta")
    proc = await _spoked(site, redis_url)
    _, stderr = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 2
    assert "not a schema version" in stderr.decode()


async def test_spoked_migrates_an_unversioned_site_and_stamps_a_fresh_one(
    site: Path, redis_url: str, db: redis.asyncio.Redis
) -> None:
    # An older spoked's data: the agent index, no schema key (version 0).
    await db.zadd(SpokeKeys(SPOKE).agent_index, {"a1": 1})
    await _serves_then_stops(await _spoked(site, redis_url))
    assert await db.get(SPOKE_SCHEMA) == str(version.SPOKE_SCHEMA_VERSION)
    assert await db.zrange(SpokeKeys(SPOKE).agent_index, 0, -1) == ["a1"]  # data kept

    await db.flushdb()
    await _serves_then_stops(await _spoked(site, redis_url))
    assert await db.get(SPOKE_SCHEMA) == str(version.SPOKE_SCHEMA_VERSION)


def _hub_config(site: Path, redis_url: str) -> HubConfig:
    return HubConfig(
        listen="127.0.0.1:0",
        key_file=site / "keys" / "hub.key",
        trust_file=site / "trust.toml",
        policy_file=site / "policy.toml",
        redis_url=redis_url,
    )


async def test_hub_refuses_a_newer_schema_and_migrates_an_older_one(
    site: Path, redis_url: str, db: redis.asyncio.Redis
) -> None:
    key = schema_key("hub")
    await db.set(key, 7)
    app = HubApp(_hub_config(site, redis_url))
    with pytest.raises(version.SchemaVersionError, match="schema version 7"):
        await app.start()
    assert await db.get(key) == "7"

    await db.delete(key)
    await db.set("federation:hub:hub:nonce:operator:00", "1", ex=60)  # an older hub's data
    async with HubApp(_hub_config(site, redis_url)):
        assert await db.get(key) == str(version.HUB_SCHEMA_VERSION)


async def test_migrations_run_in_order_and_record_each_step(db: redis.asyncio.Redis) -> None:
    ran: list[int] = []

    def step(n: int) -> schema.Migration:
        async def run(client: redis.asyncio.Redis) -> None:
            assert await client.get("t:schema") == str(n)  # the key moves after each step
            ran.append(n)

        return run

    async def has_data() -> bool:
        return True

    await db.set("t:schema", 1)
    state = await schema.ensure_schema(
        db, "t:schema", 3, {n: step(n) for n in range(3)}, owner="test", has_data=has_data
    )
    assert (state.found, state.current, state.migrated, ran) == (1, 3, (1, 2), [1, 2])
    again = await schema.ensure_schema(db, "t:schema", 3, {}, owner="test", has_data=has_data)
    assert again.migrated == ()
