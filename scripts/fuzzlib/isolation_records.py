"""The isolation classes about stored records: ``redis_tampering`` (queued records edited in
Redis) and ``quota_exhaustion`` (a principal's delayed spawns past its quota); pass criteria:
:mod:`fuzzlib.isolation`.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Final

from google.protobuf import duration_pb2

from hubspoke.spoke.keys import SpokeKeys

from . import classes as C
from . import tenants as T
from .isolation_sender import FINAL, HOUR, Sender, fail, new_stats, timed
from .runner import ClassStats

TAMPER: Final = ("profile", "task", "timeout", "issuer", "profile_and_task")
BATCH: Final = 50
"""Agents held queued at once (the queue is paused): below the operator's quota."""


async def redis_tampering(s: Sender, n: int) -> ClassStats:
    st = new_stats(
        s.runner,
        "redis_tampering",
        "queued records with an edited profile, task, timeout or issuer: FAILED/TAMPERED, "
        "never started, the edit never ran; untouched records run",
        {C.OK},
    )
    t = s.tenants
    counts = {"tampered": 0, "tampered_failed": 0, "controls_ran": 0}

    async def body() -> None:
        done = 0
        batch_no = 0
        while done < n:
            k = min(BATCH, n - done)
            await _tamper_batch(s, st, batch_no, k, max(1, k // 5), counts)
            done += k
            batch_no += 1
        left = sorted(p.name for p in t.witness_dir.iterdir() if not p.name.startswith("ctl-"))
        if left:
            fail(st, "edit_ran", files=left[:10], count=len(left))
        st.extra.update(counts)

    return await timed(st, s.runner, body, 900)


async def _tamper_batch(
    s: Sender, st: ClassStats, batch: int, k: int, controls: int, counts: dict[str, int]
) -> None:
    t = s.tenants
    w = t.witness_dir
    routes = [("hub", "hub"), ("spoke", "direct"), ("spoke", "relay")]
    if await s.call_ok("operator", "spoke", "pause_queue", "direct") != C.OK:
        fail(st, "pause_failed")
        return
    tampered: dict[str, str] = {}
    for i in range(k):
        variant = TAMPER[i % len(TAMPER)]
        server, mode = routes[i % len(routes)]
        name = f"{batch}-{i}"
        body: dict[str, Any] = {"profile": "touch", "task": str(w / f"orig-{name}")}
        if variant == "profile_and_task":
            body = {"profile": "synthetic", "task": "duration=0"}
        elif variant == "timeout":
            # A timeout the spawn names is checked exactly; one left to the profile is held to
            # the profile's at start (an edit gains nothing), which is not TAMPERED.
            body["timeout"] = duration_pb2.Duration(seconds=600)
        o, agent = await s.send(
            "operator",
            s.ep(server, "spawn_agent"),
            mode,
            variant=f"{variant}@{mode}",
            st=st,
            **body,
        )
        if o.code != C.OK:
            continue
        key = _agent_key(agent)
        if variant == "profile":
            edit = {"profile": "dashdash"}
        elif variant == "task":
            edit = {"task": str(w / f"edited-{name}")}
        elif variant == "timeout":
            edit = {"timeout_ms": "3600000"}
        elif variant == "issuer":
            edit = {"issuer": T.BOB}
        else:
            edit = {"profile": "touch", "task": str(w / f"edited-{name}")}
        await t.redis.hset(key, mapping=edit)  # type: ignore[arg-type]
        tampered[agent] = variant
    ctl: dict[str, str] = {}
    for i in range(controls):
        server, mode = routes[i % len(routes)]
        path = w / f"ctl-{batch}-{i}"
        o, agent = await s.send(
            "operator",
            s.ep(server, "spawn_agent"),
            mode,
            variant=f"control@{mode}",
            st=st,
            profile="touch",
            task=str(path),
        )
        if o.code == C.OK:
            ctl[agent] = str(path)
    if await s.call_ok("operator", "spoke", "resume_queue", "direct") != C.OK:
        fail(st, "resume_failed")
    states = await t.wait_states({a: FINAL for a in [*tampered, *ctl]}, 120)
    counts["tampered"] += len(tampered)
    for agent, variant in tampered.items():
        rec = await t.record(agent)
        good = (
            states[agent] == "FAILED"
            and rec.get("reason") == "TAMPERED"
            and rec.get("attempt") == "0"
            and not rec.get("start_ms")
        )
        if good:
            counts["tampered_failed"] += 1
        else:
            rec = {k: v for k, v in rec.items() if k not in ("envelope", "relay")}
            fail(st, "tampered_not_refused", variant=variant, record=rec)
    for agent, witness in ctl.items():
        if states[agent] == "SUCCEEDED" and os.path.exists(witness):  # noqa: ASYNC240 - a stat
            counts["controls_ran"] += 1
        else:
            fail(st, "control_did_not_run", state=states[agent])


def _agent_key(agent_id: str) -> str:
    return SpokeKeys(T.SPOKE).agent(agent_id)


# -- quota_exhaustion ---------------------------------------------------------------------------


async def quota_exhaustion(s: Sender, n: int) -> ClassStats:
    st = new_stats(
        s.runner,
        "quota_exhaustion",
        f"mallory floods far-delayed spawns: {T.QUOTA} stored, the rest QUOTA_EXCEEDED; a "
        "delay beyond max_delay_s INVALID_ARGUMENT; bob still spawns",
        {C.OK, C.EXHAUSTED, C.INVALID},
    )
    t = s.tenants
    routes = [("hub", "hub"), ("spoke", "direct"), ("spoke", "relay")]
    too_late = duration_pb2.Duration(seconds=int(T.MAX_DELAY_S) + 60)

    async def body() -> None:
        before = await _owned(t, T.MALLORY)
        for server, mode in routes:
            await s.send(
                T.MALLORY,
                s.ep(server, "spawn_agent"),
                mode,
                variant=f"delay_over_limit@{mode}",
                expect=frozenset({C.INVALID}),
                st=st,
                delay=too_late,
            )
        sem = asyncio.Semaphore(32)
        ok = 0

        async def one(i: int) -> None:
            nonlocal ok
            server, mode = routes[i % len(routes)]
            async with sem:
                o, _ = await s.send(
                    T.MALLORY,
                    s.ep(server, "spawn_agent"),
                    mode,
                    variant=f"flood@{mode}",
                    expect=frozenset({C.OK, C.EXHAUSTED}),
                    reasons=frozenset({"QUOTA_EXCEEDED"}),
                    st=st,
                    delay=HOUR,
                )
            ok += o.code == C.OK

        await asyncio.gather(*(one(i) for i in range(n)))
        stored = await _owned(t, T.MALLORY) - before
        if ok != T.QUOTA or stored != T.QUOTA:
            fail(st, "quota_not_exact", accepted=ok, stored=stored, quota=T.QUOTA)
        others = 0
        for server, mode in routes:
            o, _ = await s.send(
                T.BOB, s.ep(server, "spawn_agent"), mode, variant=f"other@{mode}", st=st, delay=HOUR
            )
            others += o.code == C.OK
        if others != len(routes):
            fail(st, "other_principal_refused", accepted=others)
        st.extra.update(
            quota=T.QUOTA, flood_accepted=ok, flood_stored=stored, other_principal_ok=others
        )

    return await timed(st, s.runner, body, 600)


async def _owned(t: T.Tenants, principal: str) -> int:
    n = 0
    async for key in t.redis.scan_iter(
        match=SpokeKeys(T.SPOKE).agent("*"), count=1000, _type="HASH"
    ):
        if (await t.redis.hget(key, "issuer")) == principal.encode():
            n += 1
    return n
