"""The classes between principals (issue 9), against :mod:`fuzzlib.tenants`: each one has its
own pass criteria, and every failure of one is counted as *unexpected* with a sample.

=================  ===========================================================================
class              passes when
=================  ===========================================================================
cross_principal    alice (scope ``own``) tries every agent verb on each of bob's agents
                   (running, finished, failed, queued), by bare id and by resource name,
                   through the hub, straight to the spoke and relayed: every answer is
                   NOT_FOUND and exactly (code, reason, message) the answer for an id nobody
                   used; her lists show none of bob's agents; queue-wide verbs are
                   PERMISSION_DENIED; afterwards bob's agents are as they were (states,
                   attempts), bob can still kill his running one and a new one runs.
watch_flood        through the hub and straight to the spoke: alice holds her per-principal
                   cap of watches, bob fills the total; every watch beyond the caps is
                   RESOURCE_EXHAUSTED; meanwhile the operator's spawn, get, list, stats and
                   kill all succeed, an agent finishing then is recorded SUCCEEDED with its
                   exit code, and every held stream stays open until its agent ends.
argv_injection     per profile kind (task after the profile's ``--``; exposed and validated by
                   ``task_pattern``; on stdin; inside ``--task={task}``): a task that breaks
                   the kind's pattern, or is option-like where the kind exposes it, is
                   INVALID_ARGUMENT and leaves no record; every task accepted runs and its
                   program finds it where the profile puts it (the checker exits 0).
redis_tampering    queued records whose profile, task, timeout or issuer were edited in Redis
                   end FAILED with reason TAMPERED, attempt 0, never started, and the edit
                   left no file behind; untouched records in the same batch run.
quota_exhaustion   mallory floods delayed spawns: exactly ``QUOTA`` are stored, every other is
                   RESOURCE_EXHAUSTED QUOTA_EXCEEDED, a delay beyond ``max_delay_s`` is
                   INVALID_ARGUMENT; bob still spawns.
=================  ===========================================================================
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import grpc
from google.protobuf import duration_pb2
from google.protobuf.message import Message

from hubspoke import commands, envelope
from hubspoke.spoke.keys import SpokeKeys

from . import classes as C
from . import tenants as T
from .endpoints import Endpoint
from .forge import AGENT_VERBS, Forge
from .runner import ClassStats, Outcome, Runner

FINAL: Final = frozenset({"SUCCEEDED", "FAILED", "KILLED", "TIMED_OUT", "DEAD_LETTERED"})
NOT_FOUND_REASONS: Final = frozenset({"AGENT_NOT_FOUND"})
HOUR: Final = duration_pb2.Duration(seconds=3600)

ISOLATION_FULL: Final = {
    "cross_principal": 2_000,
    "watch_flood": 2_000,
    "argv_injection": 1_000,
    "redis_tampering": 200,
    "quota_exhaustion": 2_000,
}


def isolation_counts(scale: str) -> dict[str, int]:
    """The full counts, or the reduced ones: one round of every variant, a few seconds each."""
    if scale == "full":
        return dict(ISOLATION_FULL)
    return {
        "cross_principal": 0,  # 0: one round (every verb x target x form x mode)
        "watch_flood": 40,
        "argv_injection": 0,
        "redis_tampering": 10,
        "quota_exhaustion": T.QUOTA + 40,
    }


# -- sending ------------------------------------------------------------------------------------


@dataclass
class Sender:
    """Signs commands as any principal of :mod:`tenants` and sends them through the runner."""

    tenants: T.Tenants
    forge: Forge
    runner: Runner
    endpoints: list[Endpoint]

    def ep(self, server: str, verb: str) -> Endpoint:
        return next(e for e in self.endpoints if e.server == server and e.verb == verb)

    def build(self, principal: str, ep: Endpoint, mode: str, **body: Any) -> tuple[bytes, str]:
        """A valid request of ``principal``; returns its bytes and its command_id (the agent
        id of a spawn)."""
        f = self.forge
        assert ep.verb is not None
        cmd = f.command(ep, issuer=principal, body=f.body(ep.verb, **body) if body else None)
        client = f.sign(cmd.SerializeToString(), self.tenants.principals[principal])
        return f.wrap(ep, mode, client).raw, cmd.command_id

    async def send(
        self,
        principal: str,
        ep: Endpoint,
        mode: str,
        *,
        variant: str = "",
        expect: frozenset[str] = frozenset({C.OK}),
        reasons: frozenset[str] | None = None,
        st: ClassStats | None = None,
        read_all: bool = False,
        **body: Any,
    ) -> tuple[Outcome, str]:
        raw, command_id = self.build(principal, ep, mode, **body)
        p = C.probe(ep, raw, variant or f"{principal}:{ep.verb}@{mode}", expect, reasons)
        o = await self.runner.call(p, read_all=read_all, deadline_s=30)
        if st is not None:
            st.record(p, o)
        return o, command_id

    async def spawn(
        self, principal: str, mode: str = "direct", server: str = "spoke", **body: Any
    ) -> str:
        """A spawn that must succeed (setup); returns the agent id."""
        o, agent = await self.send(principal, self.ep(server, "spawn_agent"), mode, **body)
        if o.code != C.OK:
            raise RuntimeError(f"setup spawn by {principal} refused: {o.code} {o.reason} {o}")
        return agent

    async def call_ok(self, principal: str, server: str, verb: str, mode: str, **body: Any) -> str:
        o, _ = await self.send(principal, self.ep(server, verb), mode, **body)
        return o.code


def modes(server: str) -> tuple[str, ...]:
    return ("hub",) if server == "hub" else ("direct", "relay")


def fail(st: ClassStats, what: str, **detail: Any) -> None:
    """Count one broken pass criterion of the class, with its evidence."""
    st.unexpected += 1
    st.extra.setdefault("failed_checks", {}).setdefault(what, 0)
    st.extra["failed_checks"][what] += 1
    if len(st.samples) < 24:
        st.samples.append({"check": what, **{k: str(v)[:1500] for k, v in detail.items()}})


def agent_ids(ep: Endpoint, responses: list[bytes]) -> set[str]:
    """Every ``agent_id`` in the signed replies of one call (pages, fan-outs, events)."""
    out: set[str] = set()
    for raw in responses:
        resp = ep.response.FromString(raw)
        envs = list(getattr(resp, "replies", [])) or [resp.reply]  # type: ignore[attr-defined]
        for env in envs:
            if env.payload_type != envelope.PAYLOAD_TYPE_REPLY or not env.payload:
                continue
            _walk(commands.parse_reply(env.payload), out)
    return out


def _walk(msg: Message, out: set[str]) -> None:
    for fd, value in msg.ListFields():
        if fd.name == "agent_id" and isinstance(value, str):
            out.add(value)
        elif fd.message_type is not None and not fd.message_type.GetOptions().map_entry:
            for item in [value] if isinstance(value, Message) else value:
                _walk(item, out)


def new_stats(runner: Runner, name: str, doc: str, expected: Iterable[str]) -> ClassStats:
    return runner.stats.setdefault(name, ClassStats(name, "isolation", frozenset(expected), doc))


async def timed(
    st: ClassStats, runner: Runner, body: Callable[[], Awaitable[None]], limit_s: float
) -> ClassStats:
    st.queued_before = await runner.fed.agent_count()
    start = time.monotonic()
    try:
        async with asyncio.timeout(limit_s):
            await body()
    except TimeoutError:
        fail(st, "class_timed_out", after_s=limit_s)
    st.duration_s += time.monotonic() - start
    st.queued_after = await runner.fed.agent_count()
    return st


# -- cross_principal --------------------------------------------------------------------------

AGENT_TARGETS: Final = ("running", "finished", "failed", "queued")
QUEUE_VERBS: Final = ("pause_queue", "resume_queue", "drain_queue")
LIST_VERBS: Final = ("list_agents", "list_dead_letters")


async def cross_principal(s: Sender, n: int) -> ClassStats:
    st = new_stats(
        s.runner,
        "cross_principal",
        "alice (scope own) tries every agent verb on bob's agents, lists and queue verbs: "
        "answers as for an unknown id, sees none of bob's agents, changes nothing",
        {C.NOT_FOUND, C.DENIED, C.OK},
    )
    t = s.tenants

    async def body() -> None:
        bob = {
            "running": await s.spawn(T.BOB, task="duration=600 steps=0"),
            "finished": await s.spawn(T.BOB, task="duration=0"),
            "failed": await s.spawn(T.BOB, task="fail duration=0", max_attempts=1),
            "queued": await s.spawn(T.BOB, task="duration=0", delay=HOUR),
        }
        want = {
            bob["running"]: frozenset({"RUNNING"}),
            bob["finished"]: frozenset({"SUCCEEDED"}),
            bob["failed"]: frozenset({"FAILED", "DEAD_LETTERED"}),
            bob["queued"]: frozenset({"QUEUED"}),
        }
        states = await t.wait_states(want, 60)
        if any(states[a] not in w for a, w in want.items()):
            fail(st, "setup_states", states=states)
            return
        before = {a: await _snapshot(t, a) for a in bob.values()}

        agent_eps = [e for e in s.endpoints if e.verb in _agent_verbs(s.endpoints)]
        combos = [
            (ep, mode, target, form)
            for ep in agent_eps
            for mode in modes(ep.server)
            for target in AGENT_TARGETS
            for form in ("bare", "resource")
        ]
        total = max(n, len(combos))
        pairs = 0
        for i in range(total):
            ep, mode, target, form = combos[i % len(combos)]
            await _oracle_pair(s, st, ep, mode, bob[target], target, form)
            pairs += 1

        bobs = set(bob.values())
        for verb in LIST_VERBS:
            for ep in (e for e in s.endpoints if e.verb == verb):
                for mode in modes(ep.server):
                    o, _ = await s.send(
                        T.ALICE, ep, mode, variant=f"{verb}@{mode}", st=st, read_all=True
                    )
                    seen = agent_ids(ep, o.responses) & bobs
                    if seen:
                        fail(st, "list_shows_anothers_agent", verb=verb, mode=mode, seen=seen)
        for verb in QUEUE_VERBS:
            for ep in (e for e in s.endpoints if e.verb == verb):
                for mode in modes(ep.server):
                    await s.send(
                        T.ALICE, ep, mode, variant=f"{verb}@{mode}", expect=frozenset({C.DENIED})
                    )
                    st.extra.setdefault("queue_verbs_denied", 0)
                    st.extra["queue_verbs_denied"] += 1

        after = {a: await _snapshot(t, a) for a in bob.values()}
        changed = {a: (before[a], after[a]) for a in bob.values() if before[a] != after[a]}
        if changed:
            fail(st, "victims_changed", changed=changed)
        code = await s.call_ok(T.BOB, "spoke", "kill_agent", "direct", agent=bob["running"])
        if code != C.OK:
            fail(st, "owner_cannot_kill_own_agent", code=code)
        fresh = await s.spawn(T.BOB, task="duration=0")
        done = await t.wait_states({fresh: frozenset({"SUCCEEDED"})}, 30)
        if done[fresh] != "SUCCEEDED":
            fail(st, "queue_no_longer_runs", state=done[fresh])
        st.extra.update(pairs=pairs, victims=len(bob), victims_untouched=not changed)

    return await timed(st, s.runner, body, 600)


def _agent_verbs(endpoints: list[Endpoint]) -> set[str]:
    return {e.verb for e in endpoints if e.verb in AGENT_VERBS}


async def _snapshot(t: T.Tenants, agent_id: str) -> tuple[str, ...]:
    rec = await t.record(agent_id)
    return tuple(rec.get(k, "") for k in ("state", "attempt", "issuer", "profile", "task"))


def _agent_ref(agent_id: str, form: str) -> str:
    return agent_id if form == "bare" else f"spokes/{T.SPOKE}/agents/{agent_id}"


def _nobodys_id(rng: random.Random) -> str:
    return f"nobody-{rng.getrandbits(64):016x}"


async def _oracle_pair(
    s: Sender, st: ClassStats, ep: Endpoint, mode: str, victim: str, target: str, form: str
) -> None:
    """Alice's command on bob's agent, then the same on an id nobody used: the same answer."""
    assert ep.verb is not None
    body: dict[str, Any] = {"agent": _agent_ref(victim, form)}
    variant = f"{ep.verb}:{target}:{form}@{mode}"
    o, _ = await s.send(
        T.ALICE,
        ep,
        mode,
        variant=variant,
        expect=frozenset({C.NOT_FOUND}),
        reasons=NOT_FOUND_REASONS,
        st=st,
        **body,
    )
    unknown = _nobodys_id(s.forge.rng)
    control, _ = await s.send(T.ALICE, ep, mode, agent=_agent_ref(unknown, form))
    st.primers[control.code] += 1
    theirs = (o.code, o.reason, o.message.replace(victim, "<ID>"))
    nobodys = (control.code, control.reason, control.message.replace(unknown, "<ID>"))
    if theirs != nobodys:
        fail(st, "answer_differs_from_unknown_id", variant=variant, theirs=theirs, unknown=nobodys)


# -- watch_flood --------------------------------------------------------------------------------


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


# -- argv_injection -----------------------------------------------------------------------------

OPTION_LIKE: Final = (
    "--basetemp=/tmp/hubspoke-fuzz",
    "--junitxml=/tmp/hubspoke-fuzz.xml",
    "-rf",
    "-",
    "--",
    "-c",
    "--help",
    "-o=x",
    "--rootdir=..",
    "-x",
)
PATTERN_BREAKING: Final = (
    "a b",
    "a;id",
    "$(id)",
    "a\nb",
    "UPPER",
    "a|b",
    "x\ty",
    "`id`",
    "a&&b",
    "\u00e9t\u00e9",
)
PLAIN: Final = ("tests/unit", "a.b", "x_1")
KINDS: Final[dict[str, dict[str, bool]]] = {
    # kind -> whether each group is accepted (True) or INVALID_ARGUMENT (False)
    "dashdash": {"option": True, "breaking": True, "plain": True},
    "pattern": {"option": False, "breaking": False, "plain": True},
    "stdin": {"option": True, "breaking": False, "plain": True},
    "option": {"option": True, "breaking": False, "plain": True},
}
"""After ``--``, an option-like task is an operand; on stdin or inside ``--task=``, it is data;
exposed (``pattern``), it is refused. Every kind but ``dashdash`` has a task_pattern."""


async def argv_injection(s: Sender, n: int) -> ClassStats:
    st = new_stats(
        s.runner,
        "argv_injection",
        "option-like, pattern-breaking and plain tasks for each task placement kind: refused "
        "with INVALID_ARGUMENT and nothing stored, or run with the task where the profile puts it",
        {C.OK, C.INVALID},
    )
    t = s.tenants
    cases = [
        (kind, group, task)
        for kind in KINDS
        for group, tasks in (
            ("option", OPTION_LIKE),
            ("breaking", PATTERN_BREAKING),
            ("plain", PLAIN),
        )
        for task in tasks
    ]
    routes = [("hub", "hub"), ("spoke", "direct"), ("spoke", "relay")]
    total = max(n, len(cases))
    sem = asyncio.Semaphore(4)  # at most 4 waiting agents at once: far below the quota
    counts = {"ran": 0, "refused": 0}

    async def one(i: int) -> None:
        kind, group, task = cases[i % len(cases)]
        server, mode = routes[(i // len(cases) + i) % len(routes)]
        principal = (T.ALICE, T.BOB)[i % 2]
        accepted = KINDS[kind][group]
        expect = frozenset({C.OK}) if accepted else frozenset({C.INVALID})
        async with sem:
            o, agent = await s.send(
                principal,
                s.ep(server, "spawn_agent"),
                mode,
                variant=f"{kind}:{group}@{mode}",
                expect=expect,
                st=st,
                profile=kind,
                task=task,
            )
            if o.code == C.OK:
                got = await t.wait_states({agent: FINAL}, 60)
                if got[agent] != "SUCCEEDED":
                    rec = await t.record(agent)
                    fail(st, "accepted_task_misplaced", kind=kind, task=task, record=rec)
                counts["ran"] += 1
            elif await t.state(agent):
                fail(st, "refused_task_stored", kind=kind, task=task, agent=agent)
            else:
                counts["refused"] += 1

    async def body() -> None:
        await asyncio.gather(*(one(i) for i in range(total)))
        st.extra.update(counts, cases=len(cases))

    return await timed(st, s.runner, body, 900)


# -- redis_tampering ----------------------------------------------------------------------------

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


CLASSES: Final[list[tuple[str, Callable[[Sender, int], Awaitable[ClassStats]]]]] = [
    ("cross_principal", cross_principal),
    ("argv_injection", argv_injection),
    ("redis_tampering", redis_tampering),
    ("watch_flood", watch_flood),
    ("quota_exhaustion", quota_exhaustion),
]
"""In this order: the quota flood last, since its stored agents stay queued."""


async def run_isolation(
    scale: str, root: Path, rng: random.Random, endpoints: list[Endpoint], concurrency: int
) -> tuple[dict[str, ClassStats], dict[str, Any]]:
    """Start the tenants' federation in ``root``, run every class, stop it. Returns the
    classes' stats and what the run saw (counts, phases, health, teardown)."""
    counts = isolation_counts(scale)
    phases: dict[str, float] = {}
    mark = time.monotonic()
    fed = await T.start(root)
    phases["tenants_start"] = time.monotonic() - mark
    runner = Runner(fed, concurrency, progress=True)
    health: dict[str, str] = {}
    try:
        s = Sender(fed, Forge(fed.keys, rng, hub_name=T.HUB, spoke_name=T.SPOKE), runner, endpoints)
        for name, cls in CLASSES:
            mark = time.monotonic()
            st = await cls(s, counts[name])
            phases[name] = time.monotonic() - mark
            print(
                f"fuzz: {name}: {st.sent} sent in {st.duration_s:.1f} s, "
                f"{st.unexpected} unexpected",
                file=sys.stderr,
            )
        health["signed_call_after"] = await s.call_ok("operator", "hub", "list_agents", "hub")
        health["watch_streams_open_after"] = str(fed.open_watch_streams())
    finally:
        mark = time.monotonic()
        await fed.close()
        phases["tenants_stop"] = time.monotonic() - mark
    return runner.stats, {
        "counts": counts,
        "phases_s": {k: round(v, 1) for k, v in phases.items()},
        "health": health,
        "teardown_timeouts": fed.teardown_timeouts,
        "quota": T.QUOTA,
        "caps": {
            "spoke": [T.SPOKE_WATCHERS_PER_PRINCIPAL, T.SPOKE_WATCHERS],
            "hub": [T.HUB_WATCHERS_PER_PRINCIPAL, T.HUB_WATCHERS],
        },
    }
