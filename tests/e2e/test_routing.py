"""Selector routing, drains, command-id claims and dry runs (issue 10), on real hubds, real
spokeds, real Redis and the real hubctl.

Six spokes: a, b and c carry the operator label gpu=yes with synthetic max_concurrency 2, 4
and 8; d has gpu=no; e (gpu=yes) is drained by an operator; f (gpu=yes) has its Redis
stopped (DEGRADED). 100 selector spawns land on a, b and c in proportion to their sizes and
never on d, e or f; the same command id retried through a second hubd on the same hub Redis
goes to the spoke it was claimed for; no match answers FAILED_PRECONDITION naming what is
missing; a dry run lists every spoke with its reason and creates nothing.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from hubspoke import testing
from hubspoke.client import CallError, Client, SpokeHealth
from hubspoke.testing import until

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(180)]

SIZES = {"spoke-a": 2, "spoke-b": 4, "spoke-c": 8, "spoke-d": 2, "spoke-e": 2, "spoke-f": 2}
GPU = {"spoke-d": "no"}
LONG = "duration=120 steps=0"  # outlives the test: every placement stays counted
FAST_HUB = {"HUB_PROBE_INTERVAL_S": "0.3", "HUB_PROBE_TIMEOUT_S": "0.5"}


async def hubctl(fed: testing.Federation, *argv: str) -> tuple[int, Any, str]:
    run = await fed.hubctl(*argv)
    return run.code, run.doc() if "--json" in argv and run.code == 0 else run.stdout, run.stderr


async def health(client: Client) -> dict[str, SpokeHealth]:
    return {s.name: s.health for s in await client.spokes()}


def _label(files_text: str, name: str) -> str:
    marker = f'[[spokes]]\nname = "{name}"\n'
    assert marker in files_text, files_text
    gpu = GPU.get(name, "yes")
    return files_text.replace(marker, f'{marker}labels = {{ gpu = "{gpu}", zone = "a" }}\n')


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[testing.Federation]:
    root: Path = tmp_path_factory.mktemp("routing")
    federation = testing.Federation(root, list(SIZES), hub_env=FAST_HUB)
    try:
        files = await federation.prepare()
        text = files.hub_config.read_text()
        for name in SIZES:
            text = _label(text, name)
        files.hub_config.write_text(text)
        for name, size in SIZES.items():
            config = federation.config_of(name)
            config.write_text(
                config.read_text().replace(
                    "[profiles.synthetic]\n", f"[profiles.synthetic]\nmax_concurrency = {size}\n"
                )
            )
        await asyncio.gather(
            *(
                federation.start_spoked(n, env={"SPOKE_CONCURRENCY": str(s)})
                for n, s in SIZES.items()
            )
        )
        await federation.start_hub()
        async with federation.client() as client:
            await until(lambda: _all_ready(client), 20, "every spoke READY with a signed status")
        yield federation
    finally:
        await federation.stop()


async def _all_ready(client: Client) -> bool:
    spokes = await client.spokes()
    return all(s.health == SpokeHealth.READY and s.capacity is not None for s in spokes)


async def test_drain_and_degraded_are_skipped_and_spawns_spread_by_relative_size(
    fed: testing.Federation,
) -> None:
    code, doc, err = await hubctl(fed, "--json", "spoke", "drain", "spoke-e")
    assert code == 0, err
    assert doc["draining"] is True
    assert doc["health"] == "DRAINING"
    code, doc, err = await hubctl(fed, "--json", "spokes")
    assert code == 0, err
    shown = {s["name"]: s for s in doc["spokes"]}
    assert shown["spoke-e"]["draining"] is True
    assert shown["spoke-e"]["health"] == "DRAINING"
    assert shown["spoke-a"]["draining"] is False
    assert shown["spoke-a"]["labels"]["gpu"] == "yes"

    await fed.redis["spoke-f"].stop()
    async with fed.client() as client:
        await until(lambda: _is(client, "spoke-f", SpokeHealth.DEGRADED), 15, "spoke-f DEGRADED")
        # A spawn that names the drained spoke is refused; the spoke still answers reads.
        with pytest.raises(CallError) as refused:
            await client.spawn("spoke-e", "synthetic", "duration=1")
        assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert refused.value.reason == "SPOKE_DRAINING"
        await client.list("spoke-e")  # reads still reach a drained spoke

        placed = Counter[str]()
        for _ in range(100):
            agent = await client.spawn("", "synthetic", LONG, selector={"gpu": "yes"})
            placed[agent.spoke] += 1
        # Each placement is a decision in the hub's audit log (issue 11), appended without
        # holding up the spawn's answer.
        last = agent

        async def routed() -> bool:
            page = await client.audit_log(agent=last.agent_id)
            decisions = [(r.action, r.spoke) for r in page.records if r.kind == "decision"]
            return decisions == [("route", last.spoke)]

        await until(routed, 10, "the route decision in the audit log")
    assert set(placed) <= {"spoke-a", "spoke-b", "spoke-c"}, placed
    for spoke, share in (("spoke-a", 2 / 14), ("spoke-b", 4 / 14), ("spoke-c", 8 / 14)):
        assert abs(placed[spoke] / 100 - share) <= 0.10, (spoke, placed)

    code, doc, err = await hubctl(fed, "--json", "spoke", "undrain", "spoke-e")
    assert code == 0, err
    assert doc["draining"] is False
    code, doc, err = await hubctl(fed, "--json", "spokes")
    assert {s["name"]: s for s in doc["spokes"]}["spoke-e"]["draining"] is False


async def _is(client: Client, name: str, state: SpokeHealth) -> bool:
    return (await health(client))[name] == state


async def test_a_retry_through_a_second_hub_goes_to_the_claimed_spoke(
    fed: testing.Federation,
) -> None:
    second = await fed.start_hub("hub-2")
    async with fed.client() as first_hub, fed.client(hub=second.address) as second_hub:
        await until(lambda: _is(second_hub, "spoke-a", SpokeHealth.READY), 15, "hub-2 probed")
        agent = await first_hub.spawn(
            "", "synthetic", LONG, selector={"gpu": "yes"}, command_id="claim-once"
        )
        # Drain the chosen spoke (every hub on the Redis sees it): a fresh placement would
        # go elsewhere, the retry of a claimed command id must not.
        await first_hub.drain_spoke(agent.spoke)
        try:
            again = await second_hub.spawn(
                "", "synthetic", LONG, selector={"gpu": "yes"}, command_id="claim-once"
            )
            fresh = await second_hub.spawn("", "synthetic", LONG, selector={"gpu": "yes"})
            with pytest.raises(CallError) as reused:  # the selector is part of the meaning
                await second_hub.spawn(
                    "", "synthetic", LONG, selector={"zone": "a"}, command_id="claim-once"
                )
        finally:
            await first_hub.undrain_spoke(agent.spoke)
    assert (again.spoke, again.agent_id) == (agent.spoke, "claim-once")
    assert fresh.spoke != agent.spoke
    assert reused.value.reason == "COMMAND_ID_REUSED"


async def test_no_matching_spoke_names_what_is_missing(fed: testing.Federation) -> None:
    code, _, err = await hubctl(fed, "spawn", "--selector", "gpu=maybe", "--", "duration=1")
    assert code == 1, err
    assert "no spoke has labels gpu=maybe [NO_MATCHING_SPOKE]" in err, err
    async with fed.client() as client:
        with pytest.raises(CallError) as missing:
            await client.spawn("", "nope", "x", selector={"gpu": "yes"})
    assert missing.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert missing.value.reason == "NO_MATCHING_SPOKE"
    assert "offers profile nope" in missing.value.message


async def test_dry_run_explains_and_creates_nothing(fed: testing.Federation) -> None:
    code, doc, err = await hubctl(
        fed, "--json", "spawn", "--selector", "gpu=yes", "--dry-run", "--id", "rehearsed",
        "--", "duration=1",
    )  # fmt: skip
    assert code == 0, err
    reasons = {c["spoke"]: c for c in doc["candidates"]}
    assert set(reasons) == set(SIZES)
    assert doc["spoke"] in {"spoke-a", "spoke-b", "spoke-c", "spoke-e"}
    assert reasons[doc["spoke"]]["chosen"] is True
    assert reasons["spoke-d"]["reason"] == "label gpu=no, not yes"
    assert reasons["spoke-f"]["reason"].startswith("degraded")
    assert reasons["spoke-c"]["capacity"] == 8
    assert int(reasons["spoke-c"]["load"]) >= 8
    code, text, err = await hubctl(
        fed, "spawn", "--spoke", "spoke-a", "--dry-run", "--", "duration=1"
    )
    assert code == 0, err
    assert "dry run: spoke-a" in text, text
    async with fed.client() as client:
        for spoke in ("spoke-a", "spoke-b", "spoke-c", "spoke-e"):  # f's Redis is down
            with pytest.raises(CallError) as nothing:
                await client.get("rehearsed", spoke)
            assert nothing.value.code == grpc.StatusCode.NOT_FOUND
        listed = await client.list()
        assert "rehearsed" not in {a.agent_id for a in listed.agents}
        real = await client.spawn(
            "", "synthetic", "duration=0.1", selector={"gpu": "yes"}, command_id="rehearsed"
        )
    assert real.agent_id == "rehearsed"


async def test_a_dedupe_key_keeps_selector_spawns_on_one_spoke(fed: testing.Federation) -> None:
    """The hub claims an owner's dedupe key for the spoke it placed it on (hub/dedupe.py):
    a second selector spawn with the key goes there and gets the agent that holds it."""
    async with fed.client() as client:
        first = await client.spawn(
            "", "synthetic", LONG, selector={"gpu": "yes"}, dedupe_key="nightly-build"
        )
        # Drained, its spoke would get no new placement: the key still leads there.
        await client.drain_spoke(first.spoke)
        try:
            second = await client.spawn(
                "", "synthetic", LONG, selector={"gpu": "yes"}, dedupe_key="nightly-build"
            )
        finally:
            await client.undrain_spoke(first.spoke)
    assert (second.spoke, second.agent_id) == (first.spoke, first.agent_id)
    assert second.raw.deduplicated
