"""Run modes (issue 12): how a spoke runs a profile's agents, and what shadow mode records.

Each spoke runs in one mode (config ``mode``, ``SPOKE_MODE``; default ``live``) and each
profile may name one too (profile key ``mode``). From least to most cautious:

* ``live``: the profile's own program runs.
* ``synthetic``: the built-in synthetic agent (:mod:`hubspoke.spoke.synthetic`) runs in place
  of the profile's program, for rehearsal. It keeps the profile's name, limits and task checks
  (timeout, kill grace, attempts, retry safety, concurrency, start deadline, task_pattern) and
  drops what belongs to the real program (argv, cwd, env, inherit_env, secrets): the task is
  given to the synthetic agent as to the ``synthetic`` profile, so its directives
  (``duration=``, ``exit=``, ``receipt=``, ...) apply and any other text runs the default
  (about a second, then a ``completed`` receipt).
* ``shadow``: nothing starts. The agent is verified, authorized, routed, queued and taken by a
  worker like any other (QUEUED → STARTING), then ends in the final state SHADOWED (reason
  SHADOW_MODE) with :class:`ShadowPlan`: the argv with the task placed, the cwd and the
  *names* of the environment variables it would have had (secrets' names included, never a
  value; no secret file is read).

A profile's mode can only make the spoke's more cautious (:func:`effective_mode` takes the
more cautious of the two): a profile may be ``shadow`` on a ``live`` spoke, but a ``live``
profile on a ``shadow`` spoke is shadowed, so turning a whole spoke to shadow is one switch.
The mode is decided when a worker takes the agent, from the config of the spoked that runs it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import structlog

from .model import AgentRecord, AgentState
from .profiles import TASK_PLACEHOLDER, Profile, synthetic_profile
from .records import Records
from .runmode import Mode, effective_mode, parse_mode
from .runtime import agent_environment

__all__ = [
    "SHADOW_MODE",
    "Mode",
    "ShadowPlan",
    "effective_mode",
    "parse_mode",
    "shadow",
    "shadow_plan",
    "synthetic_stand_in",
]

log = structlog.get_logger("hubspoke.spoke.modes")

SHADOW_MODE = "SHADOW_MODE"
"""The reason of a SHADOWED agent."""


@dataclass(frozen=True, slots=True)
class ShadowPlan:
    """What a shadow-mode spoke would have started (Agent.shadow_run)."""

    argv: tuple[str, ...]
    cwd: str
    env_names: tuple[str, ...]
    task_on_stdin: bool

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ShadowPlan | None:
        """The stored plan, or None for none (or one that is not a plan)."""
        try:
            raw = json.loads(text) if text else None
            if not isinstance(raw, dict):
                return None
            return cls(
                argv=tuple(str(a) for a in raw.get("argv", [])),
                cwd=str(raw.get("cwd", "")),
                env_names=tuple(str(n) for n in raw.get("env_names", [])),
                task_on_stdin=bool(raw.get("task_on_stdin", False)),
            )
        except (ValueError, TypeError):
            return None


def shadow_plan(profile: Profile, *, task: str, agent_id: str, attempt: int) -> ShadowPlan:
    """What :func:`hubspoke.spoke.runtime.start_agent` would run, without running anything
    or reading a secret file (secrets appear by name only)."""
    env = agent_environment(
        profile,
        task=task,
        agent_id=agent_id,
        attempt=attempt,
        secrets=dict.fromkeys(profile.secrets, ""),
    )
    return ShadowPlan(
        argv=tuple(element.replace(TASK_PLACEHOLDER, task) for element in profile.argv),
        cwd=profile.cwd or "",
        env_names=tuple(sorted(env)),
        task_on_stdin=profile.task_on_stdin,
    )


def synthetic_stand_in(profile: Profile) -> Profile:
    """``profile`` with the synthetic agent in place of its program (see the module
    docstring for what is kept and what is dropped)."""
    fake = synthetic_profile()
    return dataclasses.replace(
        profile,
        argv=fake.argv,
        cwd=None,
        env={},
        inherit_env=False,
        task_on_stdin=True,
        secrets={},
        mode=None,
    )


async def shadow(records: Records, rec: AgentRecord, profile: Profile, worker: str) -> str:
    """End a STARTING agent this worker holds SHADOWED, with what would have run."""
    attempt = rec.attempt + 1
    plan = shadow_plan(profile, task=rec.task, agent_id=rec.agent_id, attempt=attempt)
    await records.transition(
        rec.agent_id,
        [AgentState.STARTING],
        AgentState.SHADOWED,
        SHADOW_MODE,
        {"shadow_run": plan.to_json()},
        owner=(worker, attempt),
    )
    log.info("agent_shadowed", argv0=plan.argv[0] if plan.argv else "")
    return AgentState.SHADOWED.value
