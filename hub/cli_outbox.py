"""``hubctl outbox list``: the commands the hub holds for spokes it could not reach."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, Final

from .cli_output import Out, seen_ago, table

if TYPE_CHECKING:
    from hubspoke.client import Client

__all__ = ["EXAMPLES", "add_parser", "run"]

EXAMPLES: Final[dict[str, tuple[str, ...]]] = {
    "outbox": (
        "hubctl outbox list",
        "hubctl outbox list --spoke build-2",
        "hubctl --json outbox list --limit 500",
    ),
}


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    ob = sub.add_parser(
        "outbox",
        help="commands the hub holds for unreachable spokes (delivered when they are back)",
        parents=[common],
    )
    ob.add_argument("action", choices=["list"])
    ob.add_argument("--spoke", help="only this spoke's entries")
    ob.add_argument(
        "--limit", type=int, default=100, help="how many entries (default 100, at most 1000)"
    )


async def run(client: Client, args: argparse.Namespace, out: Out) -> int:
    from . import cli_parser  # not at the top: cli_parser imports this module

    if not 1 <= args.limit <= 1000:
        raise cli_parser.UsageError(f"--limit must be 1-1000, got {args.limit}")
    held = await client.outbox(args.spoke, args.limit)
    if out.json:
        out.doc(
            {
                "total": held.total,
                "entries": [
                    {
                        "spoke": i.spoke,
                        "kind": i.kind,
                        "agent": i.agent,
                        "command_id": i.command_id,
                        "principal": i.principal,
                        "accept_time": i.accept_time.isoformat() if i.accept_time else None,
                        "start_deadline": (
                            i.start_deadline.isoformat() if i.start_deadline else None
                        ),
                        "attempts": i.attempts,
                        "last_error": i.last_error,
                    }
                    for i in held.items
                ],
            }
        )
        return 0
    rows = [["SPOKE", "KIND", "AGENT", "PRINCIPAL", "ACCEPTED", "DEADLINE", "ATTEMPTS"]]
    rows += [
        [
            i.spoke,
            i.kind,
            i.agent,
            i.principal,
            seen_ago(i.accept_time),
            i.start_deadline.strftime("%Y-%m-%d %H:%M:%S") if i.start_deadline else "-",
            str(i.attempts),
        ]
        for i in held.items
    ]
    for line in table(rows if not out.quiet else rows[1:] or [[""]]):
        out.line(line)
    if held.total > len(held.items):
        out.line(f"({held.total - len(held.items)} more; --limit to see them)")
    return 0
