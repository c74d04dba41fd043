"""The chaos scenarios: a stream of spawns through the hub, a fault, quiet, then the checker.

Every spawn carries a command id the client chose. A spawn answered UNAVAILABLE or past
its deadline is *unknown* (it may have landed) and is sent again with the same id until it
is answered or ``settle_s`` runs out; each call is logged. Once the faults are over the
driver waits until every agent is final, reads them back through the hub, looks for agent
processes still alive, and hands everything to :func:`chaoslib.ledger.check`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from hubspoke import client as hub_client

from . import faults
from .cluster import SAFE, Cluster
from .ledger import FINAL, ClientOp, Final, Run, Verdict, check, read_ledger

__all__ = ["FULL", "REDUCED", "SCENARIOS", "Outcome", "Scale", "run_scenario"]

UNKNOWN_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.ABORTED,
    }
)
"""Answers after which the spawn may or may not have landed: send it again, same id."""
SAFE_ATTEMPTS = SAFE.max_attempts


@dataclass(frozen=True, slots=True)
class Scale:
    """How big each scenario is; ``REDUCED`` for CI, ``FULL`` for ``scripts/chaos``."""

    name: str
    sigkill_kills: int
    sigkill_every_s: float
    sigkill_rate: float
    sigkill_sleep: tuple[float, float]
    stop_s: float
    stop_holders: int
    redis_kills: int
    hubd_kills: int
    fault_gap_s: float
    partition_s: float
    overload_concurrency: int
    overload_sleep: float
    quiesce_s: float


REDUCED = Scale(
    name="reduced",
    sigkill_kills=2,
    sigkill_every_s=10.0,
    sigkill_rate=0.8,
    sigkill_sleep=(1.0, 16.0),
    stop_s=18.0,
    stop_holders=2,
    redis_kills=1,
    hubd_kills=1,
    fault_gap_s=4.0,
    partition_s=8.0,
    overload_concurrency=2,
    overload_sleep=1.0,
    quiesce_s=60.0,
)
FULL = Scale(
    name="full",
    sigkill_kills=6,
    sigkill_every_s=10.0,
    sigkill_rate=0.8,
    sigkill_sleep=(1.0, 16.0),
    stop_s=25.0,
    stop_holders=4,
    redis_kills=3,
    hubd_kills=3,
    fault_gap_s=6.0,
    partition_s=30.0,
    overload_concurrency=4,
    overload_sleep=2.0,
    quiesce_s=120.0,
)


@dataclass
class Outcome:
    """One scenario's result: the checker's verdict and what the scenario itself expects."""

    scenario: str
    scale: str
    verdict: Verdict | None = None
    expectations: dict[str, bool] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    skipped: str = ""
    duration_s: float = 0.0

    @property
    def passed(self) -> bool:
        return all(self.expectations.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "scale": self.scale,
            "passed": self.passed,
            "skipped": self.skipped,
            "duration_s": round(self.duration_s, 1),
            "expectations": self.expectations,
            "verdict": self.verdict.as_dict() if self.verdict else None,
            "notes": self.notes,
            "events": self.events,
            "extra": self.extra,
        }


def agent_processes(ledger: Path) -> list[int]:
    """Live (non-zombie) processes whose environment names this ledger: our agents."""
    needle = f"LEDGER={ledger}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in env and state not in (b"Z", b"X"):
            found.append(int(entry.name))
    return found


class Driver:
    """Sends spawns through the hub, logs every call, reads the agents back."""

    def __init__(self, cluster: Cluster, client: hub_client.Client, tag: str) -> None:
        self.cluster = cluster
        self.client = client
        self.tag = tag
        self.ops: list[ClientOp] = []
        self.profile_of: dict[str, str] = {}
        self._tasks: list[asyncio.Task[str]] = []
        self.finals: dict[str, Final] = {}
        self._n = itertools.count(1)

    def new_cid(self) -> str:
        return f"{self.tag}-{next(self._n):04d}-{uuid.uuid4().hex[:8]}"

    async def spawn(
        self,
        cid: str,
        profile: str,
        task: str,
        settle_s: float = 90.0,
        start_within_s: float | None = None,
    ) -> str:
        """Send until answered (OK or a definitive refusal) or ``settle_s`` passes; the last
        outcome (``ok``, ``failed`` or ``unknown``)."""
        self.profile_of[cid] = profile
        deadline = time.monotonic() + settle_s
        pause = 0.25
        while True:
            t0 = time.time()
            retry_after_ms = 500
            try:
                agent = await self.client.spawn(
                    self.cluster.spoke, profile, task, command_id=cid, start_within_s=start_within_s
                )
            except hub_client.CallError as exc:
                outcome = "unknown" if exc.code in UNKNOWN_CODES else "failed"
                code, detail = exc.code.name, exc.reason
                retry_after_ms = int(exc.metadata.get("retry_after_ms", "") or 500)
            except (grpc.aio.AioRpcError, OSError) as exc:  # a channel torn down mid-call
                outcome, code, detail = "unknown", type(exc).__name__, str(exc)[:200]
            else:
                # Held in the hub's outbox (its spoke unreachable): accepted, delivered later.
                held = agent.state == hub_client.AgentState.PENDING_DELIVERY
                outcome, code, detail = "ok", "HELD" if held else "OK", ""
            self.ops.append(ClientOp("spawn", cid, outcome, code, t0, time.time(), profile, detail))
            if time.monotonic() > deadline:
                return outcome
            # A rate-limited spawn was refused before it went anywhere: send it again too,
            # no sooner than the hub asked.
            rate_limited = detail == "RATE_LIMITED"
            if outcome != "unknown" and not rate_limited:
                return outcome
            wait = max(pause, retry_after_ms / 1000 if rate_limited else 0.0)
            await asyncio.sleep(min(wait, 5.0) + random.random() / 4)  # noqa: S311 - jitter
            pause = min(pause * 2, 2.0)

    def launch(
        self, profile: str, task: str, settle_s: float = 90.0, start_within_s: float | None = None
    ) -> str:
        cid = self.new_cid()
        self._tasks.append(
            asyncio.create_task(self.spawn(cid, profile, task, settle_s, start_within_s))
        )
        return cid

    async def stream(self, count: int, rate: float, pick: Callable[[int], tuple[str, str]]) -> None:
        """Launch ``count`` spawns ``1/rate`` s apart; ``pick(i)`` gives (profile, task)."""
        for i in range(count):
            profile, task = pick(i)
            self.launch(profile, task)
            await asyncio.sleep(1.0 / rate)

    async def stream_for(
        self, seconds: float, rate: float, pick: Callable[[int], tuple[str, str]]
    ) -> None:
        await self.stream(max(1, int(seconds * rate)), rate, pick)

    async def drain(self) -> None:
        """Wait for every launched spawn to be answered or given up."""
        await asyncio.gather(*self._tasks)

    async def read_back(self, cids: Iterable[str]) -> dict[str, Final]:
        """Each agent as the hub reports it; backs off when the hub rate-limits us."""
        sem = asyncio.Semaphore(8)

        async def one(cid: str) -> Final:
            async with sem:
                for _ in range(50):
                    try:
                        a = await self.client.get(cid, spoke=self.cluster.spoke)
                    except hub_client.CallError as exc:
                        if exc.code == grpc.StatusCode.NOT_FOUND:
                            return Final(cid, "ABSENT")
                        if exc.code != grpc.StatusCode.RESOURCE_EXHAUSTED:
                            return Final(cid, "UNREADABLE", exc.code.name)
                        wait_ms = exc.metadata.get("retry_after_ms", "") or "200"
                        await asyncio.sleep(min(int(wait_ms), 2000) / 1000)
                        continue
                    end = a.end_time.timestamp() if a.end_time is not None else None
                    return Final(cid, a.state.name, a.reason, a.attempt, end)
            return Final(cid, "UNREADABLE", "RESOURCE_EXHAUSTED")

        finals = await asyncio.gather(*(one(c) for c in cids))
        return {f.cid: f for f in finals}

    async def quiesce(self, timeout_s: float) -> dict[str, Final]:
        """Read every sent agent until all are final (or absent), or ``timeout_s`` passes.
        Only agents not yet settled are read again, to stay within the hub's rate limit."""
        deadline = time.monotonic() + timeout_s
        pending = sorted(self.profile_of)
        while True:
            self.finals.update(await self.read_back(pending))
            pending = [c for c in pending if not _settled(self.finals[c])]
            if not pending or time.monotonic() > deadline:
                return dict(self.finals)
            await asyncio.sleep(1.0)

    def retry_safe(self) -> dict[str, bool]:
        policy = self.cluster.retry_safe
        return {cid: policy.get(p, False) for cid, p in self.profile_of.items()}


def _settled(final: Final) -> bool:
    return final.state in FINAL or final.state == "ABSENT"


async def _wait_ledger_starts(ledger: Path, count: int, timeout_s: float) -> list[Run]:
    deadline = time.monotonic() + timeout_s
    while True:
        runs = read_ledger(ledger)
        if len(runs) >= count or time.monotonic() > deadline:
            return runs
        await asyncio.sleep(0.1)


async def _conclude(
    outcome: Outcome,
    driver: Driver,
    timeline: faults.Timeline,
    scale: Scale,
    limit: int,
) -> None:
    """Wait for quiet, read everything back, run the checker, set the common expectations."""
    await driver.drain()
    finals = await driver.quiesce(scale.quiesce_s)
    await asyncio.sleep(1.0)  # a killed group's members need a moment to be reaped
    orphans = agent_processes(driver.cluster.ledger)
    runs = read_ledger(driver.cluster.ledger)
    v = check(
        ops=driver.ops,
        runs=runs,
        finals=finals,
        retry_safe=driver.retry_safe(),
        windows=timeline.windows,
        limit=limit,
        orphans=orphans,
        horizon=time.time(),
    )
    outcome.verdict = v
    outcome.events = [
        {"fault": e.name, "start": e.start, "end": e.end, "detail": e.detail}
        for e in timeline.events
    ]
    outcome.expectations.update(
        {
            "lost == 0": v.lost_count == 0,
            "unallowed duplicates == 0": v.duplicated_unallowed == 0,
            "orphans == 0": not v.orphans,
            "outage answers never OK": v.outage_ok == 0,
            "all acked agents final": v.unfinished_count == 0,
        }
    )
    outcome.extra["recovery_after_window_s"] = _recovery_times(driver.ops, timeline)
    outcome.extra["runs"] = [
        {"cid": r.cid, "attempt": r.attempt, "pid": r.pid, "start": r.start, "end": r.end,
         "how": r.how}
        for r in runs
        if r.cid in set(v.overlapping) | set(v.unallowed) | set(v.misreported)
    ]  # fmt: skip
    outcome.extra["finals"] = {cid: vars_of(f) for cid, f in sorted(finals.items())}
    outcome.extra["finals_of_flagged"] = {
        cid: vars_of(finals[cid])
        for cid in set(v.overlapping) | set(v.unallowed) | set(v.misreported) | set(v.lost)
        if cid in finals
    }


def vars_of(final: Final) -> dict[str, Any]:
    return {"state": final.state, "reason": final.reason, "attempt": final.attempt}


def _recovery_times(ops: list[ClientOp], timeline: faults.Timeline) -> list[float | None]:
    """Per outage window: seconds from its end to the first spawn answered OK after it."""
    out: list[float | None] = []
    for w in timeline.windows:
        after = [o.t1 for o in ops if o.outcome == "ok" and o.t1 >= w.end]
        out.append(round(min(after) - w.end, 2) if after else None)
    return out


def _interrupted_by_profile(runs: list[Run], finals: dict[str, Final], profile_of: dict[str, str]):
    """For each interrupted command id: its profile, run count, last attempt and final."""
    by: dict[str, list[Run]] = {}
    for r in runs:
        by.setdefault(r.cid, []).append(r)
    out = []
    for cid, group in by.items():
        if any(r.how != "ok" for r in group):
            f = finals.get(cid)
            out.append((cid, profile_of.get(cid, ""), group, f))
    return out


# -- scenarios ------------------------------------------------------------------------------


async def spoked_sigkill(scale: Scale, root: Path, outcome: Outcome) -> None:
    """SIGKILL the only spoked every ~10 s under a stream of spawns; restart it each time.

    Half the spawns use ``once`` (not retry-safe), half ``safe`` (retry-safe, 3 attempts);
    run lengths are spread so some agents outlive recovery (they are killed by pid and
    start time) and some finish on their own while nothing supervises them.
    """
    concurrency = 8
    cluster = Cluster(root, concurrency=concurrency)
    timeline = faults.Timeline()
    rng = random.Random(5)  # noqa: S311 - spreads run lengths and kill times, not a secret
    try:
        await cluster.start()
        async with cluster.client() as client:
            driver = Driver(cluster, client, "kill")

            def pick(i: int) -> tuple[str, str]:
                lo, hi = scale.sigkill_sleep
                # Retries are short, so a retried agent can finish before the next kill.
                task = f"sleep={rng.uniform(lo, hi):.2f} resleep=2"
                return ("once" if i % 2 else "safe"), task

            async def kills() -> None:
                for _ in range(scale.sigkill_kills):
                    await asyncio.sleep(scale.sigkill_every_s * rng.uniform(0.8, 1.2))
                    await timeline.sigkill_spoked(cluster, cluster.spoked, down_s=0.5)

            seconds = scale.sigkill_every_s * (scale.sigkill_kills + 0.5)
            await asyncio.gather(driver.stream_for(seconds, scale.sigkill_rate, pick), kills())
            await _conclude(outcome, driver, timeline, scale, limit=concurrency)
            finals = driver.finals
            runs = read_ledger(cluster.ledger)
            bad_once, bad_safe, safe_retried = [], [], 0
            for cid, profile, group, f in _interrupted_by_profile(runs, finals, driver.profile_of):
                state = f.state if f else "ABSENT"
                if profile == "once" and (len(group) != 1 or state != "FAILED"):
                    bad_once.append(cid)
                if profile == "safe":
                    exhausted = state == "FAILED" and f is not None and f.attempt >= SAFE_ATTEMPTS
                    succeeded = state == "SUCCEEDED" and group[-1].how == "ok"
                    if not (exhausted or succeeded):
                        bad_safe.append(cid)
                    elif succeeded and len(group) > 1:
                        safe_retried += 1
            outcome.extra.update(
                {"once_interrupted_not_failed": bad_once, "safe_interrupted_not_succeeded":
                 bad_safe, "safe_retried_to_success": safe_retried}
            )  # fmt: skip
            outcome.expectations["once: interrupted -> FAILED, one run"] = not bad_once
            outcome.expectations[
                "safe: interrupted -> retried to SUCCEEDED (or out of attempts)"
            ] = not bad_safe
    finally:
        await cluster.stop()


async def spoke_sigstop(scale: Scale, root: Path, outcome: Outcome) -> None:
    """Two spokeds on one Redis. B takes long agents, then is SIGSTOPped past its lease while
    A serves the hub; A's stall check hands B's jobs to A, which kills B's agents and
    retries or fails them. Then B is SIGCONTed and wakes up believing it still owns them."""
    holders = scale.stop_holders
    cluster = Cluster(root, concurrency=4, via_proxy=True)
    timeline = faults.Timeline()
    try:
        await cluster.start(start_spoked=False)
        assert cluster.proxy is not None
        b = await cluster.add_spoked(cluster.spoke_address, concurrency=holders)
        async with cluster.client() as client:
            driver = Driver(cluster, client, "stop")
            # Long enough to outlive B's lease; a retry lasts past the SIGCONT, so B wakes up
            # while A is running the next attempt of the agent B thinks it still holds.
            long_s, resleep_s = scale.stop_s + 25.0, scale.stop_s
            for i in range(holders):
                task = f"sleep={long_s:g} resleep={resleep_s:g}"
                driver.launch("safe" if i % 2 == 0 else "once", task)
            await driver.drain()
            held = await _wait_ledger_starts(cluster.ledger, holders, 20.0)
            outcome.notes.append(f"spoked B (pid {b.pid}) holds {len(held)} long agents")
            a = await cluster.add_spoked(None, concurrency=4)
            cluster.proxy.retarget(("127.0.0.1", a.port))
            outcome.notes.append(f"spoked A (pid {a.pid}) now serves the hub")

            def pick(_: int) -> tuple[str, str]:
                return "once", "sleep=0.5"

            await asyncio.gather(
                timeline.sigstop(b, scale.stop_s),
                driver.stream_for(scale.stop_s + 6.0, 1.0, pick),
            )
            await _conclude(outcome, driver, timeline, scale, limit=holders + 4)
    finally:
        await cluster.stop()


async def redis_sigkill(scale: Scale, root: Path, outcome: Outcome) -> None:
    """SIGKILL the spoke site's redis-server mid-stream, restart it on its AOF after 2 s."""
    cluster = Cluster(root, concurrency=4)
    timeline = faults.Timeline()
    try:
        await cluster.start()
        async with cluster.client() as client:
            driver = Driver(cluster, client, "redis")

            def pick(_: int) -> tuple[str, str]:
                return "once", "sleep=0.3"

            async def kills() -> None:
                for _ in range(scale.redis_kills):
                    await asyncio.sleep(scale.fault_gap_s)
                    await timeline.sigkill_redis(cluster, down_s=2.0)

            seconds = (scale.fault_gap_s + 2.5) * scale.redis_kills + scale.fault_gap_s
            await asyncio.gather(driver.stream_for(seconds, 6.0, pick), kills())
            await _conclude(outcome, driver, timeline, scale, limit=4)
            v = outcome.verdict
            assert v is not None
            outcome.expectations["every acked spawn ran exactly once"] = (
                v.duplicated == 0 and v.lost_count == 0
            )
    finally:
        await cluster.stop()


async def hubd_sigkill(scale: Scale, root: Path, outcome: Outcome) -> None:
    """SIGKILL hubd while spawns are in flight; clients re-send with the same command id."""
    cluster = Cluster(root, concurrency=8)
    timeline = faults.Timeline()
    try:
        await cluster.start()
        async with cluster.client() as client:
            driver = Driver(cluster, client, "hubd")

            def pick(_: int) -> tuple[str, str]:
                return "once", "sleep=0.2"

            async def kills() -> None:
                for _ in range(scale.hubd_kills):
                    await asyncio.sleep(scale.fault_gap_s)
                    await timeline.sigkill_hubd(cluster, down_s=1.5)

            seconds = (scale.fault_gap_s + 2.5) * scale.hubd_kills + scale.fault_gap_s
            await asyncio.gather(driver.stream_for(seconds, 10.0, pick), kills())
            await _conclude(outcome, driver, timeline, scale, limit=8)
            v = outcome.verdict
            assert v is not None
            resent = {o.cid for o in driver.ops if o.outcome == "unknown"}
            acked = {o.cid for o in driver.ops if o.outcome == "ok"}
            outcome.extra["resent_then_acked"] = len(resent & acked)
            outcome.expectations["one agent per re-sent command id"] = v.duplicated == 0
    finally:
        await cluster.stop()


async def partition(scale: Scale, root: Path, outcome: Outcome) -> None:
    """Cut hub <-> spoke for ``partition_s`` at a TCP proxy; spawns keep coming."""
    cluster = Cluster(root, concurrency=4, via_proxy=True)
    timeline = faults.Timeline()
    try:
        await cluster.start()
        async with cluster.client() as client:
            driver = Driver(cluster, client, "part")

            def pick(_: int) -> tuple[str, str]:
                return "once", "sleep=0.5"

            async def cut() -> None:
                await asyncio.sleep(3.0)
                await timeline.partition(cluster, scale.partition_s)

            seconds = 3.0 + scale.partition_s + 8.0
            await asyncio.gather(driver.stream_for(seconds, 3.0, pick), cut())
            await _conclude(outcome, driver, timeline, scale, limit=4)
            outcome.notes.append("partition by TCP proxy (connections reset, new ones refused)")
    finally:
        await cluster.stop()


async def overload(scale: Scale, root: Path, outcome: Outcome) -> None:
    """10x the spoke's concurrency in spawns at once."""
    limit = scale.overload_concurrency
    cluster = Cluster(root, concurrency=limit)
    timeline = faults.Timeline()
    try:
        await cluster.start()
        async with cluster.client() as client:
            driver = Driver(cluster, client, "over")
            for _ in range(10 * limit):
                driver.launch("once", f"sleep={scale.overload_sleep:g}")
            await _conclude(outcome, driver, timeline, scale, limit=limit)
            v = outcome.verdict
            assert v is not None
            outcome.expectations["max concurrent <= limit"] = v.max_concurrent <= limit
            outcome.expectations["all succeeded"] = v.final_states.get("SUCCEEDED") == v.acked
    finally:
        await cluster.stop()


async def netem(scale: Scale, root: Path, outcome: Outcome) -> None:
    """Delay and loss with tc netem between namespaces, where the machine allows it."""
    ok, why = faults.netem_support()
    if not ok:
        outcome.skipped = f"tc netem unavailable here: {why}"
        return
    outcome.skipped = (
        "tc netem works here, but this harness runs hub and spoke on loopback in one "
        "namespace; the namespace variant is not written yet"
    )


Scenario = Callable[[Scale, Path, Outcome], Awaitable[None]]


def outbox_scenarios() -> dict[str, Scenario]:
    """The hub's outbox and several hubds (issue 11), in a module of their own that builds on
    this one's Driver, hence imported here, once everything above exists."""
    from .scenarios_outbox import SCENARIOS as OUTBOX

    return OUTBOX


SCENARIOS: dict[str, Scenario] = {
    "spoked-sigkill": spoked_sigkill,
    "spoke-sigstop": spoke_sigstop,
    "redis-sigkill": redis_sigkill,
    "hubd-sigkill": hubd_sigkill,
    "partition": partition,
    "overload": overload,
    "netem": netem,
    **outbox_scenarios(),
}


async def run_scenario(name: str, scale: Scale, out: Path) -> Outcome:
    """Run one scenario in ``out/name`` (created fresh); never leaves a process behind."""
    outcome = Outcome(name, scale.name)
    root = out / name
    with contextlib.suppress(FileNotFoundError):
        for p in sorted(root.rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
    t0 = time.monotonic()
    try:
        await SCENARIOS[name](scale, root, outcome)
    finally:
        outcome.duration_s = time.monotonic() - t0
        leftovers = agent_processes(root / "ledger.jsonl")
        if leftovers:
            outcome.notes.append(f"agent processes alive after teardown, killed: {leftovers}")
            outcome.expectations["no agent left after teardown"] = False
            for pid in leftovers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
    return outcome
