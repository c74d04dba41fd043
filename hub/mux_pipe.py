"""The hub's hot-path Redis calls on one pipelined connection (shared/redis_mux.py, issue 13).

Concurrent calls share the connection and its ``send``: what every call in one loop
iteration asks for goes to Redis in one write, not one per call with a pool checkout each.
:class:`MuxPipe` takes the reads the hub queues on a redis-py pipeline (hub/prefetch.py,
hub/call_writes.py), records them as commands for ``RedisMux``, and turns the raw replies
into what the hub's decoding redis-py client returns (text, hashes as dicts, TIME as a
pair), so callers read both alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["MuxPipe", "text"]


def text(value: Any) -> Any:
    """A reply as the hub's client decodes it: bytes as text, lists item by item."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return [text(v) for v in value]
    return value


def _hash(value: Any) -> dict[str, str]:
    if isinstance(value, dict):  # RESP3
        return {text(k): text(v) for k, v in value.items()}
    flat = text(value) or []
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _time(value: Any) -> tuple[int, int]:
    secs, micros = value
    return int(secs), int(micros)


class MuxPipe:
    """Commands as a pipeline would queue them (the few the hot path uses), for RedisMux."""

    def __init__(self) -> None:
        self.commands: list[tuple[object, ...]] = []
        self._after: list[Callable[[Any], Any]] = []

    def _add(self, command: tuple[object, ...], after: Callable[[Any], Any]) -> None:
        self.commands.append(command)
        self._after.append(after)

    def get(self, key: str) -> None:
        self._add(("GET", key), text)

    def hgetall(self, key: str) -> None:
        self._add(("HGETALL", key), _hash)

    def time(self) -> None:
        self._add(("TIME",), _time)

    def execute_command(self, *args: object) -> None:
        self._add(tuple(args), text)

    def replies(self, raw: Sequence[Any]) -> list[Any]:
        """``raw`` (one reply per command, an error as its exception) as redis-py gives them."""
        return [
            r if isinstance(r, Exception) else after(r)
            for r, after in zip(raw, self._after, strict=True)
        ]
