"""Enrolment for the client: tokens, removal, and the hub-signed membership list.

:class:`MembershipTrust` is the client's trust store with the hub's membership in it: the
static ``trust.toml`` first, then the keys of the spokes the hub's signed membership list
names. The client fetches that list (GetMembership, verified with the hub's static key) when a
reply is signed by a key its trust file does not hold, or by an enrolled key whose list is
older than ``membership_max_age_s``: so an enrolled spoke's replies verify without editing
trust files, and a removed spoke's reply is refused (at once for a new process such as
hubctl; within ``membership_max_age_s`` for a long-lived client).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

import grpc

from hubspoke import commands, envelope, errors, keys, version
from hubspoke import grpc as sgrpc
from hubspoke.gen.federation.v1 import command_pb2, enrol_pb2, hub_service_pb2
from hubspoke.trust import Role, TrustedKey, TrustStore

from ._errors import CallError

if TYPE_CHECKING:
    from ._session import Session

__all__ = [
    "MEMBERSHIP_MAX_AGE_S",
    "EnrolmentTicket",
    "Member",
    "Membership",
    "MembershipTrust",
]

MEMBERSHIP_MAX_AGE_S: Final = 5.0
"""Default of ``Client.membership_max_age_s``: how long a fetched membership list vouches
for an enrolled spoke's key before it is fetched again."""


@dataclass(frozen=True, slots=True)
class Member:
    """One enrolled spoke as the hub's signed list names it."""

    name: str
    key_id: str
    public_key: str
    labels: Mapping[str, str]
    mode: str
    address: str
    profiles: tuple[str, ...]
    version: str
    enroll_time: dt.datetime | None
    revision: int
    raw: enrol_pb2.Member

    @classmethod
    def from_proto(cls, m: enrol_pb2.Member) -> Member:
        return cls(
            name=m.name,
            key_id=m.key_id,
            public_key=m.public_key,
            labels=MappingProxyType(dict(m.labels)),
            mode=m.mode,
            address=m.address,
            profiles=tuple(m.profiles),
            version=m.version,
            enroll_time=commands.from_timestamp(m.enroll_time)
            if m.HasField("enroll_time")
            else None,
            revision=m.revision,
            raw=m,
        )


@dataclass(frozen=True, slots=True)
class Membership:
    """The hub's membership list, verified: every enrolled spoke and the revision."""

    members: tuple[Member, ...]
    revision: int
    raw: enrol_pb2.Membership


@dataclass(frozen=True, slots=True)
class EnrolmentTicket:
    """A one-time enrolment token (give it to the new spoke: ``spoked --enroll TOKEN``)."""

    token: str
    name: str
    expire_time: dt.datetime


class MembershipTrust(TrustStore):
    """Static trust first, then the spokes of the last verified membership list."""

    def __init__(self, static: TrustStore) -> None:
        super().__init__(())
        self._static = static
        self._keys: Mapping[str, TrustedKey] = MappingProxyType({})
        self._names: frozenset[str] = frozenset()
        self._fetched = -1.0

    @property
    def static(self) -> TrustStore:
        return self._static

    def use(self, membership: Membership) -> None:
        found: dict[str, TrustedKey] = {}
        for m in membership.members:
            if self._static.role_of(m.name) is not None:
                continue  # a static peer's name: the trust file decides about it
            try:
                public = keys.decode_public(m.public_key)
            except keys.KeyFileError:
                continue
            fp = keys.fingerprint(public)
            found[fp] = TrustedKey(m.name, Role.SPOKE, public, fp)
        self._keys = MappingProxyType(found)
        self._names = frozenset(k.peer for k in found.values())
        self._fetched = time.monotonic()

    def needs_fetch(
        self, envelopes: Iterable[command_pb2.SignedEnvelope], max_age_s: float
    ) -> bool:
        """Whether a reply's key is unknown here, or vouched for by a list too old."""
        now = dt.datetime.now(dt.UTC)
        for env in envelopes:
            for sig in env.signatures:
                fp = sig.key_id.rpartition("/")[2]
                if self._static.candidates(fp, now) or self._static.is_revoked(fp):
                    continue
                if self._fetched < 0 or time.monotonic() - self._fetched > max_age_s:
                    return True
                if fp not in self._keys:
                    return True
        return False

    def candidates(self, fingerprint: str, now: dt.datetime) -> list[TrustedKey]:
        found = self._static.candidates(fingerprint, now)
        if found or self._static.is_revoked(fingerprint):
            return found
        key = self._keys.get(fingerprint)
        return [key] if key is not None and key.valid_at(now) else []

    def role_of(self, peer: str) -> Role | None:
        role = self._static.role_of(peer)
        return Role.SPOKE if role is None and peer in self._names else role

    def keys_of(self, peer: str) -> list[TrustedKey]:
        found = self._static.keys_of(peer)
        return found or [k for k in self._keys.values() if k.peer == peer]

    def peers(self, role: Role | None = None) -> list[str]:
        names = set(self._static.peers(role))
        if role in (None, Role.SPOKE):
            names |= self._names
        return sorted(names)

    def is_revoked(self, fingerprint: str) -> bool:
        return self._static.is_revoked(fingerprint)


async def know_signers(client: Session, envelopes: Iterable[command_pb2.SignedEnvelope]) -> None:
    """Fetch the hub's membership list if a reply's signer needs it (see the module doc).
    A failed fetch is not an error here: the reply's check then fails as for any unknown key."""
    trust = client._trust
    if not isinstance(trust, MembershipTrust):
        return
    if not trust.needs_fetch(envelopes, client.membership_max_age_s):
        return
    try:
        trust.use(await membership(client))
    except CallError:
        trust.use(Membership((), 0, enrol_pb2.Membership()))


async def enroll_spoke(
    client: Session,
    name: str,
    *,
    labels: Mapping[str, str] | None = None,
    address: str = "",
    connect: bool = False,
    ttl_s: float | None = None,
) -> EnrolmentTicket:
    body = enrol_pb2.EnrollSpokeBody(
        name=name, labels=dict(labels or {}), address=address, connect=connect
    )
    if ttl_s is not None:
        body.ttl.FromTimedelta(dt.timedelta(seconds=ttl_s))
    reply = await _hub_call(client, "CreateEnrolment", "enroll_spoke", body)
    if reply.WhichOneof("result") != "enrolment_ticket":
        raise CallError.invalid_reply("reply carries no enrolment_ticket")
    t = reply.enrolment_ticket
    return EnrolmentTicket(t.token, t.name, commands.from_timestamp(t.expire_time))


async def remove_spoke(client: Session, name: str) -> Membership:
    reply = await _hub_call(
        client, "RemoveSpoke", "remove_spoke", enrol_pb2.RemoveSpokeBody(name=name)
    )
    return _membership_of(reply)


async def membership(client: Session) -> Membership:
    reply = await _hub_call(
        client, "GetMembership", "get_membership", enrol_pb2.GetMembershipBody()
    )
    return _membership_of(reply)


def _membership_of(reply: command_pb2.Reply) -> Membership:
    if reply.WhichOneof("result") != "membership":
        raise CallError.invalid_reply("reply carries no membership")
    m = reply.membership
    return Membership(tuple(Member.from_proto(x) for x in m.members), m.revision, m)


_REQUESTS: Final[dict[str, Any]] = {
    "CreateEnrolment": hub_service_pb2.HubServiceCreateEnrolmentRequest,
    "RemoveSpoke": hub_service_pb2.HubServiceRemoveSpokeRequest,
    "GetMembership": hub_service_pb2.HubServiceGetMembershipRequest,
}


async def _hub_call(client: Session, rpc: str, body_field: str, body: Any) -> command_pb2.Reply:
    """Sign one command for the hub itself, send it, and verify the hub's signed reply."""
    cmd = commands.build_command(
        issuer=client.principal, audience=client.hub_name, command_id=commands.new_command_id()
    )
    getattr(cmd, body_field).CopyFrom(body)
    signed = commands.sign_command(cmd, client._key)
    method = getattr(client._open(), rpc)
    try:
        resp = await method(
            _REQUESTS[rpc](command=signed), timeout=client.timeout_s, metadata=version.CALL_METADATA
        )
    except grpc.aio.AioRpcError as exc:
        raise CallError.from_failure(sgrpc.from_rpc_error(exc)) from exc
    trust = client._trust
    static = trust.static if isinstance(trust, MembershipTrust) else trust
    try:
        verified = envelope.verify(
            resp.reply, payload_type=envelope.PAYLOAD_TYPE_REPLY, trust=static, roles={Role.HUB}
        )
        reply = commands.parse_reply(verified.payload)
    except errors.CommandError as exc:
        raise CallError.invalid_reply(f"reply failed verification: {exc.message}") from exc
    if verified.peer != client.hub_name or reply.responder != client.hub_name:
        raise CallError.invalid_reply(f"reply is signed by {verified.peer}, not by the hub")
    if reply.command_id != cmd.command_id or reply.request_digest != commands.digest(
        signed.payload
    ):
        raise CallError.invalid_reply("reply does not answer the command sent")
    return reply
