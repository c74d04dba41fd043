"""Sending as the tenants' principals for the isolation classes
(:mod:`fuzzlib.isolation`): the :class:`Sender`, the classes' failure count and timing, and the
agent ids a reply names.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from google.protobuf import duration_pb2
from google.protobuf.message import Message

from hubspoke import commands, envelope

from . import classes as C
from . import tenants as T
from .endpoints import Endpoint
from .forge import Forge
from .runner import ClassStats, Outcome, Runner

FINAL: Final = frozenset({"SUCCEEDED", "FAILED", "KILLED", "TIMED_OUT", "DEAD_LETTERED"})
HOUR: Final = duration_pb2.Duration(seconds=3600)


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
