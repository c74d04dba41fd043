"""HubService: admit a client's command, route it by audience, relay it, hand back the reply.

Routing by ``Command.audience``:

* a configured spoke's name: that spoke;
* the hub's own name: spawn is refused (it needs a spoke); get/kill/replay/watch route by the
  agent's resource name ``spokes/{spoke}/agents/{id}``, else by the agent index the hub
  keeps in Redis (keyed by spoke and id), else (get only) by asking every spoke the caller
  may read at once; list asks every spoke;
* anything else: NOT_FOUND (SPOKE_NOT_FOUND).

A bare id is resolved among the spokes the caller may act on only: index entries on other
spokes are ignored, so an agent the caller may not reach answers exactly as an unknown id
does (NOT_FOUND), never PERMISSION_DENIED. When the id is on several of the caller's spokes
(in the index, or among the answers of a get fan-out) the call fails with
FAILED_PRECONDITION, reason AGENT_AMBIGUOUS, naming the spokes: it is never sent to one of
them by guess. A get fan-out waits for every spoke; if none has the agent, a spoke's error
other than NOT_FOUND is the answer, else UNAVAILABLE if some spoke did not answer (the agent
may be on one of those), else NOT_FOUND.

Owners (shared/policy.py, scopes): the hub does not know who owns an agent, so it judges an
agent verb by whether some rule of either scope lets the caller use it on that spoke (queue
verbs that act on everyone's agents need an ``any`` rule here too); the spoke, which holds the
record, is the authority and answers NOT_FOUND for an agent the caller's scope does not
cover. When a bare id routed through the index meets that NOT_FOUND, the hub answers as it
does for an id it never indexed (a get asks every spoke the caller may read; a kill, replay
or watch is NOT_FOUND, not indexed), so an agent of another owner is indistinguishable from
an unknown id. The index does not record owners: an own-scoped caller whose id another
principal also used on another spoke it may use gets AGENT_AMBIGUOUS and must name the spoke.

Replies produced by spokes pass through with their signatures intact; the spoke listing,
and the hub's own account of every list fan-out (which spokes answered, which did not), are
produced and signed by the hub (``hubspoke.fanout``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import structlog

from hubspoke import approval_text, errors, input_text, list_filters
from hubspoke.gen.federation.v1 import command_pb2, hub_service_pb2
from hubspoke.policy import BODY_VERBS, Policy, PolicyDeniedError
from hubspoke.policy import Request as PolicyRequest
from hubspoke.stream_caps import StreamCaps

from . import audit_read, audit_wiring, events, fanout_calls, outbox_read, relay
from .agent_index import IndexWriter
from .audit import AuditLog
from .dedupe import DedupeClaims
from .drain import DrainStore
from .enrol import ENROLL, MEMBERSHIP, REMOVE, EnrolCalls, EnrolmentDisabledError
from .health import HealthMonitor
from .outbox_desk import HELD_VERBS, OutboxDesk
from .placement_claim import ClaimStore
from .placement_route import Placer, PlacerConfig
from .registry import SpokeRegistry
from .relay import Gate, Inbound, Relayer
from .routing_config import (
    RESOURCE_PREFIX,
    AgentAmbiguousError,
    RoutingConfig,
    agent_not_found,
    not_indexed,
    spoke_of_resource,
)
from .spoke_desk import SpokeDesk
from .store import HubStore

__all__ = ["AgentAmbiguousError", "HubServicer", "RoutingConfig"]

log = structlog.get_logger("hubspoke.hub.service")

_Ctx = grpc.aio.ServicerContext[Any, Any]
_Request = (
    hub_service_pb2.HubServiceSpawnAgentRequest
    | hub_service_pb2.HubServiceGetAgentRequest
    | hub_service_pb2.HubServiceKillAgentRequest
    | hub_service_pb2.HubServiceListAgentsRequest
    | hub_service_pb2.HubServiceListSpokesRequest
    | hub_service_pb2.HubServiceWatchAgentRequest
    | hub_service_pb2.HubServiceGetQueueStatsRequest
    | hub_service_pb2.HubServiceListDeadLettersRequest
    | hub_service_pb2.HubServiceReplayAgentRequest
    | hub_service_pb2.HubServicePauseQueueRequest
    | hub_service_pb2.HubServiceResumeQueueRequest
    | hub_service_pb2.HubServiceDrainQueueRequest
    | hub_service_pb2.HubServiceVerifyAgentRequest
    | hub_service_pb2.HubServiceWatchEventsRequest
    | hub_service_pb2.HubServiceReadAuditLogRequest
    | hub_service_pb2.HubServiceListOutboxRequest
    | hub_service_pb2.HubServiceDrainSpokeRequest
    | hub_service_pb2.HubServiceUndrainSpokeRequest
    | hub_service_pb2.HubServiceSendInputRequest
    | hub_service_pb2.HubServiceApproveAgentRequest
    | hub_service_pb2.HubServiceRejectAgentRequest
)


class HubServicer:
    """The HubService RPCs; each raises ``hubspoke.errors`` on failure (the transport converts)."""

    def __init__(
        self,
        cfg: RoutingConfig,
        gate: Gate,
        relayer: Relayer,
        registry: SpokeRegistry,
        store: HubStore,
        policy: Policy,
        monitor: HealthMonitor | None = None,
        audit: AuditLog | None = None,
        outbox: OutboxDesk | None = None,
    ) -> None:
        """``monitor``: the background probe loop's health records (hub/health.py); without
        it, ListSpokes probes every spoke itself and fan-outs ask every spoke. ``audit``:
        the audit log ReadAuditLog reads (None: the log is off)."""
        self._monitor = monitor
        self._audit = audit
        self._outbox = outbox
        self._cfg = cfg
        self._gate = gate
        self._relayer = relayer
        self._registry = registry
        self._store = store
        self._policy = policy
        self._index = IndexWriter(store, cfg.agent_index_ttl_s, audited=audit is not None)
        self._fanout = fanout_calls.FanOut(relayer, monitor, cfg.fanout_timeout_s)
        self._drains = DrainStore(store.client, cfg.hub_name, store.timeout_s)
        self._spokes = SpokeDesk(  # ListSpokes, drains (hub/spoke_desk.py)
            cfg.hub_name, cfg.key, cfg.probe_timeout_s, registry, monitor, self._drains, outbox
        )
        self._placer = Placer(  # selector spawns (hub/placement_route.py)
            PlacerConfig(cfg.hub_name, cfg.key, cfg.claim_ttl_s),
            registry,
            monitor,
            self._drains,
            ClaimStore(store.client, cfg.hub_name, store.timeout_s),
            lambda inbound, spoke: self._policy.allows(self._policy_request(inbound, spoke)),
            self._relay,
            DedupeClaims(store.client, cfg.hub_name, store.timeout_s),
        )
        self._watches = StreamCaps(
            "watch",
            f"hub {cfg.hub_name}",
            cfg.max_watchers,
            cfg.max_watchers_per_principal,
            setting="max_watchers",
        )

    # -- RPCs -------------------------------------------------------------------------------

    async def SpawnAgent(
        self, request: hub_service_pb2.HubServiceSpawnAgentRequest, context: _Ctx
    ) -> hub_service_pb2.HubServiceSpawnAgentResponse:
        inbound = await self._admit(request, relay.SPAWN)
        audience = inbound.command.audience
        body = inbound.command.spawn_agent
        if audience == self._cfg.hub_name:
            if not body.selector:
                raise errors.InvalidCommandError(
                    "spawn needs a spoke: set the audience to a spoke name, or a selector"
                )
            spoke, reply_env, reply = await self._placer.spawn(inbound)
            if spoke and not body.dry_run and self._audit is not None:
                self._audit.decide(audit_wiring.route_entry(inbound, spoke))
        else:
            if body.selector:
                raise errors.InvalidCommandError("a selector spawn's audience is the hub")
            spoke = self._spoke_named(audience)
            await self._drains.check(spoke, inbound.prefetched.drained)  # SPOKE_DRAINING
            reply_env, reply = await self._relay(spoke, inbound, check_later=True)
        if not body.dry_run:
            await self._index.remember(reply.agent.agent_id or inbound.command.command_id, spoke)
        return hub_service_pb2.HubServiceSpawnAgentResponse(reply=reply_env)

    async def GetAgent(
        self, request: hub_service_pb2.HubServiceGetAgentRequest, context: _Ctx
    ) -> hub_service_pb2.HubServiceGetAgentResponse:
        inbound = await self._admit(request, relay.GET)
        reply_env = await self._agent_call(inbound, inbound.command.get_agent.agent)
        return hub_service_pb2.HubServiceGetAgentResponse(reply=reply_env)

    async def KillAgent(
        self, request: hub_service_pb2.HubServiceKillAgentRequest, context: _Ctx
    ) -> hub_service_pb2.HubServiceKillAgentResponse:
        inbound = await self._admit(request, relay.KILL)
        reply_env = await self._agent_call(inbound, inbound.command.kill_agent.agent)
        return hub_service_pb2.HubServiceKillAgentResponse(reply=reply_env)

    async def VerifyAgent(
        self, request: hub_service_pb2.HubServiceVerifyAgentRequest, context: _Ctx
    ) -> hub_service_pb2.HubServiceVerifyAgentResponse:
        inbound = await self._admit(request, relay.VERIFY)
        reply_env = await self._agent_call(inbound, inbound.command.verify_agent.agent)
        return hub_service_pb2.HubServiceVerifyAgentResponse(reply=reply_env)

    async def SendInput(
        self, request: hub_service_pb2.HubServiceSendInputRequest, context: _Ctx
    ) -> hub_service_pb2.HubServiceSendInputResponse:
        inbound = await self._admit(request, relay.SEND)
        body = inbound.command.send_input
        input_text.check(body.text, self._cfg.max_input_bytes, f"hub {self._cfg.hub_name}")
        reply_env = await self._agent_call(inbound, body.agent)
        return hub_service_pb2.HubServiceSendInputResponse(reply=reply_env)

    async def ApproveAgent(
        self, request: hub_service_pb2.HubServiceApproveAgentRequest, context: _Ctx
    ) -> hub_service_pb2.HubServiceApproveAgentResponse:
        """Relayed as it is: the spoke that holds the agent checks the approver."""
        inbound = await self._admit(request, relay.APPROVE)
        approval_text.check_reason(inbound.command.approve_agent.reason)
        reply_env = await self._agent_call(inbound, inbound.command.approve_agent.agent)
        return hub_service_pb2.HubServiceApproveAgentResponse(reply=reply_env)

    async def RejectAgent(
        self, request: hub_service_pb2.HubServiceRejectAgentRequest, context: _Ctx
    ) -> hub_service_pb2.HubServiceRejectAgentResponse:
        inbound = await self._admit(request, relay.REJECT)
        approval_text.check_reason(inbound.command.reject_agent.reason)
        reply_env = await self._agent_call(inbound, inbound.command.reject_agent.agent)
        return hub_service_pb2.HubServiceRejectAgentResponse(reply=reply_env)

    async def DrainSpoke(
        self, request: hub_service_pb2.HubServiceDrainSpokeRequest, context: _Ctx
    ) -> hub_service_pb2.HubServiceDrainSpokeResponse:
        reply_env = await self._set_drain(await self._admit(request, relay.DRAIN_SPOKE), True)
        return hub_service_pb2.HubServiceDrainSpokeResponse(reply=reply_env)

    async def UndrainSpoke(
        self, request: hub_service_pb2.HubServiceUndrainSpokeRequest, context: _Ctx
    ) -> hub_service_pb2.HubServiceUndrainSpokeResponse:
        reply_env = await self._set_drain(await self._admit(request, relay.UNDRAIN_SPOKE), False)
        return hub_service_pb2.HubServiceUndrainSpokeResponse(reply=reply_env)

    async def ListAgents(
        self, request: hub_service_pb2.HubServiceListAgentsRequest, context: _Ctx
    ) -> hub_service_pb2.HubServiceListAgentsResponse:
        inbound = await self._admit(request, relay.LIST)
        audience = inbound.command.audience
        if audience != self._cfg.hub_name:
            reply_env, _ = await self._relay(self._spoke_named(audience), inbound)
            return hub_service_pb2.HubServiceListAgentsResponse(replies=[reply_env])
        if inbound.command.list_agents.page_token:
            raise errors.InvalidCommandError(
                "page_token is per spoke: set the audience to the spoke that issued it"
            )
        list_filters.check(inbound.command.list_agents)  # once here, not by every spoke
        answers = await self._fanout.ask(inbound, self._permitted(inbound))
        return fanout_calls.list_response(
            answers,
            inbound,
            hub=self._cfg.hub_name,
            key=self._cfg.key,
            max_message_bytes=self._cfg.max_message_bytes,
        )

    async def ListSpokes(
        self, request: hub_service_pb2.HubServiceListSpokesRequest, context: _Ctx
    ) -> hub_service_pb2.HubServiceListSpokesResponse:
        inbound = await self._admit(request, relay.LIST_SPOKES)
        if inbound.command.audience != self._cfg.hub_name:
            raise errors.InvalidCommandError(
                f"list_spokes is answered by the hub: set the audience to {self._cfg.hub_name}"
            )
        self._authorize(inbound, None)
        signed = await self._spokes.listing(inbound)
        return hub_service_pb2.HubServiceListSpokesResponse(reply=signed)

    async def WatchAgent(
        self, request: hub_service_pb2.HubServiceWatchAgentRequest, context: _Ctx
    ) -> AsyncIterator[hub_service_pb2.HubServiceWatchAgentResponse]:
        inbound = await self._admit(request, relay.WATCH)
        agent = inbound.command.watch_agent.agent
        spoke = await self._spoke_holding(inbound, agent)
        remaining = context.time_remaining()
        limit = (
            self._cfg.watch_max_s if remaining is None else min(remaining, self._cfg.watch_max_s)
        )
        self._authorize(inbound, spoke)
        via_index = inbound.command.audience == self._cfg.hub_name and not agent.startswith(
            RESOURCE_PREFIX
        )
        with self._watches.hold(inbound.command.issuer):
            started = False
            try:
                async for reply_env in self._relayer.stream(spoke, inbound, limit):
                    started = True
                    yield hub_service_pb2.HubServiceWatchAgentResponse(reply=reply_env)
            except errors.CommandError as exc:
                if via_index and not started and agent_not_found(exc):
                    raise not_indexed(agent) from None  # another owner's: as if unknown
                raise

    async def WatchEvents(
        self, request: hub_service_pb2.HubServiceWatchEventsRequest, context: _Ctx
    ) -> AsyncIterator[hub_service_pb2.HubServiceWatchEventsResponse]:
        inbound = await self._admit(request, relay.WATCH_EVENTS)
        audience = inbound.command.audience
        if audience != self._cfg.hub_name:
            spokes = [self._spoke_named(audience)]
            self._authorize(inbound, spokes[0])
        else:
            spokes = self._permitted(inbound)
        remaining = context.time_remaining()
        limit = min(remaining or self._cfg.watch_max_s, self._cfg.watch_max_s)
        with self._watches.hold(inbound.command.issuer):
            replies = events.fan_in(
                self._relayer,
                inbound,
                spokes,
                limit,
                self._cfg.hub_name,
                self._cfg.key,
                idle_s=self._cfg.fanout_timeout_s,
            )
            async with contextlib.aclosing(replies):  # type: ignore[type-var]  # an async generator
                async for reply_env in replies:
                    yield hub_service_pb2.HubServiceWatchEventsResponse(reply=reply_env)

    async def GetQueueStats(
        self, request: hub_service_pb2.HubServiceGetQueueStatsRequest, context: _Ctx
    ) -> hub_service_pb2.HubServiceGetQueueStatsResponse:
        inbound = await self._admit(request, relay.QUEUE_STATS)
        if inbound.command.audience != self._cfg.hub_name:
            reply_env, _ = await self._relay(self._spoke_named(inbound.command.audience), inbound)
            return hub_service_pb2.HubServiceGetQueueStatsResponse(reply=reply_env)
        # Every spoke the caller may read, at once, under one deadline; the hub signs which
        # answered and why the others did not.
        answers = await self._fanout.ask(inbound, self._permitted(inbound))
        return fanout_calls.queue_stats_response(
            answers, inbound, hub=self._cfg.hub_name, key=self._cfg.key
        )

    async def ListDeadLetters(
        self, request: hub_service_pb2.HubServiceListDeadLettersRequest, context: _Ctx
    ) -> hub_service_pb2.HubServiceListDeadLettersResponse:
        reply_env = await self._queue_call(request, relay.DEAD_LETTERS)
        return hub_service_pb2.HubServiceListDeadLettersResponse(reply=reply_env)

    async def ReplayAgent(
        self, request: hub_service_pb2.HubServiceReplayAgentRequest, context: _Ctx
    ) -> hub_service_pb2.HubServiceReplayAgentResponse:
        inbound = await self._admit(request, relay.REPLAY)
        reply_env = await self._agent_call(inbound, inbound.command.replay_agent.agent)
        return hub_service_pb2.HubServiceReplayAgentResponse(reply=reply_env)

    async def PauseQueue(
        self, request: hub_service_pb2.HubServicePauseQueueRequest, context: _Ctx
    ) -> hub_service_pb2.HubServicePauseQueueResponse:
        reply_env = await self._queue_call(request, relay.PAUSE)
        return hub_service_pb2.HubServicePauseQueueResponse(reply=reply_env)

    async def ResumeQueue(
        self, request: hub_service_pb2.HubServiceResumeQueueRequest, context: _Ctx
    ) -> hub_service_pb2.HubServiceResumeQueueResponse:
        reply_env = await self._queue_call(request, relay.RESUME)
        return hub_service_pb2.HubServiceResumeQueueResponse(reply=reply_env)

    async def DrainQueue(
        self, request: hub_service_pb2.HubServiceDrainQueueRequest, context: _Ctx
    ) -> hub_service_pb2.HubServiceDrainQueueResponse:
        reply_env = await self._queue_call(request, relay.DRAIN)
        return hub_service_pb2.HubServiceDrainQueueResponse(reply=reply_env)

    async def ListOutbox(
        self, request: hub_service_pb2.HubServiceListOutboxRequest, context: _Ctx
    ) -> hub_service_pb2.HubServiceListOutboxResponse:
        inbound = await self._admit(request, "list_outbox")
        reply_env = await outbox_read.read_page(
            inbound,
            self._outbox.outbox if self._outbox is not None else None,
            self._policy,
            self._cfg.hub_name,
            self._cfg.key,
            self._registry.names(),
        )
        return hub_service_pb2.HubServiceListOutboxResponse(reply=reply_env)

    async def ReadAuditLog(
        self, request: hub_service_pb2.HubServiceReadAuditLogRequest, context: _Ctx
    ) -> hub_service_pb2.HubServiceReadAuditLogResponse:
        inbound = await self._admit(request, "read_audit_log")
        reply_env = await audit_read.read_page(
            inbound,
            self._audit,
            self._policy,
            self._cfg.hub_name,
            self._cfg.key,
            self._cfg.max_message_bytes,
        )
        return hub_service_pb2.HubServiceReadAuditLogResponse(reply=reply_env)

    # -- drains (hub/drain.py, hub/spoke_desk.py) -------------------------------------------

    async def _set_drain(self, inbound: Inbound, draining: bool) -> command_pb2.SignedEnvelope:
        """Drain or undrain the spoke the body names; answer its record, signed."""
        cmd = inbound.command
        if cmd.audience != self._cfg.hub_name:
            raise errors.InvalidCommandError(
                f"{inbound.verb} is answered by the hub: set the audience to {self._cfg.hub_name}"
            )
        spoke = self._spoke_named(cmd.drain_spoke.spoke if draining else cmd.undrain_spoke.spoke)
        self._authorize(inbound, spoke)
        return await self._spokes.set_drain(inbound, spoke, draining)

    # -- enrolment (hub/enrol.py) -------------------------------------------------------------

    _enrol: EnrolCalls | None = None

    def serve_enrolment(self, calls: EnrolCalls) -> None:
        """Answer CreateEnrolment, RemoveSpoke and GetMembership with ``calls``."""
        self._enrol = calls

    async def CreateEnrolment(
        self, request: hub_service_pb2.HubServiceCreateEnrolmentRequest, context: _Ctx
    ) -> hub_service_pb2.HubServiceCreateEnrolmentResponse:
        inbound = await self._gate.admit(request.command, ENROLL)
        self._authorize(inbound, None)
        reply = await self._enrol_calls().create(inbound)
        return hub_service_pb2.HubServiceCreateEnrolmentResponse(reply=reply)

    async def RemoveSpoke(
        self, request: hub_service_pb2.HubServiceRemoveSpokeRequest, context: _Ctx
    ) -> hub_service_pb2.HubServiceRemoveSpokeResponse:
        inbound = await self._gate.admit(request.command, REMOVE)
        self._authorize(inbound, None)
        reply = await self._enrol_calls().remove(inbound)
        return hub_service_pb2.HubServiceRemoveSpokeResponse(reply=reply)

    async def GetMembership(
        self, request: hub_service_pb2.HubServiceGetMembershipRequest, context: _Ctx
    ) -> hub_service_pb2.HubServiceGetMembershipResponse:
        inbound = await self._gate.admit(request.command, MEMBERSHIP)
        self._authorize(inbound, None)
        reply = await self._enrol_calls().membership(inbound)
        return hub_service_pb2.HubServiceGetMembershipResponse(reply=reply)

    def _enrol_calls(self) -> EnrolCalls:
        if self._enrol is None:
            raise EnrolmentDisabledError("this hub serves no enrolment")
        return self._enrol

    # -- authorization ----------------------------------------------------------------------

    def _policy_request(self, inbound: Inbound, spoke: str | None) -> PolicyRequest:
        cmd = inbound.command
        entry = self._registry.entry(spoke) if spoke else None
        spawn: dict[str, Any] = {}
        if inbound.verb == relay.SPAWN:
            body = cmd.spawn_agent
            spawn = {
                "profile": body.profile,
                # Unset values are the spoke's to resolve, and the spoke checks them again.
                "priority": body.priority or None,
                # Arithmetic, not ToTimedelta(): a signed 2**62 s must be refused, not crash.
                "runtime_s": (body.timeout.seconds + body.timeout.nanos / 1e9) or None,
                "attempts": body.max_attempts or None,
            }
        return PolicyRequest(
            principal=cmd.issuer,
            verb=BODY_VERBS[inbound.verb],
            spoke=spoke,
            spoke_labels=dict(entry.labels) if entry else {},
            **spawn,
        )

    def _authorize(self, inbound: Inbound, spoke: str | None) -> None:
        self._policy.check(self._policy_request(inbound, spoke))

    def _permitted(self, inbound: Inbound) -> list[str]:
        """The spokes a fan-out may reach; none at all is a denial, never "all" (fail closed)."""
        names = [
            n
            for n in self._registry.names()
            if self._policy.allows(self._policy_request(inbound, n))
        ]
        if not names:
            raise PolicyDeniedError(
                f"no policy rule lets {inbound.command.issuer} "
                f"{BODY_VERBS[inbound.verb]} on any spoke",
                verb=BODY_VERBS[inbound.verb],
            )
        return names

    async def _relay(
        self, spoke: str, inbound: Inbound, *, check_later: bool = False
    ) -> tuple[command_pb2.SignedEnvelope, command_pb2.Reply]:
        """``check_later``: this reply is the answer (Relayer.call, hub/call_writes.py)."""
        self._authorize(inbound, spoke)
        if self._outbox is not None and inbound.verb in HELD_VERBS:
            # Hold what cannot reach the spoke; answer for what the hub holds (outbox_desk).
            return await self._outbox.relay(
                spoke,
                inbound,
                lambda: self._relayer.call(spoke, inbound, check_later=check_later),
                lambda owner: self._policy.allows(
                    dataclasses.replace(self._policy_request(inbound, spoke), owner=owner)
                ),
            )
        return await self._relayer.call(spoke, inbound, check_later=check_later)

    # -- routing ----------------------------------------------------------------------------

    async def _queue_call(self, request: _Request, verb: relay.Verb) -> command_pb2.SignedEnvelope:
        """Queue verbs act on one spoke's queue: the audience must name it."""
        inbound = await self._admit(request, verb)
        audience = inbound.command.audience
        if audience == self._cfg.hub_name:
            raise errors.InvalidCommandError(
                f"{verb} acts on one spoke's queue: set the audience to a spoke name"
            )
        reply_env, _ = await self._relay(self._spoke_named(audience), inbound, check_later=True)
        return reply_env

    async def _spoke_holding(self, inbound: Inbound, agent: str) -> str:
        """The spoke for a stream: explicit audience, resource name, or the agent index."""
        audience = inbound.command.audience
        if audience != self._cfg.hub_name:
            return self._spoke_named(audience)
        if agent.startswith(RESOURCE_PREFIX):
            return self._spoke_named(spoke_of_resource(agent))
        indexed = await self._indexed(inbound, agent)
        if indexed is None:
            raise not_indexed(agent)
        return indexed

    async def _indexed(self, inbound: Inbound, agent: str) -> str | None:
        """The one spoke the index holds ``agent`` on among those the caller may act on.

        Entries on spokes the caller may not act on are ignored (an agent there answers as
        an unknown one does); several entries the caller may act on are ambiguous.
        """
        found = inbound.prefetched.indexed(agent)  # read with the admission (hub/prefetch.py)
        visible = [
            s
            for s in (await self._store.find_agent(agent) if found is None else found)
            if s in self._registry and self._policy.allows(self._policy_request(inbound, s))
        ]
        if len(visible) > 1:
            raise AgentAmbiguousError.of(agent, visible)
        return visible[0] if visible else None

    async def _admit(self, request: _Request, verb: relay.Verb) -> Inbound:
        if not request.HasField("command"):
            raise errors.InvalidCommandError("request carries no command envelope")
        inbound = await self._gate.admit(request.command, verb)  # binds command_id, issuer
        # Enrolled spokes: the membership revision, read with the admission (hub/prefetch.py).
        await self._registry.fresh(inbound.prefetched.revision)
        return inbound

    def _spoke_named(self, name: str) -> str:
        if name not in self._registry:
            raise errors.SpokeNotFoundError(f"no spoke named {name!r}", spoke=name)
        return name

    async def _agent_call(self, inbound: Inbound, agent: str) -> command_pb2.SignedEnvelope:
        """Route a get/kill: explicit spoke, resource name, agent index, or ask everyone."""
        audience = inbound.command.audience
        if audience != self._cfg.hub_name:
            reply_env, _ = await self._relay(self._spoke_named(audience), inbound, check_later=True)
            return reply_env
        if not agent:
            raise errors.InvalidCommandError("agent is required")
        if agent.startswith(RESOURCE_PREFIX):
            spoke = spoke_of_resource(agent)
            reply_env, _ = await self._relay(self._spoke_named(spoke), inbound, check_later=True)
            return reply_env
        indexed = await self._indexed(inbound, agent)
        asked: tuple[str, ...] = ()
        if indexed is not None:
            try:
                reply_env, _ = await self._relay(indexed, inbound, check_later=True)
            except errors.CommandError as exc:
                # Not there for this caller (another owner's, or gone): answer as for an id
                # the hub never indexed, so the index tells nothing about other owners.
                if not agent_not_found(exc):
                    raise
                asked = (indexed,)  # its nonce is spent there: ask only the others
            else:
                return reply_env
        if inbound.verb != relay.GET:
            # Never fan a kill or replay out: the same id may exist on two spokes.
            raise not_indexed(agent)
        return await self._find_and_call(inbound, agent, asked)

    async def _find_and_call(
        self, inbound: Inbound, agent_id: str, asked: Sequence[str] = ()
    ) -> command_pb2.SignedEnvelope:
        """Ask every spoke the caller may read at once, and wait for all: exactly one may have
        the agent, so an id on two spokes is reported, never guessed.

        A spoke that did not answer, or answered with an error, may hold the agent too but
        cannot say so; the one copy the others found is still the answer. With none found,
        a spoke's error other than NOT_FOUND is the answer (the first, in config order),
        then UNAVAILABLE if some spoke did not answer, else NOT_FOUND.
        """
        names = [n for n in self._permitted(inbound) if n not in asked]
        answers = await self._fanout.ask(inbound, names)
        found = [a for a in answers if a.reply_env is not None]
        for answer in found:
            await self._index.remember(agent_id, answer.spoke)
        if len(found) > 1:
            raise AgentAmbiguousError.of(agent_id, [a.spoke for a in found])
        return fanout_calls.found_agent(answers, agent_id)

    async def remember(self, agent_id: str, spoke: str) -> None:
        """Index ``agent_id`` on ``spoke`` (the outbox's deliveries call it)."""
        await self._index.remember(agent_id, spoke)
