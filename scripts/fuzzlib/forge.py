"""Build requests as raw bytes: valid ones, and every way of breaking them.

A request is built in three layers, each of which a class may tamper with:

1. the ``Command`` (header and body), serialized once;
2. its ``SignedEnvelope`` (payload, payload_type, signatures);
3. for SpokeService in ``relay`` mode, a hub-signed ``Relay`` around that envelope.

Timestamps are written field by field (not through ``datetime``), so out-of-range values
can be sent. Strings that must carry invalid UTF-8 are spliced into the serialized bytes.
"""

from __future__ import annotations

import datetime as dt
import random
import secrets
import string
from dataclasses import dataclass
from typing import Any

from google.protobuf import message_factory, timestamp_pb2
from google.protobuf.message import DecodeError, Message

from hubspoke import commands, envelope, keys
from hubspoke.gen.federation.v1 import command_pb2

from .endpoints import Endpoint
from .federation import HUB, MISROUTED, SPOKE, Keys

COMMAND = envelope.PAYLOAD_TYPE_COMMAND
RELAY = envelope.PAYLOAD_TYPE_RELAY
REPLY = envelope.PAYLOAD_TYPE_REPLY
VALIDITY = dt.timedelta(minutes=5)
RELAY_VALIDITY = dt.timedelta(seconds=60)
SPOKE_ADDRESSED = frozenset({"spawn_agent", "pause_queue", "resume_queue", "drain_queue"})
HUB_ANSWERED = frozenset(
    {
        "list_spokes",
        "drain_spoke",
        "undrain_spoke",
        "enroll_spoke",
        "remove_spoke",
        "get_membership",
        "read_audit_log",
        "list_outbox",
    }
)
"""Verbs the hub answers and signs itself: their audience is the hub."""
DRAINED = MISROUTED
"""The spoke a valid drain_spoke names: spoke-1 stays open for spawns (a spawn to spoke-2 may
then meet SPOKE_DRAINING at the hub instead of WRONG_SPOKE at spoke-1)."""
AGENT_VERBS = frozenset(
    {
        "get_agent",
        "kill_agent",
        "replay_agent",
        "watch_agent",
        "verify_agent",
        "send_input",
        "approve_agent",
        "reject_agent",
    }
)


def ts(t: dt.datetime) -> timestamp_pb2.Timestamp:
    return commands.to_timestamp(t)


def flip(data: bytes, bit: int) -> bytes:
    b = bytearray(data)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


@dataclass
class Built:
    """A request and the envelopes it carries (for replays and equivalence checks)."""

    raw: bytes
    outer: command_pb2.SignedEnvelope | None
    """The envelope the server verifies first (the relay in relay mode)."""
    client: command_pb2.SignedEnvelope | None
    """The client's signed command (== outer unless relayed)."""


@dataclass
class Forge:
    keys: Keys
    rng: random.Random
    hub_name: str = HUB
    spoke_name: str = SPOKE

    # -- commands -----------------------------------------------------------------------------

    def agent_id(self) -> str:
        return f"fuzz-{self.rng.getrandbits(64):016x}"

    def body(self, verb: str, **overrides: Any) -> Message:
        """A well-formed body for ``verb`` (naming an agent that does not exist)."""
        desc = command_pb2.Command.DESCRIPTOR.fields_by_name[verb].message_type
        cls = message_factory.GetMessageClass(desc)
        body = cls()
        fields = cls.DESCRIPTOR.fields_by_name
        if "profile" in fields and "task" in fields:  # a spawn (ListAgentsBody filters by profile)
            body.profile = "synthetic"
            body.task = "duration=0"
        if "agent" in fields:
            body.agent = self.agent_id()
        if verb in ("drain_spoke", "undrain_spoke"):
            body.spoke = DRAINED
        if "page_size" in fields:
            body.page_size = 10
        if "items" in fields and "items" not in overrides:
            body.items["check"] = "passed"
        if "text" in fields:
            body.text = "fuzz"
        for k, v in overrides.items():
            if isinstance(v, Message):
                getattr(body, k).CopyFrom(v)
            elif isinstance(v, dict):
                getattr(body, k).update(v)
            else:
                setattr(body, k, v)
        return body

    def audience(self, ep: Endpoint) -> str:
        if ep.server == "hub" and ep.verb in HUB_ANSWERED:
            return self.hub_name
        return self.spoke_name

    def command(
        self,
        ep: Endpoint,
        *,
        verb: str | None = "",
        body: Message | None = None,
        audience: str | None = None,
        issuer: str = "operator",
        at: dt.datetime | None = None,
        validity: dt.timedelta = VALIDITY,
        issue: timestamp_pb2.Timestamp | None = None,
        expire: timestamp_pb2.Timestamp | None = None,
        nonce: bytes | None = None,
        command_id: str | None = None,
    ) -> command_pb2.Command:
        """A Command for ``ep``; ``verb=None`` leaves the body unset, ``""`` uses ep's verb."""
        at = at or commands.now()
        cmd = command_pb2.Command(
            command_id=commands.new_command_id() if command_id is None else command_id,
            issuer=issuer,
            audience=self.audience(ep) if audience is None else audience,
            nonce=secrets.token_bytes(24) if nonce is None else nonce,
        )
        cmd.issue_time.CopyFrom(issue if issue is not None else ts(at))
        cmd.expire_time.CopyFrom(expire if expire is not None else ts(at + validity))
        v = ep.verb if verb == "" else verb
        if v is not None:
            getattr(cmd, v).CopyFrom(body if body is not None else self.body(v))
        return cmd

    def sign(
        self,
        payload: bytes,
        key: keys.SigningKey | None = None,
        payload_type: str = COMMAND,
    ) -> command_pb2.SignedEnvelope:
        return envelope.sign(payload, payload_type, key or self.keys.operator)

    def relay(
        self,
        inner: command_pb2.SignedEnvelope,
        *,
        key: keys.SigningKey | None = None,
        issuer: str | None = None,
        audience: str | None = None,
        at: dt.datetime | None = None,
        validity: dt.timedelta = RELAY_VALIDITY,
        issue: timestamp_pb2.Timestamp | None = None,
        expire: timestamp_pb2.Timestamp | None = None,
        nonce: bytes | None = None,
        inner_raw: bytes | None = None,
    ) -> command_pb2.SignedEnvelope:
        """A Relay around ``inner``, signed (by the hub's key unless told otherwise).

        ``inner_raw``: the inner envelope's serialized bytes, when they must differ from what
        protobuf would produce (invalid UTF-8 spliced in).
        """
        key = key or self.keys.hub
        at = at or commands.now()
        relay = command_pb2.Relay(
            issuer=key.name if issuer is None else issuer,
            audience=self.spoke_name if audience is None else audience,
            nonce=secrets.token_bytes(24) if nonce is None else nonce,
        )
        relay.issue_time.CopyFrom(issue if issue is not None else ts(at))
        relay.expire_time.CopyFrom(expire if expire is not None else ts(at + validity))
        if inner_raw is None:
            relay.command.CopyFrom(inner)
            payload = relay.SerializeToString()
        else:
            payload = relay.SerializeToString() + _field_bytes(6, inner_raw)
        return envelope.sign(payload, RELAY, key)

    # -- whole requests -----------------------------------------------------------------------

    def request(self, ep: Endpoint, env: command_pb2.SignedEnvelope | None) -> bytes:
        req = ep.request()
        if env is not None:
            req.command.CopyFrom(env)
        return req.SerializeToString()

    def mode(self, ep: Endpoint, i: int) -> str:
        """``hub`` for HubService; for SpokeService alternately ``direct`` and ``relay``."""
        if ep.server == "hub":
            return "hub"
        return "relay" if i % 2 else "direct"

    def valid(self, ep: Endpoint, mode: str, **cmd_kw: Any) -> Built:
        """A request that should pass every check (fresh nonce, now, right audience)."""
        client = self.sign(self.command(ep, **cmd_kw).SerializeToString())
        outer = self.relay(client) if mode == "relay" else client
        return Built(self.request(ep, outer), outer, client)

    def wrap(self, ep: Endpoint, mode: str, client: command_pb2.SignedEnvelope) -> Built:
        outer = self.relay(client) if mode == "relay" else client
        return Built(self.request(ep, outer), outer, client)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field_bytes(number: int, data: bytes) -> bytes:
    """A length-delimited field: tag, length, bytes."""
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def unknown_field(size: int) -> bytes:
    """An unknown length-delimited field (number 999) of ``size`` bytes: parsers skip it."""
    return _field_bytes(999, b"\x00" * size)


def envelope_bytes(payload: bytes, payload_type: bytes, sigs: list[tuple[bytes, bytes]]) -> bytes:
    """A SignedEnvelope serialized by hand, so any field may hold any bytes."""
    out = _field_bytes(1, payload) + _field_bytes(2, payload_type)
    for sig, key_id in sigs:
        out += _field_bytes(3, _field_bytes(1, sig) + _field_bytes(2, key_id))
    return out


def request_bytes(env_raw: bytes) -> bytes:
    """Every request message is ``{ SignedEnvelope command = 1; }``."""
    return _field_bytes(1, env_raw)


def env_raw(env: command_pb2.SignedEnvelope) -> tuple[bytes, bytes, list[tuple[bytes, bytes]]]:
    return (
        env.payload,
        env.payload_type.encode(),
        [(s.sig, s.key_id.encode()) for s in env.signatures],
    )


def equivalent(ep: Endpoint, raw: bytes, original: command_pb2.SignedEnvelope | None) -> bool:
    """True if ``raw`` still carries ``original``'s signed content and a signature of it
    under the same key fingerprint: a mutation a verifier is right to accept (the key-id
    *name* is a hint, unknown fields are skipped, extra signatures are tried in turn)."""
    if original is None:
        return False
    try:
        req = ep.request.FromString(raw)
    except DecodeError:
        return False
    env = req.command
    if env.payload != original.payload or env.payload_type != original.payload_type:
        return False
    if len(env.signatures) > envelope.MAX_SIGNATURES:
        return False
    want = {(s.sig, s.key_id.rpartition("/")[2]) for s in original.signatures}
    return any((s.sig, s.key_id.rpartition("/")[2]) in want for s in env.signatures)


def ascii_token(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(n))
