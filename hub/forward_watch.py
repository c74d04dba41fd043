"""This hubd's view of connect-mode spokes whose sessions other hubds hold.

Every ``link_lease_poll_s`` the :class:`LeaseWatcher` reads the lease (hub/forward_lease.py)
of each connect-mode spoke without a session here. A lease held by another hubd carries the
spoke's last signed status and the session nonce it is bound to: on each renewal the watcher
verifies the spoke's signature (``HealthMonitor.observe_status``) and records a heartbeat
"via" the holder, so ``hubctl spokes`` shows READY (detail ``via hubd <address>``) and the
outbox does not hold commands for a spoke another hubd reaches. No lease, an unverifiable
one, or one not renewed for longer than the holder itself would wait for a heartbeat (plus
one poll: the holder died and its lease has not expired yet): DISCONNECTED.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import structlog

from hubspoke import errors
from hubspoke.gen.federation.v1 import command_pb2

from .forward_lease import Lease, LeaseStore
from .health import HealthMonitor, SpokeState
from .link_registry import LinkingRegistry

__all__ = ["LeaseWatcher"]

log = structlog.get_logger("hubspoke.hub.forward")


class LeaseWatcher:
    """Keeps the health of spokes held elsewhere (module docstring)."""

    def __init__(
        self,
        registry: LinkingRegistry,
        monitor: HealthMonitor,
        leases: LeaseStore,
        own_address: str,
        poll_s: float,
    ) -> None:
        self._registry = registry
        self._monitor = monitor
        self._leases = leases
        self._own = own_address
        self._poll_s = poll_s
        self._seen: dict[str, tuple[str, float]] = {}
        """Spoke → the (session, renewal time) last recorded as a heartbeat."""

    async def run(self) -> None:
        """Look every ``poll_s`` until cancelled."""
        while True:
            await self.look_all()
            await asyncio.sleep(self._poll_s)

    async def look_all(self) -> None:
        for name in self._registry.names():
            if not self._registry.connects(name) or self._registry.sessions.get(name):
                self._seen.pop(name, None)
                continue
            try:
                await self._look(name)
            except errors.BackendUnavailableError:
                return  # Redis is away: keep what we know, look again next round
            except Exception:
                log.exception("lease_watch_failed", spoke=name)

    async def _look(self, name: str) -> None:
        lease = await self._leases.get(name)
        if self._registry.sessions.get(name) is not None:
            return  # it connected here meanwhile: its own heartbeats say how it is
        why = self._why_not(lease)
        if lease is not None and not why:
            if self._seen.get(name) == (lease.session, lease.at):
                return  # not renewed since the last look
            at = dt.datetime.fromtimestamp(lease.at, dt.UTC)
            try:
                signed = command_pb2.SignedEnvelope.FromString(lease.status)
                status = self._monitor.observe_status(name, signed, lease.nonce, at)
            except Exception as exc:  # a bad status is shown, never trusted
                log.warning("lease_status_invalid", spoke=name, holder=lease.holder, error=str(exc))
                why = "its lease carries no valid status"
            else:
                self._seen[name] = (lease.session, lease.at)
                self._monitor.observe_heartbeat(name, status, at, via=lease.holder)
                return
        self._seen.pop(name, None)
        record = self._monitor.get(name)
        if record is None or record.state is not SpokeState.DISCONNECTED:
            self._monitor.observe_link_closed(name, None, why)

    def _why_not(self, lease: Lease | None) -> str:
        """Why ``lease`` does not make its spoke reachable through its holder ("" if it does)."""
        if lease is None or lease.holder == self._own:
            return "no hubd holds its session"
        if not lease.status:
            return "no heartbeat yet"
        if lease.stale_after_s and time.time() - lease.at > lease.stale_after_s + self._poll_s:
            return f"hubd {lease.holder} stopped renewing its lease"
        return ""
