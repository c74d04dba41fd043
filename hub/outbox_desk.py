"""Where relayed calls meet the outbox: hold what cannot reach its spoke, answer for what is held.

``OutboxDesk.relay`` stands in for one relayed agent call (spawn, get, kill and the other
verbs on one agent):

* spawn: a retry of a held command id answers PENDING_DELIVERY again (nothing added); a
  spoke that is known unreachable (circuit open, DISCONNECTED) is not called, and one that
  does not answer (UNAVAILABLE without a reply) gets the spawn held;
* get/kill/...: an agent the hub holds is answered by the hub (PENDING_DELIVERY; a kill
  removes it from the outbox, KILLED/KILLED_BEFORE_DELIVERY; other verbs
  FAILED_PRECONDITION AGENT_PENDING_DELIVERY); one that ended in the outbox answers how it
  ended; a kill the spoke cannot take now is held and delivered first when it is back,
  and until then a get answers ``kill_pending``.

The caller's scope holds here as at the spoke: under an ``own`` rule another principal's
held agent answers NOT_FOUND, as an unknown one does.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Final

from hubspoke import errors
from hubspoke.gen.federation.v1 import agent_pb2, command_pb2
from hubspoke.keys import SigningKey

from . import outbox_answers as answers
from .audit import AuditLog
from .audit_chain import Entry
from .circuit import CircuitOpenError
from .health import HealthMonitor, SpokeState
from .outbox import KILL, SPAWN, Held, Lookup, Outbox
from .relay import GET, Inbound, Relayer
from .relay import KILL as KILL_VERB
from .relay import SPAWN as SPAWN_VERB

__all__ = ["HELD_VERBS", "AgentPendingDeliveryError", "OutboxDesk"]

Reply = tuple[command_pb2.SignedEnvelope, command_pb2.Reply]
_RESOURCE_PREFIX: Final = "spokes/"
HELD_VERBS: Final = frozenset(
    {
        "spawn_agent",
        "get_agent",
        "kill_agent",
        "verify_agent",
        "replay_agent",
        "send_input",
        "approve_agent",
        "reject_agent",
    }
)
"""Command bodies on one agent whose relay goes through the desk."""


class AgentPendingDeliveryError(errors.CommandError):
    """The agent is still in the hub's outbox: only status and kill apply to it."""

    code = errors.AgentNotRunningError.code
    reason = "AGENT_PENDING_DELIVERY"


class OutboxDesk:
    """The outbox's side of HubService's relayed agent calls (module docstring)."""

    def __init__(
        self,
        outbox: Outbox,
        relayer: Relayer,
        monitor: HealthMonitor | None,
        hub: str,
        key: SigningKey,
        default_start_within_s: float,
        audit: AuditLog | None = None,
    ) -> None:
        self._outbox = outbox
        self._relayer = relayer
        self._monitor = monitor
        self._hub = hub
        self._key = key
        self._start_within_s = default_start_within_s
        self._audit = audit

    @property
    def outbox(self) -> Outbox:
        return self._outbox

    def unreachable(self, spoke: str) -> str:
        """Why ``spoke`` cannot take a call now ("" if it may): circuit_open or disconnected."""
        try:
            self._relayer.circuit_check(spoke)
        except CircuitOpenError:
            return "circuit_open"
        record = self._monitor.get(spoke) if self._monitor is not None else None
        if record is not None and record.state is SpokeState.DISCONNECTED:
            return "disconnected"
        return ""

    async def relay(
        self,
        spoke: str,
        inbound: Inbound,
        call: Callable[[], Awaitable[Reply]],
        may_see: Callable[[str], bool],
    ) -> Reply:
        """Relay through ``call``, or answer from the outbox (module docstring).

        ``may_see(owner)``: whether the caller's rules cover an agent of ``owner``."""
        if inbound.verb == SPAWN_VERB:
            return await self._spawn(spoke, inbound, call)
        agent = _agent_of(inbound)
        held, ended, held_kill = await self._lookup(inbound, spoke, agent)
        if held is not None:
            if not may_see(held.principal):
                raise errors.AgentNotFoundError(f"agent {agent} not found on spoke {spoke}")
            return await self._on_held(spoke, inbound, held)
        if ended is not None:
            if not may_see(ended.principal):
                raise errors.AgentNotFoundError(f"agent {agent} not found on spoke {spoke}")
            if inbound.verb == GET:
                return self._sign(inbound, answers.ended_agent(ended))
            raise errors.AgentNotRunningError(
                f"agent {agent} ended {ended.state} ({ended.reason}) before it reached {spoke}"
            )
        why = self.unreachable(spoke)
        if why and held_kill is not None and inbound.verb == GET:
            return self._sign(inbound, answers.held_kill_agent(held_kill))
        if why and inbound.verb == KILL_VERB:
            return await self._hold_kill(spoke, inbound, agent, why)
        try:
            return await call()
        except (errors.SpokeUnavailableError, CircuitOpenError) as exc:
            if inbound.verb == KILL_VERB:
                return await self._hold_kill(spoke, inbound, agent, exc.message)
            if inbound.verb == GET and held_kill is not None:
                return self._sign(inbound, answers.held_kill_agent(held_kill))
            raise

    async def _lookup(self, inbound: Inbound, spoke: str, agent: str) -> Lookup:
        """The outbox's lookup of ``agent`` on ``spoke``: as read with the command's
        admission (hub/prefetch.py), else read now."""
        found = inbound.prefetched.outbox_lookup(spoke, agent)
        return await self._outbox.lookup(spoke, agent) if found is None else found

    async def _hold_kill(self, spoke: str, inbound: Inbound, agent: str, why: str) -> Reply:
        held_kill = await self._hold(spoke, inbound, KILL, agent, why)
        return self._sign(inbound, answers.held_kill_agent(held_kill))

    async def _spawn(
        self, spoke: str, inbound: Inbound, call: Callable[[], Awaitable[Reply]]
    ) -> Reply:
        cmd = inbound.command
        if cmd.spawn_agent.dry_run:
            return await call()
        held, ended, _ = await self._lookup(inbound, spoke, cmd.command_id)
        if held is not None:  # a retry of a held spawn: the same answer, nothing added
            return self._sign(inbound, answers.pending_agent(held))
        if ended is not None:
            return self._sign(inbound, answers.ended_agent(ended))
        why = self.unreachable(spoke)
        if not why:
            try:
                return await call()
            except (errors.SpokeUnavailableError, CircuitOpenError) as exc:
                why = exc.message
        held = await self._hold(spoke, inbound, SPAWN, cmd.command_id, why)
        return self._sign(inbound, answers.pending_agent(held))

    async def _on_held(self, spoke: str, inbound: Inbound, held: Held) -> Reply:
        if inbound.verb == GET:
            return self._sign(inbound, answers.pending_agent(held))
        if inbound.verb == KILL_VERB:
            await self._outbox.finish(held, "KILLED", "KILLED_BEFORE_DELIVERY")
            self._decide("outbox_killed", held, {})
            ended = await self._outbox.ended(spoke, held.agent)
            if ended is None:  # delivered by another hubd a moment ago: the spoke decides
                raise AgentPendingDeliveryError(
                    f"agent {held.agent} was just delivered to {spoke}; kill it again"
                )
            return self._sign(inbound, answers.ended_agent(ended))
        raise AgentPendingDeliveryError(
            f"agent {held.agent} waits in the hub's outbox for spoke {spoke}: "
            "only status and kill apply until it is delivered"
        )

    async def _hold(self, spoke: str, inbound: Inbound, kind: str, agent: str, why: str) -> Held:
        cmd = inbound.command
        accepted_ms = int(inbound.accepted.timestamp() * 1000)
        if kind == SPAWN:
            body = cmd.spawn_agent
            within = (
                body.start_within.seconds + body.start_within.nanos / 1e9
                if body.HasField("start_within")
                else self._start_within_s
            )
            deadline_ms = accepted_ms + int(within * 1000)
            profile, task = body.profile, body.task
        else:
            deadline_ms = accepted_ms + int(self._outbox.config.done_ttl_s * 1000)
            profile = task = ""
        held = Held(
            spoke=spoke,
            kind=kind,
            command_id=cmd.command_id,
            agent=agent,
            principal=cmd.issuer,
            envelope=inbound.envelope.SerializeToString(),
            accepted_ms=accepted_ms,
            deadline_ms=deadline_ms,
            last_error=f"SPOKE_UNREACHABLE: {why}"[:512],
            profile=profile,
            task=task,
        )
        if await self._outbox.hold(held):
            self._decide("outbox_held", held, {"why": why[:256]})
            return held
        found = await (self._outbox.kill if kind == KILL else self._outbox.spawn)(spoke, agent)
        return found or held

    def _decide(self, action: str, held: Held, detail: dict[str, object]) -> None:
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

    def _sign(self, inbound: Inbound, agent: agent_pb2.Agent) -> Reply:
        return answers.signed_agent_reply(inbound, agent, self._hub, self._key)


def _agent_of(inbound: Inbound) -> str:
    body = inbound.command.WhichOneof("body")
    ref = str(getattr(getattr(inbound.command, body), "agent", "")) if body else ""
    if ref.startswith(_RESOURCE_PREFIX):
        return ref.rsplit("/", 1)[-1]
    return ref
