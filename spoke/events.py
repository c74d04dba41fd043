"""Agent output to events: progress lines and output chunks, batched off the hot path.

``OutputPump.feed`` runs on every chunk the runtime reads. It only appends to bounded
in-memory buffers; a separate task flushes them to Redis every ``FLUSH_S``. A flooding
agent therefore costs at most one Redis write per flush, and output beyond
``MAX_PENDING_BYTES`` per flush is counted as dropped rather than queued without bound
(the tails in the final record still hold the last bytes).
"""

from __future__ import annotations

import asyncio
import contextlib
import re

import structlog

from hubspoke import aio

from .backend import QueueError
from .records import Records

log = structlog.get_logger("hubspoke.spoke.events")

FLUSH_S = 0.25
MAX_PENDING_BYTES = 16 * 1024
MAX_LINE_BYTES = 4096
_PROGRESS = re.compile(rb"^PROGRESS\s+(\d{1,3})(?:\s+(.*))?$")


class OutputPump:
    def __init__(self, records: Records, agent_id: str) -> None:
        self._records = records
        self._agent_id = agent_id
        self._pending: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        self._dropped = 0
        self._line = bytearray()
        self._progress: tuple[int, str] | None = None
        self._task = asyncio.get_running_loop().create_task(self._flush_loop())

    def feed(self, stream: str, chunk: bytes) -> None:
        buf = self._pending.setdefault(stream, bytearray())
        room = MAX_PENDING_BYTES - len(buf)
        if room > 0:
            buf += chunk[:room]
        self._dropped += max(0, len(chunk) - max(room, 0))
        if stream == "stdout":
            self._scan_progress(chunk)

    def _scan_progress(self, chunk: bytes) -> None:
        data = self._line + chunk
        *lines, rest = data.split(b"\n")
        self._line = bytearray(rest[-MAX_LINE_BYTES:])
        for line in lines:
            m = _PROGRESS.match(line.strip())
            if m:
                pct = min(int(m.group(1)), 100)
                msg = (m.group(2) or b"")[:500].decode("utf-8", "replace")
                self._progress = (pct, msg)

    async def _flush(self) -> None:
        progress, self._progress = self._progress, None
        if progress is not None:
            pct, msg = progress
            await self._records.record_event(
                self._agent_id,
                "progress",
                f"{pct} {msg}",
                {"progress_percent": pct, "progress_message": msg},
            )
        for stream, buf in self._pending.items():
            if buf:
                data = bytes(buf).decode("utf-8", "replace")
                buf.clear()
                await self._records.record_event(self._agent_id, stream, data)
        if self._dropped:
            dropped, self._dropped = self._dropped, 0
            await self._records.record_event(self._agent_id, "dropped", str(dropped))

    async def _flush_loop(self) -> None:
        while True:
            # redis-py can swallow close()'s cancel mid-flush (shared/aio.py): the worker
            # then waited in close() for ever, its agent shown RUNNING after it exited.
            aio.raise_if_cancelling()
            await asyncio.sleep(FLUSH_S)
            try:
                await self._flush()
            except QueueError as exc:
                log.warning("output_flush_failed", error=str(exc))

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        with contextlib.suppress(QueueError):
            await self._flush()
