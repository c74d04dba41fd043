"""``hubctl synthetic-all``: run the fixture tasks end to end through the real federation
hubctl is configured for, and report each fixture whose agent diverged from the state it
expects (exit 1), else exit 0.

Every fixture (hub/synthetic_fixtures.py; the shipped set is ``hubspoke.hub.fixtures``) runs
on every spoke the hub reports READY (or each ``--spoke``), at most ``--parallel`` at once:
a signed spawn like any other (labels ``synthetic-all`` = the run's id and ``fixture`` = its
name), then a wait of at most ``--wait-timeout`` seconds for the agent to settle. A fixture
diverges when the spawn is refused, the agent settles in another state (or with another
reason, where the fixture names one), or it has not settled in time. Agents left waiting
(NEEDS_INPUT, NEEDS_VERIFICATION, or not settled) are killed afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import uuid
from dataclasses import asdict, dataclass
from typing import Final

from hubspoke.client import Agent, CallError, Client, SpokeHealth

from .cli_output import Out, escape, table
from .cli_parser import UsageError
from .synthetic_fixtures import Fixture, FixtureError, load_fixtures, select

__all__ = ["DEFAULT_PARALLEL", "DEFAULT_WAIT_TIMEOUT_S", "FIXTURE_LABEL", "Result", "run"]

DEFAULT_PARALLEL: Final = 8
"""Fixtures run at once (``--parallel``)."""
DEFAULT_WAIT_TIMEOUT_S: Final = 120.0
"""How long one fixture's agent may take to settle (``--wait-timeout``)."""
FIXTURE_LABEL: Final = "synthetic-all"
"""The label every fixture agent carries (its value: the run's id); shadow-summary skips them."""
PROBE_WAIT_S: Final = 10.0
"""How long to wait for a hub that has not yet probed every spoke (it just started)."""
_EXIT_OK: Final = 0
_EXIT_DIVERGED: Final = 1


@dataclass(frozen=True, slots=True)
class Result:
    """How one fixture ran on one spoke."""

    fixture: str
    spoke: str
    profile: str
    expected: str
    expected_reason: str
    state: str
    reason: str
    agent_id: str
    ok: bool
    error: str = ""

    @property
    def label(self) -> str:
        return f"{self.fixture}@{self.spoke}"


async def run(client: Client, args: argparse.Namespace, out: Out) -> int:
    try:
        fixtures = select(load_fixtures(args.fixtures), args.only)
    except FixtureError as exc:
        raise UsageError(str(exc)) from None
    spokes = list(args.spokes) or await _ready_spokes(client)
    if not spokes:
        raise UsageError("no READY spoke to run the fixtures on (see hubctl spokes)")
    run_id = uuid.uuid4().hex[:12]
    gate = asyncio.Semaphore(args.parallel)
    jobs = [_one(client, gate, f, s, run_id, args) for s in spokes for f in fixtures]
    results = await asyncio.gather(*jobs)
    diverged = [r.label for r in results if not r.ok]
    if out.json:
        out.doc(
            {
                "run": run_id,
                "passed": not diverged,
                "spokes": spokes,
                "results": [asdict(r) for r in results],
                "diverged": diverged,
            }
        )
    else:
        _print(out, results, spokes, diverged)
    return _EXIT_DIVERGED if diverged else _EXIT_OK


async def _ready_spokes(client: Client) -> list[str]:
    """The spokes the hub reports READY, once it has probed each (a hub just started has
    not: it is given up to PROBE_WAIT_S)."""
    deadline = asyncio.get_running_loop().time() + PROBE_WAIT_S
    while True:
        spokes = await client.spokes()
        unprobed = [s for s in spokes if s.health == SpokeHealth.UNSPECIFIED]
        if not unprobed or asyncio.get_running_loop().time() > deadline:
            return [s.name for s in spokes if s.health == SpokeHealth.READY]
        await asyncio.sleep(0.5)


def _print(out: Out, results: list[Result], spokes: list[str], diverged: list[str]) -> None:
    rows = [["RESULT", "FIXTURE", "SPOKE", "EXPECTED", "GOT", "AGENT"]]
    for r in results:
        want = r.expected + (f" ({r.expected_reason})" if r.expected_reason else "")
        got = r.error or (r.state + (f" ({r.reason})" if r.reason else ""))
        rows.append(["ok" if r.ok else "DIVERGED", r.fixture, r.spoke, want, got, r.agent_id])
    if not out.quiet:
        for line in table(rows):
            out.line(line)
    count = len({r.fixture for r in results})
    if diverged:
        out.line(f"diverged: {escape(', '.join(diverged))}")
    else:
        out.line(f"passed: {count} fixtures on {len(spokes)} spokes ({escape(', '.join(spokes))})")


async def _one(
    client: Client,
    gate: asyncio.Semaphore,
    fixture: Fixture,
    spoke: str,
    run_id: str,
    args: argparse.Namespace,
) -> Result:
    async with gate:
        agent: Agent | None = None
        error = ""
        try:
            agent = await client.spawn(
                spoke,
                fixture.profile,
                fixture.task,
                timeout_s=fixture.timeout_s,
                max_attempts=fixture.max_attempts,
                labels={FIXTURE_LABEL: run_id, "fixture": fixture.name},
            )
            agent = await client.wait(agent, spoke, timeout=args.wait_timeout)
        except CallError as exc:
            error = f"error: {exc}"
        except TimeoutError:
            error = f"not settled within {args.wait_timeout:g}s"
        if agent is not None and not agent.final and not args.keep:
            with contextlib.suppress(CallError):
                await client.kill(agent.agent_id, spoke)
    state = agent.state.name if agent is not None and not error else ""
    reason = agent.reason if agent is not None and not error else ""
    ok = (
        not error
        and state == fixture.expect.name
        and (not fixture.reason or reason == fixture.reason)
    )
    return Result(
        fixture=fixture.name,
        spoke=spoke,
        profile=fixture.profile,
        expected=fixture.expect.name,
        expected_reason=fixture.reason,
        state=state,
        reason=reason,
        agent_id=agent.agent_id if agent is not None else "",
        ok=ok,
        error=error,
    )
