"""An event loop on a thread of its own, for synchronous code that owns async servers.

A session-scoped pytest fixture is synchronous (an async one would live on another loop
than the function-scoped tests, see PITFALLS.md), yet an :class:`EmbeddedRedis` or a
federation belongs to the loop that started it: this keeps that loop alive for as long as
its owner needs it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

T = TypeVar("T")


class LoopThread:
    """``with LoopThread() as loop: loop.run(coro)`` runs coroutines on a background loop."""

    def __init__(self, name: str = "hubspoke-testing-loop") -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def start(self) -> None:
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        """Run ``coro`` on the loop and return its result (or raise its exception)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    def close(self) -> None:
        """Stop the loop, join the thread, and close the loop. Idempotent."""
        if self._loop.is_closed():
            return
        if self._thread.is_alive():
            self.run(self._loop.shutdown_asyncgens())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        self._loop.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
