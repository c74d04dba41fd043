"""The classes between principals (issue 9), against :mod:`fuzzlib.tenants`: each one has its
own pass criteria, and every failure of one is counted as *unexpected* with a sample.

=================  ===========================================================================
class              passes when
=================  ===========================================================================
cross_principal    alice (scope ``own``) tries every agent verb on each of bob's agents
                   (running, finished, failed, queued), by bare id and by resource name,
                   through the hub, straight to the spoke and relayed: every answer is
                   NOT_FOUND and exactly (code, reason, message) the answer for an id nobody
                   used; her lists show none of bob's agents; queue-wide verbs are
                   PERMISSION_DENIED; afterwards bob's agents are as they were (states,
                   attempts), bob can still kill his running one and a new one runs.
watch_flood        through the hub and straight to the spoke: alice holds her per-principal
                   cap of watches, bob fills the total; every watch beyond the caps is
                   RESOURCE_EXHAUSTED; meanwhile the operator's spawn, get, list, stats and
                   kill all succeed, an agent finishing then is recorded SUCCEEDED with its
                   exit code, and every held stream stays open until its agent ends.
argv_injection     per profile kind (task after the profile's ``--``; exposed and validated by
                   ``task_pattern``; on stdin; inside ``--task={task}``): a task that breaks
                   the kind's pattern, or is option-like where the kind exposes it, is
                   INVALID_ARGUMENT and leaves no record; every task accepted runs and its
                   program finds it where the profile puts it (the checker exits 0).
redis_tampering    queued records whose profile, task, timeout or issuer were edited in Redis
                   end FAILED with reason TAMPERED, attempt 0, never started, and the edit
                   left no file behind; untouched records in the same batch run.
quota_exhaustion   mallory floods delayed spawns: exactly ``QUOTA`` are stored, every other is
                   RESOURCE_EXHAUSTED QUOTA_EXCEEDED, a delay beyond ``max_delay_s`` is
                   INVALID_ARGUMENT; bob still spawns.
=================  ===========================================================================
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

from . import tenants as T
from .endpoints import Endpoint
from .forge import Forge
from .isolation_access import cross_principal
from .isolation_argv import argv_injection
from .isolation_records import quota_exhaustion, redis_tampering
from .isolation_sender import Sender
from .isolation_watch import watch_flood
from .runner import ClassStats, Runner

ISOLATION_FULL: Final = {
    "cross_principal": 2_000,
    "watch_flood": 2_000,
    "argv_injection": 1_000,
    "redis_tampering": 200,
    "quota_exhaustion": 2_000,
}


def isolation_counts(scale: str) -> dict[str, int]:
    """The full counts, or the reduced ones: one round of every variant, a few seconds each."""
    if scale == "full":
        return dict(ISOLATION_FULL)
    return {
        "cross_principal": 0,  # 0: one round (every verb x target x form x mode)
        "watch_flood": 40,
        "argv_injection": 0,
        "redis_tampering": 10,
        "quota_exhaustion": T.QUOTA + 40,
    }


CLASSES: Final[list[tuple[str, Callable[[Sender, int], Awaitable[ClassStats]]]]] = [
    ("cross_principal", cross_principal),
    ("argv_injection", argv_injection),
    ("redis_tampering", redis_tampering),
    ("watch_flood", watch_flood),
    ("quota_exhaustion", quota_exhaustion),
]
"""In this order: the quota flood last, since its stored agents stay queued."""


async def run_isolation(
    scale: str, root: Path, rng: random.Random, endpoints: list[Endpoint], concurrency: int
) -> tuple[dict[str, ClassStats], dict[str, Any]]:
    """Start the tenants' federation in ``root``, run every class, stop it. Returns the
    classes' stats and what the run saw (counts, phases, health, teardown)."""
    counts = isolation_counts(scale)
    phases: dict[str, float] = {}
    mark = time.monotonic()
    fed = await T.start(root)
    phases["tenants_start"] = time.monotonic() - mark
    runner = Runner(fed, concurrency, progress=True)
    health: dict[str, str] = {}
    try:
        s = Sender(fed, Forge(fed.keys, rng, hub_name=T.HUB, spoke_name=T.SPOKE), runner, endpoints)
        for name, cls in CLASSES:
            mark = time.monotonic()
            st = await cls(s, counts[name])
            phases[name] = time.monotonic() - mark
            print(
                f"fuzz: {name}: {st.sent} sent in {st.duration_s:.1f} s, "
                f"{st.unexpected} unexpected",
                file=sys.stderr,
            )
        health["signed_call_after"] = await s.call_ok("operator", "hub", "list_agents", "hub")
        health["watch_streams_open_after"] = str(fed.open_watch_streams())
    finally:
        mark = time.monotonic()
        await fed.close()
        phases["tenants_stop"] = time.monotonic() - mark
    return runner.stats, {
        "counts": counts,
        "phases_s": {k: round(v, 1) for k, v in phases.items()},
        "health": health,
        "teardown_timeouts": fed.teardown_timeouts,
        "quota": T.QUOTA,
        "caps": {
            "spoke": [T.SPOKE_WATCHERS_PER_PRINCIPAL, T.SPOKE_WATCHERS],
            "hub": [T.HUB_WATCHERS_PER_PRINCIPAL, T.HUB_WATCHERS],
        },
    }
