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
    [tls]                         # optional; without it, plaintext on loopback only
    cert_file = "tls/hub.crt"
    key_file = "tls/hub.tls.key"
    ca_file = "tls/ca.crt"
    require_client_cert = true

Every scalar option also has an environment variable, ``HUB_`` + its name in upper case
(``HUB_LISTEN``, ``HUB_SPOKE_CALL_TIMEOUT_S``, ...); ``REDIS_URL`` is read when
``HUB_REDIS_URL`` is not set, and ``HUB_SPOKES`` (``name=host:port,...``) replaces the
file's spokes. ``HUB_TLS_CERT_FILE``, ``HUB_TLS_KEY_FILE``, ``HUB_TLS_CA_FILE`` and
``HUB_TLS_REQUIRE_CLIENT_CERT`` override the ``[tls]`` options one by one. Flags are
applied by the caller with :meth:`HubConfig.replace`.

Exception hierarchy::

    ValueError
     └── HubConfigError   a missing, unknown or invalid option (one line, names the option)
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from hubspoke import tls as stls
from hubspoke.metrics import MetricsConfigError, parse_listen

__all__ = ["HubConfig", "HubConfigError", "SpokeEntry"]

NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
"""Peer names: they appear in Redis keys and in resource names ``spokes/{name}/...``."""
LOG_LEVELS: Final = frozenset({"debug", "info", "warning", "error", "critical"})
_REDIS_SCHEMES: Final = frozenset({"redis", "rediss", "unix"})
_ENV_PREFIX: Final = "HUB_"


class HubConfigError(ValueError):
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
    """Redis for nonces and the agent index (``redis://``, ``rediss://`` or ``unix://``)."""
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
    """Deadline, in seconds, of each spoke health probe (ListSpokes)."""
    agent_index_ttl_s: float = 7 * 86400.0
    """How long, in seconds, the hub remembers which spoke runs an agent."""
    redis_timeout_s: float = 2.0
    """Deadline, in seconds, of each Redis operation."""
    shutdown_grace_s: float = 5.0
    """How long, in seconds, in-flight calls may finish on shutdown."""
    max_message_bytes: int = 4 * 1024 * 1024
    """Largest request or response, in bytes."""
    log_level: str = "info"
    """One of debug, info, warning, error, critical."""
    metrics_listen: str = ""
    """``host:port`` of the Prometheus endpoint (``/metrics``); empty: no endpoint."""
    tls: stls.TlsConfig | None = None
    """Transport TLS (``[tls]``, ``HUB_TLS_*``): serve it and dial spokes with it. Without
    it the hub speaks plaintext, which it allows only on loopback."""

    def __post_init__(self) -> None:
        _check_name("name", self.name)
        _check_address("listen", self.listen)
        for opt in ("key_file", "trust_file"):
            if getattr(self, opt) == Path():
                raise HubConfigError(
                    f"{opt} is required (set it in the config file or HUB_{opt.upper()})"
                )
        scheme = urlsplit(self.redis_url).scheme
        if scheme not in _REDIS_SCHEMES:
            raise HubConfigError("redis_url must start with redis://, rediss:// or unix://")
        seen: set[str] = set()
        for s in self.spokes:
            _check_name("spokes.name", s.name)
            _check_address(f"spokes[{s.name}].address", s.address)
            if s.name == self.name:
                raise HubConfigError(f"spoke {s.name!r} has the hub's own name")
            if s.name in seen:
                raise HubConfigError(f"spoke {s.name!r} is listed twice")
            seen.add(s.name)
        for f in dataclasses.fields(self):
            if f.name.endswith("_s"):
                value = getattr(self, f.name)
                if not (math.isfinite(value) and value > 0):
                    raise HubConfigError(f"{f.name} must be a positive number of seconds")
        if self.max_message_bytes < 1024:
            raise HubConfigError("max_message_bytes must be at least 1024")
        if self.log_level not in LOG_LEVELS:
            raise HubConfigError(f"log_level must be one of {', '.join(sorted(LOG_LEVELS))}")
        if self.metrics_listen:
            try:
                parse_listen(self.metrics_listen)
            except MetricsConfigError as exc:
                raise HubConfigError(str(exc)) from exc

    def __repr__(self) -> str:
        shown = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        shown["redis_url"] = _redact_url(self.redis_url)
        return "HubConfig(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    def replace(self, **changes: Any) -> HubConfig:
        """A copy with some options changed (e.g. from flags), validated again."""
        try:
            return dataclasses.replace(self, **changes)
        except TypeError as exc:
            raise HubConfigError(str(exc)) from exc

    def spoke(self, name: str) -> SpokeEntry | None:
        return next((s for s in self.spokes if s.name == name), None)

    @classmethod
    def load(cls, path: Path | None, env: Mapping[str, str]) -> HubConfig:
        """Read ``path`` (if given), apply ``HUB_*`` overrides from ``env``, validate.

        Raises:
            HubConfigError: the file is missing or not TOML, an option is unknown or invalid.
        """
        values: dict[str, Any] = {}
        if path is not None:
            values.update(_read_file(path))
        env_tls = _tls_fields(stls.env_table(env, "HUB_TLS_"), None, "HUB_TLS_*")
        tls_fields = {**values.pop("tls", {}), **env_tls}  # env wins option by option
        values.update(_from_env(env))
        if tls_fields:
            values["tls"] = _tls_config(tls_fields)
        try:
            return cls(**values)
        except TypeError as exc:  # pragma: no cover - keys are checked before
            raise HubConfigError(str(exc)) from exc


_FIELD_TYPES: Final[Mapping[str, type]] = MappingProxyType(
    {
        "name": str,
        "listen": str,
        "key_file": Path,
        "trust_file": Path,
        "policy_file": Path,
        "rate_per_principal": float,
        "rate_burst": int,
        "redis_url": str,
        "max_skew_s": float,
        "max_validity_s": float,
        "relay_validity_s": float,
        "spoke_call_timeout_s": float,
        "kill_grace_s": float,
        "probe_timeout_s": float,
        "agent_index_ttl_s": float,
        "redis_timeout_s": float,
        "shutdown_grace_s": float,
        "max_message_bytes": int,
        "log_level": str,
        "metrics_listen": str,
    }
)


def _check_name(opt: str, value: str) -> None:
    if not NAME_RE.fullmatch(value):
        raise HubConfigError(
            f"{opt} {value!r} must be 1-63 characters of A-Z a-z 0-9 . _ - starting alphanumeric"
        )


def _check_address(opt: str, value: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise HubConfigError(f"{opt} {value!r} must be host:port")


def _redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def _coerce(opt: str, kind: type, raw: object, base: Path | None) -> object:
    if kind is float:
        if isinstance(raw, bool) or not isinstance(raw, int | float | str):
            raise HubConfigError(f"{opt} must be a number")
        try:
            return float(raw)
        except ValueError as exc:
            raise HubConfigError(f"{opt} must be a number, got {raw!r}") from exc
    if kind is int:
        if isinstance(raw, bool) or not isinstance(raw, int | str):
            raise HubConfigError(f"{opt} must be an integer")
        try:
            return int(raw)
        except ValueError as exc:
            raise HubConfigError(f"{opt} must be an integer, got {raw!r}") from exc
    if not isinstance(raw, str):
        raise HubConfigError(f"{opt} must be a string")
    if kind is Path:
        p = Path(raw).expanduser()
        return base / p if base is not None and not p.is_absolute() else p
    return raw.lower() if opt.lower().endswith("log_level") else raw


def _read_file(path: Path) -> dict[str, Any]:
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise HubConfigError(f"config file not found: {path}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise HubConfigError(f"config file {path} cannot be read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise HubConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    base = path.parent
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "spokes":
            values["spokes"] = _parse_spokes(value, path)
        elif key == "tls":
            values["tls"] = _tls_fields(value, base, f"{path}: tls")
        elif key in _FIELD_TYPES:
            values[key] = _coerce(key, _FIELD_TYPES[key], value, base)
        else:
            raise HubConfigError(f"{path}: unknown option {key!r}")
    return values


def _tls_fields(table: object, base: Path | None, where: str) -> dict[str, Path | bool]:
    try:
        return stls.tls_fields(table, base, where)
    except stls.TlsError as exc:
        raise HubConfigError(str(exc)) from exc


def _tls_config(fields: Mapping[str, Path | bool]) -> stls.TlsConfig:
    try:
        return stls.tls_config(fields, "tls")
    except stls.TlsError as exc:
        raise HubConfigError(str(exc)) from exc


def _parse_spokes(value: object, path: Path) -> tuple[SpokeEntry, ...]:
    if not isinstance(value, list):
        raise HubConfigError(f"{path}: spokes must be an array of tables ([[spokes]])")
    entries: list[SpokeEntry] = []
    for i, item in enumerate(value):
        where = f"{path}: spokes #{i + 1}"
        if not isinstance(item, dict):
            raise HubConfigError(f"{where} must be a table")
        unknown = set(item) - {"name", "address", "labels", "tls_server_name"}
        if unknown:
            raise HubConfigError(f"{where}: unknown option {sorted(unknown)[0]!r}")
        name, address = item.get("name"), item.get("address")
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
        entries.append(SpokeEntry(name, address, MappingProxyType(dict(labels)), server_name))
    return tuple(entries)


def _parse_spokes_env(text: str) -> tuple[SpokeEntry, ...]:
    entries: list[SpokeEntry] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, address = item.partition("=")
        if not sep:
            raise HubConfigError("HUB_SPOKES must be name=host:port[,name=host:port...]")
        entries.append(SpokeEntry(name.strip(), address.strip()))
    return tuple(entries)


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if env.get("REDIS_URL"):
        values["redis_url"] = env["REDIS_URL"]
    for opt, kind in _FIELD_TYPES.items():
        var = _ENV_PREFIX + opt.upper()
        if env.get(var):
            values[opt] = _coerce(var, kind, env[var], None)
    if env.get("HUB_SPOKES"):
        values["spokes"] = _parse_spokes_env(env["HUB_SPOKES"])
    return values
