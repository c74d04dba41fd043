"""Agent output: a bounded tail buffer and the final JSON receipt.

An agent may print anything; the spoke keeps only the last bytes of each stream
(:class:`OutputTail`). By convention an agent ends its stdout with a *receipt*, a JSON
object: its last non-empty line if that starts with ``{``, else its last fenced block
(```` ```json ```` … ```` ``` ````, or a bare ```` ``` ```` fence whose text starts with
``{``; prose may follow it). That is THE receipt candidate::

    {"status": "completed", "summary": "...",
     "artifacts": ["path", {"kind": "pr", "url": "https://..."}, ...],
     "verification": [{"name": "tests", "status": "passed", "detail": "..."},
                      {"kind": "command", "value": "make lint", "expected": "exit 0"}, ...],
     "blockers": ["need the staging password"]}

The candidate is kept whole (``Receipt.json``, at most ``max_bytes``). Only what cannot
be read as a JSON object is rejected, never silently: the receipt then carries an
``error`` (``receipt: not JSON``, ``receipt: over N bytes``, …) and no status. A JSON object
is read leniently: ``status`` should be ``completed``, ``blocked`` or ``failed`` (any other
value is kept, with an ``error`` saying so); ``verification`` (or ``verifications``) items
may be objects (``name``/``kind``/``value``/``expected``/``status``/``detail``) or plain strings
(a name, status ``unknown``); ``artifacts`` may be strings or objects; ``blockers`` strings or
objects. Every text and list is cut to a fixed bound. :func:`parse_receipt` never raises;
it returns None only when the output has no receipt candidate at all.
"""

from __future__ import annotations

import json as _json
from dataclasses import dataclass

__all__ = [
    "MAX_RECEIPT_BYTES",
    "RECEIPT_STATUSES",
    "Artifact",
    "OutputTail",
    "Receipt",
    "VerificationItem",
    "parse_receipt",
]

RECEIPT_STATUSES = frozenset({"completed", "blocked", "failed"})

MAX_RECEIPT_BYTES = 64 * 1024
"""The default bound on a receipt's JSON text (UTF-8 bytes); a longer one is refused."""

# Bounds on what a receipt may carry (characters / items); longer text is cut.
MAX_SUMMARY_CHARS = 4096
MAX_ARTIFACTS = 256
MAX_ARTIFACT_CHARS = 1024
MAX_VERIFICATIONS = 256
MAX_BLOCKERS = 64
MAX_BLOCKER_CHARS = 2048
MAX_NAME_CHARS = 256
MAX_STATUS_CHARS = 64
MAX_DETAIL_CHARS = 2048

PASSED = "passed"
"""The one verification status that counts as passed (compared case-insensitively)."""

_NAME_KEYS = ("name", "value", "kind")
_ARTIFACT_KEYS = ("path", "uri", "url", "value", "name")


class OutputTail:
    """Keeps the LAST ``limit`` bytes written to it, and counts everything written."""

    __slots__ = ("_buf", "_limit", "total_bytes")

    def __init__(self, limit: int = 65536) -> None:
        if limit < 0:
            raise ValueError("limit must be >= 0")
        self._limit = limit
        self._buf = bytearray()
        self.total_bytes = 0
        """Bytes written in total, kept or not."""

    @property
    def limit(self) -> int:
        """The maximum number of bytes kept."""
        return self._limit

    @property
    def truncated(self) -> bool:
        """True once bytes have been dropped from the front."""
        return self.total_bytes > len(self._buf)

    def write(self, b: bytes) -> None:
        """Append ``b``, dropping the oldest bytes beyond the limit."""
        n = len(b)
        self.total_bytes += n
        if n >= self._limit:
            self._buf[:] = b[n - self._limit :] if self._limit else b""
            return
        self._buf += b
        excess = len(self._buf) - self._limit
        if excess > 0:
            del self._buf[:excess]

    def getvalue(self) -> bytes:
        """The kept bytes."""
        return bytes(self._buf)

    def text(self) -> str:
        """The kept bytes decoded as UTF-8 (invalid sequences replaced)."""
        return self._buf.decode("utf-8", errors="replace")

    def __len__(self) -> int:
        return len(self._buf)


@dataclass(frozen=True, slots=True)
class VerificationItem:
    """One check the agent reports (e.g. tests, lint), or asks someone to make."""

    name: str
    """The item's ``name``, else its ``value``, else its ``kind``, else ``item N`` (from 1):
    what ``hubctl verify --item NAME=...`` names."""
    status: str
    """As reported (``passed``, ``failed``, …); ``unknown`` when the item says none."""
    detail: str = ""
    kind: str = ""
    value: str = ""
    expected: str = ""

    @property
    def passed(self) -> bool:
        return self.status.lower() == PASSED


@dataclass(frozen=True, slots=True)
class Artifact:
    """One thing the agent produced: a string, or an object kept as its JSON."""

    value: str
    """The string itself, or an object's path, uri, url, value or name (the first
    present), else the object's JSON."""
    kind: str = ""
    """An object's ``kind`` (or ``type``)."""
    json: str = ""
    """The artifact as compact JSON (a string artifact as a JSON string)."""


@dataclass(frozen=True, slots=True)
class Receipt:
    """The agent's final self-report, or why it could not be read."""

    status: str
    """``completed``, ``blocked`` or ``failed`` (another value only with ``error``)."""
    summary: str = ""
    artifacts: tuple[Artifact, ...] = ()
    verifications: tuple[VerificationItem, ...] = ()
    json: str = ""
    """The receipt's JSON text as the agent printed it (stripped), whole; empty when it
    was over the size bound."""
    blockers: tuple[str, ...] = ()
    error: str = ""
    """Why the receipt could not be (fully) read, e.g. ``receipt: not JSON``; empty if it
    was."""

    @property
    def usable(self) -> bool:
        """A readable receipt with one of the known statuses: it decides the agent's state."""
        return not self.error and self.status in RECEIPT_STATUSES

    @property
    def pending(self) -> tuple[VerificationItem, ...]:
        """The verification items not passed."""
        return tuple(v for v in self.verifications if not v.passed)


def _text(value: object, limit: int, default: str = "") -> str:
    """Lenient: a string cut to ``limit``; None → default; anything else as compact JSON."""
    if value is None:
        return default
    if isinstance(value, str):
        return value[:limit]
    return _json.dumps(value, separators=(",", ":"), ensure_ascii=False)[:limit]


def _verification(item: object, index: int) -> VerificationItem:
    if not isinstance(item, dict):
        name = _text(item, MAX_NAME_CHARS) or f"item {index}"
        return VerificationItem(name=name, status="unknown")
    name = ""
    for key in _NAME_KEYS:
        name = _text(item.get(key), MAX_NAME_CHARS)
        if name:
            break
    status = item.get("status", item.get("result"))
    if status is None and isinstance(item.get("passed"), bool):
        status = PASSED if item["passed"] else "failed"
    return VerificationItem(
        name=name or f"item {index}",
        status=_text(status, MAX_STATUS_CHARS, default="unknown") or "unknown",
        detail=_text(item.get("detail"), MAX_DETAIL_CHARS),
        kind=_text(item.get("kind"), MAX_NAME_CHARS),
        value=_text(item.get("value"), MAX_DETAIL_CHARS),
        expected=_text(item.get("expected"), MAX_DETAIL_CHARS),
    )


def _artifact(item: object) -> Artifact:
    compact = _json.dumps(item, separators=(",", ":"), ensure_ascii=False)
    if not isinstance(item, dict):
        return Artifact(value=_text(item, MAX_ARTIFACT_CHARS), json=compact)
    value = ""
    for key in _ARTIFACT_KEYS:
        value = _text(item.get(key), MAX_ARTIFACT_CHARS)
        if value:
            break
    kind = _text(item.get("kind", item.get("type")), MAX_NAME_CHARS)
    return Artifact(value=value or compact[:MAX_ARTIFACT_CHARS], kind=kind, json=compact)


def _blocker(item: object) -> str:
    if isinstance(item, dict):
        for key in ("reason", "description", "message", "question", "name"):
            if isinstance(item.get(key), str) and item[key]:
                return str(item[key])[:MAX_BLOCKER_CHARS]
    return _text(item, MAX_BLOCKER_CHARS)


def _as_list(value: object) -> list[object]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _lines(text: str) -> list[tuple[int, str, str]]:
    """(end offset, stripped line, line as printed without its line break) of every line."""
    out: list[tuple[int, str, str]] = []
    pos = 0
    for raw in text.splitlines(keepends=True):
        pos += len(raw)
        out.append((pos, raw.strip(), raw.rstrip("\r\n")))
    return out


def _candidate(text: str) -> str | None:
    """The last non-empty line if it starts with ``{``, else the last fenced json block."""
    lines = _lines(text)
    line_candidate: tuple[int, str] | None = None
    for end, line, _ in reversed(lines):
        if line:  # the last non-empty line, if it is a JSON object
            if line.startswith("{"):
                line_candidate = (end, line)
            break
    fence_candidate: tuple[int, str] | None = None
    opened: tuple[int, str] | None = None  # (line index, tag) of the fence we are in
    for i, (end, line, _) in enumerate(lines):
        if opened is None:
            if line.startswith("```"):
                opened = (i, line[3:].strip().lower())
            continue
        if line != "```":
            continue
        first, tag = opened
        opened = None
        body = "\n".join(printed for _, _, printed in lines[first + 1 : i]).strip()
        if tag == "json" or (tag == "" and body.startswith("{")):
            fence_candidate = (end, body)
    best = max(
        (c for c in (line_candidate, fence_candidate) if c is not None),
        key=lambda c: c[0],
        default=None,
    )
    return None if best is None else best[1]


def parse_receipt(stdout_tail: str, max_bytes: int = MAX_RECEIPT_BYTES) -> Receipt | None:
    """The receipt at the end of ``stdout_tail``; None if it has no candidate at all.

    Never raises. A candidate longer than ``max_bytes`` (UTF-8), or that is not a JSON
    object, gives a receipt with an ``error`` and no status.
    """
    try:
        candidate = _candidate(stdout_tail)
    except RecursionError:  # pragma: no cover - splitlines does not recurse
        return None
    if candidate is None:
        return None
    size = len(candidate.encode("utf-8", errors="replace"))
    if size > max_bytes:
        return Receipt(status="", error=f"receipt: over {max_bytes} bytes ({size})")
    try:
        obj = _json.loads(candidate)
    except (ValueError, RecursionError):
        return Receipt(status="", json=candidate, error="receipt: not JSON")
    if not isinstance(obj, dict):
        return Receipt(status="", json=candidate, error="receipt: not a JSON object")
    try:
        return _read(obj, candidate)
    except (RecursionError, ValueError, TypeError):
        return Receipt(status="", json=candidate, error="receipt: unreadable")


def _read(obj: dict[str, object], candidate: str) -> Receipt:
    raw_status = obj.get("status")
    status = _text(raw_status, MAX_STATUS_CHARS)
    error = ""
    if status not in RECEIPT_STATUSES:
        shown = "missing" if raw_status is None else repr(status)
        error = f"receipt: status {shown}, not completed, blocked or failed"
    checks = obj.get("verification")
    if checks is None:
        checks = obj.get("verifications")
    return Receipt(
        status=status,
        summary=_text(obj.get("summary"), MAX_SUMMARY_CHARS),
        artifacts=tuple(_artifact(a) for a in _as_list(obj.get("artifacts"))[:MAX_ARTIFACTS]),
        verifications=tuple(
            _verification(c, i) for i, c in enumerate(_as_list(checks)[:MAX_VERIFICATIONS], start=1)
        ),
        json=candidate,
        blockers=tuple(_blocker(b) for b in _as_list(obj.get("blockers"))[:MAX_BLOCKERS]),
        error=error,
    )
