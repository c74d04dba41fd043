"""A spoke removed while its reply is on the way is refused (docs/security.md §22): hubd no
longer reads the membership revision after each reply; the audit script that records the
call appends its entry only while the revision is the one the reply was verified under
(hub/call_writes.py, hub/audit.py), and otherwise the hub re-reads the membership and
verifies the reply again before it answers.

spoke-1's key reaches the hub only through the membership (its trust file lacks spoke-1),
and the hub dials spoke-1 through a TCP gate that holds the spoke's bytes back: the
member is removed after the hub admitted the call and sent it on, before the reply arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hubspoke import client as hc
from hubspoke import keys, testing
from hubspoke.gen.federation.v1 import enrol_pb2
from hubspoke.hub.config import HubConfig
from hubspoke.hub.membership_store import MembershipStore

SPOKE = "spoke-1"


@dataclass
class Gate:
    """Passes bytes both ways; while closed, holds what the spoke sends."""

    open: asyncio.Event = field(default_factory=asyncio.Event)
    held: int = 0
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)


async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, gate: Gate | None) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await src.read(65536):
            if gate is not None and not gate.open.is_set():
                gate.held += len(data)
                await gate.open.wait()
            dst.write(data)
            await dst.drain()
    dst.close()


@contextlib.asynccontextmanager
async def gate_to(address: str) -> AsyncIterator[tuple[str, Gate]]:
    host, _, port = address.rpartition(":")
    gate = Gate()
    gate.open.set()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection(host, int(port))
        gate.writers += [writer, up_w]
        gate.tasks += [
            asyncio.create_task(_pump(reader, up_w, None)),
            asyncio.create_task(_pump(up_r, writer, gate)),
        ]

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}", gate
    finally:
        gate.open.set()
        server.close()
        for task in gate.tasks:
            task.cancel()
        await asyncio.gather(*gate.tasks, return_exceptions=True)
        for writer in gate.writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        await server.wait_closed()


def _without(trust_file: Path, name: str) -> tuple[Path, str]:
    """A copy of the trust file without ``name``, and ``name``'s public key."""
    peers = tomllib.loads(trust_file.read_text())["peer"]
    public = next(p["keys"][0] for p in peers if p["name"] == name)
    kept = trust_file.with_name("hub-trust.toml")
    kept.write_text(
        "".join(
            f'[[peer]]\nname = "{p["name"]}"\nrole = "{p["role"]}"\nkeys = ["{p["keys"][0]}"]\n\n'
            for p in peers
            if p["name"] != name
        )
    )
    return kept, public


@pytest.fixture
async def fed(tmp_path: Path, redis_url: str) -> AsyncIterator[testing.InProcessFederation]:
    federation = testing.InProcessFederation(tmp_path, [SPOKE], redis_url=redis_url)
    try:
        yield federation
    finally:
        await federation.stop()


async def test_a_reply_of_a_spoke_removed_meanwhile_is_refused(
    fed: testing.InProcessFederation, redis_url: str
) -> None:
    await fed.start(hub=False)
    trust, public = _without(fed.files.trust_file, SPOKE)
    members = MembershipStore.from_url(redis_url, fed.hub_name, 2.0)
    try:
        await members.add(
            enrol_pb2.Member(
                name=SPOKE,
                key_id=f"{SPOKE}/{keys.fingerprint(keys.decode_public(public))}",
                public_key=public,
                mode="dial",
                address=fed.address(SPOKE),
            )
        )
        async with gate_to(fed.address(SPOKE)) as (gated, gate):

            def hub_config(cfg: HubConfig) -> HubConfig:
                return cfg.replace(trust_file=trust)

            await fed.start_hub(spokes={SPOKE: gated}, configure=hub_config)
            async with hc.client_from_config(
                fed.files.hubctl_config, hub=fed.hub_address, env={}
            ) as client:
                agent = await client.spawn(SPOKE, "synthetic", "duration=0")  # verified
                assert (await client.get(agent.agent_id, SPOKE)).agent_id == agent.agent_id

                gate.open.clear()
                call = asyncio.create_task(client.get(agent.agent_id, SPOKE))

                async def answered() -> bool:
                    return gate.held > 0

                await testing.until(answered, 10, "the spoke's answer")
                assert await members.remove(SPOKE) is not None
                gate.open.set()
                with pytest.raises(hc.CallError) as refused:
                    await call
                assert refused.value.reason == "SPOKE_REPLY_INVALID", refused.value

                page = await client.audit_log(page_size=1)  # recorded as refused, once
                assert [(e.action, e.outcome) for e in page.records] == [
                    ("GetAgent", "INTERNAL SPOKE_REPLY_INVALID")
                ]
    finally:
        await members.close()
