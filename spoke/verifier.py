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
Once the client's signature checks out, ``command_id`` and ``issuer`` are bound to the call's
log context (the hub binds the same two), so the call's log lines, rejections included, carry
them.
The spoke judges the *client*, never the hub: a hub key alone can not act for a
principal the spoke does not trust.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from hubspoke import commands, envelope, errors
from hubspoke import grpc as sgrpc
from hubspoke.admission import Admission, NonceClaim
from hubspoke.gen.federation.v1 import command_pb2
from hubspoke.trust import Role, TrustStore

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


SPOKE_ADDRESSED = frozenset({"spawn_agent", "pause_queue", "resume_queue", "drain_queue"})
"""Bodies that must name the spoke itself as audience, even when relayed by a hub."""


class Verifier:
    def __init__(
        self,
        spoke: str,
        trust: TrustStore,
        window: commands.Window,
        admission: Admission,
    ) -> None:
        self.spoke = spoke
        self.trust = trust
        self.window = window
        self.admission = admission
        self.keys = SpokeKeys(spoke)

    async def verify(self, env: command_pb2.SignedEnvelope, body: str) -> Authorized:
        if env.payload_type == envelope.PAYLOAD_TYPE_RELAY:
            return await self._relayed(env, body)
        if env.payload_type != envelope.PAYLOAD_TYPE_COMMAND:
            raise errors.InvalidCommandError("unknown or missing payload_type")
        verified = envelope.verify(
            env, payload_type=envelope.PAYLOAD_TYPE_COMMAND, trust=self.trust, roles={Role.CLIENT}
        )
        cmd = self._check_command(verified, body)
        sgrpc.bind_signer(cmd.issuer, "command")  # over mTLS: the certificate names the issuer
        if cmd.audience != self.spoke:
            raise errors.WrongAudienceError(f"command is for {cmd.audience!r}, not this spoke")
        expires = commands.check_window(cmd.issue_time, cmd.expire_time, cmd.nonce, self.window)
        await self._admit(cmd.issuer, self._claim(cmd.issuer, cmd.nonce, expires))
        return Authorized(cmd.issuer, cmd, verified.payload, env, None, "", expires)

    async def _relayed(self, env: command_pb2.SignedEnvelope, body: str) -> Authorized:
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
        if body in SPOKE_ADDRESSED and cmd.audience != self.spoke:
            # A client lets a hub route reads and kills of an agent it names; it never lets
            # the hub pick where new work runs or whose queue to change.
            raise errors.WrongAudienceError(f"a {body} command must name this spoke as audience")
        expires = commands.check_window(cmd.issue_time, cmd.expire_time, cmd.nonce, self.window)
        # The client's own nonce too: otherwise a command the hub relayed once could be sent
        # again straight to this spoke, or re-wrapped by whoever holds the hub key. The
        # key is the same one a direct call claims. Clients re-sign every retry.
        await self._admit(
            cmd.issuer,
            self._claim(relay.issuer, relay.nonce, relay_expires),
            self._claim(cmd.issuer, cmd.nonce, expires),
        )
        return Authorized(cmd.issuer, cmd, inner.payload, relay.command, env, relay.issuer, expires)

    async def _admit(self, principal: str, *claims: NonceClaim) -> None:
        """The client's rate token, then every nonce, in one round trip (or none claimed)."""
        await self.admission.admit(principal, self.keys.rate(principal), claims)

    def _claim(self, issuer: str, nonce: bytes, expires: dt.datetime) -> NonceClaim:
        """A nonce is kept while its command can still be accepted: until it expires, plus
        the clock skew; kept in Redis, so it survives a restart and binds every spoked on it."""
        return NonceClaim.until_expired(
            self.keys.nonce(issuer, nonce.hex()), expires, self.window.max_skew
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
