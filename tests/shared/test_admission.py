"""shared/admission.py against a real Redis: rate token, then nonces, in one script."""

from __future__ import annotations

import pytest
import redis.asyncio

from hubspoke import errors
from hubspoke.admission import Admission, NonceClaim, RateLimit, RateLimitedError

BUCKET = "t:rate:alice"


def _claim(name: str, ttl_ms: int = 60_000) -> NonceClaim:
    return NonceClaim(f"t:nonce:{name}", ttl_ms)


async def test_admits_and_claims_every_nonce_with_its_ttl(
    redis_client: redis.asyncio.Redis,
) -> None:
    admission = Admission(redis_client, RateLimit(rate=10, burst=5))
    await admission.admit("alice", BUCKET, [_claim("relay", 30_000), _claim("client", 90_000)])
    assert 29_000 < await redis_client.pttl("t:nonce:relay") <= 30_000
    assert 89_000 < await redis_client.pttl("t:nonce:client") <= 90_000
    assert float(await redis_client.hget(BUCKET, "tokens")) == pytest.approx(4, abs=0.1)


async def test_a_seen_nonce_claims_none_of_the_others(redis_client: redis.asyncio.Redis) -> None:
    admission = Admission(redis_client, RateLimit(rate=10, burst=5))
    await admission.admit("alice", BUCKET, [_claim("client")])
    with pytest.raises(errors.NonceReusedError):
        await admission.admit("alice", BUCKET, [_claim("fresh"), _claim("client")])
    assert await redis_client.exists("t:nonce:fresh") == 0
    # The replay still spent a token: a flood of replays is rate limited like any other.
    assert float(await redis_client.hget(BUCKET, "tokens")) == pytest.approx(3, abs=0.1)


async def test_over_the_rate_is_refused_with_a_wait_and_claims_nothing(
    redis_client: redis.asyncio.Redis,
) -> None:
    admission = Admission(redis_client, RateLimit(rate=1, burst=2))
    await admission.admit("alice", BUCKET, [_claim("a")])
    await admission.admit("alice", BUCKET, [_claim("b")])
    with pytest.raises(RateLimitedError) as refused:
        await admission.admit("alice", BUCKET, [_claim("c")])
    assert refused.value.reason == "RATE_LIMITED"
    assert 0 < int(refused.value.metadata["retry_after_ms"]) <= 1000
    assert await redis_client.exists("t:nonce:c") == 0
    # Another principal has its own bucket.
    await admission.admit("bob", "t:rate:bob", [_claim("c")])


async def test_a_disabled_limit_still_claims_nonces(redis_client: redis.asyncio.Redis) -> None:
    admission = Admission(redis_client, RateLimit(rate=0, burst=0))
    for i in range(50):
        await admission.admit("alice", BUCKET, [_claim(str(i))])
    assert await redis_client.exists(BUCKET) == 0
    with pytest.raises(errors.NonceReusedError):
        await admission.admit("alice", BUCKET, [_claim("7")])


async def test_short_ttls_are_raised_to_a_second(redis_client: redis.asyncio.Redis) -> None:
    admission = Admission(redis_client, RateLimit())
    await admission.admit("alice", BUCKET, [_claim("late", ttl_ms=-5)])
    assert 900 < await redis_client.pttl("t:nonce:late") <= 1000


async def test_redis_down_is_backend_unavailable() -> None:
    client = redis.asyncio.Redis(port=1, socket_connect_timeout=0.5)
    try:
        with pytest.raises(errors.BackendUnavailableError):
            await Admission(client, RateLimit()).admit("alice", BUCKET, [_claim("x")])
    finally:
        await client.aclose()
