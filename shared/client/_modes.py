"""The client's types for run modes (issue 12): how a spoke runs a profile's agents, and what a
shadow-mode spoke would have run for a SHADOWED agent (never a secret's value)."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from hubspoke.gen.federation.v1 import agent_pb2

__all__ = ["RunMode", "ShadowRun"]


class RunMode(enum.IntEnum):
    """``live`` runs the profile's program, ``shadow`` runs nothing (the agent ends SHADOWED),
    ``synthetic`` runs the built-in synthetic agent instead (docs/operations.md)."""

    UNSPECIFIED = agent_pb2.RUN_MODE_UNSPECIFIED
    LIVE = agent_pb2.RUN_MODE_LIVE
    SHADOW = agent_pb2.RUN_MODE_SHADOW
    SYNTHETIC = agent_pb2.RUN_MODE_SYNTHETIC

    @property
    def label(self) -> str:
        """``live``, ``shadow``, ``synthetic``, or ``""`` when not known."""
        return "" if self is RunMode.UNSPECIFIED else self.name.lower()

    @classmethod
    def of(cls, value: int) -> RunMode:
        """The mode of a wire number; one this client does not know reads as UNSPECIFIED."""
        try:
            return cls(value)
        except ValueError:
            return cls.UNSPECIFIED


@dataclass(frozen=True, slots=True)
class ShadowRun:
    """What a shadow-mode spoke would have started for an agent."""

    argv: Sequence[str]
    """The program and its arguments, with the task placed."""
    cwd: str
    """The working directory ("": the spoke's own)."""
    env_names: Sequence[str]
    """The environment variables' names (sorted); never their values."""
    task_on_stdin: bool

    @classmethod
    def from_proto(cls, msg: agent_pb2.ShadowRun) -> ShadowRun:
        return cls(tuple(msg.argv), msg.cwd, tuple(msg.env_names), msg.task_on_stdin)
