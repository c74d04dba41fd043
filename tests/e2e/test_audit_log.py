"""The audit log through real hubd, spoked, Redis and hubctl processes (issue 11): who did
what to which agent (``hubctl audit tail``), and ``hubctl audit verify`` against the hub's
Redis and the checkpoint the hub signed as it stopped."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from hubspoke import testing
from hubspoke.hub.audit import audit_keys
from hubspoke.hub.audit_chain import from_fields

SPOKE = "spoke-1"

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def fed(tmp_path: Path, redis_url: str) -> AsyncIterator[testing.Federation]:
    federation = testing.Federation(tmp_path / "fed", [SPOKE], redis_url=redis_url)
    try:
        await federation.start()
        yield federation
    finally:
        await federation.stop()


async def test_tail_answers_who_did_what_and_verify_catches_an_edit(
    fed: testing.Federation, redis_url: str
) -> None:
    spawned = await fed.hubctl("--json", "spawn", "--spoke", SPOKE, "--", "duration=60", "steps=3")
    assert spawned.code == 0, spawned.stderr
    agent = spawned.doc()["agent_id"]
    killed = await fed.hubctl("kill", agent, "--spoke", SPOKE)
    assert killed.code == 0, killed.stderr
    unknown = await fed.hubctl("kill", "no-such-agent", "--spoke", SPOKE)
    assert unknown.code != 0

    tail = await fed.hubctl("--json", "audit", "tail", "--agent", agent)
    assert tail.code == 0, tail.stderr
    entries = tail.doc()["entries"]
    assert [(e["action"], e["outcome"], e["principal"]) for e in entries] == [
        ("KillAgent", "OK", "operator"),
        ("SpawnAgent", "OK", "operator"),
    ]
    assert {e["spoke"] for e in entries} == {SPOKE}
    everything = await fed.hubctl("audit", "tail", "--limit", "20")
    assert "KillAgent NOT_FOUND" in everything.stdout, everything.stdout
    assert "no-such-agent" in everything.stdout

    await fed.hub.stop()  # it signs a last checkpoint of the head as it leaves
    checkpoints = fed.files.root / "audit-checkpoints.jsonl"
    assert checkpoints.read_text().count("\n") >= 1
    verify = await fed.hubctl(
        "--json", "audit", "verify", "--hub-config", str(fed.files.hub_config)
    )
    assert verify.code == 0, verify.stderr
    report = verify.doc()
    assert report["intact"]
    assert report["checkpoints"] >= 1
    assert report["signatures"] >= 4

    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        stream = audit_keys(fed.hub_name)[0]
        stored: Any = await client.xrange(stream)
        for sid, fields in stored:
            entry = from_fields(fields)
            if entry.action == "SpawnAgent" and entry.agent == agent:
                bad_seq = entry.seq
                await client.delete(stream)
                for other_id, other in stored:
                    if other_id == sid:
                        other = {**other, "principal": "somebody-else"}
                    await client.xadd(stream, other, id=other_id)
                break
    finally:
        await client.aclose()
    broken = await fed.hubctl("audit", "verify", "--hub-config", str(fed.files.hub_config))
    assert broken.code == 1
    assert f"entry {bad_seq}" in broken.stderr
    assert "changed" in broken.stderr, broken.stderr
    as_json = await fed.hubctl(
        "--json", "audit", "verify", "--hub-config", str(fed.files.hub_config)
    )
    assert json.loads(as_json.stdout)["bad_seq"] == bad_seq
