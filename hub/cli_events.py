"""``hubctl events``: the event feed, one line per state change (hub/cli.py runs it).

Each line: time, spoke, agent, state, reason (``-`` for none). Without ``--follow`` it
prints what the spokes keep after ``--since`` and exits; with it, it goes on live. The
resume token (``spoke=cursor,...``) goes to stderr at the end, or after every line with
``--follow`` (``--json``: each line's ``token``); ``--since TOKEN`` resumes after it, with
no gap and no repeat. A spoke the hub cannot reach, and entries the spoke no longer keeps,
are said on stderr (``--json``: lines of kind ``UNREACHABLE`` / ``GAP``); an unreachable
spoke makes the exit code 5.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Final

from hubspoke.client import AgentState, Client, FeedEvent, FeedKind

from .cli_output import Out, escape

__all__ = ["EXAMPLES", "add_parser", "run"]

EXAMPLES: Final[dict[str, tuple[str, ...]]] = {
    "events": (
        "hubctl events",
        "hubctl events --follow --state FAILED --state NEEDS_INPUT",
        "hubctl events --spoke spoke-1 --since spoke-1=120",
        "hubctl --json events --follow",
    ),
}

EXIT_UNREACHABLE: Final = 5


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    ev = sub.add_parser(
        "events",
        help="state changes of every agent you may see, across spokes (--follow: live)",
        parents=[common],
    )
    ev.add_argument("--follow", "-f", action="store_true", help="go on with new changes live")
    ev.add_argument("--spoke", help="only this spoke's agents (default: every spoke)")
    ev.add_argument(
        "--state",
        dest="states",
        action="append",
        default=[],
        metavar="STATE",
        help="only changes into this state (repeatable)",
    )
    ev.add_argument(
        "--since",
        default="",
        metavar="TOKEN",
        help="resume after this token (spoke=cursor,..., as a previous run printed it)",
    )


def _check(args: argparse.Namespace) -> list[AgentState]:
    from . import cli_parser  # it imports this module to build the parser

    states: list[AgentState] = []
    for text in args.states:
        try:
            states.append(AgentState.parse(text))
        except ValueError:
            raise cli_parser.UsageError(f"--state: unknown state {text!r}") from None
    return states


def event_doc(event: FeedEvent) -> dict[str, object]:
    """One ``--json`` line."""
    doc: dict[str, object] = {
        "kind": event.kind.name,
        "spoke": event.spoke,
        "cursor": event.cursor,
        "token": event.token,
    }
    if event.kind == FeedKind.EVENT:
        doc |= {
            "agent_id": event.agent_id,
            "state": event.state.name,
            "reason": event.reason,
            "owner": event.owner,
            "sequence": event.sequence,
            "time": event.event_time.isoformat() if event.event_time else "",
        }
    if event.detail:
        doc["detail"] = event.detail
    return doc


def line_of(event: FeedEvent) -> str:
    when = (
        event.event_time.strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z" if event.event_time else "-"
    )
    return " ".join(
        [
            when,
            escape(event.spoke),
            escape(event.agent_id),
            event.state.name,
            escape(event.reason) or "-",
        ]
    )


async def run(client: Client, args: argparse.Namespace, out: Out) -> int:
    from . import cli_parser

    states = _check(args)
    try:
        feed = client.events(
            spoke=args.spoke, states=states, since=args.since or None, follow=args.follow
        )
        token = args.since
        unreachable = False
        async for event in feed:
            token = event.token
            unreachable = unreachable or event.kind == FeedKind.UNREACHABLE
            if out.json:
                if event.kind != FeedKind.HEARTBEAT:
                    print(json.dumps(event_doc(event), sort_keys=True), flush=True)
                continue
            if event.kind == FeedKind.EVENT:
                print(line_of(event), flush=True)
                if args.follow and not out.quiet:
                    print(f"since {token}", file=sys.stderr, flush=True)
            elif event.kind == FeedKind.UNREACHABLE:
                print(
                    f"Warning: spoke {escape(event.spoke)} unreachable: {escape(event.detail)}",
                    file=sys.stderr,
                    flush=True,
                )
            elif event.kind == FeedKind.GAP:
                print(
                    f"Warning: spoke {escape(event.spoke)}: {escape(event.detail)}",
                    file=sys.stderr,
                    flush=True,
                )
    except ValueError as exc:  # a malformed --since
        raise cli_parser.UsageError(f"--since: {exc}") from None
    if not out.quiet:  # stderr, also with --json: the resume token after the last entry
        print(f"since {token}", file=sys.stderr, flush=True)
    return EXIT_UNREACHABLE if unreachable else 0
