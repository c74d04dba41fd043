"""Journey 6: a Node service signs spawns with its own key from docs/protocol.md, retries the
same command id after a timeout, and gets exactly one agent.

``tests/interop/node/client.mjs`` talks to a real hub in front of a real spoke; this test
checks what it reports and, through the Python client, what the spoke actually holds.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from hubspoke.gen.federation.v1 import agent_pb2

from .conftest import SERVICE, SPOKE, Interop

NODE_DIR = Path(__file__).resolve().parent / "node"
REPO = NODE_DIR.parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def node() -> str:
    """The node binary, with the client's packages installed (``npm ci`` once if needed)."""
    node_bin = shutil.which("node")
    if node_bin is None:
        pytest.skip("node is not installed: the Node interop client cannot run")
    if not (NODE_DIR / "node_modules").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("tests/interop/node/node_modules is missing and npm is not installed")
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        if done.returncode != 0:
            pytest.skip(f"npm ci failed in tests/interop/node: {done.stderr.strip()[-500:]}")
    return node_bin


async def _run_client(
    node: str,
    fed: Interop,
    command_id: str,
    spoke_key: str | None = None,
    extra: tuple[str, ...] = (),
) -> tuple[int, dict[str, Any]]:
    """Run client.mjs to completion; its exit status and the JSON line it printed."""
    tls: list[str] = []
    if fed.tls is not None and fed.files.tls_dir is not None:
        tls = [
            "--ca",
            str(fed.files.tls_dir / "ca.crt"),
            "--cert",
            str(fed.tls.cert_file),
            "--tls-key",
            str(fed.tls.key_file),
        ]
    proc = await asyncio.create_subprocess_exec(
        node,
        str(NODE_DIR / "client.mjs"),
        *tls,
        "--hub",
        fed.hub_address,
        "--hub-name",
        fed.files.hub_name,
        "--principal",
        SERVICE,
        "--key",
        str(fed.service_key),
        "--spoke",
        SPOKE,
        "--spoke-key",
        spoke_key or fed.spoke_public,
        "--protos",
        str(REPO / "protos"),
        "--command-id",
        command_id,
        "--task",
        "duration=0.2 steps=2",
        "--first-deadline-ms",
        "1",
        "--wait-s",
        "30",
        *extra,
        cwd=NODE_DIR,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    lines = out.decode().strip().splitlines()
    assert lines, f"the node client printed nothing; stderr: {err.decode()[-2000:]}"
    doc: dict[str, Any] = json.loads(lines[-1])
    doc["stderr"] = err.decode()[-2000:]
    assert proc.returncode is not None
    return proc.returncode, doc


async def test_node_client_spawns_exactly_one_agent(node: str, interop: Interop) -> None:
    command_id = f"ts-{uuid.uuid4()}"
    code, doc = await _run_client(node, interop, command_id)

    assert code == 0, doc
    assert doc["vector_ok"] is True, doc
    # 1 ms: the first attempt times out (or, on a very fast machine, succeeds); never else.
    assert doc["first_attempt"] in {"DEADLINE_EXCEEDED", "OK"}, doc
    assert doc["reply_verified"] is True, doc
    assert doc["retry_reply_verified"] is True, doc
    assert doc["agent_id"] == command_id, doc
    assert doc["retry_agent_id"] == doc["agent_id"], doc
    assert doc["same_agent"] is True, doc
    assert doc["issuer"] == SERVICE, doc
    assert doc["final_state"] == "STATE_SUCCEEDED", doc
    assert doc["reuse_error"]["code_name"] == "ALREADY_EXISTS", doc
    assert doc["reuse_error"]["reason"] == "COMMAND_ID_REUSED", doc
    assert doc["reuse_error"]["domain"] == "federation", doc

    async with interop.client() as client:
        listed = await client.list(SPOKE)
        agent = await client.get(command_id, SPOKE)
    assert not listed.unreachable_spokes
    assert [a.agent_id for a in listed.agents] == [command_id]
    assert agent.state == agent_pb2.Agent.STATE_SUCCEEDED
    assert agent.issuer == SERVICE
    assert agent.task == "duration=0.2 steps=2"


async def test_node_client_rejects_a_reply_signed_by_another_key(
    node: str, interop: Interop
) -> None:
    """The client's reply check is not vacuous: trusting the wrong key for the spoke fails."""
    hub_public = (interop.files.keys_dir / "hub.pub").read_text().split()[0]
    code, doc = await _run_client(node, interop, f"ts-{uuid.uuid4()}", spoke_key=hub_public)

    assert code == 1, doc
    assert doc["ok"] is False, doc
    assert "no signature by a trusted key verifies" in doc["error"], doc


async def test_node_client_reaches_every_idempotency_vector(node: str, interop: Interop) -> None:
    """docs/vectors/idempotency.json, signed in Node: the outcomes §9 promises (the Python side
    runs the same file in test_idempotency_vectors.py)."""
    vectors = REPO / "docs" / "vectors" / "idempotency.json"
    code, doc = await _run_client(
        node, interop, f"ts-{uuid.uuid4()}", extra=("--vectors", str(vectors))
    )

    expected = json.loads(vectors.read_text())["vectors"]
    assert [v["name"] for v in doc.get("vectors", [])] == [v["name"] for v in expected], doc
    assert [(v["name"], v["got"]) for v in doc["vectors"]] == [
        (v["name"], v["expect"]) for v in expected
    ]
    assert code == 0, doc
