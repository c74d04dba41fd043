"""A dry-run spawn at the spoke: every check a real spawn passes, and nothing stored.

By the time :func:`rehearse` runs, the command passed the verifier (signature, audience,
window, rate, nonce) and ``spawn_request.spawn_request`` (policy, profile, task, priority,
timeout, delay, attempts, labels). It adds what the store would check: an agent that already
holds the command id (the real spawn would return it, or refuse a different one with
COMMAND_ID_REUSED) and the queue's backlog (``max_queue_depth``). The per-principal quota
and dedupe keys are checked only when a real spawn stores the agent.

The answer is a ``Placement`` naming this spoke as its only candidate, with its load (running
+ waiting agents) and its size (the profile's ``max_concurrency``, 1 when unlimited).
"""

from __future__ import annotations

from hubspoke import errors
from hubspoke.gen.federation.v1 import command_pb2

from .backend import BackendError
from .config import SpokeConfig
from .model import SpawnRequest
from .queue import AgentQueue

__all__ = ["rehearse"]


async def rehearse(
    config: SpokeConfig, agents: AgentQueue, req: SpawnRequest
) -> command_pb2.Placement:
    """Check what storing ``req`` would check, store nothing, and say so."""
    try:
        existing = await agents.records.get_or_none(req.agent_id)
        counts = await agents.jobs.stats()
    except BackendError as exc:
        raise errors.BackendUnavailableError("the spoke's Redis is unavailable") from exc
    if existing is not None and (existing.digest != req.digest or existing.issuer != req.issuer):
        raise errors.CommandIdReusedError(
            f"command id {req.agent_id} is already used for another spawn on {config.name}"
        )
    backlog = counts.waiting + counts.delayed
    if existing is None and backlog >= config.max_queue_depth:
        raise errors.CapacityExceededError(
            f"queue holds {backlog} waiting agents, its limit (max_queue_depth)"
        )
    profile = config.profiles[req.profile]
    capacity = max(profile.max_concurrency, 1)
    load = counts.active + counts.waiting
    reason = (
        f"agent {req.agent_id} exists: a spawn returns it"
        if existing is not None
        else f"would queue {req.profile} (load {load}/{capacity})"
    )
    return command_pb2.Placement(
        spoke=config.name,
        reason=reason,
        candidates=[
            command_pb2.PlacementCandidate(
                spoke=config.name, chosen=True, reason=reason, load=load, capacity=capacity
            )
        ],
    )
