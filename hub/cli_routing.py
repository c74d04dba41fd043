"""hubctl's routing options and verbs: ``spawn --selector``, ``spawn --dry-run`` and
``hubctl spoke drain|undrain NAME``.

``--selector gpu=yes,zone=a`` lets the hub choose the spoke (docs/protocol.md §4.8);
``--dry-run`` rehearses a spawn, selector or named spoke, and prints the decision table (or,
with ``--json``, the placement): the chosen spoke and every spoke considered, with why. Exit
0 when a spoke would take it, 1 when none would.
"""

from __future__ import annotations

import argparse
from typing import Any, Final

from google.protobuf import json_format

from hubspoke.client import Client, Placement

from .cli_output import Out, spoke_health_text, spoke_json, table

__all__ = ["add_spawn_options", "add_spoke_parser", "dry_run", "selector", "spoke_verb"]

_EXIT_OK: Final = 0
_EXIT_NONE: Final = 1


def selector(text: str) -> dict[str, str]:
    """``k=v[,k=v...]`` as a mapping (argparse type)."""
    pairs: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep or not key or not value:
            raise argparse.ArgumentTypeError(f"selector must be k=v[,k=v...], got {text!r}")
        pairs[key] = value
    return pairs


def add_spawn_options(sp: argparse.ArgumentParser, where: Any) -> None:
    """``--selector`` (in ``where``, the group that holds ``--spoke``: exactly one of them)
    and ``--dry-run`` on ``hubctl spawn``."""
    where.add_argument(
        "--selector",
        type=selector,
        action="append",
        default=[],
        metavar="K=V[,K=V]",
        help="let the hub choose among READY spokes whose operator labels match "
        "(instead of --spoke): the least loaded relative to its size",
    )
    sp.add_argument(
        "--dry-run",
        action="store_true",
        help="rehearse: check signature, policy, profile, routing and limits, print the "
        "decision and every candidate, create nothing",
    )


def spawn_selector(args: argparse.Namespace) -> dict[str, str]:
    """The merged ``--selector`` pairs; exactly one of --spoke and --selector is required."""
    from .cli_parser import UsageError  # here: cli_parser imports this module

    merged: dict[str, str] = {}
    for part in args.selector:
        merged.update(part)
    if bool(merged) == bool(args.spoke):
        raise UsageError("spawn needs exactly one of --spoke NAME and --selector K=V[,K=V]")
    return merged


def add_spoke_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """``hubctl spoke drain|undrain NAME``."""
    sk = sub.add_parser(
        "spoke", help="act on one spoke at the hub (drain, undrain)", parents=[common]
    )
    sk.add_argument(
        "action",
        choices=["drain", "undrain"],
        help="drain: no new placements (agents there go on); undrain: place again",
    )
    sk.add_argument("name", metavar="NAME", help="the spoke's name")


async def spoke_verb(client: Client, args: argparse.Namespace, out: Out) -> int:
    if args.action == "drain":
        spoke = await client.drain_spoke(args.name)
    else:
        spoke = await client.undrain_spoke(args.name)
    if out.json:
        out.doc(spoke_json(spoke))
    elif not out.quiet:
        state = "draining" if spoke.draining else "not draining"
        out.line(f"{spoke.name} {state} ({spoke_health_text(spoke)})")
    return _EXIT_OK


async def dry_run(client: Client, args: argparse.Namespace, out: Out) -> int:
    """``spawn --dry-run``: the placement, as a table or JSON."""
    chosen = spawn_selector(args)
    placement = await client.plan_spawn(
        args.spoke or "",
        args.profile,
        " ".join(args.task),
        command_id=args.command_id,
        selector=chosen or None,
        priority=args.priority,
        timeout_s=args.agent_timeout,
        labels=dict(args.labels),
        max_attempts=args.max_attempts,
        delay_s=args.delay,
        start_within_s=args.start_within,
    )
    if out.json:
        out.doc(placement_json(placement))
    else:
        for line in placement_lines(placement):
            out.line(line)
    return _EXIT_OK if placement.spoke else _EXIT_NONE


def placement_json(placement: Placement) -> dict[str, Any]:
    doc: dict[str, Any] = json_format.MessageToDict(
        placement.raw, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    doc["signer"] = placement.signer
    return doc


def placement_lines(placement: Placement) -> list[str]:
    """The decision, then one row per spoke considered."""
    head = f"dry run: {placement.spoke or 'no spoke'} — {placement.reason}"
    rows = [["SPOKE", "CHOSEN", "LOAD", "REASON"]]
    rows += [
        [
            c.spoke,
            "yes" if c.chosen else "",
            f"{c.load}/{c.capacity}" if c.capacity else "-",
            c.reason,
        ]
        for c in placement.candidates
    ]
    return [head, *(table(rows) if placement.candidates else [])]
