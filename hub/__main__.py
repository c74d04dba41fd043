"""``hubd``: run a hub. ``hubd --config FILE [--listen ADDR] [--log-level L]``.

Precedence: flags > ``HUB_*`` environment > file. Prints ``serving <port>`` on stdout once the
server accepts calls, so a parent process can wait for readiness. Exit codes: 0 after a clean
shutdown on SIGINT/SIGTERM, 1 if serving failed, 2 for a usage or config error.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from hubspoke import daemon

from .app import HubApp
from .config import HubConfig

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    return daemon.command_line(
        argv,
        prog="hubd",
        description="Serve a Hubspoke hub: take signed commands and relay them to spokes.",
        prefix="HUB",
        load=HubConfig.load,
        make=HubApp,
    )


if __name__ == "__main__":
    sys.exit(main())
