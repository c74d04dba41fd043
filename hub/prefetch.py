"""What hubd reads from its Redis for a command before relaying it, read in the admission's
round trip (issue 13).

The admission script (rate token, nonce claim) and these reads go to Redis as one pipeline,
the reads right after the script, so each is still read after the command was admitted and
answers as a read of its own would; a refused command's reads are dropped:

* every command: the membership revision (hub/membership.py), which the hub checks on every
  command it admits;
* a spawn the client names a spoke for: the drained spokes (hub/drain.py) and the outbox's
  lookup of its command id (hub/outbox.py);
* a verb on one agent: by a spoke named in the audience or the agent's resource name, the
  outbox's lookup of the agent there; by bare id through the hub, the agent index
  (hub/store.py) and, with an outbox, the outbox's lookup of the agent on the spokes the
  index names, in one script (hub/index_lookup.py).

A read that fails, or a hub on a Redis Cluster (whose keys span slots), prefetches nothing:
the caller then reads as before, one round trip per read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import redis.exceptions

from hubspoke import errors
from hubspoke.gen.federation.v1 import command_pb2

from .drain import drained_key, parse_drained
from .index_lookup import Found, IndexLookup
from .membership_store import revision_key
from .outbox import Lookup, Outbox, parse_lookup
from .routing_config import RESOURCE_PREFIX, spoke_of_resource
from .store import HubStore, parse_found

if TYPE_CHECKING:
    from .outbox_desk import OutboxDesk
    from .registry import SpokeRegistry

__all__ = ["NOTHING", "Plan", "Prefetched", "Prefetcher", "prefetcher"]

_AGENT_BODIES: Final = frozenset(
    {
        "get_agent",
        "kill_agent",
        "verify_agent",
        "replay_agent",
        "send_input",
        "approve_agent",
        "reject_agent",
    }
)
"""Bodies on one agent whose relay looks the agent up in the outbox (hub/outbox_desk.py)."""


@dataclass(frozen=True, slots=True)
class Prefetched:
    """What was read with the admission (None: not read; read it as before)."""

    revision: int | None = None
    drained: Mapping[str, str] | None = None
    lookup: tuple[str, str, Lookup] | None = None
    """(spoke, agent, the outbox's lookup of that agent on that spoke)."""
    index: tuple[str, tuple[str, ...]] | None = None
    """(agent id, the spokes the agent index holds it on)."""
    found: Found | None = None
    """By bare id with an outbox: the index and the outbox's lookups (hub/index_lookup.py)."""

    def outbox_lookup(self, spoke: str, agent: str) -> Lookup | None:
        """The prefetched outbox lookup of ``agent`` on ``spoke``, if that one was read."""
        if self.found is not None and self.found.agent == agent:
            return self.found.lookups.get(spoke)
        if self.lookup is None or self.lookup[:2] != (spoke, agent):
            return None
        return self.lookup[2]

    def indexed(self, agent: str) -> tuple[str, ...] | None:
        """The spokes the index holds ``agent`` on, if that agent was looked up."""
        if self.found is not None and self.found.agent == agent:
            return self.found.spokes
        if self.index is None or self.index[0] != agent:
            return None
        return self.index[1]


NOTHING: Final = Prefetched()


@dataclass(frozen=True, slots=True)
class Plan:
    """The reads for one command: ``queue`` adds them to a pipeline, ``parse`` reads the
    replies back."""

    steps: Sequence[tuple[int, Callable[[Any], None], Callable[[Sequence[Any]], Any], str]] = field(
        default_factory=tuple
    )
    """(reply count, queue, parse, Prefetched field) per read."""
    noscript: Callable[[], None] | None = None
    """Called when a read answered NOSCRIPT (a script of the plan must be loaded again)."""

    def queue(self, pipe: Any) -> None:
        for _, add, _, _ in self.steps:
            add(pipe)

    def parse(self, replies: Sequence[Any]) -> Prefetched:
        found: dict[str, Any] = {}
        at = 0
        for count, _, read, name in self.steps:
            got = replies[at : at + count]
            at += count
            if len(got) != count or any(isinstance(r, Exception) for r in got):
                if self.noscript is not None and any(
                    isinstance(r, redis.exceptions.NoScriptError) for r in got
                ):
                    self.noscript()
                continue  # not prefetched: the caller reads it itself
            found[name] = read(got)
        return Prefetched(**found)


class Prefetcher:
    """Plans the reads of each admitted command (module docstring)."""

    def __init__(
        self,
        hub: str,
        store: HubStore,
        outbox: Outbox | None,
        membership: Callable[[], bool],
        index_lookup: IndexLookup | None = None,
    ) -> None:
        """``membership()``: whether the hub serves enrolled spokes (then it checks the
        membership revision on every command). ``index_lookup``: the index and outbox
        lookups of a bare id in one script (with an outbox; hub/index_lookup.py)."""
        self._hub = hub
        self._store = store
        self._outbox = outbox
        self._membership = membership
        self._index_lookup = index_lookup

    async def load(self) -> None:
        """Load the plan's scripts into Redis (hubd's start-up)."""
        if self._index_lookup is not None:
            await self._index_lookup.load()

    def plan(self, cmd: command_pb2.Command) -> Plan:
        steps: list[tuple[int, Callable[[Any], None], Callable[[Sequence[Any]], Any], str]] = []
        if self._membership():
            key = revision_key(self._hub)
            steps.append((1, lambda p: p.get(key), lambda r: int(r[0] or 0), "revision"))
        body = cmd.WhichOneof("body")
        spoke = agent = ""
        if body == "spawn_agent" and cmd.audience != self._hub and not cmd.spawn_agent.selector:
            drained = drained_key(self._hub)
            steps.append(
                (1, lambda p: p.hgetall(drained), lambda r: parse_drained(r[0]), "drained")
            )
            if not cmd.spawn_agent.dry_run:
                spoke, agent = cmd.audience, cmd.command_id
        elif body in _AGENT_BODIES:
            ref = str(getattr(cmd, body).agent)
            if cmd.audience != self._hub:
                spoke, agent = cmd.audience, _agent_id(ref)
            elif ref.startswith(RESOURCE_PREFIX):
                with contextlib.suppress(errors.InvalidCommandError):  # refused later, as ever
                    spoke, agent = spoke_of_resource(ref), _agent_id(ref)
            elif ref and self._outbox is not None and (lookup := self._script()) is not None:
                steps.append(
                    (1, lambda p: lookup.queue(p, ref), lambda r: lookup.parse(ref, r), "found")
                )
            elif ref:
                store = self._store
                steps.append(
                    (
                        3,
                        lambda p: store.queue_find(p, ref),
                        lambda r: (ref, parse_found(r)),
                        "index",
                    )
                )
        outbox = self._outbox
        if outbox is not None and spoke and agent:
            at = (spoke, agent)
            steps.append(
                (
                    3,
                    lambda p: outbox.queue_lookup(p, *at),
                    lambda r: (*at, parse_lookup(r)),
                    "lookup",
                )
            )
        return Plan(tuple(steps), self._index_lookup.lost if self._index_lookup else None)

    def _script(self) -> IndexLookup | None:
        """The index lookup script, if it may be used now (if not loaded, it starts loading)."""
        lookup = self._index_lookup
        return lookup if lookup is not None and lookup.usable() else None


def _agent_id(ref: str) -> str:
    """The agent id of a bare id or a resource name (as hub/outbox_desk.py reads it)."""
    return ref.rsplit("/", 1)[-1] if ref.startswith(RESOURCE_PREFIX) else ref


def prefetcher(
    hub: str, store: HubStore, desk: OutboxDesk | None, registry: SpokeRegistry
) -> Prefetcher | None:
    """hubd's prefetcher: none on a Redis Cluster (the reads span slots)."""
    if store.cluster:
        return None
    return Prefetcher(
        hub,
        store,
        desk.outbox if desk is not None else None,
        lambda: registry.enrolled,
        IndexLookup(store.client, hub, store.timeout_s) if desk is not None else None,
    )
