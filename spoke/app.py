"""SpokeApp: assembles and runs one spoked process (server, queue, worker pool)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
from collections.abc import Callable
from types import TracebackType

import grpc
import redis.exceptions
import structlog

from hubspoke import commands, daemon, keys
from hubspoke import tls as stls
from hubspoke.admission import Admission, RateLimit
from hubspoke.gen.federation.v1 import spoke_service_pb2
from hubspoke.grpc import BuiltServer, ServerOptions, Service
from hubspoke.metrics import MetricsServer
from hubspoke.policy import Policy
from hubspoke.trust import TrustStore

from . import heap, start_up_scan, workers
from .backend import BackendError
from .config import SpokeConfig, SpokeConfigError
from .deadline import Deadlines
from .health import StatusMonitor
from .hooks import Hooks, HookSettings
from .keys import SpokeKeys
from .link_server import server_factory
from .metrics import SpokeMetrics
from .queue import AgentQueue
from .schema import ensure_spoke_schema
from .service import SpokeServicer
from .sweeper import Sweeper
from .verifier import Verifier
from .worker import AgentWorker

log = structlog.get_logger("hubspoke.spoke.app")

SERVICE = spoke_service_pb2.DESCRIPTOR.services_by_name["SpokeService"]


class SpokeApp:
    """One spoke process. ``async with SpokeApp(cfg) as app:`` serves on ``app.port``."""

    def __init__(self, config: SpokeConfig) -> None:
        self.config = config
        self._server: BuiltServer | None = None
        self._queue: AgentQueue | None = None
        self._worker: AgentWorker | None = None
        self._worker_task: asyncio.Task[None] | None = None
        self._sweeper_task: asyncio.Task[None] | None = None
        self._requeue_task: asyncio.Task[None] | None = None
        self._metrics_task: asyncio.Task[None] | None = None
        self._status_task: asyncio.Task[None] | None = None
        self._hooks: Hooks | None = None
        self._metrics_server: MetricsServer | None = None
        self._stopping = False
        self._stopped = asyncio.Event()
        self._stop_requested: asyncio.Event | None = None
        self._plan = workers.Plan.from_env(os.environ)
        """``spoked --workers N``: whether this process is the primary or a helper."""
        if self._plan.workers > 1 and config.link == "connect":
            raise SpokeConfigError("--workers needs dial mode: a connect-mode spoke dials its hub")
        self._helpers = workers.Helpers()
        self._parent = os.getppid()
        self._leave_agents = False
        """Shut down leaving supervised agents running: only when a signal stops ``run()``
        (an upgrade) and ``leave_agents_on_shutdown``; a direct ``shutdown()`` kills them."""

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("spoke is not started")
        return self._server.port

    @property
    def metrics_port(self) -> int | None:
        """The Prometheus endpoint's port, or None without ``metrics_listen``."""
        return self._metrics_server.port if self._metrics_server else None

    @property
    def methods(self) -> list[str]:
        return self._server.methods if self._server else []

    async def start(self) -> int:
        """Start serving; on any failure, release what was set up and re-raise."""
        try:
            return await self._start()
        except BaseException:
            await self.shutdown()
            raise

    async def _start(self) -> int:
        cfg = self.config
        credentials = self._server_credentials()
        key = keys.load_private(cfg.key_file, cfg.name)
        trust = TrustStore.from_file(cfg.trust_file)
        if cfg.policy_file is None:
            raise SpokeConfigError(
                "policy_file is required: authorization is default-deny (docs/security.md)"
            )
        policy = Policy.from_file(cfg.policy_file)
        metrics = SpokeMetrics()
        cfg.redis.check()  # the password file and TLS files (ConfigError), before connecting
        self._queue = agents = AgentQueue(cfg.redis, cfg.name, observe=metrics.observe_transition)
        if cfg.metrics_listen:  # the histograms' samples cost a read per start and end
            agents.records.timed = agents.worker_records.timed = metrics.observe_timing
        try:
            eviction = await agents.maxmemory_policy()
        except BackendError as exc:
            raise SpokeConfigError(f"cannot reach Redis at {cfg.redis_url}: {exc}") from exc
        if eviction != "noeviction" and not cfg.allow_eviction:
            raise SpokeConfigError(
                f"Redis maxmemory-policy is {eviction!r}; queued agents could be evicted. "
                "Set it to noeviction, or allow_eviction = true to accept the risk"
            )
        await self._check_schema(agents)
        try:
            await agents.feed.configure(cfg.feed_maxlen)
        except BackendError as exc:
            raise SpokeConfigError(f"cannot reach Redis at {cfg.redis_url}: {exc}") from exc
        window = commands.Window(
            max_skew=dt.timedelta(seconds=cfg.max_skew_s),
            max_validity=dt.timedelta(seconds=cfg.max_validity_s),
        )
        admission = Admission(
            agents.redis, RateLimit(cfg.rate_per_principal, cfg.rate_burst), mux=agents.mux
        )
        verifier = Verifier(cfg.name, trust, window, admission, Deadlines.of(cfg))
        servicer = SpokeServicer(cfg, key, verifier, agents, policy)
        # Connect mode: no listening socket; the spoke dials its hub (spoke/link_server.py).
        self._server = server_factory(cfg)(
            [Service(SERVICE, servicer)],
            cfg.listen,
            ServerOptions(
                max_message_bytes=cfg.max_message_bytes,
                reuse_port=self._plan.workers > 1 or self._plan.serve_only,
            ),
            credentials,
            observe=metrics.observe_rpc,
        )
        await self._server.server.start()
        if self._plan.serve_only:  # a helper of spoked --workers: RPCs only (spoke/workers.py)
            return await self._serve_only(self._server, agents, key)
        if self._plan.primary_of_many:
            host = workers.listen_host(cfg.listen)
            await self._helpers.start(self._plan.workers - 1, host, self._server.port)
        self._worker = worker = AgentWorker(agents, cfg, trust)
        metrics.track_running(lambda: len(worker.running_agents))
        self._worker_task = asyncio.create_task(self._worker.run(), name="worker")
        self._worker_task.add_done_callback(self._worker_done)
        self._sweeper_task = asyncio.create_task(Sweeper(agents.records, cfg).run(), name="sweeper")
        if cfg.metrics_listen:
            self._metrics_server = metrics.serve(cfg.metrics_listen)
            self._metrics_task = asyncio.create_task(
                metrics.refresh_queue(agents, cfg.metrics_refresh_s), name="metrics"
            )
            log.info("metrics_serving", port=self._metrics_server.port)
        await self._server.serving([SERVICE.full_name])
        # Health follows Redis from now on, and a probe gets the signed status (health.py).
        monitor = StatusMonitor(cfg, key, agents, self._server.health, [SERVICE.full_name])
        self._server.health.status_source = monitor.signed
        self._status_task = asyncio.create_task(monitor.run(), name="status")
        self._hooks = Hooks(cfg.hooks, cfg.name, agents.feed, agents.redis, _hook_settings(cfg))
        self._hooks.start()  # background runners: no worker waits on a hook
        log.info("spoke_serving", spoke=cfg.name, port=self._server.port)
        heap.freeze_start_up()  # spoked only: the start-up heap leaves the collector's passes
        # After serving: on a large backlog this scan takes a while and must not delay start.
        self._requeue_task = asyncio.create_task(self._requeue(agents), name="requeue")
        return self._server.port

    async def _serve_only(
        self, server: BuiltServer, agents: AgentQueue, key: keys.SigningKey
    ) -> int:
        """A helper's start: serve, report health, and stop when the primary is gone."""
        await server.serving([SERVICE.full_name])
        monitor = StatusMonitor(self.config, key, agents, server.health, [SERVICE.full_name])
        server.health.status_source = monitor.signed
        self._status_task = asyncio.create_task(monitor.run(), name="status")
        self._requeue_task = asyncio.create_task(self._stop_when_orphaned(), name="orphan")
        log.info("spoke_serving", spoke=self.config.name, port=server.port, serve_only=True)
        heap.freeze_start_up()  # a helper answers RPCs: its heap too (spoke/heap.py)
        return server.port

    async def _stop_when_orphaned(self) -> None:
        await workers.until_orphaned(self._parent)
        log.warning("primary_gone", parent=self._parent)
        self.request_stop()

    async def _check_schema(self, agents: AgentQueue) -> None:
        """Refuse a Redis written by a newer hubspoke; migrate an older one (spoke/schema.py)."""
        try:
            state = await ensure_spoke_schema(agents.redis, SpokeKeys(self.config.name))
        except redis.exceptions.RedisError as exc:
            raise SpokeConfigError(
                f"cannot read the schema version in Redis at {self.config.redis_url}: {exc}"
            ) from exc
        log.info("schema_ready", version=state.current, found=state.found)

    def _server_credentials(self) -> grpc.ServerCredentials | None:
        """TLS credentials, or None for plaintext, which only a loopback ``listen`` may use."""
        try:
            if self.config.tls is None:
                stls.require_loopback("listen", self.config.listen)
                return None
            return stls.server_credentials(self.config.tls)
        except stls.TlsError as exc:
            raise SpokeConfigError(str(exc)) from exc

    async def _requeue(self, agents: AgentQueue) -> None:
        try:  # the marked two-step writes only, after the one-time full scan (issue 13)
            done = await start_up_scan.run(agents, start_up_scan.Pacing.of(self.config))
        except BackendError as exc:
            log.warning("requeue_failed", error=str(exc))
            return
        log.info(
            "requeue_done",
            requeued=done.requeued,
            full_scan=done.full,
            records=done.records,
            marks=done.marks,
            seconds=round(done.seconds, 3),
        )

    def _worker_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None and not self._stopping:
            log.error("worker_crashed", exc_info=task.exception())

    async def shutdown(self, grace: float | None = None) -> None:
        """Health NOT_SERVING → stop the server → drain the workers → close Redis.

        Safe to call more than once (later calls wait for the first).

        Args:
            grace: seconds in-flight calls and background loops may still finish;
                ``shutdown_grace_s`` if None.
        """
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        grace = self.config.shutdown_grace_s if grace is None else grace
        try:
            tasks = (self._sweeper_task, self._requeue_task, self._metrics_task, self._status_task)
            for task in tasks:
                if task is not None:
                    task.cancel()
                    # Bounded: a loop that lost its cancel (shared/aio.py) must not hang us.
                    done, _ = await asyncio.wait({task}, timeout=grace)
                    if not done:
                        log.warning("task_did_not_stop", task=task.get_name())
            if self._hooks is not None:
                await self._hooks.close()
            await self._helpers.stop(grace)
            if self._server is not None:
                await self._server.stop(grace)
            if self._worker is not None:
                await self._worker.shutdown(leave=self._leave_agents)
            if self._worker_task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(self._worker_task, timeout=grace + 10)
            if self._queue is not None:
                await self._queue.close()
            if self._metrics_server is not None:
                self._metrics_server.close()
        finally:
            self._stopped.set()

    def request_stop(self) -> None:
        """Ask ``run()`` to shut down (what SIGINT/SIGTERM do)."""
        if self._stop_requested is not None:
            self._stop_requested.set()

    async def run(self, on_serving: Callable[[int], None] | None = None) -> None:
        """Serve until SIGINT/SIGTERM (or ``request_stop``), then shut down in order.

        Args:
            on_serving: called with the bound port once the server accepts calls.
        """
        self._stop_requested = asyncio.Event()
        self._leave_agents = self.config.leave_agents_on_shutdown  # SIGTERM: an upgrade
        await daemon.serve_until_stopped(self, self._stop_requested, on_serving)

    async def __aenter__(self) -> SpokeApp:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()


def _hook_settings(cfg: SpokeConfig) -> HookSettings:
    return HookSettings(
        timeout_s=cfg.hook_timeout_s,
        retries=cfg.hook_retries,
        backoff_s=cfg.hook_backoff_s,
        heartbeat_s=cfg.watch_heartbeat_s,
    )
