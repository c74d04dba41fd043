"""Building and checking the header fields every Command and Relay carries.

These are the checks that do not need state: identifiers, validity window and clock skew.
The nonce check needs a store and lives with each server (``spoke/nonces.py``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import secrets
import time
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf import timestamp_pb2
from google.protobuf.message import DecodeError, Message

from . import envelope, errors
from .gen.federation.v1 import command_pb2
from .keys import SigningKey

COMMAND_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""Every command id, and so every agent id (a spawn's command id names its agent): 1-128
characters of ``A-Z a-z 0-9 . _ -``, the first alphanumeric. No ``:``, the separator of
every Redis key we and bullmq build, so no id can name another key (``w2:lock`` would be
the lock of agent ``w2``'s job); no ``/``, which separates a resource name's parts."""
AGENT_BODIES = (
    "get_agent",
    "kill_agent",
    "watch_agent",
    "replay_agent",
    "verify_agent",
    "send_input",
    "approve_agent",
    "reject_agent",
)
"""The command bodies that name an agent in their ``agent`` field."""
NONCE_MIN, NONCE_MAX = 16, 64
DEFAULT_VALIDITY = dt.timedelta(minutes=5)
_M = TypeVar("_M", bound=Message)


@dataclass(frozen=True, slots=True)
class Window:
    """How a receiver judges issue and expire times."""

    max_skew: dt.timedelta = dt.timedelta(seconds=30)
    """How far a sender's clock may run ahead of ours."""
    max_validity: dt.timedelta = dt.timedelta(hours=1)
    """The longest expire - issue span accepted; nonces are kept at least this long."""


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def to_timestamp(t: dt.datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(t)
    return ts


def from_epoch_ms(ms: int) -> dt.datetime:
    """Unix milliseconds (as Redis records times) as an aware UTC datetime."""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


def from_timestamp(ts: timestamp_pb2.Timestamp) -> dt.datetime:
    """A Timestamp as an aware datetime; InvalidCommandError if it is out of range."""
    if not 0 <= ts.nanos < 1_000_000_000:
        raise errors.InvalidCommandError("timestamp nanos must be 0-999999999")
    try:
        return ts.ToDatetime(tzinfo=dt.UTC)
    except (ValueError, OverflowError) as exc:
        raise errors.InvalidCommandError("timestamp out of range") from exc


def new_command_id() -> str:
    """A random UUID (version 4) as text, as ``str(uuid.uuid4())`` writes it, without the
    ``UUID`` object (a third of the cost)."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40  # version 4
    b[8] = (b[8] & 0x3F) | 0x80  # the RFC 4122 variant
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def check_command_id(command_id: str) -> None:
    """InvalidCommandError unless ``command_id`` is in the id alphabet (:data:`COMMAND_ID_RE`)."""
    if not COMMAND_ID_RE.fullmatch(command_id):
        raise errors.InvalidCommandError(
            "command_id must be 1-128 characters of A-Z a-z 0-9 . _ - and start alphanumeric"
        )


def check_agent_ref(agent: str) -> None:
    """InvalidCommandError unless ``agent`` is an agent id or ``spokes/{spoke}/agents/{id}``
    whose id is in the id alphabet (an agent's id is its spawn's command id)."""
    if not agent:
        raise errors.InvalidCommandError("agent is required")
    agent_id = agent
    if agent.startswith("spokes/"):
        parts = agent.split("/")
        if len(parts) != 4 or parts[2] != "agents" or not parts[1]:
            raise errors.InvalidCommandError("agent name must be spokes/{spoke}/agents/{id}")
        agent_id = parts[3]
    if not COMMAND_ID_RE.fullmatch(agent_id):
        raise errors.InvalidCommandError(
            "an agent id is 1-128 characters of A-Z a-z 0-9 . _ - and starts alphanumeric"
        )


def check_window(
    issue: timestamp_pb2.Timestamp,
    expire: timestamp_pb2.Timestamp,
    nonce: bytes,
    window: Window,
    at: dt.datetime | None = None,
) -> dt.datetime:
    """Validate issue/expire times and the nonce's size; return the expiry instant."""
    if not (NONCE_MIN <= len(nonce) <= NONCE_MAX):
        raise errors.InvalidCommandError(f"nonce must be {NONCE_MIN}-{NONCE_MAX} bytes")
    if not issue.seconds or not expire.seconds:
        raise errors.InvalidCommandError("issue_time and expire_time are required")
    at = at or now()
    issued, expires = from_timestamp(issue), from_timestamp(expire)
    if expires <= issued:
        raise errors.InvalidCommandError("expire_time must be after issue_time")
    if expires - issued > window.max_validity:
        raise errors.InvalidCommandError(
            f"validity window longer than {int(window.max_validity.total_seconds())} s"
        )
    if issued - at > window.max_skew:
        raise errors.CommandExpiredError("issue_time is in the future beyond the allowed skew")
    if at >= expires + window.max_skew:
        raise errors.CommandExpiredError("command expired")
    return expires


def digest(payload: bytes) -> bytes:
    return hashlib.sha256(payload).digest()


def build_command(
    *,
    issuer: str,
    audience: str,
    command_id: str | None = None,
    validity: dt.timedelta = DEFAULT_VALIDITY,
    at: dt.datetime | None = None,
) -> command_pb2.Command:
    """A Command with a fresh header; the caller sets exactly one body.

    Its times have microsecond precision, as a ``datetime`` has (``at``, else the clock now)."""
    if at is None:
        issue_us = time.time_ns() // 1000
    else:
        issue_us = (at.replace(tzinfo=at.tzinfo or dt.UTC) - _EPOCH) // _MICROSECOND
    expire_us = issue_us + validity // _MICROSECOND
    return command_pb2.Command(
        command_id=command_id or new_command_id(),
        issuer=issuer,
        audience=audience,
        issue_time=_stamp(issue_us),
        expire_time=_stamp(expire_us),
        nonce=secrets.token_bytes(24),
    )


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)


def _stamp(us: int) -> timestamp_pb2.Timestamp:
    """Microseconds since the epoch as a Timestamp (what ``to_timestamp`` makes of them)."""
    seconds, micros = divmod(us, 1_000_000)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=micros * 1000)


def sign_command(cmd: command_pb2.Command, key: SigningKey) -> command_pb2.SignedEnvelope:
    return envelope.sign(cmd.SerializeToString(), envelope.PAYLOAD_TYPE_COMMAND, key)


def _parse(cls: type[_M], payload: bytes, what: str) -> _M:
    try:
        return cls.FromString(payload)
    except DecodeError as exc:
        raise errors.InvalidCommandError(f"payload is not a valid {what}") from exc


def parse_command(payload: bytes) -> command_pb2.Command:
    """Parse verified bytes as a Command (never re-serialize it)."""
    return _parse(command_pb2.Command, payload, "Command")


def parse_relay(payload: bytes) -> command_pb2.Relay:
    return _parse(command_pb2.Relay, payload, "Relay")


def parse_reply(payload: bytes) -> command_pb2.Reply:
    return _parse(command_pb2.Reply, payload, "Reply")
