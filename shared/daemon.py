"""What ``hubd`` and ``spoked`` share around their app: serving until a signal, and the edge
where ``__main__`` turns a start-up failure into one line and an exit code.

Both apps have the same shape (:class:`Daemon`): ``start() -> port``, ``run(on_serving)``
(serve until SIGINT/SIGTERM or ``request_stop()``), ``shutdown(grace)`` (idempotent), and
``async with``. Exit codes of both daemons: 0 after a clean shutdown, 1 if serving failed,
2 for a usage or config error (any ``hubspoke.errors.ConfigError``), 130 on an interrupt
before the signal handlers were installed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, Self, TypeVar

import structlog

from . import event_loop
from . import logging as slogging
from .config import LOG_LEVELS, redact
from .errors import ConfigError, HubspokeError

__all__ = ["Daemon", "command_line", "main_edge", "print_serving", "serve_until_stopped"]

log = structlog.get_logger("hubspoke.daemon")


class Daemon(Protocol):
    """The lifecycle both ``HubApp`` and ``SpokeApp`` offer."""

    async def start(self) -> int: ...

    async def run(self, on_serving: Callable[[int], None] | None = None) -> None: ...

    def request_stop(self) -> None: ...

    async def shutdown(self, grace: float | None = None) -> None: ...


class DaemonConfig(Protocol):
    """What :func:`command_line` needs of ``HubConfig`` and ``SpokeConfig``."""

    @property
    def log_level(self) -> str: ...

    @property
    def event_loop(self) -> str: ...

    def replace(self, **changes: Any) -> Self: ...


C = TypeVar("C", bound=DaemonConfig)


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
        log.info("event_loop", loop=f"{type(loop).__module__}.{type(loop).__name__}")
        if on_serving is not None:
            on_serving(port)
        await stopping.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await app.shutdown()


def main_edge(build: Callable[[], Daemon], loop: Callable[[], str] = lambda: "asyncio") -> int:
    """Build the app (load config, configure logging, read keys) and run it until a signal,
    on the event loop ``loop()`` names once ``build`` has returned (``event_loop``).

    Every error we raise on purpose becomes one line on stderr (URL passwords redacted):
    exit 2 for a ``ConfigError``, 1 for any other ``HubspokeError`` or an ``OSError``
    (e.g. the listen address is taken).
    """
    try:
        app = build()
        event_loop.run(app.run(on_serving=print_serving), loop())
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


def command_line(
    argv: Sequence[str] | None,
    *,
    prog: str,
    description: str,
    prefix: str,
    load: Callable[[Path | None, Mapping[str, str]], C],
    make: Callable[[C], Daemon],
) -> int:
    """``hubd`` and ``spoked``: ``PROG --config FILE [--listen ADDR] [--log-level L]``.

    Precedence: flags > ``{prefix}_*`` environment > file (``{prefix}_CONFIG`` names the file
    when ``--config`` does not). Then :func:`main_edge`.
    """
    p = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=f"Every option also has an environment variable {prefix}_<OPTION>; flags win over "
        "the environment, which wins over the file. Exit codes: 0 ok, 1 serving failed, "
        "2 usage or config error.",
    )
    p.add_argument(
        "--config", type=Path, default=None, help=f"TOML config file (or {prefix}_CONFIG)"
    )
    p.add_argument("--listen", help="host:port to serve on (port 0 picks a free one)")
    p.add_argument("--log-level", choices=sorted(LOG_LEVELS), help="log verbosity")
    args = p.parse_args(argv)
    env = os.environ
    path: Path | None = args.config
    if path is None and env.get(f"{prefix}_CONFIG"):
        path = Path(env[f"{prefix}_CONFIG"])

    chosen: list[str] = []  # the config's event_loop, once built

    def build() -> Daemon:
        cfg = load(path, env)
        flags = {k: v for k, v in (("listen", args.listen), ("log_level", args.log_level)) if v}
        if flags:
            cfg = cfg.replace(**flags)
        slogging.configure(cfg.log_level)
        chosen.append(cfg.event_loop)
        return make(cfg)

    return main_edge(build, lambda: chosen[-1])
