"""Issue 14's acceptance, in a real browser: open ``hubctl ui``'s URL, see both dev spokes
READY, spawn a synthetic agent and watch its progress reach 100 % live on its page, kill
another from its page and see KILLED; a request without the token is refused.

``HUBSPOKE_UI_SCREENSHOTS=docs/img`` makes the test also save the README's screenshots.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Any

import pytest

from hubspoke import testing
from hubspoke.client import Agent, AgentState

from .conftest import Console, stop_console

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

SHOTS = os.environ.get("HUBSPOKE_UI_SCREENSHOTS", "")
WAIT_MS = 30_000

# Records every text #progress-text shows, from before the page's own script runs.
_WATCH_PROGRESS = """
window.__progress = [];
document.addEventListener("DOMContentLoaded", () => {
  const el = document.getElementById("progress-text");
  if (!el) return;
  new MutationObserver(() => window.__progress.push(el.textContent))
    .observe(el, {childList: true, characterData: true, subtree: true});
});
"""


async def _shot(page: Any, name: str) -> None:
    if SHOTS:
        await asyncio.to_thread(Path(SHOTS).mkdir, parents=True, exist_ok=True)
        await page.screenshot(path=str(Path(SHOTS) / f"console-{name}.png"), full_page=True)


async def _spawn_from_page(page: Any, spoke: str, task: str) -> str:
    """Fill the spawn form; returns the new agent's id from the page it lands on."""
    await page.get_by_role("link", name="Spawn", exact=True).click()
    await page.select_option("select[name=spoke]", spoke)
    await page.fill("input[name=task]", task)
    await page.get_by_role("button", name="Spawn").click()
    await page.wait_for_url(re.compile(rf"/agents/{spoke}/[^/?]+$"))
    return str(page.url.rsplit("/", 1)[1])


async def _get(fed: testing.Federation, agent_id: str) -> Agent:
    async with fed.client() as client:
        agent = await client.get(agent_id, "spoke-1")
    if agent.final:
        return agent
    async with fed.client() as client:
        return await client.wait(agent, timeout=30)


async def test_spawn_watch_kill_through_the_page(
    console: Console, federation: testing.Federation, browser: Any
) -> None:
    from playwright.async_api import expect

    context = await browser.new_context(viewport={"width": 1400, "height": 720})
    await context.add_init_script(_WATCH_PROGRESS)
    page = await context.new_page()
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)

    # The URL hubctl printed: the token becomes a cookie, and the address bar loses it.
    await page.goto(console.url)
    assert "token" not in page.url
    for spoke in ("spoke-1", "spoke-2"):
        health = page.locator(f'tr[data-spoke="{spoke}"] .health')
        await expect(health).to_have_text("READY", timeout=WAIT_MS)

    # Spawn through the form; the agent page follows it live (no reload) to 100 %.
    agent_id = await _spawn_from_page(page, "spoke-1", "duration=4 steps=4 output=200")
    await page.evaluate("window.__sameDocument = true")
    await expect(page.locator("#progress-text")).to_have_text("100%", timeout=WAIT_MS)
    await expect(page.locator("#state-badge .badge")).to_have_text("SUCCEEDED", timeout=WAIT_MS)
    assert await page.evaluate("window.__sameDocument === true"), "the page was reloaded"
    seen = await page.evaluate("window.__progress")
    assert "25%" in seen, seen
    assert seen.index("25%") < seen.index("100%"), seen
    history = page.locator("#history tbody tr")
    await expect(history.last).to_contain_text("SUCCEEDED")
    await expect(page.locator("#history")).to_contain_text("RUNNING")
    await expect(page.locator("#output")).to_contain_text("PROGRESS 100")
    await expect(page.locator("#receipt")).to_contain_text("synthetic")
    await _shot(page, "agent")

    # Kill another from its page: the confirmation decides.
    victim = await _spawn_from_page(page, "spoke-2", "duration=120 steps=0")
    await expect(page.locator("#state-badge .badge")).to_have_text("RUNNING", timeout=WAIT_MS)
    dialogs: asyncio.Queue[str] = asyncio.Queue()

    async def dismiss(dialog: Any) -> None:
        await dialog.dismiss()
        dialogs.put_nowait(dialog.message)

    page.once("dialog", dismiss)
    await page.get_by_role("button", name="Kill").click()
    assert victim in await asyncio.wait_for(dialogs.get(), WAIT_MS / 1000)
    assert not [u for u in posts if u.endswith("/kill")], "dismissing still killed"

    async def accept(dialog: Any) -> None:
        await dialog.accept()

    page.once("dialog", accept)
    await page.get_by_role("button", name="Kill").click()
    await expect(page.locator("#state-badge .badge")).to_have_text("KILLED", timeout=WAIT_MS)
    assert len([u for u in posts if u.endswith(f"/agents/spoke-2/{victim}/kill")]) == 1
    async with federation.client() as client:
        assert (await client.get(victim, "spoke-2")).state == AgentState.KILLED
        assert (await client.get(agent_id, "spoke-1")).state == AgentState.SUCCEEDED
        failed = await client.spawn("spoke-1", "synthetic", "duration=0.2 fail stderr=boom")
        blocked = await client.spawn("spoke-2", "synthetic", "duration=0.2 receipt=blocked")
        await client.wait(failed, timeout=30)
        await client.wait(blocked, timeout=30)

    # The federation page and the agents list show both, failures at a glance.
    await page.get_by_role("link", name="Federation").click()
    await expect(page.locator("#spokes")).to_contain_text("spoke-2")
    await expect(page.get_by_role("link", name=victim).first).to_be_visible()
    attention = page.locator("#attention")
    await expect(attention.get_by_role("link", name=failed.agent_id)).to_be_visible()
    await expect(attention.get_by_role("link", name=blocked.agent_id)).to_be_visible()
    await expect(attention).not_to_contain_text(agent_id)  # succeeded: nothing to see
    await _shot(page, "federation")
    await page.get_by_role("link", name="Agents", exact=True).click()
    await expect(page.get_by_role("link", name=failed.agent_id)).to_be_visible()
    await _shot(page, "agents")
    await page.locator('label.check:has-text("KILLED") input').check()
    await page.get_by_role("button", name="Filter").click()
    await expect(page.get_by_role("link", name=victim)).to_be_visible()
    await expect(page.get_by_role("link", name=agent_id)).to_have_count(0)

    # Without the token (a fresh browser has no cookie) everything is refused.
    stranger = await browser.new_context()
    for path in ("/", "/agents", f"/agents/spoke-1/{agent_id}/events", "/static/console.css"):
        response = await stranger.request.get(console.base + path)
        assert response.status == 403, path
    response = await stranger.request.post(console.base + f"/agents/spoke-1/{agent_id}/kill")
    assert response.status == 403
    blank = await stranger.new_page()
    refused = await blank.goto(console.base + "/")
    assert refused is not None
    assert refused.status == 403
    await expect(blank.locator("body")).to_contain_text("token")
    await stranger.close()
    await context.close()

    assert await stop_console(console) == 0  # Ctrl-C stops it cleanly


async def test_queue_page_pauses_resumes_and_shows_escaped_text(
    console: Console, federation: testing.Federation, browser: Any
) -> None:
    from playwright.async_api import expect

    hostile = (
        "<script>window.__pwned=1</script><img src=x onerror=window.__pwned=2> duration=0.1 fail"
    )
    async with federation.client() as client:
        agent = await client.spawn("spoke-1", "synthetic", hostile, labels={"<b>k": "<i>v"})
        await client.wait(agent, timeout=30)

    context = await browser.new_context(viewport={"width": 1400, "height": 720})
    page = await context.new_page()
    await page.goto(console.url)
    page.on("dialog", lambda dialog: dialog.accept())

    # Agent text arrives as text: it shows literally and nothing runs.
    await page.goto(f"{console.base}/agents/spoke-1/{agent.agent_id}")
    await expect(page.locator("pre.task-text")).to_have_text(hostile)
    await expect(page.locator("dl.facts")).to_contain_text("<b>k=<i>v")
    assert await page.evaluate("window.__pwned === undefined")

    # spoke-1's queue page: the failed agent is a dead letter; replay it from there.
    await page.goto(console.base + "/")
    await page.get_by_role("link", name="spoke-1", exact=True).first.click()
    await expect(page.locator("#queue-state")).to_have_text("running")
    row = page.locator("#dead-letters-table tr", has_text=agent.agent_id)
    await expect(row).to_have_count(1)
    first_end = (await _get(federation, agent.agent_id)).end_time
    replayed = "/dead-letters/" + agent.agent_id + "/replay"
    async with page.expect_response(lambda r: r.url.endswith(replayed)) as answer:
        await row.get_by_role("button", name="Replay").click()
    assert (await answer.value).ok
    again = await _get(federation, agent.agent_id)  # waits for the second run to end
    assert again.end_time != first_end
    assert again.state == AgentState.FAILED  # it ran again, and failed again

    # Pause and resume the queue, each after a confirmation.
    await page.get_by_role("button", name="Pause queue").click()
    await expect(page.locator("#queue-state")).to_have_text("PAUSED", timeout=WAIT_MS)
    async with federation.client() as client:
        assert (await client.queue_stats("spoke-1")).paused
    await _shot(page, "queue")
    await page.get_by_role("button", name="Resume queue").click()
    await expect(page.locator("#queue-state")).to_have_text("running", timeout=WAIT_MS)
    async with federation.client() as client:
        assert not (await client.queue_stats("spoke-1")).paused
    await context.close()
