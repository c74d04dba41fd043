"""spoked's Prometheus endpoint, scraped over HTTP while a real spoke runs real agents."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.error import URLError

import grpc
import pytest

from hubspoke.gen.federation.v1 import command_pb2, spoke_service_pb2
from hubspoke.spoke.app import SpokeApp
from hubspoke.spoke.config import SpokeConfigError

from .conftest import Peers, SpokeClient, spoke_config

StartSpoke = Callable[..., Awaitable[tuple[SpokeApp, SpokeClient]]]
SPAWN = "/federation.v1.SpokeService/SpawnAgent"


async def test_metrics_count_rpcs_transitions_running_agents_and_the_queue(
    start_spoke: StartSpoke, scrape_metrics: Callable[[int], Awaitable[Any]]
) -> None:
    app, client = await start_spoke(metrics_listen="127.0.0.1:0", metrics_refresh_s=0.1)
    assert app.metrics_port
    done = (await client.spawn("duration=0.1")).agent.agent_id
    await client.wait_state(done, "SUCCEEDED")
    slow = (await client.spawn("sleep 30", profile="shell")).agent.agent_id
    await client.wait_state(slow, "RUNNING")

    for _ in range(100):  # the queue gauges are read every metrics_refresh_s (0.1 s)
        m = await scrape_metrics(app.metrics_port)
        if m.value("hubspoke_queue_agents", state="active") == 1:
            break
        await asyncio.sleep(0.05)
    assert m.value("hubspoke_queue_agents", state="active") == 1
    assert m.value("hubspoke_rpcs_total", method=SPAWN, code="OK", reason="") == 2
    assert m.value("hubspoke_rpc_duration_seconds_count", method=SPAWN) == 2
    assert m.value("hubspoke_agent_transitions_total", state="QUEUED", reason="") == 2
    assert m.value("hubspoke_agent_transitions_total", state="RUNNING", reason="") == 2
    assert m.value("hubspoke_agent_transitions_total", state="SUCCEEDED", reason="") == 1
    assert m.value("hubspoke_agents_running") == 1
    assert m.value("hubspoke_queue_refresh_timestamp_seconds") > 0

    await client.kill(slow)
    m = await scrape_metrics(app.metrics_port)
    assert m.value("hubspoke_agent_transitions_total", state="KILLED", reason="KILL_REQUESTED") == 1
    assert m.value("hubspoke_agents_running") == 0
    # Nothing from a request's contents reaches a label: the task text is not in the page.
    assert "sleep 30" not in m.text
    assert "duration=0.1" not in m.text


async def test_refused_commands_are_counted_by_code_and_reason(
    start_spoke: StartSpoke, scrape_metrics: Callable[[int], Awaitable[Any]]
) -> None:
    app, client = await start_spoke(metrics_listen="127.0.0.1:0")
    env = client.command("get_agent", command_pb2.GetAgentBody(agent="nope"))
    request = spoke_service_pb2.SpokeServiceGetAgentRequest(command=env)
    for _ in range(2):  # unknown agent, then the same signed command again: a replay
        with pytest.raises(grpc.aio.AioRpcError):
            await client.stub.GetAgent(request, timeout=10)
    m = await scrape_metrics(app.metrics_port)
    get = "/federation.v1.SpokeService/GetAgent"
    assert (
        m.value("hubspoke_rpcs_total", method=get, code="NOT_FOUND", reason="AGENT_NOT_FOUND") == 1
    )
    assert (
        m.value("hubspoke_rpcs_total", method=get, code="UNAUTHENTICATED", reason="NONCE_REUSED")
        == 1
    )


async def test_metrics_are_off_unless_configured(start_spoke: StartSpoke) -> None:
    app, client = await start_spoke()
    await client.wait_state((await client.spawn("duration=0.1")).agent.agent_id, "SUCCEEDED")
    assert app.metrics_port is None


@pytest.mark.parametrize("listen", ["9464", "localhost", "example.com:9464", "127.0.0.1:99999"])
def test_a_bad_metrics_address_is_refused_at_start_up(peers: Peers, listen: str) -> None:
    with pytest.raises(SpokeConfigError, match="metrics_listen"):
        spoke_config(peers, "redis://127.0.0.1:1", metrics_listen=listen)


async def test_the_endpoint_closes_with_the_spoke(
    start_spoke: StartSpoke, scrape_metrics: Callable[[int], Awaitable[Any]]
) -> None:
    app, client = await start_spoke(metrics_listen="127.0.0.1:0")
    port = app.metrics_port
    assert port
    await client.wait_state((await client.spawn("duration=0.1")).agent.agent_id, "SUCCEEDED")
    await scrape_metrics(port)
    await app.shutdown()
    with pytest.raises(URLError):
        await asyncio.wait_for(scrape_metrics(port), 5)


async def test_a_spoke_stopped_right_after_it_started_stops_promptly(
    start_spoke: StartSpoke,
) -> None:
    """A cancel that reached the sweeper while redis-py opened its first connection was
    swallowed, and shutdown waited out the whole sweep interval (30 s)."""
    app, _ = await start_spoke(metrics_listen="127.0.0.1:0")
    await asyncio.sleep(0)  # the sweeper's first Redis call is under way
    started = asyncio.get_running_loop().time()
    await app.shutdown()
    assert asyncio.get_running_loop().time() - started < 3
