"""The membership and enrolment tokens in a real Redis (hub/membership_store.py, membership.py):
single-use tokens (two hubs racing for one get it once), expiry and "used" told apart from
"unknown", revision-checked copies that see another hub's enrolments and removals at once,
and the keys' hash tags."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from hubspoke import commands, keys
from hubspoke.gen.federation.v1 import enrol_pb2
from hubspoke.hub.circuit import Circuit, CircuitConfig, Circuits
from hubspoke.hub.membership import MemberKeys, Membership
from hubspoke.hub.membership_store import (
    MembershipStore,
    TokenRecord,
    TokenState,
    index_key,
    member_key,
    revision_key,
    token_key,
)
from hubspoke.trust import Role, TrustStore


@pytest.fixture
async def stores(redis_url: str) -> AsyncIterator[tuple[MembershipStore, MembershipStore]]:
    a = MembershipStore.from_url(redis_url, "hub", 2.0)
    b = MembershipStore.from_url(redis_url, "hub", 2.0)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


def record(name: str = "edge-1") -> TokenRecord:
    return TokenRecord(name, {"zone": "a"}, "127.0.0.1:1", False, 0)


def member(name: str) -> tuple[enrol_pb2.Member, keys.SigningKey]:
    key = keys.generate(name)
    return (
        enrol_pb2.Member(
            name=name,
            key_id=key.key_id,
            public_key=keys.encode_public(key.public),
            labels={"zone": "a"},
            mode="dial",
            address="127.0.0.1:1",
            enroll_time=commands.to_timestamp(commands.now()),
        ),
        key,
    )


def test_keys_carry_hash_tags() -> None:
    assert index_key("h").split("{")[1].split("}")[0] == "h"
    assert revision_key("h").split("{")[1].split("}")[0] == "h"
    assert member_key("h", "s").endswith(":{s}")
    assert token_key("h", "ab").endswith(":{ab}")


async def test_a_token_is_used_once_even_by_two_hubs_at_once(
    stores: tuple[MembershipStore, MembershipStore],
) -> None:
    a, b = stores
    await a.create_token("t1", record(), 60_000)
    assert await b.peek_token("t1") is TokenState.OK
    results = await asyncio.gather(a.consume_token("t1"), b.consume_token("t1"))
    states = sorted(state for state, _ in results)
    assert states == [TokenState.OK, TokenState.USED]
    [found] = [r for _, r in results if r is not None]
    assert (found.name, dict(found.labels), found.address) == (
        "edge-1",
        {"zone": "a"},
        "127.0.0.1:1",
    )
    assert (await a.consume_token("never"))[0] is TokenState.UNKNOWN
    assert await a.peek_token("t1") is TokenState.USED
    assert await a.peek_token("never") is TokenState.UNKNOWN


async def test_an_expired_token_is_told_apart(
    stores: tuple[MembershipStore, MembershipStore],
) -> None:
    a, _ = stores
    await a.create_token("t2", record(), 50)
    await asyncio.sleep(0.1)
    assert await a.peek_token("t2") is TokenState.EXPIRED
    assert (await a.consume_token("t2"))[0] is TokenState.EXPIRED


async def test_copies_follow_the_revision(stores: tuple[MembershipStore, MembershipStore]) -> None:
    a, b = stores
    seen_by_b = Membership(b)
    await seen_by_b.fresh()
    assert seen_by_b.members() == []
    m, key = member("edge-1")
    revision = await a.add(m)
    await seen_by_b.fresh()
    [got] = seen_by_b.members()
    assert (got.name, got.revision) == ("edge-1", revision)
    assert "edge-1" in seen_by_b.entries()

    trust = MemberKeys(TrustStore(()))
    trust.attach(seen_by_b)
    fp = keys.fingerprint(key.public)
    assert [k.peer for k in trust.candidates(fp, commands.now())] == ["edge-1"]
    assert trust.role_of("edge-1") is Role.SPOKE

    assert await a.remove("edge-1") == revision + 1
    assert await a.remove("edge-1") is None
    await seen_by_b.fresh()
    assert seen_by_b.members() == []
    assert trust.candidates(fp, commands.now()) == []


async def test_concurrent_checks_share_their_reads(
    stores: tuple[MembershipStore, MembershipStore],
) -> None:
    """A fan-out's thousand relayed calls each check the revision: they share the reads (at
    most two: the one in flight, then one that began after every waiting call), and a
    change made before a call is still seen by it."""
    a, b = stores
    reads = 0
    read_revision = b.revision

    async def counted() -> int:
        nonlocal reads
        reads += 1
        return await read_revision()

    b.revision = counted  # type: ignore[method-assign]  # counts the store's real reads
    seen_by_b = Membership(b)
    await seen_by_b.fresh()
    reads = 0
    await asyncio.gather(*(seen_by_b.fresh() for _ in range(200)))
    assert 1 <= reads <= 2
    await a.add(member("edge-2")[0])
    await asyncio.gather(*(seen_by_b.fresh() for _ in range(50)))
    assert [m.name for m in seen_by_b.members()] == ["edge-2"]


def test_an_enrolled_spoke_gets_a_circuit_breaker() -> None:
    """Breakers are built from the config at start; one enrolled later gets its own."""
    circuits = Circuits(["spoke-1"], CircuitConfig(failures=2, open_s=30.0, probe_interval_s=1.0))
    breaker = circuits.get("edge-1")
    assert breaker is not None
    assert circuits.get("edge-1") is breaker
    breaker.failure()
    breaker.failure()
    assert breaker.state is Circuit.OPEN
