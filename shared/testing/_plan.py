"""What every federation of the harness shares, however its servers run: the peers and
their addresses, a Redis per peer (or one given URL), the keys, trust store, policy and
configs (:func:`hubspoke.hub.federation_files.write_federation`), and the operator's client.

Layout under ``root``::

    keys/ trust.toml policy.toml hub.toml <spoke>.toml hubctl.toml   the federation's files
    redis/<peer>/                                                    each peer's Redis
    redis/password                                  the private Redis servers' password
    logs/<daemon>.log                                                each daemon's output
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from hubspoke import keys
from hubspoke.hub import federation_files
from hubspoke.hub.federation_files import OPERATOR, FederationFiles
from hubspoke.redis_access import RedisAccess, access
from hubspoke.trust import TrustStore

from ._errors import HarnessError, RedisServerError
from ._net import address, pick_free_port
from ._redis import EmbeddedRedis

if TYPE_CHECKING:
    from hubspoke.client import Client

DEFAULT_PROFILES: Final = federation_files.DEFAULT_SPOKE_PROFILES
"""``synthetic`` and ``shell`` (``sh -c TASK``, unsafe: only ever on loopback)."""

Report = Callable[[str], None]


def _quiet(_: str) -> None:
    """The default reporter: say nothing."""


@dataclass(frozen=True, slots=True)
class HubctlRun:
    """One finished ``hubctl`` run: its exit code, stdout and stderr."""

    code: int
    stdout: str
    stderr: str

    def doc(self) -> Any:
        """stdout as the JSON document ``--json`` prints (``None`` when stdout is empty)."""
        return json.loads(self.stdout) if self.stdout.strip() else None


async def run_hubctl(config: Path, hub: str, *argv: str, timeout_s: float = 60.0) -> HubctlRun:
    """Run this interpreter's ``hubctl --config CONFIG --hub HUB ARGV...`` to its end.

    Args:
        config: the hubctl.toml to use.
        hub: the hub's address.
        argv: hubctl's arguments after ``--config`` and ``--hub``.
        timeout_s: how long the run may take; longer kills it and raises TimeoutError.
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hubspoke.hub.cli",
        "--config",
        str(config),
        "--hub",
        hub,
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return HubctlRun(await proc.wait(), out.decode(), err.decode())


class FederationPlan:
    """The part of a federation that does not depend on how its servers run.

    Nothing happens until :meth:`prepare` (which ``start`` of a subclass calls): it starts
    the Redis servers, then writes the files with every peer's address.
    """

    def __init__(
        self,
        root: Path,
        spokes: Sequence[str] = ("spoke-1",),
        *,
        hub_name: str = "hub",
        spoke_profiles: str = DEFAULT_PROFILES,
        redis_url: str | RedisAccess | None = None,
        hub_redis: str | RedisAccess | None = None,
        addresses: Mapping[str, str] | None = None,
        base_port: int = 0,
        keep_keys: bool = False,
        tls: bool = False,
        report: Report | None = None,
    ) -> None:
        """Describe the federation.

        Args:
            root: where files, Redis data and logs go (created if needed).
            spokes: the spoke sites, by name; each gets a config and, unless
                ``redis_url``, its own Redis.
            hub_name: the hub's peer name.
            spoke_profiles: the ``[profiles.*]`` tables (and any extra top-level keys)
                appended to every spoke config.
            redis_url: one Redis for every peer (nothing is started), a URL or the access
                with credentials; None starts a private redis-server per peer in
                ``root/redis/<peer>``, each requiring the password in ``root/redis/password``
                (created owner-only; every config names it), with owner-only data.
            hub_redis: the hub's Redis, whatever ``redis_url`` says (a Redis Cluster's
                ``redis+cluster://`` URL: ``EmbeddedRedisCluster``); the spokes' as above.
            addresses: listen addresses for some peers (two spokes may share one).
            base_port: the hub on P, the N-th spoke on P+N; 0 picks free ports.
            keep_keys: reuse the keys an earlier run left in ``root``.
            tls: transport certificates for every peer (see ``write_federation``).
            report: receives one line per step (``hubctl dev`` prints them).
        """
        self.root = root
        self.spoke_names = list(spokes)
        self.hub_name = hub_name
        self.spoke_profiles = spoke_profiles
        self.keep_keys = keep_keys
        self.tls = tls
        self.report: Report = report or _quiet
        self.redis: dict[str, EmbeddedRedis] = {}
        """Peer name → its private redis-server (empty with ``redis_url``)."""
        self._redis_url = redis_url
        self._hub_redis = hub_redis
        self._addresses = dict(addresses or {})
        self._base_port = base_port
        self._files: FederationFiles | None = None
        self._keys: dict[str, keys.SigningKey] = {}
        self._trust: TrustStore | None = None

    # -- set-up -------------------------------------------------------------------------------

    async def prepare(self) -> FederationFiles:
        """Start the Redis servers and write the files; once (later calls return the files).

        Raises:
            RedisServerError: a redis-server did not start.
            hubspoke.errors.ConfigError: a kept key is unreadable (``keep_keys``).
        """
        if self._files is not None:
            return self._files
        self.root.mkdir(parents=True, exist_ok=True)
        if self._redis_url is None and not self.redis:
            await self._start_redis()
        specs = [(n, self.address(n), self.redis_access(n)) for n in self.spoke_names]
        self._files = federation_files.write_federation(
            self.root,
            specs,
            self.address(self.hub_name),
            self.redis_access(self.hub_name),
            hub_name=self.hub_name,
            spoke_profiles=self.spoke_profiles,
            tls=self.tls,
            keep_keys=self.keep_keys,
        )
        self.report(f"wrote keys and configs to {self.root}")
        return self._files

    async def _start_redis(self) -> None:
        names = [self.hub_name, *self.spoke_names] if self._hub_redis is None else self.spoke_names
        self.report(f"starting {len(names)} private redis-servers (data in {self.root / 'redis'})")
        # The password and every peer's data: owner-only from the directory down.
        (self.root / "redis").mkdir(mode=0o700, exist_ok=True)
        (self.root / "redis").chmod(0o700)
        for name in names:
            self.redis[name] = EmbeddedRedis(
                self.root / "redis" / name, password_file=self.redis_password_file
            )
        try:
            async with asyncio.TaskGroup() as tg:
                for server in self.redis.values():
                    tg.create_task(server.start())
        except* RedisServerError as group:
            raise group.exceptions[0] from None

    async def stop_redis(self, grace_s: float = 10.0) -> None:
        """Stop every private redis-server (all at once); never raises for one failure."""
        servers = list(self.redis.values())
        await asyncio.gather(*(r.stop(grace_s) for r in servers), return_exceptions=True)
        await asyncio.gather(*(r.kill() for r in servers), return_exceptions=True)

    # -- what it is -------------------------------------------------------------------------

    @property
    def files(self) -> FederationFiles:
        """Where the keys and configs are; after :meth:`prepare`."""
        if self._files is None:
            raise HarnessError("the federation is not prepared yet: no files")
        return self._files

    def address(self, name: str) -> str:
        """The listen address of a peer (the hub or a spoke site), fixed on first use."""
        if name not in self._addresses:
            self._addresses[name] = self._pick_address(name)
        return self._addresses[name]

    def _pick_address(self, name: str) -> str:
        peers = [self.hub_name, *self.spoke_names]
        if name not in peers:
            raise HarnessError(f"no peer {name!r} in this federation")
        if self._base_port:
            return address(self._base_port + peers.index(name))
        # Two picks in a row may see the same free port: each peer gets its own.
        taken = set(self._addresses.values())
        while (picked := address(pick_free_port())) in taken:
            pass
        return picked

    @property
    def hub_address(self) -> str:
        """Where the (first) hub listens and the operator's client dials."""
        return self.address(self.hub_name)

    @property
    def redis_password_file(self) -> Path:
        """The password of the private Redis servers (unused with ``redis_url``)."""
        return self.root / "redis" / "password"

    def redis_url(self, name: str) -> str:
        """The URL a client of a peer's Redis connects with (a private server's carries
        its password: never log it)."""
        if name == self.hub_name and self._hub_redis is not None:
            return access(self._hub_redis).url
        if self._redis_url is not None:
            return access(self._redis_url).url
        return self._server(name).url

    def redis_access(self, name: str) -> RedisAccess:
        """A peer's Redis as its config names it (URL, password file, TLS files)."""
        if name == self.hub_name and self._hub_redis is not None:
            return access(self._hub_redis)
        if self._redis_url is not None:
            return access(self._redis_url)
        return self._server(name).access

    def _server(self, name: str) -> EmbeddedRedis:
        server = self.redis.get(name)
        if server is None:
            raise HarnessError(f"no Redis for {name!r} (not prepared, or no such peer)")
        return server

    def key(self, name: str) -> keys.SigningKey:
        """The private signing key of a peer (``operator`` included)."""
        if name not in self._keys:
            self._keys[name] = keys.load_private(self.files.keys_dir / f"{name}.key", name)
        return self._keys[name]

    @property
    def operator(self) -> keys.SigningKey:
        """The key the operator (hubctl) signs with."""
        return self.key(OPERATOR)

    @property
    def trust(self) -> TrustStore:
        """The federation's trust store."""
        if self._trust is None:
            self._trust = TrustStore.from_file(self.files.trust_file)
        return self._trust

    async def hubctl(self, *argv: str, timeout_s: float = 60.0) -> HubctlRun:
        """:func:`run_hubctl` as the operator against the (first) hub."""
        return await run_hubctl(
            self.files.hubctl_config, self.hub_address, *argv, timeout_s=timeout_s
        )

    def client(self, timeout_s: float = 15.0, *, hub: str | None = None) -> Client:
        """A hub client signing as the operator (open it with ``async with``).

        Args:
            timeout_s: the deadline of each call.
            hub: the address to dial; the hub's when None.
        """
        from hubspoke import client as hub_client  # the client side only; no server

        return hub_client.client_from_config(
            self.files.hubctl_config, hub=hub or self.hub_address, timeout_s=timeout_s, env={}
        )
