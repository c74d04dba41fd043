"""``hubctl certs init``: a federation's transport CA and one certificate per peer.

``hubctl certs init --out DIR --name hub:localhost,127.0.0.1 --name spoke-1 --name operator``
writes ``DIR/ca.crt``, ``DIR/ca.key`` and ``DIR/NAME.crt`` / ``DIR/NAME.tls.key`` per name
(:func:`hubspoke.tls.init_pki`). An existing CA in DIR is reused; no file is ever overwritten.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Final, TypeVar

from hubspoke import tls

__all__ = ["add_parser", "run"]

_P = TypeVar("_P", bound=argparse.ArgumentParser)
_EXIT_OK: Final = 0
_EXIT_USAGE: Final = 2


def _name_spec(text: str) -> tuple[str, list[str]]:
    """``NAME[:SAN,SAN...]`` → ``(NAME, [SAN, ...])``; IPv6 SANs keep their colons."""
    name, _, rest = text.partition(":")
    if not name:
        raise argparse.ArgumentTypeError(f"--name must be NAME[:SAN,SAN...], got {text!r}")
    return name, [s.strip() for s in rest.split(",") if s.strip()]


def _days(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"--days must be a positive integer, got {text!r}")
    return value


def add_parser(sub: argparse._SubParsersAction[_P], common: _P) -> None:
    """Register ``certs init`` on hubctl's subparsers (``sub``), with the common options."""
    certs = sub.add_parser("certs", help="transport TLS certificates (hubctl certs init --help)")
    verbs = certs.add_subparsers(dest="certs_verb", metavar="ACTION", parser_class=type(certs))
    verbs.required = True
    init = verbs.add_parser(
        "init",
        help="create a CA (or reuse DIR's) and a certificate per --name",
        parents=[common],
        usage="%(prog)s --out DIR --name NAME[:SAN,SAN...] [--name ...] [--days N]",
    )
    init.add_argument("--out", type=Path, required=True, help="directory for ca.* and NAME.*")
    init.add_argument(
        "--name",
        dest="names",
        type=_name_spec,
        action="append",
        required=True,
        metavar="NAME[:SAN,...]",
        help="a peer (hub, spoke or client principal); extra DNS names or IPs after ':'",
    )
    init.add_argument("--days", type=_days, default=825, help="leaf validity in days (default 825)")


def run(args: argparse.Namespace, as_json: bool) -> int:
    """Do ``certs init``; print the files on stdout, or ``Error: ...`` on stderr (exit 2)."""
    try:
        pki = tls.init_pki(args.out, args.names, args.days)
    except tls.TlsError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return _EXIT_USAGE
    if as_json:
        doc = {
            "ca_cert": str(pki.ca_cert),
            "ca_key": str(pki.ca_key),
            "ca_created": pki.ca_created,
            "certs": {
                leaf.name: {
                    "cert_file": str(leaf.cert_file),
                    "key_file": str(leaf.key_file),
                    "sans": list(leaf.sans),
                }
                for leaf in pki.leaves.values()
            },
        }
        print(json.dumps(doc, indent=2, sort_keys=True), flush=True)
        return _EXIT_OK
    print(f"ca\t{pki.ca_cert}\t{'created' if pki.ca_created else 'reused'}", flush=True)
    for leaf in pki.leaves.values():
        print(f"{leaf.name}\t{leaf.cert_file}\t{leaf.key_file}\t{','.join(leaf.sans)}")
    return _EXIT_OK
