"""Approvals (issue 12), through real processes: a hubd and a spoked on real Redis, hubctl as
four principals. A rule asks two approvals for the ``deploy`` profile (approvers operator,
alice and bob) and for ``deploy-brief`` with a 2 s window; carol may use the approve verb but
is no approver. The spoke holds the agent AWAITING_APPROVAL (no job), checks every approval
itself (signature, approver, not the requester), releases it with two distinct approvals,
ends it REJECTED on a reject or when the window closes, and holds it across a restart. Each
agent appends to a ledger file when it runs, so "never ran early" is a file that is absent.
One federation serves the module.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
import redis.asyncio

from hubspoke import commands, keys, testing
from hubspoke import grpc as sgrpc
from hubspoke.client import AgentState, CallError, Client
from hubspoke.gen.federation.v1 import command_pb2, spoke_service_pb2, spoke_service_pb2_grpc
from hubspoke.spoke import job_pending
from hubspoke.spoke.keys import SpokeKeys
from hubspoke.testing import until

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]

SPOKE = "spoke-1"
PROFILES = (
    testing.DEFAULT_PROFILES
    + """
[profiles.deploy]
argv = ["sh", "-c", "{task}"]
task_on_stdin = false
unsafe = true

[profiles.deploy-brief]
argv = ["sh", "-c", "{task}"]
task_on_stdin = false
unsafe = true
"""
)
RULES = """
[[rule]]
name = "deploy-needs-two"
principals = ["*"]
verbs = ["spawn"]
scope = "own"
spokes = ["*"]
profiles = ["deploy"]
approvals = 2
approvers = ["operator", "alice", "bob"]

[[rule]]
name = "brief-window"
principals = ["operator"]
verbs = ["spawn"]
scope = "own"
spokes = ["*"]
profiles = ["deploy-brief"]
approvals = 1
approvers = ["alice"]
approval_window_seconds = 2

[[rule]]
name = "approvers"
principals = ["alice", "bob", "carol"]
verbs = ["read", "approve", "reject"]
scope = "any"
spokes = ["*"]
"""
OTHERS = ("alice", "bob", "carol")


@dataclass
class Fed:
    fed: testing.Federation
    operator: Client
    configs: dict[str, Path]
    ledgers: Path
    signers: dict[str, keys.SigningKey]

    async def hubctl(self, principal: str, *argv: str) -> testing.HubctlRun:
        return await testing.run_hubctl(self.configs[principal], self.fed.hub_address, *argv)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Fed]:
    root = tmp_path_factory.mktemp("approvals")
    fed = testing.Federation(
        root,
        [SPOKE],
        spoke_profiles=PROFILES,
        spoke_env={"SPOKE_SWEEP_INTERVAL_S": "0.5", "SPOKE_MAX_AWAITING_PER_PRINCIPAL": "2"},
    )
    try:
        files = await fed.prepare()
        configs = {"operator": files.hubctl_config}
        signers: dict[str, keys.SigningKey] = {}
        base = files.hubctl_config.read_text()
        for name in OTHERS:
            key = keys.generate(name)
            signers[name] = key
            keys.write_keypair(key, files.keys_dir)
            with files.trust_file.open("a") as fh:
                fh.write(
                    f'\n[[peer]]\nname = "{name}"\nrole = "client"\n'
                    f'keys = ["{keys.encode_public(key.public)}"]\n'
                )
            configs[name] = root / f"hubctl-{name}.toml"
            configs[name].write_text(
                base.replace('principal = "operator"', f'principal = "{name}"').replace(
                    "keys/operator.key", f"keys/{name}.key"
                )
            )
        with (root / "policy.toml").open("a") as fh:
            fh.write(RULES)
        await fed.start()
        ledgers = root / "ledgers"
        ledgers.mkdir()
        async with fed.client(timeout_s=30) as operator:
            yield Fed(fed, operator, configs, ledgers, signers)
    finally:
        await fed.stop()


async def spawn_held(fed: Fed, name: str, profile: str = "deploy") -> tuple[str, Path]:
    """A spawn through ``hubctl spawn --wait`` as the operator, which returns (exit 8) while
    the agent waits for approvals; its ledger file, absent until it runs."""
    ledger = fed.ledgers / name
    run = await fed.hubctl(
        "operator", "--json", "spawn", "--spoke", SPOKE, "--profile", profile, "--wait",
        "--", f"echo ran >> {ledger}",
    )  # fmt: skip
    assert run.code == 8, run.stderr
    doc = run.doc()
    assert doc["state"] == "AWAITING_APPROVAL", doc
    assert "start_time" not in doc
    assert "approval_deadline" in doc
    return doc["agent_id"], ledger


async def history(fed: Fed, agent_id: str) -> list[tuple[str, str, str]]:
    """The agent's events so far (kind, state or approver, reason or data), up to the first
    heartbeat or its final state."""
    seen: list[tuple[str, str, str]] = []
    async with asyncio.timeout(30):
        async for ev in fed.operator.watch(agent_id, SPOKE):
            if ev.kind.name == "HEARTBEAT":
                break
            if ev.kind.name == "STATE":
                seen.append(("STATE", ev.state.name, ev.reason))
            elif ev.kind.name == "APPROVAL":
                seen.append(("APPROVAL", ev.approver, ev.data))
            if ev.state.final:
                break
    return seen


def _direct(fed: Fed, body: command_pb2.ApproveAgentBody, key: keys.SigningKey) -> Any:
    """An approve_agent signed by ``key`` as ``key``'s principal, straight to the spoke."""
    cmd = commands.build_command(issuer=key.name, audience=SPOKE)
    cmd.approve_agent.CopyFrom(body)
    return commands.sign_command(cmd, key)


async def test_two_approvers_release_it_and_the_requester_cannot_approve(fed: Fed) -> None:
    agent_id, ledger = await spawn_held(fed, "released")
    # The approvers' work queue.
    listed = await fed.hubctl("alice", "--json", "list", "--state", "AWAITING_APPROVAL")
    assert listed.code == 0, listed.stderr
    rows = listed.doc()["agents"]
    mine = [r for r in rows if r["agent_id"] == agent_id]
    assert mine
    assert mine[0]["approvals_required"] == 2
    assert mine[0]["approvers"] == ["alice", "bob", "operator"]

    own = await fed.hubctl("operator", "approve", agent_id, "--reason", "mine, trust me")
    assert own.code == 4, own.stdout
    assert "operator requested agent" in own.stderr
    assert "cannot approve" in own.stderr

    first = await fed.hubctl("alice", "--json", "approve", agent_id, "--reason", "plan read")
    assert first.code == 0, first.stderr
    assert first.doc()["state"] == "AWAITING_APPROVAL"
    assert first.doc()["approved_by"] == ["alice"]
    again = await fed.hubctl("alice", "--json", "approve", agent_id, "--reason", "twice?")
    assert again.code == 0, again.stderr
    assert again.doc()["approved_by"] == ["alice"]  # one approver counts once
    await asyncio.sleep(0.5)
    assert not ledger.exists()

    second = await fed.hubctl("bob", "--json", "approve", agent_id, "--reason", "ok")
    assert second.code == 0, second.stderr
    assert second.doc()["approved_by"] == ["alice", "bob"]
    assert second.doc()["state"] != "AWAITING_APPROVAL"
    done = await fed.hubctl("operator", "status", agent_id, "--wait")
    assert done.code == 0, (done.stdout, done.stderr)
    assert ledger.read_text() == "ran\n"

    seen = await history(fed, agent_id)
    assert seen[:5] == [
        ("STATE", "QUEUED", ""),
        ("STATE", "AWAITING_APPROVAL", "APPROVAL_REQUIRED"),
        ("APPROVAL", "alice", "plan read"),
        ("APPROVAL", "bob", "ok"),
        ("STATE", "QUEUED", "APPROVED"),
    ]
    assert seen[-1] == ("STATE", "SUCCEEDED", "")
    assert [s for s in seen if s[1] == "STARTING"], seen


async def test_a_reject_ends_it_rejected_and_it_never_runs(fed: Fed) -> None:
    agent_id, ledger = await spawn_held(fed, "rejected")
    long = await fed.hubctl("alice", "reject", agent_id, "--reason", "x" * 1025)
    assert long.code == 1, long.stderr
    assert "1024" in long.stderr, long.stderr
    assert "INVALID" in long.stderr, long.stderr
    run = await fed.hubctl("alice", "--json", "reject", agent_id, "--reason", "not on friday")
    assert run.code == 0, run.stderr
    doc = run.doc()
    assert (doc["state"], doc["reason"]) == ("REJECTED", "REJECTED_BY_APPROVER")
    again = await fed.hubctl("alice", "--json", "reject", agent_id, "--reason", "not on friday")
    assert again.code == 0, again.stderr  # a retry of the rejection is answered with the agent
    assert again.doc()["state"] == "REJECTED"
    late = await fed.hubctl("bob", "approve", agent_id)
    assert late.code == 1, late.stderr
    assert "AGENT_NOT_RUNNING" in late.stderr, late.stderr
    wait = await fed.hubctl("operator", "status", agent_id, "--wait")
    assert wait.code == 1
    seen = await history(fed, agent_id)
    assert seen[-2:] == [
        ("APPROVAL", "alice", "rejected: not on friday"),
        ("STATE", "REJECTED", "REJECTED_BY_APPROVER"),
    ]
    agent = await fed.operator.get(agent_id, SPOKE)
    assert agent.start_time is None
    assert not ledger.exists()


async def test_an_approval_window_that_closes_ends_it_rejected(fed: Fed) -> None:
    agent_id, ledger = await spawn_held(fed, "expired", profile="deploy-brief")

    async def rejected() -> bool:
        return (await fed.operator.get(agent_id, SPOKE)).state == AgentState.REJECTED

    await until(rejected, 15)
    agent = await fed.operator.get(agent_id, SPOKE)
    assert agent.reason == "APPROVAL_EXPIRED"
    assert agent.start_time is None
    late = await fed.hubctl("alice", "approve", agent_id)
    assert late.code == 1, late.stderr
    assert not ledger.exists()


async def test_straight_to_the_spoke_a_forged_or_non_approver_approval_is_refused(
    fed: Fed,
) -> None:
    agent_id, ledger = await spawn_held(fed, "direct")
    spoke = spoke_service_pb2_grpc.SpokeServiceStub(sgrpc.open_channel(fed.fed.address(SPOKE)))
    body = command_pb2.ApproveAgentBody(agent=agent_id, reason="let me in")

    async def refused(env: command_pb2.SignedEnvelope) -> grpc.StatusCode:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await spoke.ApproveAgent(spoke_service_pb2.SpokeServiceApproveAgentRequest(command=env))
        return exc.value.code()

    # Signed with a key the spoke does not trust, in alice's name.
    impostor = keys.generate("alice")
    assert await refused(_direct(fed, body, impostor)) == grpc.StatusCode.UNAUTHENTICATED
    # Alice's own signature, over other bytes than those sent.
    genuine = _direct(fed, body, fed.signers["alice"])
    tampered = command_pb2.SignedEnvelope()
    tampered.CopyFrom(genuine)
    tampered.payload = genuine.payload.replace(b"let me in", b"let me on")
    assert await refused(tampered) == grpc.StatusCode.UNAUTHENTICATED
    # No signature at all.
    unsigned = command_pb2.SignedEnvelope(
        payload=genuine.payload, payload_type=genuine.payload_type
    )
    assert await refused(unsigned) == grpc.StatusCode.UNAUTHENTICATED
    # Carol's valid signature: she may use the verb but is no approver of this agent.
    assert (
        await refused(_direct(fed, body, fed.signers["carol"])) == grpc.StatusCode.PERMISSION_DENIED
    )
    via_hub = await fed.hubctl("carol", "approve", agent_id)
    assert via_hub.code == 4, via_hub.stderr
    assert "not an approver" in via_hub.stderr, via_hub.stderr

    agent = await fed.operator.get(agent_id, SPOKE)
    assert agent.state == AgentState.AWAITING_APPROVAL
    assert agent.approved_by == ()
    # A valid one straight to the spoke counts like any other.
    ok = await spoke.ApproveAgent(
        spoke_service_pb2.SpokeServiceApproveAgentRequest(command=genuine)
    )
    assert ok.reply.payload
    agent = await fed.operator.get(agent_id, SPOKE)
    assert agent.approved_by == ("alice",)
    assert agent.state == AgentState.AWAITING_APPROVAL
    assert not ledger.exists()
    await fed.operator.kill(agent_id, SPOKE)  # the requester may withdraw it


async def test_a_restarted_spoked_still_holds_it_then_releases_it(fed: Fed) -> None:
    agent_id, ledger = await spawn_held(fed, "restarted")
    await fed.fed.spoked(SPOKE).restart()
    await asyncio.sleep(1.0)  # a worker would have taken a queued job by now
    agent = await fed.operator.get(agent_id, SPOKE)
    assert agent.state == AgentState.AWAITING_APPROVAL
    assert agent.start_time is None
    assert not ledger.exists()
    for who in ("bob", "alice"):
        run = await fed.hubctl(who, "approve", agent_id, "--reason", "after the restart")
        assert run.code == 0, run.stderr
    done = await fed.hubctl("operator", "status", agent_id, "--wait")
    assert done.code == 0, (done.stdout, done.stderr)
    assert ledger.read_text() == "ran\n"


async def test_approvals_written_into_redis_do_not_release_it(fed: Fed) -> None:
    """Whoever can write the spoke's Redis marks a held agent approved and queued (and as a
    write cut between record and job, so that the start-up scan queues it); the worker
    checks the kept signed approvals before it starts it (there are none): FAILED
    TAMPERED, and it never ran."""
    agent_id, ledger = await spawn_held(fed, "forged-in-redis")
    r = redis.asyncio.Redis.from_url(fed.fed.redis["spoke-1"].url)
    try:
        await r.hset(
            SpokeKeys(SPOKE).agent(agent_id),
            mapping={"approved_by": '["alice", "bob"]', "state": "QUEUED"},
        )
        await job_pending.mark(r, SpokeKeys(SPOKE), agent_id)  # spoke/job_pending.py
    finally:
        await r.aclose()
    await fed.fed.spoked(SPOKE).restart()  # start-up queues a marked QUEUED record with no job

    async def failed() -> bool:
        return (await fed.operator.get(agent_id, SPOKE)).state == AgentState.FAILED

    await until(failed, 30)
    agent = await fed.operator.get(agent_id, SPOKE)
    assert agent.reason == "TAMPERED"
    assert not ledger.exists()


async def test_an_agent_that_needed_approvals_is_not_replayed(fed: Fed) -> None:
    """A replay would run it again with no one asked: refused; a new spawn waits again."""
    ledger = fed.ledgers / "replayed"
    agent = await fed.operator.spawn(SPOKE, "deploy", f"echo ran >> {ledger}; exit 3")
    assert agent.state == AgentState.AWAITING_APPROVAL
    for who in ("alice", "bob"):
        run = await fed.hubctl(who, "approve", agent.agent_id)
        assert run.code == 0, run.stderr
    done = await fed.hubctl("operator", "status", agent.agent_id, "--wait")
    assert done.code == 1, done.stdout
    assert ledger.read_text() == "ran\n"
    with pytest.raises(CallError) as refused:
        await fed.operator.replay(agent.agent_id, SPOKE)
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.value.reason == "APPROVAL_REQUIRED"
    assert ledger.read_text() == "ran\n"  # refused before anything was queued


async def test_a_principal_may_hold_only_so_many_agents_awaiting_approval(fed: Fed) -> None:
    """Held agents are in no queue; max_awaiting_per_principal (2 here) bounds them: carol's
    third is refused before it is stored, and once one of hers ends she may spawn again."""
    spawn = ("--json", "spawn", "--spoke", SPOKE, "--profile", "deploy", "--", "true")
    first, second = [await fed.hubctl("carol", *spawn) for _ in range(2)]
    assert first.code == 0, first.stderr
    assert second.code == 0, second.stderr
    third = await fed.hubctl("carol", *spawn)
    assert third.code == 1, third.stdout
    assert "QUOTA_EXCEEDED" in third.stderr, third.stderr
    assert "max_awaiting_per_principal" in third.stderr
    rejected = await fed.hubctl("alice", "reject", first.doc()["agent_id"], "--reason", "one")
    assert rejected.code == 0, rejected.stderr
    fourth = await fed.hubctl("carol", *spawn)
    assert fourth.code == 0, fourth.stderr
    assert fourth.doc()["state"] == "AWAITING_APPROVAL"
    for doc in (second.doc(), fourth.doc()):
        await fed.hubctl("alice", "reject", doc["agent_id"])
