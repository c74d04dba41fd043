"""Prometheus metrics: one registry per daemon, served over HTTP at ``/metrics``.

Every gRPC server counts its calls by method, status code and reason, and times them. The
spoke and the hub add their own metrics (spoke/metrics.py, hub/metrics.py). Label values
are drawn from closed sets only (RPC names, status codes, our reason codes, agent states,
spoke names from config), never from request contents, so a peer cannot grow the
registry. Reasons in particular may come from a peer (a spoke's error passed on by the
hub): :func:`closed_reason` keeps only the reasons our own error classes declare and the
gRPC code names, and counts anything else as ``OTHER``. Nothing here carries a key, a
signature or a task.
"""

from __future__ import annotations

import ipaddress
import threading
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from . import errors
from .errors import ConfigError

__all__ = [
    "LATENCY_BUCKETS",
    "OTHER_REASON",
    "Metrics",
    "MetricsServer",
    "closed_reason",
    "known_reasons",
    "parse_listen",
]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
"""Seconds: a spawn takes a few ms on loopback, a kill waits up to its grace period."""


OTHER_REASON = "OTHER"
"""The reason label of an error whose reason is none of ours (a peer's invention)."""

_known: frozenset[str] = frozenset()


def known_reasons() -> frozenset[str]:
    """Every reason one of our ``CommandError`` classes declares, and every gRPC code name
    (the reason of a passed-on error that carried none)."""
    found: set[str] = {""} | {c.name for c in grpc.StatusCode}
    todo: list[type[errors.CommandError]] = [errors.CommandError]
    while todo:
        cls = todo.pop()
        found.add(cls.reason)
        todo.extend(cls.__subclasses__())
    return frozenset(found)


def closed_reason(reason: str) -> str:
    """``reason`` if it is one of :func:`known_reasons`, else ``OTHER``: a label value a peer
    cannot choose. Error classes defined after the first call are found on their first use."""
    global _known
    if reason not in _known:
        _known = known_reasons()
        if reason not in _known:
            return OTHER_REASON
    return reason


class MetricsConfigError(ConfigError):
    """``metrics_listen`` is not a usable ``host:port``."""


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6; port 0 picks a free one) → (host, port)."""
    host, sep, port_text = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise MetricsConfigError(f"metrics_listen must be host:port, got {listen!r}")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError as exc:
            raise MetricsConfigError(
                f"metrics_listen host must be an IP address: {host!r}"
            ) from exc
    return host, int(port_text)


@dataclass
class MetricsServer:
    """The HTTP endpoint, running in a daemon thread until :meth:`close`."""

    httpd: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.httpd.server_port)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


class Metrics:
    """A daemon's registry with the per-RPC metrics every server has."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.rpcs = Counter(
            "hubspoke_rpcs",
            "RPCs answered, by method, gRPC status code and reason",
            ["method", "code", "reason"],
            registry=self.registry,
        )
        self.rpc_seconds = Histogram(
            "hubspoke_rpc_duration_seconds",
            "Time to answer an RPC (to the end of the stream for a watch)",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._rpc_series: dict[tuple[str, grpc.StatusCode, str], tuple[Any, Any]] = {}
        """Each (method, code, closed reason)'s two series, looked up once (issue 13: a
        ``labels`` call per RPC was most of this method's cost). Closed label sets, so
        bounded."""

    def observe_rpc(self, method: str, code: grpc.StatusCode, reason: str, seconds: float) -> None:
        key = (method, code, closed_reason(reason))
        series = self._rpc_series.get(key)
        if series is None:
            series = (self.rpcs.labels(method, code.name, key[2]), self.rpc_seconds.labels(method))
            self._rpc_series[key] = series
        series[0].inc()
        series[1].observe(seconds)

    def serve(self, listen: str) -> MetricsServer:
        """Serve ``/metrics`` on ``listen`` (``host:port``) from a daemon thread."""
        host, port = parse_listen(listen)
        httpd, thread = start_http_server(port, addr=host, registry=self.registry)
        return MetricsServer(httpd, thread)
