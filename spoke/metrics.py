"""The spoke's Prometheus metrics, on top of the per-RPC ones every server has.

``hubspoke_agent_transitions_total{state, reason}``
    State changes this spoked made (QUEUED on create, RUNNING, SUCCEEDED, KILLED …),
    with the reason code (``LOST``, ``TIMEOUT``, ``DRAINED`` …; empty for none).
``hubspoke_agents_running``
    Agent processes this spoked supervises now.
``hubspoke_queue_agents{state}``
    Agents in the site's queue by state (waiting, delayed, active, failed = dead-lettered);
    every spoked on one Redis reports the same site-wide figures. Refreshed every
    ``refresh_s`` seconds, with ``hubspoke_queue_refresh_timestamp_seconds`` saying when.
``hubspoke_agent_queue_wait_seconds{profile}`` (histogram)
    From storing a spawn to its first start, per profile (spoke/timings.py says exactly
    what is measured); buckets ``QUEUE_WAIT_BUCKETS``, 10 ms to a day.
``hubspoke_agent_run_seconds{profile}`` (histogram)
    From an attempt's start to the end of its run, per profile; buckets ``RUN_BUCKETS``,
    100 ms to a day.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import structlog
from prometheus_client import Counter, Gauge, Histogram

from hubspoke.aio import raise_if_cancelling
from hubspoke.metrics import Metrics

from .backend import QueueError
from .model import AgentState
from .queue import AgentQueue

log = structlog.get_logger("hubspoke.spoke.metrics")

QUEUE_STATES = ("waiting", "delayed", "active", "failed")

QUEUE_WAIT_BUCKETS = (
    0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400,
)  # fmt: skip
"""Seconds: a queue's wait is milliseconds when idle, hours in a backlog or a paused queue."""

RUN_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 1800, 3600, 14400, 86400)
"""Seconds: from a quick script to a long coding agent (profiles allow runs of hours)."""


class SpokeMetrics(Metrics):
    def __init__(self) -> None:
        super().__init__()
        self.transitions = Counter(
            "hubspoke_agent_transitions",
            "Agent state changes made by this spoked, by new state and reason code",
            ["state", "reason"],
            registry=self.registry,
        )
        self.running = Gauge(
            "hubspoke_agents_running",
            "Agent processes this spoked supervises now",
            registry=self.registry,
        )
        self.queue = Gauge(
            "hubspoke_queue_agents",
            "Agents in the site's queue, by state (failed = dead-lettered)",
            ["state"],
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "hubspoke_agent_queue_wait_seconds",
            "From storing a spawn to its first start, by profile (seconds)",
            ["profile"],
            buckets=QUEUE_WAIT_BUCKETS,
            registry=self.registry,
        )
        self.run_time = Histogram(
            "hubspoke_agent_run_seconds",
            "From an attempt's start to the end of its run, by profile (seconds)",
            ["profile"],
            buckets=RUN_BUCKETS,
            registry=self.registry,
        )
        self._transition_series: dict[tuple[AgentState, str], Any] = {}
        """Each (state, reason)'s counter, looked up once (issue 13: QUEUED on every spawn);
        our own reason codes, a closed set."""
        self.queue_refreshed = Gauge(
            "hubspoke_queue_refresh_timestamp_seconds",
            "When hubspoke_queue_agents was last read from Redis (Unix time)",
            registry=self.registry,
        )

    def observe_timing(self, span: str, profile: str, seconds: float) -> None:
        """spoke/timings.py's sink: ``queue_wait`` or ``run`` of one agent of ``profile``."""
        histogram = self.queue_wait if span == "queue_wait" else self.run_time
        histogram.labels(profile).observe(seconds)

    def observe_transition(self, state: AgentState, reason: str) -> None:
        series = self._transition_series.get((state, reason))
        if series is None:
            series = self._transition_series[state, reason] = self.transitions.labels(
                state.value, reason
            )
        series.inc()

    def track_running(self, count: Callable[[], int]) -> None:
        self.running.set_function(lambda: float(count()))

    async def refresh_queue(self, agents: AgentQueue, refresh_s: float) -> None:
        """Read the queue's counts every ``refresh_s`` until cancelled; Redis trouble only
        leaves the figures stale (their timestamp says how stale)."""
        while True:
            try:
                counts = await agents.jobs.stats()
            except QueueError as exc:
                log.warning("metrics_queue_refresh_failed", error=str(exc))
            else:
                for state in QUEUE_STATES:
                    self.queue.labels(state).set(getattr(counts, state))
                self.queue_refreshed.set(time.time())
            raise_if_cancelling()
            await asyncio.sleep(refresh_s)
