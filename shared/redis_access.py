"""How a daemon reaches its Redis: the URL, an ACL user, a password file, TLS files.

Both daemons' configs carry the same options (``hubspoke.config`` reads them; ``HUB_`` or
``SPOKE_`` prefixed in the environment)::

    redis_url = "rediss://redis.example:6380/0"   # rediss:// for TLS
    redis_username = "spoke-1"                    # an ACL user; empty: the default user
    redis_password_file = "secrets/redis.pass"    # owner-only (mode 0600), like key files
    redis_tls_ca_file = "tls/redis-ca.crt"        # rediss:// only; empty: the system CAs
    redis_tls_cert_file = "tls/spoke-1.crt"       # rediss:// only: a client certificate,
    redis_tls_key_file = "tls/spoke-1.tls.key"    #   for a Redis with tls-auth-clients yes

A Redis Cluster (the hub only: a spoke's queue needs one Redis) is named by the scheme
``redis+cluster://`` (``rediss+cluster://`` with TLS) and the address of any one of its
nodes: the client learns the others from it (``CLUSTER SLOTS``) and follows the slots as
they move. Same user, password file and TLS options, given to every node.
``redis_url = "redis+cluster://10.0.0.5:7000"``.

:class:`RedisAccess` holds them; :meth:`RedisAccess.client_kwargs` turns them into redis-py
keyword arguments, reading the password file each time (so a client built after a password
rotation uses the new one). Every Redis client a daemon opens is built from one.

The password is never kept in a config object and never shown: ``repr`` names the file, and
a password given in the URL is shown as ``***`` (``hubspoke.config.redact``).

Exception hierarchy::

    hubspoke.errors.ConfigError
     └── RedisAccessError   an option is inconsistent, or the password file is unusable
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast
from urllib.parse import urlsplit

import redis.asyncio
import redis.asyncio.cluster

from . import keys
from .errors import ConfigError

__all__ = [
    "CLUSTER_SCHEMES",
    "MAX_PASSWORD_BYTES",
    "RedisAccess",
    "RedisAccessError",
    "access",
    "open_client",
    "read_password",
]

CLUSTER_SCHEMES: Final = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
"""URL schemes that name a Redis Cluster (by one of its nodes) → the node's own scheme."""

MAX_PASSWORD_BYTES: Final = 4096
"""A password file longer than this is refused (it is surely the wrong file)."""


class RedisAccessError(ConfigError):
    """The Redis access options are inconsistent, or the password file is unusable."""


def read_password(path: Path) -> str:
    """The password in ``path``: its first line, without the line end.

    Raises:
        RedisAccessError: the file is missing, readable or writable by group or others,
            empty, too long, or not UTF-8.
    """
    problem = keys.owner_only_problem(path, "redis_password_file")
    if problem:
        raise RedisAccessError(problem)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RedisAccessError(f"redis_password_file {path} cannot be read: {exc}") from exc
    if len(data) > MAX_PASSWORD_BYTES:
        raise RedisAccessError(f"redis_password_file {path} is over {MAX_PASSWORD_BYTES} bytes")
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        raise RedisAccessError(f"redis_password_file {path} is not UTF-8 text") from exc
    password = text.splitlines()[0] if text else ""
    if not password:
        raise RedisAccessError(f"redis_password_file {path} is empty")
    return password


@dataclass(frozen=True, slots=True)
class RedisAccess:
    """One Redis and the credentials to use it. Validates on construction (no file I/O)."""

    url: str
    """``redis://``, ``rediss://`` (TLS) or ``unix://``; a password in it works but shows
    in ``ps`` and shell history: prefer ``password_file``."""
    username: str = ""
    """An ACL user (``AUTH username password``); empty: Redis's ``default`` user."""
    password_file: Path | None = None
    """An owner-only file whose first line is the password."""
    tls_ca_file: Path | None = None
    """The CA(s) the server's certificate must chain to (``rediss://`` only)."""
    tls_cert_file: Path | None = None
    """A client certificate for servers that ask for one (``rediss://`` only)."""
    tls_key_file: Path | None = None
    """Its private key, owner-only (``rediss://`` only)."""

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        tls_files = (self.tls_ca_file, self.tls_cert_file, self.tls_key_file)
        if not self.tls and any(f is not None for f in tls_files):
            raise RedisAccessError("redis_tls_* files need a rediss:// redis_url")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise RedisAccessError("redis_tls_cert_file and redis_tls_key_file go together")
        if self.password_file is not None and parts.password:
            raise RedisAccessError(
                "redis_url has a password and redis_password_file is set; use one of them"
            )
        if self.username and parts.username:
            raise RedisAccessError("redis_url names a user and redis_username is set; use one")

    def __repr__(self) -> str:
        from .config import redact  # config imports this module

        shown = [f"url={redact(self.url)!r}"]
        for name in ("username", "password_file", "tls_ca_file", "tls_cert_file", "tls_key_file"):
            value = getattr(self, name)
            if value:
                shown.append(f"{name}={str(value)!r}")
        return f"RedisAccess({', '.join(shown)})"

    @property
    def tls(self) -> bool:
        """Whether the connection is TLS (``rediss://`` or ``rediss+cluster://``)."""
        return urlsplit(self.url).scheme in ("rediss", "rediss+cluster")

    @property
    def cluster(self) -> bool:
        """Whether the URL names a Redis Cluster (``redis+cluster://``, ``rediss+cluster://``)."""
        return urlsplit(self.url).scheme in CLUSTER_SCHEMES

    @property
    def node_url(self) -> str:
        """The URL redis-py connects with: for a cluster, its startup node's ``redis://``
        (or ``rediss://``) URL; else the URL itself."""
        scheme, sep, rest = self.url.partition("://")
        return f"{CLUSTER_SCHEMES[scheme]}{sep}{rest}" if scheme in CLUSTER_SCHEMES else self.url

    def check(self) -> None:
        """Read what the clients will read (the password file, the TLS key's mode) now, so a
        daemon refuses to start on an unusable file instead of failing on its first call.

        Raises:
            RedisAccessError: see :func:`read_password`; a TLS file is missing or unsafe.
        """
        self.client_kwargs()
        files = {"redis_tls_ca_file": self.tls_ca_file, "redis_tls_cert_file": self.tls_cert_file}
        for opt, path in files.items():
            if path is not None and not path.is_file():
                raise RedisAccessError(f"{opt} not found: {path}")
        if self.tls_key_file is not None:
            problem = keys.owner_only_problem(self.tls_key_file, "redis_tls_key_file")
            if problem:
                raise RedisAccessError(problem)

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``redis.asyncio.Redis.from_url`` (or a pool's ``from_url``)
        with this URL: the user, the password read now, and the TLS files.

        Raises:
            RedisAccessError: the password file is unusable.
        """
        out: dict[str, Any] = {}
        if self.username:
            out["username"] = self.username
        if self.password_file is not None:
            out["password"] = read_password(self.password_file)
        if self.tls:
            out["ssl_cert_reqs"] = "required"
            out["ssl_check_hostname"] = True
            if self.tls_ca_file is not None:
                out["ssl_ca_certs"] = str(self.tls_ca_file)
            if self.tls_cert_file is not None and self.tls_key_file is not None:
                out["ssl_certfile"] = str(self.tls_cert_file)
                out["ssl_keyfile"] = str(self.tls_key_file)
        return out


def open_client(
    target: str | RedisAccess, timeout_s: float, *, decode_responses: bool = True
) -> redis.asyncio.Redis:
    """A client of ``target``: ``redis.asyncio.Redis``, or for a ``+cluster`` URL a
    ``redis.asyncio.cluster.RedisCluster`` with the same credentials, TLS and timeouts.

    The cluster client is typed as ``Redis``: its callers use only what both offer (single
    key commands, scripts and ``MULTI`` whose keys share one hash slot, key-routed
    pipelines, ``TIME``, ``aclose``); a multi-key call across slots fails with CROSSSLOT.

    Raises:
        RedisAccessError: the password file is unusable.
    """
    found = access(target)
    options: dict[str, Any] = {
        "decode_responses": decode_responses,
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        **found.client_kwargs(),
    }
    if found.cluster:
        cluster = redis.asyncio.cluster.RedisCluster.from_url(found.node_url, **options)
        return cast("redis.asyncio.Redis", cluster)
    return redis.asyncio.Redis.from_url(found.url, **options)


def access(target: str | RedisAccess) -> RedisAccess:
    """A bare URL as access without credentials (tests, tools); access as itself."""
    return target if isinstance(target, RedisAccess) else RedisAccess(target)
