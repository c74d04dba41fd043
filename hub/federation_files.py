"""Write a whole federation's keys and config files into one directory.

Used by the harness (``hubspoke.testing``: ``hubctl dev``, the tests, bench, chaos and fuzz).
Layout::

    DIR/keys/{hub,spoke-N,operator}.key|.pub   Ed25519 keypairs (private keys mode 0600)
    DIR/trust.toml                              every peer with its role; all processes share it
    DIR/hub.toml                                hubd's config, listing every spoke
    DIR/{spoke}.toml                            spoked's config for each spoke
    DIR/hubctl.toml                             hubctl's config, signing as ``operator``
    DIR/tls/ca.crt|.key, NAME.crt|.tls.key      with ``tls=True``: transport CA and certificates

Paths inside the files are relative to DIR, so the directory can be moved as a whole (a
Redis password file or CA outside DIR is named by its absolute path).

Each peer's Redis is a URL or a :class:`hubspoke.redis_access.RedisAccess`; with the latter
its config gets ``redis_username``, ``redis_password_file`` and ``redis_tls_*`` as well
(the harness gives every private Redis a password file, ``DIR/redis/password``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from hubspoke import errors, keys, policy
from hubspoke import tls as stls
from hubspoke.redis_access import RedisAccess, access

__all__ = [
    "DEFAULT_SPOKE_PROFILES",
    "OPERATOR",
    "FederationFiles",
    "SpokeSpec",
    "write_federation",
]

OPERATOR: Final = "operator"
"""The client principal the generated hubctl config signs as."""

SpokeSpec = tuple[str, str, "str | RedisAccess"]
"""``(name, listen address, its Redis: a URL or the access with credentials)``."""

DEFAULT_SPOKE_PROFILES: Final = """
[profiles.synthetic]

[profiles.shell]
argv = ["sh", "-c", "{task}"]
task_on_stdin = false
unsafe = true
"""


@dataclass(frozen=True, slots=True)
class FederationFiles:
    """Where :func:`write_federation` put everything."""

    root: Path
    keys_dir: Path
    trust_file: Path
    hub_config: Path
    spoke_configs: Mapping[str, Path]
    """Spoke name → its spoked TOML file, in the order given."""
    hubctl_config: Path
    hub_name: str
    hub_address: str
    tls_dir: Path | None = None
    """With ``tls=True``: the CA and every peer's certificate (every config has ``[tls]``)."""


def _s(value: str) -> str:
    """A TOML basic string (JSON string escapes are valid TOML escapes)."""
    return json.dumps(value, ensure_ascii=False)


def _redis_lines(redis: str | RedisAccess, root: Path) -> str:
    """The ``redis_*`` options of one config."""
    target = access(redis)

    def path(p: Path) -> str:
        return _s(str(p.relative_to(root) if p.is_relative_to(root) else p))

    lines = [f"redis_url = {_s(target.url)}\n"]
    if target.username:
        lines.append(f"redis_username = {_s(target.username)}\n")
    files = {
        "redis_password_file": target.password_file,
        "redis_tls_ca_file": target.tls_ca_file,
        "redis_tls_cert_file": target.tls_cert_file,
        "redis_tls_key_file": target.tls_key_file,
    }
    lines += [f"{opt} = {path(p)}\n" for opt, p in files.items() if p is not None]
    return "".join(lines)


def _relative(redis: str | RedisAccess, root: Path) -> str | RedisAccess:
    """``redis`` with its files under ``root`` named relatively to it."""
    if isinstance(redis, str):
        return redis

    def rel(path: Path | None) -> Path | None:
        inside = path is not None and path.is_absolute() and path.is_relative_to(root)
        return path.relative_to(root) if path is not None and inside else path

    return dataclasses.replace(
        redis,
        password_file=rel(redis.password_file),
        tls_ca_file=rel(redis.tls_ca_file),
        tls_cert_file=rel(redis.tls_cert_file),
        tls_key_file=rel(redis.tls_key_file),
    )


def write_federation(
    root: Path,
    spokes: Sequence[SpokeSpec],
    hub_address: str,
    hub_redis_url: str | RedisAccess,
    *,
    hub_name: str = "hub",
    spoke_profiles: str = DEFAULT_SPOKE_PROFILES,
    tls: bool = False,
    keep_keys: bool = False,
) -> FederationFiles:
    """Generate keys for the hub, each spoke and ``operator``, and write every config file.

    Args:
        root: the directory to fill (created if needed). Existing key files are never
            overwritten: writing twice into one directory raises ``FileExistsError``
            (unless ``keep_keys``).
        spokes: ``(name, listen address, Redis)`` per spoke; the Redis is a URL or a
            ``RedisAccess`` (user, password file, TLS files), written into its config.
        hub_address: where hubd listens and hubctl dials.
        hub_redis_url: the hub's Redis (a URL or a ``RedisAccess``).
        hub_name: the hub's peer name.
        spoke_profiles: the ``[profiles.*]`` tables appended to every spoke config.
        tls: also create a transport CA and a certificate per peer in ``DIR/tls`` (SANs:
            the name, ``localhost`` and ``127.0.0.1``) and a ``[tls]`` table in every config.
            Without it the federation speaks plaintext, so every address must be loopback.
        keep_keys: reuse the keys an earlier run left in ``root``: missing keys are
            created, the configs and the trust store are rewritten (the trust store with
            the public halves of the keys actually in ``root/keys``), and any other file
            is added only where ``root`` lacks it.

    Raises:
        hubspoke.errors.ConfigError: with ``keep_keys``, a kept private key is unreadable.
    """
    if keep_keys and any((root / "keys").glob("*.key")):
        # Written into a staging directory under root first: name files in root relatively.
        return _rewrite_keeping_keys(
            root,
            lambda into: write_federation(
                into,
                [(n, a, _relative(r, root)) for n, a, r in spokes],
                hub_address,
                _relative(hub_redis_url, root),
                hub_name=hub_name,
                spoke_profiles=spoke_profiles,
                tls=tls,
            ),
        )
    root.mkdir(parents=True, exist_ok=True)
    keys_dir = root / "keys"
    names = [hub_name, *(s[0] for s in spokes)]
    if len(set(names)) != len(names) or OPERATOR in names:
        raise ValueError(f"peer names must be distinct and not {OPERATOR!r}: {names}")
    roles = {hub_name: "hub", OPERATOR: "client", **{s[0]: "spoke" for s in spokes}}
    public: dict[str, str] = {}
    for name in roles:
        key = keys.generate(name)
        keys.write_keypair(key, keys_dir)
        public[name] = keys.encode_public(key.public)

    trust_file = root / "trust.toml"
    trust_file.write_text(
        "# Every peer of this federation; hubd, spoked and hubctl all read this file.\n"
        + "".join(
            f"\n[[peer]]\nname = {_s(n)}\nrole = {_s(r)}\nkeys = [{_s(public[n])}]\n"
            for n, r in roles.items()
        )
    )

    policy_file = root / "policy.toml"
    if not policy_file.exists():  # an operator's edits survive a rewrite of the configs
        policy_file.write_text(policy.ALLOW_OPERATOR_EVERYTHING)

    tls_dir = root / "tls" if tls else None
    if tls_dir is not None:
        local = ["localhost", "127.0.0.1"]
        stls.init_pki(tls_dir, [(n, [] if n == OPERATOR else local) for n in roles])

    def tls_section(name: str) -> str:
        if tls_dir is None:
            return ""
        return (
            "\n[tls]\n"
            f"cert_file = {_s(f'tls/{name}.crt')}\n"
            f"key_file = {_s(f'tls/{name}.tls.key')}\n"
            'ca_file = "tls/ca.crt"\n'
        )

    hub_config = root / "hub.toml"
    hub_config.write_text(
        f"name = {_s(hub_name)}\n"
        f"listen = {_s(hub_address)}\n"
        f"key_file = {_s(f'keys/{hub_name}.key')}\n"
        'trust_file = "trust.toml"\n'
        'policy_file = "policy.toml"\n'
        'audit_checkpoint_file = "audit-checkpoints.jsonl"\n'
        + _redis_lines(hub_redis_url, root)
        + "".join(f"\n[[spokes]]\nname = {_s(n)}\naddress = {_s(addr)}\n" for n, addr, _ in spokes)
        + tls_section(hub_name)
    )

    spoke_configs: dict[str, Path] = {}
    for name, address, redis_url in spokes:
        path = root / f"{name}.toml"
        path.write_text(
            f"name = {_s(name)}\n"
            f"listen = {_s(address)}\n"
            f"key_file = {_s(f'keys/{name}.key')}\n"
            'trust_file = "trust.toml"\n'
            'policy_file = "policy.toml"\n'
            + _redis_lines(redis_url, root)
            + spoke_profiles
            + tls_section(name)
        )
        spoke_configs[name] = path

    hubctl_config = root / "hubctl.toml"
    hubctl_config.write_text(
        f"hub = {_s(hub_address)}\n"
        f"hub_name = {_s(hub_name)}\n"
        f"principal = {_s(OPERATOR)}\n"
        f"key_file = {_s(f'keys/{OPERATOR}.key')}\n"
        'trust_file = "trust.toml"\n' + tls_section(OPERATOR)
    )
    return FederationFiles(
        root=root,
        keys_dir=keys_dir,
        trust_file=trust_file,
        hub_config=hub_config,
        spoke_configs=spoke_configs,
        hubctl_config=hubctl_config,
        hub_name=hub_name,
        hub_address=hub_address,
        tls_dir=tls_dir,
    )


def _rewrite_keeping_keys(root: Path, write: Callable[[Path], FederationFiles]) -> FederationFiles:
    """``write`` a fresh federation beside ``root``, then move in all but the keys it kept."""
    keys_dir = root / "keys"
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    try:
        staged = write(staging)
        trust = staged.trust_file.read_text()
        for new_key in sorted(staged.keys_dir.glob("*.key")):
            name, kept = new_key.stem, keys_dir / new_key.name
            if kept.exists():
                trust = trust.replace(_public_of(new_key, name), _public_of(kept, name))
                continue
            for src in (new_key, new_key.with_suffix(".pub")):
                # link() fails if the target exists: a key is never overwritten.
                os.link(src, keys_dir / src.name)
        (root / staged.trust_file.name).write_text(trust)
        configs = [staged.hub_config, staged.hubctl_config, *staged.spoke_configs.values()]
        for config in configs:
            os.replace(config, root / config.name)
        # Any other file (e.g. policy.toml) is written only where none exists yet, as
        # write_federation itself does: the operator's edits survive.
        for other in staging.iterdir():
            target = root / other.name
            if other.is_file() and other != staged.trust_file and not target.exists():
                os.replace(other, target)
        if staged.tls_dir is not None:
            # Transport certificates are not identities: issue them afresh for every peer.
            shutil.rmtree(root / "tls", ignore_errors=True)
            os.replace(staged.tls_dir, root / "tls")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return FederationFiles(
        root=root,
        keys_dir=keys_dir,
        trust_file=root / staged.trust_file.name,
        hub_config=root / staged.hub_config.name,
        spoke_configs={n: root / p.name for n, p in staged.spoke_configs.items()},
        hubctl_config=root / staged.hubctl_config.name,
        hub_name=staged.hub_name,
        hub_address=staged.hub_address,
        tls_dir=root / "tls" if staged.tls_dir is not None else None,
    )


def _public_of(path: Path, name: str) -> str:
    try:
        return keys.encode_public(keys.load_private(path, name).public)
    except keys.KeyFileError as exc:
        raise errors.ConfigError(f"cannot reuse the key from an earlier run: {exc}") from exc
