"""Versions: the wire protocol a peer speaks, and the layout of what each side keeps in Redis.

**Protocol.** ``PROTOCOL_VERSION`` is one integer, the major version of the wire contract
(``federation.v1`` messages, signing, metadata; docs/protocol.md). Peers announce it in the
gRPC metadata ``hubspoke-protocol`` of their calls (the hub on every call to a spoke, its
health probe included) and servers answer the probe with their own in the response's initial
metadata. A server refuses a call whose announced major differs from its own with
FAILED_PRECONDITION / ``PROTOCOL_VERSION_MISMATCH``. A peer that announces nothing (written
before the header, grpcurl, a client in another language) is taken to speak version 1, the
protocol as it was then. Additions that old peers can ignore (new fields, new reasons) keep
the version; a change old peers would misread raises it.

**Schema.** Each Redis holds a schema version key (``federation:{spoke}:schema`` for a spoke
site, ``federation:hub:{hub}:schema`` for a hub), written at start-up. Absent on a Redis
that holds our data means version 0. An older version is migrated step by step at start-up
(``hubspoke.schema``); a newer one makes the daemon refuse to start with one line.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

import grpc

from . import errors

__all__ = [
    "CALL_METADATA",
    "HUB_SCHEMA_VERSION",
    "PROTOCOL_METADATA_KEY",
    "PROTOCOL_VERSION",
    "SPOKE_SCHEMA_VERSION",
    "UNANNOUNCED_PROTOCOL_VERSION",
    "ProtocolVersionError",
    "SchemaVersionError",
    "announced_major",
    "check_peer_protocol",
    "peer_protocol",
]

PROTOCOL_VERSION: Final = 1
"""The major version of the wire protocol this code speaks."""
PROTOCOL_METADATA_KEY: Final = "hubspoke-protocol"
"""gRPC metadata key that carries a peer's protocol version (a decimal integer)."""
CALL_METADATA: Final = ((PROTOCOL_METADATA_KEY, str(PROTOCOL_VERSION)),)
"""Metadata to send with every call to a peer."""
UNANNOUNCED_PROTOCOL_VERSION: Final = 1
"""What a peer that sends no ``hubspoke-protocol`` speaks: the protocol before the header."""

SPOKE_SCHEMA_VERSION: Final = 2
"""Layout of a spoke site's Redis (``federation:{spoke}:*``). 0: before the version key; 2: the
index of two-step writes that spoked's start-up scan reads instead of every record
(spoke/schema.py)."""
HUB_SCHEMA_VERSION: Final = 3
"""Layout of a hub's Redis (``federation:hub:{hub}:*``). 0: before the version key; 2: nonce
and rate keys tagged per principal for Redis Cluster (hub/store.py); 3: the outbox in shards
of spokes, one hash tag each (hub/outbox_keys.py)."""


class ProtocolVersionError(errors.CommandError):
    """The peer speaks another major version of the protocol (FAILED_PRECONDITION)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "PROTOCOL_VERSION_MISMATCH"


class SchemaVersionError(errors.ConfigError):
    """The Redis holds data in a schema this code cannot read (a newer one, or garbage)."""


def peer_protocol(metadata: Iterable[Any] | None) -> str | None:
    """The protocol version a peer announced in ``metadata`` (gRPC ``(key, value)`` pairs,
    as invocation or initial metadata give them), as sent, or None."""
    for key, value in metadata or ():
        if key == PROTOCOL_METADATA_KEY:
            return value.decode("ascii", "replace") if isinstance(value, bytes) else value
    return None


def announced_major(announced: str | None) -> int | None:
    """The major version in an announcement (``"1"``, ``"1.4"``); None if it is garbage.
    A peer that announced nothing speaks ``UNANNOUNCED_PROTOCOL_VERSION``."""
    if announced is None:
        return UNANNOUNCED_PROTOCOL_VERSION
    major = announced.strip().partition(".")[0]
    return int(major) if major.isdigit() and len(major) < 6 else None


def check_peer_protocol(announced: str | None, peer: str = "the peer") -> None:
    """Refuse a peer that announced another major version than ours.

    Raises:
        ProtocolVersionError: with a message naming both versions.
    """
    if announced_major(announced) == PROTOCOL_VERSION:
        return
    shown = (announced or "")[:16]
    raise ProtocolVersionError(
        f"{peer} speaks hubspoke protocol {shown!r}, this side speaks {PROTOCOL_VERSION}: "
        "upgrade the older side (docs/operations.md, upgrades)",
        peer_protocol=shown,
        protocol=str(PROTOCOL_VERSION),
    )
