"""Receipts drive state (issue 12), through real hubd and spoked processes on real Redis and
the real hubctl: the receipt decides SUCCEEDED, NEEDS_INPUT, NEEDS_VERIFICATION or FAILED;
``hubctl verify`` settles verification items, the grace window fails the rest; ``--wait``
exits by the state the agent settles in (README, exit codes)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hubspoke import testing
from hubspoke.client import AgentState, CallError, Client

GRACE_S = 8.0
"""The spoke's verification_grace_s here: long enough for hubctl to start twice."""

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def fed(tmp_path: Path, redis_url: str) -> AsyncIterator[testing.Federation]:
    federation = testing.Federation(
        tmp_path / "fed",
        ["spoke-1"],
        redis_url=redis_url,
        spoke_env={"SPOKE_VERIFICATION_GRACE_S": str(GRACE_S)},
    )
    try:
        await federation.start()
        yield federation
    finally:
        await federation.stop()


async def hubctl(fed: testing.Federation, *argv: str) -> tuple[int, Any, str]:
    """hubctl as the operator: exit code, stdout (parsed with --json) and stderr."""
    run = await fed.hubctl(*argv)
    return run.code, run.doc() if "--json" in argv else run.stdout, run.stderr


async def spawn_wait(fed: testing.Federation, task: str) -> tuple[int, dict[str, Any]]:
    code, doc, err = await hubctl(
        fed, "spawn", "--spoke", "spoke-1", "--wait", "--json", "--", *task.split()
    )
    assert isinstance(doc, dict), (code, doc, err)
    return code, doc


async def states_of(client: Client, agent_id: str) -> list[tuple[str, str]]:
    """Every state event of the agent so far, as (state, reason)."""
    seen: list[tuple[str, str]] = []
    async with asyncio.timeout(30):
        async for event in client.watch(agent_id, "spoke-1"):
            if event.state != AgentState.UNSPECIFIED:
                seen.append((event.state.name, event.reason))
            if event.state.final or event.kind.name == "HEARTBEAT":
                break
    return seen


async def test_the_wait_exit_codes_follow_the_documented_table(fed: testing.Federation) -> None:
    cases = [
        ("duration=0 steps=0", 0, "SUCCEEDED", ""),
        ("duration=0 steps=0 receipt=failed", 1, "FAILED", "RECEIPT_FAILED"),
        ("duration=0 steps=0 exit=3", 1, "FAILED", "EXIT_NONZERO"),
        ("duration=0 steps=0 receipt=blocked", 6, "NEEDS_INPUT", "BLOCKED"),
        ("duration=0 steps=0 verify=review", 7, "NEEDS_VERIFICATION", "VERIFICATION_PENDING"),
    ]
    for task, want_code, state, reason in cases:
        code, doc = await spawn_wait(fed, task)
        assert (code, doc["state"], doc.get("reason", "")) == (want_code, state, reason), task
    # status --wait exits the same way.
    code, doc = await spawn_wait(fed, "duration=0 steps=0 receipt=blocked")
    code, shown, _ = await hubctl(fed, "status", doc["agent_id"], "--wait")
    assert code == 6
    assert "NEEDS_INPUT (BLOCKED)" in shown


async def test_blocked_is_needs_input_and_a_kill_ends_it(fed: testing.Federation) -> None:
    code, doc = await spawn_wait(fed, "duration=0 steps=0 receipt=blocked rich")
    assert code == 6
    assert doc["receipt"]["blockers"] == ["synthetic blocker"]
    assert "end_time" not in doc  # not final
    code, killed, err = await hubctl(fed, "kill", doc["agent_id"], "--json")
    assert code == 0, err
    assert killed["state"] == "KILLED"
    async with fed.client() as client:
        agent = await client.get(doc["agent_id"], "spoke-1")
        assert (agent.state, agent.reason) == (AgentState.KILLED, "KILL_REQUESTED")
        seen = await states_of(client, doc["agent_id"])
    assert seen[-2:] == [("NEEDS_INPUT", "BLOCKED"), ("KILLED", "KILL_REQUESTED")]


async def test_a_rich_fenced_receipt_is_stored_whole_and_verify_settles_it(
    fed: testing.Federation,
) -> None:
    task = "duration=0 steps=0 rich fenced verify=staging-check verify=docs"
    code, doc = await spawn_wait(fed, task)
    assert code == 7, doc
    assert doc["state"] == "NEEDS_VERIFICATION"
    assert "verify_deadline" in doc
    receipt = doc["receipt"]
    whole = json.loads(receipt["json"])
    assert whole["artifacts"][0] == {"kind": "file", "path": "synthetic/report.txt"}
    assert whole["blockers"] == [{"reason": "synthetic blocker"}]
    assert whole["verification"][1] == {
        "kind": "check",
        "value": "staging-check",
        "expected": "passed",
    }
    assert receipt["json"].startswith("{\n  ")  # as printed, indentation and all
    assert receipt["artifacts"] == ["synthetic/report.txt", "synthetic.log"]
    assert receipt["artifact_details"][0]["kind"] == "file"
    assert receipt["blockers"] == ["synthetic blocker"]
    assert [(v["name"], v["status"]) for v in receipt["verifications"]] == [
        ("synthetic", "passed"),
        ("staging-check", "unknown"),
        ("docs", "unknown"),
    ]
    assert receipt["verifications"][1]["expected"] == "passed"
    agent_id = doc["agent_id"]

    # An item it does not wait on, or a verdict that is not one, is refused; nothing changes.
    code, _, err = await hubctl(fed, "verify", agent_id, "--item", "synthetic=passed")
    assert code == 1
    assert "waits on no verification item synthetic" in err
    code, _, err = await hubctl(fed, "verify", agent_id, "--item", "docs=maybe")
    assert code == 2

    # One verdict: still waiting, recorded with who gave it.
    code, part, err = await hubctl(fed, "verify", agent_id, "--item", "docs=passed", "--json")
    assert code == 0, err
    assert part["state"] == "NEEDS_VERIFICATION"
    docs_item = part["receipt"]["verifications"][2]
    assert (docs_item["status"], docs_item["verified_by"]) == ("passed", "operator")

    code, done, err = await hubctl(
        fed, "verify", agent_id, "--item", "staging-check=passed", "--json"
    )
    assert code == 0, err
    assert done["state"] == "SUCCEEDED"
    code, shown, _ = await hubctl(fed, "status", agent_id, "--wait")
    assert code == 0
    assert "verify    staging-check: passed (verified by operator)" in shown
    async with fed.client() as client:
        seen = await states_of(client, agent_id)
    assert seen[-2:] == [("NEEDS_VERIFICATION", "VERIFICATION_PENDING"), ("SUCCEEDED", "")]


async def test_a_failed_item_fails_the_agent_and_an_unsettled_one_times_out(
    fed: testing.Federation,
) -> None:
    async with fed.client() as client:
        failing = await client.spawn("spoke-1", "synthetic", "duration=0 steps=0 verify=a")
        waiting = await client.spawn("spoke-1", "synthetic", "duration=0 steps=0 verify=b")
        failing = await client.wait(failing, timeout=30)
        waiting = await client.wait(waiting, timeout=30)
        assert failing.state == waiting.state == AgentState.NEEDS_VERIFICATION
        assert waiting.verify_deadline is not None

    code, failed, err = await hubctl(
        fed, "verify", failing.agent_id, "--item", "a=failed", "--json"
    )
    assert code == 0, err
    assert (failed["state"], failed["reason"]) == ("FAILED", "VERIFICATION_FAILED")

    # Left alone, the other fails once its window closes (and not before).
    async with fed.client() as client:
        assert (await client.get(waiting.agent_id)).state == AgentState.NEEDS_VERIFICATION
        async with asyncio.timeout(GRACE_S + 30):
            async for event in client.watch(waiting.agent_id, "spoke-1"):
                if event.state.final:
                    break
        agent = await client.get(waiting.agent_id)
        assert agent.state == AgentState.FAILED
        assert agent.reason == "VERIFICATION_TIMEOUT"
        assert agent.end_time is not None
        assert agent.end_time >= waiting.verify_deadline
        # Final now: a verdict is refused.
        with pytest.raises(CallError) as caught:
            await client.verify(waiting.agent_id, {"b": "passed"})
        assert caught.value.reason == "AGENT_NOT_RUNNING"


async def test_a_malformed_receipt_succeeds_with_the_reason_recorded(
    fed: testing.Federation,
) -> None:
    code, doc = await spawn_wait(fed, "duration=0 steps=0 receipt=malformed")
    assert code == 0
    assert doc["state"] == "SUCCEEDED"
    assert doc["receipt"]["error"] == "receipt: not JSON"
    assert doc["receipt"]["json"] == '{"status": "completed", "summary": "cut short'
    code, shown, _ = await hubctl(fed, "status", doc["agent_id"])
    assert "receipt   unreadable: receipt: not JSON" in shown
