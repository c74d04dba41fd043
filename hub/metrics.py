"""The hub's Prometheus metrics, on top of the per-RPC ones every server has.

``hubspoke_spoke_calls_total{spoke, code}`` and ``hubspoke_spoke_call_duration_seconds{spoke}``
    Unary calls the hub relayed to each spoke (not health probes or watch streams), by the
    gRPC status the spoke answered (``DEADLINE_EXCEEDED``/``UNAVAILABLE`` when it did not).
``hubspoke_spoke_replies_rejected_total{spoke}``
    Spoke replies that failed verification (wrong signer, bad signature, not an answer to
    the command sent): never passed on, and worth an alert.
``hubspoke_spoke_circuit_state{spoke, state}``
    1 for the state the hub's circuit breaker for each spoke is in (``closed``, ``open``,
    ``half_open``), 0 for the others.
``hubspoke_spoke_health{spoke, state}``
    1 for each spoke's health as the probe loop derives it (``ready``, ``degraded``,
    ``draining``, ``unreachable``, ``disconnected``, ``incompatible``, ``unknown``), 0 else.

Spoke names come from the hub's config, so the label sets are bounded.
"""

from __future__ import annotations

import grpc
from prometheus_client import Counter, Gauge, Histogram

from hubspoke.metrics import LATENCY_BUCKETS, Metrics

CIRCUIT_STATES = ("closed", "open", "half_open")
HEALTH_STATES = (
    "unknown",
    "ready",
    "degraded",
    "draining",
    "unreachable",
    "disconnected",
    "incompatible",
)


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
        self._call_series: dict[tuple[str, grpc.StatusCode], tuple[Counter, Histogram]] = {}
        """The series of observe_spoke_call, looked up once per (spoke, code)."""
        self.replies_rejected = Counter(
            "hubspoke_spoke_replies_rejected",
            "Spoke replies that failed verification and were not passed on",
            ["spoke"],
            registry=self.registry,
        )

        self.circuit_state = Gauge(
            "hubspoke_spoke_circuit_state",
            "1 for the state of this hub's circuit breaker for each spoke",
            ["spoke", "state"],
            registry=self.registry,
        )
        self.spoke_health = Gauge(
            "hubspoke_spoke_health",
            "1 for each spoke's health as this hub's probes derive it",
            ["spoke", "state"],
            registry=self.registry,
        )

    def set_circuit(self, spoke: str, state: str) -> None:
        for name in CIRCUIT_STATES:
            self.circuit_state.labels(spoke, name).set(1 if name == state.lower() else 0)

    def set_spoke_health(self, spoke: str, state: str) -> None:
        for name in HEALTH_STATES:
            self.spoke_health.labels(spoke, name).set(1 if name == state.lower() else 0)

    def observe_spoke_call(self, spoke: str, code: grpc.StatusCode, seconds: float) -> None:
        series = self._call_series.get((spoke, code))
        if series is None:  # once per (spoke, code): both sets are bounded (module docstring)
            series = self._call_series[(spoke, code)] = (
                self.spoke_calls.labels(spoke, code.name),
                self.spoke_call_seconds.labels(spoke),
            )
        series[0].inc()
        series[1].observe(seconds)

    def reply_rejected(self, spoke: str) -> None:
        self.replies_rejected.labels(spoke).inc()
