"""The circuit breaker's states on a clock the test moves, and how the hub derives a spoke's
health from probes (hub/circuit.py, hub/health.py); the processes are in
tests/e2e/test_spoke_health.py."""

from __future__ import annotations

import datetime as dt
import secrets
from pathlib import Path

import grpc
import pytest

from hubspoke import commands, envelope, keys
from hubspoke import grpc as sgrpc
from hubspoke.gen.federation.v1 import command_pb2
from hubspoke.hub.circuit import Circuit, CircuitBreaker, CircuitConfig, CircuitOpenError, Circuits
from hubspoke.hub.config import SpokeEntry
from hubspoke.hub.health import HealthConfig, HealthMonitor, SpokeState
from hubspoke.hub.metrics import HubMetrics
from hubspoke.hub.registry import Probe, SpokeRegistry
from hubspoke.trust import TrustStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_the_configured_failures_and_fails_at_once() -> None:
    clock = Clock()
    b = CircuitBreaker("s1", CircuitConfig(failures=3, open_s=30, probe_interval_s=5), clock)
    assert [b.failure() for _ in range(3)] == [False, False, True]
    assert b.state is Circuit.OPEN
    with pytest.raises(CircuitOpenError) as err:
        b.check()
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
    assert err.value.reason == "SPOKE_CIRCUIT_OPEN"
    assert err.value.metadata["retry_after_ms"] == str(35_000)
    clock.now += 10
    assert b.retry_after_ms() == 25_000


def test_a_success_resets_the_count_while_closed() -> None:
    b = CircuitBreaker("s1", CircuitConfig(failures=2), Clock())
    b.failure()
    b.success()
    assert not b.failure()
    assert b.state is Circuit.CLOSED


def test_only_a_good_probe_after_the_open_time_closes_it() -> None:
    clock = Clock()
    b = CircuitBreaker("s1", CircuitConfig(failures=1, open_s=30), clock)
    assert b.failure()
    assert not b.success()  # a late answer while open does not close it
    assert b.state is Circuit.OPEN
    clock.now += 30
    assert b.state is Circuit.HALF_OPEN
    with pytest.raises(CircuitOpenError):
        b.check()  # half-open still fails at once: the probe is the trial
    assert b.failure()  # a failed half-open probe opens it again for open_s
    assert b.state is Circuit.OPEN
    clock.now += 30
    assert b.success()
    assert b.state is Circuit.CLOSED
    b.check()


def _spoke_key(tmp_path: Path) -> tuple[keys.SigningKey, TrustStore]:
    key = keys.generate("spoke-1")
    trust_file = tmp_path / "trust.toml"
    public = keys.encode_public(key.public)
    trust_file.write_text(f'[[peer]]\nname = "spoke-1"\nrole = "spoke"\nkeys = ["{public}"]\n')
    return key, TrustStore.from_file(trust_file)


def _status_bytes(key: keys.SigningKey, nonce: bytes, **fields: object) -> bytes:
    reply = command_pb2.Reply(
        responder=key.name,
        request_digest=commands.digest(nonce),
        issue_time=commands.to_timestamp(commands.now()),
        spoke_status=command_pb2.SpokeStatus(spoke=key.name, **fields),  # type: ignore[arg-type]
    )
    signed = envelope.sign(reply.SerializeToString(), envelope.PAYLOAD_TYPE_REPLY, key)
    return signed.SerializeToString()


def _probe(entry: SpokeEntry, *, answered: bool, status: bytes = b"", nonce: bytes = b"") -> Probe:
    at = dt.datetime.now(dt.UTC)
    return Probe(
        entry, answered, at, 1 if answered else 0, answered=answered, nonce=nonce, status=status
    )


async def test_health_is_derived_from_probes_and_signed_status(tmp_path: Path) -> None:
    key, trust = _spoke_key(tmp_path)
    entry = SpokeEntry("spoke-1", "127.0.0.1:1")
    registry = SpokeRegistry([entry], sgrpc.ServerOptions())
    metrics = HubMetrics()
    circuits = Circuits(["spoke-1"], CircuitConfig(failures=3, open_s=30))
    monitor = HealthMonitor(registry, trust, circuits, HealthConfig(missed_probes_down=2), metrics)
    try:
        assert monitor.get("spoke-1").state is SpokeState.UNKNOWN  # type: ignore[union-attr]
        nonce = secrets.token_bytes(24)
        good = _status_bytes(key, nonce, redis_ok=True, running=2, queued=3)
        r = monitor.observe_probe(_probe(entry, answered=True, status=good, nonce=nonce))
        assert (r.state, r.missed) == (SpokeState.READY, 0)
        assert r.status is not None
        assert (r.status.running, r.status.queued) == (2, 3)
        assert r.last_seen is not None

        nonce = secrets.token_bytes(24)
        down = _status_bytes(key, nonce, redis_ok=False)
        r = monitor.observe_probe(_probe(entry, answered=True, status=down, nonce=nonce))
        assert (r.state, r.detail) == (SpokeState.DEGRADED, "redis down")

        # A status bound to another nonce (a replayed one) is not believed.
        r = monitor.observe_probe(_probe(entry, answered=True, status=good, nonce=b"x" * 24))
        assert (r.state, r.detail) == (SpokeState.DEGRADED, "status failed verification")

        nonce = secrets.token_bytes(24)
        full = _status_bytes(key, nonce, redis_ok=True, queue_full=True, paused=True)
        r = monitor.observe_probe(_probe(entry, answered=True, status=full, nonce=nonce))
        assert r.detail == "queue full, queue paused"

        monitor.drain("spoke-1", True)
        nonce = secrets.token_bytes(24)
        good = _status_bytes(key, nonce, redis_ok=True)
        r = monitor.observe_probe(_probe(entry, answered=True, status=good, nonce=nonce))
        assert r.state is SpokeState.DRAINING
        monitor.drain("spoke-1", False)

        states = [monitor.observe_probe(_probe(entry, answered=False)).state for _ in range(3)]
        assert states == [SpokeState.UNREACHABLE, SpokeState.DISCONNECTED, SpokeState.DISCONNECTED]
        assert monitor.circuit("spoke-1") is Circuit.OPEN  # three failed probes
        sample = metrics.registry.get_sample_value(
            "hubspoke_spoke_circuit_state", {"spoke": "spoke-1", "state": "open"}
        )
        assert sample == 1.0
        sample = metrics.registry.get_sample_value(
            "hubspoke_spoke_health", {"spoke": "spoke-1", "state": "disconnected"}
        )
        assert sample == 1.0
    finally:
        await registry.close()
