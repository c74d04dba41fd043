"""Dedupe keys, list filters and the queue-insight histograms (issue 12), through real
processes: a hubd and two spokeds (spoke-1 serving Prometheus metrics), each with its own
redis-server, and two principals (the operator and alice). One federation serves the module.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from hubspoke import client as hc
from hubspoke import keys, testing
from hubspoke.gen.federation.v1 import agent_pb2
from hubspoke.testing import until
from hubspoke.trust import TrustStore

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]

Agent = agent_pb2.Agent

ALICE_RULE = """
[[rule]]
name = "alice-own"
principals = ["alice"]
verbs = ["*"]
scope = "own"
spokes = ["*"]
"""


@dataclass
class Fed:
    fed: testing.Federation
    operator: hc.Client
    alice: hc.Client
    metrics_url: str
    ledger_dir: Path

    async def hubctl(self, *argv: str) -> testing.HubctlRun:
        return await self.fed.hubctl(*argv)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Fed]:
    root = tmp_path_factory.mktemp("dedupe")
    fed = testing.Federation(
        root,
        ["spoke-1", "spoke-2"],
        spoke_env={"SPOKE_RATE_BURST": "1000"},
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
        await fed.start(spokeds=["spoke-2"], hub=False)
        await fed.start_spoked("spoke-1", env={"SPOKE_METRICS_LISTEN": "127.0.0.1:0"})
        await fed.start_hub()
        port = metrics_port(fed.logs / "spoke-1.log")
        trust = TrustStore.from_file(files.trust_file)
        async with (
            fed.client(timeout_s=30) as operator,
            hc.Client(fed.hub_address, "alice", alice, trust, "hub", 30) as alice_client,
        ):
            ledger = root / "ledgers"
            ledger.mkdir()
            yield Fed(fed, operator, alice_client, f"http://127.0.0.1:{port}/metrics", ledger)
    finally:
        await fed.stop()


def metrics_port(log: Path) -> int:
    """The port spoke-1 logged for its metrics endpoint (it chose a free one: port 0)."""
    for line in log.read_text().splitlines():
        if '"metrics_serving"' in line:
            return int(json.loads(line)["port"])
    raise AssertionError(f"no metrics_serving in {log}")


async def running(client: hc.Client, agent_id: str) -> None:
    async def check() -> bool:
        return (await client.get(agent_id)).state == Agent.STATE_RUNNING

    await until(check)


# -- dedupe ------------------------------------------------------------------------------------


async def test_a_dedupe_key_returns_the_unfinished_agent_then_frees_with_it(fed: Fed) -> None:
    ledger = fed.ledger_dir / "build-42"
    task = f"echo ran >> {ledger}; sleep 60"
    first = await fed.operator.spawn("spoke-1", "shell", task, dedupe_key="build-42")
    assert first.raw.dedupe_key == "build-42"
    assert not first.raw.deduplicated
    await running(fed.operator, first.agent_id)

    again = await fed.operator.spawn("spoke-1", "shell", task, dedupe_key="build-42")
    assert again.agent_id == first.agent_id
    assert again.deduplicated
    assert again.dedupe_key == "build-42"
    status = await fed.hubctl("status", first.agent_id)
    assert "dedupe    build-42" in status.stdout
    run = await fed.hubctl(
        "--json", "spawn", "--spoke", "spoke-1", "--profile", "shell", "--dedupe-key",
        "build-42", "--", task,
    )  # fmt: skip
    assert run.code == 0, run.stderr
    assert run.doc()["agent_id"] == first.agent_id
    assert run.doc()["deduplicated"] is True
    listed = await fed.operator.list("spoke-1", dedupe_key="build-42")
    assert [a.agent_id for a in listed.agents] == [first.agent_id]
    assert ledger.read_text() == "ran\n"  # one process ran

    # Another owner with the same key gets an agent of its own.
    theirs = await fed.alice.spawn("spoke-1", "synthetic", "duration=0.1", dedupe_key="build-42")
    assert theirs.agent_id != first.agent_id
    assert not theirs.raw.deduplicated

    # Once final, the key is free: the next spawn creates a new agent.
    killed = await fed.operator.kill(first.agent_id)
    assert killed.state == Agent.STATE_KILLED
    fresh = await fed.operator.spawn("spoke-1", "synthetic", "duration=0.1", dedupe_key="build-42")
    assert fresh.agent_id != first.agent_id
    assert not fresh.raw.deduplicated


async def test_spawns_racing_with_one_key_make_one_agent(fed: Fed) -> None:
    agents = await asyncio.gather(
        *(
            fed.operator.spawn("spoke-2", "synthetic", f"duration=60 n={i}", dedupe_key="race-1")
            for i in range(8)
        )
    )
    assert len({a.agent_id for a in agents}) == 1
    assert sum(not a.raw.deduplicated for a in agents) == 1
    listed = await fed.operator.list("spoke-2", dedupe_key="race-1")
    assert [a.agent_id for a in listed.agents] == [agents[0].agent_id]
    await fed.operator.kill(agents[0].agent_id)


async def test_a_key_derived_from_profile_and_task(fed: Fed) -> None:
    task = "duration=60 steps=0 n=derived"
    first = await fed.operator.spawn("spoke-2", "synthetic", task, dedupe_from_task=True)
    digest = hashlib.sha256(b"synthetic\x00" + task.encode()).hexdigest()
    assert first.raw.dedupe_key == f"task-{digest}"
    again = await fed.operator.spawn("spoke-2", "synthetic", task, dedupe_from_task=True)
    assert again.agent_id == first.agent_id
    assert again.raw.deduplicated
    run = await fed.hubctl("-q", "spawn", "--spoke", "spoke-2", "--dedupe-task", "--", task)
    assert (run.code, run.stdout.strip()) == (0, first.agent_id), run.stderr
    other = await fed.operator.spawn("spoke-2", "synthetic", task + " x", dedupe_from_task=True)
    assert other.agent_id != first.agent_id
    await fed.operator.kill(first.agent_id)
    await fed.operator.kill(other.agent_id)


async def test_bad_dedupe_keys_are_refused(fed: Fed) -> None:
    with pytest.raises(hc.CallError) as info:
        await fed.operator.spawn("spoke-1", "synthetic", "duration=0", dedupe_key="a:b")
    assert info.value.reason == "INVALID_COMMAND"
    run = await fed.hubctl("spawn", "--spoke", "spoke-1", "--dedupe-key", "-x", "--", "t")
    assert run.code == 2
    assert len(run.stderr.strip().splitlines()) == 1
    run = await fed.hubctl("spawn", "--spoke", "spoke-1", "--dedupe-key", "a/b", "--", "t")
    assert run.code == 1
    assert run.stderr.strip().count("\n") == 0
    assert "dedupe_key" in run.stderr
    assert "INVALID_COMMAND" in run.stderr


# -- list filters ------------------------------------------------------------------------------


async def test_list_filters_match_exactly_over_two_spokes_and_pages(fed: Fed) -> None:
    run_id = "lf1"
    made: dict[str, dict[str, Any]] = {}
    for spoke in ("spoke-1", "spoke-2"):
        for i in range(6):
            team = "infra" if i % 2 == 0 else "web"
            client = fed.alice if i % 3 == 0 else fed.operator
            profile = "shell" if i == 4 else "synthetic"
            task = "sleep 3600" if profile == "shell" else "duration=0"
            agent = await client.spawn(
                spoke,
                profile,
                task,
                labels={"run": run_id, "team": team, "i": str(i)},
                delay_s=3600,  # they wait: the listing is stable
            )
            made[agent.agent_id] = {
                "spoke": spoke,
                "team": team,
                "owner": client.principal,
                "profile": profile,
            }

    async def listed(**filters: Any) -> set[str]:
        """Every matching agent of both spokes, two per page, page by page."""
        found: set[str] = set()
        filters = {"labels": {"run": run_id}, **filters}
        first = await fed.operator.list(page_size=2, **filters)
        for spoke, page in first.pages.items():
            found |= {a.agent_id for a in page.agents}
            token = page.next_page_token
            while token:
                more = await fed.operator.list(spoke, page_size=2, page_token=token, **filters)
                found |= {a.agent_id for a in more.agents}
                token = more.pages[spoke].next_page_token
        return found

    def expect(**want: str) -> set[str]:
        return {i for i, m in made.items() if all(m[k] == v for k, v in want.items())}

    assert await listed() == set(made)
    infra = await listed(labels={"run": run_id, "team": "infra"})
    assert infra == expect(team="infra")
    assert len(infra) == 6
    assert await listed(profile="shell") == expect(profile="shell")
    assert await listed(owner="alice") == expect(owner="alice")
    assert await listed(owner="alice", labels={"run": run_id, "team": "web"}) == expect(
        owner="alice", team="web"
    )
    assert await listed(states=[Agent.STATE_QUEUED]) == set(made)
    assert await listed(states=[Agent.STATE_RUNNING]) == set()

    # Scope own: alice sees only her own, whatever owner she asks for.
    mine = await fed.alice.list(page_size=500, labels={"run": run_id})
    assert {a.agent_id for a in mine.agents} == expect(owner="alice")
    theirs = await fed.alice.list(page_size=500, labels={"run": run_id}, owner="operator")
    assert theirs.agents == []

    # hubctl: the filters, and the next page token in its human output.
    run = await fed.hubctl(
        "list", "--spoke", "spoke-1", "--page-size", "2", "--label", f"run={run_id}",
        "--label", "team=infra",
    )  # fmt: skip
    assert run.code == 0, run.stderr
    token = re.search(r"next page: --spoke spoke-1 --page-token (\S+)", run.stdout)
    assert token is not None, run.stdout
    seen = set(re.findall(r"^(\S+)\s+spoke-1\s", run.stdout, re.M)) - {"AGENT"}
    run = await fed.hubctl(
        "--json", "list", "--spoke", "spoke-1", "--page-size", "2", "--label", f"run={run_id}",
        "--label", "team=infra", "--page-token", token.group(1),
    )  # fmt: skip
    assert run.code == 0, run.stderr
    seen |= {a["agent_id"] for a in run.doc()["agents"]}
    assert seen == expect(team="infra", spoke="spoke-1")
    run = await fed.hubctl("list", "--page-token", token.group(1))
    assert run.code == 2
    assert "--spoke" in run.stderr
    run = await fed.hubctl("list", "--label", "novalue")
    assert run.code == 2
    assert len(run.stderr.strip().splitlines()) == 1

    for agent_id in made:
        await fed.operator.kill(agent_id)


async def test_bad_list_filters_are_one_invalid_argument(fed: Fed) -> None:
    for spoke in (None, "spoke-1"):  # the hub's fan-out, and one spoke through the hub
        for filters in ({"dedupe_key": "a:b"}, {"labels": {"k": "v" * 257}}, {"owner": "o" * 300}):
            with pytest.raises(hc.CallError) as info:
                await fed.operator.list(spoke, **filters)
            assert info.value.reason == "INVALID_COMMAND", (spoke, filters)
    run = await fed.hubctl("list", "--dedupe-key", "a:b")
    assert run.code == 1
    assert run.stderr.count("\n") == 1
    assert "INVALID_COMMAND" in run.stderr


# -- histograms --------------------------------------------------------------------------------


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310  # our own 127.0.0.1 URL
        text = resp.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


async def test_queue_wait_and_run_time_histograms_per_profile(fed: Fed) -> None:
    before = await asyncio.to_thread(scrape, fed.metrics_url)
    count = 'hubspoke_agent_run_seconds_count{profile="synthetic"}'
    ids = [
        (await fed.operator.spawn("spoke-1", "synthetic", "duration=0.3 steps=0")).agent_id
        for _ in range(3)
    ]

    async def all_ended() -> bool:
        agents = [await fed.operator.get(i) for i in ids]
        return all(a.state == Agent.STATE_SUCCEEDED for a in agents)

    await until(all_ended)
    after = await asyncio.to_thread(scrape, fed.metrics_url)
    assert after[count] - before.get(count, 0) == 3
    wait_count = 'hubspoke_agent_queue_wait_seconds_count{profile="synthetic"}'
    assert after[wait_count] - before.get(wait_count, 0) == 3
    # Each ran about 0.3 s: in the 0.5 s bucket and above, never under 0.1 s.
    bucket = 'hubspoke_agent_run_seconds_bucket{le="%s",profile="synthetic"}'
    assert after[bucket % "0.1"] - before.get(bucket % "0.1", 0) == 0
    assert after[bucket % "+Inf"] - before.get(bucket % "+Inf", 0) == 3
    assert after['hubspoke_agent_run_seconds_sum{profile="synthetic"}'] >= 0.9
    assert 'hubspoke_agent_queue_wait_seconds_bucket{le="86400.0",profile="synthetic"}' in after
