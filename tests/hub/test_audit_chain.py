"""The hub's audit log on a real Redis: group commits, two hubds on one chain, trimming, and
``verify_log`` naming the first entry that was edited, removed, reordered or rewritten after a
signed checkpoint (hub/audit*.py). tests/e2e/test_audit_log.py drives it through hubd and hubctl."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from hubspoke import keys
from hubspoke.hub.audit import AuditConfig, AuditLog, Head, audit_keys
from hubspoke.hub.audit_chain import Entry, entry_hash, from_fields
from hubspoke.hub.audit_checkpoints import Checkpoint, CheckpointWriter, read_checkpoints
from hubspoke.hub.audit_verify import Report, verify_log


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    c = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield c
    finally:
        await c.aclose()


def _log(client: redis.asyncio.Redis, process: str = "hubd-a", **kw: object) -> AuditLog:
    return AuditLog(client, AuditConfig(hub_name="hub", process=process, **kw), 5.0)  # type: ignore[arg-type]


def _entry(n: int, principal: str = "alice") -> Entry:
    return Entry(kind="command", action="SpawnAgent", principal=principal, agent=f"a{n}")


async def _verify(audit: AuditLog, checkpoints: Sequence[Checkpoint] = ()) -> Report:
    return verify_log(
        await audit.scan(), await audit.head(), await audit.trimmed(), None, checkpoints
    )


async def _rewrite(client: redis.asyncio.Redis, change) -> None:  # type: ignore[no-untyped-def]
    """Replace the stream by ``change(list of (id, fields))``, as a Redis writer could."""
    stream = audit_keys("hub")[0]
    stored = await client.xrange(stream)
    await client.delete(stream)
    for sid, fields in change(stored):
        await client.xadd(stream, fields, id=sid)


async def test_concurrent_records_form_one_intact_chain(client: redis.asyncio.Redis) -> None:
    audit = _log(client)
    seqs = await asyncio.gather(*(audit.record(_entry(n)) for n in range(40)))
    assert sorted(seqs) == list(range(1, 41))
    report = await _verify(audit)
    assert report.problem is None
    assert report.entries == 40
    page, next_before = await audit.newest(10)
    assert [e.seq for e in page] == list(range(40, 30, -1))
    assert next_before == 31
    older, _ = await audit.newest(5, before_seq=next_before)
    assert [e.seq for e in older] == [30, 29, 28, 27, 26]
    mine, _ = await audit.newest(50, agent="a7")
    assert [e.agent for e in mine] == ["a7"]


async def test_two_hubds_on_one_redis_interleave_on_one_chain(
    client: redis.asyncio.Redis,
) -> None:
    a, b = _log(client, "hubd-a"), _log(client, "hubd-b")
    await asyncio.gather(
        *(a.record(_entry(n)) for n in range(25)), *(b.record(_entry(n, "bob")) for n in range(25))
    )
    report = await _verify(a)
    assert report.problem is None
    assert report.entries == 50
    stored = [from_fields(f) for _, f in await a.scan()]
    assert {e.hub for e in stored} == {"hubd-a", "hubd-b"}


@pytest.mark.parametrize("tamper", ["edit", "delete", "reorder"])
async def test_verify_names_the_tampered_entry(client: redis.asyncio.Redis, tamper: str) -> None:
    audit = _log(client)
    for n in range(10):
        await audit.record(_entry(n))

    def change(stored: list) -> list:  # type: ignore[type-arg]
        stored = [(sid, dict(f)) for sid, f in stored]
        if tamper == "edit":
            stored[4][1]["principal"] = "mallory"
        elif tamper == "delete":
            del stored[4]
        else:
            stored[4], stored[5] = (stored[4][0], stored[5][1]), (stored[5][0], stored[4][1])
        return stored

    await _rewrite(client, change)
    report = await _verify(audit)
    assert report.problem is not None
    assert report.problem.seq in ({5} if tamper == "edit" else {5, 6})


async def test_a_rebuilt_chain_passes_alone_but_not_against_a_checkpoint(
    client: redis.asyncio.Redis, tmp_path: Path
) -> None:
    audit = _log(client)
    key = keys.generate("hub")
    path = tmp_path / "checkpoints.jsonl"
    writer = CheckpointWriter(audit, key, path, 60.0)
    for n in range(6):
        await audit.record(_entry(n))
    assert await writer.write_once() == Head(6, (await audit.head()).hash)
    for n in range(6, 9):
        await audit.record(_entry(n))
    await writer.write_once()
    checkpoints = read_checkpoints(path, key.public)
    assert [c.seq for c in checkpoints] == [6, 9]
    assert (await _verify(audit, checkpoints)).problem is None

    # Whoever can write Redis rewrites entry 3 and recomputes every hash after it, and the head.
    def rebuild(stored: list) -> list:  # type: ignore[type-arg]
        out, prev = [], "0" * 64
        for sid, fields in stored:
            entry = from_fields(fields)
            if entry.seq == 3:
                entry = Entry(**{**_plain(entry), "principal": "mallory"})
            entry = entry.chained(entry.seq, prev, entry.time_ms, entry.hub)
            prev = entry.hash
            out.append((sid, entry.to_fields()))
        return out

    await _rewrite(client, rebuild)
    newest: Any = await client.xrevrange(audit_keys("hub")[0], count=1)
    stream_head = from_fields(newest[0][1])
    await client.set(audit_keys("hub")[1], f"{stream_head.seq} {stream_head.hash}")
    assert (await _verify(audit)).problem is None  # chain alone: fooled
    report = await _verify(audit, checkpoints)
    assert report.problem is not None
    assert report.problem.seq == 6
    assert "checkpoint line 1" in str(report.problem)

    forged = tmp_path / "forged.jsonl"
    other = keys.generate("hub")
    forged.write_text(path.read_text().splitlines()[0].replace('"seq": 6', '"seq": 7') + "\n")
    with pytest.raises(ValueError, match="line 1"):
        read_checkpoints(forged, other.public)


async def test_trimming_keeps_the_chain_verifiable_from_the_oldest_entry(
    client: redis.asyncio.Redis,
) -> None:
    audit = _log(client, max_entries=10)
    for n in range(25):
        await audit.record(_entry(n))
    stored = await audit.scan()
    assert len(stored) == 10
    assert (await audit.trimmed()).seq == 15
    report = await _verify(audit)
    assert report.problem is None
    assert report.first_seq == 16
    await client.xdel(audit_keys("hub")[0], stored[0][0])  # drop the oldest kept one
    report = await _verify(audit)
    assert report.problem is not None
    assert report.problem.seq == 17


async def test_an_entry_hash_covers_every_field() -> None:
    base = _entry(1).chained(1, "0" * 64, 1000, "hubd-a")
    for name, value in _plain(base).items():
        changed = Entry(**{**_plain(base), name: _other(value)})
        assert entry_hash(changed) != base.hash, name


def _plain(entry: Entry) -> dict[str, Any]:
    from hubspoke.hub.audit_chain import FIELDS

    return {n: getattr(entry, n) for n in FIELDS}


def _other(value: Any) -> Any:
    if isinstance(value, bytes):
        return value + b"x"
    if isinstance(value, int):
        return value + 1
    return f"{value}x"
