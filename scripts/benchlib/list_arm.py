"""The ``list_page`` arm: a signed ListAgents page of ``LIST_PAGE_SIZE`` agents, straight from
the spoke (``spoke-01``, whose backlog holds the status pool and every spawn arm's agents).

Issue 13's last row is the spoke's CPU per agent listed: the arm's spoke CPU per op divided
by the page size (``issue13``). An op is wrong (``lost``) when the page is not full or has no
next-page token: the backlog always holds more than a page.
"""

from __future__ import annotations

import time

from .context import SPAWN_SPOKE, Env
from .harness import Arm
from .issue13 import LIST_PAGE_SIZE


def list_arms(env: Env) -> list[Arm]:
    assert env.spoke is not None
    spoke = env.spoke
    wrong = [0]

    async def begin() -> None:
        wrong[0] = 0

    async def op(i: int) -> float:
        t0 = time.perf_counter()
        page = await spoke.list(LIST_PAGE_SIZE)
        elapsed = time.perf_counter() - t0
        wrong[0] += len(page.agents) != LIST_PAGE_SIZE or not page.next_page_token
        return elapsed

    async def check() -> dict[str, int]:
        return {"lost": wrong[0]}

    roles = {"spoke": [f"spoke:{SPAWN_SPOKE}"], "redis": [f"redis:{SPAWN_SPOKE}"]}
    return [
        Arm(
            "list_page",
            "ours",
            f"signed ListAgents to the spoke, a page of {LIST_PAGE_SIZE} over its backlog",
            op,
            env.sizes.rpc_lat,
            env.sizes.rpc_tput,
            roles=roles,
            redis=roles["redis"],
            begin=begin,
            check=check,
        )
    ]
