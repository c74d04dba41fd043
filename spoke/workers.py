"""``spoked --workers N``: N server processes on one port (SO_REUSEPORT) sharing the site's
Redis and queue (issue 13, more cores, more spokes).

The process started by the operator is the primary: it binds the port with SO_REUSEPORT,
then starts N-1 helpers, ``spoked`` again with the same arguments and ``--listen`` on the
bound port, marked serve-only (``SPOKE_SERVE_ONLY``). A helper answers RPCs only: it runs no
agents, no sweeper, no hooks, no start-up scan and no metrics server, so the agents, their
recovery and the background passes stay the primary's alone, exactly as with one process.
Spawns, statuses, lists and kills go through Redis, so any process may answer any call. The
primary stops its helpers when it stops; a helper whose primary is gone stops by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass

import structlog

from .config import SpokeConfigError

log = structlog.get_logger("hubspoke.spoke.workers")

WORKERS_ENV = "SPOKE_WORKERS"
"""How many server processes (``--workers`` sets it); 1: this process alone."""
SERVE_ONLY_ENV = "SPOKE_SERVE_ONLY"
"""Set by the primary in its helpers' environment."""
PARENT_CHECK_S = 1.0
"""How often a helper looks whether its primary is still alive."""
MAX_WORKERS = 64


@dataclass(frozen=True, slots=True)
class Plan:
    """This process's part: how many processes serve, and whether this one only serves."""

    workers: int = 1
    serve_only: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Plan:
        raw = env.get(WORKERS_ENV, "1") or "1"
        try:
            workers = int(raw)
        except ValueError:
            workers = 0
        if not 1 <= workers <= MAX_WORKERS:
            raise SpokeConfigError(f"--workers must be 1 to {MAX_WORKERS}, not {raw!r}")
        return cls(workers, env.get(SERVE_ONLY_ENV) == "1")

    @property
    def primary_of_many(self) -> bool:
        return self.workers > 1 and not self.serve_only


def take_workers_flag(args: Sequence[str], env: MutableMapping[str, str]) -> list[str]:
    """``args`` without ``--workers N`` (or ``--workers=N``), which goes into ``env``."""
    out: list[str] = []
    it = iter(args)
    for a in it:
        if a == "--workers":
            env[WORKERS_ENV] = next(it, "")
        elif a.startswith("--workers="):
            env[WORKERS_ENV] = a.split("=", 1)[1]
        else:
            out.append(a)
    return out


class Helpers:
    """The primary's helper processes."""

    def __init__(self) -> None:
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self, count: int, host: str, port: int) -> None:
        env = {**os.environ, SERVE_ONLY_ENV: "1", WORKERS_ENV: "1"}
        argv = [*sys.argv[1:], "--listen", f"{host}:{port}"]
        for _ in range(count):
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "hubspoke.spoke",
                *argv,
                env=env,
                stdout=asyncio.subprocess.DEVNULL,
            )
            self.procs.append(proc)
        log.info("helpers_started", helpers=[p.pid for p in self.procs], port=port)

    async def stop(self, grace: float) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), grace + 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()


async def until_orphaned(parent: int) -> None:
    """Return once this process's parent is no longer ``parent`` (it died)."""
    while os.getppid() == parent:  # noqa: ASYNC110  # no event tells us: poll
        await asyncio.sleep(PARENT_CHECK_S)


def listen_host(listen: str) -> str:
    """The host part of a ``host:port`` listen address (brackets kept for IPv6)."""
    return listen.rsplit(":", 1)[0]
