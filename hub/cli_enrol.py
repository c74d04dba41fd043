"""``hubctl spoke enroll|remove|members``: enrolment from the command line.

``enroll NAME [--label k=v ...] [--address host:port | --connect] [--ttl S]`` prints the
one-time token (``-q``: the token alone; ``--json``: token, name, expiry). ``remove NAME``
revokes an enrolled spoke. ``members`` prints the hub-signed membership list: name, link
mode, address, labels, key id, revision.

The ``spoke`` verb may also carry other actions (drain, undrain): :func:`add_parser` adds
these to it when it exists, and :func:`spoke_verb` passes the others on.
"""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Callable, Coroutine
from typing import Any, Final, Protocol

from hubspoke.client import Client
from hubspoke.client._enrol import Member, Membership

__all__ = ["ACTIONS", "add_parser", "spoke_verb"]

ACTIONS: Final = ("enroll", "remove", "members")


class Out(Protocol):
    json: bool
    quiet: bool

    def doc(self, value: object) -> None: ...

    def line(self, text: str) -> None: ...


_Verb = Callable[[Client, argparse.Namespace, Any], Coroutine[Any, Any, int]]


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"label {text!r} must be key=value")
    return key, value


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add enroll, remove and members to ``hubctl spoke`` (made here if no one made it)."""
    sk = sub.choices.get("spoke")
    if sk is None:
        sk = sub.add_parser("spoke", help="act on one spoke at the hub", parents=[common])
        sk.add_argument("action", choices=list(ACTIONS))
        sk.add_argument("name", metavar="NAME", nargs="?", default="", help="the spoke's name")
    else:
        for action in sk._actions:  # extend the existing verb's action choices
            if action.dest == "action" and action.choices is not None:
                action.choices = [*action.choices, *ACTIONS]
            if action.dest == "name":
                action.nargs, action.default = "?", ""
    sk.description = (
        "enroll NAME: print a one-time token for spoked --enroll; remove NAME: revoke an "
        "enrolled spoke; members: the hub's signed membership list"
    )
    sk.add_argument(
        "--label",
        dest="enrol_labels",
        type=_label,
        action="append",
        default=[],
        metavar="K=V",
        help="enroll: an operator label (policy and selectors match these); repeatable",
    )
    mode = sk.add_mutually_exclusive_group()
    mode.add_argument("--address", default="", help="enroll: host:port the hub dials")
    mode.add_argument(
        "--connect", action="store_true", help="enroll: the spoke dials the hub (connect mode)"
    )
    sk.add_argument(
        "--ttl", type=float, default=None, help="enroll: seconds the token stays usable"
    )


def spoke_verb(other: _Verb | None) -> _Verb:
    """``hubctl spoke``: enrolment actions here, the rest to ``other``."""

    async def run(client: Client, args: argparse.Namespace, out: Any) -> int:
        from .cli_parser import UsageError  # cli_parser imports this module

        if args.action != "members" and not args.name:
            raise UsageError(f"hubctl spoke {args.action} needs NAME")
        if args.action not in ACTIONS:
            if other is None:
                raise UsageError(f"unknown spoke action {args.action}")
            return await other(client, args, out)
        if args.action == "enroll":
            return await _enroll(client, args, out)
        if args.action == "remove":
            after = await client.remove_spoke(args.name)
            if out.json:
                out.doc(_membership_json(after))
            elif not out.quiet:
                out.line(f"removed {args.name} (membership revision {after.revision})")
            return 0
        _members(await client.membership(), out)
        return 0

    return run


async def _enroll(client: Client, args: argparse.Namespace, out: Out) -> int:
    ticket = await client.enroll_spoke(
        args.name,
        labels=dict(args.enrol_labels),
        address=args.address,
        connect=args.connect,
        ttl_s=args.ttl,
    )
    if out.json:
        out.doc(
            {
                "token": ticket.token,
                "name": ticket.name,
                "expire_time": ticket.expire_time.astimezone(dt.UTC).isoformat(),
            }
        )
    elif out.quiet:
        out.line(ticket.token)
    else:
        out.line(ticket.token)
        out.line(
            f"# one-time token for {ticket.name}, until "
            f"{ticket.expire_time.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S}Z; on the spoke: "
            "spoked --enroll TOKEN --config spoke.toml"
        )
    return 0


def _member_json(m: Member) -> dict[str, object]:
    return {
        "name": m.name,
        "key_id": m.key_id,
        "public_key": m.public_key,
        "labels": dict(m.labels),
        "mode": m.mode,
        "address": m.address,
        "profiles": list(m.profiles),
        "version": m.version,
        "enroll_time": m.enroll_time.isoformat() if m.enroll_time else None,
        "revision": m.revision,
    }


def _membership_json(ms: Membership) -> dict[str, object]:
    return {"members": [_member_json(m) for m in ms.members], "revision": ms.revision}


def _members(ms: Membership, out: Out) -> None:
    if out.json:
        out.doc(_membership_json(ms))
        return
    rows = [["NAME", "MODE", "ADDRESS", "LABELS", "KEY", "REVISION"]]
    rows += [
        [
            m.name,
            m.mode,
            m.address or "-",
            ",".join(f"{k}={v}" for k, v in sorted(m.labels.items())) or "-",
            m.key_id,
            str(m.revision),
        ]
        for m in ms.members
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows[1:] if out.quiet else rows:
        out.line("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
