"""``hubctl audit tail`` (through the hub, policy verb ``audit``) and ``hubctl audit verify``
(on the hub's host, straight from the hub's Redis, with the hub's config).

``verify`` recomputes the chain, re-verifies every kept signature against the hub's trust
store (and the hub's own key, for replies the hub signed) and checks the signed checkpoints
(``--checkpoints FILE``, else the config's ``audit_checkpoint_file`` if it exists). It exits
0 when the log is intact and 1 naming the first bad entry.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from hubspoke import errors, keys
from hubspoke.trust import Role, TrustedKey, TrustStore

from .cli_output import Out

if TYPE_CHECKING:
    from hubspoke.client import Client

    from .audit_verify import Report
    from .config import HubConfig

__all__ = ["EXAMPLES", "add_parser", "tail", "verify"]

EXAMPLES: Final[dict[str, tuple[str, ...]]] = {
    "audit": (
        "hubctl audit tail",
        "hubctl audit tail --agent AGENT",
        "hubctl --json audit tail --principal alice --limit 200",
        "hubctl audit verify --hub-config /etc/hubspoke/hub.toml",
        "hubctl audit verify --hub-config hub.toml --checkpoints audit-checkpoints.jsonl",
    ),
}


class AuditUsageError(Exception):
    """A problem with the flags or the hub config: one line, exit 2."""


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    au = sub.add_parser(
        "audit",
        help="the hub's audit log: tail (who did what), verify (is it intact)",
        parents=[common],
    )
    au.add_argument("action", choices=["tail", "verify"])
    au.add_argument("--agent", default="", help="tail: only entries about this agent id")
    au.add_argument("--principal", default="", help="tail: only entries of this principal")
    au.add_argument(
        "--limit", type=int, default=50, help="tail: how many entries, newest first (default 50)"
    )
    au.add_argument(
        "--hub-config", type=Path, metavar="FILE", help="verify: the hub's hub.toml (or HUB_CONFIG)"
    )
    au.add_argument(
        "--checkpoints",
        type=Path,
        metavar="FILE",
        help="verify: signed checkpoints (default: the config's audit_checkpoint_file)",
    )


async def tail(client: Client, args: argparse.Namespace, out: Out) -> int:
    """Print the newest entries (through the hub: policy verb ``audit``)."""
    if args.limit < 1:
        raise AuditUsageError(f"--limit must be at least 1, got {args.limit}")
    records: list[Any] = []
    before = 0
    while len(records) < args.limit:
        page = await client.audit_log(
            page_size=min(500, args.limit - len(records)),
            before_seq=before,
            agent=args.agent,
            principal=args.principal,
        )
        records.extend(page.records)
        before = page.next_before_seq
        if not before:
            break
    if out.json:
        out.doc(
            {
                "entries": [
                    {
                        "seq": r.seq,
                        "time": r.time.isoformat(),
                        "kind": r.kind,
                        "action": r.action,
                        "outcome": r.outcome,
                        "principal": r.principal,
                        "command_id": r.command_id,
                        "audience": r.audience,
                        "agent": r.agent,
                        "spoke": r.spoke,
                        "detail": r.detail,
                        "hub": r.hub,
                        "hash": r.hash,
                    }
                    for r in records
                ]
            }
        )
        return 0
    for r in records:
        when = r.time.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        who = r.principal or "-"
        what = f"{r.action} {r.outcome}"
        about = " ".join(
            x
            for x in (f"agent={r.agent}" if r.agent else "", f"spoke={r.spoke}" if r.spoke else "")
            if x
        )
        out.line(f"{r.seq:>8}  {when}  {who:<16} {what:<40} {about}".rstrip())
    return 0


def verify(args: argparse.Namespace, out: Out) -> int:
    """Check the log in the hub's Redis (module docstring); 0 intact, 1 broken."""
    from .audit_checkpoints import read_checkpoints  # the hub's modules load only here
    from .config import HubConfig

    path = args.hub_config or (
        Path(os.environ["HUB_CONFIG"]) if os.environ.get("HUB_CONFIG") else None
    )
    if path is None:
        raise AuditUsageError("audit verify needs the hub's config: --hub-config FILE")
    try:
        cfg = HubConfig.load(path, os.environ)
        hub_key = keys.load_private(cfg.key_file, cfg.name)
        trust = _trust(TrustStore.from_file(cfg.trust_file), cfg.name, hub_key)
    except errors.ConfigError as exc:
        raise AuditUsageError(str(exc)) from None
    checkpoints_file = args.checkpoints
    if (
        checkpoints_file is None
        and cfg.audit_checkpoint_file
        and cfg.audit_checkpoint_file.exists()
    ):
        checkpoints_file = cfg.audit_checkpoint_file
    try:
        checkpoints = read_checkpoints(checkpoints_file, hub_key.public) if checkpoints_file else []
    except (OSError, ValueError) as exc:
        print(f"Error: audit log not verified: {exc}", file=sys.stderr)
        return 1
    report = asyncio.run(_read_and_verify(cfg, trust, checkpoints))
    doc = {
        "intact": report.problem is None,
        "entries": report.entries,
        "first_seq": report.first_seq,
        "last_seq": report.last_seq,
        "signatures": report.signatures,
        "checkpoints": report.checkpoints,
        "problem": str(report.problem) if report.problem else None,
        "bad_seq": report.problem.seq if report.problem else None,
    }
    if out.json:
        out.doc(doc)
    elif report.problem is None:
        out.line(
            f"audit log intact: {report.entries} entries (seq {report.first_seq}.."
            f"{report.last_seq}), {report.signatures} signatures, "
            f"{report.checkpoints} checkpoints"
        )
    else:
        print(f"Error: audit log broken: {report.problem}", file=sys.stderr)
    return 0 if report.problem is None else 1


async def _read_and_verify(cfg: HubConfig, trust: TrustStore, checkpoints: list[Any]) -> Report:
    from .audit import AuditConfig, AuditLog
    from .audit_verify import verify_log
    from .store import HubStore

    store = HubStore.from_url(cfg.redis, cfg.name, cfg.redis_timeout_s)
    try:
        audit = AuditLog(store.client, AuditConfig(hub_name=cfg.name), cfg.redis_timeout_s)
        head, trimmed = await audit.head(), await audit.trimmed()
        stored = await audit.scan()
    finally:
        await store.close()
    return verify_log(stored, head, trimmed, trust, checkpoints)


def _trust(store: TrustStore, hub: str, key: keys.SigningKey) -> TrustStore:
    """The hub's trust store plus its own key (for the replies the hub signs)."""
    known = [k for peer in store.peers() for k in store.keys_of(peer)]
    fp = keys.fingerprint(key.public)
    if not any(k.fingerprint == fp for k in known):
        known.append(TrustedKey(peer=hub, role=Role.HUB, public=key.public, fingerprint=fp))
    return TrustStore(known)
