"""The client believes a reply only if it is about what it asked for (issue 9: "the client
checks that every reply's agent is the one it asked for, for list items too").

A real hub relays to the fake spokes of ``tests/hub/test_hub_service.py``; a fake whose
records lie (another id, another spoke) signs replies that pass every signature check, so
only the client's own checks stand between them and the caller.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from hubspoke import client as hc

from ..hub.test_hub_service import Agent, Fed

REPLY_INVALID = (grpc.StatusCode.INTERNAL, hc.REPLY_INVALID)


def _client(fed: Fed) -> hc.Client:
    return hc.Client(f"127.0.0.1:{fed.app.port}", "operator", fed.operator, fed.trust, "hub", 10)


async def _refused(coro: object) -> hc.CallError:
    with pytest.raises(hc.CallError) as info:
        await coro  # type: ignore[misc]  # any awaitable
    return info.value


async def test_an_agent_reply_must_be_the_agent_asked_for(fed: Fed) -> None:
    fed.spokes["spoke-2"].agents["a1"] = Agent(
        agent_id="other", spoke="spoke-2", state=Agent.STATE_RUNNING
    )
    async with _client(fed) as client:
        errs = [
            await _refused(client.get("a1", "spoke-2")),
            await _refused(client.get("spokes/spoke-2/agents/a1")),
            await _refused(client.kill("a1", "spoke-2")),
        ]
    for err in errs:
        assert (err.code, err.reason) == REPLY_INVALID
        assert "asked for agent a1, got 'other'" in err.message


async def test_an_agent_reply_must_be_on_the_spoke_that_signed_it(fed: Fed) -> None:
    fed.spokes["spoke-2"].agents["a2"] = Agent(
        agent_id="a2", spoke="spoke-1", state=Agent.STATE_RUNNING
    )
    async with _client(fed) as client:
        err = await _refused(client.get("a2", "spoke-2"))
    assert (err.code, err.reason) == REPLY_INVALID
    assert "spoke spoke-2 answered for agent 'a2' of spoke 'spoke-1'" in err.message


async def test_a_spawn_reply_must_be_the_agent_of_that_command(fed: Fed) -> None:
    fed.spokes["spoke-1"].agents["cmd-s"] = Agent(agent_id="someone-else", spoke="spoke-1")
    async with _client(fed) as client:
        err = await _refused(client.spawn("spoke-1", "synthetic", "x", command_id="cmd-s"))
    assert (err.code, err.reason) == REPLY_INVALID


async def test_every_list_item_must_be_on_the_spoke_that_signed_its_page(fed: Fed) -> None:
    fed.spokes["spoke-1"].agents["mine"] = Agent(agent_id="mine", spoke="spoke-1")
    async with _client(fed) as client:
        assert [a.agent_id for a in (await client.list("spoke-1")).agents] == ["mine"]
        fed.spokes["spoke-1"].agents["planted"] = Agent(agent_id="planted", spoke="spoke-2")
        one = await _refused(client.list("spoke-1"))
        everywhere = await _refused(client.list())
    for err in (one, everywhere):
        assert (err.code, err.reason) == REPLY_INVALID
        assert "'planted' of spoke 'spoke-2'" in err.message


async def test_wait_reads_the_agent_when_the_spoke_cannot_watch(fed: Fed) -> None:
    """The fakes answer WatchAgent UNIMPLEMENTED: wait falls back to polling get (the fake
    records each get it is relayed; the watch never reaches it)."""
    record = Agent(agent_id="w1", spoke="spoke-1", state=Agent.STATE_RUNNING)
    fed.spokes["spoke-1"].agents["w1"] = record
    relays = fed.spokes["spoke-1"].relays
    async with _client(fed) as client:
        waiting = asyncio.create_task(client.wait("w1", "spoke-1", timeout=20, poll_s=0.05))
        async with asyncio.timeout(10):
            while len(relays) < 3:  # noqa: ASYNC110  # the fake records relays; no event to await
                await asyncio.sleep(0.02)
        assert not waiting.done()
        record.state = Agent.STATE_SUCCEEDED
        final = await waiting
    assert (final.agent_id, final.state) == ("w1", hc.AgentState.SUCCEEDED)


@pytest.mark.parametrize(
    ("state", "reason", "kill_pending", "believed"),
    [
        (Agent.STATE_PENDING_DELIVERY, "SPOKE_UNREACHABLE: circuit_open", False, True),
        (Agent.STATE_EXPIRED, "UNDELIVERED", False, True),
        (Agent.STATE_KILLED, "KILLED_BEFORE_DELIVERY", False, True),
        (Agent.STATE_UNSPECIFIED, "KILL_PENDING_DELIVERY", True, True),
        (Agent.STATE_RUNNING, "", False, False),
        (Agent.STATE_SUCCEEDED, "", False, False),
        (Agent.STATE_EXPIRED, "NOT_STARTED", False, False),
        (Agent.STATE_RUNNING, "", True, False),
    ],
)
def test_the_hub_may_sign_an_agent_only_in_the_outbox_states(
    state: int, reason: str, kill_pending: bool, believed: bool
) -> None:
    """An agent reply signed by the hub (not the spoke) is believed only for what the hub's
    outbox holds (protocol.md §14): a stolen hub key cannot make a client see an agent of a
    spoke RUNNING or SUCCEEDED."""
    from hubspoke import commands, envelope, keys
    from hubspoke.client._session import Sent
    from hubspoke.gen.federation.v1 import command_pb2
    from hubspoke.trust import Role, TrustedKey, TrustStore

    hub, operator = keys.generate("hub"), keys.generate("operator")
    trust = TrustStore([TrustedKey("hub", Role.HUB, hub.public, keys.fingerprint(hub.public))])
    client = hc.Client("127.0.0.1:1", "operator", operator, trust, "hub", 1)
    cmd = commands.build_command(issuer="operator", audience="spoke-1", command_id="a1")
    cmd.get_agent.agent = "a1"
    sent = Sent(cmd, commands.sign_command(cmd, operator))
    agent = Agent(
        agent_id="a1", spoke="spoke-1", state=state, reason=reason, kill_pending=kill_pending
    )
    reply = command_pb2.Reply(
        command_id="a1",
        responder="hub",
        request_digest=commands.digest(sent.envelope.payload),
        agent=agent,
    )
    signed = envelope.sign(reply.SerializeToString(), envelope.PAYLOAD_TYPE_REPLY, hub)
    if believed:
        assert client._agent_reply(sent, signed, "spoke-1", "a1").state == state
    else:
        with pytest.raises(hc.CallError) as info:
            client._agent_reply(sent, signed, "spoke-1", "a1")
        assert (info.value.code, info.value.reason) == REPLY_INVALID
