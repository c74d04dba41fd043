"""Loopback addresses for the harness: everything it starts listens on 127.0.0.1 only."""

from __future__ import annotations

import socket
from typing import Final

HOST: Final = "127.0.0.1"


def pick_free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    Another process may take it before the server binds it; callers retry on
    "Address already in use" where they can.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def address(port: int) -> str:
    """``127.0.0.1:port``."""
    return f"{HOST}:{port}"
