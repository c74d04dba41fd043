"""Signed checkpoints of the audit chain's head, in a file outside Redis.

Anyone who can write to the hub's Redis could rewrite the whole chain with fresh hashes, so
every ``interval_s`` the hubd signs the head it sees (sequence number and hash) with the
hub's key and appends it as one JSON line to ``path``::

    {"seq": 1042, "hash": "<hex>", "time": "<RFC 3339>", "envelope": "<base64>"}

``envelope`` is a SignedEnvelope (payload type PAYLOAD_TYPE) whose payload is the canonical
JSON ``{"hash":…,"hub":…,"seq":…,"time":…}`` (sorted keys, no spaces); only the signed
payload counts, the plain fields are for people. ``hubctl audit verify --checkpoints FILE``
checks the chain against every line.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path

import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import DecodeError

from hubspoke import aio, commands, envelope, errors
from hubspoke.gen.federation.v1 import command_pb2
from hubspoke.keys import SigningKey

from .audit import AuditLog, Head

__all__ = ["PAYLOAD_TYPE", "Checkpoint", "CheckpointWriter", "read_checkpoints"]

log = structlog.get_logger("hubspoke.hub.audit")

PAYLOAD_TYPE = "application/vnd.hubspoke.audit-checkpoint+json"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A verified checkpoint line."""

    line: int
    hub: str
    seq: int
    hash: str
    time: str


def checkpoint_line(hub: str, head: Head, key: SigningKey) -> str:
    """The JSON line that signs ``head`` (module docstring)."""
    at = commands.now().isoformat()
    payload = json.dumps(
        {"hash": head.hash, "hub": hub, "seq": head.seq, "time": at},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    signed = envelope.sign(payload, PAYLOAD_TYPE, key)
    return json.dumps(
        {
            "seq": head.seq,
            "hash": head.hash,
            "time": at,
            "envelope": base64.b64encode(signed.SerializeToString()).decode(),
        }
    )


def read_checkpoints(path: Path, hub_key: Ed25519PublicKey) -> list[Checkpoint]:
    """Every line of ``path``, its signature checked against ``hub_key``.

    Raises ValueError naming the first line that is malformed or not signed by that key."""
    out: list[Checkpoint] = []
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        if text.strip():
            out.append(_checkpoint(number, text, hub_key))
    return out


def _checkpoint(number: int, text: str, hub_key: Ed25519PublicKey) -> Checkpoint:
    try:
        env = command_pb2.SignedEnvelope.FromString(
            base64.b64decode(json.loads(text)["envelope"], validate=True)
        )
    except (ValueError, KeyError, TypeError, DecodeError) as exc:
        raise ValueError(f"checkpoint line {number} is malformed: {exc}") from None
    if env.payload_type != PAYLOAD_TYPE or len(env.signatures) != 1:
        raise ValueError(f"checkpoint line {number} is not a checkpoint envelope")
    try:
        hub_key.verify(env.signatures[0].sig, envelope.pae(PAYLOAD_TYPE, env.payload))
    except InvalidSignature:
        raise ValueError(f"checkpoint line {number} is not signed by the hub's key") from None
    try:
        body = json.loads(env.payload)
        return Checkpoint(
            number, str(body["hub"]), int(body["seq"]), str(body["hash"]), str(body["time"])
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"checkpoint line {number} is malformed: {exc}") from None


class CheckpointWriter:
    """Appends a signed checkpoint of the head every ``interval_s`` when it moved."""

    def __init__(self, audit: AuditLog, key: SigningKey, path: Path, interval_s: float) -> None:
        self._audit = audit
        self._key = key
        self._path = path
        self._interval = interval_s
        self._last: Head | None = None

    async def write_once(self) -> Head | None:
        """Checkpoint the current head if it moved since the last one; return it."""
        head = await self._audit.head()
        if head.seq == 0 or head == self._last:
            return None
        line = checkpoint_line(self._audit.config.hub_name, head, self._key)
        await asyncio.to_thread(_append_line, self._path, line)
        self._last = head
        return head

    async def run(self) -> None:
        """Checkpoint forever (cancel to stop); a failure is logged and tried again."""
        while True:
            try:
                await self.write_once()
            except (errors.BackendUnavailableError, OSError) as exc:
                log.warning("audit_checkpoint_failed", problem=str(exc))
            aio.raise_if_cancelling()  # redis-py may have swallowed a cancel (hubspoke.aio)
            await asyncio.sleep(self._interval)


def _append_line(path: Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
