"""Spoke health, circuit breakers and fan-out deadlines (issue 10), on real hubd and spoked
processes, real Redis and the real hubctl: a spoke whose Redis stops shows DEGRADED (and its
grpc.health NOT_SERVING); a SIGSTOPped spoke opens its circuit, after which calls to it
answer at once with SPOKE_CIRCUIT_OPEN, and SIGCONT closes it after a good probe; a fan-out
over 8 spokes with one stopped answers within its deadline and names the stopped one."""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hubspoke import testing
from hubspoke.client import AgentState, CallError, CircuitState, Client, SpokeHealth
from hubspoke.testing import until

PROBE_S = 0.3
CALL_TIMEOUT_S = 10.0
FAST = {
    "HUB_PROBE_INTERVAL_S": str(PROBE_S),
    "HUB_PROBE_TIMEOUT_S": "0.5",
    "HUB_MISSED_PROBES_DOWN": "2",
    "HUB_CIRCUIT_FAILURES": "3",
    "HUB_CIRCUIT_OPEN_S": "1",
    "HUB_SPOKE_CALL_TIMEOUT_S": str(CALL_TIMEOUT_S),
}

pytestmark = pytest.mark.timeout(180)


async def hubctl(fed: testing.Federation, *argv: str) -> tuple[int, Any, str]:
    """hubctl as the operator: exit code, stdout (parsed with --json) and stderr."""
    run = await fed.hubctl(*argv)
    return run.code, run.doc() if "--json" in argv else run.stdout, run.stderr


async def spoke_state(client: Client, name: str) -> SpokeHealth:
    return {s.name: s for s in await client.spokes()}[name].health


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[testing.Federation]:
    """Two spokes, each on its own private Redis, so one's Redis can be stopped."""
    federation = testing.Federation(tmp_path / "fed", ["spoke-1", "spoke-2"], hub_env=FAST)
    try:
        await federation.start()
        yield federation
    finally:
        await federation.stop()


async def test_a_spoke_whose_redis_stops_shows_degraded_and_not_serving(
    own_redis: testing.Federation,
) -> None:
    fed = own_redis
    async with fed.client() as client:
        await until(lambda: _is(client, "spoke-1", SpokeHealth.READY), 10, "spoke-1 READY at first")
        code, doc, err = await hubctl(fed, "--json", "spokes")
        assert code == 0, err
        first = {s["name"]: s for s in doc["spokes"]}["spoke-1"]
        assert first["status"]["redis_ok"] is True
        assert first["last_seen_time"]
        assert first["circuit"] == "CLOSED"

        await fed.redis["spoke-1"].stop()
        stopped = time.monotonic()
        # within two heartbeats (probe intervals) of the spoke noticing (its 1 s check)
        await until(
            lambda: _is(client, "spoke-1", SpokeHealth.DEGRADED),
            1.0 + 2 * PROBE_S + 3.0,  # the spoke's check, two probes, and CI slack
            "spoke-1 DEGRADED",
        )
        took = time.monotonic() - stopped
        code, doc, err = await hubctl(fed, "--json", "spokes")
        assert code == 0, err
        by_name = {s["name"]: s for s in doc["spokes"]}
        assert by_name["spoke-1"]["health"] == "DEGRADED", by_name["spoke-1"]
        assert "redis down" in by_name["spoke-1"]["health_detail"]
        assert by_name["spoke-1"]["status"].get("redis_ok", False) is False
        assert by_name["spoke-2"]["health"] == "READY"
        code, text, err = await hubctl(fed, "spokes")
        assert code == 0, err
        assert "DEGRADED (redis down)" in text, text

    # the spoke's own grpc.health says so too
    channel = grpc.aio.insecure_channel(fed.address("spoke-1"))
    try:
        resp = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
        assert resp.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        await channel.close(None)
    print(f"DEGRADED {took:.2f} s after the spoke's Redis stopped")

    await fed.redis["spoke-1"].start()
    async with fed.client() as client:
        await until(lambda: _is(client, "spoke-1", SpokeHealth.READY), 15, "spoke-1 READY again")


async def _is(client: Client, name: str, want: SpokeHealth) -> bool:
    return await spoke_state(client, name) == want


@pytest.fixture
async def eight(tmp_path: Path, redis_url: str) -> AsyncIterator[testing.Federation]:
    """Eight spokes (on one shared Redis: each has its own keys)."""
    names = [f"spoke-{i}" for i in range(1, 9)]
    federation = testing.Federation(
        tmp_path / "fed",
        names,
        redis_url=redis_url,
        hub_env={**FAST, "HUB_FANOUT_TIMEOUT_S": "2"},
    )
    try:
        await federation.start()
        yield federation
    finally:
        for ds in federation.spokeds.values():
            for d in ds:
                if d.running:
                    d.signal(signal.SIGCONT)
        await federation.stop()


async def test_a_stopped_spoke_opens_its_circuit_and_calls_to_it_answer_at_once(
    eight: testing.Federation,
) -> None:
    fed = eight
    hung = fed.spoked("spoke-3")
    async with fed.client(timeout_s=30) as client:
        await until(lambda: _all_ready(client, 8), 20, "every spoke READY")
        hung.signal(signal.SIGSTOP)
        try:
            # The circuit opens within the configured failures (3 probes of 0.5 s).
            await until(
                lambda: _circuit(client, "spoke-3", CircuitState.OPEN, CircuitState.HALF_OPEN),
                20,
                "spoke-3's circuit open",
            )
            answers: list[float] = []
            for _ in range(3):
                started = time.monotonic()
                # The hub does not call a spoke whose circuit is open: it holds the spawn in
                # its outbox at once (issue 11) and answers PENDING_DELIVERY itself.
                held = await client.spawn("spoke-3", "synthetic", "duration=0")
                took = time.monotonic() - started
                answers.append(took)
                assert held.state == AgentState.PENDING_DELIVERY, held
                assert held.reason.startswith("SPOKE_UNREACHABLE: circuit_open"), held.reason
                assert took < 1.0, f"spawn to a stopped spoke took {took:.2f} s"
                started = time.monotonic()
                with pytest.raises(CallError) as err:
                    await client.list("spoke-3")
                assert err.value.reason == "SPOKE_CIRCUIT_OPEN"
                answers.append(time.monotonic() - started)
                assert answers[-1] < 1.0, f"list of a stopped spoke took {answers[-1]:.2f} s"
            print(
                f"circuit open: spawns and lists answered in at most {max(answers) * 1000:.0f} ms"
            )

            # Fan-out over 8 with one stopped: 7 pages, the eighth named, within the deadline.
            started = time.monotonic()
            listed = await client.list()
            took = time.monotonic() - started
            assert sorted(listed.pages) == sorted(n for n in fed.spoke_names if n != "spoke-3")
            assert list(listed.unreachable_spokes) == ["spoke-3"]
            assert took < 2.0 + 1.0, f"fan-out took {took:.2f} s"
            code, doc, err_text = await hubctl(fed, "--json", "list")
            assert code == 0, err_text
            assert doc["unreachable_spokes"] == ["spoke-3"]
            assert doc["unreachable_reasons"] == {"spoke-3": "circuit_open"}
        finally:
            hung.signal(signal.SIGCONT)
        # A good probe after the open time closes it; calls go through again.
        await until(
            lambda: _circuit(client, "spoke-3", CircuitState.CLOSED), 20, "spoke-3's circuit closed"
        )
        agent = await client.spawn("spoke-3", "synthetic", "duration=0")
        assert agent.spoke == "spoke-3"


async def test_fan_out_names_a_hung_spoke_within_its_deadline_before_its_circuit_opens(
    eight: testing.Federation,
) -> None:
    """Before any circuit opens, the one fan-out deadline bounds the wait, and the hub's
    signed account names the stopped spoke and why (deadline)."""
    fed = eight
    hung = fed.spoked("spoke-5")
    async with fed.client(timeout_s=30) as client:
        await until(lambda: _all_ready(client, 8), 20, "every spoke READY")
        hung.signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            listed = await client.list()
            took = time.monotonic() - started
        finally:
            hung.signal(signal.SIGCONT)
        assert len(listed.pages) == 7
        assert list(listed.unreachable_spokes) == ["spoke-5"]
        assert took < 2.0 + 1.5, f"fan-out took {took:.2f} s (deadline 2 s)"
        reasons = dict(listed.unreachable_reasons)
        assert reasons.get("spoke-5") in {"deadline", "circuit_open", "disconnected"}, reasons


async def test_queue_stats_without_a_spoke_gives_every_spoke_and_the_totals(
    eight: testing.Federation,
) -> None:
    fed = eight
    async with fed.client(timeout_s=30) as client:
        await until(lambda: _all_ready(client, 8), 20, "every spoke READY")
        await client.spawn("spoke-2", "synthetic", "duration=30")
        await client.spawn("spoke-7", "synthetic", "duration=30")
        await client.pause("spoke-4")
        hung = fed.spoked("spoke-6")
        hung.signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            code, doc, err = await hubctl(fed, "--json", "queue", "stats")
            took = time.monotonic() - started
            code_text, text, _ = await hubctl(fed, "queue", "stats")
        finally:
            hung.signal(signal.SIGCONT)
        assert code == 0, err
        assert sorted(doc["spokes"]) == sorted(n for n in fed.spoke_names if n != "spoke-6")
        assert doc["unreachable_spokes"] == ["spoke-6"]
        assert doc["unreachable_reasons"]["spoke-6"] in {"deadline", "circuit_open", "disconnected"}
        per = doc["spokes"]
        # proto-JSON: int64 counts are strings
        counted = sum(
            int(per[n]["active"]) + int(per[n]["waiting"]) for n in ("spoke-2", "spoke-7")
        )
        assert counted == 2
        assert doc["totals"]["paused"] == 1
        assert doc["totals"]["active"] + doc["totals"]["waiting"] == 2
        assert took < 30, took  # one fan-out deadline (2 s) plus starting hubctl
        assert code_text == 0
        assert "TOTAL" in text
        assert "spoke-6" not in text.split("TOTAL")[0]


async def _all_ready(client: Client, n: int) -> bool:
    spokes = await client.spokes()
    return len(spokes) == n and all(s.health == SpokeHealth.READY for s in spokes)


async def _circuit(client: Client, name: str, *want: CircuitState) -> bool:
    spoke = {s.name: s for s in await client.spokes()}[name]
    return spoke.circuit in want
