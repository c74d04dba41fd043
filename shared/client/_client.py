"""``Client``: the verbs of the Python API (shared/client/_session.py signs, sends and checks)."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import datetime as dt
import os
from collections.abc import AsyncGenerator, Collection, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, TypeVar

import grpc
from google.protobuf.message import Message

from hubspoke import commands, fanout, version
from hubspoke import grpc as sgrpc
from hubspoke.gen.federation.v1 import (
    agent_pb2,
    audit_pb2,
    command_pb2,
    outbox_pb2,
)
from hubspoke.trust import Role

from . import _enrol, _events, _rpc
from ._audit import AuditPage, AuditRecord
from ._errors import CallError, ClientConfigError
from ._events import FeedEvent
from ._outbox import OutboxItem, OutboxList
from ._placement import Placement, spawn_body
from ._session import ATTEMPTS, BACKOFF_S, Sent, Session, Target, retryable
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

_POLL_S: Final = 0.5
_WATCH_MAX_S: Final = 24 * 3600.0
_B = TypeVar("_B", bound=Message)
_Q = TypeVar("_Q", bound=Message)
_S = TypeVar("_S", bound=Message)


class Client(Session):
    """An async client of one hub. Use ``async with``; the channel opens in the running loop.

    Example::

        async with Client.from_config("hubctl.toml") as client:
            agent = await client.spawn("spoke-1", "synthetic", "duration=1")
            agent = await client.wait(agent, timeout=60)
    """

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
        target = Target.of(agent, spoke)
        signer = target.spoke
        last = after
        for attempt in range(ATTEMPTS):
            cmd = self._command(spoke or self.hub_name, commands.new_command_id())
            _rpc.WATCH.attach(cmd, command_pb2.WatchAgentBody(agent=agent, after_sequence=last))
            sent = Sent(cmd, commands.sign_command(cmd, self._key))
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
                if not retryable(failure) or attempt + 1 == ATTEMPTS:
                    raise CallError.from_failure(failure) from exc
                if not failure.reason and len(self._addresses) > 1:
                    self._next_hub(dialled)  # no hubd answered there: try the next one at once
                    continue
            else:
                return
            finally:
                call.cancel()
            await asyncio.sleep(BACKOFF_S[attempt])

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
        sent: Sent,
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
