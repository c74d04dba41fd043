"""Every inbound command is verified here before anything else looks at it.

A request carries one of two envelopes:

* a **Command** signed by a client the spoke trusts (direct call), or
* a **Relay** signed by a hub the spoke trusts, wrapping the client's original signed
  Command intact (chain of custody).

Checks, in order, all before any state is touched except the rate bucket and the nonce:
signature by a trusted key of the right role → signer is the issuer → over mutual TLS, the
caller's certificate names that signer (the client for a direct call, the relaying hub for
a relay: ``hubspoke.grpc.bind_signer``, UNAUTHENTICATED TRANSPORT_IDENTITY_MISMATCH) → the
body fits the RPC → audience is this spoke (or, for a relayed command, the relaying hub) →
inside the validity window, within the clock skew → the client's request rate → nonce unseen
(the hop's envelope, and for a relay the client's command inside it as well). The service
then applies the policy.

Two clocks (spoke/deadline.py): the client's signature window is judged at the command's
*acceptance* (the hub's ``Relay.accept_time``, which must lie inside the relay's own window
and be at most ``max_relay_age_s`` old, or this spoke's receive time for a direct call);
only a spawn may arrive after its window so (a command of any other body must still be
inside it now). A spawn's start deadline (acceptance + ``start_within``) must not have
passed. The client's nonce of a spawn stays claimed until the latest start deadline any
acceptance inside its window could give (``expire_time`` + skew + ``start_within``), plus
the skew: a captured spawn, sent again straight, through a hub or inside a fresh relay,
finds its nonce claimed for as long as it could still start.
Once the client's signature checks out, ``command_id`` and ``issuer`` are bound to the call's
log context (the hub binds the same two), so the call's log lines, rejections included, carry
them.
The spoke judges the *client*, never the hub: a hub key alone can not act for a
principal the spoke does not trust.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hubspoke import commands, envelope, errors
from hubspoke import grpc as sgrpc
from hubspoke.admission import Admission, NonceClaim
from hubspoke.gen.federation.v1 import command_pb2
from hubspoke.trust import Role, TrustStore

from .deadline import Deadlines, start_within
from .keys import SpokeKeys


@dataclass(frozen=True, slots=True)
class Authorized:
    """A command that passed every check."""

    principal: str
    """The client whose signed command this is."""
    command: command_pb2.Command
    command_payload: bytes
    """The exact bytes the client signed (replies bind to their digest)."""
    client_envelope: command_pb2.SignedEnvelope
    relay_envelope: command_pb2.SignedEnvelope | None
    via: str
    """The hub that relayed it, or "" for a direct call."""
    expires: dt.datetime
    accepted: dt.datetime | None = None
    """The acceptance time: the hub's (Relay.accept_time) or this spoke's receive time."""
    start_deadline: dt.datetime | None = None
    """A spawn's start deadline: ``accepted`` + its start_within (None for other bodies)."""
    prefetched: tuple[str, dict[bytes, bytes]] | None = None
    """(key, hash) read in the admission's round trip (``Verifier.prefetch``), if any."""


@dataclass(frozen=True, slots=True)
class Pending:
    """A checked command's admission, still to run: ``principal``'s rate token, then every
    nonce claim, in one round trip (or none claimed)."""

    principal: str
    rate_key: str
    claims: tuple[NonceClaim, ...]


SPOKE_ADDRESSED = frozenset({"spawn_agent", "pause_queue", "resume_queue", "drain_queue"})
"""Bodies that must name the spoke itself as audience, even when relayed by a hub."""


def _placed(cmd: command_pb2.Command) -> bool:
    """A spawn whose client let the hub choose the spoke (a selector; protocol.md §4.8)."""
    return cmd.WhichOneof("body") == "spawn_agent" and bool(cmd.spawn_agent.selector)


class Verifier:
    def __init__(
        self,
        spoke: str,
        trust: TrustStore,
        window: commands.Window,
        admission: Admission,
        deadlines: Deadlines | None = None,
    ) -> None:
        self.spoke = spoke
        self.trust = trust
        self.window = window
        self.admission = admission
        self.deadlines = deadlines or Deadlines()
        self.keys = SpokeKeys(spoke)
        self.prefetch: Callable[[command_pb2.Command, str], str | None] | None = None
        """Set by the service: the hash a direct command will read first (a status command's
        record), read in the admission script's round trip (issue 13: one per status)."""

    async def verify(self, env: command_pb2.SignedEnvelope, body: str) -> Authorized:
        """Every check, the admission (rate token, nonces) last."""
        auth, pending = self.check(env, body)
        read = self.prefetch(auth.command, body) if self.prefetch and not auth.via else None
        raw = await self.admit(pending, read)
        if read is not None and raw is not None:
            return dataclasses.replace(auth, prefetched=(read, raw))
        return auth

    async def admit(self, pending: Pending, read: str | None = None) -> dict[bytes, bytes] | None:
        """The admission ``check`` left: the client's rate token, then every nonce, in one
        round trip (with ``read``: that hash's HGETALL in it too)."""
        return await self.admission.admit_and_read(
            pending.principal, pending.rate_key, pending.claims, read=read
        )

    def admission_call(self, pending: Pending) -> tuple[list[str], list[Any]]:
        """``pending``'s admission script keys and arguments, for a script that runs it first
        (``AgentQueue.create(admit=)``: a spawn in one round trip)."""
        return self.admission.call(pending.rate_key, pending.claims)

    def refuse(self, pending: Pending, verdict: int, detail: object) -> None:
        """Raise what the admission raises for a refusal inside another script."""
        self.admission.refuse(pending.principal, verdict, detail)

    def check(self, env: command_pb2.SignedEnvelope, body: str) -> tuple[Authorized, Pending]:
        """Every check but the admission, which the caller must run (``admit``, or inside a
        script with ``admission_call``) before anything else is done for the command."""
        if env.payload_type == envelope.PAYLOAD_TYPE_RELAY:
            return self._relayed(env, body)
        if env.payload_type != envelope.PAYLOAD_TYPE_COMMAND:
            raise errors.InvalidCommandError("unknown or missing payload_type")
        verified = envelope.verify(
            env, payload_type=envelope.PAYLOAD_TYPE_COMMAND, trust=self.trust, roles={Role.CLIENT}
        )
        cmd = self._check_command(verified, body)
        sgrpc.bind_signer(cmd.issuer, "command")  # over mTLS: the certificate names the issuer
        if cmd.audience != self.spoke:
            raise errors.WrongAudienceError(f"command is for {cmd.audience!r}, not this spoke")
        accepted = commands.now()  # a direct call is accepted as it arrives
        expires = commands.check_window(
            cmd.issue_time, cmd.expire_time, cmd.nonce, self.window, at=accepted
        )
        start_by, hold = self._start_deadline(cmd, accepted, expires)
        auth = Authorized(
            cmd.issuer, cmd, verified.payload, env, None, "", expires, accepted, start_by
        )
        return auth, self._pending(cmd.issuer, self._claim(cmd.issuer, cmd.nonce, hold))

    def _relayed(self, env: command_pb2.SignedEnvelope, body: str) -> tuple[Authorized, Pending]:
        outer = envelope.verify(
            env, payload_type=envelope.PAYLOAD_TYPE_RELAY, trust=self.trust, roles={Role.HUB}
        )
        relay = commands.parse_relay(outer.payload)
        if relay.issuer != outer.peer:
            raise errors.SignatureInvalidError("relay issuer does not match the signing key")
        sgrpc.bind_signer(relay.issuer, "relay")  # over mTLS: the hub's certificate names it
        if relay.audience != self.spoke:
            raise errors.WrongAudienceError(f"relay is for {relay.audience!r}, not this spoke")
        relay_expires = commands.check_window(
            relay.issue_time, relay.expire_time, relay.nonce, self.window
        )
        inner = envelope.verify(
            relay.command,
            payload_type=envelope.PAYLOAD_TYPE_COMMAND,
            trust=self.trust,
            roles={Role.CLIENT},
        )
        cmd = self._check_command(inner, body)
        if cmd.audience not in (self.spoke, relay.issuer):
            raise errors.WrongAudienceError(f"command is for {cmd.audience!r}, not this spoke")
        if body in SPOKE_ADDRESSED and cmd.audience != self.spoke and not _placed(cmd):
            # A client lets a hub route reads and kills of an agent it names; it never lets
            # the hub pick where new work runs or whose queue to change, unless its spawn
            # carries a selector (the hub then picks among the spokes its labels match).
            raise errors.WrongAudienceError(f"a {body} command must name this spoke as audience")
        accepted = self._accepted(relay)
        expires = commands.check_window(
            cmd.issue_time, cmd.expire_time, cmd.nonce, self.window, at=accepted
        )
        if body != "spawn_agent":  # only a spawn is delivered after its window
            commands.check_window(cmd.issue_time, cmd.expire_time, cmd.nonce, self.window)
        start_by, hold = self._start_deadline(cmd, accepted, expires)
        auth = Authorized(
            cmd.issuer,
            cmd,
            inner.payload,
            relay.command,
            env,
            relay.issuer,
            expires,
            accepted,
            start_by,
        )
        # The client's own nonce too: otherwise a command the hub relayed once could be sent
        # again straight to this spoke, or re-wrapped by whoever holds the hub key. The
        # key is the same one a direct call claims. Clients re-sign every retry.
        return auth, self._pending(
            cmd.issuer,
            self._claim(relay.issuer, relay.nonce, relay_expires),
            self._claim(cmd.issuer, cmd.nonce, hold),
        )

    def _pending(self, principal: str, *claims: NonceClaim) -> Pending:
        return Pending(principal, self.keys.rate(principal), claims)

    def _accepted(self, relay: command_pb2.Relay) -> dt.datetime:
        """The hub's acceptance time: inside the relay's own window (the hub accepted the
        command before it signed the relay) and at most ``max_relay_age`` old; a relay
        without one (a hub from before it) is accepted now."""
        at = commands.now()
        if not relay.HasField("accept_time"):
            return at
        accepted = commands.from_timestamp(relay.accept_time)
        if accepted > commands.from_timestamp(relay.issue_time) + self.window.max_skew:
            raise errors.InvalidCommandError("relay accept_time is after its issue_time")
        if at - accepted > self.deadlines.max_relay_age:
            raise errors.CommandExpiredError(
                f"relay accepted more than {self.deadlines.max_relay_age.total_seconds():g} s "
                "ago (max_relay_age_s)"
            )
        return accepted

    def _start_deadline(
        self, cmd: command_pb2.Command, accepted: dt.datetime, expires: dt.datetime
    ) -> tuple[dt.datetime | None, dt.datetime]:
        """A spawn's start deadline (refused once passed), and until when its client nonce
        is held: the latest deadline any acceptance inside the window could give. Any other
        body has no deadline, and its nonce is held until its window ends."""
        if cmd.WhichOneof("body") != "spawn_agent":
            return None, expires
        within = start_within(cmd.spawn_agent, self.deadlines.start_within)
        start_by = accepted + within
        if start_by <= commands.now():
            raise errors.StartDeadlinePassedError(
                f"spawn {cmd.command_id} can no longer start: its start deadline "
                f"{start_by.isoformat()} has passed",
                agent=cmd.command_id,
            )
        return start_by, expires + self.window.max_skew + within

    def _claim(self, issuer: str, nonce: bytes, until: dt.datetime) -> NonceClaim:
        """A nonce is kept while its command can still be accepted or, for a spawn, started:
        until then, plus the clock skew; kept in Redis, so it survives a restart and binds
        every spoked on it."""
        return NonceClaim.until_expired(
            self.keys.nonce(issuer, nonce.hex()), until, self.window.max_skew
        )

    def _check_command(self, verified: envelope.Verified, body: str) -> command_pb2.Command:
        cmd = commands.parse_command(verified.payload)
        if cmd.issuer != verified.peer:
            raise errors.SignatureInvalidError("command issuer does not match the signing key")
        sgrpc.bind_command(cmd.command_id, cmd.issuer)
        commands.check_command_id(cmd.command_id)
        which = cmd.WhichOneof("body")
        if which != body:
            raise errors.InvalidCommandError(f"this call takes a {body} command, not {which}")
        return cmd
