"""The hub's metrics of connect-mode spokes (registered on the hub's own registry).

``hubspoke_link_sessions``
    Connect-mode spokes with an open control session on this hub.
``hubspoke_link_heartbeat_gap_seconds{spoke}``
    Time between two heartbeats of a spoke (a histogram).
``hubspoke_link_heartbeat_gap_max_seconds{spoke}``
    The longest gap between two heartbeats of the spoke's current session (0 after a new
    session opens): what a slow control stream would show first.

Spoke names come from the hub's config (or its membership), so the label sets are bounded.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, Histogram

__all__ = ["LinkMetrics"]

GAP_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 60.0)


class LinkMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.sessions = Gauge(
            "hubspoke_link_sessions",
            "Connect-mode spokes with an open control session on this hub",
            registry=registry,
        )
        self.gap = Histogram(
            "hubspoke_link_heartbeat_gap_seconds",
            "Time between two heartbeats of a connect-mode spoke",
            ["spoke"],
            buckets=GAP_BUCKETS,
            registry=registry,
        )
        self.max_gap = Gauge(
            "hubspoke_link_heartbeat_gap_max_seconds",
            "The longest gap between two heartbeats of the spoke's current session",
            ["spoke"],
            registry=registry,
        )

    def opened(self, spoke: str, count: int) -> None:
        self.sessions.set(count)
        self.max_gap.labels(spoke).set(0)

    def closed(self, count: int) -> None:
        self.sessions.set(count)

    def heartbeat(self, spoke: str, gap_s: float, max_gap_s: float) -> None:
        if gap_s > 0:
            self.gap.labels(spoke).observe(gap_s)
        self.max_gap.labels(spoke).set(max_gap_s)
