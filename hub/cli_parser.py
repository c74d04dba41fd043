"""The argparse tree of ``hubctl`` (:func:`build_parser`): every verb's options, the examples
shown under each verb's ``--help``, and the type checks of option values. A bad argument raises
:class:`UsageError`; :mod:`hubspoke.hub.cli` runs the verbs and picks the exit code.
"""

from __future__ import annotations

import argparse
import importlib.metadata
from pathlib import Path
from typing import Final, NoReturn

from hubspoke.client import AgentState

from . import (
    cli_audit,
    cli_certs,
    cli_completion,
    cli_enrol,
    cli_events,
    cli_init,
    cli_keys,
    cli_modes_args,
    cli_outbox,
    cli_send,
)
from .cli_routing import add_spawn_options, add_spoke_parser

DEFAULT_RPC_TIMEOUT_S: Final = 15.0

_EPILOG: Final = """\
exit codes:
  0  ok (with --wait: the agent SUCCEEDED)
  1  the hub or a spoke refused or failed the command (with --wait: the agent ended
     FAILED, KILLED, TIMED_OUT, DEAD_LETTERED, EXPIRED or SHADOWED)
  2  usage or config error
  3  not found (NOT_FOUND)
  4  not allowed (UNAUTHENTICATED, PERMISSION_DENIED)
  5  hub or spoke unavailable (UNAVAILABLE, DEADLINE_EXCEEDED); safe to retry
  6  with --wait: the agent is NEEDS_INPUT (its receipt said blocked)
  7  with --wait: the agent is NEEDS_VERIFICATION (items wait for hubctl verify)
  8  with --wait: the agent is AWAITING_APPROVAL (it waits for hubctl approve)

environment: HUBCTL_CONFIG (--config), HUBCTL_HUB (--hub), HUBCTL_TIMEOUT (--timeout).
"""
# Shown under each verb's --help; tests/hub/test_cli_examples.py parses every one of them.
EXAMPLES: Final[dict[str, tuple[str, ...]]] = {
    "keygen": ("hubctl keygen --out keys --name alice",),
    "spoke": ("hubctl spoke drain spoke-2", "hubctl --json spoke undrain spoke-2"),
    "spawn": (
        "hubctl spawn --spoke spoke-1 -- duration=5 steps=5",
        "hubctl spawn --selector gpu=yes,zone=a -- duration=60",
        "hubctl spawn --selector gpu=yes --dry-run -- duration=1",
        "hubctl spawn --spoke build-2 --profile tests --timeout 1800 --wait -- tests/test_api.py",
        "hubctl spawn --spoke spoke-1 --id nightly-2026-11-30 --priority 8 --label team=infra "
        "-- duration=1",
        "hubctl spawn --spoke spoke-1 --delay 600 -- duration=1",
    ),
    "status": ("hubctl status AGENT", "hubctl status AGENT --wait", "hubctl --json status AGENT"),
    "verify": ("hubctl verify AGENT --item tests=passed --item lint=failed",),
    "approve": (
        "hubctl list --state AWAITING_APPROVAL",
        'hubctl approve AGENT --reason "read the plan; fine"',
    ),
    "reject": ('hubctl reject AGENT --reason "not during the freeze"',),
    "kill": ("hubctl kill AGENT", "hubctl kill spokes/spoke-1/agents/AGENT"),
    "list": (
        "hubctl list",
        "hubctl list --spoke spoke-1 --state FAILED --state DEAD_LETTERED",
        "hubctl --json list --page-size 10",
        "hubctl list --label team=infra --profile synthetic --owner operator",
        "hubctl list --spoke spoke-1 --page-size 10 --page-token TOKEN",
    ),
    "spokes": ("hubctl spokes", "hubctl --json spokes"),
    "watch": ("hubctl watch AGENT", "hubctl watch AGENT --after 12"),
    "queue": (
        "hubctl queue stats",
        "hubctl queue stats --spoke spoke-1",
        "hubctl queue pause --spoke spoke-1",
    ),
    "dlq": ("hubctl dlq list --spoke spoke-1", "hubctl dlq replay AGENT --spoke spoke-1"),
    "certs": ("hubctl certs init --out tls --name hub --name build-2 --name alice",),
    "keys": (
        "hubctl keys rotate --out keys --name alice --trust trust.toml",
        "hubctl keys revoke --trust trust.toml --key ed25519:BASE64",
    ),
    "init": (
        "hubctl init hub --name hub --out /etc/hubspoke --address hub-host --operator alice",
        "hubctl init spoke --name build-2 --out /etc/hubspoke --address build-host",
    ),
    "ui": ("hubctl ui", "hubctl ui --port 8800 --no-browser"),
    **cli_modes_args.EXAMPLES,
    **cli_send.EXAMPLES,
    **cli_events.EXAMPLES,
    **cli_audit.EXAMPLES,
    **cli_outbox.EXAMPLES,
}
"""Example command lines per verb (``AGENT`` stands for an agent id)."""


class UsageError(Exception):
    """Bad arguments or config: exit 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports ``Error: ...`` in one line and lets ``main`` pick the exit code."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _common(timeout: bool) -> _Parser:
    """Options accepted after the verb too; SUPPRESS keeps the global value when absent."""
    p = _Parser(add_help=False)
    sup = argparse.SUPPRESS
    p.add_argument("--config", type=Path, default=sup, help=sup)
    p.add_argument("--hub", default=sup, help=sup)
    if timeout:
        p.add_argument("--timeout", dest="rpc_timeout", type=seconds, default=sup, help=sup)
    p.add_argument("--json", action="store_true", default=sup, help=sup)
    p.add_argument("-q", "--quiet", action="store_true", default=sup, help=sup)
    p.add_argument("--debug", action="store_true", default=sup, help=sup)
    return p


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"label must be key=value, got {text!r}")
    return key, value


def _verdict(text: str) -> tuple[str, str]:
    """``NAME=passed`` or ``NAME=failed`` (the name may itself contain ``=``)."""
    name, sep, verdict = text.rpartition("=")
    if not sep or not name or verdict not in ("passed", "failed"):
        raise argparse.ArgumentTypeError(f"item must be NAME=passed or NAME=failed, got {text!r}")
    return name, verdict


def _priority(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 1 <= value <= 10:
        raise argparse.ArgumentTypeError(f"priority must be 1-10, got {text!r}")
    return value


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def _state(text: str) -> AgentState:
    try:
        return AgentState.parse(text)
    except ValueError:
        names = ", ".join(s.name for s in AgentState if s != AgentState.UNSPECIFIED)
        raise argparse.ArgumentTypeError(f"unknown state {text!r}; one of {names}") from None


def _version() -> str:
    try:
        return importlib.metadata.version("hubspoke")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that is not installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="hubctl",
        description="Operate a Hubspoke federation through its hub.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config", type=Path, metavar="FILE", help="hubctl TOML config (or HUBCTL_CONFIG)"
    )
    p.add_argument(
        "--hub", metavar="ADDR", help="hub address host:port (or HUBCTL_HUB; overrides the config)"
    )
    p.add_argument(
        "--timeout",
        dest="rpc_timeout",
        type=seconds,
        metavar="SECONDS",
        help=f"RPC deadline in seconds (or HUBCTL_TIMEOUT; default {DEFAULT_RPC_TIMEOUT_S:g})",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the essentials")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.add_argument("--version", action="version", version=f"hubctl {_version()}")
    sub = p.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    sub.required = True
    common, common_no_timeout = _common(timeout=True), _common(timeout=False)

    kg = sub.add_parser("keygen", help="generate an Ed25519 keypair", parents=[common])
    kg.add_argument("--out", type=Path, required=True, help="directory for NAME.key and NAME.pub")
    kg.add_argument("--name", required=True, help="peer name the key belongs to")

    sp = sub.add_parser(
        "spawn",
        help="start an agent on a spoke",
        parents=[common_no_timeout],
        usage="%(prog)s (--spoke NAME | --selector K=V[,K=V]) [--dry-run] [--profile P] "
        "[--priority 1-10] [--timeout SECONDS] "
        "[--id COMMAND_ID] [--max-attempts N] [--label k=v]... [--wait] -- TASK...",
    )
    where = sp.add_mutually_exclusive_group(required=True)
    where.add_argument("--spoke", default="", help="the spoke to run on (or --selector)")
    add_spawn_options(sp, where)  # --selector, --dry-run (cli_routing.py)
    sp.add_argument("--profile", default="synthetic", help="profile name (default synthetic)")
    sp.add_argument("--priority", type=_priority, default=0, help="1 (low) to 10 (urgent)")
    sp.add_argument(
        "--timeout",
        "--run-timeout",
        dest="agent_timeout",
        type=seconds,
        default=None,
        metavar="SECONDS",
        help="the agent's maximum run time in seconds (here, not the RPC deadline)",
    )
    sp.add_argument("--id", dest="command_id", help="command id (idempotency key; default UUID)")
    sp.add_argument("--max-attempts", type=int, default=0, help="attempts in all (0: default)")
    sp.add_argument(
        "--label", dest="labels", type=_label, action="append", default=[], help="key=value"
    )
    sp.add_argument(
        "--delay",
        type=seconds,
        default=None,
        metavar="SECONDS",
        help="do not start before this many seconds have passed since its acceptance",
    )
    sp.add_argument(
        "--start-within",
        type=seconds,
        default=None,
        metavar="SECONDS",
        help="it may start until its acceptance plus this, else it ends EXPIRED "
        "(default: the profile's, else the spoke's, normally 24 h)",
    )
    dd = sp.add_mutually_exclusive_group()
    dd.add_argument(
        "--dedupe-key",
        metavar="KEY",
        default="",
        help="while an agent of yours with this key is not final, return it instead of "
        "starting another (KEY: 1-128 of A-Z a-z 0-9 . _ -)",
    )
    dd.add_argument(
        "--dedupe-task",
        action="store_true",
        help="the same, with a key derived from the profile and the task",
    )
    sp.add_argument(
        "--wait",
        action="store_true",
        help="wait until the agent ends or waits on a person; exit by its state: 0 SUCCEEDED, "
        "1 FAILED/KILLED/TIMED_OUT/DEAD_LETTERED/EXPIRED/REJECTED/SHADOWED, 6 NEEDS_INPUT, "
        "7 NEEDS_VERIFICATION, 8 AWAITING_APPROVAL",
    )
    sp.add_argument("task", nargs="+", metavar="TASK", help="task words, joined by spaces")

    st = sub.add_parser("status", help="show one agent", parents=[common])
    st.add_argument("agent", metavar="AGENT", help="agent id or spokes/{spoke}/agents/{id}")
    st.add_argument("--spoke", help="the spoke that runs it (default: the hub finds it)")
    st.add_argument(
        "--wait", action="store_true", help="wait as spawn --wait does, with its exit codes"
    )

    vf = sub.add_parser(
        "verify",
        help="settle verification items of a NEEDS_VERIFICATION agent",
        parents=[common],
        usage="%(prog)s AGENT --item NAME=passed|failed [--item ...] [--spoke NAME]",
    )
    vf.add_argument("agent", metavar="AGENT", help="agent id or spokes/{spoke}/agents/{id}")
    vf.add_argument(
        "--item",
        dest="items",
        type=_verdict,
        action="append",
        required=True,
        metavar="NAME=passed|failed",
        help="a verification item's name (as status shows it) and its verdict; repeatable",
    )
    vf.add_argument("--spoke", help="the spoke that runs it (default: the hub finds it)")

    for verb, what in (
        ("approve", "approve an AWAITING_APPROVAL agent (as one of its approvers)"),
        ("reject", "reject an AWAITING_APPROVAL agent: it ends REJECTED, never runs"),
    ):
        ap = sub.add_parser(verb, help=what, parents=[common])
        ap.add_argument("agent", metavar="AGENT", help="agent id or spokes/{spoke}/agents/{id}")
        ap.add_argument(
            "--reason",
            default="",
            help="why, kept with the signed approval (at most 1,024 characters)",
        )
        ap.add_argument("--spoke", help="the spoke that holds it (default: the hub finds it)")

    kl = sub.add_parser("kill", help="stop an agent", parents=[common])
    kl.add_argument("agent", metavar="AGENT", help="agent id or spokes/{spoke}/agents/{id}")
    kl.add_argument("--spoke", help="the spoke that runs it (default: the hub finds it)")

    ls = sub.add_parser("list", help="list agents", parents=[common])
    ls.add_argument("--spoke", help="one spoke (default: every spoke)")
    ls.add_argument(
        "--state", dest="states", type=_state, action="append", default=[], help="repeatable"
    )
    ls.add_argument("--page-size", type=int, default=50, help="agents per spoke (default 50)")
    ls.add_argument(
        "--label",
        dest="labels",
        type=_label,
        action="append",
        default=[],
        help="only agents with this label, key=value (repeatable: all must match)",
    )
    ls.add_argument("--profile", default="", help="only agents of this profile")
    ls.add_argument("--owner", default="", help="only agents this principal spawned")
    ls.add_argument("--dedupe-key", default="", metavar="KEY", help="only agents with this key")
    ls.add_argument(
        "--page-token",
        default="",
        help="the next page of one spoke, as the previous page printed it (needs --spoke)",
    )

    sub.add_parser("spokes", help="list the hub's spokes and their health", parents=[common])
    add_spoke_parser(sub, common)  # hubctl spoke drain|undrain NAME
    cli_enrol.add_parser(sub, common)  # hubctl spoke enroll|remove|members

    wt = sub.add_parser(
        "watch", help="follow an agent's state, progress and output live", parents=[common]
    )
    wt.add_argument("agent", metavar="AGENT", help="agent id or spokes/{spoke}/agents/{id}")
    wt.add_argument("--spoke", help="the spoke that runs it (default: the hub's index)")
    wt.add_argument(
        "--after",
        type=int,
        default=0,
        metavar="SEQ",
        help="resume after this event sequence number (default: from the start)",
    )

    qu = sub.add_parser(
        "queue", help="a spoke's queue: stats, pause, resume, drain", parents=[common]
    )
    qu.add_argument("action", choices=["stats", "pause", "resume", "drain"])
    qu.add_argument(
        "--spoke", help="the spoke whose queue (stats without it: every spoke, and the totals)"
    )

    dl = sub.add_parser("dlq", help="a spoke's dead-letter set: list, replay", parents=[common])
    dl.add_argument("action", choices=["list", "replay"])
    dl.add_argument("agent", nargs="?", metavar="AGENT", help="for replay: the agent to run again")
    dl.add_argument("--spoke", help="the spoke (required for list)")
    dl.add_argument("--page-size", type=int, default=50, help="agents per page (default 50)")

    cli_certs.add_parser(sub, common)
    cli_keys.add_parser(sub, common)
    cli_init.add_parser(sub, common)
    cli_completion.add_parser(sub, common)
    cli_modes_args.add_parsers(sub, common)
    cli_send.add_parser(sub, common)
    cli_events.add_parser(sub, common)
    cli_audit.add_parser(sub, common)
    cli_outbox.add_parser(sub, common)

    ui = sub.add_parser(
        "ui", help="serve the web console on 127.0.0.1 (needs hubspoke[ui])", parents=[common]
    )
    ui.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default 0: a free one)")
    ui.add_argument("--no-browser", action="store_true", help="print the URL, do not open it")

    dev = sub.add_parser("dev", help="run a local federation (hubctl dev --help)", add_help=False)
    dev.add_argument("dev_args", nargs=argparse.REMAINDER)
    for verb, lines in EXAMPLES.items():
        verb_parser = sub.choices[verb]
        examples = "examples:\n" + "".join(f"  {line}\n" for line in lines)
        verb_parser.epilog = (
            f"{verb_parser.epilog}\n\n{examples}" if verb_parser.epilog else examples
        )
        verb_parser.formatter_class = argparse.RawDescriptionHelpFormatter
    return p
