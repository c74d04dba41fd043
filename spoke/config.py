"""The spoke's configuration: one frozen ``SpokeConfig`` per process.

Precedence: command-line flags > environment (``SPOKE_*``, and ``REDIS_URL``) > TOML file.
Relative paths in the file resolve against the file's directory. Everything is validated
at start-up; a bad value fails fast with one line naming the key.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from hubspoke import tls as stls
from hubspoke.metrics import MetricsConfigError, parse_listen

from .profiles import Profile, ProfileConfigError, profile_from_mapping, synthetic_profile


class SpokeConfigError(ValueError):
    """The configuration is missing something or has a bad value."""


def _default_profiles() -> Mapping[str, Profile]:
    return {"synthetic": synthetic_profile()}


@dataclass(frozen=True, slots=True)
class SpokeConfig:
    name: str = "spoke"
    """This spoke's name: the audience commands must carry, and its Redis key prefix."""
    listen: str = "127.0.0.1:7101"
    """host:port the gRPC server binds; port 0 picks a free one."""
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
    profiles: Mapping[str, Profile] = field(default_factory=_default_profiles)
    """Named agent programs; a spoke runs nothing its profiles do not name."""
    concurrency: int = 4
    """Agents this process runs at once; more wait in the queue."""
    max_queue_depth: int = 10_000
    """Agents waiting beyond this are refused with RESOURCE_EXHAUSTED."""
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
    max_watchers: int = 256
    """Concurrent WatchAgent streams this process serves; more get RESOURCE_EXHAUSTED."""
    watch_heartbeat_s: float = 5.0
    """Seconds between heartbeats on an idle watch stream."""
    kill_wait_s: float = 8.0
    """How long a KillAgent call waits for the agent to reach its final state."""
    allow_eviction: bool = False
    """Start even if Redis' maxmemory-policy is not noeviction (risks losing queued agents)."""
    log_level: str = "info"
    """debug, info, warning or error."""
    metrics_listen: str = ""
    """host:port of the Prometheus endpoint (``/metrics``); empty: no endpoint."""
    metrics_refresh_s: float = 5.0
    """How often the queue-depth gauges are read from Redis."""
    tls: stls.TlsConfig | None = None
    """Transport TLS (``[tls]``, ``SPOKE_TLS_*``). Without it the spoke speaks plaintext,
    which it allows only on a loopback ``listen`` address."""

    @classmethod
    def load(cls, path: Path | None, env: Mapping[str, str]) -> SpokeConfig:
        raw: dict[str, Any] = {}
        base = Path.cwd()
        if path is not None:
            try:
                raw = tomllib.loads(path.read_text())
            except FileNotFoundError as exc:
                raise SpokeConfigError(f"config file not found: {path}") from exc
            except tomllib.TOMLDecodeError as exc:
                raise SpokeConfigError(f"config file {path} is not valid TOML: {exc}") from exc
            base = path.resolve().parent
        for var, key in _ENV.items():
            if var in env:
                raw[key] = env[var]
        if "redis_url" not in raw and "REDIS_URL" in env:
            raw["redis_url"] = env["REDIS_URL"]
        env_tls = stls.env_table(env, "SPOKE_TLS_")
        if env_tls:  # option by option over the file's [tls]
            table = raw.get("tls", {})
            raw["tls"] = {**table, **env_tls} if isinstance(table, dict) else table
        return cls.from_mapping(raw, base)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], base: Path) -> SpokeConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise SpokeConfigError(f"unknown config keys: {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        defaults = cls()
        for f in fields(cls):
            if f.name not in raw:
                continue
            value = raw[f.name]
            if f.name == "profiles":
                values[f.name] = _profiles(value)
            elif f.name == "tls":
                values[f.name] = _tls(value, base)
            elif f.name == "labels":
                if not isinstance(value, dict) or not all(
                    isinstance(v, str) for v in value.values()
                ):
                    raise SpokeConfigError("labels must be a table of strings")
                values[f.name] = dict(value)
            elif f.name in {"key_file", "trust_file", "policy_file"}:
                values[f.name] = (base / str(value)).resolve()
            else:
                values[f.name] = _coerce(f.name, value, getattr(defaults, f.name))
        cfg = replace(defaults, **values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise SpokeConfigError("name must be non-empty: letters, digits, - _ .")
        positive = ("concurrency", "max_queue_depth", "max_task_bytes", "output_tail_bytes")
        for key in positive:
            if getattr(self, key) <= 0:
                raise SpokeConfigError(f"{key} must be positive")
        if not 1 <= self.default_priority <= 10:
            raise SpokeConfigError("default_priority must be 1-10")
        if self.log_level.lower() not in {"debug", "info", "warning", "error"}:
            raise SpokeConfigError("log_level must be debug, info, warning or error")
        if not self.profiles:
            raise SpokeConfigError("at least one profile is required")
        if self.metrics_listen:
            try:
                parse_listen(self.metrics_listen)
            except MetricsConfigError as exc:
                raise SpokeConfigError(str(exc)) from exc
        if self.metrics_refresh_s <= 0:
            raise SpokeConfigError("metrics_refresh_s must be positive")


_ENV = {
    "SPOKE_NAME": "name",
    "SPOKE_LISTEN": "listen",
    "SPOKE_KEY_FILE": "key_file",
    "SPOKE_TRUST_FILE": "trust_file",
    "SPOKE_POLICY_FILE": "policy_file",
    "SPOKE_RATE_PER_PRINCIPAL": "rate_per_principal",
    "SPOKE_RATE_BURST": "rate_burst",
    "SPOKE_REDIS_URL": "redis_url",
    "SPOKE_CONCURRENCY": "concurrency",
    "SPOKE_MAX_QUEUE_DEPTH": "max_queue_depth",
    "SPOKE_MAX_TASK_BYTES": "max_task_bytes",
    "SPOKE_OUTPUT_TAIL_BYTES": "output_tail_bytes",
    "SPOKE_RETENTION_S": "retention_s",
    "SPOKE_MAX_SKEW_S": "max_skew_s",
    "SPOKE_ALLOW_EVICTION": "allow_eviction",
    "SPOKE_LOG_LEVEL": "log_level",
    "SPOKE_METRICS_LISTEN": "metrics_listen",
}


_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _coerce(key: str, value: object, default: object) -> object:
    """Coerce TOML or env text to the type of the default; env values arrive as str."""
    bad = SpokeConfigError(f"{key}: {value!r} is not a valid {type(default).__name__}")
    if isinstance(default, bool):
        text = str(value).strip().lower()
        if isinstance(value, bool) or text in _TRUE | _FALSE:
            return value if isinstance(value, bool) else text in _TRUE
        raise bad
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise bad
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        raise bad
    try:
        return int(str(value)) if isinstance(default, int) else float(str(value))
    except ValueError as exc:
        raise bad from exc


def _tls(value: object, base: Path) -> stls.TlsConfig:
    try:
        return stls.tls_config(stls.tls_fields(value, base, "tls"), "tls")
    except stls.TlsError as exc:
        raise SpokeConfigError(str(exc)) from exc


def _profiles(value: object) -> Mapping[str, Profile]:
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
