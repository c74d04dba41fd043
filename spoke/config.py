"""The spoke's configuration: one frozen ``SpokeConfig`` per process, validated on construction.

Precedence: command-line flags > environment > TOML file, read by ``hubspoke.config`` (the
loader the hub uses too). Every scalar option has an environment variable, ``SPOKE_`` + its
name in upper case (``SPOKE_LISTEN``, ``SPOKE_KILL_WAIT_S``, ...); ``REDIS_URL`` is read
when ``SPOKE_REDIS_URL`` is unset, ``SPOKE_LABELS`` (``k=v,...``) replaces the labels and
``SPOKE_TLS_*`` override ``[tls]`` option by option. Relative paths in the file resolve
against the file's directory. A bad value fails fast with one line naming the key, with any
Redis password redacted.

Exception hierarchy::

    hubspoke.errors.ConfigError
     └── hubspoke.config.DaemonConfigError
          └── SpokeConfigError
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from hubspoke import config as sconfig
from hubspoke import tls as stls
from hubspoke.event_loop import DEFAULT_EVENT_LOOP, check_event_loop
from hubspoke.metrics import MetricsConfigError, parse_listen
from hubspoke.redis_access import RedisAccess

from .hooks import Hook, HookConfigError, hooks_from_table
from .profiles import Profile, ProfileConfigError, profile_from_mapping, synthetic_profile
from .runmode import Mode, parse_mode

__all__ = ["SpokeConfig", "SpokeConfigError"]


class SpokeConfigError(sconfig.DaemonConfigError):
    """The configuration is missing something or has a bad value."""


def _default_profiles() -> Mapping[str, Profile]:
    return {"synthetic": synthetic_profile()}


@dataclass(frozen=True, slots=True)
class SpokeConfig:
    name: str = "spoke"
    """This spoke's name: the audience commands must carry, and its Redis key prefix."""
    listen: str = "127.0.0.1:7101"
    """host:port the gRPC server binds; port 0 picks a free one (dial link mode only)."""
    link: str = "dial"
    """``dial``: the hub dials ``listen``. ``connect``: this spoke opens no listening socket;
    it dials ``hub_address`` and keeps a control stream open (docs/protocol.md "Connect
    mode"), over ``[tls]`` (its certificate; the hub's checked against ``tls.ca_file``)."""
    hub_address: str = ""
    """Connect mode: ``host:port`` of the hub to dial, or of several hubds of one hub
    (``a:7100,b:7100``), tried in turn when a session fails. Plaintext only to a loopback hub."""
    hub_name: str = "hub"
    """Connect mode: the hub's peer name (the audience of the hello; the name the hub's
    certificate must carry unless ``hub_tls_server_name`` says another)."""
    hub_tls_server_name: str = ""
    """Connect mode, with ``[tls]``: the name the hub's certificate must carry; empty: hub_name."""
    heartbeat_interval_s: float = 5.0
    """Connect mode: how often the spoke sends its signed status on the control stream."""
    link_reconnect_min_s: float = 0.5
    """Connect mode: the first wait before dialling the hub again after a lost session."""
    link_reconnect_max_s: float = 30.0
    """Connect mode: the longest wait between two dials (the wait doubles, with jitter)."""
    key_file: Path = Path("spoke.key")
    """The spoke's Ed25519 private key (mode 0600): it signs every reply."""
    trust_file: Path = Path("trust.toml")
    """Trusted peers: hubs that may relay and clients whose commands may run here."""
    policy_file: Path | None = None
    """Default-deny authorization rules (shared/policy.py); required to start."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """This spoke's labels, matched by policy rules' spoke_labels selectors."""
    rate_per_principal: float = 50.0
    """Sustained commands per second one principal may send (0 disables the limit)."""
    rate_burst: int = 200
    """Commands one principal may send at once after being idle."""
    redis_url: str = "redis://127.0.0.1:6379/0"
    """The spoke site's Redis; several spoked processes may share it."""
    redis_username: str = ""
    """An ACL user to authenticate to Redis as (empty: the ``default`` user)."""
    redis_password_file: Path | None = None
    """A file holding the Redis password on its first line; owner-only (mode 0600), like
    key files. Read when the daemon starts and builds its clients; never logged."""
    redis_tls_ca_file: Path | None = None
    """With a ``rediss://`` redis_url: the CA the Redis server's certificate must chain to
    (empty: the system's CAs)."""
    redis_tls_cert_file: Path | None = None
    """With ``rediss://``: a client certificate, for a Redis that asks for one."""
    redis_tls_key_file: Path | None = None
    """Its private key (owner-only)."""
    profiles: Mapping[str, Profile] = field(default_factory=_default_profiles)
    """Named agent programs; a spoke runs nothing its profiles do not name."""
    concurrency: int = 4
    """Agents this process runs at once; more wait in the queue."""
    max_queue_depth: int = 10_000
    """Agents waiting beyond this are refused with RESOURCE_EXHAUSTED."""
    max_queued_per_principal: int = 1_000
    """Agents one principal may have waiting (QUEUED or RETRYING) on this spoke, counted
    across every spoked on its Redis; one more spawn is refused with RESOURCE_EXHAUSTED
    (QUOTA_EXCEEDED) before anything is stored. Keep it below max_queue_depth, or one
    principal can still fill the queue for everyone."""
    max_delay_s: float = 86_400.0
    """The longest not-before delay a spawn may ask for, in seconds; a longer one is
    refused with INVALID_ARGUMENT before anything is stored."""
    max_task_bytes: int = 64 * 1024
    """Largest task text accepted, in UTF-8 bytes."""
    max_labels: int = 32
    """Most labels a spawn may carry (each key and value at most 256 bytes)."""
    output_tail_bytes: int = 64 * 1024
    """Bytes of stdout and of stderr kept per agent (the last ones)."""
    default_priority: int = 5
    """Priority of a spawn that names none (1 least urgent … 10 most)."""
    retention_s: float = 7 * 86400.0
    """How long a finished agent's record, and so its command id, stays known."""
    replay_within_s: float = 86400.0
    """How long after the spoke stored a spawn its agent may still be replayed (and start),
    for an agent stored before spawns carried a start deadline; any newer agent's replay
    must start by the agent's own start deadline."""
    default_start_within_s: float = 86400.0
    """A spawn's start deadline, counted from its acceptance, when neither the spawn
    (``start_within``) nor its profile (``start_within_seconds``) names one."""
    max_start_within_s: float = 7 * 86400.0
    """The longest start_within a spawn may ask for; a longer one is refused with
    INVALID_ARGUMENT before anything is stored."""
    max_relay_age_s: float = 7 * 86400.0
    """How old a hub's acceptance time (Relay.accept_time) may be when its relay arrives;
    an older one is refused (COMMAND_EXPIRED), whatever the spawn's start deadline."""
    max_skew_s: float = 30.0
    """How far a sender's clock may run ahead of ours."""
    max_validity_s: float = 3600.0
    """Longest expire - issue span accepted; nonces are kept this long plus the skew."""
    lock_duration_ms: int = 8_000
    """bullmq job lock; renewed while the agent runs, so a live worker never loses it."""
    stalled_interval_ms: int = 3_000
    """How often workers look for jobs whose lock expired (a crashed worker's)."""
    max_message_bytes: int = 4 * 1024 * 1024
    """Largest gRPC message accepted or sent."""
    retry_backoff_ms: int = 1_000
    """Base of the exponential retry backoff (each wait is half to all of base·2^(n-1))."""
    sweep_interval_s: float = 30.0
    """How often finished agents past their retention are forgotten."""
    start_up_scan_batch: int = 100
    """Records (or marks of two-step writes) the start-up scan reads per step
    (spoke/start_up_scan.py)."""
    start_up_scan_pause_ms: int = 25
    """Sleep between two steps of the start-up scan, so that the calls served meanwhile do
    not pay for it (0: none)."""
    start_handoff_ms: int = 2_000
    """How long a spawn this process stored waits in memory for its own worker to start it
    without reading it back from Redis (spoke/start_handoff.py; 0: never)."""
    start_handoff_max: int = 1_024
    """The most such spawns kept at once (oldest out first)."""
    max_watchers: int = 256
    """Concurrent WatchAgent streams this process serves; more get RESOURCE_EXHAUSTED."""
    max_watchers_per_principal: int = 32
    """Concurrent WatchAgent streams one principal may hold on this process (through any
    hub, or directly); more get RESOURCE_EXHAUSTED."""
    watch_heartbeat_s: float = 5.0
    """Seconds between heartbeats on an idle watch stream."""
    watch_event_rate: float = 20.0
    """Events per second one watch stream may carry; over it, progress is coalesced (the
    newest kept), output merged and heartbeats skipped, state changes never dropped."""
    watch_event_burst: int = 100
    """Events one watch stream may carry at once (catching up on stored events)."""
    watch_event_rate_per_principal: float = 200.0
    """Events per second all of one principal's watch streams on this process may carry."""
    watch_event_burst_per_principal: int = 400
    """Events all of one principal's watch streams on this process may carry at once."""
    feed_maxlen: int = 50_000
    """State changes the event feed keeps (approximately; oldest trimmed first): a
    WatchEvents cursor older than that is told of the gap (spoke/feed.py)."""
    hooks: tuple[Hook, ...] = ()
    """Notification hooks, ``[[hooks]]`` tables (spoke/hooks.py)."""
    hook_timeout_s: float = 10.0
    """How long one run of a hook program may take before its process group is killed
    (a hook's own ``timeout_seconds`` overrides it)."""
    hook_retries: int = 3
    """How many times a failed hook run is tried again (a hook's ``retries`` overrides it)."""
    hook_backoff_s: float = 1.0
    """The wait before a hook's first retry; each further retry waits twice as long."""
    kill_wait_s: float = 8.0
    """How long a KillAgent call waits for the agent to reach its final state."""
    max_awaiting_per_principal: int = 100
    """Agents of one principal that may wait for approvals here at once (they are in no
    queue, so max_queued_per_principal does not count them); one more spawn that needs
    approvals is refused with RESOURCE_EXHAUSTED (QUOTA_EXCEEDED) before it is stored."""
    approval_window_s: float = 86400.0
    """How long a spawn held for approvals waits for them, from its acceptance, when its
    policy rule names no ``approval_window_seconds``; then it ends REJECTED
    (APPROVAL_EXPIRED), checked every ``sweep_interval_s``."""
    verification_grace_s: float = 120.0
    """How long a NEEDS_VERIFICATION agent waits for ``hubctl verify`` before it is FAILED
    (VERIFICATION_TIMEOUT)."""
    max_receipt_bytes: int = 64 * 1024
    """Largest receipt (its JSON text, UTF-8 bytes) kept; a longer one is recorded as
    ``receipt: over N bytes`` instead."""
    max_input_bytes: int = 64 * 1024
    """The longest message ``hubctl send`` may carry (SendInput text, UTF-8 bytes); a longer
    one is refused with INVALID_ARGUMENT and nothing is kept."""
    max_inputs_per_agent: int = 100
    """The most messages kept for one agent (each with its signed envelope); one more is
    refused with RESOURCE_EXHAUSTED (QUOTA_EXCEEDED)."""
    inbox_dir: Path | None = None
    """The directory of the agents' inboxes (a file or FIFO per agent, named by its id, that
    a profile's ``inbox`` key asks for); created owner-only. Empty: ``hubspoke-inbox-UID-NAME``
    under the system's temporary directory."""
    supervise: bool = True
    """Run each agent under a supervisor of its own (spoke/supervisor.sh, issue 13) that
    outlives spoked: its output and exit go to files a restarted spoked reads on from, so a
    spoked crash or upgrade loses no running agent. False: spoked holds the agent's pipes."""
    agent_state_dir: Path | None = None
    """The supervised agents' state directories (output, exit status; one per attempt),
    created owner-only. Empty: ``hubspoke-agents-UID-NAME-SITE`` under the system's temporary
    directory (SITE: a hash of ``redis_url``). Keep it across restarts: a restarted spoked
    finds running agents there."""
    leave_agents_on_shutdown: bool = True
    """With ``supervise``: SIGTERM (an upgrade) stops taking jobs and leaves running agents
    running for the next spoked to re-attach; False: they get the shutdown's drain, then a
    kill, as without supervisors."""
    shutdown_grace_s: float = 5.0
    """How long, in seconds, in-flight calls and agent workers may finish on shutdown."""
    allow_eviction: bool = False
    """Start even if Redis' maxmemory-policy is not noeviction (risks losing queued agents)."""
    log_level: str = "info"
    """debug, info, warning or error."""
    event_loop: str = DEFAULT_EVENT_LOOP
    """The event loop spoked runs on: ``uvloop`` (the default where it is installed) or
    ``asyncio`` (hubspoke/event_loop.py);
    ``HUBSPOKE_EVENT_LOOP`` when ``SPOKE_EVENT_LOOP`` is unset."""
    metrics_listen: str = ""
    """host:port of the Prometheus endpoint (``/metrics``); empty: no endpoint."""
    metrics_refresh_s: float = 5.0
    """How often the queue-depth gauges are read from Redis."""
    tls: stls.TlsConfig | None = None
    """Transport TLS (``[tls]``, ``SPOKE_TLS_*``). Without it the spoke speaks plaintext,
    which it allows only on a loopback ``listen`` address."""
    mode: str = "live"
    """The run mode of every profile (``live``, ``synthetic`` or ``shadow``; spoke/modes.py):
    a profile's own ``mode`` can only make it more cautious. ``SPOKE_MODE`` overrides it."""

    def __post_init__(self) -> None:
        sconfig.check_name(_LAYOUT, "name", self.name)
        sconfig.check_address(_LAYOUT, "listen", self.listen)
        _check_link(self)
        sconfig.redis_access(_LAYOUT, self)
        sconfig.check_positive_seconds(_LAYOUT, self)
        positive = (
            "concurrency",
            "max_queue_depth",
            "max_queued_per_principal",
            "max_task_bytes",
            "output_tail_bytes",
            "max_receipt_bytes",
            "max_input_bytes",
            "max_inputs_per_agent",
            "max_awaiting_per_principal",
            "lock_duration_ms",
            "stalled_interval_ms",
            "retry_backoff_ms",
            "max_watchers",
            "max_watchers_per_principal",
            "watch_event_rate",
            "watch_event_burst",
            "watch_event_rate_per_principal",
            "watch_event_burst_per_principal",
            "feed_maxlen",
            "start_up_scan_batch",
        )
        for key in positive:
            if getattr(self, key) <= 0:
                raise SpokeConfigError(f"{key} must be positive")
        if self.start_up_scan_pause_ms < 0:
            raise SpokeConfigError("start_up_scan_pause_ms must not be negative")
        if self.start_handoff_ms < 0 or self.start_handoff_max < 0:
            raise SpokeConfigError("start_handoff_ms and start_handoff_max must not be negative")
        if self.hook_retries < 0:
            raise SpokeConfigError("hook_retries must not be negative")
        if self.max_message_bytes < 1024:
            raise SpokeConfigError("max_message_bytes must be at least 1024")
        if not 1 <= self.default_priority <= 10:
            raise SpokeConfigError("default_priority must be 1-10")
        if self.log_level.lower() not in sconfig.LOG_LEVELS:
            levels = ", ".join(sorted(sconfig.LOG_LEVELS))
            raise SpokeConfigError(f"log_level must be one of {levels}")
        if (loop_error := check_event_loop(self.event_loop)) is not None:
            raise SpokeConfigError(loop_error)
        if not self.profiles:
            raise SpokeConfigError("at least one profile is required")
        try:
            object.__setattr__(self, "mode", parse_mode(self.mode).value)
        except ValueError as exc:
            raise SpokeConfigError(f"mode {exc}") from None
        if self.metrics_listen:
            try:
                parse_listen(self.metrics_listen)
            except MetricsConfigError as exc:
                raise SpokeConfigError(str(exc)) from exc

    def __repr__(self) -> str:
        return sconfig.config_repr(self)

    @property
    def run_mode(self) -> Mode:
        """``mode`` as a :class:`Mode`."""
        return Mode(self.mode)

    @property
    def redis(self) -> RedisAccess:
        """The ``redis_*`` options as one value: every Redis client is built from it."""
        return sconfig.redis_access(_LAYOUT, self)

    def replace(self, **changes: Any) -> SpokeConfig:
        """A copy with some options changed (e.g. from flags), validated again."""
        return sconfig.replace(self, _LAYOUT, **changes)

    @classmethod
    def load(cls, path: Path | None, env: Mapping[str, str]) -> SpokeConfig:
        """Read ``path`` (if given), apply ``SPOKE_*`` overrides from ``env``, validate.

        Raises:
            SpokeConfigError: the file is missing or not TOML, an option is unknown or invalid.
        """
        return sconfig.load(cls, path, env, _LAYOUT)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], base: Path) -> SpokeConfig:
        """A config from a table shaped like the file (relative paths against ``base``)."""
        values = sconfig.values_from_table(cls, raw, base, "config", _LAYOUT)
        if "tls" in values:
            values["tls"] = _tls(values["tls"])
        return sconfig.construct(cls, values, _LAYOUT)


def _check_link(cfg: SpokeConfig) -> None:
    """The connect-mode options hang together."""
    if cfg.link not in ("dial", "connect"):
        raise SpokeConfigError("link must be dial or connect")
    if cfg.link == "connect":
        if not cfg.hub_address:
            raise SpokeConfigError("link = connect needs hub_address (host:port of the hub)")
        for address in cfg.hub_address.split(","):  # several hubds: a:7100,b:7100
            sconfig.check_address(_LAYOUT, "hub_address", address.strip())
        sconfig.check_name(_LAYOUT, "hub_name", cfg.hub_name)
    if cfg.link_reconnect_max_s < cfg.link_reconnect_min_s:
        raise SpokeConfigError("link_reconnect_max_s must not be below link_reconnect_min_s")


def _tls(options: Mapping[str, Path | bool]) -> stls.TlsConfig:
    try:
        return stls.tls_config(options, "tls")
    except stls.TlsError as exc:
        raise SpokeConfigError(str(exc)) from exc


def _hooks(value: object, base: Path | None, where: str) -> tuple[Hook, ...]:
    try:
        return hooks_from_table(value, base, where)
    except HookConfigError as exc:
        raise SpokeConfigError(str(exc)) from exc


def _labels(value: object, base: Path | None, where: str) -> Mapping[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise SpokeConfigError("labels must be a table of strings")
    return dict(value)


def _labels_env(text: str) -> Mapping[str, str]:
    labels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SpokeConfigError("SPOKE_LABELS must be key=value[,key=value...]")
        labels[key.strip()] = value.strip()
    return labels


def _profiles(value: object, base: Path | None, where: str) -> Mapping[str, Profile]:
    if not isinstance(value, dict):
        raise SpokeConfigError("profiles must be a table of tables: [profiles.NAME]")
    out: dict[str, Profile] = {}
    for name, table in value.items():
        if not isinstance(table, dict):
            raise SpokeConfigError(f"profiles.{name} must be a table")
        try:
            out[name] = profile_from_mapping(name, table)
        except ProfileConfigError as exc:
            raise SpokeConfigError(str(exc)) from exc
    return out


_LAYOUT: Final = sconfig.Layout(
    prefix="SPOKE_",
    error=SpokeConfigError,
    tables={"profiles": _profiles, "labels": _labels, "hooks": _hooks},
    env_tables={"labels": ("SPOKE_LABELS", _labels_env)},
    fallbacks={"redis_url": "REDIS_URL", "event_loop": "HUBSPOKE_EVENT_LOOP"},
)
