"""A verified spawn, checked and resolved: the body of a ``spawn_agent`` command against this
spoke's config (profile, task, priority, timeout, delay, attempts, labels, start deadline)
and policy (the profile named, then the values resolved), turned into the
:class:`SpawnRequest` the queue stores, with the digest of the spawn's meaning as the client
sent it (docs/protocol.md §9: two tries of one spawn are the same spawn when it matches)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from hubspoke import commands, errors
from hubspoke import dedupe as shared_dedupe
from hubspoke.policy import BODY_VERBS, Policy
from hubspoke.policy import Request as PolicyRequest

from . import approvals
from .config import SpokeConfig
from .model import SpawnRequest
from .profiles import check_task
from .verifier import Authorized

__all__ = ["LABEL_BYTES", "MAX_ATTEMPTS_LIMIT", "policy_request", "spawn_request"]

MAX_ATTEMPTS_LIMIT = 10
LABEL_BYTES = 256


def policy_request(auth: Authorized, cfg: SpokeConfig, body: str, **spawn: Any) -> PolicyRequest:
    """What the policy judges for ``auth``'s command of ``body`` on this spoke."""
    return PolicyRequest(
        principal=auth.principal,
        verb=BODY_VERBS[body],
        spoke=cfg.name,
        spoke_labels=cfg.labels,
        **spawn,
    )


def spawn_request(auth: Authorized, cfg: SpokeConfig, policy: Policy) -> SpawnRequest:
    """The spawn ``auth`` carries, checked against ``cfg`` and ``policy`` and resolved into
    what the queue stores (raises InvalidCommandError, UnknownProfileError, or the policy's
    refusal)."""
    body = auth.command.spawn_agent
    # Each field read once (issue 13: every read of a protobuf field builds a Python object).
    named, task, timeout, delay = body.profile, body.task, body.timeout, body.delay
    # Authorize the named profile before looking it up: a principal that may not spawn it
    # here learns nothing of this spoke's profiles (UNKNOWN_PROFILE lists them).
    policy.check(policy_request(auth, cfg, "spawn_agent", profile=named))
    profile = cfg.profiles.get(named)
    if profile is None:
        raise errors.UnknownProfileError(
            f"profile {named!r} is not configured on spoke {cfg.name}",
            profiles=",".join(sorted(cfg.profiles)),
        )
    if len(task.encode()) > cfg.max_task_bytes:
        raise errors.InvalidCommandError(f"task is longer than {cfg.max_task_bytes} bytes")
    if "\x00" in task:
        raise errors.InvalidCommandError("task must not contain NUL characters")
    priority = body.priority or cfg.default_priority
    if not 1 <= priority <= 10:
        raise errors.InvalidCommandError("priority must be 1-10")
    timeout_nanos = timeout.nanos
    timeout_ms = timeout.seconds * 1000 + timeout_nanos // 1_000_000
    limit_ms = int(profile.timeout_s * 1000)
    if timeout_ms < 0:
        raise errors.InvalidCommandError("timeout must not be negative")
    if timeout_ms > limit_ms:
        raise errors.InvalidCommandError(
            f"timeout exceeds profile {profile.name}'s limit of {profile.timeout_s:g} s"
        )
    delay_nanos = delay.nanos
    delay_ms = delay.seconds * 1000 + delay_nanos // 1_000_000
    max_delay_ms = int(cfg.max_delay_s * 1000)
    if not 0 <= delay_ms <= max_delay_ms or not 0 <= delay_nanos < 1_000_000_000:
        raise errors.InvalidCommandError(
            f"delay must be 0-{cfg.max_delay_s:g} s on spoke {cfg.name} (max_delay_s)",
            limit="max_delay_s",
        )
    if not 0 <= timeout_nanos < 1_000_000_000:
        raise errors.InvalidCommandError("timeout nanos must be 0-999999999")
    accepted, start_by = auth.accepted or commands.now(), auth.start_deadline
    if start_by is not None and delay_ms >= (start_by - accepted).total_seconds() * 1000:
        raise errors.InvalidCommandError(
            "delay must be shorter than start_within: the agent could never start",
            limit="start_within",
        )
    max_attempts = body.max_attempts
    attempts = max_attempts or profile.max_attempts
    if not 1 <= attempts <= MAX_ATTEMPTS_LIMIT:
        raise errors.InvalidCommandError(f"max_attempts must be 1-{MAX_ATTEMPTS_LIMIT}")
    labels = dict(body.labels)
    if len(labels) > cfg.max_labels:
        raise errors.InvalidCommandError(f"more than {cfg.max_labels} labels")
    if any(
        len(k.encode()) > LABEL_BYTES or len(v.encode()) > LABEL_BYTES for k, v in labels.items()
    ):
        raise errors.InvalidCommandError(f"label keys and values are at most {LABEL_BYTES} bytes")
    resolved = policy_request(
        auth,
        cfg,
        "spawn_agent",
        profile=profile.name,
        priority=priority,
        runtime_s=(timeout_ms or limit_ms) / 1000,
        attempts=attempts,
    )
    policy.check(resolved)
    need, approvers, approve_by = approvals.requirement(
        policy, resolved, cfg.approval_window_s, int(accepted.timestamp() * 1000)
    )
    check_task(profile, task)  # argv option injection: refused before it is stored
    # The spawn's meaning, as the client sent it (not as this spoke's config resolved it,
    # so a config change between two tries of one spawn does not make them differ).
    meaning = {
        "issuer": auth.principal,
        "profile": named,
        "task": task,
        "priority": body.priority,
        "timeout_ms": timeout_ms,
        "max_attempts": max_attempts,
        "labels": labels,
        "delay_ms": delay_ms,
    }
    selector = body.selector
    if selector:  # a hub chose this spoke; absent from the meaning without one
        meaning["selector"] = dict(selector)
    if body.HasField("start_within"):  # absent from the meaning of spawns before it
        meaning["start_within_ms"] = body.start_within.ToMilliseconds()
    asked_key, from_task = body.dedupe_key, body.dedupe_from_task
    dedupe_key = shared_dedupe.resolve(asked_key, from_task, named, task)
    meaning.update(shared_dedupe.meaning(asked_key, from_task))
    digest = hashlib.sha256(json.dumps(meaning, sort_keys=True).encode()).hexdigest()
    return SpawnRequest(
        agent_id=auth.command.command_id,
        issuer=auth.principal,
        profile=profile.name,
        task=task,
        priority=priority,
        timeout_ms=timeout_ms or limit_ms,
        max_attempts=attempts,
        labels=labels,
        digest=digest,
        expire_ms=int((start_by or auth.expires).timestamp() * 1000),
        accept_ms=int(accepted.timestamp() * 1000),
        delay_ms=delay_ms,
        backoff_ms=cfg.retry_backoff_ms,
        envelope=auth.client_envelope.SerializeToString(),
        relay=auth.relay_envelope.SerializeToString() if auth.relay_envelope else b"",
        dedupe_key=dedupe_key,
        approvals_required=need,
        approvers=approvers,
        approval_deadline_ms=approve_by,
    )
