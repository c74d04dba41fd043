"""``hubctl dev``: a whole federation on this machine, in the foreground.

``hubctl dev up --dir DIR [--spokes N] [--base-port P]`` starts, on 127.0.0.1 only:

* one private redis-server per peer (``DIR/redis/<name>``, AOF on), no system Redis needed;
* keys and configs in DIR (:func:`hubspoke.hub.federation_files.write_federation`); keys from an
  earlier run in the same DIR are kept, configs are rewritten with this run's ports;
* ``spoked --config DIR/spoke-N.toml`` per spoke (profiles ``synthetic`` and ``shell``,
  the latter unsafe: ``sh -c TASK``) and ``hubd --config DIR/hub.toml``, as subprocesses
  with their stderr (and any stdout after readiness) in ``DIR/logs/<name>.log``.

Once every server printed ``serving <port>`` it prints ``ready`` on stdout and a summary
on stderr, then waits. SIGINT, SIGTERM or SIGHUP stops everything it started (SIGTERM, then
SIGKILL after 10 s) and exits 0; a server that dies on its own stops everything and
exits 1. It only runs subprocesses: no server module (``hubspoke.hub.app``, ``hubspoke.spoke.*``) is
imported here.

``hubctl dev env --dir DIR`` prints ``export HUBCTL_CONFIG=DIR/hubctl.toml``.

Exception hierarchy::

    Exception
     └── DevError   the federation could not start (the message names the log to read)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import os
import shlex
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final, NoReturn

from hubspoke import keys, redis_server

from . import federation_files

__all__ = ["DevError", "main"]

HOST: Final = "127.0.0.1"
HUB_NAME: Final = "hub"
READY_LINE: Final = "ready"
READY_TIMEOUT_S: Final = 20.0
STOP_GRACE_S: Final = 10.0
MAX_SPOKES: Final = 32
_POLL_S: Final = 0.25
_LOG_TAIL_LINES: Final = 8
# Variables that hubd and spoked read over their config file (env > file): a value left in
# the operator's shell would point a dev server at another Redis, port or key.
_SERVER_ENV_PREFIXES: Final = ("HUB_", "SPOKE_")
_SERVER_ENV_VARS: Final = frozenset({"REDIS_URL"})


class DevError(Exception):
    """The dev federation could not start or keep running."""


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
        return asyncio.run(_up(root, args.spokes, args.base_port))
    except DevError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1


def _env(root: Path) -> int:
    config = root / "hubctl.toml"
    if not config.is_file():
        print(f"Error: {config} not found; run 'hubctl dev up --dir {root}' first", file=sys.stderr)
        return 2
    print(f"export HUBCTL_CONFIG={shlex.quote(str(config))}")
    return 0


# -- files -----------------------------------------------------------------------------------


def write_files(
    root: Path,
    spokes: Sequence[federation_files.SpokeSpec],
    hub_address: str,
    hub_redis_url: str,
) -> federation_files.FederationFiles:
    """Write the federation into ``root``, keeping every key an earlier run left there.

    Missing keys are created; the configs and the trust store are always rewritten (the
    trust store with the public halves of the keys actually in ``root/keys``); any other
    file ``write_federation`` writes is added only if ``root`` lacks it.

    Raises:
        DevError: an existing private key cannot be read.
    """
    keys_dir = root / "keys"
    if not any(keys_dir.glob("*.key")):
        return federation_files.write_federation(root, spokes, hub_address, hub_redis_url)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    try:
        staged = federation_files.write_federation(staging, spokes, hub_address, hub_redis_url)
        trust = staged.trust_file.read_text()
        for new_key in sorted(staged.keys_dir.glob("*.key")):
            name, kept = new_key.stem, keys_dir / new_key.name
            if kept.exists():
                trust = trust.replace(_public_of(new_key, name), _public_of(kept, name))
                continue
            for src in (new_key, new_key.with_suffix(".pub")):
                # link() fails if the target exists: a key is never overwritten.
                os.link(src, keys_dir / src.name)
        (root / staged.trust_file.name).write_text(trust)
        configs = [staged.hub_config, staged.hubctl_config, *staged.spoke_configs.values()]
        for config in configs:
            os.replace(config, root / config.name)
        # Any other file (e.g. policy.toml) is written only where none exists yet, as
        # write_federation itself does: the operator's edits survive.
        for other in staging.iterdir():
            target = root / other.name
            if other.is_file() and other != staged.trust_file and not target.exists():
                os.replace(other, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return federation_files.FederationFiles(
        root=root,
        keys_dir=keys_dir,
        trust_file=root / staged.trust_file.name,
        hub_config=root / staged.hub_config.name,
        spoke_configs={n: root / p.name for n, p in staged.spoke_configs.items()},
        hubctl_config=root / staged.hubctl_config.name,
        hub_name=staged.hub_name,
        hub_address=staged.hub_address,
    )


def _public_of(path: Path, name: str) -> str:
    try:
        return keys.encode_public(keys.load_private(path, name).public)
    except keys.KeyFileError as exc:
        raise DevError(f"cannot reuse the key from an earlier run: {exc}") from exc


# -- processes -------------------------------------------------------------------------------


def server_argv(program: str, module: str, config: Path) -> list[str]:
    """The console script next to this interpreter, else ``python -m module``."""
    script = Path(sys.executable).parent / program
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script), "--config", str(config)]
    return [sys.executable, "-m", module, "--config", str(config)]


def _server_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(_SERVER_ENV_PREFIXES) and k not in _SERVER_ENV_VARS
    }


def _log_tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(f"  {line}" for line in lines[-_LOG_TAIL_LINES:])


def _open_log(path: Path) -> BinaryIO:
    """Truncate the log, then open it for appending.

    Append mode: this process (the server's stdout) and the server (its stderr) both write
    to the file, so neither may overwrite the other.
    """
    path.write_bytes(b"")
    return path.open("ab")


@dataclass
class _Server:
    """hubd or spoked as a child process in its own session."""

    name: str
    address: str
    log_path: Path
    process: asyncio.subprocess.Process
    log: BinaryIO
    drain: asyncio.Task[None] | None = field(default=None)

    def failure(self, what: str) -> DevError:
        tail = _log_tail(self.log_path)
        return DevError(f"{what}; see {self.log_path}" + (f"\n{tail}" if tail else ""))

    async def wait_serving(self, timeout_s: float) -> int:
        """Read stdout until ``serving <port>``; the port, or DevError."""
        stdout = self._stdout()
        try:
            async with asyncio.timeout(timeout_s):
                while line := await stdout.readline():
                    word, _, port = line.decode(errors="replace").strip().partition(" ")
                    if word == "serving" and port.isdigit():
                        return int(port)
                    self.log.write(line)
                    self.log.flush()
                await self.process.wait()
        except TimeoutError:
            raise self.failure(
                f"{self.name} did not print 'serving <port>' within {timeout_s:g} s"
            ) from None
        raise self.failure(f"{self.name} exited with status {self.process.returncode} at start")

    async def copy_stdout(self) -> None:
        """Keep the pipe drained after readiness, so a chatty server never blocks on it."""
        stdout = self._stdout()
        while line := await stdout.readline():
            self.log.write(line)
            self.log.flush()

    def _stdout(self) -> asyncio.StreamReader:
        if self.process.stdout is None:
            raise DevError(f"{self.name} was started without a stdout pipe")
        return self.process.stdout

    def signal(self, signum: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)

    async def stop(self, grace_s: float) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace_s``; always reap."""
        if self.process.returncode is None:
            self.signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(grace_s):
                    await self.process.wait()
            except TimeoutError:
                print(
                    f"dev: {self.name} ignored SIGTERM for {grace_s:g} s; SIGKILL", file=sys.stderr
                )
                self.signal(signal.SIGKILL)
            await self.process.wait()
        if self.drain is not None:
            # The pipe reaches EOF when the server exits; a grandchild holding it open
            # must not hold us up.
            await asyncio.wait({self.drain}, timeout=1.0)
            self.drain.cancel()
        self.log.close()


class DevFederation:
    """Redis servers, spokes and a hub started together, stopped together."""

    def __init__(self, root: Path, spokes: int, base_port: int = 0) -> None:
        self.root = root
        self.spoke_names = [f"spoke-{i}" for i in range(1, spokes + 1)]
        self.base_port = base_port
        self.redis: dict[str, redis_server.EmbeddedRedis] = {}
        self.servers: list[_Server] = []
        self.files: federation_files.FederationFiles | None = None
        self._lock: BinaryIO | None = None

    def _port(self, index: int) -> int:
        return self.base_port + index if self.base_port else redis_server.pick_free_port()

    def _take_lock(self) -> None:
        """One ``dev up`` per DIR: two would share the Redis data directories."""
        self.root.mkdir(parents=True, exist_ok=True)
        lock = (self.root / ".dev.lock").open("wb")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise DevError(f"another 'hubctl dev up' is running in {self.root}") from None
        self._lock = lock

    async def start(self) -> None:
        """Start everything; on failure the caller still calls :meth:`shutdown`."""
        self._take_lock()
        names = [HUB_NAME, *self.spoke_names]
        _say(f"starting {len(names)} private redis-servers (data in {self.root / 'redis'})")
        for name in names:
            self.redis[name] = redis_server.EmbeddedRedis(self.root / "redis" / name)
        try:
            async with asyncio.TaskGroup() as tg:
                for r in self.redis.values():
                    tg.create_task(r.start())
        except* redis_server.RedisServerError as group:
            raise DevError(str(group.exceptions[0])) from None

        hub_address = f"{HOST}:{self._port(0)}"
        specs = [
            (name, f"{HOST}:{self._port(i)}", self.redis[name].url)
            for i, name in enumerate(self.spoke_names, start=1)
        ]
        self.files = write_files(self.root, specs, hub_address, self.redis[HUB_NAME].url)
        _say(f"wrote keys and configs to {self.root}")

        logs = self.root / "logs"
        logs.mkdir(exist_ok=True)
        _say(f"starting hubd and {len(specs)} spoked (logs in {logs})")
        for name, address, _ in specs:
            argv = server_argv("spoked", "spoke", self.files.spoke_configs[name])
            await self._spawn(name, address, argv, logs / f"{name}.log")
        argv = server_argv("hubd", "hub", self.files.hub_config)
        await self._spawn(HUB_NAME, hub_address, argv, logs / f"{HUB_NAME}.log")
        try:
            async with asyncio.TaskGroup() as tg:
                for server in self.servers:
                    tg.create_task(server.wait_serving(READY_TIMEOUT_S))
        except* DevError as group:
            raise group.exceptions[0] from None
        for server in self.servers:
            server.drain = asyncio.create_task(server.copy_stdout(), name=f"{server.name}-stdout")

    async def _spawn(self, name: str, address: str, argv: list[str], log_path: Path) -> None:
        log = _open_log(log_path)
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                env=_server_env(),
                cwd=self.root,
                # Its own session: a terminal's Ctrl-C reaches only us, and we stop the
                # servers in order; killpg also reaches anything the server forked.
                start_new_session=True,
            )
        except OSError as exc:
            log.close()
            raise DevError(f"cannot start {name} ({shlex.join(argv)}): {exc}") from exc
        self.servers.append(_Server(name, address, log_path, process, log))

    def dead(self) -> str | None:
        """Why the federation is broken (a server or Redis exited), or None."""
        for s in self.servers:
            if s.process.returncode is not None:
                return (
                    f"{s.name} exited unexpectedly with status {s.process.returncode}; "
                    f"see {s.log_path}"
                )
        for name, r in self.redis.items():
            if not r.running:
                return f"the redis-server of {name} exited unexpectedly; see {r.log_file}"
        return None

    async def shutdown(self) -> None:
        """Stop the servers (all at once), then their Redis. Idempotent."""
        try:
            servers, self.servers = self.servers, []
            await asyncio.gather(*(s.stop(STOP_GRACE_S) for s in servers))
            redis, self.redis = self.redis, {}
            await asyncio.gather(*(r.stop(STOP_GRACE_S) for r in redis.values()))
        finally:
            if self._lock is not None:
                self._lock.close()
                self._lock = None

    def summary(self) -> str:
        config = shlex.quote(str(self.root / "hubctl.toml"))
        width = max(len(s.name) for s in self.servers)
        servers = sorted(self.servers, key=lambda s: s.name != HUB_NAME)  # the hub first
        rows = [f"  {s.name.ljust(width)}  {s.address:<21}  log {s.log_path}" for s in servers]
        return "\n".join(
            [
                f"dev federation ready in {self.root}",
                *rows,
                "  spokes offer the profiles 'synthetic' and 'shell' (sh -c TASK; unsafe)",
                "in another terminal:",
                f"  export HUBCTL_CONFIG={config}",
                "  hubctl spokes",
                f"  hubctl spawn --spoke {self.spoke_names[0]} -- duration=5",
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


async def _up(root: Path, spokes: int, base_port: int) -> int:
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
    fed = DevFederation(root, spokes, base_port)
    code = 0
    try:
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
            starting.result()  # raises DevError if start-up failed
            print(fed.summary(), file=sys.stderr, flush=True)
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
        await fed.shutdown()
        for sig in sigs:
            loop.remove_signal_handler(sig)
    _say("stopped")
    return code
