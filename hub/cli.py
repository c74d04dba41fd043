"""``hubctl``: operate a Hubspoke federation through its hub.

argv → :class:`hubspoke.hub.client.HubClient` → stdout and an exit code. Results go to stdout
(``--json``: one JSON document, proto-JSON with snake_case names); errors go to stderr as
one line ``Error: <message> [<REASON>]``. Errors are converted here, once.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import re
import sys
import traceback
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NoReturn

import grpc
from google.protobuf import json_format

from hubspoke import keys

from . import cli_certs, cli_keys
from . import client as hc

__all__ = ["EXIT_CODES", "main"]

Agent = hc.Agent

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
EXIT_NOT_FOUND: Final = 3
EXIT_DENIED: Final = 4
EXIT_UNAVAILABLE: Final = 5
EXIT_INTERRUPTED: Final = 130

EXIT_CODES: Final = {
    grpc.StatusCode.NOT_FOUND: EXIT_NOT_FOUND,
    grpc.StatusCode.UNAUTHENTICATED: EXIT_DENIED,
    grpc.StatusCode.PERMISSION_DENIED: EXIT_DENIED,
    grpc.StatusCode.UNAVAILABLE: EXIT_UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: EXIT_UNAVAILABLE,
}
"""gRPC codes with their own exit code; any other failed call exits 1."""

POLL_INTERVAL_S: Final = 0.5
DEFAULT_RPC_TIMEOUT_S: Final = 15.0

_EPILOG: Final = """\
exit codes:
  0  ok (with --wait: the agent SUCCEEDED)
  1  the hub or a spoke refused or failed the command (with --wait: the agent did not succeed)
  2  usage or config error
  3  not found (NOT_FOUND)
  4  not allowed (UNAUTHENTICATED, PERMISSION_DENIED)
  5  hub or spoke unavailable (UNAVAILABLE, DEADLINE_EXCEEDED); safe to retry

environment: HUBCTL_CONFIG (--config), HUBCTL_HUB (--hub), HUBCTL_TIMEOUT (--timeout).
"""
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


def _state(text: str) -> int:
    try:
        return hc.parse_state(text)
    except ValueError:
        names = ", ".join(n.removeprefix("STATE_") for n in Agent.State.keys()[1:])
        raise argparse.ArgumentTypeError(f"unknown state {text!r}; one of {names}") from None


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
        help="do not start before this many seconds have passed",
    )
    sp.add_argument("--wait", action="store_true", help="wait for a final state; exit 0 on success")
    sp.add_argument("task", nargs="+", metavar="TASK", help="task words, joined by spaces")

    st = sub.add_parser("status", help="show one agent", parents=[common])
    st.add_argument("agent", metavar="AGENT", help="agent id or spokes/{spoke}/agents/{id}")
    st.add_argument("--spoke", help="the spoke that runs it (default: the hub finds it)")
    st.add_argument("--wait", action="store_true", help="wait for a final state; exit 0 on success")

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
    qu.add_argument("--spoke", required=True, help="the spoke whose queue")

    dl = sub.add_parser("dlq", help="a spoke's dead-letter set: list, replay", parents=[common])
    dl.add_argument("action", choices=["list", "replay"])
    dl.add_argument("agent", nargs="?", metavar="AGENT", help="for replay: the agent to run again")
    dl.add_argument("--spoke", help="the spoke (required for list)")
    dl.add_argument("--page-size", type=int, default=50, help="agents per page (default 50)")

    cli_certs.add_parser(sub, common)
    cli_keys.add_parser(sub, common)

    dev = sub.add_parser("dev", help="run a local federation (hubctl dev --help)", add_help=False)
    dev.add_argument("dev_args", nargs=argparse.REMAINDER)
    return p


# -- output ----------------------------------------------------------------------------------


def agent_json(agent: hc.Agent) -> dict[str, Any]:
    """Proto-JSON (snake_case) with the state's short name and the fields always present."""
    doc: dict[str, Any] = json_format.MessageToDict(agent, preserving_proto_field_name=True)
    doc["agent_id"] = agent.agent_id
    doc["spoke"] = agent.spoke
    doc["state"] = hc.state_name(agent.state)
    doc["exit_code"] = agent.exit_code if agent.HasField("exit_code") else None
    doc["stdout_tail"] = agent.stdout_tail
    doc["stderr_tail"] = agent.stderr_tail
    return doc


def spoke_json(spoke: hc.Spoke) -> dict[str, Any]:
    doc: dict[str, Any] = json_format.MessageToDict(spoke, preserving_proto_field_name=True)
    doc["name"] = spoke.name
    doc["address"] = spoke.address
    doc["health"] = hc.Spoke.Health.Name(spoke.health).removeprefix("HEALTH_")
    doc["labels"] = dict(spoke.labels)
    return doc


@dataclass
class _Out:
    json: bool
    quiet: bool

    def doc(self, value: object) -> None:
        print(json.dumps(value, indent=2, sort_keys=True), flush=True)

    def line(self, text: str) -> None:
        print(text, flush=True)


def _agent_lines(agent: hc.Agent) -> list[str]:
    lines = [
        f"agent     {agent.agent_id}",
        f"spoke     {agent.spoke}",
        f"state     {hc.state_name(agent.state)}" + (f" ({agent.reason})" if agent.reason else ""),
        f"profile   {agent.profile}",
    ]
    if agent.HasField("exit_code"):
        lines.append(f"exit code {agent.exit_code}")
    if agent.progress_percent >= 0 and agent.progress_message:
        lines.append(f"progress  {agent.progress_percent}% {agent.progress_message}")
    if agent.HasField("receipt"):
        lines.append(f"receipt   {agent.receipt.status}: {agent.receipt.summary}")
    for label, tail in (("stdout", agent.stdout_tail), ("stderr", agent.stderr_tail)):
        if tail:
            lines.append(f"--- {label} (tail) ---")
            lines.append(tail.rstrip("\n"))
    return lines


def _show_agent(out: _Out, agent: hc.Agent, brief: bool = False) -> None:
    if out.json:
        out.doc(agent_json(agent))
    elif out.quiet:
        out.line(agent.agent_id if brief else hc.state_name(agent.state))
    elif brief:
        out.line(f"{agent.agent_id}\t{agent.spoke}\t{hc.state_name(agent.state)}")
    else:
        for line in _agent_lines(agent):
            out.line(line)


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


# -- verbs -----------------------------------------------------------------------------------


def _exit_for(agent: hc.Agent) -> int:
    return EXIT_OK if agent.state == Agent.STATE_SUCCEEDED else EXIT_FAILURE


async def _wait(client: hc.HubClient, agent: hc.Agent) -> hc.Agent:
    while agent.state not in hc.FINAL_STATES:
        await asyncio.sleep(POLL_INTERVAL_S)
        agent = await client.get(agent.agent_id, agent.spoke or None)
    return agent


async def _spawn(client: hc.HubClient, args: argparse.Namespace, out: _Out) -> int:
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
    )
    if not args.wait:
        _show_agent(out, agent, brief=True)
        return EXIT_OK
    agent = await _wait(client, agent)
    _show_agent(out, agent)
    return _exit_for(agent)


async def _status(client: hc.HubClient, args: argparse.Namespace, out: _Out) -> int:
    agent = await client.get(args.agent, args.spoke)
    if args.wait:
        agent = await _wait(client, agent)
    _show_agent(out, agent)
    return _exit_for(agent) if args.wait else EXIT_OK


async def _kill(client: hc.HubClient, args: argparse.Namespace, out: _Out) -> int:
    agent = await client.kill(args.agent, args.spoke)
    _show_agent(out, agent, brief=True)
    return EXIT_OK


async def _list(client: hc.HubClient, args: argparse.Namespace, out: _Out) -> int:
    result = await client.list(args.spoke, args.page_size, args.states)
    if out.json:
        out.doc(
            {
                "agents": [agent_json(a) for a in result.agents],
                "unreachable_spokes": result.unreachable_spokes,
            }
        )
        return EXIT_OK
    if out.quiet:
        for a in result.agents:
            out.line(a.agent_id)
        return EXIT_OK
    rows = [["AGENT", "SPOKE", "STATE", "PROFILE", "CREATED"]]
    rows += [
        [
            a.agent_id,
            a.spoke,
            hc.state_name(a.state),
            a.profile,
            a.create_time.ToJsonString() if a.HasField("create_time") else "",
        ]
        for a in result.agents
    ]
    for line in _table(rows):
        out.line(line)
    if result.unreachable_spokes:
        print(f"unreachable: {', '.join(result.unreachable_spokes)}", file=sys.stderr)
    return EXIT_OK


async def _spokes(client: hc.HubClient, args: argparse.Namespace, out: _Out) -> int:
    spokes = await client.spokes()
    if out.json:
        out.doc({"spokes": [spoke_json(s) for s in spokes]})
        return EXIT_OK
    rows = [["NAME", "ADDRESS", "HEALTH", "LABELS"]]
    rows += [
        [
            s.name,
            s.address,
            hc.Spoke.Health.Name(s.health).removeprefix("HEALTH_"),
            ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())),
        ]
        for s in spokes
    ]
    for line in _table(rows if not out.quiet else rows[1:] or [[""]]):
        out.line(line)
    return EXIT_OK


def event_json(event: hc.AgentEvent) -> dict[str, Any]:
    doc: dict[str, Any] = json_format.MessageToDict(event, preserving_proto_field_name=True)
    doc["sequence"] = event.sequence
    doc["kind"] = hc.AgentEvent.Kind.Name(event.kind).removeprefix("KIND_")
    if event.kind == hc.AgentEvent.Kind.KIND_STATE:
        doc["state"] = hc.state_name(event.state)
    return doc


def _event_text(event: hc.AgentEvent) -> str | None:
    kind = event.kind
    if kind == hc.AgentEvent.Kind.KIND_STATE:
        reason = f" ({event.reason})" if event.reason else ""
        return f"[{event.sequence}] state {hc.state_name(event.state)}{reason}"
    if kind == hc.AgentEvent.Kind.KIND_PROGRESS:
        return f"[{event.sequence}] progress {event.progress_percent}% {event.data}".rstrip()
    if kind == hc.AgentEvent.Kind.KIND_DROPPED:
        return f"[{event.sequence}] ({event.data} bytes of output not recorded)"
    return None


async def _watch(client: hc.HubClient, args: argparse.Namespace, out: _Out) -> int:
    """Events as they come; output chunks go to stdout/stderr raw, the rest as lines."""
    final: int | None = None
    async for event in client.watch(args.agent, args.spoke, args.after):
        kind = event.kind
        if kind == hc.AgentEvent.Kind.KIND_STATE and event.state in hc.FINAL_STATES:
            final = event.state
        if out.json:
            if kind != hc.AgentEvent.Kind.KIND_HEARTBEAT:
                print(json.dumps(event_json(event), sort_keys=True), flush=True)
            continue
        if kind == hc.AgentEvent.Kind.KIND_STDOUT:
            sys.stdout.write(event.data)
            sys.stdout.flush()
        elif kind == hc.AgentEvent.Kind.KIND_STDERR:
            sys.stderr.write(event.data)
            sys.stderr.flush()
        elif not out.quiet and (text := _event_text(event)) is not None:
            print(text, file=sys.stderr, flush=True)
    return EXIT_OK if final == Agent.STATE_SUCCEEDED else EXIT_FAILURE


def _stats_json(stats: hc.QueueStats) -> dict[str, Any]:
    return json_format.MessageToDict(
        stats, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


async def _queue(client: hc.HubClient, args: argparse.Namespace, out: _Out) -> int:
    action = {
        "stats": client.queue_stats,
        "pause": client.pause,
        "resume": client.resume,
        "drain": client.drain,
    }[args.action]
    stats = await action(args.spoke)
    doc = _stats_json(stats)
    if args.action != "drain":
        doc.pop("drained", None)
    if out.json:
        out.doc(doc)
    else:
        for key, value in doc.items():
            out.line(f"{key:<10} {value}")
    return EXIT_OK


async def _dlq(client: hc.HubClient, args: argparse.Namespace, out: _Out) -> int:
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
        [a.agent_id, hc.state_name(a.state), a.reason, f"{a.attempt}/{a.max_attempts}", a.profile]
        for a in page.agents
    ]
    for line in _table(rows):
        out.line(line)
    return EXIT_OK


_Verb = Callable[[hc.HubClient, argparse.Namespace, _Out], Coroutine[Any, Any, int]]
_VERBS: Final[dict[str, _Verb]] = {
    "spawn": _spawn,
    "status": _status,
    "kill": _kill,
    "list": _list,
    "spokes": _spokes,
    "watch": _watch,
    "queue": _queue,
    "dlq": _dlq,
}


def _keygen(args: argparse.Namespace, out: _Out) -> int:
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


async def _run_verb(verb: _Verb, args: argparse.Namespace, out: _Out) -> int:
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
        client = hc.client_from_config(config, hub=args.hub, timeout_s=timeout, env=env)
    except hc.ClientConfigError as exc:
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
        out = _Out(json=args.json, quiet=args.quiet)
        if args.verb == "dev":
            return _dev(args.dev_args)
        if args.verb == "keys":
            try:
                return cli_keys.run(args, out)
            except cli_keys.KeysUsageError as exc:
                raise UsageError(str(exc)) from exc
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
    except hc.HubCallError as exc:
        _report(f"Error: {exc}", debug)
        return EXIT_CODES.get(exc.code, EXIT_FAILURE)
    except OSError as exc:
        _report(f"Error: {exc}", debug)
        return EXIT_USAGE
    except Exception as exc:  # the CLI edge: anything else is a bug, reported in one line
        _report(f"Error: unexpected {type(exc).__name__}: {exc}", debug)
        return EXIT_FAILURE


def _report(line: str, debug: bool) -> None:
    if debug:
        traceback.print_exc(file=sys.stderr)
    print(line, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
