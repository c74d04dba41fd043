"""Checking the audit log: the chain, every stored signature, and the signed checkpoints.

:func:`verify_log` walks the stored entries oldest first and names the first problem:

* an entry whose hash does not match its contents (edited);
* an entry whose ``seq`` or ``prev`` does not follow the one before it (removed, inserted or
  reordered), or a first entry that does not follow the trimmed marker;
* a chain that ends before the recorded head (entries removed at the end);
* a command recorded as accepted whose envelope does not verify, or whose signer is not the
  recorded principal; a kept reply whose signature does not verify;
* a checkpoint whose entry has another hash (the chain was rewritten after it) or lies past
  the end of the chain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from hubspoke import commands, envelope, errors
from hubspoke.gen.federation.v1 import command_pb2
from hubspoke.trust import Role, TrustStore

from .audit import Head
from .audit_chain import GENESIS, Entry, entry_hash, from_fields, split_replies
from .audit_checkpoints import Checkpoint

__all__ = ["Problem", "Report", "verify_log"]


@dataclass(frozen=True, slots=True)
class Problem:
    """The first bad entry (``seq`` as stored, or as expected when it is missing)."""

    seq: int
    stream_id: str
    what: str

    def __str__(self) -> str:
        where = f" (stream id {self.stream_id})" if self.stream_id else ""
        return f"entry {self.seq}{where}: {self.what}"


@dataclass(frozen=True, slots=True)
class Report:
    entries: int
    first_seq: int
    last_seq: int
    signatures: int
    checkpoints: int
    problem: Problem | None = None


def verify_log(
    stored: Sequence[tuple[str, dict[str, str]]],
    head: Head,
    trimmed: Head,
    trust: TrustStore | None,
    checkpoints: Sequence[Checkpoint] = (),
) -> Report:
    """Check ``stored`` (oldest first, as ``AuditLog.scan`` returns it); see the module."""
    expect = Head(trimmed.seq, trimmed.hash if trimmed.seq else GENESIS)
    signatures = 0
    hashes: dict[int, str] = {}
    first = 0

    def report(problem: Problem | None, checked: int = 0) -> Report:
        return Report(len(stored), first, expect.seq, signatures, checked, problem)

    for sid, fields in stored:
        try:
            entry = from_fields(fields)
        except (ValueError, TypeError) as exc:
            return report(Problem(expect.seq + 1, sid, f"malformed ({exc})"))
        first = first or entry.seq
        if entry_hash(entry) != entry.hash:
            return report(Problem(entry.seq, sid, "changed: its hash does not match its contents"))
        if entry.seq != expect.seq + 1:
            return report(
                Problem(
                    entry.seq,
                    sid,
                    f"out of place: expected entry {expect.seq + 1} here "
                    "(an entry was removed, inserted or reordered)",
                )
            )
        if entry.prev != expect.hash:
            return report(
                Problem(
                    entry.seq,
                    sid,
                    f"does not follow entry {expect.seq}: its prev hash "
                    "differs (an entry was removed, inserted or reordered)",
                )
            )
        if trust is not None:
            problem = _signatures(entry, trust)
            if problem:
                return report(Problem(entry.seq, sid, problem))
            signatures += _count(entry)
        hashes[entry.seq] = entry.hash
        expect = Head(entry.seq, entry.hash)
    if head.seq != expect.seq or (head.seq and head.hash != expect.hash):
        return report(
            Problem(
                expect.seq + 1,
                "",
                f"missing: the head says the chain ends at entry "
                f"{head.seq}, the stored chain at {expect.seq}",
            )
        )
    for checked, cp in enumerate(checkpoints, start=1):
        if cp.seq > expect.seq:
            return report(
                Problem(
                    cp.seq,
                    "",
                    f"missing: checkpoint line {cp.line} ({cp.time}) signed "
                    f"entry {cp.seq}, past the end of the chain",
                ),
                checked - 1,
            )
        if cp.seq == trimmed.seq and trimmed.seq:
            if cp.hash != trimmed.hash:
                return report(
                    Problem(
                        cp.seq,
                        "",
                        f"rewritten: checkpoint line {cp.line} disagrees with the trimmed marker",
                    ),
                    checked - 1,
                )
            continue
        if cp.seq in hashes and hashes[cp.seq] != cp.hash:
            return report(
                Problem(
                    cp.seq,
                    "",
                    f"rewritten: its hash differs from the one checkpoint line "
                    f"{cp.line} signed at {cp.time}",
                ),
                checked - 1,
            )
    return report(None, len(checkpoints))


def _count(entry: Entry) -> int:
    return (1 if entry.request and entry.outcome == "OK" else 0) + len(
        split_replies(entry.replies) if entry.replies else []
    )


def _signatures(entry: Entry, trust: TrustStore) -> str:
    """Why a kept signature of ``entry`` does not verify ("" if they all do)."""
    at = commands.from_epoch_ms(entry.time_ms)
    if entry.request and entry.outcome == "OK":
        try:
            env = command_pb2.SignedEnvelope.FromString(entry.request)
            verified = envelope.verify(
                env,
                payload_type=envelope.PAYLOAD_TYPE_COMMAND,
                trust=trust,
                roles={Role.CLIENT},
                now=at,
            )
        except (errors.CommandError, ValueError, DecodeError) as exc:
            return f"the accepted command's signature does not verify ({exc})"
        if verified.signer.peer != entry.principal:
            return f"the command is signed by {verified.signer.peer}, not {entry.principal}"
    if entry.replies:
        for n, raw in enumerate(split_replies(entry.replies), start=1):
            try:
                envelope.verify(
                    command_pb2.SignedEnvelope.FromString(raw),
                    payload_type=envelope.PAYLOAD_TYPE_REPLY,
                    trust=trust,
                    roles={Role.SPOKE, Role.HUB},
                    now=at,
                )
            except (errors.CommandError, ValueError, DecodeError) as exc:
                return f"reply {n}'s signature does not verify ({exc})"
    return ""
