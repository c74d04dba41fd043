"""How hubd puts its audit log together from its config (hub/app.py calls these)."""

from __future__ import annotations

import asyncio
import json
import os
import socket

import redis.asyncio

from hubspoke.keys import SigningKey
from hubspoke.redis_mux import RedisMux

from .audit import AuditConfig, AuditLog
from .audit_chain import Entry
from .audit_checkpoints import CheckpointWriter
from .circuit import Circuit, Circuits
from .config import HubConfig
from .relay import Inbound

__all__ = ["audit_log", "checkpoint_task", "record_circuits", "route_entry"]


def audit_log(
    cfg: HubConfig, client: redis.asyncio.Redis, mux: RedisMux | None = None
) -> AuditLog | None:
    """The hub's audit log over ``client`` (the hub store's), or None when it is off;
    ``mux``: the store's pipelined connection, for its commits."""
    if not cfg.audit_enabled:
        return None
    return AuditLog(
        client,
        AuditConfig(
            hub_name=cfg.name,
            process=f"{cfg.name}@{socket.gethostname()}:{os.getpid()}",
            max_entries=cfg.audit_max_entries,
            retention_s=cfg.audit_retention_s,
            max_bytes_kept=cfg.audit_max_bytes_kept,
        ),
        cfg.redis_timeout_s,
        mux,
    )


def record_circuits(audit: AuditLog, circuits: Circuits) -> None:
    """Every circuit that opens or closes is a decision in the audit log."""

    def changed(spoke: str, state: Circuit, failures: int) -> None:
        action = "circuit_open" if state is Circuit.OPEN else "circuit_closed"
        audit.decide(
            Entry(
                kind="decision",
                action=action,
                spoke=spoke,
                detail=json.dumps({"failures": failures}, separators=(",", ":")),
            )
        )

    circuits.listen(changed)


def route_entry(inbound: Inbound, spoke: str) -> Entry:
    """The decision where a selector spawn went (its reply, with the spoke's answer, is in
    the call's own entry)."""
    cmd = inbound.command
    return Entry(
        kind="decision",
        action="route",
        principal=cmd.issuer,
        command_id=cmd.command_id,
        agent=cmd.command_id,
        spoke=spoke,
        detail=json.dumps(
            {"selector": dict(sorted(cmd.spawn_agent.selector.items()))}, separators=(",", ":")
        ),
    )


def checkpoint_task(
    cfg: HubConfig, audit: AuditLog | None, key: SigningKey
) -> tuple[CheckpointWriter, asyncio.Task[None]] | None:
    """Start the checkpoint writer when the config names a checkpoint file."""
    if audit is None or cfg.audit_checkpoint_file is None:
        return None
    writer = CheckpointWriter(
        audit, key, cfg.audit_checkpoint_file, cfg.audit_checkpoint_interval_s
    )
    return writer, asyncio.create_task(writer.run(), name="audit-checkpoints")
