"""HubService's settings, and how it names agents: resource names, the index's answers,
and the one error for an id on several spokes (hub/service.py uses these)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from hubspoke import errors
from hubspoke.keys import SigningKey

__all__ = [
    "MAX_WATCHERS",
    "MAX_WATCHERS_PER_PRINCIPAL",
    "RESOURCE_PREFIX",
    "AgentAmbiguousError",
    "RoutingConfig",
    "agent_not_found",
    "not_indexed",
    "spoke_of_resource",
]

RESOURCE_PREFIX = "spokes/"
MAX_WATCHERS = 1024
"""Default of ``RoutingConfig.max_watchers``."""
MAX_WATCHERS_PER_PRINCIPAL = 32
"""Default of ``RoutingConfig.max_watchers_per_principal``."""


class AgentAmbiguousError(errors.CommandError):
    """A bare agent id names agents on several spokes the caller may act on."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "AGENT_AMBIGUOUS"

    @classmethod
    def of(cls, agent: str, spokes: Sequence[str]) -> AgentAmbiguousError:
        names = sorted(spokes)
        return cls(
            f"agent {agent} exists on several spokes: {', '.join(names)}; name one "
            f"(audience, or the resource name spokes/{{spoke}}/agents/{agent})",
            agent=agent,
            spokes=",".join(names),
        )


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    """What the service needs to know beyond its collaborators."""

    hub_name: str
    key: SigningKey
    agent_index_ttl_s: float
    probe_timeout_s: float
    watch_max_s: float = 3600.0
    """The longest a relayed watch stream may last."""
    max_watchers: int = MAX_WATCHERS
    """Concurrent relayed watch streams this hub process holds; more get RESOURCE_EXHAUSTED."""
    max_watchers_per_principal: int = MAX_WATCHERS_PER_PRINCIPAL
    """Concurrent relayed watch streams one principal may hold here; more get
    RESOURCE_EXHAUSTED (each spoke also caps them per principal)."""
    max_message_bytes: int = 4 * 1024 * 1024
    """The largest message this hub sends: a list fan-out carries the spokes' pages that fit
    under it and names the others in ``omitted_spokes``."""
    fanout_timeout_s: float = 5.0
    """One deadline for every spoke a fan-out asks; those that did not answer are named."""
    claim_ttl_s: float = 86400.0
    """The shortest time a selector spawn's command id stays claimed for its spoke
    (hub/placement_claim.py); a longer start_within keeps it longer."""
    max_input_bytes: int = 64 * 1024
    """The longest SendInput text (UTF-8 bytes) relayed; a longer one is refused here."""


def agent_not_found(exc: errors.CommandError) -> bool:
    """A spoke's NOT_FOUND for the agent (its own words, passed on by the relay)."""
    return exc.code == grpc.StatusCode.NOT_FOUND and exc.reason == "AGENT_NOT_FOUND"


def not_indexed(agent: str) -> errors.AgentNotFoundError:
    """The one answer for a bare id the hub cannot route, whether or not it exists elsewhere."""
    return errors.AgentNotFoundError(
        f"agent {agent} is not in this hub's index: name its spoke "
        "(audience, or the resource name spokes/{spoke}/agents/{id})",
        agent=agent,
    )


def spoke_of_resource(name: str) -> str:
    """The spoke part of ``spokes/{spoke}/agents/{agent}``."""
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "spokes" or parts[2] != "agents" or not all(parts):
        raise errors.InvalidCommandError(
            "agent must be an id or a resource name spokes/{spoke}/agents/{agent}"
        )
    return parts[1]
