"""Assemble the console and serve it on 127.0.0.1 until Ctrl-C (or SIGTERM).

Like ``kubectl proxy``, the console is a local front for the operator's own client: every
page and button is a call ``hubctl`` could make, signed with the operator's key, checked
by the hub and the spokes exactly as the CLI's are. Nothing listens beyond loopback and
nothing new is trusted.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import webbrowser
from collections.abc import Callable
from typing import Final

from aiohttp import web

from hubspoke.client import Client

from ._events import EventStreams
from ._guard import CSRF_FIELD, Guard
from ._render import STATIC, Renderer
from ._views import Views

__all__ = ["HOST", "build_app", "serve"]

HOST: Final = "127.0.0.1"
"""The only address the console listens on."""
_SHUTDOWN_S: Final = 2.0


def build_app(client: Client, guard: Guard) -> web.Application:
    """The console's aiohttp application: every route behind ``guard``."""
    app = web.Application(middlewares=[guard.middleware])
    renderer = Renderer(
        {
            "hub": client.address,
            "principal": client.principal,
            "csrf": guard.csrf,
            "csrf_field": CSRF_FIELD,
        }
    )
    views = Views(client, renderer)
    streams = EventStreams(client)
    app.add_routes(views.routes())
    app.add_routes(
        [
            web.get("/agents/{spoke}/{agent}/events", streams.handle),
            web.static("/static", STATIC),
        ]
    )
    app.on_shutdown.append(streams.close_all)
    return app


def _bind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, port))
    except OSError:
        sock.close()
        raise
    return sock


async def serve(
    client: Client,
    *,
    port: int = 0,
    open_browser: bool = True,
    announce: Callable[[str], None] | None = None,
) -> int:
    """Serve the console until SIGINT or SIGTERM; returns 0.

    Args:
        client: the operator's client (open; the console never closes it).
        port: the port on 127.0.0.1; 0 picks a free one.
        open_browser: open the URL in the default browser once serving.
        announce: receives the URL (default: print it on stdout).

    Raises:
        OSError: the port cannot be bound.
    """
    sock = _bind(port)
    guard = Guard.new(sock.getsockname()[1])
    runner = web.AppRunner(build_app(client, guard), access_log=None, shutdown_timeout=_SHUTDOWN_S)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        await web.SockSite(runner, sock).start()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        (announce or _print)(guard.url)
        print(
            f"hubctl ui: the console of hub {client.address} as {client.principal}; "
            "Ctrl-C stops it",
            file=sys.stderr,
            flush=True,
        )
        if open_browser:
            await asyncio.to_thread(webbrowser.open, guard.url)
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
        sock.close()
    return 0


def _print(url: str) -> None:
    print(url, flush=True)
