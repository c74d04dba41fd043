"""spoked: run one spoke. ``spoked --config spoke.toml`` (flags > env > file)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from dataclasses import replace
from pathlib import Path

from hubspoke import keys
from hubspoke import logging as shared_logging
from hubspoke.policy import PolicyConfigError
from hubspoke.trust import TrustConfigError

from .app import SpokeApp
from .config import SpokeConfig, SpokeConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spoked", description="Run a Hubspoke spoke.")
    parser.add_argument("--config", type=Path, default=os.environ.get("SPOKE_CONFIG"))
    parser.add_argument("--listen", help="host:port to bind (overrides config and env)")
    parser.add_argument("--log-level", help="debug, info, warning or error")
    args = parser.parse_args(argv)
    try:
        cfg = SpokeConfig.load(args.config, os.environ)
        if args.listen:
            cfg = replace(cfg, listen=args.listen)
        if args.log_level:
            cfg = replace(cfg, log_level=args.log_level)
        cfg.validate()
    except SpokeConfigError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    shared_logging.configure(cfg.log_level)
    try:
        asyncio.run(SpokeApp(cfg).run())
    except (SpokeConfigError, TrustConfigError, PolicyConfigError, keys.KeyError_) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. the listen address is taken
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
