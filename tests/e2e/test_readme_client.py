"""The README's Python client example, run as written against a real hub and spoke."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import pytest

from .conftest import Federation

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def readme_client_example() -> str:
    """The first ```python block under the README's "Python client" heading."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Python client\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "README.md: no python block under '## Python client'"
    return match.group(1)


def test_the_example_is_short_and_uses_the_root_import() -> None:
    code = readme_client_example()
    assert "from hubspoke import Client" in code
    assert len([line for line in code.splitlines() if line.strip()]) <= 10


async def test_the_readme_example_spawns_waits_and_prints_the_state(
    federation: Federation, tmp_path: Path
) -> None:
    script = tmp_path / "example.py"
    script.write_text(readme_client_example())
    env = {
        **os.environ,
        "HUBCTL_CONFIG": str(federation.files.hubctl_config),
        "HUBCTL_HUB": federation.hub_address,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=tmp_path,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 50)
    assert proc.returncode == 0, err.decode()
    agent_id, state, exit_code = out.decode().split()
    assert (state, exit_code) == ("SUCCEEDED", "0")
    code, doc, stderr = await federation.hubctl("status", agent_id, "--json")
    assert code == 0, stderr
    assert (doc["agent_id"], doc["state"]) == (agent_id, "SUCCEEDED")
