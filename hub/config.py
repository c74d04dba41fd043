"""The hub's configuration: a TOML file, then ``HUB_*`` environment variables, then flags.

File format (relative paths resolve against the file's directory)::

    name = "hub"
    listen = "127.0.0.1:7100"
    key_file = "keys/hub.key"
    trust_file = "trust.toml"
    redis_url = "redis://127.0.0.1:6379/0"
    [[spokes]]
    name = "spoke-1"
    address = "127.0.0.1:7101"
    labels = { gpu = "no" }
    tls_server_name = "spoke-1"   # optional: the name its certificate carries
    [[spokes]]
    name = "laptop-1"
    link = "connect"              # it dials the hub (no address): connect link mode
    [tls]                         # optional; without it, plaintext on loopback only
    cert_file = "tls/hub.crt"
    key_file = "tls/hub.tls.key"
    ca_file = "tls/ca.crt"
    require_client_cert = true

Every scalar option also has an environment variable, ``HUB_`` + its name in upper case
(``HUB_LISTEN``, ``HUB_SPOKE_CALL_TIMEOUT_S``, ...); ``REDIS_URL`` is read when
``HUB_REDIS_URL`` is not set, and ``HUB_SPOKES`` (``name=host:port,...``; ``name=connect`` for
a connect-mode spoke) replaces the file's spokes. ``HUB_TLS_CERT_FILE``, ``HUB_TLS_KEY_FILE``,
``HUB_TLS_CA_FILE`` and
``HUB_TLS_REQUIRE_CLIENT_CERT`` override the ``[tls]`` options one by one. Flags are
applied by the caller with :meth:`HubConfig.replace`.

The loading itself is ``hubspoke.config``'s, shared with the spoke.

Exception hierarchy::

    hubspoke.errors.ConfigError
     └── hubspoke.config.DaemonConfigError
          └── HubConfigError   a missing, unknown or invalid option (one line, names the option)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from hubspoke import config as sconfig
from hubspoke import tls as stls
from hubspoke.event_loop import DEFAULT_EVENT_LOOP, check_event_loop
from hubspoke.metrics import MetricsConfigError, parse_listen
from hubspoke.redis_access import RedisAccess

__all__ = ["HubConfig", "HubConfigError", "SpokeEntry"]

NAME_RE: Final = sconfig.NAME_RE
"""Peer names: they appear in Redis keys and in resource names ``spokes/{name}/...``."""
LOG_LEVELS: Final = sconfig.LOG_LEVELS
LINK_MODES: Final = ("dial", "connect")
"""How the hub reaches a spoke (SpokeEntry.link)."""


class HubConfigError(sconfig.DaemonConfigError):
    """The hub's configuration is missing, unknown or invalid; the message is one line."""


def _no_labels() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class SpokeEntry:
    """One spoke the hub routes to."""

    name: str
    """The spoke's name, as its own config and the trust store know it."""
    address: str
    """``host:port`` the hub dials."""
    labels: Mapping[str, str] = field(default_factory=_no_labels)
    """Free-form labels shown by ListSpokes (e.g. ``{"gpu": "no"}``)."""
    tls_server_name: str = ""
    """With ``[tls]``: the name the spoke's certificate must carry; empty means its name."""
    link: str = "dial"
    """``dial``: the hub dials ``address``. ``connect``: the spoke dials the hub and keeps a
    control stream open (no address; docs/protocol.md "Connect mode")."""


def _default_path() -> Path:
    return Path()


@dataclass(frozen=True, slots=True)
class HubConfig:
    """Everything ``hubd`` needs, validated on construction (so also after ``replace``)."""

    name: str = "hub"
    """The hub's peer name: the audience clients address it by, and the Relay issuer."""
    listen: str = "127.0.0.1:7100"
    """``host:port`` to serve HubService on; port 0 picks a free port."""
    key_file: Path = field(default_factory=_default_path)
    """The hub's Ed25519 private key (PEM, mode 0600). Required."""
    trust_file: Path = field(default_factory=_default_path)
    """Trust store TOML: clients (role client) and spokes (role spoke). Required."""
    policy_file: Path = field(default_factory=_default_path)
    """Default-deny authorization rules (shared/policy.py); hubd will not start without."""
    rate_per_principal: float = 50.0
    """Sustained commands per second one principal may send; 0 disables the limit."""
    rate_burst: int = 200
    """Commands one principal may send at once after being idle."""
    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis for the hub's state (``redis://``, ``rediss://`` or ``unix://``), or a Redis
    Cluster by one of its nodes (``redis+cluster://``, ``rediss+cluster://``)."""
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
    spokes: tuple[SpokeEntry, ...] = ()
    """The spokes this hub routes to, in config order."""
    max_skew_s: float = 30.0
    """How far, in seconds, a client's clock may run ahead of the hub's."""
    max_validity_s: float = 3600.0
    """The longest expire_time - issue_time span accepted from a client, in seconds."""
    relay_validity_s: float = 60.0
    """How long, in seconds, a Relay the hub signs stays valid."""
    spoke_call_timeout_s: float = 10.0
    """Deadline, in seconds, of each call to a spoke."""
    kill_grace_s: float = 5.0
    """Extra deadline, in seconds, given to kill calls: the spoke waits for the process group."""
    probe_timeout_s: float = 1.0
    """Deadline, in seconds, of each spoke health probe."""
    probe_interval_s: float = 5.0
    """How often, in seconds, the hub probes every spoke in the background."""
    missed_probes_down: int = 2
    """Probes in a row a spoke may miss before it shows DISCONNECTED."""
    circuit_failures: int = 5
    """Consecutive failures (unanswered relayed calls or probes) that open a spoke's circuit:
    calls to it then fail at once with UNAVAILABLE, reason SPOKE_CIRCUIT_OPEN."""
    circuit_open_s: float = 30.0
    """Seconds an open circuit waits before its half-open probe (a good probe closes it)."""
    fanout_timeout_s: float = 5.0
    """One deadline, in seconds, for a fan-out (list, status by id) across spokes: spokes that
    did not answer by then are named, with the reason."""
    agent_index_ttl_s: float = 7 * 86400.0
    """How long, in seconds, the hub remembers which spoke runs an agent."""
    claim_ttl_s: float = 86400.0
    """The shortest time, in seconds, a selector spawn's command id stays claimed for the
    spoke the hub chose (so a retry through any hub goes there); a spawn whose start_within
    (plus delay) is longer keeps it that long, plus its signature window."""
    max_watchers: int = 1024
    """Concurrent watch streams this hub relays, from all principals; more get
    RESOURCE_EXHAUSTED."""
    max_watchers_per_principal: int = 32
    """Concurrent watch streams one principal may hold through this hub; more get
    RESOURCE_EXHAUSTED (each spoke caps them per principal too)."""
    watch_event_rate: float = 20.0
    """Events per second one relayed watch stream may carry; over it, progress is coalesced
    (the newest kept) and heartbeats skipped, state changes never dropped."""
    watch_event_burst: int = 100
    """Events one relayed watch stream may carry at once."""
    watch_event_rate_per_principal: float = 400.0
    """Events per second all of one principal's watch streams through this hub may carry."""
    watch_event_burst_per_principal: int = 800
    """Events all of one principal's watch streams through this hub may carry at once."""
    redis_timeout_s: float = 2.0
    """Deadline, in seconds, of each Redis operation."""
    shutdown_grace_s: float = 5.0
    """How long, in seconds, in-flight calls may finish on shutdown."""
    max_message_bytes: int = 4 * 1024 * 1024
    """Largest request or response, in bytes."""
    max_input_bytes: int = 64 * 1024
    """The longest text a SendInput (hubctl send) may carry, in UTF-8 bytes; a longer one is
    refused with INVALID_ARGUMENT before it is relayed (each spoke has its own bound too)."""
    enrol_token_ttl_s: float = 3600.0
    """How long, in seconds, an enrolment token (``hubctl spoke enroll``) stays usable at
    most; a shorter ``--ttl`` may be asked for."""
    enrol_listen: str = ""
    """With ``[tls]``: ``host:port`` of the enrolment listener (EnrolService over TLS that
    asks no client certificate, since a new spoke has none yet); empty: no enrolment over
    TLS. Without ``[tls]``, EnrolService is served on ``listen``."""
    enrol_address: str = ""
    """The ``host:port`` enrolment tokens tell spokes to dial; empty: the enrolment
    listener's own host and bound port."""
    enrol_ca_key_file: Path | None = None
    """With ``[tls]``: the federation CA's private key (mode 0600), with which the hub signs
    enrolled spokes' certificate requests; its certificate is ``tls.ca_file``."""
    enrol_cert_days: int = 825
    """Days an enrolled spoke's TLS certificate is valid (never past the CA's)."""
    enrol_rate: float = 2.0
    """EnrolService calls per second one caller address may make to this hubd (it takes no
    client signature); 0 disables the limit."""
    enrol_burst: int = 10
    """EnrolService calls one caller address may make at once."""
    outbox_enabled: bool = True
    """Hold spawns (and kills) for unreachable spokes in the hub's Redis and deliver them
    when the spoke is back (hub/outbox.py); off: such calls fail UNAVAILABLE as before."""
    outbox_max_per_spoke: int = 10_000
    """Most commands held for one spoke; more get RESOURCE_EXHAUSTED (OUTBOX_FULL)."""
    outbox_max_total: int = 100_000
    """Most commands held for all spokes together; more get RESOURCE_EXHAUSTED."""
    outbox_default_start_within_s: float = 86400.0
    """Start deadline, in seconds after acceptance, of a held spawn that names none (the
    spoke's own default applies again at delivery)."""
    outbox_poll_s: float = 1.0
    """How often, in seconds, the hub tries to deliver held commands."""
    outbox_retry_base_s: float = 1.0
    """First delay, in seconds, after a failed delivery; doubled per attempt."""
    outbox_retry_max_s: float = 60.0
    """Longest delay, in seconds, between delivery attempts of one command."""
    outbox_lease_s: float = 30.0
    """How long, in seconds, one hubd holds a command it is delivering before another may."""
    audit_enabled: bool = True
    """Keep the hash-chained audit log of every call and decision in the hub's Redis
    (hub/audit.py); ``hubctl audit tail`` reads it, ``hubctl audit verify`` checks it."""
    audit_max_entries: int = 1_000_000
    """Most entries the audit log keeps; older ones are trimmed (the chain stays verifiable
    from the oldest kept)."""
    audit_retention_s: float = 90 * 86400.0
    """Audit entries older than this, in seconds, are trimmed."""
    audit_max_bytes_kept: int = 65536
    """Signed bytes longer than this are kept in an audit entry only as size and SHA-256."""
    audit_unverified_per_s: float = 10.0
    """Audit entries per second for calls refused before their signature verified; more are
    counted in metrics only, so nobody without a key can fill the log."""
    audit_checkpoint_file: Path | None = None
    """File outside Redis to which the hub appends a signed checkpoint of the audit chain's
    head (``hubctl audit verify --checkpoints``); empty: none, and a Redis writer could
    rebuild the chain undetected."""
    audit_checkpoint_interval_s: float = 60.0
    """How often, in seconds, a checkpoint is written (when the chain moved)."""
    link_hello_timeout_s: float = 10.0
    """Connect mode: how long, in seconds, a spoke's new Control or Serve stream may take to
    send its first message (hello, open)."""
    link_max_pending_calls: int = 256
    """Connect mode: calls in flight to one spoke; more fail at once with RESOURCE_EXHAUSTED
    (LINK_BUSY)."""
    link_call_buffer: int = 16
    """Connect mode: response messages of one call the hub holds before it stops reading the
    spoke's Serve stream (flow control then slows the spoke)."""
    link_missed_heartbeats: int = 3
    """Connect mode: heartbeat intervals without a heartbeat after which the hub ends the
    spoke's session; the spoke then shows DISCONNECTED and calls to it fail at once."""
    link_min_heartbeat_s: float = 0.2
    """Connect mode: the shortest heartbeat interval the hub accepts from a spoke."""
    link_max_heartbeat_s: float = 60.0
    """Connect mode: the longest heartbeat interval the hub accepts from a spoke."""
    link_lease_ttl_s: float = 15.0
    """Several hubds: how long, in seconds, a connect-mode spoke's lease in Redis (which hubd
    holds its session) lives without a heartbeat renewing it; at least the heartbeat interval
    x ``link_missed_heartbeats``. A dead holder's lease expires after it."""
    link_lease_poll_s: float = 1.0
    """Several hubds: how often, in seconds, a hubd reads the leases of connect-mode spokes
    held by another, for their health (READY via the holder, else DISCONNECTED)."""
    link_forward_timeout_s: float = 3.0
    """Several hubds: how long, in seconds, a hubd waits to connect to the hubd holding a
    spoke's session before the call fails with UNAVAILABLE (SPOKE_DISCONNECTED)."""
    link_forward_address: str = ""
    """Several hubds: ``host:port`` at which the other hubds reach this one to forward calls
    (HubForwardService, on the listen port); empty: the listen host (this host's name for a
    wildcard) with the bound port."""
    log_level: str = "info"
    """One of debug, info, warning, error, critical."""
    event_loop: str = DEFAULT_EVENT_LOOP
    """The event loop hubd runs on: ``uvloop`` (the default where it is installed) or
    ``asyncio`` (hubspoke/event_loop.py);
    ``HUBSPOKE_EVENT_LOOP`` when ``HUB_EVENT_LOOP`` is unset."""
    metrics_listen: str = ""
    """``host:port`` of the Prometheus endpoint (``/metrics``); empty: no endpoint."""
    tls: stls.TlsConfig | None = None
    """Transport TLS (``[tls]``, ``HUB_TLS_*``): serve it and dial spokes with it. Without
    it the hub speaks plaintext, which it allows only on loopback."""

    def __post_init__(self) -> None:
        _check_name("name", self.name)
        sconfig.check_address(_LAYOUT, "listen", self.listen)
        if self.link_forward_address:
            sconfig.check_address(_LAYOUT, "link_forward_address", self.link_forward_address)
        for opt in ("key_file", "trust_file"):
            if getattr(self, opt) == Path():
                raise HubConfigError(
                    f"{opt} is required (set it in the config file or HUB_{opt.upper()})"
                )
        sconfig.redis_access(_LAYOUT, self)
        seen: set[str] = set()
        for s in self.spokes:
            _check_name("spokes.name", s.name)
            if s.link not in LINK_MODES:
                raise HubConfigError(f"spokes[{s.name}].link must be dial or connect")
            if s.link == "dial":
                sconfig.check_address(_LAYOUT, f"spokes[{s.name}].address", s.address)
            elif s.address:
                raise HubConfigError(f"spokes[{s.name}]: a connect-mode spoke has no address")
            if s.name == self.name:
                raise HubConfigError(f"spoke {s.name!r} has the hub's own name")
            if s.name in seen:
                raise HubConfigError(f"spoke {s.name!r} is listed twice")
            seen.add(s.name)
        sconfig.check_positive_seconds(_LAYOUT, self)
        for key in (
            "missed_probes_down",
            "circuit_failures",
            "link_max_pending_calls",
            "link_call_buffer",
            "link_missed_heartbeats",
            "max_watchers",
            "max_watchers_per_principal",
            "watch_event_rate",
            "watch_event_burst",
            "watch_event_rate_per_principal",
            "watch_event_burst_per_principal",
        ):
            if getattr(self, key) <= 0:
                raise HubConfigError(f"{key} must be positive")
        if self.outbox_max_per_spoke < 1 or self.outbox_max_total < 1:
            raise HubConfigError("outbox_max_per_spoke and outbox_max_total must be positive")
        if self.audit_max_entries < 1 or self.audit_max_bytes_kept < 0:
            raise HubConfigError("audit_max_entries must be positive, audit_max_bytes_kept >= 0")
        if self.audit_unverified_per_s < 0:
            raise HubConfigError("audit_unverified_per_s must not be negative")
        if self.max_message_bytes < 1024:
            raise HubConfigError("max_message_bytes must be at least 1024")
        if self.enrol_rate < 0 or self.enrol_burst < 1:
            raise HubConfigError("enrol_rate must not be negative and enrol_burst at least 1")
        if self.log_level not in LOG_LEVELS:
            raise HubConfigError(f"log_level must be one of {', '.join(sorted(LOG_LEVELS))}")
        if (loop_error := check_event_loop(self.event_loop)) is not None:
            raise HubConfigError(loop_error)
        if self.metrics_listen:
            try:
                parse_listen(self.metrics_listen)
            except MetricsConfigError as exc:
                raise HubConfigError(str(exc)) from exc

    def __repr__(self) -> str:
        return sconfig.config_repr(self)

    @property
    def redis(self) -> RedisAccess:
        """The ``redis_*`` options as one value: every Redis client is built from it."""
        return sconfig.redis_access(_LAYOUT, self)

    def replace(self, **changes: Any) -> HubConfig:
        """A copy with some options changed (e.g. from flags), validated again."""
        return sconfig.replace(self, _LAYOUT, **changes)

    def spoke(self, name: str) -> SpokeEntry | None:
        return next((s for s in self.spokes if s.name == name), None)

    @classmethod
    def load(cls, path: Path | None, env: Mapping[str, str]) -> HubConfig:
        """Read ``path`` (if given), apply ``HUB_*`` overrides from ``env``, validate.

        Raises:
            HubConfigError: the file is missing or not TOML, an option is unknown or invalid.
        """
        return sconfig.load(cls, path, env, _LAYOUT)


def _check_name(opt: str, value: str) -> None:
    sconfig.check_name(_LAYOUT, opt, value)


def _parse_spokes(value: object, base: Path | None, path: str) -> tuple[SpokeEntry, ...]:
    if not isinstance(value, list):
        raise HubConfigError(f"{path}: spokes must be an array of tables ([[spokes]])")
    entries: list[SpokeEntry] = []
    for i, item in enumerate(value):
        where = f"{path}: spokes #{i + 1}"
        if not isinstance(item, dict):
            raise HubConfigError(f"{where} must be a table")
        unknown = set(item) - {"name", "address", "labels", "tls_server_name", "link"}
        if unknown:
            raise HubConfigError(f"{where}: unknown option {sorted(unknown)[0]!r}")
        name, link = item.get("name"), item.get("link", "dial")
        if link not in LINK_MODES:
            raise HubConfigError(f"{where} ({name}): link must be dial or connect")
        address = item.get("address", "" if link == "connect" else None)
        if not isinstance(name, str) or not isinstance(address, str):
            raise HubConfigError(f"{where} needs a name and an address (strings)")
        labels = item.get("labels", {})
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise HubConfigError(f"{where} ({name}): labels must be a table of strings")
        server_name = item.get("tls_server_name", "")
        if not isinstance(server_name, str):
            raise HubConfigError(f"{where} ({name}): tls_server_name must be a string")
        entries.append(SpokeEntry(name, address, MappingProxyType(dict(labels)), server_name, link))
    return tuple(entries)


def _parse_spokes_env(text: str) -> tuple[SpokeEntry, ...]:
    entries: list[SpokeEntry] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, address = item.partition("=")
        if not sep:
            raise HubConfigError("HUB_SPOKES must be name=host:port[,name=host:port...]")
        if address.strip() == "connect":  # name=connect: a connect-mode spoke
            entries.append(SpokeEntry(name.strip(), "", link="connect"))
            continue
        entries.append(SpokeEntry(name.strip(), address.strip()))
    return tuple(entries)


_LAYOUT: Final = sconfig.Layout(
    prefix="HUB_",
    error=HubConfigError,
    tables={"spokes": _parse_spokes},
    env_tables={"spokes": ("HUB_SPOKES", _parse_spokes_env)},
    fallbacks={"redis_url": "REDIS_URL", "event_loop": "HUBSPOKE_EVENT_LOOP"},
    redis_cluster=True,
)
