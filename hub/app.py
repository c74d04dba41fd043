"""``HubApp``: the hub process's lifecycle around HubService.

``start()`` builds and starts the server and marks health SERVING; ``shutdown()`` (idempotent)
marks health NOT_SERVING, lets in-flight calls finish for ``shutdown_grace_s``, then closes
the spoke channels and Redis. ``run()`` serves until SIGINT or SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

import grpc
import structlog

from hubspoke import commands, daemon, errors, keys
from hubspoke import grpc as sgrpc
from hubspoke import tls as stls
from hubspoke.admission import RateLimit
from hubspoke.gen.federation.v1 import hub_service_pb2
from hubspoke.metrics import MetricsServer
from hubspoke.pacing import PacingConfig
from hubspoke.policy import Policy, PolicyConfigError
from hubspoke.trust import TrustStore

from . import audit_wiring, enrol_wiring, forward_wiring, outbox_wiring, prefetch
from .audit_checkpoints import CheckpointWriter
from .audit_service import Audited
from .circuit import CircuitConfig, Circuits
from .config import HubConfig
from .health import HealthConfig, HealthMonitor
from .link_metrics import LinkMetrics
from .link_registry import LinkingRegistry, connect_mode, link_config, stop_serving
from .link_sessions import LinkSessions
from .membership import MemberKeys
from .metrics import HubMetrics
from .registry import SpokeRegistry
from .relay import Gate, RelayConfig, Relayer
from .service import HubServicer, RoutingConfig
from .store import HubStore

__all__ = ["HUB_SERVICE", "HubApp"]

log = structlog.get_logger("hubspoke.hub.app")

HUB_SERVICE = hub_service_pb2.DESCRIPTOR.services_by_name["HubService"]


class HubApp:
    """One hub server. Key, trust store and TLS files are read on construction, so bad
    files fail early.

    Raises (from ``__init__``):
        hubspoke.keys.KeyFileError: the key file is missing, unsafe or not an Ed25519 key.
        hubspoke.trust.TrustConfigError: the trust store is missing or malformed.
        hubspoke.tls.TlsError: a TLS file is missing, unsafe or invalid; or, without TLS,
            the hub would listen on or dial a spoke at a non-loopback address.
    """

    def __init__(self, config: HubConfig) -> None:
        self.config = config
        self._key = keys.load_private(config.key_file, config.name)
        # Static peers, then the spokes enrolled in Redis (hub/membership.py).
        self._trust = MemberKeys(TrustStore.from_file(config.trust_file))
        if config.policy_file == Path():
            raise PolicyConfigError(
                "policy_file is required: authorization is default-deny (docs/security.md)"
            )
        self._policy = Policy.from_file(config.policy_file)
        self._server_creds: grpc.ServerCredentials | None = None
        self._channel_creds: grpc.ChannelCredentials | None = None
        if config.tls is None:
            stls.require_loopback("listen", config.listen)
            for entry in config.spokes:
                if entry.link == "dial":  # a connect-mode spoke dials in: no address
                    stls.require_loopback(f"spoke {entry.name} at", entry.address)
        else:
            self._server_creds = stls.server_credentials(config.tls)
            self._channel_creds = stls.channel_credentials(config.tls)
        self._options = sgrpc.ServerOptions(max_message_bytes=config.max_message_bytes)
        self._built: sgrpc.BuiltServer | None = None
        self._store: HubStore | None = None
        self._registry: SpokeRegistry | None = None
        self._enrolment: enrol_wiring.EnrolWiring | None = None
        self._monitor_task: asyncio.Task[None] | None = None
        self._checkpoints: tuple[CheckpointWriter, asyncio.Task[None]] | None = None
        self._delivery: asyncio.Task[None] | None = None
        self._forward: forward_wiring.ForwardWiring | None = None
        self._stopping: asyncio.Event | None = None
        self._shutdown_done = False
        self._metrics = HubMetrics()
        self._metrics_server: MetricsServer | None = None

    @property
    def port(self) -> int:
        """The bound port; only valid after ``start()``."""
        if self._built is None:
            raise RuntimeError("HubApp is not started")
        return self._built.port

    @property
    def metrics_port(self) -> int | None:
        """The Prometheus endpoint's port, or None without ``metrics_listen``."""
        return self._metrics_server.port if self._metrics_server else None

    async def start(self) -> int:
        """Build and start the server inside the running loop; return the bound port."""
        if self._built is not None:
            return self._built.port
        try:
            return await self._start()
        except BaseException:
            await self.shutdown()
            raise

    async def _start(self) -> int:
        cfg = self.config
        cfg.redis.check()  # the password file and TLS files (ConfigError), before connecting
        self._store = HubStore.from_url(cfg.redis, cfg.name, cfg.redis_timeout_s)
        await self._check_schema(self._store)
        self._registry = registry = LinkingRegistry(
            cfg.spokes, self._options, self._channel_creds, LinkSessions(link_config(cfg))
        )
        circuits = Circuits(
            self._registry.names(),
            CircuitConfig(cfg.circuit_failures, cfg.circuit_open_s, cfg.probe_interval_s),
        )
        monitor = HealthMonitor(
            self._registry,
            self._trust,
            circuits,
            HealthConfig(cfg.probe_interval_s, cfg.probe_timeout_s, cfg.missed_probes_down),
            self._metrics,
        )
        window = commands.Window(
            max_skew=dt.timedelta(seconds=cfg.max_skew_s),
            max_validity=dt.timedelta(seconds=cfg.max_validity_s),
        )
        relayer = Relayer(
            RelayConfig(
                hub_name=cfg.name,
                key=self._key,
                relay_validity=dt.timedelta(seconds=cfg.relay_validity_s),
                call_timeout_s=cfg.spoke_call_timeout_s,
                kill_timeout_s=cfg.spoke_call_timeout_s + cfg.kill_grace_s,
                pacing=PacingConfig(
                    rate=cfg.watch_event_rate,
                    burst=cfg.watch_event_burst,
                    rate_per_principal=cfg.watch_event_rate_per_principal,
                    burst_per_principal=cfg.watch_event_burst_per_principal,
                ),
            ),
            self._trust,
            self._registry,
            self._metrics,
            circuits,
        )
        audit = audit_wiring.audit_log(cfg, self._store.client, self._store.mux)
        desk = outbox_wiring.outbox_desk(
            cfg, self._store.client, relayer, monitor, self._key, audit, self._store.mux
        )
        prefetcher = prefetch.prefetcher(cfg.name, self._store, desk, registry)
        if prefetcher is not None:
            await prefetcher.load()  # its script; a failure is logged, loaded again on use
        servicer = HubServicer(
            RoutingConfig(
                hub_name=cfg.name,
                key=self._key,
                agent_index_ttl_s=cfg.agent_index_ttl_s,
                probe_timeout_s=cfg.probe_timeout_s,
                max_watchers=cfg.max_watchers,
                max_watchers_per_principal=cfg.max_watchers_per_principal,
                max_message_bytes=cfg.max_message_bytes,
                fanout_timeout_s=cfg.fanout_timeout_s,
                claim_ttl_s=cfg.claim_ttl_s,
                max_input_bytes=cfg.max_input_bytes,
            ),
            Gate(
                self._trust,
                window,
                self._store.admission(
                    RateLimit(cfg.rate_per_principal, cfg.rate_burst), window.max_skew
                ),
                cfg.name,
                prefetcher,
            ),
            relayer,
            self._registry,
            self._store,
            self._policy,
            monitor,
            audit=audit,
            outbox=desk,
        )
        served: object = servicer
        if audit is not None:
            audit_wiring.record_circuits(audit, circuits)
            served = Audited(servicer, audit, cfg.audit_unverified_per_s)
        self._enrolment = await enrol_wiring.start(
            cfg, self._key, self._trust, self._registry, servicer
        )
        try:
            built = sgrpc.build_server(
                [sgrpc.Service(HUB_SERVICE, served)],
                cfg.listen,
                self._options,
                self._server_creds,
                observe=self._metrics.observe_rpc,
            )
        except RuntimeError as exc:  # grpcio reports a failed bind as RuntimeError
            raise OSError(f"could not bind {cfg.listen}: address in use or unavailable") from exc
        self._built = built
        await self._enrolment.serve(built.server, built.port, self._options)
        # Several hubds: spoke leases, forwarded calls, shared hello nonces (forward_wiring).
        self._forward = fwd = forward_wiring.start(
            cfg,
            self._key,
            self._store.client,
            registry,
            monitor,
            built.port,
            self._options,
            self._channel_creds,
        )
        built.server.add_generic_rpc_handlers((fwd.servicer.handler(),))
        # Connect-mode spokes dial in on the same port (hub/link_service.py).
        link = connect_mode(
            cfg, registry, self._trust, monitor, LinkMetrics(self._metrics.registry), fwd.keeper
        )
        built.server.add_generic_rpc_handlers((link.handler(),))
        await built.server.start()
        if cfg.metrics_listen:
            self._metrics_server = self._metrics.serve(cfg.metrics_listen)
            log.info("metrics_serving", port=self._metrics_server.port)
        await built.serving([HUB_SERVICE.full_name])
        self._monitor_task = asyncio.create_task(monitor.run(), name="spoke-health")
        self._checkpoints = audit_wiring.checkpoint_task(cfg, audit, self._key)
        self._delivery = outbox_wiring.start_delivery(
            cfg, desk, relayer, servicer.remember, audit, circuits
        )
        if not await self._store.ping():
            log.warning("redis_unreachable", hint="commands fail with UNAVAILABLE until it answers")
        log.info("hub_serving", hub=cfg.name, port=built.port, spokes=len(cfg.spokes))
        return built.port

    async def _check_schema(self, store: HubStore) -> None:
        """Refuse a Redis written by a newer hub; migrate an older one (``HubStore``)."""
        try:
            state = await store.ensure_schema()
        except errors.BackendUnavailableError:
            # The hub starts without Redis (calls answer UNAVAILABLE until it is back).
            log.warning("schema_unchecked", hint="Redis does not answer; checked at next start")
            return
        log.info("schema_ready", version=state.current, found=state.found)

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop serving and release everything; safe to call more than once.

        Args:
            grace: seconds in-flight calls may still finish; ``shutdown_grace_s`` if None.
        """
        if self._shutdown_done:
            return
        self._shutdown_done = True
        grace_s = self.config.shutdown_grace_s if grace is None else grace
        try:
            for task in (self._monitor_task, self._delivery):
                if task is not None:
                    task.cancel()
                    await asyncio.wait({task}, timeout=grace_s)
            if self._built is not None:
                await stop_serving(self._built, self._registry, grace_s)  # link sessions too
            if self._checkpoints is not None:
                writer, task = self._checkpoints
                task.cancel()
                await asyncio.wait({task}, timeout=grace_s)
                with contextlib.suppress(errors.BackendUnavailableError, OSError):
                    await writer.write_once()  # the head as this hubd leaves it
        finally:
            if self._forward is not None:
                await self._forward.close()
            if self._enrolment is not None:
                await self._enrolment.close()
            if self._registry is not None:
                await self._registry.close()
            if self._store is not None:
                await self._store.close()
            if self._metrics_server is not None:
                self._metrics_server.close()
            log.info("hub_stopped", hub=self.config.name)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()

    def request_stop(self) -> None:
        """Ask ``run()`` to shut down (what SIGINT/SIGTERM do)."""
        if self._stopping is not None:
            self._stopping.set()

    async def run(self, on_serving: Callable[[int], None] | None = None) -> None:
        """Serve until SIGINT/SIGTERM (or ``request_stop``), then shut down.

        Args:
            on_serving: called with the bound port once the server accepts calls.
        """
        self._stopping = asyncio.Event()
        await daemon.serve_until_stopped(self, self._stopping, on_serving)
