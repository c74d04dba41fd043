"""A status command costs the spoke one Redis round trip (issue 13): the admission script and
the record's HGETALL go in one pipelined write (shared/admission.py ``admit_and_read``).
Round trips are counted by a TCP relay in front of a real Redis: each time the client writes
again after Redis answered is one more.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlparse

import pytest
import redis.asyncio as aioredis

from hubspoke import errors
from hubspoke.admission import Admission, NonceClaim, RateLimit


@dataclass
class Relay:
    """Counts the client's write turns between it and Redis."""

    turns: int = 0
    answered: bool = True
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)


async def _pump(
    src: asyncio.StreamReader, dst: asyncio.StreamWriter, relay: Relay, upstream: bool
) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await src.read(65536):
            if upstream and relay.answered:
                relay.turns += 1
            relay.answered = not upstream
            dst.write(data)
            await dst.drain()
    dst.close()


@pytest.fixture
async def relayed(redis_url: str) -> AsyncIterator[tuple[aioredis.Redis, Relay]]:
    target = urlparse(redis_url)
    relay = Relay()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection(target.hostname, target.port)
        relay.writers += [writer, up_w]
        relay.tasks += [
            asyncio.create_task(_pump(reader, up_w, relay, True)),
            asyncio.create_task(_pump(up_r, writer, relay, False)),
        ]

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{port}{target.path or ''}")
    await client.ping()
    try:
        yield client, relay
    finally:
        await client.aclose()
        server.close()
        for task in relay.tasks:
            task.cancel()
        await asyncio.gather(*relay.tasks, return_exceptions=True)
        for writer in relay.writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        await server.wait_closed()


async def test_admission_and_the_record_read_are_one_round_trip(
    relayed: tuple[aioredis.Redis, Relay],
) -> None:
    client, relay = relayed
    await client.hset("spoke:agent:a-1", mapping={"state": "QUEUED", "issuer": "op"})
    admission = Admission(client, RateLimit(rate=1000, burst=1000))
    await client.script_flush()  # the first call finds no script and loads it
    await admission.admit_and_read("op", "rate:op", [NonceClaim("n:1", 5000)], read="x")

    before = relay.turns
    raw = await admission.admit_and_read(
        "op", "rate:op", [NonceClaim("n:2", 5000)], read="spoke:agent:a-1"
    )
    assert relay.turns - before == 1
    assert raw == {b"state": b"QUEUED", b"issuer": b"op"}
    before = relay.turns
    assert await admission.admit_and_read("op", "rate:op", [NonceClaim("n:3", 5000)]) is None
    assert relay.turns - before == 1  # without a read: the script alone, as before

    missing = await admission.admit_and_read(
        "op", "rate:op", [NonceClaim("n:4", 5000)], read="spoke:agent:nope"
    )
    assert missing == {}
    with pytest.raises(errors.NonceReusedError):  # a refusal still refuses, read or not
        await admission.admit_and_read(
            "op", "rate:op", [NonceClaim("n:2", 5000)], read="spoke:agent:a-1"
        )
