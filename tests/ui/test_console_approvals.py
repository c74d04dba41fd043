"""The console's approval buttons (``hubctl ui`` as the operator, over plain HTTP, against a
real hubd and spoked): an agent alice spawned waits for the operator's approval; its page
shows the approvals and both forms; Approve releases it, Reject ends another REJECTED."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hubspoke import client as hc
from hubspoke import keys, testing
from hubspoke.trust import TrustStore

from .conftest import Console

aiohttp = pytest.importorskip("aiohttp")
ui = pytest.importorskip("hubspoke.hub.ui")

pytestmark = pytest.mark.timeout(120)

ALICE_NEEDS_THE_OPERATOR = """
[[rule]]
name = "alice-needs-the-operator"
principals = ["alice"]
verbs = ["spawn", "read"]
scope = "own"
spokes = ["*"]
approvals = 1
approvers = ["operator"]
"""


@pytest.fixture
async def federation(tmp_path: Path, redis_url: str) -> AsyncIterator[testing.Federation]:
    """One spoke; alice's spawns wait for the operator's approval (overrides conftest's)."""
    fed = testing.Federation(tmp_path / "fed", ["spoke-1"], redis_url=redis_url)
    try:
        files = await fed.prepare()
        alice = keys.generate("alice")
        keys.write_keypair(alice, files.keys_dir)
        with files.trust_file.open("a") as fh:
            fh.write(
                f'\n[[peer]]\nname = "alice"\nrole = "client"\n'
                f'keys = ["{keys.encode_public(alice.public)}"]\n'
            )
        with (files.root / "policy.toml").open("a") as fh:
            fh.write(ALICE_NEEDS_THE_OPERATOR)
        await fed.start()
        yield fed
    finally:
        await fed.stop()


def _alice(fed: testing.Federation) -> hc.Client:
    key = keys.load_private(fed.files.keys_dir / "alice.key", "alice")
    trust = TrustStore.from_file(fed.files.trust_file)
    return hc.Client(fed.hub_address, "alice", key, trust, "hub", 30)


async def test_approve_and_reject_from_the_agent_page(
    console: Console, federation: testing.Federation
) -> None:
    csrf = ui.Guard(console.token, console.port).csrf
    async with _alice(federation) as alice:
        kept = await alice.spawn("spoke-1", "synthetic", "duration=0")
        dropped = await alice.spawn("spoke-1", "synthetic", "duration=0")
        assert kept.state == hc.AgentState.AWAITING_APPROVAL
        headers = {"Cookie": console.cookie}
        async with aiohttp.ClientSession(
            console.base, headers=headers, cookie_jar=aiohttp.DummyCookieJar()
        ) as http:
            page = f"/agents/spoke-1/{kept.agent_id}"
            async with http.get(page) as resp:
                text = await resp.text()
            assert "Approvals 0/1" in text
            assert f'action="{page}/approve"' in text
            assert f'action="{page}/reject"' in text
            form = {"csrf": csrf, "reason": "read it"}
            async with http.post(page + "/approve", data=form, headers={"HX-Request": "true"}) as r:
                assert r.headers["HX-Redirect"] == page
            other = f"/agents/spoke-1/{dropped.agent_id}/reject"
            async with http.post(other, data={"csrf": csrf, "reason": "no"}) as resp:
                assert resp.status == 200  # the 303 was followed to the agent's page
        async with asyncio.timeout(30):  # released: it runs to its end
            while not (done := await alice.get(kept.agent_id, "spoke-1")).final:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        assert done.state == hc.AgentState.SUCCEEDED
        assert done.approved_by == ("operator",)
        gone = await alice.get(dropped.agent_id, "spoke-1")
        assert (gone.state, gone.reason) == (hc.AgentState.REJECTED, "REJECTED_BY_APPROVER")
