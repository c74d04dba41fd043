"""``hubctl``: operate a Hubspoke federation through its hub.

argv → :class:`hubspoke.client.Client` → stdout and an exit code. Results go to stdout
(``--json``: one JSON document, proto-JSON with snake_case names; otherwise text with every
control character escaped, see ``cli_output``); errors go to stderr as one line
``Error: <message> [<REASON>]``. Errors are converted here, once. The argparse tree is
:mod:`hubspoke.hub.cli_parser`; this module runs the verbs.
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
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

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

from . import (
    cli_audit,
    cli_certs,
    cli_completion,
    cli_enrol,
    cli_events,
    cli_init,
    cli_keys,
    cli_outbox,
    cli_routing,
    cli_send,
    cli_shadow,
    cli_synthetic,
)
from .cli_output import (
    Out,
    agent_json,
    agent_lines,
    capacity_text,
    escape,
    event_json,
    event_text,
    mode_text,
    outbox_text,
    profiles_text,
    seen_ago,
    spoke_health_text,
    spoke_json,
    stats_json,
    table,
    version_text,
    write_chunk,
)
from .cli_parser import DEFAULT_RPC_TIMEOUT_S, UsageError, build_parser, seconds

__all__ = ["EXIT_CODES", "agent_json", "main", "spoke_json"]

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
EXIT_NOT_FOUND: Final = 3
EXIT_DENIED: Final = 4
EXIT_UNAVAILABLE: Final = 5
EXIT_NEEDS_INPUT: Final = 6
EXIT_NEEDS_VERIFICATION: Final = 7
EXIT_AWAITING_APPROVAL: Final = 8
EXIT_INTERRUPTED: Final = 130

EXIT_CODES: Final = {
    grpc.StatusCode.NOT_FOUND: EXIT_NOT_FOUND,
    grpc.StatusCode.UNAUTHENTICATED: EXIT_DENIED,
    grpc.StatusCode.PERMISSION_DENIED: EXIT_DENIED,
    grpc.StatusCode.UNAVAILABLE: EXIT_UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: EXIT_UNAVAILABLE,
}
"""gRPC codes with their own exit code; any other failed call exits 1."""


_KEY_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


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


def _warn_unreachable(spokes: Sequence[str], reasons: Mapping[str, str]) -> None:
    """A fan-out's unreachable spokes (with why, where known), on stderr."""
    if spokes:
        unreachable = ", ".join(
            escape(s) + (f" ({escape(why)})" if (why := reasons.get(s)) else "") for s in spokes
        )
        print(f"unreachable: {unreachable}", file=sys.stderr)


# -- verbs -----------------------------------------------------------------------------------


_WAIT_EXITS: Final = {
    AgentState.SUCCEEDED: EXIT_OK,
    AgentState.NEEDS_INPUT: EXIT_NEEDS_INPUT,
    AgentState.NEEDS_VERIFICATION: EXIT_NEEDS_VERIFICATION,
    AgentState.AWAITING_APPROVAL: EXIT_AWAITING_APPROVAL,
}


def _exit_for(agent: Agent) -> int:
    """``--wait``'s exit code: by the state the agent settled in (any other: 1)."""
    return _WAIT_EXITS.get(agent.state, EXIT_FAILURE)


async def _spawn(client: Client, args: argparse.Namespace, out: Out) -> int:
    chosen = cli_routing.spawn_selector(args)  # exactly one of --spoke, --selector
    if args.dry_run:
        return await cli_routing.dry_run(client, args, out)
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
        selector=chosen or None,
        dedupe_key=args.dedupe_key,
        dedupe_from_task=args.dedupe_task,
    )
    if agent.raw.deduplicated and not out.json:  # said on stderr: stdout stays the agent
        print(
            f"deduplicated: your agent with dedupe key {agent.raw.dedupe_key} is not final",
            file=sys.stderr,
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


async def _send(client: Client, args: argparse.Namespace, out: Out) -> int:
    agent = await client.send(*cli_send.message_of(args), args.spoke)
    _show_agent(out, agent)
    return EXIT_OK


async def _approve(client: Client, args: argparse.Namespace, out: Out) -> int:
    agent = await client.approve(args.agent, args.reason, args.spoke)
    _show_agent(out, agent)
    return EXIT_OK


async def _reject(client: Client, args: argparse.Namespace, out: Out) -> int:
    agent = await client.reject(args.agent, args.reason, args.spoke)
    _show_agent(out, agent)
    return EXIT_OK


async def _kill(client: Client, args: argparse.Namespace, out: Out) -> int:
    agent = await client.kill(args.agent, args.spoke)
    _show_agent(out, agent, brief=True)
    return EXIT_OK


async def _list(client: Client, args: argparse.Namespace, out: Out) -> int:
    if args.page_token and not args.spoke:
        raise UsageError("--page-token is per spoke: name it with --spoke")
    result = await client.list(
        args.spoke,
        args.page_size,
        args.states,
        args.page_token,
        labels=dict(args.labels),
        profile=args.profile,
        owner=args.owner,
        dedupe_key=args.dedupe_key,
    )
    tokens = {s: p.next_page_token for s, p in result.pages.items() if p.next_page_token}
    if out.json:
        out.doc(
            {
                "agents": [agent_json(a) for a in result.agents],
                "unreachable_spokes": list(result.unreachable_spokes),
                "unreachable_reasons": dict(result.unreachable_reasons),
                "next_page_tokens": tokens,
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
    for spoke, token in sorted(tokens.items()):  # more pages: how to ask for the next
        out.line(f"next page: --spoke {escape(spoke)} --page-token {escape(token)}")
    _warn_unreachable(result.unreachable_spokes, result.unreachable_reasons)
    return EXIT_OK


async def _spokes(client: Client, args: argparse.Namespace, out: Out) -> int:
    spokes = await client.spokes()
    if out.json:
        out.doc({"spokes": [spoke_json(s) for s in spokes]})
        return EXIT_OK
    head = ["NAME", "ADDRESS", "HEALTH", "MODE", "LAST SEEN", "CAPACITY", "CIRCUIT", "OUTBOX"]
    rows = [[*head, "LINK", "PROFILES", "VERSION", "LABELS"]]
    rows += [
        [
            s.name,
            s.address,
            spoke_health_text(s),
            mode_text(s),
            seen_ago(s.last_seen_time),
            capacity_text(s),
            s.circuit.name.lower() if s.circuit else "-",
            outbox_text(s),
            (s.link_mode or "-") + (" (enrolled)" if s.enrolled else ""),
            profiles_text(s),
            version_text(s),
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
    _warn_unreachable(result.unreachable_spokes, result.unreachable_reasons)
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
    "send": _send,
    "approve": _approve,
    "reject": _reject,
    "list": _list,
    "spokes": _spokes,
    "spoke": cli_routing.spoke_verb,
    "watch": _watch,
    "events": cli_events.run,
    "queue": _queue,
    "dlq": _dlq,
    "ui": _ui,
    "outbox": cli_outbox.run,
    "synthetic-all": cli_synthetic.run,
    "shadow-summary": cli_shadow.run,
}
_VERBS["spoke"] = cli_enrol.spoke_verb(_VERBS.get("spoke"))  # enroll|remove|members


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


def _audit(args: argparse.Namespace, out: Out) -> int:
    """``audit verify`` reads the hub's Redis with the hub's config; ``audit tail`` asks the
    hub, like every other verb."""
    try:
        if args.action == "verify":
            return cli_audit.verify(args, out)
        return asyncio.run(_run_verb(cli_audit.tail, args, out))
    except cli_audit.AuditUsageError as exc:
        raise UsageError(str(exc)) from None


def _dev(dev_args: list[str]) -> int:
    # Imported here, not at the top: it starts servers, and hubctl's other verbs load none.
    dev = importlib.import_module("hubspoke.hub.dev")
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
            timeout = seconds(raw) if raw else DEFAULT_RPC_TIMEOUT_S
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
        if args.verb == "audit":
            return _audit(args, out)
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
