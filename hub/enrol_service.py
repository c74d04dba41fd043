"""EnrolService: how a spoke that is not a member yet proves itself and joins.

``ProveHub``: the spoke sends a random challenge; the hub answers a ``HubProof`` signed by its
key. The spoke checks it against the key its token pins *before* it sends the token, so a
token presented to another hub is never disclosed to it.

``EnrollSpoke``: an ``EnrolmentRequest`` signed by the spoke's new key, whose public key
travels beside it. The hub checks that signature (proof of possession) before it parses the
request, the request's time against its clock skew, the token (its hub, its name, then uses
it once: unknown, used and expired tokens are refused, each with its own reason), and the CSR
(well-formed, P-256, CN = the name) before the token is used. Then it records the member
(operator's labels and mode from the token's record; profiles and version as the spoke says,
shown only), signs the CSR with the federation CA, and answers an ``EnrolmentAnswer`` signed
by its key: the certificate, the CA, its trust store and policy.
"""

from __future__ import annotations

import datetime as dt
import tomllib
from pathlib import Path
from typing import Any

import grpc
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from hubspoke import commands, envelope, errors, keys
from hubspoke import enrol_token as tokens
from hubspoke.gen.federation.v1 import enrol_pb2, enrol_service_pb2
from hubspoke.trust import Role, TrustConfigError, TrustedKey, TrustStore

from . import init_join
from .enrol import (
    EnrolCalls,
    EnrolSettings,
    SpokeNameTakenError,
    TokenExpiredError,
    TokenUnknownError,
    TokenUsedError,
)
from .enrol_limits import EnrolRateLimit
from .membership import MODE_CONNECT, MODE_DIAL, Membership
from .membership_store import TokenState

__all__ = ["EnrolServicer"]

log = structlog.get_logger("hubspoke.hub.enrol")

_Ctx = grpc.aio.ServicerContext[Any, Any]
_MIN_CHALLENGE, _MAX_CHALLENGE = 16, 64
_REFUSALS: dict[TokenState, type[errors.CommandError]] = {
    TokenState.UNKNOWN: TokenUnknownError,
    TokenState.USED: TokenUsedError,
    TokenState.EXPIRED: TokenExpiredError,
}
_WORDS = {
    TokenState.UNKNOWN: "is not known to this hub",
    TokenState.USED: "was used already (each token enrols once)",
    TokenState.EXPIRED: "has expired",
}


class EnrolServicer:
    """The EnrolService RPCs; errors are ``hubspoke.errors`` (the transport converts)."""

    def __init__(self, calls: EnrolCalls, membership: Membership) -> None:
        self._calls = calls
        self._membership = membership
        self._limit = EnrolRateLimit(calls.settings.rate_per_s, calls.settings.rate_burst)

    @property
    def _cfg(self) -> EnrolSettings:
        return self._calls.settings

    async def ProveHub(
        self, request: enrol_service_pb2.EnrolServiceProveHubRequest, context: _Ctx
    ) -> enrol_service_pb2.EnrolServiceProveHubResponse:
        self._limit.check(context.peer())
        if not _MIN_CHALLENGE <= len(request.challenge) <= _MAX_CHALLENGE:
            raise errors.InvalidCommandError(
                f"challenge must be {_MIN_CHALLENGE}-{_MAX_CHALLENGE} bytes"
            )
        proof = enrol_pb2.HubProof(
            hub=self._cfg.hub_name,
            challenge=request.challenge,
            issue_time=commands.to_timestamp(commands.now()),
        )
        signed = envelope.sign(
            proof.SerializeToString(), tokens.PAYLOAD_TYPE_HUB_PROOF, self._cfg.key
        )
        return enrol_service_pb2.EnrolServiceProveHubResponse(proof=signed)

    async def EnrollSpoke(
        self, request: enrol_service_pb2.EnrolServiceEnrollSpokeRequest, context: _Ctx
    ) -> enrol_service_pb2.EnrolServiceEnrollSpokeResponse:
        self._limit.check(context.peer())
        if not self._cfg.address:
            raise errors.InvalidCommandError("this hub serves no enrolment")
        public = _public_key(request.public_key)
        verified = envelope.verify(
            request.request,
            payload_type=tokens.PAYLOAD_TYPE_REQUEST,
            trust=TrustStore(
                [TrustedKey("enrolling", Role.SPOKE, public, keys.fingerprint(public))]
            ),
            roles={Role.SPOKE},
        )
        asked = enrol_pb2.EnrolmentRequest()
        try:
            asked.ParseFromString(verified.payload)
        except Exception as exc:  # protobuf's DecodeError and friends: bad input, not a bug
            raise errors.InvalidCommandError("the enrolment request does not parse") from exc
        self._check_time(asked)
        try:
            token = tokens.decode(asked.token)
        except tokens.TokenFormatError as exc:
            raise errors.InvalidCommandError(str(exc)) from exc
        if token.hub != self._cfg.hub_name or token.hub_public_key != (
            self._cfg.key.public.public_bytes_raw()
        ):
            raise TokenUnknownError("the token was issued by another hub")
        if asked.name != token.name:
            raise errors.InvalidCommandError(
                f"the token enrols {token.name!r}, the request names {asked.name!r}"
            )
        self._calls.check_free(asked.name)
        token_hash = tokens.secret_hash(token.secret)
        early = await self._membership.store.peek_token(token_hash)
        if early is not TokenState.OK:  # say why the token is no good before anything else
            raise _REFUSALS[early](f"the enrolment token {_WORDS[early]}", spoke=asked.name)
        await self._membership.fresh()
        if self._membership.member(asked.name) is not None:  # two tokens for one name
            raise SpokeNameTakenError(
                f"spoke {asked.name!r} is enrolled already: remove it first", spoke=asked.name
            )
        join = self._join_request(asked, public)
        state, record = await self._membership.store.consume_token(token_hash)
        if record is None:
            log.warning("enrol_token_refused", spoke=asked.name, state=str(state))
            raise _REFUSALS[state](f"the enrolment token {_WORDS[state]}", spoke=asked.name)
        if record.name != asked.name:  # the token's own name was checked: a forged record
            raise TokenUnknownError("the token does not enrol this name")
        address = "" if record.connect else (record.address or asked.address)
        if not record.connect and not address:
            raise errors.InvalidCommandError("dial mode needs an address: the spoke gave none")
        cert_pem, ca_pem = "", ""
        if join is not None and self._cfg.ca_cert_file and self._cfg.ca_key_file:
            try:
                cert_pem, ca_pem = init_join.sign_csr(
                    join, self._cfg.ca_cert_file, self._cfg.ca_key_file, self._cfg.cert_days
                )
            except init_join.JoinError as exc:
                raise errors.InvalidCommandError(str(exc)) from exc
        member = enrol_pb2.Member(
            name=asked.name,
            key_id=f"{asked.name}/{keys.fingerprint(public)}",
            public_key=keys.encode_public(public),
            labels=dict(record.labels),
            mode=MODE_CONNECT if record.connect else MODE_DIAL,
            address=address,
            profiles=list(asked.profiles)[:64],
            version=asked.version[:64],
            enroll_time=commands.to_timestamp(commands.now()),
        )
        revision = await self._membership.store.add(member)
        await self._membership.reload()
        log.info("spoke_enrolled", spoke=asked.name, mode=member.mode, revision=revision)
        answer = enrol_pb2.EnrolmentAnswer(
            hub=self._cfg.hub_name,
            name=asked.name,
            request_digest=commands.digest(verified.payload),
            certificate_pem=cert_pem,
            ca_pem=ca_pem,
            trust_toml=self._trust_toml(),
            policy_toml=_read(self._cfg.policy_file),
            revision=revision,
            issue_time=commands.to_timestamp(commands.now()),
        )
        signed = envelope.sign(
            answer.SerializeToString(), tokens.PAYLOAD_TYPE_ANSWER, self._cfg.key
        )
        return enrol_service_pb2.EnrolServiceEnrollSpokeResponse(answer=signed)

    def _check_time(self, asked: enrol_pb2.EnrolmentRequest) -> None:
        if not asked.HasField("issue_time"):
            raise errors.InvalidCommandError("the enrolment request has no issue_time")
        skew = dt.timedelta(seconds=self._cfg.max_skew_s)
        at = commands.from_timestamp(asked.issue_time)
        if abs(commands.now() - at) > skew:
            raise errors.CommandExpiredError(
                "the enrolment request's issue_time is outside the hub's clock skew"
            )

    def _join_request(
        self, asked: enrol_pb2.EnrolmentRequest, public: Ed25519PublicKey
    ) -> init_join.JoinRequest | None:
        """The CSR as ``hubctl init add-spoke`` checks it; None when the hub has no TLS."""
        if not self._cfg.ca_fingerprint:
            return None
        if not asked.csr_pem:
            raise errors.InvalidCommandError("this hub speaks TLS: the request needs a CSR")
        join = init_join.JoinRequest(
            name=asked.name,
            public_key=keys.encode_public(public),
            address=asked.address or "-",
            csr_pem=asked.csr_pem,
        )
        try:
            join.csr()
        except init_join.JoinError as exc:
            raise errors.InvalidCommandError(str(exc)) from exc
        return join

    def _trust_toml(self) -> str:
        """The hub's trust store as the spoke should start with it: with this hub's key."""
        text = _read(self._cfg.trust_file)
        try:
            store = TrustStore.from_mapping(tomllib.loads(text)) if text else None
        except (tomllib.TOMLDecodeError, TrustConfigError):
            store = None
        hub, fp = self._cfg.hub_name, keys.fingerprint(self._cfg.key.public)
        if store is not None and fp in {k.fingerprint for k in store.keys_of(hub)}:
            return text
        return (
            text.rstrip("\n")
            + f'\n\n[[peer]]\nname = "{hub}"\nrole = "hub"\n'
            + f'keys = ["{keys.encode_public(self._cfg.key.public)}"]\n'
        ).lstrip("\n")


def _public_key(raw: bytes) -> Ed25519PublicKey:
    if len(raw) != 32:
        raise errors.InvalidCommandError("public_key must be 32 raw Ed25519 bytes")
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise errors.InvalidCommandError("public_key is not an Ed25519 key") from exc


def _read(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        return path.read_text()
    except OSError:
        return ""
