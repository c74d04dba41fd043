"""What a hubd's connect-mode sessions write to the hub's Redis for the other hubds.

:class:`LeaseKeeper` is called by hub/link_service.py: each hello's nonce is claimed across
every hubd (a hello replayed to another hubd is refused), a session that opens takes the
spoke's lease (hub/forward_lease.py), each heartbeat renews it with the spoke's signed status
(a session whose lease a newer session took over, at another hubd, is ended: a spoke holds
one session at a time, so it has left this one), and a session that ends releases it. The
lease lives ``max(link_lease_ttl_s, heartbeat interval x link_missed_heartbeats)``, so it
outlives the gap the hub allows between heartbeats. Redis failures on the lease are logged
and the session goes on (its own calls do not need Redis); a hello whose nonce cannot be
claimed is refused (UNAVAILABLE).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable

import structlog

from hubspoke import errors
from hubspoke.gen.federation.v1 import command_pb2

from .forward_lease import LeaseStore, new_lease
from .link_sessions import LinkSession

__all__ = ["LeaseKeeper"]

log = structlog.get_logger("hubspoke.hub.forward")


class LeaseKeeper:
    """Leases of the sessions this hubd holds, and the shared hello nonce cache."""

    def __init__(
        self, leases: LeaseStore, own_address: str, missed_heartbeats: int, hello_keep_s: float
    ) -> None:
        self._leases = leases
        self._own = own_address
        self._missed = missed_heartbeats
        self._hello_keep_s = hello_keep_s
        self._tasks: set[asyncio.Task[None]] = set()

    async def claim_hello(self, spoke: str, nonce: bytes) -> None:
        """Raises NonceReusedError (seen by any hubd) or BackendUnavailableError."""
        await self._leases.claim_hello(spoke, nonce, self._hello_keep_s)

    async def opened(self, session: LinkSession) -> None:
        lease = new_lease(
            session.spoke,
            self._own,
            session_id(session),
            session.nonce,
            stale_s=self._stale(session),
        )
        await self._quietly("take", self._leases.take(lease, self._ttl(session)))

    async def beat(self, session: LinkSession, status: command_pb2.SignedEnvelope) -> bool:
        """Renew the lease with this heartbeat's status; False when a newer session of the
        spoke (at another hubd: a spoke holds one session at a time) took it over, so this one
        is stale and should end. Redis failing: True (the session goes on)."""
        signed = status.SerializeToString()
        sid = session_id(session)
        lease = new_lease(
            session.spoke, self._own, sid, session.nonce, signed, self._stale(session)
        )
        try:
            if await self._leases.renew(lease, self._ttl(session)):
                return True
        except errors.BackendUnavailableError as exc:
            log.warning("link_lease_failed", op="renew", error=exc.message)
            return True
        log.info("link_lease_taken_over", spoke=session.spoke)
        return False

    def closed(self, session: LinkSession) -> None:
        """Release the lease in the background (the stream that ends may be cancelled)."""
        task = asyncio.create_task(
            self._quietly("release", self._leases.release(session.spoke, session_id(session)))
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _stale(self, session: LinkSession) -> float:
        return session.interval_s * self._missed

    def _ttl(self, session: LinkSession) -> float:
        return max(self._leases.ttl_s, self._stale(session))

    async def _quietly(self, what: str, op: Awaitable[object]) -> None:
        try:
            await op
        except errors.BackendUnavailableError as exc:
            log.warning("link_lease_failed", op=what, error=exc.message)


def session_id(session: LinkSession) -> str:
    """A lease's name for a session (not its nonce: a digest of it)."""
    return hashlib.sha256(session.nonce).hexdigest()[:32]
