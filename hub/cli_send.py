"""``hubctl send``: its argparse entry and where its text comes from (hub/cli.py runs it).

``hubctl send AGENT -- TEXT...`` sends the words joined by spaces; ``--file F`` sends a
file's content instead, ``--file -`` standard input (UTF-8, as is). The hub and the spoke
bound the text (``max_input_bytes``, 64 KiB by default).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Final

__all__ = ["EXAMPLES", "add_parser", "message_of"]

EXAMPLES: Final[dict[str, tuple[str, ...]]] = {
    "send": (
        "hubctl send AGENT -- yes, use the staging database",
        "hubctl send AGENT --file answer.txt",
        "hubctl send AGENT --file -",
    ),
}


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    sd = sub.add_parser(
        "send",
        help="send text to an agent: a running agent's inbox, or the answer that resumes a "
        "NEEDS_INPUT agent",
        parents=[common],
        usage="%(prog)s AGENT [--spoke NAME] (-- TEXT... | --file F | --file -)",
    )
    sd.add_argument("--spoke", help="the spoke that holds it (default: the hub finds it)")
    sd.add_argument(
        "--file",
        metavar="F",
        help="send this file's content (UTF-8) instead of TEXT; - reads standard input",
    )
    sd.add_argument(
        "words",
        nargs="+",
        metavar="AGENT [TEXT]",
        help="agent id or spokes/{spoke}/agents/{id}, then the message, words joined by spaces",
    )
    # argparse fills every positional at the first positional word, so the words of
    # "send AGENT --json -- TEXT" after the option come back unrecognized: they are the text.
    parse = sd.parse_known_args

    def parse_known_args(
        args: Any = None, namespace: Any = None
    ) -> tuple[argparse.Namespace, list[str]]:
        ns, extras = parse(args, namespace)
        if extras and extras[0] == "--":
            ns.words, extras = [*ns.words, *extras[1:]], []
        elif extras and not any(e.startswith("-") for e in extras):
            ns.words, extras = [*ns.words, *extras], []
        return ns, extras

    setattr(sd, "parse_known_args", parse_known_args)  # noqa: B010 - an instance's own


def message_of(args: argparse.Namespace) -> tuple[str, str]:
    """The agent and the message ``send``'s arguments name (module docstring); UsageError if
    no message or two."""
    from . import cli_parser  # it imports this module to build the parser

    agent, words = args.words[0], args.words[1:]
    if args.file is not None and words:
        raise cli_parser.UsageError("send takes TEXT or --file, not both")
    if args.file is None:
        if not words:
            raise cli_parser.UsageError("send needs a message: -- TEXT..., --file F or --file -")
        return agent, " ".join(words)
    try:
        raw = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as exc:
        raise cli_parser.UsageError(f"cannot read {args.file}: {exc.strerror}") from None
    try:
        return agent, raw.decode("utf-8")
    except UnicodeDecodeError:
        raise cli_parser.UsageError(f"{args.file} is not UTF-8 text") from None
