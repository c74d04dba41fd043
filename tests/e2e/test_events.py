"""The event feed and notification hooks (issue 12), through real processes: a hubd and two
spokeds, each with its own redis-server, the real ``hubctl events`` and two principals (the
operator, and alice with scope own). spoke-1 runs three hooks: one that writes each event it
gets to a file, one that hangs and one that exits non-zero. One federation serves the module.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from hubspoke import client as hc
from hubspoke import keys, testing
from hubspoke.trust import TrustStore

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]

ALICE_RULE = """
[[rule]]
name = "alice-own"
principals = ["alice"]
verbs = ["*"]
scope = "own"
spokes = ["*"]
"""

HOOKS = """
[[hooks]]
name = "record"
on = ["FAILED", "NEEDS_INPUT"]
program = "{record}"
args = ["{out}"]

[[hooks]]
name = "hang"
on = ["FAILED", "NEEDS_INPUT", "SUCCEEDED"]
program = "{hang}"
args = ["{hung}"]
timeout_seconds = 2
retries = 1

[[hooks]]
name = "broken"
on = ["FAILED", "NEEDS_INPUT", "SUCCEEDED"]
program = "{broken}"
"""

SUCCESS = ["QUEUED", "STARTING", "RUNNING", "SUCCEEDED"]


@dataclass
class Fed:
    fed: testing.Federation
    operator: hc.Client
    alice: hc.Client
    hook_out: Path
    hook_hung: Path
    """The agent ids the hanging hook was run for, one per run."""


def _script(path: Path, body: str) -> str:
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)
    return str(path)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Fed]:
    root = tmp_path_factory.mktemp("events")
    bin_dir = root / "bin"
    bin_dir.mkdir()
    out = root / "hook-events.jsonl"
    hooks = HOOKS.format(
        record=_script(
            bin_dir / "record",
            "import sys\nwith open(sys.argv[1], 'a') as f:\n    f.write(sys.stdin.read())\n",
        ),
        out=out,
        hang=_script(
            bin_dir / "hang",
            "import json, sys, time\n"
            "with open(sys.argv[1], 'a') as f:\n"
            "    f.write(json.load(sys.stdin)['agent_id'] + '\\n')\n"
            "time.sleep(60)\n",
        ),
        hung=root / "hang-runs",
        broken=_script(bin_dir / "broken", "import sys\nsys.exit(3)\n"),
    )
    fed = testing.Federation(
        root,
        ["spoke-1", "spoke-2"],
        spoke_env={"SPOKE_RATE_BURST": "1000", "SPOKE_CONCURRENCY": "4"},
        hub_env={"HUB_RATE_BURST": "1000"},
    )
    try:
        files = await fed.prepare()
        alice = keys.generate("alice")
        keys.write_keypair(alice, files.keys_dir)
        with files.trust_file.open("a") as fh:
            fh.write(
                f'\n[[peer]]\nname = "alice"\nrole = "client"\n'
                f'keys = ["{keys.encode_public(alice.public)}"]\n'
            )
        with (root / "policy.toml").open("a") as fh:
            fh.write(ALICE_RULE)
        with fed.config_of("spoke-1").open("a") as fh:
            fh.write(hooks)
        await fed.start()
        trust = TrustStore.from_file(files.trust_file)
        async with (
            fed.client(timeout_s=30) as operator,
            hc.Client(fed.hub_address, "alice", alice, trust, "hub", 30) as alice_client,
        ):
            yield Fed(fed, operator, alice_client, out, root / "hang-runs")
    finally:
        await fed.stop()


class Follower:
    """A real ``hubctl --json events --follow`` process, its lines read as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, fed: testing.Federation, *argv: str) -> Follower:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "hubspoke.hub.cli",
            "--config",
            str(fed.files.hubctl_config),
            "--hub",
            fed.hub_address,
            "--json",
            "events",
            "--follow",
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        return cls(proc)

    async def line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        raw = await self.proc.stdout.readline()
        assert raw, "hubctl events ended"
        doc: dict[str, Any] = json.loads(raw)
        return doc

    async def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()


async def test_follow_sees_every_transition_of_50_agents_and_resumes_without_gaps(
    fed: Fed,
) -> None:
    first = await Follower.start(fed.fed)
    seen: list[dict[str, Any]] = []
    try:
        agents = await asyncio.gather(
            *(
                fed.operator.spawn(f"spoke-{1 + i % 2}", "synthetic", "duration=0 steps=1")
                for i in range(50)
            )
        )
        ids = {a.agent_id for a in agents}
        async with asyncio.timeout(60):
            while len([d for d in seen if d["agent_id"] in ids]) < 60:
                seen.append(await first.line())
    finally:
        await first.kill()  # mid-way: the rest arrives while nobody follows
    token = seen[-1]["token"]
    second = await Follower.start(fed.fed, "--since", token)
    try:
        done = {d["agent_id"] for d in seen if d["state"] == "SUCCEEDED"}
        async with asyncio.timeout(60):
            while not ids <= done:
                doc = await second.line()
                seen.append(doc)
                if doc.get("state") == "SUCCEEDED":
                    done.add(doc["agent_id"])
    finally:
        await second.kill()
    assert {d["kind"] for d in seen} == {"EVENT"}
    by_spoke: dict[str, list[int]] = defaultdict(list)
    for doc in seen:
        by_spoke[doc["spoke"]].append(doc["cursor"])
    for spoke, cursors in by_spoke.items():  # no gap, no repeat, in order
        assert cursors == list(range(cursors[0], cursors[0] + len(cursors))), spoke
    per_agent: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for doc in seen:
        if doc["agent_id"] in ids:
            per_agent[doc["agent_id"]].append((doc["sequence"], doc["state"]))
    assert set(per_agent) == ids
    for agent_id, changes in per_agent.items():
        assert [state for _, state in changes] == SUCCESS, agent_id
        assert [seq for seq, _ in changes] == sorted({seq for seq, _ in changes}), agent_id


async def test_scope_own_sees_only_its_own_agents(fed: Fed) -> None:
    mine = await fed.alice.spawn("spoke-2", "synthetic", "duration=0 steps=0")
    theirs = await fed.operator.spawn("spoke-2", "synthetic", "duration=0 steps=0")
    await fed.operator.wait(mine.agent_id, "spoke-2", timeout=30)
    await fed.operator.wait(theirs.agent_id, "spoke-2", timeout=30)
    alice_sees = [e async for e in fed.alice.events() if e.kind == hc.FeedKind.EVENT]
    assert {e.agent_id for e in alice_sees} == {mine.agent_id}
    assert {e.owner for e in alice_sees} == {"alice"}
    assert [e.state.name for e in alice_sees] == ["QUEUED", "STARTING", "RUNNING", "SUCCEEDED"]
    operator_sees = {
        e.agent_id
        async for e in fed.operator.events(spoke="spoke-2", states=["SUCCEEDED"])
        if e.kind == hc.FeedKind.EVENT
    }
    assert {mine.agent_id, theirs.agent_id} <= operator_sees


async def test_hooks_get_failed_and_needs_input_and_never_delay_agents(fed: Fed) -> None:
    failed = await fed.operator.spawn(
        "spoke-1", "synthetic", "duration=0 steps=0 receipt=failed", max_attempts=1
    )
    blocked = await fed.operator.spawn("spoke-1", "synthetic", "duration=0 steps=0 receipt=blocked")
    quick = await asyncio.gather(
        *(fed.operator.spawn("spoke-1", "synthetic", "duration=0 steps=0") for _ in range(6))
    )
    for agent in quick:  # the hanging hook (2 s, once retried) is on its way through these
        done = await fed.operator.wait(agent.agent_id, "spoke-1", timeout=60)
        assert done.state == hc.AgentState.SUCCEEDED
    # Every quick agent ended while the hanging hook still lagged behind their events (each
    # costs it 4 s and more): no agent waited for it. A hook run on the worker's path would
    # have run for each agent before the agent's end was recorded.
    hung = fed.hook_hung.read_text().split() if fed.hook_hung.exists() else []
    assert not {a.agent_id for a in quick} <= set(hung), hung
    want = {failed.agent_id: "FAILED", blocked.agent_id: "NEEDS_INPUT"}
    got: dict[str, dict[str, Any]] = {}
    async with asyncio.timeout(30):
        while set(got) != set(want):
            if fed.hook_out.exists():
                for line in fed.hook_out.read_text().splitlines():
                    doc = json.loads(line)
                    if doc["agent_id"] in want:
                        got[doc["agent_id"]] = doc
            await asyncio.sleep(0.1)
    for agent_id, state in want.items():
        doc = got[agent_id]
        assert (doc["state"], doc["spoke"], doc["owner"]) == (state, "spoke-1", "operator")
        assert doc["agent"] == f"spokes/spoke-1/agents/{agent_id}"


async def test_a_spoke_that_does_not_answer_is_named_and_the_others_still_come(fed: Fed) -> None:
    agent = await fed.operator.spawn("spoke-1", "synthetic", "duration=0 steps=0")
    await fed.operator.wait(agent.agent_id, "spoke-1", timeout=30)
    stopped = fed.fed.spoked("spoke-2")
    stopped.signal(signal.SIGSTOP)  # its connection stays open: only silence tells
    try:
        run = await fed.fed.hubctl("events", "--state", "SUCCEEDED")
    finally:
        stopped.signal(signal.SIGCONT)
    assert run.code == 5, run.stderr
    assert "spoke spoke-2 unreachable" in run.stderr
    assert agent.agent_id in run.stdout
    assert "since spoke-1=" in run.stderr
