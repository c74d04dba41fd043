"""``hubctl keys rotate|revoke``: key rotation and revocation, append-only on trust stores.

Rotation: ``rotate`` writes a fresh keypair for NAME (the old files are kept, renamed with
their fingerprint) and, with ``--trust``, appends the new public key to that trust store as
another ``[[peer]]`` entry for NAME, so old and new keys are both valid while every host
picks the new one up. Once the principal signs with the new key, ``revoke`` the old one.

Revocation: ``revoke`` appends a ``[[revocation]]`` table to a trust store. Running hubs and
spokes re-read their trust store when it changes (shared/trust.py), so a revoked key is
refused at every hop whose trust file carries the revocation, without a restart.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path
from typing import Any, Protocol

from hubspoke import keys
from hubspoke.trust import Role, TrustConfigError, TrustStore


class Out(Protocol):
    json: bool

    def doc(self, value: object) -> None: ...

    def line(self, text: str) -> None: ...


class KeysUsageError(Exception):
    """Bad arguments or files: the CLI exits 2."""


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    kp = sub.add_parser("keys", help="rotate or revoke Ed25519 keys", parents=[common])
    ks = kp.add_subparsers(dest="keys_action", metavar="ACTION", required=True)
    rot = ks.add_parser("rotate", help="new keypair for NAME; old files kept", parents=[common])
    rot.add_argument("--out", type=Path, required=True, help="directory holding NAME.key")
    rot.add_argument("--name", required=True, help="peer name")
    rot.add_argument("--trust", type=Path, help="trust store to append the new public key to")
    rot.add_argument(
        "--role", choices=[r.value for r in Role], help="peer role (default: from --trust)"
    )
    rev = ks.add_parser("revoke", help="append a revocation to a trust store", parents=[common])
    rev.add_argument("--trust", type=Path, required=True, help="trust store file")
    key = rev.add_mutually_exclusive_group(required=True)
    key.add_argument("--key", help="public key text ed25519:...")
    key.add_argument("--key-file", type=Path, help="a NAME.pub file")
    rev.add_argument("--reason", default="", help="why (kept in the trust store)")


def run(args: argparse.Namespace, out: Out) -> int:
    if args.keys_action == "rotate":
        return _rotate(args, out)
    return _revoke(args, out)


def _store(path: Path) -> TrustStore:
    try:
        return TrustStore.from_file(path)
    except TrustConfigError as exc:
        raise KeysUsageError(str(exc)) from exc


def _rotate(args: argparse.Namespace, out: Out) -> int:
    name: str = args.name
    out_dir: Path = args.out
    priv, pub = out_dir / f"{name}.key", out_dir / f"{name}.pub"
    role = args.role
    if args.trust is not None and role is None:
        known = _store(args.trust).role_of(name)
        if known is None:
            raise KeysUsageError(f"{name} is not in {args.trust}; pass --role")
        role = known.value
    retired: list[str] = []
    if pub.exists():
        old_fp = keys.fingerprint(keys.load_public_file(pub))
        for f in (priv, pub):
            if f.exists():
                target = f.with_name(f"{f.name}.{old_fp}")
                f.rename(target)
                retired.append(str(target))
    key = keys.generate(name)
    keys.write_keypair(key, out_dir)
    public = keys.encode_public(key.public)
    if args.trust is not None:
        with args.trust.open("a") as fh:
            fh.write(
                f"\n# Rotated {dt.datetime.now(dt.UTC):%Y-%m-%dT%H:%M:%SZ} by hubctl keys rotate.\n"
                f"[[peer]]\nname = {json.dumps(name)}\nrole = {json.dumps(role)}\n"
                f"keys = [{json.dumps(public)}]\n"
            )
    if out.json:
        out.doc({"name": name, "public_key": public, "key_id": key.key_id, "retired": retired})
    else:
        out.line(f"{public} {name}")
    return 0


def _revoke(args: argparse.Namespace, out: Out) -> int:
    text = args.key
    if args.key_file is not None:
        try:
            text = keys.encode_public(keys.load_public_file(args.key_file))
        except keys.KeyFileError as exc:
            raise KeysUsageError(str(exc)) from exc
    try:
        fp = keys.fingerprint(keys.decode_public(text))
    except keys.KeyFileError as exc:
        raise KeysUsageError(str(exc)) from exc
    if _store(args.trust).is_revoked(fp):
        out.line(f"already revoked: {fp}")
        return 0
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    with args.trust.open("a") as fh:
        fh.write(
            f"\n[[revocation]]\nkey = {json.dumps(text)}\n"
            f"reason = {json.dumps(args.reason)}\nrevoke_time = {now}\n"
        )
    _store(args.trust)  # the file must still parse after our append
    if out.json:
        out.doc({"revoked": text, "fingerprint": fp, "trust_file": str(args.trust)})
    else:
        out.line(f"revoked {fp} in {args.trust}")
    return 0
