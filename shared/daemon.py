"""What ``hubd`` and ``spoked`` share around their app: serving until a signal, and the edge
where ``__main__`` turns a start-up failure into one line and an exit code.

Both apps have the same shape (:class:`Daemon`): ``start() -> port``, ``run(on_serving)``
(serve until SIGINT/SIGTERM or ``request_stop()``), ``shutdown(grace)`` (idempotent), and
``async with``. Exit codes of both daemons: 0 after a clean shutdown, 1 if serving failed,
2 for a usage or config error (any ``hubspoke.errors.ConfigError``), 130 on an interrupt
before the signal handlers were installed.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable
from typing import Protocol

import structlog

from .config import redact
from .errors import ConfigError, HubspokeError

__all__ = ["Daemon", "main_edge", "print_serving", "serve_until_stopped"]

log = structlog.get_logger("hubspoke.daemon")


class Daemon(Protocol):
    """The lifecycle both ``HubApp`` and ``SpokeApp`` offer."""

    async def start(self) -> int: ...

    async def run(self, on_serving: Callable[[int], None] | None = None) -> None: ...

    def request_stop(self) -> None: ...

    async def shutdown(self, grace: float | None = None) -> None: ...


def print_serving(port: int) -> None:
    """The readiness line parent processes wait for: ``serving <port>`` on stdout."""
    print(f"serving {port}", flush=True)


async def serve_until_stopped(
    app: Daemon, stopping: asyncio.Event, on_serving: Callable[[int], None] | None
) -> None:
    """Start ``app``, call ``on_serving(port)``, wait for ``stopping`` (set by SIGINT,
    SIGTERM or ``request_stop``), then shut the app down, whatever happened."""
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []

    def on_signal(sig: signal.Signals) -> None:
        log.info("signal", signal=sig.name)
        stopping.set()

    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
            installed.append(sig)
        port = await app.start()
        if on_serving is not None:
            on_serving(port)
        await stopping.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await app.shutdown()


def main_edge(build: Callable[[], Daemon]) -> int:
    """Build the app (load config, configure logging, read keys) and run it until a signal.

    Every error we raise on purpose becomes one line on stderr (URL passwords redacted):
    exit 2 for a ``ConfigError``, 1 for any other ``HubspokeError`` or an ``OSError``
    (e.g. the listen address is taken).
    """
    try:
        app = build()
        asyncio.run(app.run(on_serving=print_serving))
    except ConfigError as exc:
        print(f"Error: {redact(str(exc))}", file=sys.stderr)
        return 2
    except (HubspokeError, OSError) as exc:
        message = redact(str(exc))
        log.error("serving_failed", error=message)  # noqa: TRY400  # one line; a traceback could show secrets
        print(f"Error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
