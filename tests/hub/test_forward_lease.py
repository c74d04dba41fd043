"""Connect-mode leases and the shared hello nonces in a real Redis (hub/forward_lease.py): a
new session takes a spoke's lease over; the old holder can then neither renew nor release it;
a lease nobody renews expires; a hello nonce is claimed once across hubds; one hash tag per
spoke."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from hubspoke import errors
from hubspoke.hub.forward_lease import LeaseStore, hello_key, lease_key, new_lease


@pytest.fixture
async def stores(redis_url: str) -> AsyncIterator[tuple[LeaseStore, LeaseStore]]:
    """Two hubds' lease stores on one Redis."""
    a = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    b = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield LeaseStore(a, "hub", 15.0), LeaseStore(b, "hub", 15.0)
    finally:
        await a.aclose()
        await b.aclose()


def test_a_spokes_keys_share_one_hash_tag() -> None:
    assert lease_key("hub", "edge-1") == "federation:hub:{hub:s:edge-1}:lease"
    assert hello_key("hub", "edge-1", b"\x01").startswith("federation:hub:{hub:s:edge-1}:")


async def test_a_new_session_takes_the_lease_over_and_the_old_one_cannot_undo_it(
    stores: tuple[LeaseStore, LeaseStore],
) -> None:
    a, b = stores
    old = new_lease("edge-1", "10.0.0.1:7100", "s-old", b"n" * 24, b"status-1")
    await a.take(old, 15)
    found = await b.get("edge-1")
    assert found is not None
    assert (found.holder, found.session, found.status) == ("10.0.0.1:7100", "s-old", b"status-1")
    assert await a.renew(old, 15)

    new = new_lease("edge-1", "10.0.0.2:7100", "s-new", b"m" * 24)
    await b.take(new, 15)  # the spoke reconnected to the other hubd
    assert not await a.renew(old, 15)  # the old holder's next heartbeat
    await a.release("edge-1", "s-old")  # the old session ends
    found = await a.get("edge-1")
    assert found is not None
    assert found.holder == "10.0.0.2:7100"
    await b.release("edge-1", "s-new")
    assert await a.get("edge-1") is None
    assert await b.renew(new, 15)  # a lease that vanished is written again by its session


async def test_a_lease_nobody_renews_expires(stores: tuple[LeaseStore, LeaseStore]) -> None:
    a, b = stores
    await a.take(new_lease("edge-1", "10.0.0.1:7100", "s", b"n" * 24), 0.3)
    assert await b.get("edge-1") is not None
    for _ in range(100):
        if await b.get("edge-1") is None:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the lease did not expire")


async def test_a_hello_nonce_is_claimed_once_across_hubds(
    stores: tuple[LeaseStore, LeaseStore],
) -> None:
    a, b = stores
    await a.claim_hello("edge-1", b"\x07" * 24, 60)
    with pytest.raises(errors.NonceReusedError):
        await b.claim_hello("edge-1", b"\x07" * 24, 60)
    await b.claim_hello("edge-2", b"\x07" * 24, 60)  # another spoke's nonce is its own
