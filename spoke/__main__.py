"""``spoked``: run one spoke. ``spoked --config FILE [--listen ADDR] [--log-level L]
[--workers N]`` (N server processes on one port: spoke/workers.py).

Precedence: flags > ``SPOKE_*`` environment > file. Prints ``serving <port>`` on stdout once the
server accepts calls, so a parent process can wait for readiness. Exit codes: 0 after a clean
shutdown on SIGINT/SIGTERM, 1 if serving failed, 2 for a usage or config error.

``spoked --enroll TOKEN --config FILE`` first joins a federation with a token from
``hubctl spoke enroll`` (spoke/enrol.py: new keys, certificate, trust store), then starts.
An enrolment that fails or is refused exits 2 with one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from hubspoke import daemon
from hubspoke.errors import ConfigError

from . import heap, workers
from .app import SpokeApp
from .config import SpokeConfig

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--enroll", default=None)
    pre.add_argument("--config", type=Path, default=None)
    pre.add_argument("--listen", default=None)
    known, _ = pre.parse_known_args(args)
    if known.enroll is not None:
        code = _enrol(known.enroll, known.config, known.listen)
        if code:
            return code
        args = _without_enroll(args)
    args = workers.take_workers_flag(args, os.environ)  # --workers N (spoke/workers.py)
    heap.enable()  # the start-up heap is frozen once serving (spoke/heap.py)
    return daemon.command_line(
        args,
        prog="spoked",
        description="Serve a Hubspoke spoke: verify commands and run them as agents. "
        "--enroll TOKEN first joins a federation with a token from hubctl spoke enroll.",
        prefix="SPOKE",
        load=SpokeConfig.load,
        make=SpokeApp,
    )


def _without_enroll(args: Sequence[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
        elif a == "--enroll":
            skip = True
        elif not a.startswith("--enroll="):
            out.append(a)
    return out


def _enrol(token: str, config: Path | None, listen: str | None) -> int:
    from .enrol import enrol  # only when enrolling

    env = os.environ
    if config is None and env.get("SPOKE_CONFIG"):
        config = Path(env["SPOKE_CONFIG"])
    try:
        cfg = SpokeConfig.load(config, env)
        if listen:
            cfg = cfg.replace(listen=listen)
        done = asyncio.run(enrol(cfg, token))
    except ConfigError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    print(
        f"enrolled {done.name} with hub {done.hub} (membership revision {done.revision})",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
