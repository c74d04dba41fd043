"""The typed table of HubService RPCs: one entry per verb, nothing looked up by name.

Each entry says which body a verb's ``Command`` carries (its payload type), how the signed
command is wrapped into the RPC's request, which stub method sends it, which role must sign
the reply, and which ``Reply.result`` the reply must carry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Generic, Literal, TypeAlias, TypeVar

from google.protobuf.message import Message
from grpc import aio

from hubspoke.gen.federation.v1 import audit_pb2, command_pb2, hub_service_pb2, outbox_pb2
from hubspoke.trust import Role

if TYPE_CHECKING:
    from hubspoke.gen.federation.v1 import hub_service_pb2_grpc

    Stub: TypeAlias = hub_service_pb2_grpc.HubServiceAsyncStub  # exists for type checkers only

__all__ = [
    "APPROVE",
    "DRAIN",
    "DRAIN_SPOKE",
    "GET",
    "GET_QUEUE_STATS",
    "KILL",
    "LIST_AGENTS",
    "LIST_DEAD_LETTERS",
    "LIST_OUTBOX",
    "LIST_SPOKES",
    "PAUSE",
    "READ_AUDIT_LOG",
    "REJECT",
    "REPLAY",
    "RESUME",
    "SPAWN",
    "UNDRAIN_SPOKE",
    "VERIFY",
    "WATCH",
    "Result",
    "Stream",
    "Unary",
]

Result = Literal[
    "agent",
    "agent_page",
    "spoke_page",
    "queue_stats",
    "agent_event",
    "audit_page",
    "placement",
    "spoke",
    "outbox_page",
]
"""The ``Reply.result`` oneof names."""

Envelope = command_pb2.SignedEnvelope
Command = command_pb2.Command
_B = TypeVar("_B", bound=Message)
_Q = TypeVar("_Q", bound=Message)
_S = TypeVar("_S", bound=Message)


@dataclass(frozen=True, slots=True)
class Unary(Generic[_B, _Q, _S]):
    """A unary verb: one signed command in, one or more signed replies out."""

    rpc: str
    """The RPC's name, for messages."""
    payload: type[_B]
    """The body message this verb's Command carries."""
    body: Callable[[Command], _B]
    """The Command's body field for this verb (the oneof member)."""
    request: Callable[[Envelope], _Q]
    method: Callable[[Stub], aio.UnaryUnaryMultiCallable[_Q, _S]]
    replies: Callable[[_S], Sequence[Envelope]]
    """The signed replies in the response (several only for a listing on every spoke)."""
    signer: Role
    result: Result

    def attach(self, cmd: Command, payload: _B) -> None:
        """Put ``payload`` into ``cmd`` as this verb's body (present even when empty)."""
        body = self.body(cmd)
        body.SetInParent()
        body.MergeFrom(payload)


@dataclass(frozen=True, slots=True)
class Stream(Generic[_B, _Q, _S]):
    """A server-streaming verb: each streamed response carries one signed reply."""

    rpc: str
    payload: type[_B]
    body: Callable[[Command], _B]
    request: Callable[[Envelope], _Q]
    method: Callable[[Stub], aio.UnaryStreamMultiCallable[_Q, _S]]
    reply: Callable[[_S], Envelope]
    signer: Role
    result: Result

    def attach(self, cmd: Command, payload: _B) -> None:
        body = self.body(cmd)
        body.SetInParent()
        body.MergeFrom(payload)


hs = hub_service_pb2

SPAWN: Final = Unary(
    "SpawnAgent",
    command_pb2.SpawnAgentBody,
    lambda c: c.spawn_agent,
    lambda e: hs.HubServiceSpawnAgentRequest(command=e),
    lambda s: s.SpawnAgent,
    lambda r: (r.reply,),
    Role.SPOKE,
    "agent",
)
GET: Final = Unary(
    "GetAgent",
    command_pb2.GetAgentBody,
    lambda c: c.get_agent,
    lambda e: hs.HubServiceGetAgentRequest(command=e),
    lambda s: s.GetAgent,
    lambda r: (r.reply,),
    Role.SPOKE,
    "agent",
)
KILL: Final = Unary(
    "KillAgent",
    command_pb2.KillAgentBody,
    lambda c: c.kill_agent,
    lambda e: hs.HubServiceKillAgentRequest(command=e),
    lambda s: s.KillAgent,
    lambda r: (r.reply,),
    Role.SPOKE,
    "agent",
)
REPLAY: Final = Unary(
    "ReplayAgent",
    command_pb2.ReplayAgentBody,
    lambda c: c.replay_agent,
    lambda e: hs.HubServiceReplayAgentRequest(command=e),
    lambda s: s.ReplayAgent,
    lambda r: (r.reply,),
    Role.SPOKE,
    "agent",
)
DRAIN_SPOKE: Final = Unary(
    "DrainSpoke",
    command_pb2.DrainSpokeBody,
    lambda c: c.drain_spoke,
    lambda e: hs.HubServiceDrainSpokeRequest(command=e),
    lambda s: s.DrainSpoke,
    lambda r: (r.reply,),
    Role.HUB,
    "spoke",
)
UNDRAIN_SPOKE: Final = Unary(
    "UndrainSpoke",
    command_pb2.UndrainSpokeBody,
    lambda c: c.undrain_spoke,
    lambda e: hs.HubServiceUndrainSpokeRequest(command=e),
    lambda s: s.UndrainSpoke,
    lambda r: (r.reply,),
    Role.HUB,
    "spoke",
)
VERIFY: Final = Unary(
    "VerifyAgent",
    command_pb2.VerifyAgentBody,
    lambda c: c.verify_agent,
    lambda e: hs.HubServiceVerifyAgentRequest(command=e),
    lambda s: s.VerifyAgent,
    lambda r: (r.reply,),
    Role.SPOKE,
    "agent",
)
SEND: Final = Unary(
    "SendInput",
    command_pb2.SendInputBody,
    lambda c: c.send_input,
    lambda e: hs.HubServiceSendInputRequest(command=e),
    lambda s: s.SendInput,
    lambda r: (r.reply,),
    Role.SPOKE,
    "agent",
)
APPROVE: Final = Unary(
    "ApproveAgent",
    command_pb2.ApproveAgentBody,
    lambda c: c.approve_agent,
    lambda e: hs.HubServiceApproveAgentRequest(command=e),
    lambda s: s.ApproveAgent,
    lambda r: (r.reply,),
    Role.SPOKE,
    "agent",
)
REJECT: Final = Unary(
    "RejectAgent",
    command_pb2.RejectAgentBody,
    lambda c: c.reject_agent,
    lambda e: hs.HubServiceRejectAgentRequest(command=e),
    lambda s: s.RejectAgent,
    lambda r: (r.reply,),
    Role.SPOKE,
    "agent",
)
LIST_AGENTS: Final = Unary(
    "ListAgents",
    command_pb2.ListAgentsBody,
    lambda c: c.list_agents,
    lambda e: hs.HubServiceListAgentsRequest(command=e),
    lambda s: s.ListAgents,
    lambda r: r.replies,
    Role.SPOKE,
    "agent_page",
)
LIST_SPOKES: Final = Unary(
    "ListSpokes",
    command_pb2.ListSpokesBody,
    lambda c: c.list_spokes,
    lambda e: hs.HubServiceListSpokesRequest(command=e),
    lambda s: s.ListSpokes,
    lambda r: (r.reply,),
    Role.HUB,
    "spoke_page",
)
LIST_DEAD_LETTERS: Final = Unary(
    "ListDeadLetters",
    command_pb2.ListDeadLettersBody,
    lambda c: c.list_dead_letters,
    lambda e: hs.HubServiceListDeadLettersRequest(command=e),
    lambda s: s.ListDeadLetters,
    lambda r: (r.reply,),
    Role.SPOKE,
    "agent_page",
)
GET_QUEUE_STATS: Final = Unary(
    "GetQueueStats",
    command_pb2.GetQueueStatsBody,
    lambda c: c.get_queue_stats,
    lambda e: hs.HubServiceGetQueueStatsRequest(command=e),
    lambda s: s.GetQueueStats,
    lambda r: (r.reply,),
    Role.SPOKE,
    "queue_stats",
)
PAUSE: Final = Unary(
    "PauseQueue",
    command_pb2.PauseQueueBody,
    lambda c: c.pause_queue,
    lambda e: hs.HubServicePauseQueueRequest(command=e),
    lambda s: s.PauseQueue,
    lambda r: (r.reply,),
    Role.SPOKE,
    "queue_stats",
)
RESUME: Final = Unary(
    "ResumeQueue",
    command_pb2.ResumeQueueBody,
    lambda c: c.resume_queue,
    lambda e: hs.HubServiceResumeQueueRequest(command=e),
    lambda s: s.ResumeQueue,
    lambda r: (r.reply,),
    Role.SPOKE,
    "queue_stats",
)
DRAIN: Final = Unary(
    "DrainQueue",
    command_pb2.DrainQueueBody,
    lambda c: c.drain_queue,
    lambda e: hs.HubServiceDrainQueueRequest(command=e),
    lambda s: s.DrainQueue,
    lambda r: (r.reply,),
    Role.SPOKE,
    "queue_stats",
)
WATCH: Final = Stream(
    "WatchAgent",
    command_pb2.WatchAgentBody,
    lambda c: c.watch_agent,
    lambda e: hs.HubServiceWatchAgentRequest(command=e),
    lambda s: s.WatchAgent,
    lambda r: r.reply,
    Role.SPOKE,
    "agent_event",
)
READ_AUDIT_LOG: Final = Unary(
    "ReadAuditLog",
    audit_pb2.ReadAuditLogBody,
    lambda c: c.read_audit_log,
    lambda e: hs.HubServiceReadAuditLogRequest(command=e),
    lambda s: s.ReadAuditLog,
    lambda r: (r.reply,),
    Role.HUB,
    "audit_page",
)
LIST_OUTBOX: Final = Unary(
    "ListOutbox",
    outbox_pb2.ListOutboxBody,
    lambda c: c.list_outbox,
    lambda e: hs.HubServiceListOutboxRequest(command=e),
    lambda s: s.ListOutbox,
    lambda r: (r.reply,),
    Role.HUB,
    "outbox_page",
)
