"""An agent's inbox on disk: where ``hubctl send`` messages reach its program.

A profile's ``inbox`` key names the kind:

* ``file`` (the default): a regular file of JSON lines, one per message, oldest first::

      {"seq": 1, "from": "alice", "text": "yes, go on", "time": "2026-11-30T06:01:02.345Z"}

  Before each attempt starts it is written whole (every message kept for the agent, so a
  resumed attempt finds the answers it was given); while the attempt runs, each new message
  is appended as one line. The agent reads it at its own pace (e.g. ``tail -f``).
* ``fifo``: a named pipe at the same path. Lines are written while some process has it open
  for reading; until then they wait (a full pipe too), in order. Messages sent before the
  attempt started are written once the agent opens it.
* ``none``: no inbox (``HUBSPOKE_INBOX`` is not set); the latest message still reaches a
  resumed attempt in ``HUBSPOKE_INPUT``.

The path is ``<inbox_dir>/<agent id>.inbox`` (spoke config ``inbox_dir``, owner-only). It is
a file on disk, not a pipe held by spoked, so it outlives a spoked restart; the worker
removes it when the attempt ends (the next attempt writes it again from Redis).
No Redis and no gRPC here: spoke/inbox.py keeps the messages, the worker calls this module.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["INBOX_KINDS", "InboxFile", "Message", "inbox_path", "line_of"]

INBOX_KINDS = ("file", "fifo", "none")
"""The values of a profile's ``inbox`` key."""

INBOX_ENV = "HUBSPOKE_INBOX"
"""The variable that names the inbox's path to the agent."""
INPUT_ENV = "HUBSPOKE_INPUT"
"""The variable that carries the latest message's text to an attempt that starts with one."""


@dataclass(frozen=True, slots=True)
class Message:
    """One message kept for an agent, as its inbox shows it."""

    seq: int
    """Its number among the agent's messages, from 1."""
    sender: str
    """The principal that signed it (``from`` in the inbox line)."""
    text: str
    time_ms: int
    """When the spoke kept it (ms since the epoch)."""


def line_of(msg: Message) -> bytes:
    """The message as one inbox line (JSON, newline-terminated, UTF-8)."""
    when = dt.datetime.fromtimestamp(msg.time_ms / 1000, dt.UTC)
    doc = {
        "seq": msg.seq,
        "from": msg.sender,
        "text": msg.text,
        "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    return (json.dumps(doc, ensure_ascii=False) + "\n").encode()


def inbox_path(root: Path, agent_id: str) -> Path:
    """Where an agent's inbox lives (agent ids hold no ``/``: hubspoke.commands)."""
    return root / f"{agent_id}.inbox"


class InboxFile:
    """One attempt's inbox: ``prepare`` before the program starts, ``deliver`` while it runs,
    ``close`` when it ended. Blocking calls are short (a write to a file or a non-blocking
    pipe); callers may run them on the event loop."""

    def __init__(self, kind: str, path: Path) -> None:
        if kind not in INBOX_KINDS:
            raise ValueError(f"unknown inbox kind {kind!r}")
        self.kind = kind
        self.path = path
        self._delivered = 0
        """The highest seq written (or, for a FIFO, handed to the pipe)."""
        self._pending = b""
        """FIFO bytes not yet taken by a reader."""

    @property
    def delivered(self) -> int:
        return self._delivered

    def environment(self, messages: Iterable[Message]) -> Mapping[str, str]:
        """The variables the agent gets: the inbox's path, and the latest text if any."""
        env: dict[str, str] = {}
        if self.kind != "none":
            env[INBOX_ENV] = str(self.path)
        latest = None
        for latest in messages:  # noqa: B007 - the last one is wanted
            pass
        if latest is not None:
            env[INPUT_ENV] = latest.text
        return env

    def prepare(self, messages: Iterable[Message]) -> None:
        """Create the inbox with every message so far, before the program starts."""
        if self.kind == "none":
            return
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        if self.kind == "fifo":
            os.mkfifo(self.path, 0o600)
            self.deliver(messages)
            return
        data = b""
        for msg in messages:
            data += line_of(msg)
            self._delivered = max(self._delivered, msg.seq)
        if not data:  # nothing can be seen half-written: created in place, no temp and rename
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)

    def deliver(self, messages: Iterable[Message]) -> int:
        """Write the messages not yet written (seq above ``delivered``), in order; returns how
        many were handed on now. A FIFO nobody reads keeps them for the next call."""
        if self.kind == "none":
            return 0
        fresh = [m for m in messages if m.seq > self._delivered]
        if fresh:
            self._delivered = fresh[-1].seq
        data = b"".join(line_of(m) for m in fresh)
        if self.kind == "file":
            if data:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, data)
                finally:
                    os.close(fd)
            return len(fresh)
        self._pending += data
        self._flush_fifo()
        return len(fresh)

    def _flush_fifo(self) -> None:
        if not self._pending:
            return
        try:
            if not stat.S_ISFIFO(os.stat(self.path).st_mode):
                return
            fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno in (errno.ENXIO, errno.ENOENT):
                return  # no reader yet (or gone): keep the lines
            raise
        try:
            while self._pending:
                written = os.write(fd, self._pending)
                self._pending = self._pending[written:]
        except BlockingIOError:
            pass  # the pipe is full: the rest goes on the next call
        except BrokenPipeError:
            pass  # the reader closed it meanwhile
        finally:
            os.close(fd)

    def close(self) -> None:
        """Remove the inbox (the attempt ended; Redis keeps the messages)."""
        if self.kind == "none":
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
