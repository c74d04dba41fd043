"""Run modes (issue 12, "Modes"): shadow spokes and profiles start nothing and end SHADOWED
with what would have run; synthetic spokes run the synthetic agent in place of a profile's
program; ``hubctl synthetic-all`` runs the shipped fixtures end to end and names each that
diverged; ``hubctl shadow-summary`` exits non-zero after a failure in its window.

Real processes: one federation for the module (hubd, three spokeds, each with its own
redis-server: ``live-1`` in live mode, ``shadow-1`` with SPOKE_MODE=shadow, ``synth-1`` with
SPOKE_MODE=synthetic), hubctl as a subprocess. The ``marker`` profile's program writes a
file named by its task when it runs: a shadow spoke must never leave one.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

import hubspoke.client as hc
from hubspoke import testing

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

SPOKES = {"live-1": "live", "shadow-1": "shadow", "synth-1": "synthetic"}
SECRET_VALUE = "s3cr3t-value-never-shown"  # noqa: S105  # a test value
WRITE_MARKER = "import pathlib, sys; pathlib.Path(sys.argv[1]).write_text('ran')"


@dataclass(frozen=True)
class Fed:
    fed: testing.Federation
    markers: Path
    root: Path


def _profiles(markers: Path, secret: Path) -> str:
    marker = (
        f'argv = ["{sys.executable}", "-c", "{WRITE_MARKER}", "{markers}/{{task}}"]\n'
        'task_pattern = "[a-z0-9-]+"\n'
        f'secrets = {{ API_TOKEN = "{secret}" }}\n'
        'env = { MARKER_ENV = "1" }\n'
    )
    return testing.DEFAULT_PROFILES + (
        f"\n[profiles.marker]\n{marker}"
        f'\n[profiles.cautious]\nmode = "shadow"\n{marker}'
        '\n[profiles.broken]\nargv = ["/nonexistent/hubspoke-broken-program"]\n'
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Fed]:
    root = tmp_path_factory.mktemp("modes")
    markers = root / "markers"
    markers.mkdir()
    secrets = root / "secrets"
    secrets.mkdir(mode=0o700)
    secret = secrets / "token"
    secret.write_text(SECRET_VALUE + "\n")
    secret.chmod(0o600)
    federation = testing.Federation(
        root / "fed", list(SPOKES), spoke_profiles=_profiles(markers, secret)
    )
    try:
        await federation.prepare()
        await asyncio.gather(
            *(federation.start_spoked(n, env={"SPOKE_MODE": m}) for n, m in SPOKES.items())
        )
        await federation.start_hub()
        async with federation.client() as client:
            await _all_ready(client)
        yield Fed(federation, markers, root)
    finally:
        await federation.stop()


async def _all_ready(client: hc.Client) -> None:
    async with asyncio.timeout(30):
        while True:
            spokes = await client.spokes()
            if all(s.health == hc.SpokeHealth.READY and s.capacity for s in spokes):
                return
            await asyncio.sleep(0.2)


async def _settled(client: hc.Client, agent: hc.Agent) -> hc.Agent:
    return await client.wait(agent, timeout=30)


async def _states(client: hc.Client, agent_id: str) -> list[str]:
    seen: list[str] = []
    async with asyncio.timeout(10):
        async for event in client.watch(agent_id):
            if event.kind == hc.EventKind.STATE:
                seen.append(event.state.name)
                if event.state.final:
                    break
    return seen


async def test_a_shadow_spoke_never_starts_the_program(fed: Fed) -> None:
    async with fed.fed.client() as client:
        agent = await client.spawn("shadow-1", "marker", "shadowed-task")
        done = await _settled(client, agent)
        assert done.state == hc.AgentState.SHADOWED, done
        assert done.reason == "SHADOW_MODE"
        assert done.mode == hc.RunMode.SHADOW
        assert done.start_time is None
        assert done.exit_code is None
        assert await _states(client, agent.agent_id) == ["QUEUED", "STARTING", "SHADOWED"]
        run = done.shadow_run
        assert run is not None
        assert list(run.argv) == [
            sys.executable,
            "-c",
            WRITE_MARKER,
            f"{fed.markers}/shadowed-task",
        ]
        assert {"API_TOKEN", "MARKER_ENV", "HUBSPOKE_TASK", "HUBSPOKE_AGENT_ID"} <= set(
            run.env_names
        )
        assert SECRET_VALUE not in str(done.raw)
    assert not (fed.markers / "shadowed-task").exists()
    status = await fed.fed.hubctl("status", agent.agent_id)
    assert status.code == 0, status.stderr
    assert "SHADOWED (SHADOW_MODE)" in status.stdout
    assert "would run" in status.stdout
    assert "shadowed-task" in status.stdout
    assert SECRET_VALUE not in status.stdout
    doc = (await fed.fed.hubctl("--json", "status", agent.agent_id)).doc()
    assert doc["state"] == "SHADOWED"
    assert doc["mode"] == "shadow"
    assert "API_TOKEN" in doc["shadow_run"]["env_names"]


async def test_a_list_item_leaves_out_a_long_shadow_run(fed: Fed) -> None:
    long_task = "x" * 3000  # its argv holds the task: over the list item's 2,048 bytes
    async with fed.fed.client() as client:
        short = await _settled(client, await client.spawn("shadow-1", "marker", "short"))
        long = await _settled(client, await client.spawn("shadow-1", "marker", long_task))
        items = {a.agent_id: a for a in (await client.list("shadow-1", 50)).agents}
        assert items[short.agent_id].shadow_run is not None
        assert items[long.agent_id].shadow_run is None
        assert items[long.agent_id].raw.truncated
        whole = await client.get(long.agent_id)
        assert whole.shadow_run is not None
        assert whole.shadow_run.argv[-1].endswith(long_task)


async def test_the_same_profile_runs_on_a_live_spoke(fed: Fed) -> None:
    """The control: the marker profile really does write its file when it runs."""
    async with fed.fed.client() as client:
        done = await _settled(client, await client.spawn("live-1", "marker", "live-task"))
    assert done.state == hc.AgentState.SUCCEEDED, done
    assert done.mode == hc.RunMode.LIVE
    assert done.shadow_run is None
    assert (fed.markers / "live-task").read_text() == "ran"


async def test_a_shadow_profile_on_a_live_spoke_is_shadowed(fed: Fed) -> None:
    async with fed.fed.client() as client:
        done = await _settled(client, await client.spawn("live-1", "cautious", "cautious-task"))
    assert done.state == hc.AgentState.SHADOWED, done
    assert not (fed.markers / "cautious-task").exists()


async def test_a_synthetic_spoke_runs_the_synthetic_agent_instead(fed: Fed) -> None:
    async with fed.fed.client() as client:
        done = await _settled(client, await client.spawn("synth-1", "marker", "synth-task"))
    assert done.state == hc.AgentState.SUCCEEDED, done
    assert done.mode == hc.RunMode.SYNTHETIC
    assert done.profile == "marker"
    assert done.receipt is not None
    assert done.receipt.status == "completed"
    assert not (fed.markers / "synth-task").exists()


async def test_spokes_show_their_mode(fed: Fed) -> None:
    doc = (await fed.fed.hubctl("--json", "spokes")).doc()
    assert {s["name"]: s.get("mode") for s in doc["spokes"]} == SPOKES
    text = await fed.fed.hubctl("spokes")
    assert "MODE" in text.stdout
    assert "live (cautious: shadow)" in text.stdout


async def test_synthetic_all_passes_on_live_and_synthetic_spokes(fed: Fed) -> None:
    run = await fed.fed.hubctl(
        "--json", "synthetic-all", "--spoke", "live-1", "--spoke", "synth-1", timeout_s=90
    )
    doc = run.doc()
    assert run.code == 0, doc
    assert doc["passed"] is True
    assert doc["diverged"] == []
    names = {r["fixture"] for r in doc["results"]}
    assert {"succeeds", "exits-nonzero", "blocked", "needs-verification", "times-out"} <= names
    async with fed.fed.client() as client:  # nothing left waiting on a person
        for r in doc["results"]:
            agent = await client.get(r["agent_id"], r["spoke"])
            assert agent.final, agent


async def test_synthetic_all_names_each_fixture_that_diverged(fed: Fed) -> None:
    fixtures = fed.root / "fixtures.toml"
    fixtures.write_text(
        '[[fixture]]\nname = "fine"\ntask = "duration=0.1"\nexpect = "SUCCEEDED"\n'
        '[[fixture]]\nname = "broken-tool"\nprofile = "broken"\ntask = "go"\n'
        'expect = "SUCCEEDED"\n'
    )
    run = await fed.fed.hubctl("synthetic-all", "--spoke", "live-1", "--fixtures", str(fixtures))
    assert run.code == 1, run.stderr
    assert "diverged: broken-tool@live-1" in run.stdout
    assert "fine@" not in run.stdout.split("diverged:")[1]
    doc = (
        await fed.fed.hubctl(
            "--json", "synthetic-all", "--spoke", "live-1", "--fixtures", str(fixtures)
        )
    ).doc()
    broken = next(r for r in doc["results"] if r["fixture"] == "broken-tool")
    assert broken["ok"] is False
    assert broken["state"] == "FAILED"
    assert broken["reason"] == "START_FAILED"


async def test_synthetic_all_on_a_shadow_spoke_diverges_everywhere(fed: Fed) -> None:
    run = await fed.fed.hubctl(
        "--json", "synthetic-all", "--spoke", "shadow-1", "--only", "succeeds"
    )
    assert run.code == 1
    assert run.doc()["diverged"] == ["succeeds@shadow-1"]


async def test_shadow_summary_is_clean_then_fails_after_a_failure(fed: Fed) -> None:
    clean = await fed.fed.hubctl("--json", "shadow-summary", "--window", "1h", "--spoke", "synth-1")
    doc = clean.doc()
    assert clean.code == 0, doc
    assert doc["clean"] is True
    assert doc["failures"] == []
    assert doc["by_state"].get("SUCCEEDED", 0) >= 1
    assert doc["fixture_agents_left_out"] > 0  # synthetic-all's expected failures
    assert doc["window"]["seconds"] == 3600
    async with fed.fed.client() as client:
        failed = await _settled(client, await client.spawn("synth-1", "synthetic", "exit=3"))
    assert failed.state == hc.AgentState.FAILED
    run = await fed.fed.hubctl("shadow-summary", "--window", "1h", "--spoke", "synth-1")
    assert run.code == 1, run.stdout
    assert failed.agent_id in run.stdout
    assert "FAILED (EXIT_NONZERO)" in run.stdout
    assert "mean duration" in run.stdout
    assert "window" in run.stdout
    every = await fed.fed.hubctl("--json", "shadow-summary")  # every spoke, 24 h
    assert every.code == 1
    assert failed.agent_id in json.dumps(every.doc()["failures"])
    shadows = await fed.fed.hubctl("shadow-summary", "--spoke", "shadow-1", "--window", "1h")
    assert shadows.code == 0, shadows.stdout
    assert "SHADOWED" in shadows.stdout
