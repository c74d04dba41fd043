"""A status command costs the spoke one Redis round trip (issue 13): the admission script and
the record's HGETALL go in one pipelined write (shared/admission.py ``admit_and_read``).
Round trips are counted by a TCP relay in front of a real Redis: each time the client writes
again after Redis answered is one more.
"""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from hubspoke import errors
from hubspoke.admission import Admission, NonceClaim, RateLimit

from ..round_trips import RoundTrips


async def test_admission_and_the_record_read_are_one_round_trip(
    relayed: tuple[aioredis.Redis, RoundTrips],
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
