"""Input to agents (issue 12), through real hubd and spoked processes on real Redis and the
real hubctl: ``hubctl send`` resumes a NEEDS_INPUT agent with its answer and appends a
message to a running agent's inbox; it is a signed verb (owner scope, size bounded at the
hub and at the spoke), and a SendInput straight to the spoke needs a valid signature.

Principals: ``operator`` (everything), ``alice`` (everything on her own agents, ``own``),
``viewer`` (read only, every agent).
"""

from __future__ import annotations

import asyncio
import json
import stat
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from hubspoke import commands, keys, testing
from hubspoke import grpc as sgrpc
from hubspoke.client import AgentState, CallError, Client, EventKind
from hubspoke.gen.federation.v1 import command_pb2, spoke_service_pb2, spoke_service_pb2_grpc
from hubspoke.testing import until

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]

SPOKE = "spoke-1"
PROFILES = (
    testing.DEFAULT_PROFILES
    + f"""
[profiles.synthetic-fifo]
argv = [{json.dumps(sys.executable)}, "-m", "hubspoke.spoke.synthetic"]
inbox = "fifo"

[profiles.synthetic-none]
argv = [{json.dumps(sys.executable)}, "-m", "hubspoke.spoke.synthetic"]
inbox = "none"
"""
)
SPOKE_MAX_INPUT = 1024
HUB_MAX_INPUT = 2048
RULES = """
[[rule]]
name = "alice-own"
principals = ["alice"]
verbs = ["*"]
scope = "own"
spokes = ["*"]

[[rule]]
name = "viewer-reads"
principals = ["viewer"]
verbs = ["read"]
scope = "any"
spokes = ["*"]
"""
OTHERS = ("alice", "viewer")


@dataclass
class Fed:
    fed: testing.Federation
    operator: Client
    configs: dict[str, Path]
    inbox_dir: Path

    async def hubctl(self, *argv: str, who: str = "operator") -> testing.HubctlRun:
        return await testing.run_hubctl(self.configs[who], self.fed.hub_address, *argv)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Fed]:
    root = tmp_path_factory.mktemp("input")
    inbox_dir = root / "inboxes"
    fed = testing.Federation(
        root,
        [SPOKE],
        spoke_profiles=PROFILES,
        spoke_env={
            "SPOKE_INBOX_DIR": str(inbox_dir),
            "SPOKE_MAX_INPUT_BYTES": str(SPOKE_MAX_INPUT),
            # A crashed spoked's agents come back soon (the last test).
            "SPOKE_LOCK_DURATION_MS": "2000",
            "SPOKE_STALLED_INTERVAL_MS": "1000",
        },
        # The hub's circuit to the spoke the last test restarts closes again soon.
        hub_env={
            "HUB_MAX_INPUT_BYTES": str(HUB_MAX_INPUT),
            "HUB_CIRCUIT_OPEN_S": "1",
            "HUB_PROBE_INTERVAL_S": "0.5",
        },
    )
    try:
        files = await fed.prepare()
        configs = {"operator": files.hubctl_config}
        base = files.hubctl_config.read_text()
        for name in OTHERS:
            key = keys.generate(name)
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
        async with fed.client(timeout_s=30) as operator:
            yield Fed(fed, operator, configs, inbox_dir)
    finally:
        await fed.stop()


async def blocked_agent(fed: Fed, who: str = "operator", *, via_hubctl: bool = False) -> str:
    """A synthetic agent that ended its first attempt blocked: NEEDS_INPUT."""
    task = "duration=0 steps=0 receipt=blocked"
    if who == "operator" and not via_hubctl:
        agent = await fed.operator.wait(await fed.operator.spawn(SPOKE, "synthetic", task), 30)
        assert (agent.state, agent.reason) == (AgentState.NEEDS_INPUT, "BLOCKED")
        return agent.agent_id
    run = await fed.hubctl("spawn", "--spoke", SPOKE, "--wait", "--json", "--", task, who=who)
    doc: dict[str, Any] = run.doc()
    assert run.code == 6, run.stderr  # the documented exit code of NEEDS_INPUT
    assert (doc["state"], doc["reason"]) == ("NEEDS_INPUT", "BLOCKED")
    return str(doc["agent_id"])


async def events_of(client: Client, agent_id: str) -> list[Any]:
    """Every event of the agent until it is final."""
    seen: list[Any] = []
    async with asyncio.timeout(30):
        async for event in client.watch(agent_id, SPOKE):
            if event.kind != EventKind.HEARTBEAT:
                seen.append(event)
            if event.state.final:
                return seen
    return seen


async def history(client: Client, agent_id: str) -> list[Any]:
    """The agent's events so far (up to the first heartbeat)."""
    seen: list[Any] = []
    async with asyncio.timeout(30):
        async for event in client.watch(agent_id, SPOKE):
            if event.kind == EventKind.HEARTBEAT or event.state.final:
                return seen
            seen.append(event)
    return seen


async def test_send_resumes_a_needs_input_agent_to_succeeded_with_its_answer(fed: Fed) -> None:
    agent_id = await blocked_agent(fed, via_hubctl=True)

    sent = await fed.hubctl("send", agent_id, "--json", "--", "use", "the", "staging", "db")
    assert sent.code == 0, sent.stderr
    doc = sent.doc()
    assert doc["inputs"] == 1
    assert doc["state"] in ("QUEUED", "STARTING", "RUNNING", "SUCCEEDED")

    done = await fed.hubctl("status", agent_id, "--wait")
    assert done.code == 0, done.stderr  # --wait: SUCCEEDED exits 0
    assert "inputs    1" in done.stdout
    agent = await fed.operator.get(agent_id, SPOKE)
    assert agent.state == AgentState.SUCCEEDED
    assert agent.attempt == 2  # the answer started its next attempt
    assert "INPUT 1 operator use the staging db" in agent.stdout_tail
    assert agent.receipt is not None
    assert agent.receipt.summary.endswith("input: use the staging db")

    events = await events_of(fed.operator, agent_id)
    states = [(e.state.name, e.reason) for e in events if e.kind == EventKind.STATE]
    assert states[-5:] == [
        ("NEEDS_INPUT", "BLOCKED"),
        ("QUEUED", "INPUT_RECEIVED"),
        ("STARTING", ""),
        ("RUNNING", ""),
        ("SUCCEEDED", ""),
    ]
    inputs = [e for e in events if e.kind == EventKind.INPUT]
    assert [(e.data, e.sender, e.input_sequence) for e in inputs] == [
        ("use the staging db", "operator", 1)
    ]
    watched = await fed.hubctl("watch", agent_id)
    assert "input #1 from operator: use the staging db" in watched.stderr  # event lines
    # The message came before the resume (watch shows it in order).
    assert inputs[0].sequence < next(e.sequence for e in events if e.reason == "INPUT_RECEIVED")

    # Final now: a message is refused, and an unknown agent is not found.
    late = await fed.hubctl("send", agent_id, "--", "too late")
    assert late.code == 1, late.stderr
    assert "is SUCCEEDED: it takes no input [AGENT_NOT_RUNNING]" in late.stderr, late.stderr
    with pytest.raises(CallError) as caught:
        await fed.operator.send(agent_id, "too late")
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(CallError) as caught:
        await fed.operator.send("no-such-agent", "hello", SPOKE)
    assert caught.value.code == grpc.StatusCode.NOT_FOUND


async def test_a_message_to_a_running_agent_lands_in_its_inbox(fed: Fed) -> None:
    agent = await fed.operator.spawn(SPOKE, "synthetic", "wait_input duration=60")

    async def running() -> bool:
        return (await fed.operator.get(agent.agent_id, SPOKE)).state == AgentState.RUNNING

    await until(running)
    inbox = fed.inbox_dir / f"{agent.agent_id}.inbox"
    assert inbox.exists()  # the profile's inbox, under the spoke's inbox_dir
    message = fed.inbox_dir.parent / "message.txt"
    message.write_text("hello, running agent")
    sent = await fed.hubctl("send", agent.agent_id, "--file", str(message))
    assert sent.code == 0, sent.stderr

    done = await fed.operator.wait(agent, timeout=30)
    assert done.state == AgentState.SUCCEEDED
    assert done.attempt == 1  # the same attempt read it
    assert "INPUT 1 operator hello, running agent" in done.stdout_tail
    assert done.receipt is not None
    assert done.receipt.summary.endswith("hello, running agent")
    assert not inbox.exists()  # removed once the attempt ended; Redis keeps the message


async def test_a_fifo_inbox_reaches_a_running_agent_that_reads_it(fed: Fed) -> None:
    agent = await fed.operator.spawn(SPOKE, "synthetic-fifo", "wait_input duration=60")

    async def running() -> bool:
        return (await fed.operator.get(agent.agent_id, SPOKE)).state == AgentState.RUNNING

    await until(running)
    inbox = fed.inbox_dir / f"{agent.agent_id}.inbox"
    assert stat.S_ISFIFO(inbox.stat().st_mode)
    await fed.operator.send(agent.agent_id, "through the pipe", SPOKE)
    done = await fed.operator.wait(agent, timeout=30)
    assert done.state == AgentState.SUCCEEDED
    assert "INPUT 1 operator through the pipe" in done.stdout_tail
    assert not inbox.exists()


async def test_a_message_the_attempt_never_got_answers_its_needs_input_at_once(fed: Fed) -> None:
    # No inbox: a message kept while it runs cannot reach it; it ends blocked all the same,
    # and that message resumes it (HUBSPOKE_INPUT) without another send.
    agent = await fed.operator.spawn(SPOKE, "synthetic-none", "receipt=blocked duration=3")

    async def running() -> bool:
        return (await fed.operator.get(agent.agent_id, SPOKE)).state == AgentState.RUNNING

    await until(running)
    assert not (fed.inbox_dir / f"{agent.agent_id}.inbox").exists()
    kept = await fed.operator.send(agent.agent_id, "before you blocked", SPOKE)
    assert (kept.state, kept.attempt) == (AgentState.RUNNING, 1)  # kept while it ran
    done = await fed.operator.wait(agent, timeout=30)
    assert (done.state, done.attempt) == (AgentState.SUCCEEDED, 2)
    assert done.receipt is not None
    assert done.receipt.summary.endswith("input: before you blocked")
    states = [(e.state.name, e.reason) for e in await events_of(fed.operator, agent.agent_id)]
    assert ("QUEUED", "INPUT_RECEIVED") in states


async def test_send_is_authorized_with_owner_scope(fed: Fed) -> None:
    agent_id = await blocked_agent(fed)
    viewer = await fed.hubctl("send", agent_id, "--spoke", SPOKE, "--", "hi", who="viewer")
    assert viewer.code == 4, viewer.stderr
    assert "[KEY_NOT_AUTHORIZED]" in viewer.stderr, viewer.stderr
    alice = await fed.hubctl("send", agent_id, "--spoke", SPOKE, "--", "hi", who="alice")
    assert alice.code == 3, alice.stderr  # not hers: answered as an unknown agent
    agent = await fed.operator.get(agent_id, SPOKE)
    assert (agent.state, agent.inputs) == (AgentState.NEEDS_INPUT, 0)

    # Her own agent she may answer.
    own = await blocked_agent(fed, who="alice")
    sent = await fed.hubctl("send", own, "--", "mine", who="alice")
    assert sent.code == 0, sent.stderr
    await fed.operator.kill(agent_id, SPOKE)


async def test_oversize_or_empty_text_is_invalid_argument(fed: Fed) -> None:
    agent_id = await blocked_agent(fed)
    over_hub = await fed.hubctl("send", agent_id, "--", "x" * (HUB_MAX_INPUT + 1))
    assert over_hub.code == 1, over_hub.stderr
    assert "[INVALID_COMMAND]" in over_hub.stderr, over_hub.stderr
    assert "max_input_bytes" in over_hub.stderr
    assert "hub" in over_hub.stderr
    over_spoke = await fed.hubctl("send", agent_id, "--", "x" * (SPOKE_MAX_INPUT + 1))
    assert over_spoke.code == 1
    assert "[INVALID_COMMAND]" in over_spoke.stderr
    assert f"spoke {SPOKE}" in over_spoke.stderr
    empty = await fed.hubctl("send", agent_id, "--spoke", SPOKE, "--", "")
    assert empty.code == 1, empty.stderr
    assert "message is empty" in empty.stderr, empty.stderr
    with pytest.raises(CallError) as caught:
        await fed.operator.send(agent_id, "y" * (SPOKE_MAX_INPUT + 1), SPOKE)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.metadata["limit"] == "max_input_bytes"
    agent = await fed.operator.get(agent_id, SPOKE)
    assert (agent.state, agent.inputs) == (AgentState.NEEDS_INPUT, 0)
    await fed.operator.kill(agent_id, SPOKE)


async def test_straight_to_the_spoke_an_unsigned_or_forged_send_delivers_nothing(
    fed: Fed,
) -> None:
    agent_id = await blocked_agent(fed)
    spoke = spoke_service_pb2_grpc.SpokeServiceStub(sgrpc.open_channel(fed.fed.address(SPOKE)))

    def signed(text: str, key: keys.SigningKey) -> command_pb2.SignedEnvelope:
        cmd = commands.build_command(issuer="operator", audience=SPOKE)
        cmd.send_input.CopyFrom(command_pb2.SendInputBody(agent=agent_id, text=text))
        return commands.sign_command(cmd, key)

    async def refused(env: command_pb2.SignedEnvelope) -> grpc.StatusCode:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await spoke.SendInput(spoke_service_pb2.SpokeServiceSendInputRequest(command=env))
        return exc.value.code()

    genuine = signed("the real answer", fed.fed.operator)
    unsigned = command_pb2.SignedEnvelope(
        payload=genuine.payload, payload_type=genuine.payload_type
    )
    assert await refused(unsigned) == grpc.StatusCode.UNAUTHENTICATED
    tampered = command_pb2.SignedEnvelope()
    tampered.CopyFrom(genuine)
    tampered.payload = genuine.payload.replace(b"the real answer", b"the fake answer")
    assert await refused(tampered) == grpc.StatusCode.UNAUTHENTICATED
    impostor = signed("an impostor's answer", keys.generate("operator"))
    assert await refused(impostor) == grpc.StatusCode.UNAUTHENTICATED

    agent = await fed.operator.get(agent_id, SPOKE)
    assert (agent.state, agent.inputs) == (AgentState.NEEDS_INPUT, 0)
    assert not [e for e in await history(fed.operator, agent_id) if e.kind == EventKind.INPUT]

    # The genuine one, straight to the spoke, counts like any other.
    ok = await spoke.SendInput(spoke_service_pb2.SpokeServiceSendInputRequest(command=genuine))
    assert ok.reply.payload
    done = await fed.operator.wait(await fed.operator.get(agent_id, SPOKE), timeout=30)
    assert done.state == AgentState.SUCCEEDED
    assert "INPUT 1 operator the real answer" in done.stdout_tail


async def test_the_inbox_is_a_file_that_outlives_a_spoked_crash(fed: Fed) -> None:
    """Last in this module: it kills the spoked."""
    agent = await fed.operator.spawn(SPOKE, "synthetic", "wait_input duration=60", max_attempts=2)

    async def running(attempts: tuple[int, ...]) -> bool:
        try:
            now = await fed.operator.get(agent.agent_id, SPOKE)
        except CallError:  # the hub's circuit to the restarted spoke is not closed yet
            return False
        return now.state == AgentState.RUNNING and now.attempt in attempts

    await until(lambda: running((1,)))
    inbox = fed.inbox_dir / f"{agent.agent_id}.inbox"
    spoked = fed.fed.spoked(SPOKE)
    await spoked.kill()  # SIGKILL, as a crash
    assert stat.S_ISREG(inbox.stat().st_mode)  # a file on disk, not a pipe spoked held
    await spoked.start()
    # Retried (retry_safe, 2 attempts), or re-attached where a supervisor kept it running.
    await until(lambda: running((1, 2)), 60)
    assert inbox.exists()

    async def sent() -> bool:
        run = await fed.hubctl("send", agent.agent_id, "--spoke", SPOKE, "--", "after the crash")
        assert run.code in (0, 5), run.stderr  # 5: unavailable for a moment, retried
        return run.code == 0

    await until(sent)
    done = await fed.operator.wait(agent, timeout=30)
    assert done.state == AgentState.SUCCEEDED
    assert "INPUT 1 operator after the crash" in done.stdout_tail
