"""The trust store: which peers exist, in which role, with which public keys.

It is read from TOML::

    [[peer]]
    name = "operator"
    role = "client"            # client | hub | spoke
    keys = [
      "ed25519:BASE64...",
      { key = "ed25519:BASE64...", not_after = 2027-01-01T00:00:00Z },
    ]
    revoked = ["ed25519:BASE64..."]   # optional: never accepted, even if listed in keys

    [[revocation]]                    # appended by `hubctl keys revoke`; any peer's key
    key = "ed25519:BASE64..."
    reason = "laptop lost"
    revoke_time = 2026-11-22T10:00:00Z

A key is looked up by the fingerprint in a signature's key-id hint; trust comes only from
this store. A key outside its validity window, or revoked, is treated as unknown.

A store read from a file re-reads it when the file changes (checked at most once per
``RELOAD_CHECK_S``), so a revocation reaches a running hub or spoke without a restart. A
file that no longer parses is ignored (the last good store stays) and logged.
"""

from __future__ import annotations

import datetime as dt
import os
import time
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from . import keys
from .errors import ConfigError

log = structlog.get_logger("hubspoke.trust")

RELOAD_CHECK_S = 1.0


class TrustConfigError(ConfigError):
    """The trust store file is malformed."""


class Role(StrEnum):
    CLIENT = "client"
    HUB = "hub"
    SPOKE = "spoke"


@dataclass(frozen=True, slots=True)
class TrustedKey:
    """One public key of one peer."""

    peer: str
    role: Role
    public: Ed25519PublicKey
    fingerprint: str
    not_before: dt.datetime | None = None
    not_after: dt.datetime | None = None

    def valid_at(self, now: dt.datetime) -> bool:
        if self.not_before is not None and now < self.not_before:
            return False
        return not (self.not_after is not None and now >= self.not_after)


class TrustStore:
    """An immutable index of trusted keys by fingerprint and by peer name."""

    def __init__(self, trusted: Iterable[TrustedKey], revoked: Iterable[str] = ()) -> None:
        self._path: Path | None = None
        self._mtime = 0.0
        self._checked = 0.0
        self._load(trusted, revoked)

    def _load(self, trusted: Iterable[TrustedKey], revoked: Iterable[str]) -> None:
        self._revoked = frozenset(revoked)
        self._by_fp: dict[str, list[TrustedKey]] = {}
        self._roles: dict[str, Role] = {}
        for k in trusted:
            if k.fingerprint in self._revoked:
                continue
            known = self._roles.setdefault(k.peer, k.role)
            if known is not k.role:
                raise TrustConfigError(f"peer {k.peer!r} appears with roles {known} and {k.role}")
            self._by_fp.setdefault(k.fingerprint, []).append(k)

    def candidates(self, fingerprint: str, now: dt.datetime) -> list[TrustedKey]:
        """Keys with this fingerprint that are valid now (normally zero or one)."""
        self._maybe_reload()
        return [k for k in self._by_fp.get(fingerprint, ()) if k.valid_at(now)]

    def _maybe_reload(self) -> None:
        if self._path is None or time.monotonic() - self._checked < RELOAD_CHECK_S:
            return
        self._checked = time.monotonic()
        try:
            mtime = os.stat(self._path).st_mtime
            if mtime == self._mtime:
                return
            fresh = TrustStore.from_mapping(tomllib.loads(self._path.read_text()), str(self._path))
        except (OSError, tomllib.TOMLDecodeError, TrustConfigError) as exc:
            log.warning("trust_reload_failed", path=str(self._path), error=str(exc))
            return
        self._mtime = mtime
        self._load([k for ks in fresh._by_fp.values() for k in ks], fresh._revoked)
        log.info("trust_reloaded", path=str(self._path), revoked=len(self._revoked))

    def role_of(self, peer: str) -> Role | None:
        return self._roles.get(peer)

    def keys_of(self, peer: str) -> list[TrustedKey]:
        return [k for ks in self._by_fp.values() for k in ks if k.peer == peer]

    def peers(self, role: Role | None = None) -> list[str]:
        return sorted(p for p, r in self._roles.items() if role is None or r is role)

    def is_revoked(self, fingerprint: str) -> bool:
        return fingerprint in self._revoked

    @classmethod
    def from_file(cls, path: Path) -> TrustStore:
        try:
            mtime = os.stat(path).st_mtime
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError as exc:
            raise TrustConfigError(f"trust store not found: {path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise TrustConfigError(f"trust store {path} is not valid TOML: {exc}") from exc
        store = cls.from_mapping(raw, source=str(path))
        store._path, store._mtime, store._checked = path, mtime, time.monotonic()
        return store

    @classmethod
    def from_mapping(cls, raw: Mapping[str, object], source: str = "trust store") -> TrustStore:
        peers = raw.get("peer", [])
        if not isinstance(peers, list):
            raise TrustConfigError(f"{source}: [[peer]] must be an array of tables")
        unknown_top = set(raw) - {"peer", "revocation"}
        if unknown_top:
            raise TrustConfigError(f"{source}: unknown keys {sorted(unknown_top)}")
        trusted: list[TrustedKey] = []
        revoked: list[str] = []
        revocations = raw.get("revocation", [])
        if not isinstance(revocations, list):
            raise TrustConfigError(f"{source}: [[revocation]] must be an array of tables")
        for i, r in enumerate(revocations):
            if not isinstance(r, dict) or "key" not in r:
                raise TrustConfigError(f"{source}: revocation #{i + 1} needs a key")
            revoked.append(keys.fingerprint(_decode(r["key"], f"{source}: revocation #{i + 1}")))
        for i, p in enumerate(peers):
            where = f"{source}: peer #{i + 1}"
            if not isinstance(p, dict):
                raise TrustConfigError(f"{where} must be a table")
            name, role = p.get("name"), p.get("role")
            if not isinstance(name, str) or not name:
                raise TrustConfigError(f"{where} needs a name")
            try:
                prole = Role(str(role))
            except ValueError as exc:
                msg = f"{where} ({name}): role must be client, hub or spoke"
                raise TrustConfigError(msg) from exc
            unknown = set(p) - {"name", "role", "keys", "revoked"}
            if unknown:
                raise TrustConfigError(f"{where} ({name}): unknown keys {sorted(unknown)}")
            for entry in p.get("keys", []):
                trusted.append(_parse_key(entry, name, prole, where))
            for text in p.get("revoked", []):
                revoked.append(keys.fingerprint(_decode(text, where)))
        return cls(trusted, revoked)


def _decode(text: object, where: str) -> Ed25519PublicKey:
    if not isinstance(text, str):
        raise TrustConfigError(f"{where}: a key must be a string 'ed25519:...'")
    try:
        return keys.decode_public(text)
    except keys.KeyFileError as exc:
        raise TrustConfigError(f"{where}: {exc}") from exc


def _when(value: object, where: str) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value
    raise TrustConfigError(f"{where}: not_before/not_after must be TOML datetimes with a zone")


def _parse_key(entry: object, name: str, role: Role, where: str) -> TrustedKey:
    if isinstance(entry, dict):
        public = _decode(entry.get("key"), where)
        nb, na = _when(entry.get("not_before"), where), _when(entry.get("not_after"), where)
    else:
        public, nb, na = _decode(entry, where), None, None
    return TrustedKey(name, role, public, keys.fingerprint(public), nb, na)
