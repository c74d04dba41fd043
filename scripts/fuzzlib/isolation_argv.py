"""The ``argv_injection`` isolation class: tasks that break each profile kind's pattern or look
like options, through every route (pass criteria: :mod:`fuzzlib.isolation`).
"""

from __future__ import annotations

import asyncio
from typing import Final

from . import classes as C
from . import tenants as T
from .isolation_sender import FINAL, Sender, fail, new_stats, timed
from .runner import ClassStats

OPTION_LIKE: Final = (
    "--basetemp=/tmp/hubspoke-fuzz",
    "--junitxml=/tmp/hubspoke-fuzz.xml",
    "-rf",
    "-",
    "--",
    "-c",
    "--help",
    "-o=x",
    "--rootdir=..",
    "-x",
)
PATTERN_BREAKING: Final = (
    "a b",
    "a;id",
    "$(id)",
    "a\nb",
    "UPPER",
    "a|b",
    "x\ty",
    "`id`",
    "a&&b",
    "\u00e9t\u00e9",
)
PLAIN: Final = ("tests/unit", "a.b", "x_1")
KINDS: Final[dict[str, dict[str, bool]]] = {
    # kind -> whether each group is accepted (True) or INVALID_ARGUMENT (False)
    "dashdash": {"option": True, "breaking": True, "plain": True},
    "pattern": {"option": False, "breaking": False, "plain": True},
    "stdin": {"option": True, "breaking": False, "plain": True},
    "option": {"option": True, "breaking": False, "plain": True},
}
"""After ``--``, an option-like task is an operand; on stdin or inside ``--task=``, it is data;
exposed (``pattern``), it is refused. Every kind but ``dashdash`` has a task_pattern."""


async def argv_injection(s: Sender, n: int) -> ClassStats:
    st = new_stats(
        s.runner,
        "argv_injection",
        "option-like, pattern-breaking and plain tasks for each task placement kind: refused "
        "with INVALID_ARGUMENT and nothing stored, or run with the task where the profile puts it",
        {C.OK, C.INVALID},
    )
    t = s.tenants
    cases = [
        (kind, group, task)
        for kind in KINDS
        for group, tasks in (
            ("option", OPTION_LIKE),
            ("breaking", PATTERN_BREAKING),
            ("plain", PLAIN),
        )
        for task in tasks
    ]
    routes = [("hub", "hub"), ("spoke", "direct"), ("spoke", "relay")]
    total = max(n, len(cases))
    sem = asyncio.Semaphore(4)  # at most 4 waiting agents at once: far below the quota
    counts = {"ran": 0, "refused": 0}

    async def one(i: int) -> None:
        kind, group, task = cases[i % len(cases)]
        server, mode = routes[(i // len(cases) + i) % len(routes)]
        principal = (T.ALICE, T.BOB)[i % 2]
        accepted = KINDS[kind][group]
        expect = frozenset({C.OK}) if accepted else frozenset({C.INVALID})
        async with sem:
            o, agent = await s.send(
                principal,
                s.ep(server, "spawn_agent"),
                mode,
                variant=f"{kind}:{group}@{mode}",
                expect=expect,
                st=st,
                profile=kind,
                task=task,
            )
            if o.code == C.OK:
                got = await t.wait_states({agent: FINAL}, 60)
                if got[agent] != "SUCCEEDED":
                    rec = await t.record(agent)
                    fail(st, "accepted_task_misplaced", kind=kind, task=task, record=rec)
                counts["ran"] += 1
            elif await t.state(agent):
                fail(st, "refused_task_stored", kind=kind, task=task, agent=agent)
            else:
                counts["refused"] += 1

    async def body() -> None:
        await asyncio.gather(*(one(i) for i in range(total)))
        st.extra.update(counts, cases=len(cases))

    return await timed(st, s.runner, body, 900)
