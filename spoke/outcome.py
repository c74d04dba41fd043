"""How an attempt that exited by itself ends: its exit code and its receipt decide.

=========================================  =====================  ======================
exit code and receipt                      state                  reason
=========================================  =====================  ======================
non-zero (or killed by a signal)           FAILED (retried)       EXIT_NONZERO, SIGNALED
0, ``failed``                              FAILED (retried)       RECEIPT_FAILED
0, ``blocked``                             NEEDS_INPUT            BLOCKED
0, ``completed``, an item not passed       NEEDS_VERIFICATION     VERIFICATION_PENDING
0, ``completed``, every item passed        SUCCEEDED
0, no receipt, or one that cannot be read  SUCCEEDED              (receipt.error kept)
=========================================  =====================  ======================

A NEEDS_VERIFICATION agent waits ``verification_grace_s`` for ``hubctl verify``; the
record keeps the deadline and the names of the items not passed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .model import AgentState
from .output import Receipt

__all__ = ["Outcome", "decide", "receipt_json"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """The state an attempt ends in, its reason, and fields to store with it."""

    state: AgentState
    reason: str = ""
    fields: dict[str, object] = field(default_factory=dict)


def decide(code: int, receipt: Receipt | None, now_ms: int, grace_ms: int) -> Outcome:
    """The outcome of an attempt that exited with ``code`` (not killed, not timed out)."""
    if code != 0:
        return Outcome(AgentState.FAILED, "EXIT_NONZERO" if code > 0 else "SIGNALED")
    if receipt is None or not receipt.usable:
        return Outcome(AgentState.SUCCEEDED)
    if receipt.status == "failed":
        return Outcome(AgentState.FAILED, "RECEIPT_FAILED")
    if receipt.status == "blocked":
        return Outcome(AgentState.NEEDS_INPUT, "BLOCKED")
    pending = list(dict.fromkeys(v.name for v in receipt.pending))
    if pending:
        return Outcome(
            AgentState.NEEDS_VERIFICATION,
            "VERIFICATION_PENDING",
            {
                "verify_deadline_ms": now_ms + grace_ms,
                "pending": json.dumps(pending),
                "verdicts": "{}",
                "verified_by": "{}",
            },
        )
    return Outcome(AgentState.SUCCEEDED)


def receipt_json(r: Receipt | None) -> str:
    """The receipt as stored in the agent's record (spoke/wire.py reads it back)."""
    if r is None:
        return ""
    return json.dumps(
        {
            "status": r.status,
            "summary": r.summary,
            "artifacts": [a.value for a in r.artifacts],
            "artifact_details": [
                {"value": a.value, "kind": a.kind, "json": a.json} for a in r.artifacts
            ],
            "verifications": [
                {
                    "name": v.name,
                    "status": v.status,
                    "detail": v.detail,
                    "kind": v.kind,
                    "value": v.value,
                    "expected": v.expected,
                }
                for v in r.verifications
            ],
            "blockers": list(r.blockers),
            "json": r.json,
            "error": r.error,
        }
    )
