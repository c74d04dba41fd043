"""The ``cross_principal`` isolation class: alice's every agent verb on bob's agents, and the
NOT_FOUND oracle it must match (pass criteria: :mod:`fuzzlib.isolation`).
"""

from __future__ import annotations

import random
from typing import Any, Final

from . import classes as C
from . import tenants as T
from .endpoints import Endpoint
from .forge import AGENT_VERBS
from .isolation_sender import HOUR, Sender, agent_ids, fail, modes, new_stats, timed
from .runner import ClassStats

NOT_FOUND_REASONS: Final = frozenset({"AGENT_NOT_FOUND"})

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
