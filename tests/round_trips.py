"""Round trips to Redis, counted by a TCP relay between a client and a real Redis: each time a
connection writes again after Redis answered it, that is one more round trip. Used by the
tests that pin how many round trips a spoke's or a hub's command costs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlparse

__all__ = ["RoundTrips", "count_round_trips"]


@dataclass
class RoundTrips:
    """What the relay saw: write turns (round trips) and connections, over all connections."""

    turns: int = 0
    connections: int = 0
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)


async def _pump(
    src: asyncio.StreamReader,
    dst: asyncio.StreamWriter,
    seen: RoundTrips,
    answered: list[bool],
    upstream: bool,
) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await src.read(65536):
            if upstream and answered[0]:
                seen.turns += 1
            answered[0] = not upstream
            dst.write(data)
            await dst.drain()
    dst.close()


@contextlib.asynccontextmanager
async def count_round_trips(url: str) -> AsyncIterator[tuple[str, RoundTrips]]:
    """A relay to the Redis of ``url`` (``redis://host:port/db``); yields the relay's URL (same
    database) and what it counts."""
    target = urlparse(url)
    seen = RoundTrips()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection(target.hostname, target.port)
        seen.connections += 1
        answered = [True]  # per connection: pipelines of several connections interleave
        seen.writers += [writer, up_w]
        seen.tasks += [
            asyncio.create_task(_pump(reader, up_w, seen, answered, True)),
            asyncio.create_task(_pump(up_r, writer, seen, answered, False)),
        ]

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"redis://127.0.0.1:{port}{target.path or ''}", seen
    finally:
        server.close()
        for task in seen.tasks:
            task.cancel()
        await asyncio.gather(*seen.tasks, return_exceptions=True)
        for writer in seen.writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        await server.wait_closed()
