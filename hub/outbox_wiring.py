"""How hubd puts its outbox together from its config (hub/app.py calls these)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import redis.asyncio

from hubspoke.keys import SigningKey
from hubspoke.redis_mux import RedisMux

from .audit import AuditLog
from .circuit import Circuit, Circuits
from .config import HubConfig
from .health import HealthMonitor
from .outbox import Outbox, OutboxConfig
from .outbox_delivery import Deliverer
from .outbox_desk import OutboxDesk
from .relay import Relayer

__all__ = ["outbox_desk", "start_delivery"]


def outbox_desk(
    cfg: HubConfig,
    client: redis.asyncio.Redis,
    relayer: Relayer,
    monitor: HealthMonitor | None,
    key: SigningKey,
    audit: AuditLog | None,
    mux: RedisMux | None = None,
) -> OutboxDesk | None:
    """The outbox over ``client`` (the hub store's), or None when it is off; ``mux``: the
    store's pipelined connection, for the lookups on the relay path."""
    if not cfg.outbox_enabled:
        return None
    outbox = Outbox(
        client,
        OutboxConfig(
            hub_name=cfg.name,
            max_per_spoke=cfg.outbox_max_per_spoke,
            max_total=cfg.outbox_max_total,
            retry_base_s=cfg.outbox_retry_base_s,
            retry_max_s=cfg.outbox_retry_max_s,
            lease_s=cfg.outbox_lease_s,
            done_ttl_s=cfg.agent_index_ttl_s,
        ),
        cfg.redis_timeout_s,
        mux,
    )
    return OutboxDesk(
        outbox, relayer, monitor, cfg.name, key, cfg.outbox_default_start_within_s, audit
    )


def start_delivery(
    cfg: HubConfig,
    desk: OutboxDesk | None,
    relayer: Relayer,
    remember: Callable[[str, str], Awaitable[None]],
    audit: AuditLog | None,
    circuits: Circuits,
) -> asyncio.Task[None] | None:
    """Start delivering the outbox in the background (None when it is off); a spoke's
    circuit closing (a good probe after an outage) starts a delivery round at once."""
    if desk is None:
        return None
    deliverer = Deliverer(desk, relayer, cfg.outbox_poll_s, remember, audit)

    def closed(spoke: str, state: Circuit, failures: int) -> None:
        if state is Circuit.CLOSED:
            deliverer.wake()

    circuits.listen(closed)
    return asyncio.create_task(deliverer.run(), name="outbox-delivery")
