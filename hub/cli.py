"""``hubctl``: operate a Hubspoke federation through its hub.

argv → :class:`hubspoke.client.Client` → stdout and an exit code. Results go to stdout
(``--json``: one JSON document, proto-JSON with snake_case names; otherwise text with every
control character escaped, see ``cli_output``); errors go to stderr as one line
``Error: <message> [<REASON>]``. Errors are converted here, once.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.metadata
import json
import os
import re
import sys
import traceback
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Final, NoReturn

import grpc

from hubspoke import keys
from hubspoke.client import (
    Agent,
    AgentState,
    CallError,
    Client,
    ClientConfigError,
    EventKind,
    client_from_config,
)

from . import cli_certs, cli_completion, cli_init, cli_keys
from .cli_output import (
    Out,
    agent_json,
    agent_lines,
    capacity_text,
    escape,
    event_json,
    event_text,
    seen_ago,
    spoke_health_text,
    spoke_json,
    stats_json,
    table,
    write_chunk,
)

__all__ = ["EXIT_CODES", "agent_json", "main", "spoke_json"]

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
EXIT_NOT_FOUND: Final = 3
EXIT_DENIED: Final = 4
EXIT_UNAVAILABLE: Final = 5
EXIT_NEEDS_INPUT: Final = 6
EXIT_NEEDS_VERIFICATION: Final = 7
EXIT_INTERRUPTED: Final = 130

EXIT_CODES: Final = {
    grpc.StatusCode.NOT_FOUND: EXIT_NOT_FOUND,
    grpc.StatusCode.UNAUTHENTICATED: EXIT_DENIED,
    grpc.StatusCode.PERMISSION_DENIED: EXIT_DENIED,
    grpc.StatusCode.UNAVAILABLE: EXIT_UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: EXIT_UNAVAILABLE,
}
"""gRPC codes with their own exit code; any other failed call exits 1."""

DEFAULT_RPC_TIMEOUT_S: Final = 15.0

_EPILOG: Final = """\
exit codes:
  0  ok (with --wait: the agent SUCCEEDED)
  1  the hub or a spoke refused or failed the command (with --wait: the agent ended
     FAILED, KILLED, TIMED_OUT, DEAD_LETTERED or EXPIRED)
  2  usage or config error
  3  not found (NOT_FOUND)
  4  not allowed (UNAUTHENTICATED, PERMISSION_DENIED)
  5  hub or spoke unavailable (UNAVAILABLE, DEADLINE_EXCEEDED); safe to retry
  6  with --wait: the agent is NEEDS_INPUT (its receipt said blocked)
  7  with --wait: the agent is NEEDS_VERIFICATION (items wait for hubctl verify)

environment: HUBCTL_CONFIG (--config), HUBCTL_HUB (--hub), HUBCTL_TIMEOUT (--timeout).
"""
# Shown under each verb's --help; tests/hub/test_cli_examples.py parses every one of them.
EXAMPLES: Final[dict[str, tuple[str, ...]]] = {
    "keygen": ("hubctl keygen --out keys --name alice",),
    "spawn": (
        "hubctl spawn --spoke spoke-1 -- duration=5 steps=5",
        "hubctl spawn --spoke build-2 --profile tests --timeout 1800 --wait -- tests/test_api.py",
        "hubctl spawn --spoke spoke-1 --id nightly-2026-11-30 --priority 8 --label team=infra "
        "-- duration=1",
        "hubctl spawn --spoke spoke-1 --delay 600 -- duration=1",
    ),
    "status": ("hubctl status AGENT", "hubctl status AGENT --wait", "hubctl --json status AGENT"),
    "verify": ("hubctl verify AGENT --item tests=passed --item lint=failed",),
    "kill": ("hubctl kill AGENT", "hubctl kill spokes/spoke-1/agents/AGENT"),
    "list": (
        "hubctl list",
        "hubctl list --spoke spoke-1 --state FAILED --state DEAD_LETTERED",
        "hubctl --json list --page-size 10",
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
}
"""Example command lines per verb (``AGENT`` stands for an agent id)."""

_KEY_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


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
        p.add_argument("--timeout", dest="rpc_timeout", type=_seconds, default=sup, help=sup)
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


def _seconds(text: str) -> float:
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
        type=_seconds,
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
        usage="%(prog)s --spoke NAME [--profile P] [--priority 1-10] [--timeout SECONDS] "
        "[--id COMMAND_ID] [--max-attempts N] [--label k=v]... [--wait] -- TASK...",
    )
    sp.add_argument("--spoke", required=True, help="the spoke to run on")
    sp.add_argument("--profile", default="synthetic", help="profile name (default synthetic)")
    sp.add_argument("--priority", type=_priority, default=0, help="1 (low) to 10 (urgent)")
    sp.add_argument(
        "--timeout",
        "--run-timeout",
        dest="agent_timeout",
        type=_seconds,
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
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="do not start before this many seconds have passed since its acceptance",
    )
    sp.add_argument(
        "--start-within",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="it may start until its acceptance plus this, else it ends EXPIRED "
        "(default: the profile's, else the spoke's, normally 24 h)",
    )
    sp.add_argument(
        "--wait",
        action="store_true",
        help="wait until the agent ends or waits on a person; exit by its state: 0 SUCCEEDED, "
        "1 FAILED/KILLED/TIMED_OUT/DEAD_LETTERED/EXPIRED, 6 NEEDS_INPUT, 7 NEEDS_VERIFICATION",
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

    kl = sub.add_parser("kill", help="stop an agent", parents=[common])
    kl.add_argument("agent", metavar="AGENT", help="agent id or spokes/{spoke}/agents/{id}")
    kl.add_argument("--spoke", help="the spoke that runs it (default: the hub finds it)")

    ls = sub.add_parser("list", help="list agents", parents=[common])
    ls.add_argument("--spoke", help="one spoke (default: every spoke)")
    ls.add_argument(
        "--state", dest="states", type=_state, action="append", default=[], help="repeatable"
    )
    ls.add_argument("--page-size", type=int, default=50, help="agents per spoke (default 50)")

    sub.add_parser("spokes", help="list the hub's spokes and their health", parents=[common])

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


# -- output ---------------------------------------------------------------------------------


def _show_agent(out: Out, agent: Agent, brief: bool = False) -> None:
    if out.json:
        out.doc(agent_json(agent))
    elif out.quiet:
        out.line(escape(agent.agent_id) if brief else agent.state.name)
    elif brief:
        out.line(f"{escape(agent.agent_id)}\t{escape(agent.spoke)}\t{agent.state.name}")
    else:
        for line in agent_lines(agent):
            out.line(line)


# -- verbs -----------------------------------------------------------------------------------


_WAIT_EXITS: Final = {
    AgentState.SUCCEEDED: EXIT_OK,
    AgentState.NEEDS_INPUT: EXIT_NEEDS_INPUT,
    AgentState.NEEDS_VERIFICATION: EXIT_NEEDS_VERIFICATION,
}


def _exit_for(agent: Agent) -> int:
    """``--wait``'s exit code: by the state the agent settled in (any other: 1)."""
    return _WAIT_EXITS.get(agent.state, EXIT_FAILURE)


async def _spawn(client: Client, args: argparse.Namespace, out: Out) -> int:
    agent = await client.spawn(
        args.spoke,
        args.profile,
        " ".join(args.task),
        priority=args.priority,
        timeout_s=args.agent_timeout,
        command_id=args.command_id,
        labels=dict(args.labels),
        max_attempts=args.max_attempts,
        delay_s=args.delay,
        start_within_s=args.start_within,
    )
    if not args.wait:
        _show_agent(out, agent, brief=True)
        return EXIT_OK
    agent = await client.wait(agent)
    _show_agent(out, agent)
    return _exit_for(agent)


async def _status(client: Client, args: argparse.Namespace, out: Out) -> int:
    agent = await client.get(args.agent, args.spoke)
    if args.wait:
        agent = await client.wait(agent)
    _show_agent(out, agent)
    return _exit_for(agent) if args.wait else EXIT_OK


async def _verify(client: Client, args: argparse.Namespace, out: Out) -> int:
    agent = await client.verify(args.agent, dict(args.items), args.spoke)
    _show_agent(out, agent)
    return EXIT_OK


async def _kill(client: Client, args: argparse.Namespace, out: Out) -> int:
    agent = await client.kill(args.agent, args.spoke)
    _show_agent(out, agent, brief=True)
    return EXIT_OK


async def _list(client: Client, args: argparse.Namespace, out: Out) -> int:
    result = await client.list(args.spoke, args.page_size, args.states)
    if out.json:
        out.doc(
            {
                "agents": [agent_json(a) for a in result.agents],
                "unreachable_spokes": list(result.unreachable_spokes),
                "unreachable_reasons": dict(result.unreachable_reasons),
            }
        )
        return EXIT_OK
    if out.quiet:
        for a in result.agents:
            out.line(escape(a.agent_id))
        return EXIT_OK
    rows = [["AGENT", "SPOKE", "STATE", "PROFILE", "CREATED"]]
    rows += [
        [
            a.agent_id,
            a.spoke,
            a.state.name,
            a.profile,
            a.raw.create_time.ToJsonString() if a.create_time is not None else "",
        ]
        for a in result.agents
    ]
    for line in table(rows):
        out.line(line)
    if result.unreachable_spokes:
        unreachable = ", ".join(
            escape(s) + (f" ({escape(why)})" if (why := result.unreachable_reasons.get(s)) else "")
            for s in result.unreachable_spokes
        )
        print(f"unreachable: {unreachable}", file=sys.stderr)
    return EXIT_OK


async def _spokes(client: Client, args: argparse.Namespace, out: Out) -> int:
    spokes = await client.spokes()
    if out.json:
        out.doc({"spokes": [spoke_json(s) for s in spokes]})
        return EXIT_OK
    rows = [["NAME", "ADDRESS", "HEALTH", "LAST SEEN", "CAPACITY", "CIRCUIT", "LABELS"]]
    rows += [
        [
            s.name,
            s.address,
            spoke_health_text(s),
            seen_ago(s.last_seen_time),
            capacity_text(s),
            s.circuit.name.lower() if s.circuit else "-",
            ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())),
        ]
        for s in spokes
    ]
    for line in table(rows if not out.quiet else rows[1:] or [[""]]):
        out.line(line)
    return EXIT_OK


async def _watch(client: Client, args: argparse.Namespace, out: Out) -> int:
    """Events as they come; output chunks go to stdout/stderr, the rest as lines."""
    final: AgentState | None = None
    async for event in client.watch(args.agent, args.spoke, args.after):
        kind = event.kind
        if kind == EventKind.STATE and event.state.final:
            final = event.state
        if out.json:
            if kind != EventKind.HEARTBEAT:
                print(json.dumps(event_json(event), sort_keys=True), flush=True)
            continue
        if kind in (EventKind.STDOUT, EventKind.STDERR):
            write_chunk(event.data, stderr=kind == EventKind.STDERR)
        elif not out.quiet and (text := event_text(event)) is not None:
            print(text, file=sys.stderr, flush=True)
    return EXIT_OK if final == AgentState.SUCCEEDED else EXIT_FAILURE


async def _queue(client: Client, args: argparse.Namespace, out: Out) -> int:
    if not args.spoke:
        if args.action != "stats":
            raise UsageError(f"queue {args.action} needs --spoke")
        return await _queue_stats_all(client, out)
    action = {
        "stats": client.queue_stats,
        "pause": client.pause,
        "resume": client.resume,
        "drain": client.drain,
    }[args.action]
    stats = await action(args.spoke)
    doc = stats_json(stats)
    if args.action != "drain":
        doc.pop("drained", None)
    if out.json:
        out.doc(doc)
    else:
        for key, value in doc.items():
            out.line(f"{key:<10} {value}")
    return EXIT_OK


async def _queue_stats_all(client: Client, out: Out) -> int:
    """Per-spoke rows and the federation's totals; spokes that gave none, and why."""
    result = await client.queue_stats_all()
    if out.json:
        spokes = {name: stats_json(s) for name, s in sorted(result.per_spoke.items())}
        for doc in spokes.values():
            doc.pop("drained", None)
        out.doc(
            {
                "spokes": spokes,
                "totals": result.totals,
                "unreachable_spokes": list(result.unreachable_spokes),
                "unreachable_reasons": dict(result.unreachable_reasons),
            }
        )
        return EXIT_OK
    cols = ("waiting", "delayed", "active", "completed", "failed", "workers")
    rows = [["SPOKE", *(c.upper() for c in cols), "PAUSED"]]
    for name, s in sorted(result.per_spoke.items()):
        rows.append([name, *(str(getattr(s, c)) for c in cols), "yes" if s.paused else "no"])
    totals = result.totals
    rows.append(["TOTAL", *(str(totals[c]) for c in cols), str(totals["paused"])])
    for line in table(rows):
        out.line(line)
    if result.unreachable_spokes:
        unreachable = ", ".join(
            escape(s) + (f" ({escape(why)})" if (why := result.unreachable_reasons.get(s)) else "")
            for s in result.unreachable_spokes
        )
        print(f"unreachable: {unreachable}", file=sys.stderr)
    return EXIT_OK


async def _dlq(client: Client, args: argparse.Namespace, out: Out) -> int:
    if args.action == "replay":
        if not args.agent:
            raise UsageError("dlq replay needs AGENT")
        _show_agent(out, await client.replay(args.agent, args.spoke), brief=True)
        return EXIT_OK
    if not args.spoke:
        raise UsageError("dlq list needs --spoke")
    page = await client.dead_letters(args.spoke, args.page_size)
    if out.json:
        out.doc(
            {
                "agents": [agent_json(a) for a in page.agents],
                "next_page_token": page.next_page_token,
            }
        )
        return EXIT_OK
    rows = [["AGENT", "STATE", "REASON", "ATTEMPTS", "PROFILE"]]
    rows += [
        [a.agent_id, a.state.name, a.reason, f"{a.attempt}/{a.max_attempts}", a.profile]
        for a in page.agents
    ]
    for line in table(rows):
        out.line(line)
    return EXIT_OK


async def _ui(client: Client, args: argparse.Namespace, out: Out) -> int:
    """The web console; its modules (and aiohttp) load only here."""
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be 0-65535, got {args.port}")
    try:
        ui = importlib.import_module("hubspoke.hub.ui")
    except ImportError as exc:
        raise UsageError(
            f"hubctl ui needs the ui extra (pip install 'hubspoke[ui]'): {exc}"
        ) from None
    code: int = await ui.serve(client, port=args.port, open_browser=not args.no_browser)
    return code


_Verb = Callable[[Client, argparse.Namespace, Out], Coroutine[Any, Any, int]]
_VERBS: Final[dict[str, _Verb]] = {
    "spawn": _spawn,
    "status": _status,
    "kill": _kill,
    "verify": _verify,
    "list": _list,
    "spokes": _spokes,
    "watch": _watch,
    "queue": _queue,
    "dlq": _dlq,
    "ui": _ui,
}


def _keygen(args: argparse.Namespace, out: Out) -> int:
    name: str = args.name
    if not _KEY_NAME_RE.fullmatch(name):
        raise UsageError(
            "--name must be 1-63 characters of A-Z a-z 0-9 . _ - starting alphanumeric"
        )
    out_dir: Path = args.out
    for existing in (out_dir / f"{name}.key", out_dir / f"{name}.pub"):
        if existing.exists():
            raise UsageError(f"{existing} already exists; refusing to overwrite a key")
    key = keys.generate(name)
    priv, pub = keys.write_keypair(key, out_dir)
    public = keys.encode_public(key.public)
    if out.json:
        out.doc(
            {
                "name": name,
                "public_key": public,
                "key_id": key.key_id,
                "key_file": str(priv),
                "public_key_file": str(pub),
            }
        )
    else:
        out.line(f"{public} {name}")
    return EXIT_OK


def _dev(dev_args: list[str]) -> int:
    try:
        dev = importlib.import_module(
            "hubspoke.hub.dev"
        )  # lazily: it starts servers, hubctl does not
    except ImportError:
        print("Error: dev federation is not available", file=sys.stderr)
        return EXIT_USAGE
    code: int = dev.main(dev_args)
    return code


async def _run_verb(verb: _Verb, args: argparse.Namespace, out: Out) -> int:
    env = os.environ
    config = args.config or (Path(env["HUBCTL_CONFIG"]) if env.get("HUBCTL_CONFIG") else None)
    if config is None:
        raise UsageError("no hubctl config: pass --config FILE or set HUBCTL_CONFIG")
    timeout = args.rpc_timeout
    if timeout is None:
        raw = env.get("HUBCTL_TIMEOUT", "")
        try:
            timeout = _seconds(raw) if raw else DEFAULT_RPC_TIMEOUT_S
        except argparse.ArgumentTypeError as exc:
            raise UsageError(f"HUBCTL_TIMEOUT {exc}") from None
    try:
        client = client_from_config(config, hub=args.hub, timeout_s=timeout, env=env)
    except ClientConfigError as exc:
        raise UsageError(str(exc)) from exc
    async with client:
        return await verb(client, args, out)


def main(argv: Sequence[str] | None = None) -> int:
    """Run hubctl; returns the exit code (see ``hubctl --help``)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["dev"]:  # hubspoke.hub.dev parses its own flags, --help included
        return _dev(argv[1:])
    debug = "--debug" in argv
    try:
        args = parser.parse_args(argv)
        debug = args.debug
        out = Out(json=args.json, quiet=args.quiet)
        if args.verb == "dev":
            return _dev(args.dev_args)
        if args.verb == "keys":
            try:
                return cli_keys.run(args, out)
            except cli_keys.KeysUsageError as exc:
                raise UsageError(str(exc)) from exc
        if args.verb == "init":
            return cli_init.run(args, out)
        if args.verb == "completion":
            return cli_completion.run(args, parser)
        if args.verb == "certs":
            return cli_certs.run(args, args.json)
        if args.verb == "keygen":
            return _keygen(args, out)
        return asyncio.run(_run_verb(_VERBS[args.verb], args, out))
    except SystemExit as exc:  # --help, --version: argparse's own exit
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except KeyboardInterrupt:
        print("Error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except UsageError as exc:
        _report(f"Error: {exc}", debug)
        return EXIT_USAGE
    except CallError as exc:
        _report(f"Error: {exc}", debug)
        return EXIT_CODES.get(exc.code, EXIT_FAILURE)
    except OSError as exc:
        _report(f"Error: {exc}", debug)
        return EXIT_USAGE
    except Exception as exc:  # the CLI edge: anything else is a bug, reported in one line
        _report(f"Error: unexpected {type(exc).__name__}: {exc}", debug)
        return EXIT_FAILURE


def _report(line: str, debug: bool) -> None:
    """One line on stderr; escaped, since a server's message is not ours to trust."""
    if debug:
        traceback.print_exc(file=sys.stderr)
    print(escape(line), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
