"""SpokeService: pb ↔ domain translation, validation, and orchestration of a spoke's calls.

Each RPC verifies its envelope (spoke/verifier.py), validates the body against this spoke's
config and limits (a spawn's in spoke/spawn_request.py), calls the queue, and answers with a
Reply signed by this spoke that binds the command id and the SHA-256 of the client's signed
bytes.

Owners (shared/policy.py, scopes): every agent is owned by its record's issuer. A caller may
use get, kill, watch or replay on an agent only through a rule whose scope covers it (``own``:
its own agents; ``any``: every agent); any other agent answers exactly as an unknown id does
(NOT_FOUND, AGENT_NOT_FOUND, the same message), so no answer tells that it exists. Lists and
dead letters show an ``own``-scoped caller only its own agents. Whoever may see an agent may
see all of it (task text and output tails included): for a non-owner that takes an ``any``
rule for the verb. A replay is also authorized as a spawn of the agent's profile by the
replaying principal, keeps the record's owner, and is refused once the agent's start
deadline has passed (``replay_within_s`` after the spawn for an agent stored without one).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from hubspoke import commands, envelope, errors, input_text
from hubspoke.gen.federation.v1 import agent_pb2, command_pb2, spoke_service_pb2
from hubspoke.keys import SigningKey
from hubspoke.pacing import WatchPacing
from hubspoke.policy import BODY_VERBS, Policy
from hubspoke.policy import Request as PolicyRequest
from hubspoke.stream_caps import StreamCaps

from . import (
    approvals,
    backend,
    dedupe,
    feed_stream,
    list_filter,
    listing,
    pacing,
    service_input,
    spawn_one_trip,
    status_read,
    wire,
)
from .config import SpokeConfig
from .dryrun import rehearse
from .model import AgentRecord, AgentState
from .queue import AgentQueue
from .records import UnknownItemError
from .spawn_request import policy_request, spawn_request
from .verifier import Authorized, Verifier

MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 50
MAX_DELAY_MS = 30 * 86_400_000
"""The longest not-before delay a spawn may ask for (30 days)."""
MAX_VERIFY_ITEMS = 256
MAX_ITEM_NAME_CHARS = 256
VERDICTS = frozenset({"passed", "failed"})


@contextlib.contextmanager
def _queue_errors() -> Iterator[None]:
    """The queue layer's errors, as the wire sees them."""
    try:
        yield
    except backend.AgentMissingError as exc:
        raise errors.AgentNotFoundError(str(exc)) from exc
    except backend.AgentReusedError as exc:
        raise errors.CommandIdReusedError(str(exc)) from exc
    except backend.TransitionError as exc:
        raise errors.AgentNotRunningError(str(exc), state=exc.current) from exc
    except backend.QueueFullError as exc:
        raise errors.CapacityExceededError(str(exc)) from exc
    except backend.QuotaError as exc:
        raise errors.QuotaExceededError(
            str(exc), limit="max_queued_per_principal", max=str(exc.limit)
        ) from exc
    except backend.PageTokenError as exc:
        raise errors.InvalidCommandError(str(exc)) from exc
    except backend.BackendError as exc:
        raise errors.BackendUnavailableError("the spoke's Redis is unavailable") from exc


def _verdicts(items: Mapping[str, str]) -> dict[str, str]:
    """A verify command's items, checked: 1-256 names of at most 256 characters, each
    ``passed`` or ``failed``."""
    if not 1 <= len(items) <= MAX_VERIFY_ITEMS:
        raise errors.InvalidCommandError(f"a verify names 1-{MAX_VERIFY_ITEMS} items")
    for name, verdict in items.items():
        if not name or len(name) > MAX_ITEM_NAME_CHARS:
            raise errors.InvalidCommandError(f"an item name is 1-{MAX_ITEM_NAME_CHARS} characters")
        if verdict not in VERDICTS:
            raise errors.InvalidCommandError(
                f"item {name!r}: the verdict must be passed or failed, not {verdict!r}"
            )
    return dict(items)


class SpokeServicer:
    def __init__(
        self,
        config: SpokeConfig,
        key: SigningKey,
        verifier: Verifier,
        agents: AgentQueue,
        policy: Policy,
    ) -> None:
        self.config = config
        self.key = key
        self.verifier = verifier
        self.agents = agents
        self.policy = policy
        self._watches = StreamCaps(
            "watch",
            f"spoke {config.name}",
            config.max_watchers,
            config.max_watchers_per_principal,
            setting="max_watchers",
        )
        self._pacing = WatchPacing(pacing.pacing_config(config))  # events per stream/principal
        verifier.prefetch = status_read.prefetcher(self._agent_id, agents.keys)  # issue 13

    # --- RPCs ----------------------------------------------------------------

    async def SpawnAgent(
        self, request: spoke_service_pb2.SpokeServiceSpawnAgentRequest, context: Any
    ) -> spoke_service_pb2.SpokeServiceSpawnAgentResponse:
        auth, pending = self.verifier.check(request.command, "spawn_agent")
        try:
            req = spawn_request(auth, self.config, self.policy)
        except Exception:
            await self.verifier.admit(pending)  # its refusals come first, as for every command
            raise
        if self.agents.one_trip(req) and not auth.command.spawn_agent.dry_run:
            with _queue_errors():  # the admission, the record and its job in one script
                rec = await spawn_one_trip.create(
                    self.agents, self.verifier, pending, req, self.config
                )
            reply = self._reply(auth, agent=wire.to_agent(self.config.name, rec))
            return spoke_service_pb2.SpokeServiceSpawnAgentResponse(reply=reply)
        await self.verifier.admit(pending)
        if auth.command.spawn_agent.dry_run:  # checked as a spawn; nothing is stored
            placement = await rehearse(self.config, self.agents, req)
            reply = self._reply(auth, placement=placement)
            return spoke_service_pb2.SpokeServiceSpawnAgentResponse(reply=reply)
        deduplicated = False
        with _queue_errors():
            await approvals.check_quota(
                self.agents.records, req, self.config.max_awaiting_per_principal
            )
            try:
                # Shielded: a client that times out must not leave a half-stored spawn behind.
                rec, _ = await asyncio.shield(
                    self.agents.create(
                        req, self.config.max_queue_depth, self.config.max_queued_per_principal
                    )
                )
            except dedupe.DeduplicatedError as exc:  # the owner's key is held: that agent
                rec, deduplicated = await self.agents.records.get(exc.agent_id), True
            except dedupe.ContendedError as exc:
                raise errors.ConcurrentModificationError(str(exc)) from exc
        agent = wire.to_agent(self.config.name, rec)
        agent.deduplicated = deduplicated
        reply = self._reply(auth, agent=agent)
        return spoke_service_pb2.SpokeServiceSpawnAgentResponse(reply=reply)

    async def GetAgent(
        self, request: spoke_service_pb2.SpokeServiceGetAgentRequest, context: Any
    ) -> spoke_service_pb2.SpokeServiceGetAgentResponse:
        auth = await self._admit(request.command, "get_agent")
        agent_id = self._agent_id(auth.command.get_agent.agent)
        rec = await self._visible(auth, "get_agent", agent_id)
        reply = self._reply(auth, agent=wire.to_agent(self.config.name, rec))
        return spoke_service_pb2.SpokeServiceGetAgentResponse(reply=reply)

    async def KillAgent(
        self, request: spoke_service_pb2.SpokeServiceKillAgentRequest, context: Any
    ) -> spoke_service_pb2.SpokeServiceKillAgentResponse:
        auth = await self._admit(request.command, "kill_agent")
        agent_id = self._agent_id(auth.command.kill_agent.agent)
        await self._visible(auth, "kill_agent", agent_id)
        with _queue_errors():
            outcome = await self.agents.kills.request(agent_id, auth.command.command_id)
            # A signalled agent: the reply goes out as soon as it is final (or kill_wait_s).
            wait_s = self.config.kill_wait_s if outcome.action == "signal" else 0.0
            rec = await self.agents.records.wait_final(agent_id, wait_s)
        reply = self._reply(auth, agent=wire.to_agent(self.config.name, rec))
        return spoke_service_pb2.SpokeServiceKillAgentResponse(reply=reply)

    async def ListAgents(
        self, request: spoke_service_pb2.SpokeServiceListAgentsRequest, context: Any
    ) -> spoke_service_pb2.SpokeServiceListAgentsResponse:
        auth = await self._admit(request.command, "list_agents")
        body = auth.command.list_agents
        size = self._page_size(body.page_size)
        states = [
            AgentState(agent_pb2.Agent.State.Name(s).removeprefix("STATE_"))
            for s in body.states
            if s
        ]
        owner = self._listing_owner(auth, "list_agents")
        match = list_filter.from_body(body, self.config.max_labels)
        with _queue_errors():
            agent_page = await self._bounded_page(
                lambda n: self.agents.records.list_page(
                    n, body.page_token, states, owner, None if match.empty else match
                ),
                size,
            )
        return spoke_service_pb2.SpokeServiceListAgentsResponse(
            reply=self._reply(auth, agent_page=agent_page)
        )

    async def WatchAgent(
        self, request: spoke_service_pb2.SpokeServiceWatchAgentRequest, context: Any
    ) -> AsyncIterator[spoke_service_pb2.SpokeServiceWatchAgentResponse]:
        auth = await self._admit(request.command, "watch_agent")
        body = auth.command.watch_agent
        agent_id = self._agent_id(body.agent)
        if body.after_sequence < 0:
            raise errors.InvalidCommandError("after_sequence must not be negative")
        with (
            self._watches.hold(auth.principal),
            self._pacing.stream(auth.principal) as pacer,
            _queue_errors(),
        ):
            await self._visible(auth, "watch_agent", agent_id)  # before the stream starts
            events = pacing.paced_events(
                self.agents.records.follow(
                    agent_id, body.after_sequence, self.config.watch_heartbeat_s
                ),
                pacer,
            )
            async with contextlib.aclosing(events):
                async for event in events:
                    reply = self._reply(auth, agent_event=wire.to_event(agent_id, event))
                    yield spoke_service_pb2.SpokeServiceWatchAgentResponse(reply=reply)

    async def WatchEvents(
        self, request: spoke_service_pb2.SpokeServiceWatchEventsRequest, context: Any
    ) -> AsyncIterator[spoke_service_pb2.SpokeServiceWatchEventsResponse]:
        auth = await self._admit(request.command, "watch_events")
        body = auth.command.watch_events
        items = feed_stream.items(
            self.agents.feed,
            body,
            self.config.name,
            self._listing_owner(auth, "watch_events"),
            self.config.watch_heartbeat_s,
        )
        with self._watches.hold(auth.principal), _queue_errors():
            async with contextlib.aclosing(items):
                async for entry in items:
                    reply = self._reply(auth, feed_entry=entry)
                    yield spoke_service_pb2.SpokeServiceWatchEventsResponse(reply=reply)

    async def GetQueueStats(
        self, request: spoke_service_pb2.SpokeServiceGetQueueStatsRequest, context: Any
    ) -> spoke_service_pb2.SpokeServiceGetQueueStatsResponse:
        auth = await self._admit(request.command, "get_queue_stats")
        return spoke_service_pb2.SpokeServiceGetQueueStatsResponse(
            reply=self._reply(auth, queue_stats=await self._stats())
        )

    async def ListDeadLetters(
        self, request: spoke_service_pb2.SpokeServiceListDeadLettersRequest, context: Any
    ) -> spoke_service_pb2.SpokeServiceListDeadLettersResponse:
        auth = await self._admit(request.command, "list_dead_letters")
        body = auth.command.list_dead_letters
        size = self._page_size(body.page_size)
        owner = self._listing_owner(auth, "list_dead_letters")
        with _queue_errors():
            agent_page = await self._bounded_page(
                lambda n: self.agents.dead_letters(n, body.page_token, owner), size
            )
        return spoke_service_pb2.SpokeServiceListDeadLettersResponse(
            reply=self._reply(auth, agent_page=agent_page)
        )

    async def ReplayAgent(
        self, request: spoke_service_pb2.SpokeServiceReplayAgentRequest, context: Any
    ) -> spoke_service_pb2.SpokeServiceReplayAgentResponse:
        auth = await self._admit(request.command, "replay_agent")
        agent_id = self._agent_id(auth.command.replay_agent.agent)
        rec = await self._visible(auth, "replay_agent", agent_id)
        self._authorize_replay(auth, rec)
        approvals.check_replay(
            self.policy, self._replay_as_spawn(auth, rec), rec, auth.command.command_id
        )
        with _queue_errors():
            rec = await self.agents.replay(
                agent_id, auth.command.command_id, self._replay_deadline_ms(rec)
            )
        return spoke_service_pb2.SpokeServiceReplayAgentResponse(
            reply=self._reply(auth, agent=wire.to_agent(self.config.name, rec))
        )

    async def PauseQueue(
        self, request: spoke_service_pb2.SpokeServicePauseQueueRequest, context: Any
    ) -> spoke_service_pb2.SpokeServicePauseQueueResponse:
        auth = await self._admit(request.command, "pause_queue")
        with _queue_errors():
            await self.agents.jobs.pause()
        return spoke_service_pb2.SpokeServicePauseQueueResponse(
            reply=self._reply(auth, queue_stats=await self._stats())
        )

    async def ResumeQueue(
        self, request: spoke_service_pb2.SpokeServiceResumeQueueRequest, context: Any
    ) -> spoke_service_pb2.SpokeServiceResumeQueueResponse:
        auth = await self._admit(request.command, "resume_queue")
        with _queue_errors():
            await self.agents.jobs.resume()
        return spoke_service_pb2.SpokeServiceResumeQueueResponse(
            reply=self._reply(auth, queue_stats=await self._stats())
        )

    async def DrainQueue(
        self, request: spoke_service_pb2.SpokeServiceDrainQueueRequest, context: Any
    ) -> spoke_service_pb2.SpokeServiceDrainQueueResponse:
        auth = await self._admit(request.command, "drain_queue")
        with _queue_errors():
            drained = await self.agents.drain()
        stats = await self._stats()
        stats.drained = drained
        return spoke_service_pb2.SpokeServiceDrainQueueResponse(
            reply=self._reply(auth, queue_stats=stats)
        )

    async def VerifyAgent(
        self, request: spoke_service_pb2.SpokeServiceVerifyAgentRequest, context: Any
    ) -> spoke_service_pb2.SpokeServiceVerifyAgentResponse:
        auth = await self._admit(request.command, "verify_agent")
        body = auth.command.verify_agent
        agent_id = self._agent_id(body.agent)
        verdicts = _verdicts(body.items)
        await self._visible(auth, "verify_agent", agent_id)
        with _queue_errors():
            try:
                await self.agents.records.settle(agent_id, verdicts, auth.principal)
            except UnknownItemError as exc:
                raise errors.InvalidCommandError(
                    f"agent {agent_id} waits on no verification item {exc}", item=str(exc)
                ) from exc
            except backend.TransitionError:
                rec = await self.agents.records.get(agent_id)
                # A retry of verdicts already recorded is answered with the agent.
                if any(rec.verdicts.get(n) != v for n, v in verdicts.items()):
                    raise
            rec = await self.agents.records.get(agent_id)
        return spoke_service_pb2.SpokeServiceVerifyAgentResponse(
            reply=self._reply(auth, agent=wire.to_agent(self.config.name, rec))
        )

    async def ApproveAgent(
        self, request: spoke_service_pb2.SpokeServiceApproveAgentRequest, context: Any
    ) -> spoke_service_pb2.SpokeServiceApproveAgentResponse:
        rec = await self._approval(request.command, "approve_agent")
        return spoke_service_pb2.SpokeServiceApproveAgentResponse(reply=rec)

    async def RejectAgent(
        self, request: spoke_service_pb2.SpokeServiceRejectAgentRequest, context: Any
    ) -> spoke_service_pb2.SpokeServiceRejectAgentResponse:
        rec = await self._approval(request.command, "reject_agent")
        return spoke_service_pb2.SpokeServiceRejectAgentResponse(reply=rec)

    async def SendInput(
        self, request: spoke_service_pb2.SpokeServiceSendInputRequest, context: Any
    ) -> spoke_service_pb2.SpokeServiceSendInputResponse:
        auth = await self._admit(request.command, "send_input")
        agent_id = self._agent_id(auth.command.send_input.agent)
        input_text.check(
            auth.command.send_input.text, self.config.max_input_bytes, f"spoke {self.config.name}"
        )
        await self._visible(auth, "send_input", agent_id)
        with _queue_errors():
            rec = await service_input.send_input(
                self.agents, auth, agent_id, self.config.max_inputs_per_agent
            )
        return spoke_service_pb2.SpokeServiceSendInputResponse(
            reply=self._reply(auth, agent=wire.to_agent(self.config.name, rec))
        )

    # --- helpers -------------------------------------------------------------

    async def _approval(
        self, env: command_pb2.SignedEnvelope, body_name: str
    ) -> command_pb2.SignedEnvelope:
        """An approve or reject, verified here whoever relayed it (spoke/approvals.py): the
        signer must be one of the agent's approvers and not its owner."""
        auth = await self._admit(env, body_name)
        body = getattr(auth.command, body_name)
        agent_id = self._agent_id(body.agent)
        reason = approvals.check_reason(body.reason)
        verb = BODY_VERBS[body_name]
        with _queue_errors():
            rec = await self.agents.records.get_or_none(agent_id)
            if rec is None or not (
                auth.principal in rec.approvers
                or self.policy.allows(self._policy_request(auth, "get_agent", owner=rec.issuer))
            ):
                raise backend.AgentMissingError(f"agent {agent_id} not found")
            approvals.check_approver(rec, auth.principal, verb)
            signed = auth.client_envelope.SerializeToString()
            try:
                if verb == "approve":
                    rec = await self.agents.approvals.approve(rec, auth.principal, reason, signed)
                else:
                    rec = await self.agents.approvals.reject(rec, auth.principal, reason, signed)
            except backend.TransitionError as exc:
                raise errors.AgentNotRunningError(
                    f"agent {agent_id} is {exc.current}, not AWAITING_APPROVAL: "
                    f"there is nothing to {verb}",
                    state=exc.current,
                ) from exc
        return self._reply(auth, agent=wire.to_agent(self.config.name, rec))

    async def _admit(self, env: command_pb2.SignedEnvelope, body: str) -> Authorized:
        """Verify, then authorize the verb (spawn is authorized once its values resolve)."""
        auth = await self.verifier.verify(env, body)
        if body != "spawn_agent":
            self.policy.check(self._policy_request(auth, body))
        return auth

    def _policy_request(self, auth: Authorized, body: str, **spawn: Any) -> PolicyRequest:
        return policy_request(auth, self.config, body, **spawn)

    async def _visible(self, auth: Authorized, body: str, agent_id: str) -> AgentRecord:
        """The agent, if a rule lets the caller use this verb on it (its scope covers the
        agent's owner); else NOT_FOUND exactly as for an id that does not exist."""
        with _queue_errors():
            rec = status_read.record(auth, self.agents.keys.agent(agent_id))
            if rec is status_read.UNREAD:
                rec = await self.agents.records.get_or_none(agent_id)
            if not isinstance(rec, AgentRecord) or not self.policy.allows(
                self._policy_request(auth, body, owner=rec.issuer)
            ):
                raise backend.AgentMissingError(f"agent {agent_id} not found")
        return rec

    def _listing_owner(self, auth: Authorized, body: str) -> str | None:
        """None when the caller may list every agent, else the caller (its own agents)."""
        scope = self.policy.scope_of(self._policy_request(auth, body))
        return None if scope == "any" else auth.principal

    def _authorize_replay(self, auth: Authorized, rec: AgentRecord) -> None:
        """A replay runs the agent's profile again: the replaying principal must be allowed
        to spawn it, with the record's values, and the spawn must be younger than
        ``replay_within_s``. A retry of the replay that already happened is answered with the
        agent, as before."""
        self.policy.check(
            self._policy_request(
                auth,
                "spawn_agent",
                profile=rec.profile,
                priority=rec.priority,
                runtime_s=rec.timeout_ms / 1000,
                attempts=rec.max_attempts,
            )
        )
        if rec.replay_command == auth.command.command_id:
            return
        if commands.now().timestamp() * 1000 > self._replay_deadline_ms(rec):
            why = (
                "its start deadline has passed"
                if rec.start_deadline_ms
                else f"it was spawned more than {self.config.replay_within_s:g} s ago "
                "(replay_within_s)"
            )
            raise errors.StartDeadlinePassedError(
                f"agent {rec.agent_id} cannot be replayed: {why}; spawn it again instead",
                agent=rec.agent_id,
            )

    def _replay_as_spawn(self, auth: Authorized, rec: AgentRecord) -> PolicyRequest:
        """A replay, as the spawn of the record's profile and values by the replaying one."""
        return self._policy_request(
            auth,
            "spawn_agent",
            profile=rec.profile,
            priority=rec.priority,
            runtime_s=rec.timeout_ms / 1000,
            attempts=rec.max_attempts,
        )

    def _replay_deadline_ms(self, rec: AgentRecord) -> int:
        """When a replay of ``rec`` must have started: the agent's own start deadline, or,
        for an agent stored before spawns had one, its storing plus ``replay_within_s``."""
        if rec.start_deadline_ms:
            return rec.start_deadline_ms
        return rec.create_ms + int(self.config.replay_within_s * 1000)

    async def _stats(self) -> command_pb2.QueueStats:
        with _queue_errors():
            c = await self.agents.jobs.stats()
        return command_pb2.QueueStats(
            waiting=c.waiting,
            delayed=c.delayed,
            active=c.active,
            completed=c.completed,
            failed=c.failed,
            paused=c.paused,
            workers=c.workers,
        )

    async def _bounded_page(self, read: listing.PageReader, size: int) -> command_pb2.AgentPage:
        """A page of at most ``size`` agents whose signed reply fits the message limit, its
        items' long texts cut (spoke/listing.py)."""
        return await listing.bounded_page(
            read, size, self.config.name, self.config.max_message_bytes
        )

    @staticmethod
    def _page_size(size: int) -> int:
        if size < 0:
            raise errors.InvalidCommandError("page_size must not be negative")
        return min(size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)

    def _agent_id(self, agent: str) -> str:
        if agent.startswith("spokes/"):
            parts = agent.split("/")
            if len(parts) != 4 or parts[2] != "agents":
                raise errors.InvalidCommandError("agent name must be spokes/{spoke}/agents/{id}")
            if parts[1] != self.config.name:
                raise errors.WrongAudienceError(f"agent {agent} is not on this spoke")
            agent = parts[3]
        commands.check_command_id(agent)
        return agent

    def _reply(self, auth: Authorized, **result: Any) -> command_pb2.SignedEnvelope:
        reply = command_pb2.Reply(
            command_id=auth.command.command_id,
            responder=self.config.name,
            request_digest=commands.digest(auth.command_payload),
            issue_time=wire.timestamp_now(),
            **result,
        )
        return envelope.sign(reply.SerializeToString(), envelope.PAYLOAD_TYPE_REPLY, self.key)
