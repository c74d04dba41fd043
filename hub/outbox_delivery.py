"""Delivering the outbox: each held command, once its spoke answers again, exactly once in effect.

Every ``poll_s`` (and at once when :meth:`Deliverer.wake` is called, e.g. when a spoke's
probe succeeds) the deliverer looks at every spoke with held commands whose circuit is not
open and that the probe loop does not find DISCONNECTED. For each due entry, kills first, it
takes a lease in Redis (so each entry is delivered by one hubd at a time), then:

* a spawn past its start deadline ends EXPIRED, reason UNDELIVERED, and is never sent;
* otherwise the client's envelope goes out in a fresh relay carrying the hub's acceptance
  time (``Relayer.call``); the spoke checks the client's window against that time and its
  claim on the command id makes a second delivery return the same agent;
* the spoke answered (a reply, or an error of its own such as PERMISSION_DENIED): the entry
  is done (a refused spawn ends FAILED with the spoke's reason, DELIVERY_REFUSED);
* no answer, or an answer that says "later" (``TRY_LATER``: the spoke's rate limit for the
  principal, its Redis unavailable, a concurrent change): the attempt is counted and the
  next pushed back exponentially (``retry_base_s`` .. ``retry_max_s``), and the spoke's
  other entries wait for the next round. A heal after a long partition delivers a burst of
  one principal's commands; the spoke's rate limit paces it and refuses none.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import Awaitable, Callable

import structlog

from hubspoke import aio, commands, errors
from hubspoke.gen.federation.v1 import command_pb2

from .audit import AuditLog
from .audit_chain import Entry
from .circuit import CircuitOpenError
from .outbox import SPAWN, Held, Outbox
from .outbox_desk import OutboxDesk
from .relay import Inbound, Relayer

__all__ = ["TRY_LATER", "Deliverer"]

TRY_LATER = frozenset({"RATE_LIMITED", "BACKEND_UNAVAILABLE", "CONCURRENT_MODIFICATION"})
"""A spoke's refusals that mean "not now": the held command is tried again, not ended."""

log = structlog.get_logger("hubspoke.hub.outbox")


class Deliverer:
    """The background delivery of the hub's outbox (module docstring)."""

    def __init__(
        self,
        desk: OutboxDesk,
        relayer: Relayer,
        poll_s: float,
        remember: Callable[[str, str], Awaitable[None]],
        audit: AuditLog | None = None,
        batch: int = 100,
    ) -> None:
        """``remember(agent, spoke)``: index a delivered spawn (``HubServicer._remember``)."""
        self._desk = desk
        self._outbox: Outbox = desk.outbox
        self._relayer = relayer
        self._poll_s = poll_s
        self._remember = remember
        self._audit = audit
        self._batch = batch
        self._holder = f"{socket.gethostname()}:{os.getpid()}"
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Deliver now rather than at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        """Deliver forever (cancel to stop); a failed round is logged and tried again."""
        while True:
            try:
                await self.round()
            except errors.BackendUnavailableError as exc:
                log.warning("outbox_round_failed", problem=exc.message)
            aio.raise_if_cancelling()  # redis-py may have swallowed a cancel (hubspoke.aio)
            self._wake.clear()
            try:
                async with asyncio.timeout(self._poll_s):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def round(self) -> int:
        """One pass over every spoke with held commands; returns how many were finished."""
        finished = 0
        for spoke in await self._outbox.spokes():
            if self._desk.unreachable(spoke):
                finished += await self._expire_due(spoke)
                continue
            for held in await self._outbox.due(spoke, self._batch):
                if not await self._outbox.lease(held, self._holder):
                    continue
                outcome = await self._deliver(held)
                if outcome == "unreachable":
                    break
                finished += outcome == "done"
        return finished

    async def _expire_due(self, spoke: str) -> int:
        """Spawns past their deadline end EXPIRED even while their spoke stays away."""
        count = 0
        for held in await self._outbox.past_deadline(spoke, self._batch):
            if await self._outbox.finish(held, "EXPIRED", "UNDELIVERED"):
                self._decide("outbox_expired", held, {})
                count += 1
        return count

    async def _deliver(self, held: Held) -> str:
        """Try ``held`` once: ``done``, or ``unreachable`` (no answer, or one of
        :data:`TRY_LATER`: retried later, and the spoke's other entries wait too)."""
        if held.kind == SPAWN and held.deadline_ms <= int(time.time() * 1000):
            if await self._outbox.finish(held, "EXPIRED", "UNDELIVERED"):
                self._decide("outbox_expired", held, {})
            return "done"
        env = command_pb2.SignedEnvelope.FromString(held.envelope)
        inbound = Inbound(
            envelope=env,
            command=commands.parse_command(env.payload),
            accepted=commands.from_epoch_ms(held.accepted_ms),
        )
        try:
            _, reply = await self._relayer.call(held.spoke, inbound)
        except (errors.SpokeUnavailableError, CircuitOpenError) as exc:
            await self._outbox.retry_later(held, exc.message)
            return "unreachable"
        except errors.CommandError as exc:  # the spoke (or a reply check) said no
            if exc.reason in TRY_LATER:
                await self._outbox.retry_later(held, f"{exc.reason}: {exc.message}")
                return "unreachable"
            state = "FAILED" if held.kind == SPAWN else ""
            await self._outbox.finish(held, state, f"DELIVERY_REFUSED: {exc.reason}")
            self._decide("outbox_refused", held, {"code": exc.code.name, "reason": exc.reason})
            return "done"
        if await self._outbox.finish(held):
            if held.kind == SPAWN:
                await self._remember(reply.agent.agent_id or held.agent, held.spoke)
            self._decide("outbox_delivered", held, {"attempts": held.attempts + 1})
        return "done"

    def _decide(self, action: str, held: Held, detail: dict[str, object]) -> None:
        log.info(action, spoke=held.spoke, agent=held.agent, kind=held.kind)
        if self._audit is not None:
            self._audit.decide(
                Entry(
                    kind="decision",
                    action=action,
                    principal=held.principal,
                    command_id=held.command_id,
                    agent=held.agent,
                    spoke=held.spoke,
                    detail=json.dumps({"kind": held.kind, **detail}, separators=(",", ":")),
                )
            )
