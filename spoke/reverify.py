"""Re-verification before each start: a worker runs only what a stored, signed spawn says.

Whoever can write to the spoke's Redis can edit an agent's record (its profile, its task,
its timeout) between the spawn and the start. The record keeps the client's signed envelope
(and the hub's relay, if it came through one), so before every attempt the worker checks
them again with the trust store as it is *now* (a key revoked since the spawn refuses too),
parses the verified bytes, and compares every field that decides what runs with the record:

* exactly: the agent id (the command id), the issuer, the profile, the task, the labels,
  and the timeout and attempts when the spawn named them;
* when the spawn left the timeout or the attempts to the profile, the record holds what the
  profile said at spawn time; the attempt runs with at most what the profile says now (a
  record raised past it is held to it), so a config change between spawn and start is no
  tampering, and an edit gains nothing the spoke's own config does not allow.

Any mismatch, and any envelope that no longer verifies, raises ``TamperedError`` naming the
field (never its value); the worker ends the agent FAILED with reason ``TAMPERED`` and starts
nothing. The cost is one or two Ed25519 verifications per start (~100 µs each).
"""

from __future__ import annotations

import dataclasses

from google.protobuf.message import DecodeError

from hubspoke import commands, envelope, errors
from hubspoke.gen.federation.v1 import command_pb2
from hubspoke.trust import Role, TrustStore

from .model import AgentRecord
from .profiles import Profile

__all__ = ["TAMPERED", "TamperedError", "verified_record"]

TAMPERED = "TAMPERED"
"""The reason of an agent whose record does not match its signed spawn."""


class TamperedError(errors.HubspokeError):
    """The stored record does not match the signed spawn kept with it (or that spawn no
    longer verifies). ``what`` names the first field or check that failed."""

    def __init__(self, what: str) -> None:
        super().__init__(f"record does not match its signed spawn: {what}")
        self.what = what


def _duration_ms(d: object) -> int:
    seconds = int(getattr(d, "seconds", 0))
    nanos = int(getattr(d, "nanos", 0))
    return seconds * 1000 + nanos // 1_000_000


def _signed_command(
    stored: bytes, relay: bytes, spoke: str, trust: TrustStore
) -> command_pb2.Command:
    """The client's command in ``stored``, verified (and, with ``relay``, the hub's relay
    around it verified and holding exactly those signed bytes)."""
    via = ""  # the relaying hub, if any
    try:
        env = command_pb2.SignedEnvelope.FromString(stored)
        if relay:
            outer_env = command_pb2.SignedEnvelope.FromString(relay)
            outer = envelope.verify(
                outer_env, payload_type=envelope.PAYLOAD_TYPE_RELAY, trust=trust, roles={Role.HUB}
            )
            wrapped = commands.parse_relay(outer.payload)
            if wrapped.issuer != outer.peer or wrapped.audience != spoke:
                raise TamperedError("relay")
            inner = wrapped.command
            via = wrapped.issuer
            if inner.payload != env.payload or inner.payload_type != env.payload_type:
                raise TamperedError("relay")
        verified = envelope.verify(
            env, payload_type=envelope.PAYLOAD_TYPE_COMMAND, trust=trust, roles={Role.CLIENT}
        )
        cmd = commands.parse_command(verified.payload)
    except (errors.CommandError, DecodeError) as exc:
        raise TamperedError("signature") from exc
    if cmd.issuer != verified.peer:
        raise TamperedError("issuer")
    # A selector spawn names the hub that placed it (spoke/verifier.py); any other, this spoke.
    placed = bool(via) and cmd.audience == via and bool(cmd.spawn_agent.selector)
    if cmd.WhichOneof("body") != "spawn_agent" or (cmd.audience != spoke and not placed):
        raise TamperedError("command")
    return cmd


def verified_record(
    rec: AgentRecord,
    stored: bytes,
    relay: bytes,
    *,
    spoke: str,
    trust: TrustStore,
    profile: Profile | None,
) -> AgentRecord:
    """``rec`` as the attempt may run it, once its signed spawn checks out (module docstring).

    Args:
        stored: the client's signed envelope kept with the record.
        relay: the hub's relay envelope kept with it, or empty for a direct spawn.
        profile: this spoke's profile of that name now (None: the caller fails the agent
            UNKNOWN_PROFILE once this returned).

    Raises:
        TamperedError: the record and its signed spawn disagree, or the spawn does not verify.
    """
    if not stored:
        raise TamperedError("signature")
    cmd = _signed_command(stored, relay, spoke, trust)
    body = cmd.spawn_agent
    exact = (
        ("agent_id", cmd.command_id, rec.agent_id),
        ("issuer", cmd.issuer, rec.issuer),
        ("profile", body.profile, rec.profile),
        ("task", body.task, rec.task),
        ("labels", dict(body.labels), dict(rec.labels)),
    )
    for what, signed, stored_value in exact:
        if signed != stored_value:
            raise TamperedError(what)
    timeout_ms = _duration_ms(body.timeout)
    if timeout_ms and timeout_ms != rec.timeout_ms:
        raise TamperedError("timeout")
    if body.max_attempts and body.max_attempts != rec.max_attempts:
        raise TamperedError("max_attempts")
    if profile is None:
        return rec
    if not timeout_ms:
        limit_ms = int(profile.timeout_s * 1000)
        timeout_ms = min(rec.timeout_ms, limit_ms) if rec.timeout_ms > 0 else limit_ms
    attempts = body.max_attempts or max(1, min(rec.max_attempts, profile.max_attempts))
    return dataclasses.replace(rec, timeout_ms=timeout_ms, max_attempts=attempts)
