"""Which event loop ``hubd`` and ``spoked`` run on: the ``event_loop`` option of both.

``asyncio`` is the standard library's loop; ``uvloop`` is libuv's (the ``uvloop`` package, a
dependency on the platforms it has wheels for). grpc.aio, redis-py and the agents' subprocesses
work on either: grpc.aio only asks the loop to watch one socket of its completion-queue
poller (``add_reader``). The option only chooses the loop ``asyncio.run`` creates for the daemon;
nothing else in the code depends on it.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any, Final, TypeVar

__all__ = ["DEFAULT_EVENT_LOOP", "EVENT_LOOPS", "check_event_loop", "loop_factory", "run"]

EVENT_LOOPS: Final = ("asyncio", "uvloop")
"""The values of ``event_loop``."""

DEFAULT_EVENT_LOOP: Final = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
"""uvloop where it is installed (it measured faster for both daemons: docs/operations.md),
else asyncio's own loop."""

T = TypeVar("T")


def check_event_loop(value: str) -> str | None:
    """Why ``value`` cannot be used as ``event_loop`` (one line), or None if it can."""
    if value not in EVENT_LOOPS:
        return f"event_loop must be one of {', '.join(EVENT_LOOPS)} (got {value!r})"
    if value == "uvloop":
        try:
            import uvloop  # noqa: F401  # only to see that it is installed
        except ImportError:
            return "event_loop = uvloop needs the uvloop package (pip install uvloop)"
    return None


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """What ``asyncio.run(loop_factory=...)`` takes for ``name``; None: asyncio's own loop."""
    if name == "uvloop":
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    return None


def run(main: Coroutine[Any, Any, T], name: str) -> T:
    """``asyncio.run(main)`` on the event loop ``name`` (see :data:`EVENT_LOOPS`)."""
    factory = loop_factory(name)
    if factory is None:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
