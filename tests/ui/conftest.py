"""``hubctl ui`` against a real federation, driven by a real headless Chromium.

The federation is the harness's (a hubd and two spokeds as processes, on the session's
Redis); the console is ``hubctl ui`` in a subprocess, exactly as an operator starts it; the
browser is Debian's ``chromium`` through Playwright (``.ci/run`` installs it; these tests
skip, saying so, where it is missing).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hubspoke import testing

CHROMIUM = Path(os.environ.get("HUBSPOKE_CHROMIUM", "/usr/bin/chromium"))
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Console:
    """A running ``hubctl ui``."""

    url: str
    """The URL it printed, token included."""
    proc: asyncio.subprocess.Process

    @property
    def base(self) -> str:
        return self.url.split("/?", 1)[0]

    @property
    def port(self) -> int:
        return int(self.base.rsplit(":", 1)[1])

    @property
    def token(self) -> str:
        return self.url.split("token=", 1)[1]

    @property
    def cookie(self) -> str:
        return f"hubspoke_ui_{self.port}={self.token}"


@pytest.fixture
async def federation(tmp_path: Path, redis_url: str) -> AsyncIterator[testing.Federation]:
    fed = testing.Federation(tmp_path / "fed", ["spoke-1", "spoke-2"], redis_url=redis_url)
    try:
        await fed.start()
        yield fed
    finally:
        await fed.stop()


async def start_console(fed: testing.Federation, *extra: str) -> Console:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hubspoke.hub.cli",
        "--config",
        str(fed.files.hubctl_config),
        "--hub",
        fed.hub_address,
        "ui",
        "--no-browser",
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    url = line.decode().strip()
    assert url.startswith("http://127.0.0.1:"), url
    return Console(url, proc)


async def stop_console(console: Console) -> int:
    """Ctrl-C, as an operator stops it; returns its exit code."""
    if console.proc.returncode is None:
        console.proc.send_signal(signal.SIGINT)
    return await asyncio.wait_for(console.proc.wait(), 15)


@pytest.fixture
async def console(federation: testing.Federation) -> AsyncIterator[Console]:
    running = await start_console(federation)
    try:
        yield running
    finally:
        if running.proc.returncode is None:
            running.proc.kill()
            await running.proc.wait()


@pytest.fixture
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (.ci/run installs Debian's chromium)")
    return CHROMIUM


@pytest.fixture
async def browser(chromium: Path) -> AsyncIterator[Any]:
    async_api = pytest.importorskip("playwright.async_api")
    # Every expectation waits on a condition; this long, so a busy machine only slows them.
    async_api.expect.set_options(timeout=30_000)
    async with async_api.async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=str(chromium), args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            await chromium.close()
