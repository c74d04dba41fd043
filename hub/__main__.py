"""``hubd``: run a hub. ``hubd --config FILE [--listen ADDR] [--log-level L]``.

Precedence: flags > ``HUB_*`` environment > file. Prints ``serving <port>`` on stdout once the
server accepts calls, so a parent process can wait for readiness. Exit codes: 0 after a clean
shutdown on SIGINT/SIGTERM, 1 if serving failed, 2 for a usage or config error.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog

from hubspoke import keys
from hubspoke import logging as slogging
from hubspoke import tls as stls
from hubspoke.policy import PolicyConfigError
from hubspoke.trust import TrustConfigError

from .app import HubApp
from .config import LOG_LEVELS, HubConfig, HubConfigError

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


def _print_serving(port: int) -> None:
    print(f"serving {port}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    env = os.environ
    path: Path | None = args.config
    if path is None and env.get("HUB_CONFIG"):
        path = Path(env["HUB_CONFIG"])
    try:
        cfg = HubConfig.load(path, env)
        flags = {k: v for k, v in (("listen", args.listen), ("log_level", args.log_level)) if v}
        if flags:
            cfg = cfg.replace(**flags)
        slogging.configure(cfg.log_level)
        app = HubApp(cfg)
    except (
        HubConfigError,
        keys.KeyError_,
        TrustConfigError,
        PolicyConfigError,
        stls.TlsError,
    ) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(app.run(on_serving=_print_serving))
    except OSError as exc:
        structlog.get_logger("hub").error("hub_failed", error=str(exc))
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
