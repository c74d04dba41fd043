"""``hubctl ui`` over plain HTTP against a real federation: paging across spokes, the event
stream the agent page follows, and how refusals come back to htmx and to plain forms."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import AsyncIterator

import pytest

from hubspoke import testing

from .conftest import Console

aiohttp = pytest.importorskip("aiohttp")
ui = pytest.importorskip("hubspoke.hub.ui")

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def http(console: Console) -> AsyncIterator[aiohttp.ClientSession]:
    headers = {"Cookie": console.cookie}
    async with aiohttp.ClientSession(
        console.base, headers=headers, cookie_jar=aiohttp.DummyCookieJar()
    ) as session:
        yield session


def _agent_ids(page: str) -> list[str]:
    return re.findall(r'href="/agents/spoke-\d/([^"/]+)"', page)


def _csrf(console: Console) -> str:
    return ui.Guard(console.token, console.port).csrf


async def test_agents_page_by_page(console: Console, federation: testing.Federation, http) -> None:
    async with federation.client() as client:
        spawned = [
            (await client.spawn("spoke-1", "synthetic", f"n={i}", delay_s=3600)).agent_id
            for i in range(30)
        ]
        other = await client.spawn("spoke-2", "synthetic", "n=x", delay_s=3600)

    async with http.get("/agents", params={"spoke": "spoke-1", "size": "25"}) as resp:
        assert resp.status == 200
        first = await resp.text()
    cursor = re.search(r'id="next-page" href="/agents\?([^"]+)"', first)
    assert cursor is not None
    query = cursor.group(1).replace("&amp;", "&")
    async with http.get("/agents?" + query) as resp:
        second = await resp.text()
    assert "next-page" not in second
    page_one, page_two = _agent_ids(first), _agent_ids(second)
    assert len(page_one) == 25
    assert len(page_two) == 5
    assert sorted(page_one + page_two) == sorted(spawned)
    assert other.agent_id not in first + second

    # Every spoke at once; the state filter is the spokes' own.
    async with http.get("/agents", params={"state": "QUEUED", "size": "100"}) as resp:
        both = _agent_ids(await resp.text())
    assert sorted(both) == sorted([*spawned, other.agent_id])
    async with http.get("/agents", params={"state": "RUNNING"}) as resp:
        assert _agent_ids(await resp.text()) == []
    async with http.get("/agents", params={"cursor": "not-ours"}) as resp:
        assert resp.status == 400


async def test_the_event_stream_replays_and_resumes(
    console: Console, federation: testing.Federation, http
) -> None:
    async with federation.client() as client:
        agent = await client.spawn("spoke-1", "synthetic", "duration=0.5 steps=2")
        await client.wait(agent, timeout=30)
    events_url = f"/agents/spoke-1/{agent.agent_id}/events"

    async def read(headers: dict[str, str] | None = None) -> list[tuple[str, str, dict]]:
        async with http.get(events_url, headers=headers or {}) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            body = await resp.text()  # the agent has ended: the stream ends with "end"
        out = []
        for block in filter(None, body.split("\n\n")):
            fields = dict(
                line.split(": ", 1) for line in block.splitlines() if not line.startswith(":")
            )
            if fields:
                out.append((fields["event"], fields.get("id", ""), json.loads(fields["data"])))
        return out

    events = await read()
    assert events[-1][0] == "end"
    states = [doc["state"] for name, _, doc in events if name == "state"]
    assert states == ["QUEUED", "STARTING", "RUNNING", "SUCCEEDED"]
    assert [doc["percent"] for name, _, doc in events if name == "progress"] == [50, 100]
    assert any(name == "stdout" and "PROGRESS 100" in doc["data"] for name, _, doc in events)
    assert [doc["final"] for name, _, doc in events if name == "state"][-1] is True

    # A browser that reconnects sends Last-Event-ID and gets only what came after it.
    running = next(i for name, i, doc in events if doc.get("state") == "RUNNING")
    resumed = await read({"Last-Event-ID": running})
    assert all(int(i) > int(running) for _, i, _ in resumed if i)
    assert [doc["state"] for name, _, doc in resumed if name == "state"] == ["SUCCEEDED"]

    async with http.get("/agents/spoke-1/nobody-here/events") as resp:
        text = await resp.text()
    assert "event: failure" in text
    assert "NOT_FOUND" in text
    assert text.rstrip().endswith("event: end\ndata: {}")


async def test_refusals_reach_htmx_and_plain_forms(
    console: Console, federation: testing.Federation, http
) -> None:
    csrf = {"csrf": _csrf(console)}
    async with federation.client() as client:
        done = await client.spawn("spoke-1", "synthetic", "duration=0.1")
        await client.wait(done, timeout=30)
    kill = f"/agents/spoke-1/{done.agent_id}/kill"

    # htmx: the page stays, the message goes into #flash (escaped).
    async with http.post(kill, data=csrf, headers={"HX-Request": "true"}) as resp:
        assert resp.status == 200
        assert resp.headers["HX-Retarget"] == "#flash"
        assert "AGENT_NOT_RUNNING" in await resp.text()
    # A plain form: an error page with a fitting status.
    async with http.post(kill, data=csrf) as resp:
        assert resp.status == 409

    spawn = {**csrf, "spoke": "spoke-1", "profile": "<no-such>", "task": "duration=0.1"}
    async with http.post("/agents", data=spawn, headers={"HX-Request": "true"}) as resp:
        text = await resp.text()
        assert resp.headers["HX-Retarget"] == "#flash"
        assert "&lt;no-such&gt;" in text or "no-such" not in text
        assert "<no-such>" not in text
    async with http.post("/agents", data={**csrf, "spoke": "spoke-1", "task": ""}) as resp:
        assert resp.status == 400
        assert "the task is empty" in await resp.text()

    # Success: htmx is told where to go; a plain form gets a 303 to the same place.
    good = {**csrf, "spoke": "spoke-2", "task": "duration=0.1", "labels": "a=1"}
    async with http.post("/agents", data=good, headers={"HX-Request": "true"}) as resp:
        location = resp.headers["HX-Redirect"]
    assert re.fullmatch(r"/agents/spoke-2/[^/]+", location)
    async with http.post("/agents", data=good, allow_redirects=False) as resp:
        assert resp.status == 303
        assert resp.headers["Location"].startswith("/agents/spoke-2/")
    async with federation.client() as client:
        spawned = await client.get(location.rsplit("/", 1)[1], "spoke-2")
    assert dict(spawned.labels) == {"a": "1"}
    assert spawned.task == "duration=0.1"

    async with http.get("/agents/spoke-1/nobody-here") as resp:
        assert resp.status == 404
    async with http.get("/spokes/no-such-spoke") as resp:
        assert resp.status == 404


async def test_a_taken_port_or_a_bad_one_is_a_usage_error(
    console: Console, federation: testing.Federation
) -> None:
    for port, message in ((str(console.port), "in use"), ("70000", "--port must be 0-65535")):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "hubspoke.hub.cli",
            "--config",
            str(federation.files.hubctl_config),
            "ui",
            "--no-browser",
            "--port",
            port,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 2, err
        assert out == b""
        assert message in err.decode()
