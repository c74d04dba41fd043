"""The hub's enrolment verbs: make a token, remove a member, sign the membership list.

``enroll_spoke`` (policy verb ``enroll``) makes a one-time token: 32 random bytes, of which
the hub keeps only SHA-256 (with the operator's name, labels, address or connect mode and
an expiry) in its Redis; the token itself also pins this hub (its enrolment address, name,
signing key and CA fingerprint; ``hubspoke.enrol_token``). The spoke uses it once, through
EnrolService (hub/enrol_service.py). ``remove_spoke`` (``unenroll``) drops a member: every
hub on that Redis refuses its key at once. ``get_membership`` (``spokes``) answers the
membership list signed by the hub, which clients verify with the hub's key and then use to
check enrolled spokes' replies.

Exception hierarchy (the hub's own; the rest are ``hubspoke.errors``)::

    hubspoke.errors.CommandError
     ├── EnrolmentDisabledError   (FAILED_PRECONDITION, ENROLMENT_DISABLED)
     ├── SpokeNameTakenError      (FAILED_PRECONDITION, SPOKE_NAME_TAKEN)
     ├── TokenUnknownError        (UNAUTHENTICATED, ENROL_TOKEN_UNKNOWN)
     ├── TokenUsedError           (UNAUTHENTICATED, ENROL_TOKEN_USED)
     └── TokenExpiredError        (UNAUTHENTICATED, ENROL_TOKEN_EXPIRED)
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import grpc

from hubspoke import commands, envelope, errors
from hubspoke import enrol_token as tokens
from hubspoke.gen.federation.v1 import command_pb2, enrol_pb2
from hubspoke.keys import SigningKey
from hubspoke.trust import TrustStore

from .membership import Membership
from .membership_store import TokenRecord
from .relay import Inbound

__all__ = [
    "ENROLL",
    "MEMBERSHIP",
    "REMOVE",
    "EnrolCalls",
    "EnrolSettings",
    "EnrolmentDisabledError",
    "SpokeNameTakenError",
    "TokenExpiredError",
    "TokenUnknownError",
    "TokenUsedError",
]

ENROLL: Final = "enroll_spoke"
REMOVE: Final = "remove_spoke"
MEMBERSHIP: Final = "get_membership"
NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
MAX_LABELS: Final = 32
MAX_LABEL_CHARS: Final = 256


class EnrolmentDisabledError(errors.CommandError):
    """This hub cannot enrol spokes (TLS without ``enrol_listen`` or a CA key)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "ENROLMENT_DISABLED"


class SpokeNameTakenError(errors.CommandError):
    """The name is a static peer's, the hub's, or an enrolled spoke's."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "SPOKE_NAME_TAKEN"


class TokenUnknownError(errors.CommandError):
    """No hub on this Redis issued this token (or its record is long gone)."""

    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "ENROL_TOKEN_UNKNOWN"


class TokenUsedError(errors.CommandError):
    """The token was used already: each enrols one spoke once."""

    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "ENROL_TOKEN_USED"


class TokenExpiredError(errors.CommandError):
    """The token's time ran out."""

    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "ENROL_TOKEN_EXPIRED"


@dataclass(frozen=True, slots=True)
class EnrolSettings:
    """What the hub's enrolment needs to know."""

    hub_name: str
    key: SigningKey
    token_ttl_s: float
    address: str
    """The enrolment address tokens carry; empty: enrolment is disabled."""
    ca_fingerprint: bytes = b""
    """SHA-256 of the CA certificate (DER); empty without TLS."""
    ca_cert_file: Path | None = None
    ca_key_file: Path | None = None
    cert_days: int = 825
    trust_file: Path | None = None
    policy_file: Path | None = None
    max_skew_s: float = 30.0
    rate_per_s: float = 2.0
    """EnrolService calls per second one caller address may make (0: no limit)."""
    rate_burst: int = 10
    """EnrolService calls one caller address may make at once."""


class EnrolCalls:
    """The three hub-level verbs; each returns the hub-signed reply envelope."""

    def __init__(
        self,
        settings: EnrolSettings,
        membership: Membership,
        static_names: Callable[[], Collection[str]],
        trust: TrustStore,
    ) -> None:
        """``static_names``: the spokes from the hub's config (names enrolment refuses)."""
        self._cfg = settings
        self._membership = membership
        self._static_names = static_names
        self._trust = trust

    @property
    def settings(self) -> EnrolSettings:
        return self._cfg

    def use_settings(self, settings: EnrolSettings) -> None:
        """Replace the settings (the enrolment address is known once the port is bound)."""
        self._cfg = settings

    def check_free(self, name: str) -> None:
        """Refuse a name that is the hub's, a static spoke's or any static trust peer's."""
        if not NAME_RE.fullmatch(name) or name == "ca":
            raise errors.InvalidCommandError(
                f"spoke name {name!r} must be 1-63 characters of A-Z a-z 0-9 . _ - "
                "starting alphanumeric"
            )
        if (
            name == self._cfg.hub_name
            or name in self._static_names()
            or self._trust.role_of(name) is not None
        ):
            raise SpokeNameTakenError(
                f"{name!r} is a static peer of this hub (its config or trust store)", spoke=name
            )

    async def create(self, inbound: Inbound) -> command_pb2.SignedEnvelope:
        body = inbound.command.enroll_spoke
        self._to_hub(inbound)
        if not self._cfg.address:
            raise EnrolmentDisabledError(
                "this hub serves no enrolment: with [tls], set enrol_listen and enrol_ca_key_file"
            )
        self.check_free(body.name)
        _check_labels(dict(body.labels))
        if body.connect and body.address:
            raise errors.InvalidCommandError("give an address or connect mode, not both")
        if body.address:
            host, sep, port = body.address.rpartition(":")
            if not sep or not host or not port.isdigit() or int(port) > 65535:
                raise errors.InvalidCommandError(f"address {body.address!r} must be host:port")
        await self._membership.fresh()
        if self._membership.member(body.name) is not None:
            raise SpokeNameTakenError(
                f"spoke {body.name!r} is enrolled already: hubctl spoke remove {body.name} first",
                spoke=body.name,
            )
        ttl_s = self._cfg.token_ttl_s
        if body.HasField("ttl"):
            asked = body.ttl.seconds + body.ttl.nanos / 1e9
            if asked <= 0:
                raise errors.InvalidCommandError("ttl must be positive")
            ttl_s = min(ttl_s, asked)
        secret = secrets.token_bytes(tokens.SECRET_BYTES)
        record = TokenRecord(
            name=body.name,
            labels=dict(body.labels),
            address=body.address,
            connect=body.connect,
            expire_ms=0,
        )
        expire_ms = await self._membership.store.create_token(
            tokens.secret_hash(secret), record, int(ttl_s * 1000)
        )
        token = enrol_pb2.EnrolToken(
            secret=secret,
            name=body.name,
            address=self._cfg.address,
            hub=self._cfg.hub_name,
            hub_public_key=self._cfg.key.public.public_bytes_raw(),
            ca_fingerprint=self._cfg.ca_fingerprint,
        )
        ticket = enrol_pb2.EnrolmentTicket(
            token=tokens.encode(token),
            name=body.name,
            expire_time=commands.to_timestamp(commands.from_epoch_ms(expire_ms)),
        )
        return self._sign(inbound, enrolment_ticket=ticket)

    async def remove(self, inbound: Inbound) -> command_pb2.SignedEnvelope:
        name = inbound.command.remove_spoke.name
        self._to_hub(inbound)
        if await self._membership.store.remove(name) is None:
            raise errors.SpokeNotFoundError(f"no enrolled spoke named {name!r}", spoke=name)
        await self._membership.reload()
        return self._sign(inbound, membership=self.membership_pb())

    async def membership(self, inbound: Inbound) -> command_pb2.SignedEnvelope:
        self._to_hub(inbound)
        await self._membership.fresh()
        return self._sign(inbound, membership=self.membership_pb())

    def membership_pb(self) -> enrol_pb2.Membership:
        return enrol_pb2.Membership(
            members=self._membership.members(),
            revision=self._membership.revision,
            issue_time=commands.to_timestamp(commands.now()),
        )

    def _to_hub(self, inbound: Inbound) -> None:
        if inbound.command.audience != self._cfg.hub_name:
            raise errors.InvalidCommandError(
                f"{inbound.verb} is answered by the hub: set the audience to {self._cfg.hub_name}"
            )

    def _sign(
        self,
        inbound: Inbound,
        *,
        enrolment_ticket: enrol_pb2.EnrolmentTicket | None = None,
        membership: enrol_pb2.Membership | None = None,
    ) -> command_pb2.SignedEnvelope:
        reply = command_pb2.Reply(
            command_id=inbound.command.command_id,
            responder=self._cfg.hub_name,
            request_digest=inbound.digest,
            issue_time=commands.to_timestamp(commands.now()),
        )
        if enrolment_ticket is not None:
            reply.enrolment_ticket.CopyFrom(enrolment_ticket)
        if membership is not None:
            reply.membership.CopyFrom(membership)
        return envelope.sign(reply.SerializeToString(), envelope.PAYLOAD_TYPE_REPLY, self._cfg.key)


def _check_labels(labels: dict[str, str]) -> None:
    if len(labels) > MAX_LABELS:
        raise errors.InvalidCommandError(f"at most {MAX_LABELS} labels")
    for k, v in labels.items():
        if not k or len(k) > MAX_LABEL_CHARS or len(v) > MAX_LABEL_CHARS:
            raise errors.InvalidCommandError(
                f"a label key must be 1-{MAX_LABEL_CHARS} characters and its value at most "
                f"{MAX_LABEL_CHARS}"
            )
