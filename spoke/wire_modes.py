"""An agent record's run mode and shadow plan onto its wire message (Agent.mode, 34;
Agent.shadow_run, 33): spoke/wire.py calls :func:`add_mode`."""

from __future__ import annotations

from hubspoke.gen.federation.v1 import agent_pb2

from .model import AgentRecord
from .modes import ShadowPlan
from .runmode import Mode

__all__ = ["add_mode", "wire_mode"]

_WIRE = {
    Mode.LIVE: agent_pb2.RUN_MODE_LIVE,
    Mode.SHADOW: agent_pb2.RUN_MODE_SHADOW,
    Mode.SYNTHETIC: agent_pb2.RUN_MODE_SYNTHETIC,
}


def wire_mode(mode: Mode) -> agent_pb2.RunMode.ValueType:
    """The wire number of a run mode."""
    return _WIRE[mode]


def add_mode(agent: agent_pb2.Agent, rec: AgentRecord) -> None:
    """Set ``agent.mode`` from the record, and ``agent.shadow_run`` when it has a plan."""
    if rec.mode in Mode.__members__.values():
        agent.mode = _WIRE[Mode(rec.mode)]
    plan = ShadowPlan.from_json(rec.shadow_run)
    if plan is not None:
        agent.shadow_run.CopyFrom(
            agent_pb2.ShadowRun(
                argv=plan.argv,
                cwd=plan.cwd,
                env_names=plan.env_names,
                task_on_stdin=plan.task_on_stdin,
            )
        )
