"""The ``watch_flood`` isolation class: watch streams held up to the per-principal and total
caps, through the hub and straight to the spoke (pass criteria: :mod:`fuzzlib.isolation`).
"""

from __future__ import annotations

import asyncio

import grpc

from . import classes as C
from . import tenants as T
from .endpoints import Endpoint
from .isolation_sender import Sender, fail, new_stats, timed
from .runner import ClassStats


class HeldWatch:
    """One WatchAgent stream kept open and read to its end by a task of its own."""

    def __init__(self, s: Sender, principal: str, ep: Endpoint, mode: str, agent: str) -> None:
        raw, _ = s.build(principal, ep, mode, agent=agent)
        self.call = s.tenants.channel(ep.server).unary_stream(ep.path)(raw, timeout=300)
        self.messages = 0
        self.error = ""
        self.first = asyncio.Event()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for _ in self.call:
                self.messages += 1
                self.first.set()
        except grpc.aio.AioRpcError as exc:
            self.error = exc.code().name
        except asyncio.CancelledError:
            self.error = "CANCELLED"
        finally:
            self.first.set()


async def watch_flood(s: Sender, n: int) -> ClassStats:
    st = new_stats(
        s.runner,
        "watch_flood",
        "watches beyond the per-principal and total caps, through the hub and straight to "
        "the spoke: RESOURCE_EXHAUSTED; every other call and a finishing agent unaffected",
        {C.EXHAUSTED, C.OK},
    )
    t = s.tenants
    per_phase = max(1, n // 4)

    async def body() -> None:
        for server, mode, pp, total in (
            ("hub", "hub", T.HUB_WATCHERS_PER_PRINCIPAL, T.HUB_WATCHERS),
            ("spoke", "direct", T.SPOKE_WATCHERS_PER_PRINCIPAL, T.SPOKE_WATCHERS),
        ):
            await _flood_phase(s, st, server, mode, pp, total, per_phase)
            left = await t.until_no_watch()
            if left:
                fail(st, "watch_slots_not_released", server=server, still_open=left)

    return await timed(st, s.runner, body, 600)


async def _flood_phase(
    s: Sender, st: ClassStats, server: str, mode: str, pp: int, total: int, flood: int
) -> None:
    t = s.tenants
    watch = s.ep(server, "watch_agent")
    mine = await s.spawn(T.ALICE, task="duration=600 steps=0")
    theirs = await s.spawn(T.BOB, task="duration=600 steps=0")
    got = await t.wait_states({mine: frozenset({"RUNNING"}), theirs: frozenset({"RUNNING"})})
    if set(got.values()) != {"RUNNING"}:
        fail(st, "setup_states", server=server, states=got)
        return
    held: list[HeldWatch] = []
    try:
        held += [HeldWatch(s, T.ALICE, watch, mode, mine) for _ in range(pp)]
        await _all_open(st, held, f"alice@{server}")
        await _refused_watches(s, st, T.ALICE, watch, mode, mine, flood, f"per_principal@{server}")
        more = [HeldWatch(s, T.BOB, watch, mode, theirs) for _ in range(total - pp)]
        held += more
        await _all_open(st, more, f"bob@{server}")
        await _refused_watches(s, st, T.BOB, watch, mode, theirs, flood, f"total@{server}")
        await _refused_watches(s, st, "operator", watch, mode, theirs, 1, f"total_op@{server}")
        st.extra[f"held_{server}"] = sum(1 for w in held if not w.task.done())

        # Meanwhile: every other call succeeds, and an agent that finishes is recorded.
        spawn_mode = "hub" if server == "hub" else "relay"
        quick = await s.spawn("operator", spawn_mode, server, task="duration=0.3 steps=2")
        victim = await s.spawn("operator", spawn_mode, server, task="duration=600 steps=0")
        codes = [
            await s.call_ok("operator", server, "get_agent", spawn_mode, agent=quick),
            await s.call_ok("operator", server, "list_agents", spawn_mode),
            await s.call_ok("operator", server, "get_queue_stats", spawn_mode),
            await s.call_ok(T.BOB, server, "get_agent", spawn_mode, agent=theirs),
        ]
        done = await t.wait_states(
            {quick: frozenset({"SUCCEEDED"}), victim: frozenset({"RUNNING"})}, 30
        )
        codes.append(await s.call_ok("operator", server, "kill_agent", spawn_mode, agent=victim))
        st.extra.setdefault("other_calls", 0)
        st.extra["other_calls"] += len(codes) + 2
        if any(c != C.OK for c in codes):
            fail(st, "other_call_failed", server=server, codes=codes)
        rec = await t.record(quick)
        if done[quick] != "SUCCEEDED" or rec.get("exit_code") != "0":
            fail(st, "finishing_agent_not_recorded", server=server, record=rec)
        if any(w.task.done() for w in held):
            fail(st, "held_watch_ended_early", server=server, errors=[w.error for w in held])

        # The watched agents end: every held stream ends with them.
        for owner, agent in ((T.ALICE, mine), (T.BOB, theirs)):
            if await s.call_ok(owner, "spoke", "kill_agent", "direct", agent=agent) != C.OK:
                fail(st, "owner_kill_failed", agent=agent)
        try:
            async with asyncio.timeout(60):
                await asyncio.gather(*(w.task for w in held))
        except TimeoutError:
            fail(st, "held_watch_did_not_end", server=server)
        errors = [w.error for w in held if w.error]
        if errors:
            fail(st, "held_watch_failed", server=server, errors=errors[:5])
    finally:
        for w in held:
            w.call.cancel()
        await asyncio.gather(*(w.task for w in held), return_exceptions=True)


async def _all_open(st: ClassStats, held: list[HeldWatch], label: str) -> None:
    try:
        async with asyncio.timeout(30):
            await asyncio.gather(*(w.first.wait() for w in held))
    except TimeoutError:
        pass
    bad = [w.error or "no message" for w in held if w.messages == 0]
    st.extra.setdefault("opened", 0)
    st.extra["opened"] += len(held) - len(bad)
    if bad:
        fail(st, "watch_within_caps_refused", label=label, errors=bad[:5], count=len(bad))


async def _refused_watches(
    s: Sender, st: ClassStats, principal: str, ep: Endpoint, mode: str, agent: str, k: int, v: str
) -> None:
    sem = asyncio.Semaphore(16)

    async def one() -> None:
        async with sem:
            await s.send(
                principal, ep, mode, variant=v, expect=frozenset({C.EXHAUSTED}), st=st, agent=agent
            )

    await asyncio.gather(*(one() for _ in range(k)))
