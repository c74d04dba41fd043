"""shared/redis_mux.py against a real Redis: concurrent callers share one connection and get
their own replies in order, scripts load on NOSCRIPT, error replies stay with their caller,
and a lost or stuck connection is replaced (issue 13: the spoke's hot path)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from hubspoke import errors
from hubspoke.admission import Admission, NonceClaim, RateLimit
from hubspoke.redis_mux import RedisMux, ScriptRef


@pytest.fixture
async def mux(redis_client: aioredis.Redis) -> AsyncIterator[RedisMux]:
    m = RedisMux.of(redis_client, 5.0)
    try:
        yield m
    finally:
        await m.close()


async def _connections(r: aioredis.Redis) -> int:
    stats = await r.info("stats")
    return int(stats["total_connections_received"])


async def test_concurrent_calls_share_one_connection_and_get_their_own_replies(
    mux: RedisMux, redis_client: aioredis.Redis
) -> None:
    await redis_client.ping()
    before = await _connections(redis_client)
    replies = await asyncio.gather(*(mux.checked(("ECHO", f"call-{i}")) for i in range(300)))
    assert [r[0] for r in replies] == [f"call-{i}".encode() for i in range(300)]
    assert await _connections(redis_client) - before == 1  # redis-py's pool: one per caller
    assert mux.connects == 1


async def test_the_admission_on_the_mux_answers_as_on_redis_py(
    mux: RedisMux, redis_client: aioredis.Redis
) -> None:
    """The same script, the same refusals, the status read after it in one round trip."""
    admission = Admission(redis_client, RateLimit(rate=10, burst=5), mux=mux)
    await redis_client.hset("t:rec", mapping={"state": "QUEUED"})
    raw = await admission.admit_and_read(
        "alice", "t:rate", [NonceClaim("t:nonce:a", 60_000)], read="t:rec"
    )
    assert raw == {b"state": b"QUEUED"}
    assert await redis_client.exists("t:nonce:a")
    assert await admission.admit_and_read("alice", "t:rate", [], read="t:none") == {}
    with pytest.raises(errors.NonceReusedError):
        await admission.admit("alice", "t:rate", [NonceClaim("t:nonce:a", 60_000)])
    await redis_client.script_flush()  # NOSCRIPT: loaded again, answered
    await admission.admit("alice", "t:rate", [NonceClaim("t:nonce:b", 60_000)])


async def test_an_error_reply_stays_with_its_caller(mux: RedisMux) -> None:
    ok, bad = await asyncio.gather(
        mux.checked(("SET", "t:k", "v")),
        mux.execute(("HSET", "t:k", "f")),  # wrong arity: an error reply, as a value
    )
    assert ok == [b"OK"]
    assert isinstance(bad[0], ResponseError)
    with pytest.raises(ResponseError):
        await mux.checked(("INCR", "t:k"))
    assert await mux.checked(("GET", "t:k")) == [b"v"]  # the connection is still good
    text = "return {KEYS[1], ARGV[1]}"
    ref = ScriptRef(hashlib.sha1(text.encode()).hexdigest(), text)  # noqa: S324 - Redis's sha
    assert await mux.checked_script(ref, ["k"], [7], ("ECHO", "after")) == [[b"k", b"7"], b"after"]


async def test_a_killed_connection_is_replaced(mux: RedisMux, redis_client: aioredis.Redis) -> None:
    await mux.checked(("PING",))
    own = await redis_client.client_id()
    for client in await redis_client.client_list():
        if int(client["id"]) != own:
            await redis_client.client_kill_filter(_id=int(client["id"]))
    assert await mux.checked(("ECHO", "again")) == [b"again"]
    assert mux.connects == 2


async def test_a_call_not_answered_in_time_fails_and_the_next_reconnects(
    redis_client: aioredis.Redis,
) -> None:
    mux = RedisMux.of(redis_client, 0.3, retries=0)
    try:
        with pytest.raises((RedisTimeoutError, RedisConnectionError)):
            await mux.checked(("BLPOP", "t:never", "2"))  # blocks past the op timeout
        assert await mux.checked(("ECHO", "fresh")) == [b"fresh"]
        assert mux.connects == 2
    finally:
        await mux.close()
