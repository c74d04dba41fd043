"""The hub's Prometheus metrics, on top of the per-RPC ones every server has.

``hubspoke_spoke_calls_total{spoke, code}`` and ``hubspoke_spoke_call_duration_seconds{spoke}``
    Unary calls the hub relayed to each spoke (not health probes or watch streams), by the
    gRPC status the spoke answered (``DEADLINE_EXCEEDED``/``UNAVAILABLE`` when it did not).
``hubspoke_spoke_replies_rejected_total{spoke}``
    Spoke replies that failed verification (wrong signer, bad signature, not an answer to
    the command sent): never passed on, and worth an alert.

Spoke names come from the hub's config, so the label sets are bounded.
"""

from __future__ import annotations

import grpc
from prometheus_client import Counter, Histogram

from hubspoke.metrics import LATENCY_BUCKETS, Metrics


class HubMetrics(Metrics):
    def __init__(self) -> None:
        super().__init__()
        self.spoke_calls = Counter(
            "hubspoke_spoke_calls",
            "Calls from this hub to a spoke, by the status the spoke answered",
            ["spoke", "code"],
            registry=self.registry,
        )
        self.spoke_call_seconds = Histogram(
            "hubspoke_spoke_call_duration_seconds",
            "Time a spoke took to answer this hub",
            ["spoke"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.replies_rejected = Counter(
            "hubspoke_spoke_replies_rejected",
            "Spoke replies that failed verification and were not passed on",
            ["spoke"],
            registry=self.registry,
        )

    def observe_spoke_call(self, spoke: str, code: grpc.StatusCode, seconds: float) -> None:
        self.spoke_calls.labels(spoke, code.name).inc()
        self.spoke_call_seconds.labels(spoke).observe(seconds)

    def reply_rejected(self, spoke: str) -> None:
        self.replies_rejected.labels(spoke).inc()
