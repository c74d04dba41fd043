"""A TCP proxy between the hub and a spoke that can be cut: the partition without root.

While cut, every open connection is aborted (RST) and the listening socket is closed, so
new connections are refused; healing listens again on the same port. ``retarget`` points
new connections at another backend (a second spoked) and drops the open ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

__all__ = ["CuttableProxy"]

_CHUNK = 64 * 1024


class CuttableProxy:
    """Forward ``127.0.0.1:port`` to ``target``; ``cut()`` and ``heal()`` the link."""

    def __init__(self, port: int, target: tuple[str, int], host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self.target = target
        self.cut_count = 0
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def is_cut(self) -> bool:
        return self._server is None

    async def start(self) -> None:
        await self.heal()

    async def heal(self) -> None:
        """Listen again (no-op when already listening)."""
        if self._server is not None:
            return
        for attempt in range(40):
            try:
                self._server = await asyncio.start_server(
                    self._accept, self.host, self.port, reuse_address=True
                )
            except OSError:
                if attempt == 39:
                    raise
                await asyncio.sleep(0.05)
            else:
                return

    async def cut(self) -> None:
        """Refuse new connections and reset every open one."""
        self.cut_count += 1
        server, self._server = self._server, None
        if server is not None:
            server.close()
        self.drop()
        if server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await server.wait_closed()

    def drop(self) -> None:
        """Reset every open connection (both sides); the listener stays as it is."""
        for writer in list(self._links):
            writer.transport.abort()
        self._links.clear()

    def retarget(self, target: tuple[str, int]) -> None:
        """Send new connections to ``target`` and reset the open ones."""
        self.target = target
        self.drop()

    async def close(self) -> None:
        await self.cut()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        for w in (writer, up_writer):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._links.add(w)
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer)),
            asyncio.create_task(self._pump(up_reader, writer)),
        ]
        for t in pumps:
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)
        await asyncio.gather(*pumps, return_exceptions=True)
        for w in (writer, up_writer):
            self._links.discard(w)
            w.transport.abort()

    @staticmethod
    async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(_CHUNK):
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            dst.transport.abort()
