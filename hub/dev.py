"""``hubctl dev``: a whole federation on this machine, in the foreground.

``hubctl dev up --dir DIR [--spokes N] [--base-port P] [--tls]`` starts, on 127.0.0.1 only:

* one private redis-server per peer (``DIR/redis/<name>``, AOF on, owner-only), each
  requiring the password in ``DIR/redis/password`` (owner-only; every config names it),
  no system Redis needed;
* keys and configs in DIR (:func:`hubspoke.hub.federation_files.write_federation`); keys from an
  earlier run in the same DIR are kept, configs are rewritten with this run's ports;
* ``spoked --config DIR/spoke-N.toml`` per spoke (profiles ``synthetic`` and ``shell``,
  the latter unsafe: ``sh -c TASK``) and ``hubd --config DIR/hub.toml``, as subprocesses
  with their stderr (and any stdout but the readiness line) in ``DIR/logs/<name>.log``;
* with ``--tls``: mutual TLS between every process (a CA and a certificate per peer in
  ``DIR/tls``, issued afresh on each run; ``hubctl.toml`` gets the operator's), so every
  server refuses plaintext.

All of that is :class:`hubspoke.testing.Federation`; this module is the command line over it.

Once every server printed ``serving <port>`` it prints ``ready`` on stdout and a summary
on stderr, then waits. SIGINT, SIGTERM or SIGHUP stops everything it started (SIGTERM, then
SIGKILL after 10 s) and exits 0; a server that dies on its own stops everything and
exits 1. It only runs subprocesses: no server module (``hubspoke.hub.app``, ``hubspoke.spoke.*``) is
imported here.

``hubctl dev env --dir DIR`` prints ``export HUBCTL_CONFIG=DIR/hubctl.toml``.

Exception hierarchy::

    HubspokeError
     └── DevError   another ``dev up`` holds DIR (a server that cannot start raises the
                    harness's ``HarnessError``, whose message names the log to read)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, Final, NoReturn

from hubspoke import testing
from hubspoke.errors import HubspokeError

__all__ = ["DevError", "main"]

HUB_NAME: Final = "hub"
READY_LINE: Final = "ready"
READY_TIMEOUT_S: Final = 20.0
STOP_GRACE_S: Final = 10.0
MAX_SPOKES: Final = 32
_POLL_S: Final = 0.25


class DevError(HubspokeError):
    """Another ``hubctl dev up`` runs in the same DIR."""


class _UsageError(Exception):
    """Bad arguments: exit 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports one ``Error:`` line instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{message} (see '{self.prog} --help')")


def _spoke_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_SPOKES:
        raise argparse.ArgumentTypeError(f"must be 1-{MAX_SPOKES}, got {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port 0-65535, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="hubctl dev", description="Run a local federation for trying Hubspoke.")
    sub = p.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    sub.required = True
    up = sub.add_parser(
        "up",
        help="start Redis, a hub and spokes on 127.0.0.1; Ctrl-C stops them",
        description="Start a private redis-server per peer, spoked per spoke and hubd, "
        "on 127.0.0.1, in the foreground. Prints 'ready' on stdout once all serve; "
        "SIGINT/SIGTERM stops everything (exit 0); a server dying stops everything (exit 1).",
    )
    up.add_argument("--dir", type=Path, required=True, help="state directory (created if needed)")
    up.add_argument(
        "--spokes", type=_spoke_count, default=2, metavar="N", help="number of spokes (default 2)"
    )
    up.add_argument(
        "--base-port",
        type=_port,
        default=0,
        metavar="P",
        help="hub on P, spoke-N on P+N (default 0: free ports); Redis always uses free ports",
    )
    up.add_argument(
        "--tls",
        action="store_true",
        help="mutual TLS between hubctl, the hub and the spokes (certificates in DIR/tls); "
        "every server refuses plaintext",
    )
    env = sub.add_parser("env", help="print the shell line that points hubctl at DIR")
    env.add_argument("--dir", type=Path, required=True, help="the state directory of 'dev up'")
    return p


def main(argv: Sequence[str]) -> int:
    """Run ``hubctl dev ACTION``; returns the exit code (0 ok, 1 failure, 2 usage)."""
    try:
        args = _parser().parse_args(list(argv))
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 2
    except _UsageError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    root: Path = args.dir.expanduser().absolute()
    if args.action == "env":
        return _env(root)
    if args.base_port and args.base_port + args.spokes > 65535:
        print(f"Error: --base-port {args.base_port} leaves no room for the spokes", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_up(root, args.spokes, args.base_port, tls=args.tls))
    except HubspokeError as exc:  # DevError, or the harness's: a server did not start
        print(f"Error: {exc}", file=sys.stderr)
        return 1


def _env(root: Path) -> int:
    config = root / "hubctl.toml"
    if not config.is_file():
        print(f"Error: {config} not found; run 'hubctl dev up --dir {root}' first", file=sys.stderr)
        return 2
    print(f"export HUBCTL_CONFIG={shlex.quote(str(config))}")
    return 0


# -- the federation --------------------------------------------------------------------------


def _take_lock(root: Path) -> BinaryIO:
    """One ``dev up`` per DIR: two would share the Redis data directories."""
    root.mkdir(parents=True, exist_ok=True)
    lock = (root / ".dev.lock").open("wb")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise DevError(f"another 'hubctl dev up' is running in {root}") from None
    return lock


def _federation(root: Path, spokes: int, base_port: int, *, tls: bool) -> testing.Federation:
    return testing.Federation(
        root,
        [f"spoke-{i}" for i in range(1, spokes + 1)],
        hub_name=HUB_NAME,
        base_port=base_port,
        keep_keys=True,
        tls=tls,
        ready_timeout_s=READY_TIMEOUT_S,
        stop_grace_s=STOP_GRACE_S,
        report=_say,
    )


def _summary(fed: testing.Federation) -> str:
    config = shlex.quote(str(fed.root / "hubctl.toml"))
    servers = [fed.hub, *(d for d in fed.daemons if d is not fed.hub)]  # the hub first
    width = max(len(s.name) for s in servers)
    rows = [f"  {s.name.ljust(width)}  {s.address:<21}  log {s.log_file}" for s in servers]
    return "\n".join(
        [
            f"dev federation ready in {fed.root}"
            + (" (mutual TLS; plaintext is refused)" if fed.tls else ""),
            *rows,
            "  spokes offer the profiles 'synthetic' and 'shell' (sh -c TASK; unsafe)",
            f"  each redis-server requires the password in {fed.redis_password_file}",
            "in another terminal:",
            f"  export HUBCTL_CONFIG={config}",
            "  hubctl spokes",
            f"  hubctl spawn --spoke {fed.spoke_names[0]} -- duration=5",
            "Ctrl-C stops everything.",
        ]
    )


def _say(text: str) -> None:
    print(f"dev: {text}", file=sys.stderr, flush=True)


async def _wait_for(event: asyncio.Event, timeout_s: float) -> bool:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await event.wait()
    return event.is_set()


async def _up(root: Path, spokes: int, base_port: int, *, tls: bool) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig.name)
        stop.set()

    # SIGHUP too: the servers run in their own sessions, so a closed terminal reaches us only.
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    for sig in sigs:
        loop.add_signal_handler(sig, on_signal, sig)
    lock: BinaryIO | None = None
    fed = _federation(root, spokes, base_port, tls=tls)
    code = 0
    try:
        lock = _take_lock(root)
        # A signal during start-up cancels it; the finally below stops what did start.
        starting = asyncio.create_task(fed.start(), name="dev-start")
        stopping = asyncio.create_task(stop.wait(), name="dev-stop")
        try:
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not starting.done():
            starting.cancel()
            await asyncio.wait({starting})
        else:
            starting.result()  # raises a HubspokeError if start-up failed
            print(_summary(fed), file=sys.stderr, flush=True)
            print(READY_LINE, flush=True)
            while not await _wait_for(stop, _POLL_S):
                problem = fed.dead()
                if problem is not None:
                    _say(problem)
                    code = 1
                    break
        if received:
            _say(f"{received[0]}: stopping")
    finally:
        try:
            await fed.stop()
        finally:
            if lock is not None:
                lock.close()
        for sig in sigs:
            loop.remove_signal_handler(sig)
    _say("stopped")
    return code
