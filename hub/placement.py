"""Which spokes may take a selector spawn, and why the others may not (no Redis, no I/O).

A spoke is a candidate when, in this order,

1. its operator labels (the hub's config, or the labels set at enrolment: the registry's
   ``SpokeEntry.labels``; never what the spoke says of itself) carry every ``key=value`` of
   the selector;
2. the issuer's policy lets it spawn that profile there (shared/policy.py);
3. it is READY, not drained by an operator and its circuit is closed;
4. its last verified status lists the profile.

Each spoke that fails a step is kept with the reason, so a dry run can show it and a spawn
with no candidate answers FAILED_PRECONDITION, reason NO_MATCHING_SPOKE, naming the step
that left none (:func:`no_match`). The size of a candidate is the profile's
``max_concurrency`` (1 when unlimited); its load is running + queued at its last status,
plus the placements the hubs made since (hub/placement_claim.py counts them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import grpc

from hubspoke import errors
from hubspoke.gen.federation.v1 import command_pb2

from .health import SpokeHealth, SpokeState

__all__ = [
    "Candidate",
    "NoMatchingSpokeError",
    "Screened",
    "format_selector",
    "no_match",
    "screen",
]


class NoMatchingSpokeError(errors.CommandError):
    """No spoke fits a selector spawn; the message names what was missing."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "NO_MATCHING_SPOKE"


@dataclass(frozen=True, slots=True)
class Candidate:
    """A spoke that may take the spawn, with what its score is built from."""

    spoke: str
    base: int
    """Running + queued agents at its last verified status."""
    capacity: int
    """The profile's max_concurrency there (1 when unlimited)."""
    observed_ms: int
    """When the spoke took that status (epoch ms, the spoke's clock)."""


@dataclass(frozen=True, slots=True)
class Screened:
    """Every spoke considered: the candidates, and each refused one with its reason."""

    candidates: tuple[Candidate, ...]
    refused: tuple[tuple[str, str], ...]
    """(spoke, reason), in registry order."""
    step: str
    """The last step some spoke passed: labels, policy, health, profile or "" (none)."""


_STEPS = ("labels", "policy", "health", "profile")


def format_selector(selector: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items()))


def _label_miss(labels: Mapping[str, str], selector: Mapping[str, str]) -> str:
    for key, want in sorted(selector.items()):
        have = labels.get(key)
        if have is None:
            return f"no label {key}"
        if have != want:
            return f"label {key}={have}, not {want}"
    return ""


def _health_miss(record: SpokeHealth | None, draining: bool, circuit_open: bool) -> str:
    if draining:
        return "draining"
    if record is None or record.state == SpokeState.UNKNOWN:
        return "not probed yet"
    if record.state not in (SpokeState.READY, SpokeState.DRAINING):
        detail = f" ({record.detail})" if record.detail else ""
        return f"{record.state.name.lower()}{detail}"
    if circuit_open:
        return "circuit open"
    return ""


def _capacity(
    status: command_pb2.SpokeStatus | None, profile: str
) -> command_pb2.ProfileCapacity | None:
    if status is None:
        return None
    return next((p for p in status.profiles if p.profile == profile), None)


def screen(
    names: Sequence[str],
    *,
    labels: Callable[[str], Mapping[str, str]],
    selector: Mapping[str, str],
    profile: str,
    allowed: Callable[[str], bool],
    health: Callable[[str], SpokeHealth | None],
    drained: Mapping[str, str],
    circuit_open: Callable[[str], bool],
) -> Screened:
    """Sort ``names`` into candidates and refused spokes (see the module's steps)."""
    found: list[Candidate] = []
    refused: list[tuple[str, str]] = []
    reached = -1
    for name in names:
        miss = _label_miss(labels(name), selector)
        step = 0
        if not miss:
            step = 1
            if not allowed(name):
                miss = f"policy does not allow spawning {profile} here"
        if not miss:
            step = 2
            record = health(name)
            miss = _health_miss(record, name in drained, circuit_open(name))
        if not miss:
            step = 3
            cap = _capacity(record.status if record else None, profile)
            if cap is None:
                miss = f"does not offer profile {profile}"
        if miss:
            refused.append((name, miss))
            reached = max(reached, step - 1)
            continue
        if record is None or record.status is None or cap is None:  # pragma: no cover
            continue  # unreachable: the steps above refused such a spoke
        status = record.status
        found.append(
            Candidate(
                spoke=name,
                base=int(status.running + status.queued),
                capacity=max(int(cap.max_concurrency), 1),
                observed_ms=status.observe_time.ToMilliseconds(),
            )
        )
        reached = 3
    return Screened(tuple(found), tuple(refused), _STEPS[reached] if reached >= 0 else "")


def no_match(screened: Screened, selector: Mapping[str, str], profile: str) -> str:
    """What was missing, in one line, for a spawn no spoke can take."""
    sel = format_selector(selector)
    if not screened.refused:
        return "the hub has no spokes"
    if screened.step == "":
        return f"no spoke has labels {sel}"
    if screened.step == "labels":
        return f"policy allows spawning {profile} on none of the spokes with labels {sel}"
    with_labels = [
        f"{s} ({why})" for s, why in screened.refused if not why.startswith(("no label", "label "))
    ]
    if screened.step == "policy":
        return f"the spokes with labels {sel} are all unavailable: " + ", ".join(
            w for w in with_labels if "policy does not allow" not in w
        )
    return f"none of the spokes with labels {sel} offers profile {profile}"
