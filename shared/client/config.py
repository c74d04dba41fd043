"""The hubctl config: where the hub is and whom to trust, read from TOML and the environment.

The file (relative paths resolve against its directory)::

    hub = "127.0.0.1:7100"      # HUBCTL_HUB overrides it, an explicit address both; several
                                # hubds: ["a:7100", "b:7100"] (or "a:7100,b:7100")
    hub_name = "hub"
    principal = "operator"
    key_file = "keys/operator.key"
    trust_file = "trust.toml"   # the hub (role hub) and spokes (role spoke)
    [tls]                       # required unless the hub is on loopback
    ca_file = "tls/ca.crt"
    cert_file = "tls/operator.crt"
    key_file = "tls/operator.tls.key"
    server_name = "hub"         # the name the hub's certificate carries (default: hub_name)

``HUBCTL_TLS_CA_FILE``, ``HUBCTL_TLS_CERT_FILE`` and ``HUBCTL_TLS_KEY_FILE`` override the
``[tls]`` options one by one.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from hubspoke import keys
from hubspoke import tls as stls
from hubspoke.trust import TrustConfigError, TrustStore

from ._client import Client
from ._errors import ClientConfigError

__all__ = ["ClientConfig", "client_from_config", "load_client_config"]


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """What a client needs to reach and trust a hub."""

    hub: str = "127.0.0.1:7100"
    """The hub's host:port, or several hubds' as ``host:port,host:port`` (tried in turn when
    one does not answer)."""
    hub_name: str = "hub"
    """The hub's peer name: the audience of commands for the hub itself."""
    principal: str = "operator"
    """The name this client signs as, as the hub's trust store knows it."""
    key_file: Path = field(default_factory=Path)
    """The principal's Ed25519 private key (mode 0600)."""
    trust_file: Path = field(default_factory=Path)
    """Trust store with the hub (role hub) and the spokes (role spoke)."""
    tls: stls.TlsConfig | None = None
    """Transport TLS (``[tls]``); without it only a loopback hub is dialled."""
    tls_server_name: str = ""
    """The name the hub's certificate must carry; empty means ``hub_name``."""


_CONFIG_KEYS: Final = frozenset({"hub", "hub_name", "principal", "key_file", "trust_file", "tls"})


def load_client_config(
    path: Path, env: Mapping[str, str] | None = None, hub: str | None = None
) -> ClientConfig:
    """Read a hubctl TOML file; ``HUBCTL_HUB`` then ``hub`` override its address.

    Raises:
        ClientConfigError: the file is missing, unreadable, not TOML, or has a bad option.
    """
    env = os.environ if env is None else env
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ClientConfigError(f"config file not found: {path}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ClientConfigError(f"config file {path} cannot be read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ClientConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    unknown = sorted(set(raw) - _CONFIG_KEYS)
    if unknown:
        raise ClientConfigError(f"{path}: unknown option {unknown[0]!r}")
    tls_cfg, server_name = _client_tls(raw.pop("tls", None), path, env)
    for k, v in raw.items():
        if not isinstance(v, str) or not v:
            raise ClientConfigError(f"{path}: {k} must be a non-empty string")
    for k in ("key_file", "trust_file"):
        if k not in raw:
            raise ClientConfigError(f"{path}: {k} is required")

    def resolve(p: str) -> Path:
        q = Path(p).expanduser()
        return q if q.is_absolute() else path.parent / q

    configured = raw.get("hub", "127.0.0.1:7100")
    if isinstance(configured, list):  # several hubds of one federation
        if not configured or not all(isinstance(a, str) and a for a in configured):
            raise ClientConfigError(f"{path}: hub must be host:port or a list of them")
        configured = ",".join(configured)
    address = hub or env.get("HUBCTL_HUB") or configured
    return ClientConfig(
        hub=address,
        hub_name=raw.get("hub_name", "hub"),
        principal=raw.get("principal", "operator"),
        key_file=resolve(raw["key_file"]),
        trust_file=resolve(raw["trust_file"]),
        tls=tls_cfg,
        tls_server_name=server_name,
    )


def _client_tls(
    table: object, path: Path, env: Mapping[str, str]
) -> tuple[stls.TlsConfig | None, str]:
    """The ``[tls]`` table (``HUBCTL_TLS_*`` win option by option) and its ``server_name``."""
    server_name: object = ""
    if isinstance(table, dict):
        table = dict(table)
        server_name = table.pop("server_name", "")
    if not isinstance(server_name, str):
        raise ClientConfigError(f"{path}: tls.server_name must be a string")
    opts = stls.CLIENT_OPTIONS
    try:
        fields = {} if table is None else stls.tls_fields(table, path.parent, f"{path}: tls", opts)
        env_table = stls.env_table(env, "HUBCTL_TLS_", opts)
        fields.update(stls.tls_fields(env_table, None, "HUBCTL_TLS_*", opts))
        return (stls.tls_config(fields, f"{path}: tls") if fields else None), server_name
    except stls.TlsError as exc:
        raise ClientConfigError(str(exc)) from exc


def client_from_config(
    path: Path,
    *,
    hub: str | None = None,
    timeout_s: float = 15.0,
    env: Mapping[str, str] | None = None,
) -> Client:
    """A :class:`Client` from a hubctl config file (key and trust store loaded now).

    Raises:
        ClientConfigError: the file, the key, the trust store or a TLS file is missing or
            invalid, or the config has no ``[tls]`` and the hub is not on loopback.
    """
    cfg = load_client_config(path, env, hub)
    try:
        key = keys.load_private(cfg.key_file, cfg.principal)
        trust = TrustStore.from_file(cfg.trust_file)
        credentials = None if cfg.tls is None else stls.channel_credentials(cfg.tls)
    except (keys.KeyFileError, TrustConfigError, stls.TlsError) as exc:
        raise ClientConfigError(str(exc)) from exc
    return Client(
        cfg.hub,
        cfg.principal,
        key,
        trust,
        cfg.hub_name,
        timeout_s,
        credentials=credentials,
        server_name=cfg.tls_server_name or None,
    )
