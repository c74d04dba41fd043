"""This hubd's view of connect-mode spokes whose sessions other hubds hold.

Every ``link_lease_poll_s`` the watcher reads the lease (hub/forward_lease.py) of each
connect-mode spoke without a session here. A lease held by another hubd carries the spoke's
last signed status and the session nonce it is bound to: the watcher verifies the spoke's
signature (``HealthMonitor.observe_status``) and records a heartbeat "via" the holder, so
``hubctl spokes`` shows READY (detail ``via hubd <address>``) and the outbox does not hold
commands for a spoke another hubd reaches. No lease (or an unverifiable one): DISCONNECTED.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import structlog

from hubspoke import errors
from hubspoke.gen.federation.v1 import command_pb2

from .forward_lease import LeaseStore
from .health import HealthMonitor, SpokeState
from .link_registry import LinkingRegistry

__all__ = ["watch_leases"]

log = structlog.get_logger("hubspoke.hub.forward")


async def watch_leases(
    registry: LinkingRegistry,
    monitor: HealthMonitor,
    leases: LeaseStore,
    own_address: str,
    poll_s: float,
) -> None:
    """Keep the health of spokes held elsewhere until cancelled."""
    while True:
        for name in registry.names():
            if not registry.connects(name) or registry.sessions.get(name) is not None:
                continue
            try:
                await _look(registry, monitor, leases, own_address, name)
            except errors.BackendUnavailableError:
                break  # Redis is away: keep what we know, look again next round
            except Exception:
                log.exception("lease_watch_failed", spoke=name)
        await asyncio.sleep(poll_s)


async def _look(
    registry: LinkingRegistry,
    monitor: HealthMonitor,
    leases: LeaseStore,
    own_address: str,
    name: str,
) -> None:
    lease = await leases.get(name)
    if registry.sessions.get(name) is not None:
        return  # it connected here meanwhile: its own heartbeats say how it is
    if lease is not None and lease.holder != own_address and lease.status:
        at = dt.datetime.fromtimestamp(lease.at, dt.UTC)
        try:
            signed = command_pb2.SignedEnvelope.FromString(lease.status)
            status = monitor.observe_status(name, signed, lease.nonce, at)
        except Exception as exc:  # a bad status is shown, never trusted
            log.warning("lease_status_invalid", spoke=name, holder=lease.holder, problem=str(exc))
        else:
            monitor.observe_heartbeat(name, status, at, via=lease.holder)
            return
    record = monitor.get(name)
    if record is None or record.state is not SpokeState.DISCONNECTED:
        monitor.observe_link_closed(name, None, "no hubd holds its session")
