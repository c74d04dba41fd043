"""The hub-side findings of the outside security review (issue 9), each reproduced against a
real federation: a real hubd app in front of two real spokeds on a real Redis, several client
principals with their own keys and policies. Where a finding needs a spoke that misbehaves,
that one spoke is a small SpokeService server at the process edge that answers every call
with an error of its choosing; the hub and the other spokes stay real.

Findings (docs/security.md §14):

1. An agent id reused on two spokes redirected status and kill (index keyed by id only).
2. PERMISSION_DENIED for an indexed id on a spoke the caller may not use versus NOT_FOUND for
   an unknown id told which spoke holds an agent; UNKNOWN_PROFILE told a principal with no
   right to spawn a spoke's profile list.
3. An unsigned spoke error reached the operator as the hub's own words, and its reason
   strings became new Prometheus label values.
4. The hub's list of unreachable spokes in a fan-out was not signed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio

from hubspoke import client as hc
from hubspoke import commands, errors, fanout, keys
from hubspoke import grpc as sgrpc
from hubspoke.gen.federation.v1 import (
    agent_pb2,
    hub_service_pb2,
    hub_service_pb2_grpc,
    spoke_service_pb2,
)
from hubspoke.hub.app import HubApp
from hubspoke.hub.config import HubConfig, SpokeEntry
from hubspoke.hub.federation_files import write_federation
from hubspoke.hub.store import HubStore, agent_index_key
from hubspoke.metrics import OTHER_REASON, closed_reason
from hubspoke.spoke.app import SpokeApp
from hubspoke.spoke.config import SpokeConfig
from hubspoke.trust import TrustStore

pytestmark = pytest.mark.slow

Agent = agent_pb2.Agent
SPOKE_SERVICE = spoke_service_pb2.DESCRIPTOR.services_by_name["SpokeService"]
SPOKES = ("spoke-1", "spoke-2")
PRINCIPALS = ("alice", "bob", "carol", "dave")

HUB_POLICY = """
[[rule]]
name = "operator-all"
principals = ["operator"]
verbs = ["*"]
scope = "any"
spokes = ["*"]

[[rule]]
name = "teams-everywhere"
principals = ["alice", "bob"]
verbs = ["*"]
scope = "any"
spokes = ["*"]

[[rule]]
name = "carol-on-spoke-1"
principals = ["carol"]
verbs = ["*"]
scope = "any"
spokes = ["spoke-1"]

[[rule]]
name = "dave-spawns-anywhere"
principals = ["dave"]
verbs = ["spawn"]
scope = "any"
spokes = ["*"]
"""
# The spokes trust the hub's judgement for everyone but dave, who may do nothing there.
SPOKE_POLICY = """
[[rule]]
name = "all-but-dave"
principals = ["operator", "alice", "bob", "carol"]
verbs = ["*"]
scope = "any"
spokes = ["*"]
"""


@dataclass
class Fed:
    root: Path
    hub: HubApp
    trust_file: Path

    @property
    def hub_address(self) -> str:
        return f"127.0.0.1:{self.hub.port}"

    def client(self, principal: str = "operator", timeout_s: float = 10.0) -> hc.Client:
        key = keys.load_private(self.root / "keys" / f"{principal}.key", principal)
        trust = TrustStore.from_file(self.trust_file)
        return hc.Client(self.hub_address, principal, key, trust, "hub", timeout_s)


class RogueSpoke:
    """Answers every SpokeService call with an unsigned error of its own making: terminal
    escapes in the text and a new reason string each time."""

    def __init__(self) -> None:
        self.calls = itertools.count(1)

    def __getattr__(self, rpc: str) -> Any:
        method = SPOKE_SERVICE.methods_by_name.get(rpc)
        if method is None:
            raise AttributeError(rpc)

        def failure() -> errors.RemoteCallError:
            n = next(self.calls)
            return errors.RemoteCallError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"ROGUE_REASON_{n}",
                "\x1b[2J\x1b[Hagent SUCCEEDED\r\n\u202e",
                {"\x1b[31mnote": "\x1b]0;owned\x07"},
            )

        async def unary(request: Any, context: Any) -> Any:
            raise failure()

        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            raise failure()
            yield  # an async generator, as the transport expects for streams

        return stream if method.server_streaming else unary


@pytest.fixture
async def make_fed(tmp_path: Path, redis_url: str) -> AsyncIterator[Callable[..., Awaitable[Fed]]]:
    stack = contextlib.AsyncExitStack()

    async def make(extra: Sequence[SpokeEntry] = (), metrics: bool = False) -> Fed:
        files = write_federation(
            tmp_path, [(s, "127.0.0.1:0", redis_url) for s in SPOKES], "127.0.0.1:0", redis_url
        )
        with files.trust_file.open("a") as fh:
            for name in PRINCIPALS:
                key = keys.generate(name)
                keys.write_keypair(key, files.keys_dir)
                fh.write(
                    f'\n[[peer]]\nname = "{name}"\nrole = "client"\n'
                    f'keys = ["{keys.encode_public(key.public)}"]\n'
                )
        (tmp_path / "hub-policy.toml").write_text(HUB_POLICY)
        (tmp_path / "spoke-policy.toml").write_text(SPOKE_POLICY)
        entries = []
        for name in SPOKES:
            scfg = SpokeConfig.load(files.spoke_configs[name], {})
            scfg = replace(scfg, policy_file=tmp_path / "spoke-policy.toml")
            spoke = await stack.enter_async_context(SpokeApp(scfg))
            entries.append(SpokeEntry(name, f"127.0.0.1:{spoke.port}"))
        hcfg = HubConfig.load(files.hub_config, {}).replace(
            spokes=(*entries, *extra),
            policy_file=tmp_path / "hub-policy.toml",
            metrics_listen="127.0.0.1:0" if metrics else "",
        )
        hub = await stack.enter_async_context(HubApp(hcfg))
        return Fed(tmp_path, hub, files.trust_file)

    yield make
    await stack.aclose()


@pytest.fixture
async def fed(make_fed: Callable[..., Awaitable[Fed]]) -> Fed:
    return await make_fed()


@pytest.fixture
async def rogue_address() -> AsyncIterator[str]:
    built = sgrpc.build_server(
        [sgrpc.Service(SPOKE_SERVICE, RogueSpoke())], "127.0.0.1:0", sgrpc.ServerOptions()
    )
    await built.server.start()
    try:
        yield f"127.0.0.1:{built.port}"
    finally:
        await built.server.stop(None)


async def _fails(coro: Awaitable[Any]) -> hc.CallError:
    with pytest.raises(hc.CallError) as info:
        await coro
    return info.value


async def _wait_running(client: hc.Client, agent: str, timeout_s: float = 20) -> None:
    """Poll the agent (a state on another process; no event to wait on) until it runs."""
    async with asyncio.timeout(timeout_s):
        while True:
            if (await client.get(agent)).state == Agent.STATE_RUNNING:
                return
            await asyncio.sleep(0.05)


# -- 1. id reuse across spokes ----------------------------------------------------------------


async def test_an_id_on_two_spokes_is_ambiguous_not_the_newest(fed: Fed) -> None:
    """Alice and Bob spawn the same --id on two spokes. Before the fix the index pointed at
    Bob's (the later): Alice's status showed Bob's agent and her kill killed it, exiting 0."""
    async with fed.client("alice") as alice, fed.client("bob") as bob:
        await alice.spawn("spoke-1", "synthetic", "duration=60", command_id="build-7")
        await bob.spawn("spoke-2", "synthetic", "duration=60", command_id="build-7")
        await _wait_running(alice, "spokes/spoke-1/agents/build-7")
        await _wait_running(bob, "spokes/spoke-2/agents/build-7")

        for call in (alice.get("build-7"), alice.kill("build-7"), alice.replay("build-7")):
            err = await _fails(call)
            assert (err.code, err.reason) == (
                grpc.StatusCode.FAILED_PRECONDITION,
                "AGENT_AMBIGUOUS",
            )
            assert err.metadata == {"agent": "build-7", "spokes": "spoke-1,spoke-2"}
            assert "spoke-1, spoke-2" in err.message
        with pytest.raises(hc.CallError) as watched:
            async for _ in alice.watch("build-7"):
                pass
        assert watched.value.reason == "AGENT_AMBIGUOUS"

        # Nothing was killed by guess; naming the spoke still works.
        theirs = await bob.get("spokes/spoke-2/agents/build-7")
        assert (theirs.state, theirs.issuer) == (Agent.STATE_RUNNING, "bob")
        mine = await alice.get("build-7", "spoke-1")
        assert (mine.state, mine.issuer) == (Agent.STATE_RUNNING, "alice")
        killed = await alice.kill("spokes/spoke-1/agents/build-7")
        assert killed.spoke == "spoke-1"
        assert (await bob.get("build-7", "spoke-2")).state == Agent.STATE_RUNNING
        await bob.kill("build-7", "spoke-2")


async def test_an_id_on_two_spokes_found_by_asking_is_ambiguous_too(
    fed: Fed, redis_client: redis.asyncio.Redis
) -> None:
    """With no index entry the get fan-out waits for every spoke instead of taking the first
    that answers, and records both."""
    async with fed.client("alice") as alice:
        for spoke in SPOKES:
            await alice.spawn(spoke, "synthetic", "duration=0.1", command_id="twin-1")
        await redis_client.delete("federation:hub:hub:agent-at:twin-1")
        err = await _fails(alice.get("twin-1"))
    assert (err.reason, err.metadata["spokes"]) == ("AGENT_AMBIGUOUS", "spoke-1,spoke-2")
    assert sorted(await redis_client.hkeys("federation:hub:hub:agent-at:twin-1")) == [
        b"spoke-1",
        b"spoke-2",
    ]


async def test_an_id_the_caller_sees_on_one_spoke_only_routes_there(fed: Fed) -> None:
    """The ambiguity is among the agents the caller may see: Carol (spoke-1 only) reaches
    hers although the same id exists on spoke-2."""
    async with fed.client("carol") as carol, fed.client("bob") as bob:
        await carol.spawn("spoke-1", "synthetic", "duration=60", command_id="mine-1")
        await bob.spawn("spoke-2", "synthetic", "duration=60", command_id="mine-1")
        got = await carol.get("mine-1")
        assert (got.spoke, got.issuer) == ("spoke-1", "carol")
        assert (await carol.kill("mine-1")).spoke == "spoke-1"
        assert (await bob.get("mine-1", "spoke-2")).state != Agent.STATE_KILLED
        await bob.kill("mine-1", "spoke-2")


async def test_old_layout_index_entries_still_resolve(
    fed: Fed, redis_client: redis.asyncio.Redis
) -> None:
    """An entry written by a hub before the keyed index (one string per id) still routes,
    even a kill, which is never fanned out."""
    async with fed.client("alice") as alice:
        await alice.spawn("spoke-2", "synthetic", "duration=60", command_id="legacy-1")
        await redis_client.delete("federation:hub:hub:agent-at:legacy-1")
        await redis_client.set("federation:hub:hub:agent:legacy-1", "spoke-2", ex=3600)
        await _wait_running(alice, "spokes/spoke-2/agents/legacy-1")
        assert (await alice.kill("legacy-1")).spoke == "spoke-2"


async def test_index_entries_expire_per_spoke(redis_url: str) -> None:
    """Each (spoke, id) entry has its own expiry; an expired one is not a candidate."""
    store = HubStore.from_url(redis_url, "hub-idx", 2.0)
    try:
        await store.remember_agent("exp-1", "spoke-1", 3600)
        await store.remember_agent("exp-1", "spoke-2", 3600)
        assert await store.find_agent("exp-1") == ("spoke-1", "spoke-2")
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            await client.hset(agent_index_key("hub-idx", "exp-1"), "spoke-1", 1)
            assert await store.find_agent("exp-1") == ("spoke-2",)
            # Re-recording never shortens the hash's life below the newest entry's.
            await store.remember_agent("exp-1", "spoke-1", 1)
            assert await client.pttl(agent_index_key("hub-idx", "exp-1")) > 3_000_000
        finally:
            await client.aclose()
    finally:
        await store.close()


def test_metric_reasons_come_from_a_closed_set() -> None:
    assert closed_reason("AGENT_AMBIGUOUS") == "AGENT_AMBIGUOUS"
    assert closed_reason("SPOKE_ERROR") == "SPOKE_ERROR"
    assert closed_reason("UNIMPLEMENTED") == "UNIMPLEMENTED"  # a passed-on code without reason
    assert closed_reason("") == ""
    assert closed_reason("ROGUE_REASON_1") == OTHER_REASON


# -- 2. error oracles ----------------------------------------------------------------------


async def test_an_agent_on_a_spoke_the_caller_may_not_use_answers_as_an_unknown_one(
    fed: Fed,
) -> None:
    """Carol may act on spoke-1 only. Before the fix, naming Bob's agent on spoke-2 by its bare
    id answered PERMISSION_DENIED, an unknown id NOT_FOUND: which spoke holds what leaked."""
    async with fed.client("bob") as bob, fed.client("carol") as carol:
        await bob.spawn("spoke-2", "synthetic", "duration=60", command_id="secret-9")
        await _wait_running(bob, "secret-9")

        async def answers(agent: str) -> list[tuple[Any, str, str, dict[str, str]]]:
            out = []
            for call in (carol.get(agent), carol.kill(agent), carol.replay(agent)):
                e = await _fails(call)
                out.append((e.code, e.reason, e.message.replace(agent, "ID"), e.metadata))
            with pytest.raises(hc.CallError) as w:
                async for _ in carol.watch(agent):
                    pass
            e = w.value
            out.append((e.code, e.reason, e.message.replace(agent, "ID"), e.metadata))
            for m in out:
                m[3].pop("agent", None)
            return out

        existing, unknown = await answers("secret-9"), await answers("never-8")
        assert existing == unknown
        assert {a[0] for a in existing} == {grpc.StatusCode.NOT_FOUND}
        # Naming the spoke outright reveals nothing new: that stays PERMISSION_DENIED.
        for agent in ("secret-9", "never-8"):
            e = await _fails(carol.get(f"spokes/spoke-2/agents/{agent}"))
            assert e.code == grpc.StatusCode.PERMISSION_DENIED
        assert (await bob.kill("secret-9")).state == Agent.STATE_KILLED


async def test_a_spoke_authorizes_a_spawn_before_it_names_its_profiles(fed: Fed) -> None:
    """Dave may not spawn on the spokes. Before the fix an unknown profile answered
    UNKNOWN_PROFILE with the spoke's profile list; a known one PERMISSION_DENIED."""
    async with fed.client("dave") as dave:
        known = await _fails(dave.spawn("spoke-1", "synthetic", "x"))
        unknown = await _fails(dave.spawn("spoke-1", "no-such-profile", "x"))
    assert (known.code, known.reason) == (grpc.StatusCode.PERMISSION_DENIED, "KEY_NOT_AUTHORIZED")
    assert (unknown.code, unknown.reason) == (known.code, known.reason)
    assert "profiles" not in unknown.metadata
    assert "synthetic" not in unknown.message
    assert "shell" not in unknown.message


# -- 3. unsigned spoke errors ----------------------------------------------------------------


async def test_an_unsigned_spoke_error_is_marked_and_grows_no_metric_labels(
    make_fed: Callable[..., Awaitable[Fed]],
    rogue_address: str,
    scrape_metrics: Callable[[int], Awaitable[Any]],
) -> None:
    """30 calls to a spoke that answers with its own reasons and terminal escapes. Before the
    fix: its text reached the operator as is, and hubd grew 30 reason label values."""
    fed = await make_fed(extra=[SpokeEntry("rogue", rogue_address)], metrics=True)
    async with fed.client() as client:
        failures = [await _fails(client.spawn("rogue", "synthetic", f"x{i}")) for i in range(30)]
    for i, err in enumerate(failures, start=1):
        assert err.code == grpc.StatusCode.FAILED_PRECONDITION
        assert err.reason == "SPOKE_ERROR"
        assert err.message.startswith("unverified error from spoke rogue: ")
        assert err.metadata["unverified"] == "rogue"
        assert err.metadata["spoke_reason"] == f"ROGUE_REASON_{i}"
        shown = err.message + "".join(f"{k}{v}" for k, v in err.metadata.items())
        assert not any(not c.isprintable() for c in shown), shown
    assert fed.hub.metrics_port is not None
    scraped = await scrape_metrics(fed.hub.metrics_port)
    reasons = {
        line.split('reason="', 1)[1].split('"', 1)[0]
        for line in scraped.text.splitlines()
        if line.startswith("hubspoke_rpcs_total{") and "SpawnAgent" in line
    }
    assert reasons == {"SPOKE_ERROR"}


async def test_a_real_spokes_errors_keep_their_reason(fed: Fed) -> None:
    """Our own reasons pass on unchanged (clients act on them), marked as unverified."""
    async with fed.client() as client:
        err = await _fails(client.get("nobody-home", "spoke-1"))
    assert (err.code, err.reason) == (grpc.StatusCode.NOT_FOUND, "AGENT_NOT_FOUND")
    assert err.message.startswith("unverified error from spoke spoke-1: ")
    assert err.metadata["unverified"] == "spoke-1"
    assert "spoke_reason" not in err.metadata


# -- 4. the signed unreachable list -------------------------------------------------------------


async def _list_raw(
    fed: Fed, principal: str = "operator"
) -> tuple[hc._session.Sent, hub_service_pb2.HubServiceListAgentsResponse]:
    key = keys.load_private(fed.root / "keys" / f"{principal}.key", principal)
    cmd = commands.build_command(issuer=principal, audience="hub")
    cmd.list_agents.page_size = 10
    sent = hc._session.Sent(cmd, commands.sign_command(cmd, key))
    channel = sgrpc.open_channel(fed.hub_address)
    try:
        stub = hub_service_pb2_grpc.HubServiceStub(channel)
        resp = await stub.ListAgents(
            hub_service_pb2.HubServiceListAgentsRequest(command=sent.envelope), timeout=10
        )
    finally:
        await channel.close(None)
    return sent, resp


def _check(
    fed: Fed,
    sent: hc._session.Sent,
    resp: hub_service_pb2.HubServiceListAgentsResponse,
    signers: Sequence[str],
) -> None:
    fanout.verify_fan_out(
        resp.hub_reply if resp.HasField("hub_reply") else None,
        trust=TrustStore.from_file(fed.trust_file),
        hub_name="hub",
        command_id=sent.command.command_id,
        command_payload=sent.envelope.payload,
        reply_signers=signers,
        unreachable_spokes=resp.unreachable_spokes,
    )


async def test_the_unreachable_list_of_a_fan_out_is_signed_by_the_hub(
    make_fed: Callable[..., Awaitable[Fed]], rogue_address: str
) -> None:
    """Before the fix unreachable_spokes was the only unsigned part of a list: anyone on the
    path could drop a spoke's reply and call that spoke unreachable, or hide one."""
    fed = await make_fed(extra=[SpokeEntry("rogue", rogue_address)])
    async with fed.client() as client:
        await client.spawn("spoke-1", "synthetic", "duration=0.1", command_id="seen-1")
        listed = await client.list()  # hubctl's client checks the hub's account itself
    assert listed.unreachable_spokes == ["rogue"]
    assert [a.agent_id for a in listed.agents] == ["seen-1"]

    sent, resp = await _list_raw(fed)
    assert list(resp.unreachable_spokes) == ["rogue"]
    _check(fed, sent, resp, ["spoke-1", "spoke-2"])  # as sent: accepted

    # Drop spoke-1's reply and call it unreachable: refused.
    dropped = hub_service_pb2.HubServiceListAgentsResponse()
    dropped.CopyFrom(resp)
    dropped.unreachable_spokes.append("spoke-1")
    with pytest.raises(fanout.FanOutInvalidError):
        _check(fed, sent, dropped, ["spoke-2"])
    # Hide the unreachable spoke: refused.
    hidden = hub_service_pb2.HubServiceListAgentsResponse()
    hidden.CopyFrom(resp)
    del hidden.unreachable_spokes[:]
    with pytest.raises(fanout.FanOutInvalidError):
        _check(fed, sent, hidden, ["spoke-1", "spoke-2"])
    # No account at all, or the account of another command: refused.
    bare = hub_service_pb2.HubServiceListAgentsResponse()
    bare.CopyFrom(resp)
    bare.ClearField("hub_reply")
    with pytest.raises(fanout.FanOutInvalidError):
        _check(fed, sent, bare, ["spoke-1", "spoke-2"])
    other_sent, _ = await _list_raw(fed)
    with pytest.raises(fanout.FanOutInvalidError):
        _check(fed, other_sent, resp, ["spoke-1", "spoke-2"])
