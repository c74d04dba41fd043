"""The hub's Redis layout for Redis Cluster (issue 11): the ``redis+cluster://`` choice, and
the schema 2 upgrade on one Redis, where a nonce claimed under its schema 1 name stays
claimed until it expires (no replay window opens while hubds are upgraded)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import redis.asyncio

from hubspoke import commands, errors
from hubspoke.admission import RateLimit
from hubspoke.hub.config import HubConfig, HubConfigError
from hubspoke.hub.store import HubStore, legacy_nonce_key, nonce_key, rate_key, schema_key
from hubspoke.spoke.config import SpokeConfig, SpokeConfigError
from hubspoke.version import HUB_SCHEMA_VERSION


def _hub(redis_url: str) -> HubConfig:
    return HubConfig(
        redis_url=redis_url, key_file=Path("/k/hub.key"), trust_file=Path("/k/trust.toml")
    )


def test_a_cluster_is_named_by_its_url_scheme_for_the_hub_only() -> None:
    cfg = _hub("rediss+cluster://10.0.0.5:7000/0")
    assert (cfg.redis.cluster, cfg.redis.tls) == (True, True)
    assert cfg.redis.node_url == "rediss://10.0.0.5:7000/0"
    assert not _hub("redis://10.0.0.5:6379/0").redis.cluster
    with pytest.raises(HubConfigError, match="redis_url must start with"):
        _hub("redis+clustr://10.0.0.5:7000")
    with pytest.raises(SpokeConfigError, match="only the hub runs on a Redis Cluster"):
        SpokeConfig(redis_url="redis+cluster://10.0.0.5:7000")


def test_a_principals_bucket_and_nonces_share_one_hash_tag() -> None:
    assert rate_key("hub", "alice").startswith("federation:hub:{hub:p:alice}:")
    assert nonce_key("hub", "alice", b"\x01").startswith("federation:hub:{hub:p:alice}:")
    assert nonce_key("hub", "bob", b"\x01").startswith("federation:hub:{hub:p:bob}:")


async def test_schema_1_nonces_stay_claimed_after_the_upgrade(redis_url: str) -> None:
    raw = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    store = HubStore.from_url(redis_url, "hub", 2.0)
    try:
        await raw.set(schema_key("hub"), 1)
        old_nonce, new_nonce = b"\xaa" * 16, b"\xbb" * 16
        # What a schema 1 hubd wrote when it admitted a command a moment ago.
        await raw.set(legacy_nonce_key("hub", "alice", old_nonce), "1", px=60_000)
        state = await store.ensure_schema()
        assert (state.found, state.current, state.migrated) == (1, HUB_SCHEMA_VERSION, (1, 2))
        admit = store.admission(RateLimit(), dt.timedelta(seconds=30))
        expires = commands.now() + dt.timedelta(minutes=5)
        with pytest.raises(errors.NonceReusedError):
            await admit("alice", old_nonce, expires)  # the replay through a new hubd
        await admit("alice", new_nonce, expires)
        assert await raw.exists(nonce_key("hub", "alice", new_nonce)) == 1
        assert await raw.exists(legacy_nonce_key("hub", "alice", new_nonce)) == 0  # read only
        with pytest.raises(errors.NonceReusedError):
            await admit("alice", new_nonce, expires)
    finally:
        await store.close()
        await raw.aclose()
