"""Watch floods (issue 9): watches take no Redis connection from the worker or from other
callers, and are capped per principal and in all with RESOURCE_EXHAUSTED."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from hubspoke import commands, keys, policy
from hubspoke.gen.federation.v1 import agent_pb2, command_pb2, spoke_service_pb2
from hubspoke.grpc import status as sgrpc

from .conftest import Peers, SpokeClient, write_trust

WATCHER = "watcher"
FLOOD = 150
"""More watch streams than the spoke's pool of 100 Redis connections."""

State = agent_pb2.Agent.State
Kind = agent_pb2.AgentEvent.Kind


@pytest.fixture
def watcher(peers: Peers) -> keys.SigningKey:
    """A client the policy allows only to watch, beside the operator who may do everything."""
    key = keys.generate(WATCHER)
    keys.write_keypair(key, peers.key_dir)
    write_trust(
        peers.trust_file,
        [(peers.hub, "hub"), (peers.spoke, "spoke"), (peers.operator, "client"), (key, "client")],
    )
    operator_rule = policy.ALLOW_OPERATOR_EVERYTHING.split("[[rule]]", 1)[1]
    watch_rule = (
        operator_rule.replace('"operator-all"', '"watcher-watch"')
        .replace('["operator"]', f'["{WATCHER}"]')
        .replace('verbs = ["*"]', 'verbs = ["watch"]')
    )
    assert 'verbs = ["watch"]' in watch_rule
    policy_file = peers.trust_file.parent / "policy.toml"
    policy_file.write_text(policy.ALLOW_OPERATOR_EVERYTHING + "\n[[rule]]" + watch_rule)
    return key


class Watch:
    """One open WatchAgent stream, read to its end by a task of its own."""

    def __init__(self, client: SpokeClient, key: keys.SigningKey, agent_id: str) -> None:
        env = client.command("watch_agent", command_pb2.WatchAgentBody(agent=agent_id), key=key)
        self.call = client.stub.WatchAgent(
            spoke_service_pb2.SpokeServiceWatchAgentRequest(command=env), timeout=120
        )
        self.events: list[agent_pb2.AgentEvent] = []
        self.first = asyncio.Event()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for resp in self.call:
                self.events.append(commands.parse_reply(resp.reply.payload).agent_event)
                self.first.set()
        finally:
            self.first.set()

    @property
    def states(self) -> list[int]:
        return [e.state for e in self.events if e.kind == Kind.KIND_STATE]


@pytest.fixture
async def watches() -> AsyncIterator[list[Watch]]:
    opened: list[Watch] = []
    yield opened
    for w in opened:
        w.call.cancel()
    await asyncio.gather(*(w.task for w in opened), return_exceptions=True)


async def _refused(client: SpokeClient, key: keys.SigningKey, agent_id: str) -> sgrpc.CallFailure:
    env = client.command("watch_agent", command_pb2.WatchAgentBody(agent=agent_id), key=key)
    call = client.stub.WatchAgent(
        spoke_service_pb2.SpokeServiceWatchAgentRequest(command=env), timeout=10
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call.read()
    return sgrpc.from_rpc_error(info.value)


async def test_a_watch_flood_starves_nothing(
    start_spoke, watcher: keys.SigningKey, watches: list[Watch]
) -> None:
    """150 watches from a watch-only principal: every other call still succeeds, an agent
    that finishes meanwhile has its result recorded, and every watcher sees the end."""
    _, client = await start_spoke(
        max_watchers_per_principal=FLOOD + 10, max_watchers=FLOOD + 50, rate_burst=1000
    )
    target = (await client.spawn("duration=60 steps=0")).agent.agent_id
    await client.wait_state(target, "RUNNING")

    watches.extend(Watch(client, watcher, target) for _ in range(FLOOD))
    async with asyncio.timeout(30):
        await asyncio.gather(*(w.first.wait() for w in watches))
    assert all(not w.task.done() for w in watches), "every watch stream stays open"

    # Meanwhile the operator spawns, reads, lists and kills; an agent finishes.
    quick = (await client.spawn("duration=0.3 steps=2")).agent.agent_id
    victim = (await client.spawn("duration=60 steps=0")).agent.agent_id
    done = await client.wait_state(quick, "SUCCEEDED", within=20)
    assert done.exit_code == 0
    assert "completed" in done.stdout_tail  # its receipt line, recorded
    await client.wait_state(victim, "RUNNING")
    killed = (await client.kill(victim)).agent
    assert killed.state == State.STATE_KILLED
    listed = (await client.list(page_size=10)).agent_page.agents
    assert {quick, victim, target} <= {a.agent_id for a in listed}
    assert all(not w.task.done() for w in watches), "no watch stream failed meanwhile"

    # The watched agent ends: each of the 150 streams gets its final event, then ends.
    assert (await client.kill(target)).agent.state == State.STATE_KILLED
    async with asyncio.timeout(30):
        await asyncio.gather(*(w.task for w in watches))
    for w in watches:
        assert w.states[-1] == State.STATE_KILLED


async def test_watches_are_capped_per_principal_and_in_all(
    start_spoke, peers: Peers, watcher: keys.SigningKey, watches: list[Watch]
) -> None:
    _, client = await start_spoke(max_watchers_per_principal=3, max_watchers=5)
    target = (await client.spawn("duration=60 steps=0")).agent.agent_id
    await client.wait_state(target, "RUNNING")

    mine = [Watch(client, watcher, target) for _ in range(3)]
    watches.extend(mine)
    async with asyncio.timeout(10):
        await asyncio.gather(*(w.first.wait() for w in mine))
    failure = await _refused(client, watcher, target)
    assert failure.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert failure.reason == "CAPACITY_EXCEEDED"
    assert failure.metadata["limit"] == "max_watchers_per_principal"
    assert f"principal {WATCHER}" in failure.message

    # Another principal still gets watches, up to the total.
    theirs = [Watch(client, peers.operator, target) for _ in range(2)]
    watches.extend(theirs)
    async with asyncio.timeout(10):
        await asyncio.gather(*(w.first.wait() for w in theirs))
    failure = await _refused(client, peers.operator, target)
    assert failure.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert failure.metadata["limit"] == "max_watchers"

    # A closed stream gives its place back (once the spoke has seen it close).
    mine[0].call.cancel()
    await asyncio.gather(mine[0].task, return_exceptions=True)
    async with asyncio.timeout(10):
        while True:
            again = Watch(client, watcher, target)
            watches.append(again)
            await again.first.wait()
            if again.events:
                break
            await asyncio.sleep(0.05)
    assert again.events[0].kind == Kind.KIND_STATE
    await client.kill(target)
