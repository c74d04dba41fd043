"""``hubd``: run a hub. ``hubd --config FILE [--listen ADDR] [--log-level L]``.

Precedence: flags > ``HUB_*`` environment > file. Prints ``serving <port>`` on stdout once the
server accepts calls, so a parent process can wait for readiness. Exit codes: 0 after a clean
shutdown on SIGINT/SIGTERM, 1 if serving failed, 2 for a usage or config error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from hubspoke import daemon
from hubspoke import logging as slogging

from .app import HubApp
from .config import LOG_LEVELS, HubConfig

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hubd",
        description="Serve a Hubspoke hub: take signed commands and relay them to spokes.",
        epilog="Every option also has an environment variable HUB_<OPTION>; flags win over "
        "the environment, which wins over the file. Exit codes: 0 ok, 1 serving failed, "
        "2 usage or config error.",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="hub TOML config file (or HUB_CONFIG)",
    )
    p.add_argument("--listen", help="host:port to serve on (port 0 picks a free one)")
    p.add_argument("--log-level", choices=sorted(LOG_LEVELS), help="log verbosity")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    env = os.environ
    path: Path | None = args.config
    if path is None and env.get("HUB_CONFIG"):
        path = Path(env["HUB_CONFIG"])

    def build() -> HubApp:
        cfg = HubConfig.load(path, env)
        flags = {k: v for k, v in (("listen", args.listen), ("log_level", args.log_level)) if v}
        if flags:
            cfg = cfg.replace(**flags)
        slogging.configure(cfg.log_level)
        return HubApp(cfg)

    return daemon.main_edge(build)


if __name__ == "__main__":
    sys.exit(main())
