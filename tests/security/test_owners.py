"""Every agent has an owner, every policy rule a scope (issue 9, "No owner").

The review's attack: a principal allowed ``replay``, ``get``, ``watch`` or ``kill`` on a
spoke could do it to every agent there: it re-ran another principal's dead-lettered shell
agent in a profile it may not spawn (the replay also cleared the command's expiry), read
its task text, and killed it. Each test runs a real hubd in front of two real spokeds on a
real Redis, with client principals of their own keys and policies (hub and spokes enforce
the same policy):

* ``operator``: everything, ``scope = "any"``;
* ``alice`` and ``bob``: everything on their own agents, ``scope = "own"``;
* ``carol``: read and replay every agent (``any``), spawn only ``synthetic`` (``own``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio

from hubspoke import client as hc
from hubspoke import keys
from hubspoke.gen.federation.v1 import agent_pb2
from hubspoke.hub.app import HubApp
from hubspoke.hub.config import HubConfig, SpokeEntry
from hubspoke.hub.federation_files import write_federation
from hubspoke.policy import PolicyConfigError
from hubspoke.spoke.app import SpokeApp
from hubspoke.spoke.config import SpokeConfig
from hubspoke.spoke.keys import SpokeKeys
from hubspoke.trust import TrustStore

pytestmark = pytest.mark.slow

Agent = agent_pb2.Agent
SPOKES = ("spoke-1", "spoke-2")
PRINCIPALS = ("alice", "bob", "carol")

POLICY = """
[[rule]]
name = "operator-all"
principals = ["operator"]
verbs = ["*"]
scope = "any"
spokes = ["*"]

[[rule]]
name = "teams-own"
principals = ["alice", "bob"]
verbs = ["*"]
scope = "own"
spokes = ["*"]

[[rule]]
name = "carol-reads-and-replays"
principals = ["carol"]
verbs = ["read", "replay"]
scope = "any"
spokes = ["*"]

[[rule]]
name = "carol-spawns-synthetic"
principals = ["carol"]
verbs = ["spawn"]
scope = "own"
spokes = ["*"]
profiles = ["synthetic"]
"""


@dataclass
class Fed:
    root: Path
    hub: HubApp
    trust_file: Path
    redis_url: str

    def client(self, principal: str = "operator", timeout_s: float = 10.0) -> hc.Client:
        key = keys.load_private(self.root / "keys" / f"{principal}.key", principal)
        trust = TrustStore.from_file(self.trust_file)
        return hc.Client(f"127.0.0.1:{self.hub.port}", principal, key, trust, "hub", timeout_s)

    @contextlib.asynccontextmanager
    async def redis(self) -> AsyncIterator[redis.asyncio.Redis]:
        client = redis.asyncio.Redis.from_url(self.redis_url)
        try:
            yield client
        finally:
            await client.aclose()


def _write_files(root: Path, redis_url: str) -> tuple[Any, Path]:
    files = write_federation(
        root, [(s, "127.0.0.1:0", redis_url) for s in SPOKES], "127.0.0.1:0", redis_url
    )
    with files.trust_file.open("a") as fh:
        for name in PRINCIPALS:
            key = keys.generate(name)
            keys.write_keypair(key, files.keys_dir)
            fh.write(
                f'\n[[peer]]\nname = "{name}"\nrole = "client"\n'
                f'keys = ["{keys.encode_public(key.public)}"]\n'
            )
    policy_file = root / "owners-policy.toml"
    policy_file.write_text(POLICY)
    return files, policy_file


@pytest.fixture
async def fed(tmp_path: Path, redis_url: str) -> AsyncIterator[Fed]:
    files, policy_file = _write_files(tmp_path, redis_url)
    async with contextlib.AsyncExitStack() as stack:
        entries = []
        for name in SPOKES:
            scfg = replace(SpokeConfig.load(files.spoke_configs[name], {}), policy_file=policy_file)
            spoke = await stack.enter_async_context(SpokeApp(scfg))
            entries.append(SpokeEntry(name, f"127.0.0.1:{spoke.port}"))
        hcfg = HubConfig.load(files.hub_config, {}).replace(
            spokes=tuple(entries), policy_file=policy_file
        )
        hub = await stack.enter_async_context(HubApp(hcfg))
        yield Fed(tmp_path, hub, files.trust_file, redis_url)


async def _fails(call: Awaitable[Any]) -> hc.CallError:
    with pytest.raises(hc.CallError) as info:
        await call
    return info.value


async def _watch_fails(client: hc.Client, agent: str, spoke: str | None) -> hc.CallError:
    with pytest.raises(hc.CallError) as info:
        async for _ in client.watch(agent, spoke):
            pass
    return info.value


def _seen(err: hc.CallError, agent_id: str) -> tuple[Any, ...]:
    """What a caller learns from an error, with the id it asked about blanked out."""

    def blank(text: str) -> str:
        return text.replace(agent_id, "<ID>")

    meta = tuple(sorted((blank(k), blank(v)) for k, v in err.metadata.items()))
    return (err.code, err.reason, blank(err.message), meta)


async def _wait_state(client: hc.Client, agent: str, state: int, timeout_s: float = 20) -> Agent:
    """Poll until the agent is in ``state`` (a state of another process: nothing to wait on)."""
    async with asyncio.timeout(timeout_s):
        while True:
            a = await client.get(agent)
            if a.state == state:
                return a
            await asyncio.sleep(0.05)


async def _dead_lettered(client: hc.Client, spoke: str, profile: str, task: str) -> str:
    agent = await client.spawn(spoke, profile, task, max_attempts=2)
    final = await client.wait(agent.agent_id, spoke, timeout=30)
    assert final.state == Agent.STATE_DEAD_LETTERED
    return agent.agent_id


# -- get, kill, watch, replay: another owner's agent is an unknown id -------------------------


async def test_own_scope_cannot_touch_anothers_agent_nor_tell_it_exists(fed: Fed) -> None:
    """Alice (own scope) asks for Bob's running agent by bare id, by spoke and by resource
    name: every verb answers exactly as for an id nobody used, and Bob's agent runs on."""
    async with fed.client("alice") as alice, fed.client("bob") as bob:
        mine = await bob.spawn("spoke-1", "synthetic", "duration=60 secret=hunter2")
        bobs = mine.agent_id
        await _wait_state(bob, bobs, Agent.STATE_RUNNING)
        missing = "nobody-ever-used-this-id"

        def ways(agent_id: str) -> list[tuple[str, str | None]]:
            return [
                (agent_id, None),
                (agent_id, "spoke-1"),
                (f"spokes/spoke-1/agents/{agent_id}", None),
            ]

        for (theirs, spoke), (unknown, spoke_u) in zip(ways(bobs), ways(missing), strict=True):
            for verb in ("get", "kill", "replay"):
                got = await _fails(getattr(alice, verb)(theirs, spoke))
                expected = await _fails(getattr(alice, verb)(unknown, spoke_u))
                assert got.code == grpc.StatusCode.NOT_FOUND, (verb, theirs, got)
                assert got.reason == "AGENT_NOT_FOUND"
                assert _seen(got, bobs) == _seen(expected, missing), (verb, theirs, spoke)
            got = await _watch_fails(alice, theirs, spoke)
            expected = await _watch_fails(alice, unknown, spoke_u)
            assert (got.code, got.reason) == (grpc.StatusCode.NOT_FOUND, "AGENT_NOT_FOUND")
            assert _seen(got, bobs) == _seen(expected, missing), ("watch", theirs, spoke)

        # Nothing happened to it, and its owner still has it.
        still = await bob.get(bobs)
        assert (still.state, still.issuer) == (Agent.STATE_RUNNING, "bob")
        assert (await bob.kill(bobs)).state == Agent.STATE_KILLED


async def test_own_scope_does_everything_to_its_own_agents(fed: Fed) -> None:
    async with fed.client("alice") as alice:
        agent = await alice.spawn("spoke-2", "synthetic", "duration=60")
        running = await _wait_state(alice, agent.agent_id, Agent.STATE_RUNNING)
        assert (running.issuer, running.task) == ("alice", "duration=60")
        async for _ in alice.watch(agent.agent_id):
            break
        assert (await alice.kill(agent.agent_id)).state == Agent.STATE_KILLED
        failed = await _dead_lettered(alice, "spoke-2", "shell", "exit 4")
        replayed = await alice.replay(failed)
        assert (replayed.state, replayed.issuer) == (Agent.STATE_QUEUED, "alice")
        assert (await alice.wait(failed, timeout=30)).state == Agent.STATE_DEAD_LETTERED


async def test_verify_is_scoped_like_kill(fed: Fed) -> None:
    """Alice (own scope) cannot settle Bob's verification items, and is told exactly what an
    unknown id gets; Bob can."""
    async with fed.client("alice") as alice, fed.client("bob") as bob:
        agent = await bob.spawn("spoke-1", "synthetic", "duration=0 steps=0 verify=review")
        waiting = await bob.wait(agent, timeout=30)
        assert waiting.state == Agent.STATE_NEEDS_VERIFICATION
        got = await _fails(alice.verify(agent.agent_id, {"review": "passed"}))
        expected = await _fails(alice.verify("nobody-ever-used-this-id", {"review": "passed"}))
        assert (got.code, got.reason) == (grpc.StatusCode.NOT_FOUND, "AGENT_NOT_FOUND")
        assert _seen(got, agent.agent_id) == _seen(expected, "nobody-ever-used-this-id")
        assert (await bob.get(agent.agent_id)).state == Agent.STATE_NEEDS_VERIFICATION
        done = await bob.verify(agent.agent_id, {"review": "passed"})
        assert (done.state, done.receipt.verifications[-1].verified_by) == (
            Agent.STATE_SUCCEEDED,
            "bob",
        )


# -- lists show only what the caller may see -------------------------------------------------


async def test_own_scope_lists_only_its_own_agents_in_full_pages(fed: Fed) -> None:
    """Alice's agents are interleaved with Bob's in the spoke's index; her pages are full
    (the filter reads on) and paging ends only when her agents do."""
    async with fed.client("alice") as alice, fed.client("bob") as bob, fed.client() as op:
        await op.pause("spoke-1")  # nothing runs: the listing is about who sees what
        hers, his = [], []
        for _ in range(3):
            hers.append((await alice.spawn("spoke-1", "synthetic", "duration=0")).agent_id)
            for _ in range(3):
                his.append((await bob.spawn("spoke-1", "synthetic", "duration=0")).agent_id)

        seen: list[str] = []
        sizes: list[int] = []
        token = ""
        for _ in range(10):
            page = await alice.list("spoke-1", page_size=2, page_token=token)
            agents = page.pages["spoke-1"].agents
            sizes.append(len(agents))
            assert {a.issuer for a in agents} <= {"alice"}
            seen += [a.agent_id for a in agents]
            token = page.pages["spoke-1"].next_page_token
            if not token:
                break
        assert sorted(seen) == sorted(hers)
        assert sizes[0] == 2  # a full first page, though Bob's agents are newer

        everywhere = await alice.list()  # the hub's fan-out: the same filter on every spoke
        assert sorted(a.agent_id for a in everywhere.agents) == sorted(hers)
        all_of_them = await op.list("spoke-1", page_size=50)
        assert sorted(a.agent_id for a in all_of_them.agents) == sorted(hers + his)
        await op.drain("spoke-1")
        await op.resume("spoke-1")


async def test_own_scope_dead_letters_show_only_its_own(fed: Fed) -> None:
    async with fed.client("alice") as alice, fed.client("bob") as bob, fed.client() as op:
        bobs = await _dead_lettered(bob, "spoke-2", "shell", "echo token=s3cret; exit 3")
        assert (await alice.dead_letters("spoke-2")).agents == ()
        assert [a.agent_id for a in (await bob.dead_letters("spoke-2")).agents] == [bobs]
        theirs = (await op.dead_letters("spoke-2")).agents
        assert [(a.agent_id, a.issuer) for a in theirs] == [(bobs, "bob")]
        assert "s3cret" in theirs[0].task  # an any-scope reader sees the task


# -- replay ----------------------------------------------------------------------------------


async def test_replay_needs_spawn_rights_on_the_profile(fed: Fed) -> None:
    """Carol may replay any agent, but spawn only synthetic: Bob's dead-lettered shell agent
    is not re-run by her; his synthetic one is, and stays his."""
    async with fed.client("bob") as bob, fed.client("carol") as carol:
        shell = await _dead_lettered(bob, "spoke-1", "shell", "exit 3")
        denied = await _fails(carol.replay(shell))
        assert (denied.code, denied.reason) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "KEY_NOT_AUTHORIZED",
        )
        assert "shell" in denied.message
        after = await bob.get(shell)
        assert (after.state, after.attempt) == (Agent.STATE_DEAD_LETTERED, 2)

        synthetic = await _dead_lettered(bob, "spoke-1", "synthetic", "duration=0 exit=2")
        replayed = await carol.replay(synthetic)
        assert (replayed.state, replayed.issuer) == (Agent.STATE_QUEUED, "bob")
        final = await bob.wait(synthetic, timeout=30)
        assert (final.state, final.issuer) == (Agent.STATE_DEAD_LETTERED, "bob")


async def test_replay_keeps_the_owner_and_a_start_deadline_from_the_spawn(fed: Fed) -> None:
    """A replay may come long after the spawn's signature expired (minutes), but not later
    than ``replay_within_s`` after the spawn was stored, and the replayed agent must start by
    then: the deadline counts from the original spawn, so replays never extend it."""
    async with fed.client("bob") as bob, fed.client() as op, fed.redis() as r:
        agent_id = await _dead_lettered(bob, "spoke-1", "synthetic", "duration=0 exit=2")
        key = SpokeKeys("spoke-1").agent(agent_id)
        create_ms = int(await r.hget(key, "create_ms"))
        await r.hset(key, "expire_ms", 1000)  # the spawn's signature window is long over
        await r.hdel(key, "start_deadline_ms")  # a record stored before start deadlines

        replayed = await op.replay(agent_id)
        assert replayed.issuer == "bob"
        within_ms = int(SpokeConfig().replay_within_s * 1000)
        assert int(await r.hget(key, "expire_ms")) == create_ms + within_ms
        await bob.wait(agent_id, timeout=30)
        # The owner keeps every right to it; others with own scope still see nothing.
        assert (await bob.get(agent_id)).issuer == "bob"

        # Once replay_within_s has passed since the spawn, replay is refused.
        await r.hset(key, "create_ms", 1000)
        late = await _fails(op.replay(agent_id))
        assert (late.code, late.reason) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "START_DEADLINE_PASSED",
        )
        assert (await op.get(agent_id)).state == Agent.STATE_DEAD_LETTERED


async def test_replay_starts_by_the_agents_own_start_deadline(fed: Fed) -> None:
    """An agent with a start deadline (issue 11) is replayed to start by that deadline, not
    by ``replay_within_s`` after its storing; once it has passed, replay is refused."""
    async with fed.client("bob") as bob, fed.client() as op, fed.redis() as r:
        agent_id = await _dead_lettered(bob, "spoke-1", "synthetic", "duration=0 exit=2")
        key = SpokeKeys("spoke-1").agent(agent_id)
        deadline_ms = int(await r.hget(key, "start_deadline_ms"))
        create_ms = int(await r.hget(key, "create_ms"))
        assert deadline_ms > create_ms
        await r.hset(key, "start_deadline_ms", deadline_ms - 1000)  # not replay_within_s's
        replayed = await op.replay(agent_id)
        assert replayed.start_deadline is not None
        assert int(replayed.start_deadline.timestamp() * 1000) == deadline_ms - 1000
        assert int(await r.hget(key, "expire_ms")) == deadline_ms - 1000
        await bob.wait(agent_id, timeout=30)

        await r.hset(key, "start_deadline_ms", 1000)  # its start deadline has passed
        late = await _fails(op.replay(agent_id))
        assert (late.code, late.reason) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "START_DEADLINE_PASSED",
        )
        assert (await op.get(agent_id)).state == Agent.STATE_DEAD_LETTERED


# -- any scope -------------------------------------------------------------------------------


async def test_an_any_scope_operator_still_does_everything(fed: Fed) -> None:
    async with fed.client("bob") as bob, fed.client("alice") as alice, fed.client() as op:
        agent = await bob.spawn("spoke-2", "synthetic", "duration=60 steps=60")
        running = await _wait_state(op, agent.agent_id, Agent.STATE_RUNNING)
        assert (running.issuer, running.task) == ("bob", "duration=60 steps=60")
        async for _ in op.watch(agent.agent_id):
            break
        assert agent.agent_id in [a.agent_id for a in (await op.list("spoke-2")).agents]
        assert (await op.kill(agent.agent_id)).state == Agent.STATE_KILLED
        failed = await _dead_lettered(bob, "spoke-2", "shell", "exit 5")
        assert (await op.replay(failed)).issuer == "bob"
        await op.wait(failed, timeout=30)

        for verb in ("pause", "resume", "drain"):  # everyone's agents: any scope only
            denied = await _fails(getattr(alice, verb)("spoke-2"))
            assert denied.code == grpc.StatusCode.PERMISSION_DENIED, verb
        await op.pause("spoke-2")
        await op.drain("spoke-2")
        await op.resume("spoke-2")
        assert (await alice.queue_stats("spoke-2")).paused is False


# -- the migration ---------------------------------------------------------------------------


async def test_a_rule_without_a_scope_refuses_start_up_naming_it(
    tmp_path: Path, redis_url: str
) -> None:
    files, policy_file = _write_files(tmp_path, redis_url)
    policy_file.write_text(
        POLICY
        + '\n[[rule]]\nname = "legacy-ci"\nprincipals = ["ci"]\nverbs = ["read"]\n'
        + 'spokes = ["*"]\n'
    )
    scfg = replace(SpokeConfig.load(files.spoke_configs["spoke-1"], {}), policy_file=policy_file)
    with pytest.raises(PolicyConfigError, match=r"rule #5 \(legacy-ci\): scope is required"):
        async with SpokeApp(scfg):
            pass
    hcfg = HubConfig.load(files.hub_config, {}).replace(spokes=(), policy_file=policy_file)
    with pytest.raises(PolicyConfigError, match=r"legacy-ci.*scope is required"):
        async with HubApp(hcfg):
            pass
