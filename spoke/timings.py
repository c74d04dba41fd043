"""How long agents wait and run, told to a sink (the spoke's Prometheus histograms,
spoke/metrics.py) as ``Records.transition`` makes the changes that end each span:

* queue wait: from when the spoke stored the spawn (``create_ms``: its acceptance for a
  direct call; a relayed spawn's is the hub's acceptance plus its transit) to its first
  start (the RUNNING of attempt 1; a ``delay`` counts as waiting). Replayed agents are left
  out (their first store is long past);
* run time: from an attempt's start (``start_ms``) to the end of its run (the worker's
  transition out of RUNNING: a final state, RETRYING, NEEDS_INPUT or NEEDS_VERIFICATION).

One HMGET of the record per such change. Redis trouble here only skips a sample: the
change itself is already made.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from .keys import SpokeKeys
from .model import AgentState

log = structlog.get_logger("hubspoke.spoke.timings")

TimingSink = Callable[[str, str, float], None]
"""(span, profile, seconds): span is ``queue_wait`` or ``run``."""


def _int(raw: bytes | None) -> int:
    return int(raw) if raw not in (None, b"") else 0


async def observe(
    redis: aioredis.Redis,
    keys: SpokeKeys,
    sink: TimingSink,
    agent_id: str,
    allowed_from: Iterable[AgentState],
    to: AgentState,
) -> None:
    """Tell ``sink`` of the span the change ``allowed_from`` → ``to`` ended, if any."""
    started = to is AgentState.RUNNING
    ran = set(allowed_from) == {AgentState.RUNNING} and to is not AgentState.RUNNING
    if not (started or ran):
        return
    try:
        row: list[bytes | None] = await redis.hmget(  # type: ignore[assignment]  # bytes: decode_responses is off
            keys.agent(agent_id), "profile", "create_ms", "start_ms", "attempt", "replays"
        )
    except RedisError as exc:
        log.warning("timing_not_read", agent_id=agent_id, error=str(exc))
        return
    profile = (row[0] or b"").decode("utf-8", "replace")
    start_ms = _int(row[2])
    if started and _int(row[3]) == 1 and not _int(row[4]) and start_ms:
        sink("queue_wait", profile, max(start_ms - _int(row[1]), 0) / 1000)
    if ran and start_ms:
        sink("run", profile, max(time.time() * 1000 - start_ms, 0) / 1000)
