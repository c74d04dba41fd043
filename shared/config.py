"""One loader for both daemons' configs: a TOML file, then environment variables, then flags.

``HubConfig`` and ``SpokeConfig`` are frozen dataclasses that validate in ``__post_init__``
(so a config built in code, loaded, or changed with :func:`replace` is always valid). This
module reads them the same way for both:

- **file**: a TOML table. Scalar options are coerced to the field's type (``str``, ``int``,
  ``float``, ``bool``, ``Path``); relative paths resolve against the file's directory.
  Tables (``[tls]``, ``[[spokes]]``, ``[profiles.*]``, ``labels``) go to the daemon's own
  parsers. An unknown key is an error naming it.
- **environment**: every scalar field has one variable, the prefix plus the field's name in
  upper case (``HUB_LISTEN``, ``SPOKE_KILL_WAIT_S``, ...). Empty values are ignored; paths
  are relative to the working directory. ``<PREFIX>TLS_*`` override ``[tls]`` option by
  option. A fallback variable (``REDIS_URL``) is read when the prefixed one is unset.
- **flags**: applied by the caller with :func:`replace`.

Secrets: any ``scheme://user:password@host`` in a value is shown as ``user:***@`` in the
config's ``repr`` (:func:`config_repr`) and in every error message raised here
(:func:`redact`); daemons pass other messages that may carry a URL through :func:`redact`.

Exception hierarchy::

    hubspoke.errors.ConfigError
     └── DaemonConfigError        (redacts URL passwords in its message)
         ├── HubConfigError       (hubspoke.hub.config)
         └── SpokeConfigError     (hubspoke.spoke.config)
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

from . import tls as stls
from .errors import ConfigError
from .redis_access import CLUSTER_SCHEMES, RedisAccess, RedisAccessError

__all__ = [
    "LOG_LEVELS",
    "NAME_RE",
    "REDIS_ACCESS_FIELDS",
    "DaemonConfigError",
    "Layout",
    "check_address",
    "check_name",
    "check_positive_seconds",
    "check_redis_url",
    "config_repr",
    "env_names",
    "load",
    "read_file",
    "redact",
    "redis_access",
    "replace",
    "values_from_table",
]

NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
"""Peer names: they appear in Redis keys and in resource names ``spokes/{name}/...``."""
LOG_LEVELS: Final = frozenset({"debug", "info", "warning", "error", "critical"})
REDIS_SCHEMES: Final = frozenset({"redis", "rediss", "unix"})
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})
_URL_PASSWORD: Final = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^\s/@:]*:)[^\s@/]+@")

T = TypeVar("T")
TableParser = Callable[[object, Path | None, str], object]
"""Parse a file table: ``(value, base directory, where)`` → the field's value."""
EnvParser = Callable[[str], object]
"""Parse one environment variable's text into a non-scalar field's value."""


def redact(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@`` replaced by ``***``."""
    return _URL_PASSWORD.sub(r"\g<head>***@", text)


class DaemonConfigError(ConfigError):
    """A daemon's config is unusable. The message is one line, URL passwords redacted."""

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))


@dataclass(frozen=True, slots=True)
class Layout:
    """How one daemon's config maps onto file keys and environment variables."""

    prefix: str
    """Environment prefix, e.g. ``HUB_``: a field ``listen`` is read from ``HUB_LISTEN``."""
    error: type[DaemonConfigError]
    """The daemon's config error; every message is one line, secrets redacted."""
    tables: Mapping[str, TableParser] = field(default_factory=dict)
    """Non-scalar fields read from file tables, with their parsers."""
    env_tables: Mapping[str, tuple[str, EnvParser]] = field(default_factory=dict)
    """Non-scalar fields that also have an environment variable: field → (variable, parser)."""
    fallbacks: Mapping[str, str] = field(default_factory=dict)
    """Field → an unprefixed variable read when the prefixed one is unset (``REDIS_URL``)."""
    redis_cluster: bool = False
    """Whether ``redis_url`` may name a Redis Cluster (``redis+cluster://``): the hub's may."""

    def fail(self, message: str) -> DaemonConfigError:
        return self.error(message)


_SCALAR_TYPES: Final = (str, int, float, bool, Path)


def _scalar_kind(hint: object) -> type | None:
    if isinstance(hint, type) and issubclass(hint, _SCALAR_TYPES):
        return hint
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return _scalar_kind(args[0])
    return None


def optional_fields(cls: type) -> frozenset[str]:
    """The config class's fields that may be None (``Path | None``): an empty string in a
    file means None for them, as an empty environment variable means unset."""
    hints = typing.get_type_hints(cls)
    return frozenset(
        f.name
        for f in dataclasses.fields(cls)
        if type(None) in typing.get_args(hints[f.name]) and _scalar_kind(hints[f.name])
    )


def scalar_fields(cls: type) -> dict[str, type]:
    """The config class's scalar fields (those with an environment variable) and their types."""
    hints = typing.get_type_hints(cls)
    found: dict[str, type] = {}
    for f in dataclasses.fields(cls):
        kind = _scalar_kind(hints[f.name])
        if kind is not None:
            found[f.name] = kind
    return found


def env_names(cls: type, layout: Layout) -> dict[str, str]:
    """Every environment variable the config reads: variable → field (or ``tls.<option>``)."""
    names = {layout.prefix + name.upper(): name for name in scalar_fields(cls)}
    names.update({var: name for name, (var, _) in layout.env_tables.items()})
    names.update({var: name for name, var in layout.fallbacks.items()})
    if _has_tls(cls):
        names.update({layout.prefix + "TLS_" + o.upper(): f"tls.{o}" for o in _TLS_OPTIONS})
    return names


_TLS_OPTIONS: Final = ("cert_file", "key_file", "ca_file", "require_client_cert")


def coerce(opt: str, kind: type, raw: object, base: Path | None, layout: Layout) -> object:
    """TOML or environment text → a value of ``kind``; ``opt`` names it in errors."""
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower() if isinstance(raw, str) else ""
        if text in _TRUE | _FALSE:
            return text in _TRUE
        raise layout.fail(f"{opt} must be true or false")
    if kind is float:
        if isinstance(raw, bool) or not isinstance(raw, int | float | str):
            raise layout.fail(f"{opt} must be a number")
        try:
            return float(raw)
        except ValueError as exc:
            raise layout.fail(f"{opt} must be a number, got {raw!r}") from exc
    if kind is int:
        if isinstance(raw, bool) or not isinstance(raw, int | str):
            raise layout.fail(f"{opt} must be an integer")
        try:
            return int(raw)
        except ValueError as exc:
            raise layout.fail(f"{opt} must be an integer, got {raw!r}") from exc
    if not isinstance(raw, str):
        raise layout.fail(f"{opt} must be a string")
    if kind is Path:
        p = Path(raw).expanduser()
        return base / p if base is not None and not p.is_absolute() else p
    return raw.lower() if opt.lower().endswith("log_level") else raw


def read_file(path: Path, layout: Layout) -> dict[str, Any]:
    """The TOML file's top-level table."""
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise layout.fail(f"config file not found: {path}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise layout.fail(f"config file {path} cannot be read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise layout.fail(f"config file {path} is not valid TOML: {exc}") from exc


def values_from_table(
    cls: type, raw: Mapping[str, Any], base: Path | None, where: str, layout: Layout
) -> dict[str, Any]:
    """A file's table → field values (``tls`` stays a dict of options, merged later)."""
    scalars = scalar_fields(cls)
    optional = optional_fields(cls)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "tls" and "tls" not in layout.tables:
            values["tls"] = _tls_fields(value, base, f"{where}: tls", layout)
        elif key in layout.tables:
            values[key] = layout.tables[key](value, base, where)
        elif key in optional and value == "":
            values[key] = None
        elif key in scalars:
            values[key] = coerce(key, scalars[key], value, base, layout)
        else:
            raise layout.fail(f"{where}: unknown option {key!r}")
    return values


def values_from_env(cls: type, env: Mapping[str, str], layout: Layout) -> dict[str, Any]:
    """Field values from the environment: one variable per scalar field, then the tables'."""
    values: dict[str, Any] = {}
    for name, var in layout.fallbacks.items():
        if env.get(var):
            values[name] = coerce(var, scalar_fields(cls)[name], env[var], None, layout)
    for name, kind in scalar_fields(cls).items():
        var = layout.prefix + name.upper()
        if env.get(var):
            values[name] = coerce(var, kind, env[var], None, layout)
    for name, (var, parse) in layout.env_tables.items():
        if env.get(var):
            values[name] = parse(env[var])
    return values


def load(cls: type[T], path: Path | None, env: Mapping[str, str], layout: Layout) -> T:
    """Read ``path`` (if given), apply the environment over it, build and validate.

    Raises:
        ConfigError (``layout.error``): the file is missing or not TOML, an option is
            unknown or invalid. The message is one line with secrets redacted.
    """
    values: dict[str, Any] = {}
    if path is not None:
        raw = read_file(path, layout)
        values.update(values_from_table(cls, raw, path.parent, str(path), layout))
    file_tls = values.pop("tls", {})
    env_tls: dict[str, Path | bool] = {}
    if _has_tls(cls):
        table = stls.env_table(env, layout.prefix + "TLS_")
        env_tls = _tls_fields(table, None, layout.prefix + "TLS_*", layout)
    values.update(values_from_env(cls, env, layout))
    tls_options = {**file_tls, **env_tls}  # the environment wins option by option
    if tls_options:
        values["tls"] = _tls_config(tls_options, layout)
    return construct(cls, values, layout)


def construct(cls: type[T], values: Mapping[str, Any], layout: Layout) -> T:
    """``cls(**values)``, with a bad keyword reported as the daemon's config error."""
    try:
        return cls(**values)
    except TypeError as exc:
        raise layout.fail(str(exc)) from exc


def replace(obj: T, layout: Layout, **changes: Any) -> T:
    """A copy with some options changed (e.g. from flags), validated again."""
    try:
        return dataclasses.replace(obj, **changes)  # type: ignore[type-var]  # a dataclass instance
    except TypeError as exc:
        raise layout.fail(str(exc)) from exc


def config_repr(obj: object) -> str:
    """``Name(field=value, ...)`` with every URL password shown as ``***``."""
    shown = ", ".join(
        f"{f.name}={redact(repr(getattr(obj, f.name)))}"
        for f in dataclasses.fields(obj)  # type: ignore[arg-type]  # a dataclass instance
    )
    return f"{type(obj).__name__}({shown})"


def _has_tls(cls: type) -> bool:
    return any(f.name == "tls" for f in dataclasses.fields(cls))


def _tls_fields(
    table: object, base: Path | None, where: str, layout: Layout
) -> dict[str, Path | bool]:
    try:
        return stls.tls_fields(table, base, where)
    except stls.TlsError as exc:
        raise layout.fail(str(exc)) from exc


def _tls_config(options: Mapping[str, Path | bool], layout: Layout) -> stls.TlsConfig:
    try:
        return stls.tls_config(options, "tls")
    except stls.TlsError as exc:
        raise layout.fail(str(exc)) from exc


# Validation helpers for __post_init__; each raises the layout's error, one line.


def check_name(layout: Layout, opt: str, value: str) -> None:
    if not NAME_RE.fullmatch(value):
        raise layout.fail(
            f"{opt} {value!r} must be 1-63 characters of A-Z a-z 0-9 . _ - starting alphanumeric"
        )


def check_address(layout: Layout, opt: str, value: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise layout.fail(f"{opt} {value!r} must be host:port")


def check_redis_url(layout: Layout, value: str) -> None:
    scheme = urlsplit(value).scheme
    if layout.redis_cluster and scheme in CLUSTER_SCHEMES:
        return
    if scheme in CLUSTER_SCHEMES:
        raise layout.fail("redis_url: only the hub runs on a Redis Cluster; use one Redis")
    if scheme not in REDIS_SCHEMES:
        cluster = ", redis+cluster:// or rediss+cluster://" if layout.redis_cluster else ""
        raise layout.fail(f"redis_url must start with redis://, rediss:// or unix://{cluster}")


REDIS_ACCESS_FIELDS: Final = (
    "redis_url",
    "redis_username",
    "redis_password_file",
    "redis_tls_ca_file",
    "redis_tls_cert_file",
    "redis_tls_key_file",
)
"""The options both daemons read for their Redis (``hubspoke.redis_access``)."""


def redis_access(layout: Layout, obj: object) -> RedisAccess:
    """The daemon's ``redis_*`` options as one :class:`RedisAccess`, validated (no file I/O;
    the password file is read by each client factory, checked at start-up)."""
    options = {name.removeprefix("redis_"): getattr(obj, name) for name in REDIS_ACCESS_FIELDS}
    check_redis_url(layout, options["url"])
    try:
        return RedisAccess(**options)
    except RedisAccessError as exc:
        raise layout.fail(str(exc)) from exc


def check_positive_seconds(layout: Layout, obj: object) -> None:
    """Every ``*_s`` field is a positive, finite number of seconds."""
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]  # a dataclass instance
        if f.name.endswith("_s"):
            value = getattr(obj, f.name)
            if not (math.isfinite(value) and value > 0):
                raise layout.fail(f"{f.name} must be a positive number of seconds")
