"""The hub's audit log in Redis: appended in group commits, read newest first, trimmed.

Every hubd on one Redis appends to the same chain. An append is a compare-and-set: the
hub computes the entries' hashes from the chain head it last saw and a script appends them
only if the head is still that one; otherwise the hub reads the new head and hashes again.
Callers wait for their entry's commit (:meth:`AuditLog.record`), and entries that arrive
while a commit is in flight go together in the next one, so a busy hub pays about one
Redis round trip per batch, not per entry. Decisions the hub makes on its own
(:meth:`AuditLog.decide`, e.g. a circuit opening) are queued without waiting.

Keys (one hash tag, so a Redis Cluster keeps them on one node)::

    federation:hub:{<hub>}:audit           stream: one entry per link (hub/audit_chain.py)
    federation:hub:{<hub>}:audit-head      "<seq> <hash>" of the newest entry
    federation:hub:{<hub>}:audit-trimmed   "<seq> <hash>" of the newest entry trimmed away

Stream ids are ``<seq>-0``, so a page is one XREVRANGE from any position. Retention: at most
``max_entries`` entries and none older than ``retention_s`` (trimmed as entries are
appended); what is trimmed leaves its seq and hash in ``audit-trimmed``, so the chain still
verifies from the oldest entry kept (whose ``prev`` must be that hash).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio
import structlog

from hubspoke import errors
from hubspoke.admission import queue_after_script
from hubspoke.redis_mux import RedisMux, ScriptRef

from .audit_chain import GENESIS, Entry, from_fields
from .call_writes import MembershipMovedError, Write, write_alone
from .membership_store import revision_key
from .mux_pipe import MuxPipe, text
from .store import redis_guard

__all__ = ["AuditConfig", "AuditLog", "Head", "audit_keys"]

log = structlog.get_logger("hubspoke.hub.audit")


# KEYS: stream, head, trimmed, the membership revision. ARGV: expected head ("" if none),
# new head, max entries, oldest time_ms kept, the membership revision required ("": none),
# then per entry its stream id ("<seq>-0"), a count n and n names/values. Returns {1, head},
# {0, current head} if the head moved, or {2, current revision} if the revision is not the
# one required (nothing appended: hub/call_writes.py).
_APPEND = """
if ARGV[5] ~= '' and (redis.call('GET', KEYS[4]) or '0') ~= ARGV[5] then
  return {2, redis.call('GET', KEYS[4]) or '0'}
end
local head = redis.call('GET', KEYS[2]) or ''
if head ~= ARGV[1] then return {0, head} end
local i = 6
while i <= #ARGV do
  local id = ARGV[i]
  local n = tonumber(ARGV[i + 1])
  local fields = {}
  for j = 1, n do fields[j] = ARGV[i + 1 + j] end
  redis.call('XADD', KEYS[1], id, unpack(fields))
  i = i + n + 2
end
redis.call('SET', KEYS[2], ARGV[2])
local function field(f, name)
  for k = 1, #f, 2 do if f[k] == name then return f[k + 1] end end
  return ''
end
local function drop(e)
  redis.call('SET', KEYS[3], field(e[2], 'seq') .. ' ' .. field(e[2], 'hash'))
  redis.call('XDEL', KEYS[1], e[1])
end
local over = redis.call('XLEN', KEYS[1]) - tonumber(ARGV[3])
if over > 0 then
  for _, e in ipairs(redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', over)) do drop(e) end
end
for _, e in ipairs(redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 100)) do
  if tonumber(field(e[2], 'time_ms')) >= tonumber(ARGV[4]) then break end
  drop(e)
end
return {1, ARGV[2]}
"""


def audit_keys(hub: str) -> tuple[str, str, str]:
    """The stream, head and trimmed-marker keys of ``hub``'s audit log."""
    base = f"federation:hub:{{{hub}}}"
    return f"{base}:audit", f"{base}:audit-head", f"{base}:audit-trimmed"


@dataclass(frozen=True, slots=True)
class Head:
    """A chain position: the sequence number and hash of an entry (0 and GENESIS: none)."""

    seq: int = 0
    hash: str = GENESIS

    @classmethod
    def parse(cls, text: str | None) -> Head:
        if not text:
            return cls()
        seq, _, digest = text.partition(" ")
        return cls(int(seq), digest)

    def text(self) -> str:
        return f"{self.seq} {self.hash}"


@dataclass(frozen=True, slots=True)
class AuditConfig:
    """Retention and what one entry may keep."""

    hub_name: str
    """The hub identity the log belongs to (every hubd of a federation shares it)."""
    process: str = ""
    """This hubd, as entries name it (``hub`` field); empty: the hub name."""
    max_entries: int = 1_000_000
    retention_s: float = 90 * 86400.0
    max_bytes_kept: int = 65536
    """Signed bytes longer than this are not kept; the entry records their size and digest."""


class AuditLog:
    """Appends entries to the hub's chain and reads them back (module docstring)."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        cfg: AuditConfig,
        timeout_s: float,
        mux: RedisMux | None = None,
    ) -> None:
        """``client`` must decode responses (text); the log does not own it. ``mux``: the
        hub's pipelined connection (hub/mux_pipe.py), for the commits."""
        self._redis = client
        self._mux = mux
        self._cfg = cfg
        self._timeout = timeout_s
        self._stream, self._head_key, self._trimmed_key = audit_keys(cfg.hub_name)
        self._append = client.register_script(_APPEND)
        self._append_ref = ScriptRef.of(self._append)
        self._head: Head | None = None
        self._revision_key = revision_key(cfg.hub_name)  # same hash tag as the log's keys
        self._pending: list[_Pending] = []
        self._flushing: asyncio.Task[None] | None = None

    @property
    def config(self) -> AuditConfig:
        return self._cfg

    async def record(
        self, entry: Entry, writes: tuple[Write, ...] = (), revision: int | None = None
    ) -> int:
        """Append ``entry`` and wait for its commit; return its sequence number. ``writes``
        (hub/call_writes.py) go in the commit's round trip, made by the time it returns.
        ``revision``: append only while the membership revision is this one.

        Raises BackendUnavailableError when Redis does not answer, MembershipMovedError
        when the revision is another (nothing appended)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[int] = loop.create_future()
        self._pending.append(_Pending(entry, done, writes, revision))
        self._kick()
        return await asyncio.shield(done)

    def decide(self, entry: Entry) -> None:
        """Queue a decision of the hub's own, without waiting (a failure is logged)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        done: asyncio.Future[int] = loop.create_future()
        done.add_done_callback(_log_failure)
        self._pending.append(_Pending(entry, done))
        self._kick()

    def _kick(self) -> None:
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.get_running_loop().create_task(self._flush_all())

    async def _flush_all(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            revisions = {p.revision for p in batch if p.revision is not None}
            if len(revisions) > 1 or -1 in revisions:  # no one revision fits them all
                batch = [p for p in batch if not _moved(p, drop_writes=True)]
                revisions = set()
            required = revisions.pop() if revisions else None
            try:
                seqs = await self._commit(
                    [p.entry for p in batch], [w for p in batch for w in p.writes], required
                )
            except _RevisionMoved:  # the rest go again, their writes made already
                self._pending[:0] = [
                    dataclasses.replace(p, writes=())
                    for p in batch
                    if not _moved(p, drop_writes=False)
                ]
                continue
            except Exception as exc:  # every waiter learns it; the next batch tries again
                self._head = None
                failure = (
                    exc
                    if isinstance(exc, errors.CommandError)
                    else errors.BackendUnavailableError("the hub's Redis is unavailable")
                )
                for p in batch:
                    if not p.done.done():
                        p.done.set_exception(failure)
                continue
            for p, seq in zip(batch, seqs, strict=True):
                if not p.done.done():
                    p.done.set_result(seq)

    async def _commit(
        self, entries: Sequence[Entry], writes: Sequence[Write] = (), revision: int | None = None
    ) -> list[int]:
        for _ in range(64):
            head = self._head if self._head is not None else await self.head()
            now_ms = int(time.time() * 1000)
            chained: list[Entry] = []
            at = head
            for e in entries:
                link = e.chained(
                    at.seq + 1, at.hash, now_ms, self._cfg.process or self._cfg.hub_name
                )
                chained.append(link)
                at = Head(link.seq, link.hash)
            args: list[str | int] = [
                "" if head.seq == 0 else head.text(),
                at.text(),
                self._cfg.max_entries,
                max(0, now_ms - int(self._cfg.retention_s * 1000)),
                "" if revision is None else str(revision),
            ]
            for link in chained:
                flat = link.to_flat()
                args.append(f"{link.seq}-0")
                args.append(len(flat))
                args.extend(flat)
            keys = [self._stream, self._head_key, self._trimmed_key, self._revision_key]
            riding, writes = tuple(writes), ()  # the first attempt carries them
            failed: tuple[Write, ...] = ()
            async with self._guard():
                if self._mux is not None:
                    (ok, current), replies = await self._append_on_mux(
                        self._mux, keys, args, riding
                    )
                elif riding:
                    (ok, current), *replies = await queue_after_script(
                        self._append, keys, args, _queue_all(riding)
                    )
                else:
                    (ok, current), replies = await self._append(keys=keys, args=args), []
                failed = tuple(
                    w for w, r in zip(riding, replies, strict=True) if isinstance(r, Exception)
                )
            await write_alone(failed)  # e.g. NOSCRIPT: each made by itself
            if int(ok) == 2:
                raise _RevisionMoved(current)
            if int(ok) == 1:
                self._head = at
                return [link.seq for link in chained]
            self._head = Head.parse(current)  # another hubd appended: chain after its entry
        raise errors.BackendUnavailableError("the audit log is too busy to append to")

    async def _append_on_mux(
        self, mux: RedisMux, keys: list[str], args: list[str | int], riding: tuple[Write, ...]
    ) -> tuple[Any, list[Any]]:
        """The append script, then the riding writes, on the pipelined connection."""
        pipe = MuxPipe()
        for write in riding:
            write.queue(pipe)
        first, *rest = await mux.script(self._append_ref, keys, args, *pipe.commands)
        if isinstance(first, Exception):
            raise first
        return text(first), pipe.replies(rest)

    async def head(self) -> Head:
        """The newest entry's position (Head() when the log is empty)."""
        async with self._guard():
            return Head.parse(_text(await self._redis.get(self._head_key)))

    async def trimmed(self) -> Head:
        """The newest entry trimmed away (Head() if nothing was)."""
        async with self._guard():
            return Head.parse(_text(await self._redis.get(self._trimmed_key)))

    async def newest(
        self,
        limit: int,
        before_seq: int = 0,
        agent: str = "",
        principal: str = "",
        scan_limit: int = 10_000,
    ) -> tuple[list[Entry], int]:
        """Up to ``limit`` entries, newest first, older than ``before_seq`` (0: from the
        newest), matching ``agent`` and ``principal`` when set; scanning at most
        ``scan_limit`` entries. Returns them and the ``before_seq`` of the next page (0: no
        more)."""
        found: list[Entry] = []
        scanned = 0
        top = f"({before_seq}-0" if before_seq > 0 else "+"
        last_seq = 0
        async with self._guard():
            while len(found) < limit and scanned < scan_limit:
                batch = await self._redis.xrevrange(self._stream, top, "-", count=200)
                if not batch:
                    return found, 0
                for sid, fields in batch:
                    scanned += 1
                    top = f"({_text(sid)}"
                    entry = from_fields(_fields(fields))
                    last_seq = entry.seq
                    if (agent and entry.agent != agent) or (
                        principal and entry.principal != principal
                    ):
                        continue
                    found.append(entry)
                    if len(found) >= limit:
                        break
        return found, last_seq if last_seq > 1 else 0

    async def scan(self, batch: int = 1000) -> list[tuple[str, dict[str, str]]]:
        """Every stored entry, oldest first, as (stream id, raw fields): for verification."""
        out: list[tuple[str, dict[str, str]]] = []
        low = "-"
        async with self._guard():
            while True:
                got = await self._redis.xrange(self._stream, low, "+", count=batch)
                if not got:
                    return out
                out.extend((_text(sid), _fields(fields)) for sid, fields in got)
                low = f"({out[-1][0]}"

    def _guard(self) -> contextlib.AbstractAsyncContextManager[None]:
        return redis_guard(self._timeout)


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode()
    return "" if value is None else str(value)


def _fields(raw: object) -> dict[str, str]:
    if not isinstance(raw, dict):
        return {}
    return {_text(k): _text(v) for k, v in raw.items()}


class _RevisionMoved(Exception):
    """The commit required a membership revision Redis no longer has."""


@dataclass(slots=True)
class _Pending:
    """An entry waiting for its commit."""

    entry: Entry
    done: asyncio.Future[int]
    writes: tuple[Write, ...] = ()
    revision: int | None = None


def _moved(p: _Pending, *, drop_writes: bool) -> bool:
    """If ``p`` required a revision, tell its waiter the membership moved (its writes made
    alone when ``drop_writes``: they did not go out); True if so."""
    if p.revision is None:
        return False
    if not p.done.done():
        p.done.set_exception(MembershipMovedError())
    if drop_writes and p.writes:
        task = asyncio.get_running_loop().create_task(write_alone(p.writes))
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)
    return True


_BACKGROUND: set[asyncio.Task[None]] = set()


def _queue_all(writes: tuple[Write, ...]) -> Callable[[Any], None]:
    def queue(pipe: Any) -> None:
        for write in writes:
            write.queue(pipe)

    return queue


def _log_failure(done: asyncio.Future[int]) -> None:
    if not done.cancelled() and done.exception() is not None:
        log.warning("audit_decision_not_recorded", problem=str(done.exception()))
