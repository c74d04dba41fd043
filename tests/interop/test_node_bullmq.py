"""BullMQ's own tools read a spoke's queue: Node's ``bullmq`` package, on the spoke's Redis,
sees the counts ``hubctl queue stats`` shows and reads our jobs as its own.

``tests/interop/node/bullmq_queue.mjs`` opens the queue as bull-board or a Node worker would
(name ``agents``, prefix ``federation:{spoke}``, docs/operations.md).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import SPOKE, Interop

NODE_DIR = Path(__file__).resolve().parent / "node"
HUBCTL = str(Path(sys.executable).parent / "hubctl")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def node() -> str:
    node_bin = shutil.which("node")
    if node_bin is None:
        pytest.skip("node is not installed: Node's bullmq cannot run")
    if not (NODE_DIR / "node_modules" / "bullmq").is_dir():
        pytest.skip(
            "tests/interop/node/node_modules has no bullmq: run npm ci there (.ci/run does)"
        )
    return node_bin


async def _run(*argv: str, cwd: Path | None = None) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, f"{argv[:3]} exited {proc.returncode}: {err.decode()[-2000:]}"
    return out.decode()


async def _hubctl(fed: Interop, *argv: str) -> str:
    return await _run(
        HUBCTL, "--config", str(fed.files.hubctl_config), "--hub", fed.hub_address, *argv
    )


@pytest.mark.parametrize("interop", [False], ids=["plaintext"], indirect=True)
async def test_node_bullmq_sees_what_hubctl_queue_stats_shows(
    node: str, interop: Interop, redis_url: str
) -> None:
    await _hubctl(interop, "queue", "--spoke", SPOKE, "pause")
    spawned = [
        (await _hubctl(interop, "-q", "spawn", "--spoke", SPOKE, *extra, "--", "duration=0.1"))
        .strip()
        .splitlines()[-1]
        for extra in ((), ("--priority", "9"), ("--delay", "600"))
    ]
    stats: dict[str, Any] = json.loads(
        await _hubctl(interop, "--json", "queue", "--spoke", SPOKE, "stats")
    )

    seen = json.loads(
        await _run(
            node,
            str(NODE_DIR / "bullmq_queue.mjs"),
            "--redis",
            redis_url,
            "--prefix",
            f"federation:{SPOKE}",
            "--queue",
            "agents",
            *(a for agent in spawned for a in ("--job", f"cmd-{agent}")),
            cwd=NODE_DIR,
        )
    )

    counts = seen["counts"]
    assert int(stats.get("waiting", 0)) == 2
    assert counts["wait"] + counts["paused"] + counts["prioritized"] == 2
    assert counts["delayed"] == int(stats.get("delayed", 0)) == 1
    assert counts["active"] == int(stats.get("active", 0)) == 0
    assert counts["completed"] == int(stats.get("completed", 0))
    assert counts["failed"] == int(stats.get("failed", 0))
    assert seen["paused"] is stats.get("paused", False) is True
    for agent in spawned:
        assert seen["jobs"][f"cmd-{agent}"]["data"]["agent_id"] == agent
