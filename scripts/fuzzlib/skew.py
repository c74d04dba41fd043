"""The one positive class of the adversarial run, ``within_skew``: valid commands signed with a
clock off by less than the allowed skew, through every verb, must succeed and their replies
verify (run by :mod:`fuzzlib.run` after the negative classes).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import sys
import time
from typing import Any, Final

from hubspoke import commands, envelope, keys
from hubspoke.gen.federation.v1 import command_pb2
from hubspoke.trust import Role

from . import classes as C
from . import federation
from .endpoints import Endpoint
from .forge import HUB_ANSWERED
from .runner import ClassStats, Runner, rss_mb


async def within_skew(ctx: C.Ctx, runner: Runner, fed: federation.Federation) -> ClassStats:
    """Clock skew inside the window: issued up to max_skew ahead, or expired less than
    max_skew ago, through the hub, straight to the spoke, and relayed. Every RPC must say
    OK with a reply signed by the right peer and bound to the command."""
    st = runner.stats.setdefault(
        "within_skew",
        ClassStats(
            "within_skew",
            "positive",
            frozenset({C.OK}),
            "issued max_skew-10 s ahead, or expired max_skew-10 s ago: accepted by every RPC",
        ),
    )
    st.queued_before = await fed.agent_count()
    gc.collect()
    st.rss_before_mb = rss_mb()
    start = time.monotonic()
    sender = _SkewedSender(ctx, runner, st)
    final = {"SUCCEEDED", "FAILED", "KILLED", "TIMED_OUT", "DEAD_LETTERED"}
    failed = {"FAILED", "DEAD_LETTERED"}
    for server, mode in (("hub", "hub"), ("spoke", "direct"), ("spoke", "relay")):
        eps = {e.verb: e for e in ctx.endpoints if e.server == server and e.verb}

        async def send(verb: str, label: str, **body: Any) -> str:
            return await sender.send(eps[verb], mode, label, **body)  # noqa: B023 - awaited here

        # "ahead": agents run. "behind": accepted, but an agent whose command has expired
        # by the time a worker takes it never starts (FAILED/EXPIRED, spoke/worker.py), so
        # the kill in that round aims at a long agent from the first round.
        # A replay keeps the original command's expiry and is refused past it
        # (START_DEADLINE_PASSED, docs/security.md §15), so both rounds replay the failing
        # agent of the first round, whose command is still valid.
        long_runners, failing_ones, verifying = [], [], []
        for label in ("ahead", "behind"):
            a = await send("spawn_agent", label, task="duration=0.2")
            if label == "ahead":  # waits for a verify: both rounds settle it (then a retry)
                verifying.append(await send("spawn_agent", label, task="duration=0 verify=c"))
            failing = await send("spawn_agent", label, task="fail duration=0", max_attempts=1)
            failing_ones.append(failing)
            long_runners.append(await send("spawn_agent", label, task="duration=60"))
            if label == "ahead":
                long_runners.append(await send("spawn_agent", label, task="duration=60"))
            await _wait_states(
                fed,
                {
                    a: {"SUCCEEDED"} if label == "ahead" else final,
                    failing: failed,
                    failing_ones[0]: failed,
                    verifying[0]: {"NEEDS_VERIFICATION", "SUCCEEDED"},
                },
            )
            await send("get_agent", label, agent=a)
            await send("watch_agent", label, agent=a)
            # A message to the long agent both rounds have alive (killed last, below).
            await send("send_input", label, agent=long_runners[1], text="skewed")
            await send("kill_agent", label, agent=long_runners[0 if label == "ahead" else 1])
            await send("replay_agent", label, agent=failing_ones[0])
            await send("verify_agent", label, agent=verifying[0], items={"c": "passed"})
            # Approvals: two held spawns, one approved and one rejected by the approver.
            held = [await send("spawn_agent", label, profile="held", task="x") for _ in "ar"]
            approver = ctx.forge.keys.approver
            for verb, agent in (("approve_agent", held[0]), ("reject_agent", held[1])):
                await sender.send(eps[verb], mode, label, key=approver, agent=agent, reason="ok")
            for verb in sorted(set(eps) - _AGENT_FLOW):
                if verb == "enroll_spoke":  # a token for a new name
                    await send(verb, label, name=f"fuzz-{label}")
                elif verb == "remove_spoke":  # an enrolled spoke to remove
                    await fed.add_member(f"fuzz-member-{label}")
                    await send(verb, label, name=f"fuzz-member-{label}")
                else:
                    await send(verb, label)
    st.duration_s = time.monotonic() - start
    st.queued_after = await fed.agent_count()
    gc.collect()
    st.rss_after_mb = rss_mb()
    uncovered = sorted(e.key for e in ctx.endpoints if e.key not in sender.covered)
    st.extra.update(
        replies_verified=sender.replies_ok, rpcs_not_covered=uncovered, stuck_agents=fed.stuck
    )
    return st


_AGENT_FLOW: Final = frozenset(
    {
        "spawn_agent",
        "get_agent",
        "watch_agent",
        "kill_agent",
        "replay_agent",
        "verify_agent",
        "send_input",
        "approve_agent",
        "reject_agent",
    }
)


class _SkewedSender:
    def __init__(self, ctx: C.Ctx, runner: Runner, st: ClassStats) -> None:
        self.ctx, self.runner, self.st = ctx, runner, st
        self.margin = ctx.max_skew - dt.timedelta(seconds=10)
        self.covered: set[str] = set()
        self.replies_ok = 0

    async def send(
        self,
        ep: Endpoint,
        mode: str,
        label: str,
        key: keys.SigningKey | None = None,
        **body: Any,
    ) -> str:
        """Send one skewed command, signed as the operator (or ``key``'s principal); return
        its command_id (the agent id of a spawn)."""
        f, now = self.ctx.forge, commands.now()
        if label == "ahead":
            at = rat = now + self.margin
        else:  # expire_time already ``margin`` in the past, for the command and the relay
            at = now - self.margin - dt.timedelta(minutes=5)
            rat = now - self.margin - dt.timedelta(seconds=60)
        assert ep.verb is not None
        issuer = key.name if key is not None else "operator"
        cmd = f.command(ep, at=at, body=f.body(ep.verb, **body) if body else None, issuer=issuer)
        payload = cmd.SerializeToString()
        client = f.sign(payload, key)
        outer = f.relay(client, at=rat) if mode == "relay" else client
        p = C.probe(ep, f.request(ep, outer), f"{label}@{mode}", frozenset({C.OK}))
        o = await self.runner.call(p, read_all=True, deadline_s=30)
        self.st.record(p, o)
        self.covered.add(ep.key)
        if o.code == C.OK:
            self.replies_ok += _replies_verified(self.ctx, ep, cmd, payload, o.responses)
        return cmd.command_id


def _replies_verified(
    ctx: C.Ctx, ep: Endpoint, cmd: command_pb2.Command, payload: bytes, responses: list[bytes]
) -> int:
    """1 if the call brought at least one signed reply and every one of them verifies (by
    the right role) and answers this very command (command_id, request_digest), else 0."""
    good = bad = 0
    role = Role.HUB if ep.verb in HUB_ANSWERED else Role.SPOKE
    for raw in responses:
        resp = ep.response.FromString(raw)
        envs = list(getattr(resp, "replies", [])) or [resp.reply]  # type: ignore[attr-defined]
        for env in envs:
            try:
                v = envelope.verify(
                    env, payload_type=envelope.PAYLOAD_TYPE_REPLY, trust=ctx.trust, roles={role}
                )
            except Exception:  # any failure means: not verified
                bad += 1
                continue
            reply = commands.parse_reply(v.payload)
            if reply.command_id == cmd.command_id and reply.request_digest == commands.digest(
                payload
            ):
                good += 1
            else:
                bad += 1
    return int(good > 0 and bad == 0)


async def _wait_states(fed: federation.Federation, want: dict[str, set[str]]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        states = {a: await fed.agent_state(a) for a in want}
        if all(states[a] in s for a, s in want.items()):
            return
        await asyncio.sleep(0.1)
    print(f"fuzz: within_skew: agents did not reach {want}: {states}", file=sys.stderr)
    fed.stuck.append({a: {"want": sorted(w), "state": states[a]} for a, w in want.items()})
