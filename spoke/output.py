"""Agent output: a bounded tail buffer and the final JSON receipt.

An agent may print anything; the spoke keeps only the last bytes of each stream
(:class:`OutputTail`). By convention the agent's LAST non-empty stdout line may be
a JSON object, its *receipt*::

    {"status": "completed", "summary": "...", "artifacts": ["path", ...],
     "verification": [{"name": "tests", "status": "passed", "detail": "..."}, ...]}

``status`` is required and one of ``completed``, ``blocked``, ``failed``;
``verification`` (or ``verifications``) items may also be plain strings (the
name, with status ``unknown``). :func:`parse_receipt` never raises: anything
malformed gives ``None``.
"""

from __future__ import annotations

import json as _json
from dataclasses import dataclass

__all__ = [
    "RECEIPT_STATUSES",
    "OutputTail",
    "Receipt",
    "VerificationItem",
    "parse_receipt",
]

RECEIPT_STATUSES = frozenset({"completed", "blocked", "failed"})

# Bounds on what a receipt may carry (characters / items); longer text is cut.
MAX_SUMMARY_CHARS = 4096
MAX_ARTIFACTS = 256
MAX_ARTIFACT_CHARS = 1024
MAX_VERIFICATIONS = 256
MAX_NAME_CHARS = 256
MAX_STATUS_CHARS = 64
MAX_DETAIL_CHARS = 2048


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
    """One check the agent reports (e.g. tests, lint)."""

    name: str
    status: str
    detail: str


@dataclass(frozen=True, slots=True)
class Receipt:
    """The agent's final self-report (last JSON line of stdout)."""

    status: str
    """One of ``completed``, ``blocked``, ``failed``."""
    summary: str
    artifacts: tuple[str, ...]
    verifications: tuple[VerificationItem, ...]
    json: str
    """The receipt line as the agent printed it (stripped)."""


class _Malformed(Exception):
    pass


def _text(value: object, limit: int, *, default: str | None = None) -> str:
    if value is None and default is not None:
        return default
    if not isinstance(value, str):
        raise _Malformed
    return value[:limit]


def _verification(item: object) -> VerificationItem:
    if isinstance(item, str):
        return VerificationItem(name=item[:MAX_NAME_CHARS], status="unknown", detail="")
    if not isinstance(item, dict):
        raise _Malformed
    return VerificationItem(
        name=_text(item.get("name"), MAX_NAME_CHARS),
        status=_text(item.get("status"), MAX_STATUS_CHARS, default="unknown"),
        detail=_text(item.get("detail"), MAX_DETAIL_CHARS, default=""),
    )


def _last_line(text: str) -> str | None:
    end = len(text)
    while end > 0:
        start = max(text.rfind("\n", 0, end), text.rfind("\r", 0, end)) + 1
        line = text[start:end].strip()
        if line:
            return line
        end = start - 1
    return None


def parse_receipt(stdout_tail: str, max_bytes: int = 65536) -> Receipt | None:
    """Parse the receipt from the last non-empty line of ``stdout_tail``, or None.

    Never raises. A line longer than ``max_bytes`` (UTF-8) is ignored; every
    string and list in the receipt is cut to a fixed bound.
    """
    try:
        line = _last_line(stdout_tail)
        if line is None or not line.startswith("{"):
            return None
        if len(line) > max_bytes or len(line.encode("utf-8", errors="replace")) > max_bytes:
            return None
        obj = _json.loads(line)
        if not isinstance(obj, dict):
            return None
        status = obj.get("status")
        if not isinstance(status, str) or status not in RECEIPT_STATUSES:
            return None
        summary = _text(obj.get("summary"), MAX_SUMMARY_CHARS, default="")
        raw_artifacts = obj.get("artifacts")
        if raw_artifacts is None:
            raw_artifacts = []
        if not isinstance(raw_artifacts, list):
            return None
        artifacts = tuple(_text(a, MAX_ARTIFACT_CHARS) for a in raw_artifacts[:MAX_ARTIFACTS])
        raw_checks = obj.get("verification")
        if raw_checks is None:
            raw_checks = obj.get("verifications")
        if raw_checks is None:
            raw_checks = []
        if not isinstance(raw_checks, list):
            return None
        checks = tuple(_verification(c) for c in raw_checks[:MAX_VERIFICATIONS])
        return Receipt(
            status=status,
            summary=summary,
            artifacts=artifacts,
            verifications=checks,
            json=line,
        )
    except (_Malformed, ValueError, RecursionError, TypeError):
        return None
