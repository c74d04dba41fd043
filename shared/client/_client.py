"""``Client``: sign commands, call HubService, verify every reply before believing it.

Every reply is checked before it is returned: it must be signed by a spoke (by the addressed
spoke, when the command named one; spoke listings by the hub), answer exactly the command
sent (same ``command_id``, ``request_digest`` over the signed bytes), carry the result the
verb promises, and be about what was asked for: the agent asked for, on the spoke that
signed, for every agent of a listing too. A reply that fails any check raises
:class:`CallError` with reason ``REPLY_INVALID``.

Only UNAVAILABLE is retried (3 attempts, 0.2 s then 0.4 s apart), except SPOKE_CIRCUIT_OPEN
(the hub's circuit breaker for the spoke is open: it says when to retry, in
``retry_after_ms``). A retry signs the command
again with a fresh nonce and the same ``command_id``, which is the spoke's idempotency key.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import datetime as dt
import os
from collections.abc import AsyncGenerator, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Final, Self, TypeVar

import grpc
from google.protobuf.message import Message

from hubspoke import commands, dedupe, envelope, errors, fanout, keys, version
from hubspoke import grpc as sgrpc
from hubspoke import tls as stls
from hubspoke.gen.federation.v1 import (
    agent_pb2,
    audit_pb2,
    command_pb2,
    hub_service_pb2_grpc,
    outbox_pb2,
)
from hubspoke.trust import Role, TrustStore

from . import _enrol, _events, _rpc
from ._audit import AuditPage, AuditRecord
from ._errors import CallError, ClientConfigError
from ._events import FeedEvent
from ._outbox import OutboxItem, OutboxList
from ._placement import Placement, spawn_body
from ._types import (
    Agent,
    AgentEvent,
    AgentList,
    AgentPage,
    AgentState,
    EventKind,
    FederatedQueueStats,
    QueueStats,
    Spoke,
)

__all__ = ["Client"]

_ATTEMPTS: Final = 3
_BACKOFF_S: Final = (0.2, 0.4)
_POLL_S: Final = 0.5
_WATCH_MAX_S: Final = 24 * 3600.0
_B = TypeVar("_B", bound=Message)
_Q = TypeVar("_Q", bound=Message)
_S = TypeVar("_S", bound=Message)
_AB = TypeVar(
    "_AB",
    command_pb2.GetAgentBody,
    command_pb2.KillAgentBody,
    command_pb2.ReplayAgentBody,
    command_pb2.VerifyAgentBody,
    command_pb2.SendInputBody,
    command_pb2.ApproveAgentBody,
    command_pb2.RejectAgentBody,
)


@dataclass(frozen=True, slots=True)
class _Sent:
    """A signed command as sent: what its reply must be bound to."""

    command: command_pb2.Command
    envelope: command_pb2.SignedEnvelope


@dataclass(frozen=True, slots=True)
class _Target:
    """An agent reference split into what its replies must match."""

    agent: str
    """As given: an id or a resource name (sent as is)."""
    agent_id: str | None
    """The id replies must carry; None when the reference is malformed (the spoke refuses)."""
    spoke: str | None
    """The spoke replies must be signed by, when known."""

    @classmethod
    def of(cls, agent: str, spoke: str | None) -> _Target:
        if not agent.startswith("spokes/"):
            return cls(agent, agent, spoke)
        parts = agent.split("/")
        if len(parts) != 4 or parts[2] != "agents":
            return cls(agent, None, spoke)
        return cls(agent, parts[3], spoke or parts[1])


class Client:
    """An async client of one hub. Use ``async with``; the channel opens in the running loop.

    Example::

        async with Client.from_config("hubctl.toml") as client:
            agent = await client.spawn("spoke-1", "synthetic", "duration=1")
            agent = await client.wait(agent, timeout=60)
    """

    def __init__(
        self,
        address: str,
        principal: str,
        key: keys.SigningKey,
        trust: TrustStore,
        hub_name: str = "hub",
        timeout_s: float = 15.0,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        server_name: str | None = None,
    ) -> None:
        """Args:
            address: the hub's host:port, or several hubds of one federation (they share
                one identity and one Redis) as ``host:port,host:port``: a call that finds
                no hubd answering is sent again to the next.
            principal: the name this client signs as (a ``client`` peer of the trust store).
            key: the principal's signing key.
            trust: the store that names the hub (role hub) and the spokes (role spoke).
            hub_name: the hub's peer name: the audience of commands for the hub itself.
            timeout_s: the deadline of each RPC.
            credentials: dial over TLS, checking the hub's certificate carries ``server_name``
                (default: ``hub_name``). Without them only a loopback hub is dialled.

        Raises:
            ClientConfigError: no credentials and ``address`` is not on loopback.
        """
        self._addresses = [a.strip() for a in address.split(",") if a.strip()]
        if not self._addresses:
            raise ClientConfigError("no hub address")
        for one in self._addresses:
            if credentials is None and not stls.is_loopback(one):
                raise ClientConfigError(f"hub {one}: {stls.PLAINTEXT_REFUSED}")
        self._credentials = credentials
        self._server_name = server_name or hub_name
        self.address = address
        self.principal = principal
        self.hub_name = hub_name
        self.timeout_s = timeout_s
        self._key = key
        # Static trust, then the hub's signed membership list (enrolled spokes).
        self._trust: TrustStore = _enrol.MembershipTrust(trust)
        self.membership_max_age_s = _enrol.MEMBERSHIP_MAX_AGE_S
        self._channel: grpc.aio.Channel | None = None
        self._retired: list[grpc.aio.Channel] = []
        self._stub: hub_service_pb2_grpc.HubServiceAsyncStub | None = None

    @classmethod
    def from_config(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        hub: str | None = None,
        timeout_s: float = 15.0,
        env: Mapping[str, str] | None = None,
    ) -> Client:
        """A client from a hubctl config file, as ``hubctl`` builds its own.

        Args:
            path: the config file; default ``HUBCTL_CONFIG`` from ``env``.
            hub: the hub's address, overriding ``HUBCTL_HUB`` and the file.
            env: the environment to read (default: ``os.environ``).

        Raises:
            ClientConfigError: no config named, or it (or a file it names) is unusable.
        """
        from .config import client_from_config  # config builds clients: imported late

        env = os.environ if env is None else env
        if path is None:
            path = env.get("HUBCTL_CONFIG") or None
            if path is None:
                raise ClientConfigError("no hubctl config: pass a path or set HUBCTL_CONFIG")
        return client_from_config(Path(path), hub=hub, timeout_s=timeout_s, env=env)

    async def __aenter__(self) -> Self:
        self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _open(self) -> hub_service_pb2_grpc.HubServiceAsyncStub:
        if self._stub is None:
            self._channel = sgrpc.open_channel(
                self._addresses[0], None, self._credentials, self._server_name
            )
            self._stub = hub_service_pb2_grpc.HubServiceStub(self._channel)
        return self._stub

    def _next_hub(self, failed: str) -> None:
        """Move on from ``failed``, one of several hub addresses where a call found nobody
        (unless a concurrent call already did); its channel is closed with the client, so
        calls still on it are not cut short."""
        if self._addresses[0] != failed:
            return
        self._addresses.append(self._addresses.pop(0))
        if self._channel is not None:
            self._retired.append(self._channel)
        self._channel, self._stub = None, None

    async def close(self) -> None:
        """Close the channel; idempotent. The client opens a new one if used again."""
        channel, self._channel, self._stub = self._channel, None, None
        retired, self._retired = self._retired, []
        for old in [*retired, *([channel] if channel is not None else [])]:
            await old.close(None)

    # -- agents -----------------------------------------------------------------------------

    async def spawn(
        self,
        spoke: str,
        profile: str,
        task: str,
        *,
        priority: int = 0,
        timeout_s: float | None = None,
        command_id: str | None = None,
        labels: Mapping[str, str] | None = None,
        max_attempts: int = 0,
        delay_s: float | None = None,
        start_within_s: float | None = None,
        dedupe_key: str = "",
        dedupe_from_task: bool = False,
        selector: Mapping[str, str] | None = None,
    ) -> Agent:
        """Start an agent on ``spoke``; returns it as the spoke stored it (normally QUEUED).

        Args:
            timeout_s: the agent's maximum run time (not the RPC deadline).
            command_id: the idempotency key and the agent's id (default: a new UUID).
            delay_s: do not start it before this many seconds have passed since its
                acceptance (the hub's, or the spoke's for a direct call).
            start_within_s: it may start until its acceptance plus this, else it ends
                EXPIRED (default: the profile's, else the spoke's, normally 24 h).
                Independent of the command's signature window.
            selector: let the hub choose the spoke (pass ``spoke=""``): the least loaded,
                relative to its size, of the READY spokes whose operator labels carry every
                ``key=value`` here (docs/protocol.md §4.8).
            dedupe_key: while an agent of this caller with this key is not final, the spawn
                returns that agent (``agent.raw.deduplicated``) instead of a new one.
            dedupe_from_task: the same with a key derived from profile and task
                (docs/protocol.md §4.7).
        """
        body = command_pb2.SpawnAgentBody(
            profile=profile,
            task=task,
            priority=priority,
            labels=dict(labels or {}),
            max_attempts=max_attempts,
            dedupe_key=dedupe_key,
            dedupe_from_task=dedupe_from_task,
        )
        if timeout_s is not None:
            body.timeout.FromTimedelta(dt.timedelta(seconds=timeout_s))
        if delay_s is not None:
            body.delay.FromTimedelta(dt.timedelta(seconds=delay_s))
        if start_within_s is not None:
            body.start_within.FromTimedelta(dt.timedelta(seconds=start_within_s))
        body.selector.update(selector or {})
        cid = command_id or commands.new_command_id()
        sent, resp = await self._call(_rpc.SPAWN, spoke or self.hub_name, body, cid)
        if dedupe_key or dedupe_from_task:
            return self._deduped_reply(sent, resp.reply, spoke or None, cid, body)
        return self._agent_reply(sent, resp.reply, spoke or None, cid)

    async def plan_spawn(
        self,
        spoke: str,
        profile: str,
        task: str,
        *,
        command_id: str | None = None,
        selector: Mapping[str, str] | None = None,
        **options: Any,
    ) -> Placement:
        """Rehearse a spawn (``dry_run``): where it would go and why, changing nothing.

        With ``selector`` (and ``spoke=""``) the hub screens and scores its spokes and asks
        the chosen one to check the spawn; with a named ``spoke`` that spoke checks it.
        ``options`` are spawn's (priority, timeout_s, labels, max_attempts, delay_s,
        start_within_s). A refusal raises ``CallError`` as the spawn would.
        """
        body = spawn_body(profile, task, selector=selector, dry_run=True, **options)
        sent, resp = await self._call(
            _rpc.SPAWN, spoke or self.hub_name, body, command_id or commands.new_command_id()
        )
        role = Role.SPOKE if spoke else Role.HUB
        signer = spoke or self.hub_name
        who, reply = self._verify(sent, resp.reply, role, signer, "placement")
        return Placement.from_proto(reply.placement, who)

    async def drain_spoke(self, spoke: str) -> Spoke:
        """Stop new placements on ``spoke`` (every hub on the hub's Redis); agents there go
        on. Returns the spoke as the hub now shows it."""
        return await self._drain_verb(_rpc.DRAIN_SPOKE, command_pb2.DrainSpokeBody(spoke=spoke))

    async def undrain_spoke(self, spoke: str) -> Spoke:
        """Let a drained spoke take new placements again."""
        body = command_pb2.UndrainSpokeBody(spoke=spoke)
        return await self._drain_verb(_rpc.UNDRAIN_SPOKE, body)

    async def _drain_verb(
        self,
        verb: _rpc.Unary[_B, Any, Any],
        body: _B,
    ) -> Spoke:
        sent, resp = await self._call(verb, self.hub_name, body)
        _, reply = self._verify(sent, resp.reply, Role.HUB, self.hub_name, "spoke")
        return Spoke.from_proto(reply.spoke)

    async def get(self, agent: str, spoke: str | None = None) -> Agent:
        """Read one agent, by id or resource name; ``spoke`` skips the hub's lookup."""
        return await self._agent_verb(_rpc.GET, command_pb2.GetAgentBody(agent=agent), spoke)

    async def kill(self, agent: str, spoke: str | None = None) -> Agent:
        """Stop one agent; returns it, in its final state if the kill completed in time."""
        return await self._agent_verb(_rpc.KILL, command_pb2.KillAgentBody(agent=agent), spoke)

    async def replay(self, agent: str, spoke: str | None = None) -> Agent:
        """Run a dead-lettered, failed, timed-out or lost agent again with fresh attempts."""
        body = command_pb2.ReplayAgentBody(agent=agent)
        return await self._agent_verb(_rpc.REPLAY, body, spoke)

    async def verify(self, agent: str, items: Mapping[str, str], spoke: str | None = None) -> Agent:
        """Settle verification items of a NEEDS_VERIFICATION agent: ``items`` maps each
        item's name to ``"passed"`` or ``"failed"``. Returns the agent: SUCCEEDED once every
        item it waits on passed, FAILED (VERIFICATION_FAILED) once one failed, else still
        NEEDS_VERIFICATION."""
        body = command_pb2.VerifyAgentBody(agent=agent, items=dict(items))
        return await self._agent_verb(_rpc.VERIFY, body, spoke)

    async def send(self, agent: str, text: str, spoke: str | None = None) -> Agent:
        """Send ``text`` to an agent (signed, kept by its spoke with the signature). A
        running agent finds it appended to its inbox (``HUBSPOKE_INBOX``); a NEEDS_INPUT
        agent is queued for its next attempt, which starts with it (the reply shows it
        QUEUED). A final agent is refused (FAILED_PRECONDITION), and so is text over the
        hub's or the spoke's ``max_input_bytes`` (INVALID_ARGUMENT). Returns the agent."""
        body = command_pb2.SendInputBody(agent=agent, text=text)
        return await self._agent_verb(_rpc.SEND, body, spoke)

    async def approve(self, agent: str, reason: str = "", spoke: str | None = None) -> Agent:
        """Approve an AWAITING_APPROVAL agent as one of its approvers (``reason``: at most
        1,024 characters). Returns the agent: QUEUED once it has every approval it needs,
        else still AWAITING_APPROVAL with this approval in ``approved_by``. Its requester,
        and anyone not among its ``approvers``, is refused (PERMISSION_DENIED)."""
        body = command_pb2.ApproveAgentBody(agent=agent, reason=reason)
        return await self._agent_verb(_rpc.APPROVE, body, spoke)

    async def reject(self, agent: str, reason: str = "", spoke: str | None = None) -> Agent:
        """Reject an AWAITING_APPROVAL agent as one of its approvers: it ends REJECTED
        (REJECTED_BY_APPROVER) and never runs."""
        body = command_pb2.RejectAgentBody(agent=agent, reason=reason)
        return await self._agent_verb(_rpc.REJECT, body, spoke)

    async def list(
        self,
        spoke: str | None = None,
        page_size: int = 50,
        states: Collection[int] = (),
        page_token: str = "",
        *,
        labels: Mapping[str, str] | None = None,
        profile: str = "",
        owner: str = "",
        dedupe_key: str = "",
    ) -> AgentList:
        """A page of agents from one spoke, or from every spoke when ``spoke`` is None.

        Only agents in ``states`` (empty: any), carrying every one of ``labels``, and of
        ``profile``, ``owner`` (the issuer) and ``dedupe_key`` when set; each spoke filters
        its own. A page token is per spoke: pass it with that ``spoke`` (each page's
        ``next_page_token`` is in ``pages``).

        A fan-out whose pages did not all fit in the hub's response names the spokes it left
        out (signed); each of them is then listed alone, so the result has every page."""
        body = command_pb2.ListAgentsBody(
            page_size=page_size,
            page_token=page_token,
            states=[agent_pb2.Agent.State.ValueType(s) for s in states],
            labels=dict(labels or {}),
            profile=profile,
            owner=owner,
            dedupe_key=dedupe_key,
        )
        sent, resp = await self._call(_rpc.LIST_AGENTS, spoke or self.hub_name, body)
        pages: dict[str, AgentPage] = {}
        for reply_env in resp.replies:
            signer, reply = self._verify(sent, reply_env, Role.SPOKE, spoke, "agent_page")
            if signer in pages:
                raise CallError.invalid_reply(f"two pages from spoke {signer}")
            pages[signer] = self._page(reply.agent_page, signer)
        reasons: dict[str, str] = {}
        if spoke is None:  # a fan-out: the hub signs which spokes answered and which did not
            fan = self._fan_out(
                sent,
                resp.hub_reply if resp.HasField("hub_reply") else None,
                list(pages),
                resp.unreachable_spokes,
                resp.omitted_spokes,
            )
            reasons = dict(fan.unreachable_reasons)
            for name in resp.omitted_spokes:
                alone = await self.list(
                    name,
                    page_size,
                    states,
                    labels=labels,
                    profile=profile,
                    owner=owner,
                    dedupe_key=dedupe_key,
                )
                pages.update(alone.pages)
        return AgentList(
            agents=[a for p in pages.values() for a in p.agents],
            unreachable_spokes=list(resp.unreachable_spokes),
            pages=MappingProxyType(pages),
            unreachable_reasons=MappingProxyType(reasons),
        )

    async def watch(
        self,
        agent: str,
        spoke: str | None = None,
        after: int = 0,
        max_s: float = _WATCH_MAX_S,
    ) -> AsyncGenerator[AgentEvent, None]:
        """Follow an agent's signed events until it ends, resuming after a dropped stream.

        Each event is verified end to end (signed by the agent's spoke, the same spoke
        throughout, bound to this command, about this agent). Heartbeats are yielded too, so
        a caller can tell a quiet agent from a dead link.
        """
        target = _Target.of(agent, spoke)
        signer = target.spoke
        last = after
        for attempt in range(_ATTEMPTS):
            cmd = self._command(spoke or self.hub_name, commands.new_command_id())
            _rpc.WATCH.attach(cmd, command_pb2.WatchAgentBody(agent=agent, after_sequence=last))
            sent = _Sent(cmd, commands.sign_command(cmd, self._key))
            dialled = self._addresses[0]
            call = _rpc.WATCH.method(self._open())(
                _rpc.WATCH.request(sent.envelope),
                timeout=max_s,
                metadata=version.CALL_METADATA,
            )
            try:
                async for resp in call:
                    await _enrol.know_signers(self, [_rpc.WATCH.reply(resp)])
                    signer, reply = self._verify(
                        sent, _rpc.WATCH.reply(resp), Role.SPOKE, signer, "agent_event"
                    )
                    event = reply.agent_event
                    if target.agent_id is not None and event.agent_id != target.agent_id:
                        raise CallError.invalid_reply(
                            f"asked to watch agent {target.agent_id}, "
                            f"got an event of {event.agent_id!r}"
                        )
                    if event.kind != agent_pb2.AgentEvent.KIND_HEARTBEAT:
                        last = event.sequence
                    yield AgentEvent.from_proto(event)
            except grpc.aio.AioRpcError as exc:
                failure = sgrpc.from_rpc_error(exc)
                if not _retryable(failure) or attempt + 1 == _ATTEMPTS:
                    raise CallError.from_failure(failure) from exc
                if not failure.reason and len(self._addresses) > 1:
                    self._next_hub(dialled)  # no hubd answered there: try the next one at once
                    continue
            else:
                return
            finally:
                call.cancel()
            await asyncio.sleep(_BACKOFF_S[attempt])

    def events(
        self,
        *,
        spoke: str | None = None,
        states: Collection[AgentState | str] = (),
        since: str | Mapping[str, int] | None = None,
        follow: bool = False,
        max_s: float = _WATCH_MAX_S,
    ) -> AsyncGenerator[FeedEvent, None]:
        """The event feed: every state change of every agent the caller may see, on ``spoke``
        or on every spoke, after ``since`` (a :attr:`FeedEvent.token`, or spoke → cursor),
        only ``states`` if given; with ``follow`` live until ``max_s``, else what is kept,
        ending with each spoke's heartbeat. Each entry is verified (hubspoke.client._events).
        """
        return _events.follow(
            self, spoke=spoke, states=states, since=since, live=follow, max_s=max_s
        )

    async def wait(
        self,
        agent: str | Agent,
        spoke: str | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109  # a deadline for the whole wait, applied with asyncio.timeout inside; callers need not know asyncio
        poll_s: float = _POLL_S,
    ) -> Agent:
        """Wait until an agent ends or waits on a person; returns it then.

        It returns in a final state, or in NEEDS_INPUT, NEEDS_VERIFICATION or
        AWAITING_APPROVAL (the states that wait for someone's ``send``, ``verify`` or
        ``approve``: :attr:`AgentState.settled`).
        Follows the agent's events (:meth:`watch`) and reads it once such a state comes;
        if the watch fails or ends early, polls :meth:`get` every ``poll_s`` seconds instead.

        Args:
            agent: an id, a resource name, or an :class:`Agent` already read.
            timeout: seconds to wait in all; None waits as long as it takes.

        Raises:
            TimeoutError: the agent had not ended after ``timeout`` seconds.
            CallError: reading the agent failed.
        """
        async with asyncio.timeout(timeout):
            if isinstance(agent, Agent):
                current = agent
            else:
                current = await self.get(agent, spoke)
            if current.state.settled:
                return current
            ref, where = current.agent_id, current.spoke or spoke
            try:
                async with contextlib.aclosing(self.watch(ref, where)) as events:
                    async for event in events:
                        if event.kind == EventKind.STATE and event.state.settled:
                            break
            except CallError:
                pass  # watch refused or lost (or not offered): read the agent instead
            while True:
                current = await self.get(ref, where)
                if current.state.settled:
                    return current
                await asyncio.sleep(poll_s)

    # -- the hub's outbox --------------------------------------------------------------------

    async def outbox(self, spoke: str | None = None, page_size: int = 100) -> OutboxList:
        """The commands the hub holds for spokes it could not reach (kills first), as the
        hub signed them (policy verb ``outbox``; under an ``own`` rule only the caller's)."""
        body = outbox_pb2.ListOutboxBody(spoke=spoke or "", page_size=page_size)
        sent, resp = await self._call(_rpc.LIST_OUTBOX, self.hub_name, body)
        _, reply = self._verify(sent, resp.reply, Role.HUB, self.hub_name, "outbox_page")
        page = reply.outbox_page
        return OutboxList(tuple(OutboxItem.from_proto(e) for e in page.entries), page.total)

    # -- the hub's audit log -----------------------------------------------------------------

    async def audit_log(
        self, *, page_size: int = 50, before_seq: int = 0, agent: str = "", principal: str = ""
    ) -> AuditPage:
        """A page of the hub's audit log, newest first, as the hub signed it (policy verb
        ``audit``; under an ``own`` rule only the caller's own entries)."""
        body = audit_pb2.ReadAuditLogBody(
            page_size=page_size, before_seq=before_seq, agent=agent, principal=principal
        )
        sent, resp = await self._call(_rpc.READ_AUDIT_LOG, self.hub_name, body)
        _, reply = self._verify(sent, resp.reply, Role.HUB, self.hub_name, "audit_page")
        page = reply.audit_page
        return AuditPage(
            tuple(AuditRecord.from_proto(e) for e in page.entries), page.next_before_seq
        )

    # -- enrolment (shared/client/_enrol.py) ------------------------------------------------

    async def enroll_spoke(
        self,
        name: str,
        *,
        labels: Mapping[str, str] | None = None,
        address: str = "",
        connect: bool = False,
        ttl_s: float | None = None,
    ) -> _enrol.EnrolmentTicket:
        """A one-time token that enrols spoke ``name`` (``spoked --enroll TOKEN``), with the
        operator's ``labels`` and its ``address`` (or ``connect`` mode), usable once within
        ``ttl_s`` (capped by the hub's enrol_token_ttl_s)."""
        return await _enrol.enroll_spoke(
            self, name, labels=labels, address=address, connect=connect, ttl_s=ttl_s
        )

    async def remove_spoke(self, name: str) -> _enrol.Membership:
        """Revoke an enrolled spoke: every hub on the hub's Redis refuses its key at once.
        Returns the membership after the removal, as the hub signed it."""
        return await _enrol.remove_spoke(self, name)

    async def membership(self) -> _enrol.Membership:
        """The hub's signed membership list (enrolled spokes, their keys, labels, modes)."""
        return await _enrol.membership(self)

    # -- spokes and queues ------------------------------------------------------------------

    async def spokes(self) -> builtins.list[Spoke]:
        """The hub's spokes and their health, as the hub signed them."""
        sent, resp = await self._call(_rpc.LIST_SPOKES, self.hub_name, command_pb2.ListSpokesBody())
        _, reply = self._verify(sent, resp.reply, Role.HUB, self.hub_name, "spoke_page")
        return [Spoke.from_proto(s) for s in reply.spoke_page.spokes]

    async def queue_stats(self, spoke: str) -> QueueStats:
        """One spoke's queue counts."""
        return await self._queue_verb(_rpc.GET_QUEUE_STATS, command_pb2.GetQueueStatsBody, spoke)

    async def queue_stats_all(self) -> FederatedQueueStats:
        """Every spoke's queue counts at once (those the caller may read), under the hub's
        one fan-out deadline; each spoke's counts are signed by it, and which spokes gave
        none, and why, by the hub."""
        sent, resp = await self._call(
            _rpc.GET_QUEUE_STATS, self.hub_name, command_pb2.GetQueueStatsBody()
        )
        per_spoke: dict[str, QueueStats] = {}
        for reply_env in resp.replies:
            signer, reply = self._verify(sent, reply_env, Role.SPOKE, None, "queue_stats")
            if signer in per_spoke:
                raise CallError.invalid_reply(f"two queue counts from spoke {signer}")
            per_spoke[signer] = QueueStats.from_proto(reply.queue_stats)
        fan = self._fan_out(
            sent,
            resp.hub_reply if resp.HasField("hub_reply") else None,
            list(per_spoke),
            resp.unreachable_spokes,
        )
        return FederatedQueueStats(
            per_spoke=MappingProxyType(per_spoke),
            unreachable_spokes=list(resp.unreachable_spokes),
            unreachable_reasons=MappingProxyType(dict(fan.unreachable_reasons)),
        )

    def _fan_out(
        self,
        sent: _Sent,
        hub_reply: command_pb2.SignedEnvelope | None,
        reply_signers: Collection[str],
        unreachable: Collection[str],
        omitted: Collection[str] = (),
    ) -> command_pb2.FanOut:
        """The hub's signed account of a fan-out, checked against the answers beside it."""
        try:
            return fanout.verify_fan_out(
                hub_reply,
                trust=self._trust,
                hub_name=self.hub_name,
                command_id=sent.command.command_id,
                command_payload=sent.envelope.payload,
                reply_signers=reply_signers,
                unreachable_spokes=unreachable,
                omitted_spokes=omitted,
            )
        except fanout.FanOutInvalidError as exc:
            raise CallError.invalid_reply(exc.message) from exc

    async def pause(self, spoke: str) -> QueueStats:
        """Stop a spoke's workers from taking new agents (running ones go on)."""
        return await self._queue_verb(_rpc.PAUSE, command_pb2.PauseQueueBody, spoke)

    async def resume(self, spoke: str) -> QueueStats:
        """Let a paused spoke's workers take agents again."""
        return await self._queue_verb(_rpc.RESUME, command_pb2.ResumeQueueBody, spoke)

    async def drain(self, spoke: str) -> QueueStats:
        """Cancel every agent still waiting on a spoke; ``drained`` says how many."""
        return await self._queue_verb(_rpc.DRAIN, command_pb2.DrainQueueBody, spoke)

    async def dead_letters(
        self, spoke: str, page_size: int = 50, page_token: str = ""
    ) -> AgentPage:
        """A page of one spoke's dead-letter set."""
        body = command_pb2.ListDeadLettersBody(page_size=page_size, page_token=page_token)
        sent, resp = await self._call(_rpc.LIST_DEAD_LETTERS, spoke, body)
        signer, reply = self._verify(sent, resp.reply, Role.SPOKE, spoke, "agent_page")
        return self._page(reply.agent_page, signer)

    # -- plumbing ---------------------------------------------------------------------------

    async def _agent_verb(
        self, verb: _rpc.Unary[_AB, _Q, _S], payload: _AB, spoke: str | None
    ) -> Agent:
        target = _Target.of(payload.agent, spoke)
        sent, resp = await self._call(verb, spoke or self.hub_name, payload)
        [reply_env] = verb.replies(resp)
        return self._agent_reply(sent, reply_env, target.spoke, target.agent_id)

    async def _queue_verb(
        self, verb: _rpc.Unary[_B, _Q, _S], body: type[_B], spoke: str
    ) -> QueueStats:
        sent, resp = await self._call(verb, spoke, body())
        [reply_env] = verb.replies(resp)
        _, reply = self._verify(sent, reply_env, Role.SPOKE, spoke, "queue_stats")
        return QueueStats.from_proto(reply.queue_stats)

    def _command(self, audience: str, command_id: str) -> command_pb2.Command:
        return commands.build_command(
            issuer=self.principal, audience=audience, command_id=command_id
        )

    async def _call(
        self,
        verb: _rpc.Unary[_B, _Q, _S],
        audience: str,
        payload: _B,
        command_id: str | None = None,
    ) -> tuple[_Sent, _S]:
        """Sign and send one command; on UNAVAILABLE sign it again (fresh nonce, same
        command_id) and retry."""
        cid = command_id or commands.new_command_id()
        for attempt in range(_ATTEMPTS):
            cmd = self._command(audience, cid)
            verb.attach(cmd, payload)
            sent = _Sent(cmd, commands.sign_command(cmd, self._key))
            dialled = self._addresses[0]
            try:
                resp = await verb.method(self._open())(
                    verb.request(sent.envelope),
                    timeout=self.timeout_s,
                    metadata=version.CALL_METADATA,
                )
            except grpc.aio.AioRpcError as exc:
                failure = sgrpc.from_rpc_error(exc)
                if not _retryable(failure) or attempt + 1 == _ATTEMPTS:
                    raise CallError.from_failure(failure) from exc
                if not failure.reason and len(self._addresses) > 1:
                    self._next_hub(dialled)  # no hubd answered there: try the next one at once
                    continue
            else:
                await _enrol.know_signers(self, verb.replies(resp))
                return sent, resp
            await asyncio.sleep(_BACKOFF_S[attempt])
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _verify(
        self,
        sent: _Sent,
        reply_env: command_pb2.SignedEnvelope,
        role: Role,
        signer: str | None,
        result: _rpc.Result,
    ) -> tuple[str, command_pb2.Reply]:
        """The reply's signer and the reply, once it is proven to answer ``sent``."""
        try:
            verified = envelope.verify(
                reply_env, payload_type=envelope.PAYLOAD_TYPE_REPLY, trust=self._trust, roles={role}
            )
            reply = commands.parse_reply(verified.payload)
        except errors.CommandError as exc:
            raise CallError.invalid_reply(f"reply failed verification: {exc.message}") from exc
        if signer is not None and verified.peer != signer:
            raise CallError.invalid_reply(f"reply is signed by {verified.peer}, not by {signer}")
        if reply.responder != verified.peer:
            raise CallError.invalid_reply("reply's responder is not its signer")
        if reply.command_id != sent.command.command_id or reply.request_digest != commands.digest(
            sent.envelope.payload
        ):
            raise CallError.invalid_reply("reply does not answer the command sent")
        if reply.WhichOneof("result") != result:
            raise CallError.invalid_reply(f"reply carries no {result}")
        return verified.peer, reply

    def _agent_reply(
        self,
        sent: _Sent,
        reply_env: command_pb2.SignedEnvelope,
        spoke: str | None,
        agent_id: str | None = None,
    ) -> Agent:
        """The agent a reply carries, once it is the agent asked for, from its own spoke (or
        from the hub, for an agent the hub holds in its outbox: ``_hub_held``)."""
        try:
            signer, reply = self._verify(sent, reply_env, Role.SPOKE, spoke, "agent")
        except CallError:
            held = self._hub_held(sent, reply_env, spoke, agent_id)
            if held is None:
                raise
            return held
        return _checked_agent(reply.agent, signer, agent_id)

    def _hub_held(
        self,
        sent: _Sent,
        reply_env: command_pb2.SignedEnvelope,
        spoke: str | None,
        agent_id: str | None,
    ) -> Agent | None:
        """An agent answered and signed by the hub because it holds it in its outbox
        (docs/protocol.md, "Store and forward"), or None if the reply is not one."""
        try:
            _, reply = self._verify(sent, reply_env, Role.HUB, self.hub_name, "agent")
        except CallError:
            return None
        agent = reply.agent
        if not hub_may_answer(agent):
            raise CallError.invalid_reply(
                f"the hub signed agent {agent.agent_id!r} in state "
                f"{agent_pb2.Agent.State.Name(agent.state)}, which only its spoke may"
            )
        if spoke is not None and agent.spoke != spoke:
            raise CallError.invalid_reply(
                f"asked spoke {spoke}, the hub answered for {agent.spoke}"
            )
        if agent_id is not None and agent.agent_id != agent_id:
            raise CallError.invalid_reply(f"asked for agent {agent_id}, got {agent.agent_id!r}")
        return Agent.from_proto(agent)

    def _deduped_reply(
        self,
        sent: _Sent,
        reply_env: command_pb2.SignedEnvelope,
        spoke: str | None,
        command_id: str,
        body: command_pb2.SpawnAgentBody,
    ) -> Agent:
        """A dedupe spawn's agent: the one it created, or (``deduplicated``) the caller's
        agent that holds the same key."""
        signer, reply = self._verify(sent, reply_env, Role.SPOKE, spoke, "agent")
        if not reply.agent.deduplicated:
            return _checked_agent(reply.agent, signer, command_id)
        key = dedupe.resolve(body.dedupe_key, body.dedupe_from_task, body.profile, body.task)
        if reply.agent.dedupe_key != key or reply.agent.issuer != self.principal:
            raise CallError.invalid_reply(
                f"agent {reply.agent.agent_id!r} does not hold this caller's dedupe key {key}"
            )
        return _checked_agent(reply.agent, signer, None)

    @staticmethod
    def _page(page: command_pb2.AgentPage, signer: str) -> AgentPage:
        for agent in page.agents:
            _checked_agent(agent, signer, None)
        return AgentPage.from_proto(page)


def hub_may_answer(agent: agent_pb2.Agent) -> bool:
    """Whether the hub may sign ``agent``: one it holds in its outbox, one that ended there, or
    one whose kill it holds (docs/protocol.md, "Store and forward")."""
    state = agent.state
    if agent.kill_pending:
        return state == agent_pb2.Agent.STATE_UNSPECIFIED
    return (
        state == agent_pb2.Agent.STATE_PENDING_DELIVERY
        or (state == agent_pb2.Agent.STATE_EXPIRED and agent.reason == "UNDELIVERED")
        or (state == agent_pb2.Agent.STATE_KILLED and agent.reason == "KILLED_BEFORE_DELIVERY")
        or (state == agent_pb2.Agent.STATE_FAILED and agent.reason.startswith("DELIVERY_REFUSED"))
    )


def _checked_agent(agent: agent_pb2.Agent, signer: str, agent_id: str | None) -> Agent:
    """``agent`` as the client's type, once it is on the spoke that signed it (and is
    ``agent_id``, when one was asked for)."""
    if agent.spoke != signer:
        raise CallError.invalid_reply(
            f"spoke {signer} answered for agent {agent.agent_id!r} of spoke {agent.spoke!r}"
        )
    if agent_id is not None and agent.agent_id != agent_id:
        raise CallError.invalid_reply(f"asked for agent {agent_id}, got {agent.agent_id!r}")
    if agent.name and agent.name != f"spokes/{signer}/agents/{agent.agent_id}":
        raise CallError.invalid_reply(f"agent {agent.agent_id!r} is named {agent.name!r}")
    return Agent.from_proto(agent)


def _retryable(failure: sgrpc.CallFailure) -> bool:
    """UNAVAILABLE, unless the hub's circuit for the spoke is open (retry_after_ms says when)."""
    return failure.code == grpc.StatusCode.UNAVAILABLE and failure.reason != "SPOKE_CIRCUIT_OPEN"
