"""The spoke's own health: Redis reachability, queue counts and free slots, signed.

:class:`StatusMonitor` checks, every ``interval_s``, that the spoke's Redis answers and reads
its queue counts and the free run slots of each profile. It sets grpc.health.v1 (the empty
service and SpokeService) to NOT_SERVING while Redis does not answer, SERVING again once it
does, and keeps the last :class:`~hubspoke.gen.federation.v1.command_pb2.SpokeStatus`.

:meth:`StatusMonitor.signed` answers a probe: a Reply signed by the spoke whose result is that
status, ``command_id`` empty and ``request_digest`` the SHA-256 of the asker's nonce, so a
recorded answer cannot pass for a fresh one. The health check carries it in its initial
metadata (``hubspoke-status-bin``) when the caller sent a nonce (``hubspoke-status-nonce-bin``);
a connect-mode heartbeat can carry the same signed Reply. Counts only: no agent ids, no task
text (docs/protocol.md "Spoke status").

Reading the status from a snapshot, not from Redis on each check, keeps an unauthenticated
health check from costing the spoke's Redis anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Sequence
from typing import Any, Final

import structlog
from grpc_health.v1 import health_pb2

from hubspoke import commands, envelope, version
from hubspoke.gen.federation.v1 import command_pb2
from hubspoke.keys import SigningKey

from .backend import BackendError, now_ms
from .config import SpokeConfig
from .queue import AgentQueue
from .runmode import effective_mode
from .wire_modes import wire_mode

__all__ = ["NONCE_KEY", "STATUS_KEY", "StatusMonitor"]

log = structlog.get_logger("hubspoke.spoke.health")

NONCE_KEY: Final = "hubspoke-status-nonce-bin"
"""Request metadata of a health check that asks for the signed status: 16-64 random bytes."""
STATUS_KEY: Final = "hubspoke-status-bin"
"""Initial metadata of the answer: a SignedEnvelope (a Reply whose result is spoke_status)."""
INTERVAL_S: Final = 1.0
"""How often the spoke checks its Redis and reads its counts."""
MIN_NONCE: Final = 16
MAX_NONCE: Final = 64


class StatusMonitor:
    """Keeps the spoke's status fresh and its grpc.health in step with its Redis."""

    def __init__(
        self,
        config: SpokeConfig,
        key: SigningKey,
        agents: AgentQueue,
        health: Any,
        services: Sequence[str],
        *,
        interval_s: float = INTERVAL_S,
    ) -> None:
        self._cfg = config
        self._key = key
        self._agents = agents
        self._health = health  # grpc_health.v1._async.HealthServicer (untyped)
        self._services = ("", *services)
        self._interval_s = interval_s
        self._serving: bool | None = None
        self.latest: command_pb2.SpokeStatus | None = None
        """The last status read (None before the first check: a probe then gets none)."""

    async def run(self) -> None:
        """Check until cancelled."""
        while True:
            await self.check()
            await asyncio.sleep(self._interval_s)

    async def check(self) -> command_pb2.SpokeStatus:
        """Read Redis once (bounded by the interval); update health and the snapshot."""
        status = command_pb2.SpokeStatus(
            spoke=self._cfg.name,
            protocol_version=version.PROTOCOL_VERSION,
            max_queue_depth=self._cfg.max_queue_depth,
            version=_release(),
            observe_time=commands.to_timestamp(commands.now()),
            mode=wire_mode(self._cfg.run_mode),
        )
        try:
            async with asyncio.timeout(max(self._interval_s, 1.0)):
                await self._read(status)
            status.redis_ok = True
        except (BackendError, TimeoutError, OSError) as exc:
            status.redis_ok = False
            status.paused = self.latest is not None and self.latest.paused
            if self._serving is not False:
                log.warning("spoke_redis_unhealthy", error=str(exc) or type(exc).__name__)
        except Exception as exc:  # any Redis failure means "not healthy"
            status.redis_ok = False
            if self._serving is not False:
                log.warning("spoke_redis_unhealthy", error=repr(exc))
        self.latest = status
        await self._set_serving(status.redis_ok)
        return status

    async def _read(self, status: command_pb2.SpokeStatus) -> None:
        await self._agents.redis.ping()
        counts = await self._agents.jobs.stats()
        status.running = counts.active
        status.queued = counts.waiting
        status.delayed = counts.delayed
        status.paused = counts.paused
        status.queue_full = counts.waiting + counts.delayed >= self._cfg.max_queue_depth
        now = now_ms()
        for name, profile in sorted(self._cfg.profiles.items()):
            limit = profile.max_concurrency
            taken = 0
            if limit:
                key = self._agents.keys.profile_slots(name)
                taken = int(await self._agents.redis.zcount(key, now, "+inf"))
            status.profiles.append(
                command_pb2.ProfileCapacity(
                    profile=name,
                    max_concurrency=limit,
                    free_slots=max(limit - taken, 0),
                    mode=wire_mode(effective_mode(self._cfg.run_mode, profile.mode)),
                )
            )

    async def _set_serving(self, ok: bool) -> None:
        if ok == self._serving:
            return
        if self._serving is not None:
            log.info("spoke_health", serving=ok)
        self._serving = ok
        code = (
            health_pb2.HealthCheckResponse.SERVING
            if ok
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        with contextlib.suppress(Exception):  # after graceful shutdown, health stays put
            for name in self._services:
                await self._health.set(name, code)

    def signed(self, nonce: bytes) -> bytes | None:
        """The latest status as a signed Reply bound to ``nonce``; None for a bad nonce."""
        if self.latest is None or not MIN_NONCE <= len(nonce) <= MAX_NONCE:
            return None
        reply = command_pb2.Reply(
            responder=self._cfg.name,
            request_digest=commands.digest(nonce),
            issue_time=commands.to_timestamp(commands.now()),
            spoke_status=self.latest,
        )
        signed = envelope.sign(reply.SerializeToString(), envelope.PAYLOAD_TYPE_REPLY, self._key)
        return signed.SerializeToString()


@functools.cache
def _release() -> str:
    """The installed hubspoke distribution's version ("" when not installed)."""
    from importlib import metadata

    try:
        return metadata.version("hubspoke")
    except metadata.PackageNotFoundError:
        return ""
