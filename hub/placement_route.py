"""A selector spawn through the hub: screen the spokes, claim the command id, relay.

:class:`Placer` runs a spawn whose audience is the hub and whose body carries a selector
(docs/protocol.md §4.8):

1. a command id this issuer already placed (``ClaimStore``, any hub on this Redis) goes to
   the claimed spoke again, whatever its health now: one command never runs on two spokes;
2. else the spokes are screened (hub/placement.py), the candidates shuffled (ties break at
   random) and the least loaded relative to its size chosen, its claim taken and its
   placement counted in one Redis script (hub/placement_claim.py);
3. the client's envelope is relayed to it unchanged, as for a named spoke.

No candidate: FAILED_PRECONDITION, reason NO_MATCHING_SPOKE, naming what was missing.
A dry run (``SpawnAgentBody.dry_run``) screens and scores the same way but claims and counts
nothing; it relays the dry run to the chosen spoke (which checks its own verifier, policy,
profile and limits and creates nothing) and answers with a hub-signed Reply whose result is
a ``Placement``: the decision and every spoke considered, with why.

Dedupe keys (hub/dedupe.py): a selector spawn with a dedupe key whose owner already placed
that key goes to that spoke (whose own check then answers with the agent holding it); else
the key is claimed for the chosen spoke right after the choice. Either way the command id is
claimed for the spoke the spawn is relayed to.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from hubspoke import commands, envelope, errors
from hubspoke.gen.federation.v1 import command_pb2
from hubspoke.keys import SigningKey

from .circuit import Circuit
from .dedupe import DedupeClaims, spawn_key
from .drain import DrainStore
from .health import HealthMonitor
from .placement import Candidate, NoMatchingSpokeError, format_selector, no_match, screen
from .placement_claim import Claimed, ClaimStore
from .registry import SpokeRegistry
from .relay import Inbound

__all__ = ["MAX_SELECTOR_PAIRS", "Placer", "PlacerConfig", "check_selector"]

MAX_SELECTOR_PAIRS = 16
_MAX_LABEL_BYTES = 256

Relay = Callable[[str, Inbound], Awaitable[tuple[command_pb2.SignedEnvelope, command_pb2.Reply]]]
"""Authorize and relay a command to one spoke (HubServicer._relay)."""


def check_selector(selector: Mapping[str, str]) -> None:
    """INVALID_ARGUMENT for an unusable selector."""
    if len(selector) > MAX_SELECTOR_PAIRS:
        raise errors.InvalidCommandError(f"a selector has at most {MAX_SELECTOR_PAIRS} labels")
    for key, value in selector.items():
        if not key or not value:
            raise errors.InvalidCommandError("selector labels need a key and a value (key=value)")
        if len(key.encode()) > _MAX_LABEL_BYTES or len(value.encode()) > _MAX_LABEL_BYTES:
            raise errors.InvalidCommandError(
                f"selector keys and values are at most {_MAX_LABEL_BYTES} bytes"
            )


@dataclass(frozen=True, slots=True)
class PlacerConfig:
    hub_name: str
    key: SigningKey
    claim_ttl_s: float
    """The shortest a command id stays claimed (the spoke's default start_within); a spawn
    whose start_within is longer keeps it that long plus its signature window."""


class Placer:
    """Places selector spawns (see the module)."""

    def __init__(
        self,
        cfg: PlacerConfig,
        registry: SpokeRegistry,
        monitor: HealthMonitor | None,
        drains: DrainStore,
        claims: ClaimStore,
        allowed: Callable[[Inbound, str], bool],
        relay: Relay,
        dedupe: DedupeClaims | None = None,
    ) -> None:
        """``dedupe``: the hub's dedupe-key claims (None: only the spokes deduplicate)."""
        self._cfg = cfg
        self._registry = registry
        self._monitor = monitor
        self._drains = drains
        self._claims = claims
        self._allowed = allowed
        self._relay = relay
        self._dedupe = dedupe

    async def spawn(
        self, inbound: Inbound
    ) -> tuple[str, command_pb2.SignedEnvelope, command_pb2.Reply]:
        """Place and relay (or rehearse) a selector spawn: (spoke, signed reply, reply);
        the spoke is "" for a dry run that found none."""
        cmd = inbound.command
        body = cmd.spawn_agent
        check_selector(body.selector)
        earlier = await self._claims.claimed(cmd.issuer, cmd.command_id)
        if earlier:
            if body.dry_run:
                placement = command_pb2.Placement(
                    spoke=earlier,
                    claimed=True,
                    reason=f"command id {cmd.command_id} was already placed on {earlier}",
                )
                return earlier, *self._signed(inbound, placement)
            return earlier, *await self._relay(earlier, inbound)
        key = spawn_key(body) if self._dedupe is not None else ""
        held = await self._dedupe.held(cmd.issuer, key) if self._dedupe and key else None
        if held is not None:  # the owner's key lives on that spoke: it answers with that agent
            if body.dry_run:
                why = f"dedupe key {key} is held on {held.spoke} (command {held.command_id})"
                placement = command_pb2.Placement(spoke=held.spoke, reason=why)
                return held.spoke, *self._signed(inbound, placement)
            await self._claims.pin(cmd.issuer, cmd.command_id, held.spoke, self._claim_ttl(inbound))
            return held.spoke, *await self._relay(held.spoke, inbound)
        if self._monitor is not None:
            await self._monitor.first_round(1.0)
        screened = screen(
            self._registry.names(),
            labels=self._labels,
            selector=body.selector,
            profile=body.profile,
            allowed=lambda name: self._allowed(inbound, name),
            health=self._monitor.get if self._monitor else (lambda _: None),
            drained=await self._drains.drained(),
            circuit_open=self._circuit_open,
        )
        candidates = list(screened.candidates)
        random.shuffle(candidates)
        if not candidates:
            why = no_match(screened, body.selector, body.profile)
            if body.dry_run:
                placement = command_pb2.Placement(reason=why)
                _add_refused(placement, screened.refused)
                return "", *self._signed(inbound, placement)
            raise NoMatchingSpokeError(why, selector=format_selector(body.selector))
        result = await self._claims.place(
            cmd.issuer,
            cmd.command_id,
            candidates,
            claim_ttl_s=self._claim_ttl(inbound),
            dry_run=body.dry_run,
        )
        if not body.dry_run:
            spoke = result.spoke
            if self._dedupe is not None and key and not result.already:
                ttl = self._claim_ttl(inbound)
                won = await self._dedupe.claim(cmd.issuer, key, spoke, cmd.command_id, ttl)
                if won.spoke != spoke:  # another hub placed the key first: follow it there
                    spoke = won.spoke
                    await self._claims.pin(cmd.issuer, cmd.command_id, spoke, ttl)
            return spoke, *await self._relay(spoke, inbound)
        if result.already:  # claimed by another hub between our read and the script
            placement = command_pb2.Placement(
                spoke=result.spoke, claimed=True, reason="already placed there"
            )
            return result.spoke, *self._signed(inbound, placement)
        placement = _decision(candidates, result)
        _add_refused(placement, screened.refused)
        try:
            await self._relay(result.spoke, inbound)  # the spoke's own checks; it creates nothing
        except errors.CommandError as exc:
            placement.reason = f"{result.spoke} would refuse it: {exc.code.name} {exc.message}"
            placement.spoke = ""
            for c in placement.candidates:
                if c.chosen:
                    c.chosen = False
                    c.reason = f"least loaded, but refuses: {exc.reason}"
        return placement.spoke, *self._signed(inbound, placement)

    def _labels(self, name: str) -> Mapping[str, str]:
        entry = self._registry.entry(name)
        return entry.labels if entry is not None else {}

    def _circuit_open(self, name: str) -> bool:
        return self._monitor is not None and self._monitor.circuit(name) != Circuit.CLOSED

    def _claim_ttl(self, inbound: Inbound) -> float:
        body = inbound.command.spawn_agent
        asked = body.start_within.seconds + body.delay.seconds
        window = commands.from_timestamp(inbound.command.expire_time) - inbound.accepted
        return max(self._cfg.claim_ttl_s, float(asked)) + max(window.total_seconds(), 0.0)

    def _signed(
        self, inbound: Inbound, placement: command_pb2.Placement
    ) -> tuple[command_pb2.SignedEnvelope, command_pb2.Reply]:
        reply = command_pb2.Reply(
            command_id=inbound.command.command_id,
            responder=self._cfg.hub_name,
            request_digest=inbound.digest,
            issue_time=commands.to_timestamp(commands.now()),
            placement=placement,
        )
        signed = envelope.sign(
            reply.SerializeToString(), envelope.PAYLOAD_TYPE_REPLY, self._cfg.key
        )
        return signed, reply


def _decision(candidates: list[Candidate], result: Claimed) -> command_pb2.Placement:
    loads = {c.spoke: c.base + p for c, p in zip(candidates, result.placed, strict=False)}
    chosen = next(c for c in candidates if c.spoke == result.spoke)
    best = loads[chosen.spoke] / chosen.capacity
    placement = command_pb2.Placement(
        spoke=result.spoke,
        reason=f"least loaded of {len(candidates)} candidate(s), relative to its size",
    )
    for c in sorted(candidates, key=lambda c: c.spoke):
        load = loads.get(c.spoke, c.base)
        ratio = load / c.capacity
        why = (
            f"least loaded ({load}/{c.capacity})"
            if c.spoke == result.spoke
            else f"load {load}/{c.capacity} = {ratio:.2f}"
            + (" (tie, lost the draw)" if ratio == best else f" > {best:.2f}")
        )
        placement.candidates.append(
            command_pb2.PlacementCandidate(
                spoke=c.spoke,
                chosen=c.spoke == result.spoke,
                reason=why,
                load=load,
                capacity=c.capacity,
            )
        )
    return placement


def _add_refused(placement: command_pb2.Placement, refused: tuple[tuple[str, str], ...]) -> None:
    for spoke, why in refused:
        placement.candidates.append(command_pb2.PlacementCandidate(spoke=spoke, reason=why))
