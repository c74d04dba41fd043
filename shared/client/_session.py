"""The transport under ``Client``: one channel to a hub (or several hubds), commands signed
and sent with retries, and every reply checked before it is believed.

Every reply is checked before it is returned: it must be signed by a spoke (by the addressed
spoke, when the command named one; spoke listings by the hub), answer exactly the command
sent (same ``command_id``, ``request_digest`` over the signed bytes), carry the result the
verb promises, and be about what was asked for: the agent asked for, on the spoke that
signed, for every agent of a listing too. A reply that fails any check raises
:class:`CallError` with reason ``REPLY_INVALID``. The hub may sign an agent only in the
outbox states (``hub_may_answer``).

Only UNAVAILABLE is retried (3 attempts, 0.2 s then 0.4 s apart), except SPOKE_CIRCUIT_OPEN
(the hub's circuit breaker for the spoke is open: it says when to retry, in
``retry_after_ms``). A retry signs the command again with a fresh nonce and the same
``command_id``, which is the spoke's idempotency key; with several hub addresses, a call
that found no hubd answering goes to the next at once.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Self, TypeVar

import grpc
from google.protobuf.message import Message

from hubspoke import commands, dedupe, keys, version
from hubspoke import grpc as sgrpc
from hubspoke import tls as stls
from hubspoke.gen.federation.v1 import (
    agent_pb2,
    command_pb2,
    hub_service_pb2_grpc,
)
from hubspoke.trust import Role, TrustStore

from . import _enrol, _rpc
from ._errors import CallError, ClientConfigError
from ._reply_check import check_reply, checked_agent
from ._types import (
    Agent,
    AgentPage,
    QueueStats,
)

__all__ = ["ATTEMPTS", "BACKOFF_S", "Sent", "Session", "Target", "hub_may_answer", "retryable"]

ATTEMPTS: Final = 3
BACKOFF_S: Final = (0.2, 0.4)
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
class Sent:
    """A signed command as sent: what its reply must be bound to."""

    command: command_pb2.Command
    envelope: command_pb2.SignedEnvelope


@dataclass(frozen=True, slots=True)
class Target:
    """An agent reference split into what its replies must match."""

    agent: str
    """As given: an id or a resource name (sent as is)."""
    agent_id: str | None
    """The id replies must carry; None when the reference is malformed (the spoke refuses)."""
    spoke: str | None
    """The spoke replies must be signed by, when known."""

    @classmethod
    def of(cls, agent: str, spoke: str | None) -> Target:
        if not agent.startswith("spokes/"):
            return cls(agent, agent, spoke)
        parts = agent.split("/")
        if len(parts) != 4 or parts[2] != "agents":
            return cls(agent, None, spoke)
        return cls(agent, parts[3], spoke or parts[1])


class Session:
    """A channel to the hub and the checked calls every verb of ``Client`` is made of."""

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

    # -- plumbing ---------------------------------------------------------------------------

    async def _agent_verb(
        self, verb: _rpc.Unary[_AB, _Q, _S], payload: _AB, spoke: str | None
    ) -> Agent:
        target = Target.of(payload.agent, spoke)
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
    ) -> tuple[Sent, _S]:
        """Sign and send one command; on UNAVAILABLE sign it again (fresh nonce, same
        command_id) and retry."""
        cid = command_id or commands.new_command_id()
        for attempt in range(ATTEMPTS):
            cmd = self._command(audience, cid)
            verb.attach(cmd, payload)
            sent = Sent(cmd, commands.sign_command(cmd, self._key))
            dialled = self._addresses[0]
            try:
                resp = await verb.method(self._open())(
                    verb.request(sent.envelope),
                    timeout=self.timeout_s,
                    metadata=version.CALL_METADATA,
                )
            except grpc.aio.AioRpcError as exc:
                failure = sgrpc.from_rpc_error(exc)
                if not retryable(failure) or attempt + 1 == ATTEMPTS:
                    raise CallError.from_failure(failure) from exc
                if not failure.reason and len(self._addresses) > 1:
                    self._next_hub(dialled)  # no hubd answered there: try the next one at once
                    continue
            else:
                await _enrol.know_signers(self, verb.replies(resp))
                return sent, resp
            await asyncio.sleep(BACKOFF_S[attempt])
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _verify(
        self,
        sent: Sent,
        reply_env: command_pb2.SignedEnvelope,
        role: Role,
        signer: str | None,
        result: _rpc.Result,
    ) -> tuple[str, command_pb2.Reply]:
        """The reply's signer and the reply, once it is proven to answer ``sent``."""
        return check_reply(
            sent.command.command_id,
            sent.envelope.payload,
            reply_env,
            self._trust,
            role,
            signer,
            result,
        )

    def _agent_reply(
        self,
        sent: Sent,
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
        return checked_agent(reply.agent, signer, agent_id)

    def _hub_held(
        self,
        sent: Sent,
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
        sent: Sent,
        reply_env: command_pb2.SignedEnvelope,
        spoke: str | None,
        command_id: str,
        body: command_pb2.SpawnAgentBody,
    ) -> Agent:
        """A dedupe spawn's agent: the one it created, or (``deduplicated``) the caller's
        agent that holds the same key."""
        signer, reply = self._verify(sent, reply_env, Role.SPOKE, spoke, "agent")
        if not reply.agent.deduplicated:
            return checked_agent(reply.agent, signer, command_id)
        key = dedupe.resolve(body.dedupe_key, body.dedupe_from_task, body.profile, body.task)
        if reply.agent.dedupe_key != key or reply.agent.issuer != self.principal:
            raise CallError.invalid_reply(
                f"agent {reply.agent.agent_id!r} does not hold this caller's dedupe key {key}"
            )
        return checked_agent(reply.agent, signer, None)

    @staticmethod
    def _page(page: command_pb2.AgentPage, signer: str) -> AgentPage:
        for agent in page.agents:
            checked_agent(agent, signer, None)
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


def retryable(failure: sgrpc.CallFailure) -> bool:
    """UNAVAILABLE, unless the hub's circuit for the spoke is open (retry_after_ms says when)."""
    return failure.code == grpc.StatusCode.UNAVAILABLE and failure.reason != "SPOKE_CIRCUIT_OPEN"
