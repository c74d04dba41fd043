"""The hub's view of enrolled spokes: a cache of the membership in Redis, and the keys in it.

Every hub on one Redis shares the membership (hub/membership_store.py). A hub process keeps
a copy and checks the revision counter before it uses it (:meth:`Membership.fresh`: one GET;
the whole list is read again only when the revision moved). The hub checks it on every
command it admits and before it verifies every spoke reply, so a removed spoke's key is
refused by every hub at once, and a spoke enrolled through another hub is known at once.

:class:`MemberKeys` is a ``hubspoke.envelope.KeySource``: the static trust store first, then
the enrolled spokes' keys (role spoke). A name is either static or enrolled, never both:
enrolment refuses the name of a static peer.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Mapping
from types import MappingProxyType

import structlog

from hubspoke import keys
from hubspoke.gen.federation.v1 import enrol_pb2
from hubspoke.trust import Role, TrustedKey, TrustStore

from .config import SpokeEntry
from .membership_store import MembershipStore

__all__ = ["MemberKeys", "Membership", "entry_of", "trusted_key_of"]

log = structlog.get_logger("hubspoke.hub.membership")

MODE_DIAL = "dial"
MODE_CONNECT = "connect"


def trusted_key_of(member: enrol_pb2.Member) -> TrustedKey | None:
    """The member's signing key as a trusted spoke key (None if its record is malformed)."""
    try:
        public = keys.decode_public(member.public_key)
    except keys.KeyFileError:
        return None
    return TrustedKey(member.name, Role.SPOKE, public, keys.fingerprint(public))


def entry_of(member: enrol_pb2.Member) -> SpokeEntry:
    """The member as the registry routes to it: its address and the operator's labels."""
    return SpokeEntry(
        name=member.name,
        address=member.address,
        labels=MappingProxyType(dict(member.labels)),
        link=MODE_CONNECT if member.mode == MODE_CONNECT else MODE_DIAL,
    )


class Membership:
    """A revision-checked copy of the enrolled spokes."""

    def __init__(self, store: MembershipStore) -> None:
        self._store = store
        self._revision = -1
        self._check_task: asyncio.Future[None] | None = None
        self._check_number = 0
        self._checks_started = 0
        self._members: Mapping[str, enrol_pb2.Member] = MappingProxyType({})
        self._keys: Mapping[str, TrustedKey] = MappingProxyType({})
        self._entries: Mapping[str, SpokeEntry] = MappingProxyType({})

    @property
    def store(self) -> MembershipStore:
        return self._store

    @property
    def revision(self) -> int:
        """The revision of the copy held (-1 before the first read)."""
        return self._revision

    async def fresh(self) -> None:
        """Bring the copy up to date if the revision moved (raises BackendUnavailableError).

        Concurrent callers share the check, yet each is answered by a read that began after
        it called: a caller that finds a check in flight waits for it, then joins (or
        starts) the next one. A fan-out of a thousand relayed calls costs two GETs, not a
        thousand, and a removal is still seen by every call made after it."""
        need = self._checks_started + 1  # a check numbered >= need began after this call
        while True:
            task = self._check_task
            if task is not None and not task.done():
                joinable = self._check_number >= need
                await asyncio.shield(task)
                if joinable:
                    return
                continue
            self._checks_started += 1
            self._check_number = self._checks_started
            self._check_task = asyncio.ensure_future(self._check())
            await asyncio.shield(self._check_task)
            return

    async def _check(self) -> None:
        if await self._store.revision() != self._revision:
            await self.reload()

    async def reload(self) -> None:
        revision, members = await self._store.load()
        by_name = {m.name: m for m in members}
        found: dict[str, TrustedKey] = {}
        for member in members:
            key = trusted_key_of(member)
            if key is None:
                log.warning("member_key_malformed", spoke=member.name)
                continue
            found[key.fingerprint] = key
        self._members = MappingProxyType(by_name)
        self._keys = MappingProxyType(found)
        self._entries = MappingProxyType({m.name: entry_of(m) for m in members})
        if revision != self._revision:
            log.info("membership_loaded", revision=revision, members=len(by_name))
        self._revision = revision

    def members(self) -> list[enrol_pb2.Member]:
        """Every enrolled spoke, sorted by name."""
        return [self._members[n] for n in sorted(self._members)]

    def member(self, name: str) -> enrol_pb2.Member | None:
        return self._members.get(name)

    def entries(self) -> Mapping[str, SpokeEntry]:
        """Every member as a registry entry; a connect-mode one has ``link = "connect"`` and
        no address (the hub reaches it over the session it opens: hub/link_registry.py)."""
        return self._entries

    def candidates(self, fingerprint: str, now: dt.datetime) -> list[TrustedKey]:
        key = self._keys.get(fingerprint)
        return [key] if key is not None and key.valid_at(now) else []


class MemberKeys(TrustStore):
    """The hub's trust store with the enrolled spokes in it: the static store first (a name
    is static or enrolled, never both), then the membership's spoke keys.

    A ``TrustStore`` so every part of the hub that verifies a spoke (replies, probes'
    statuses, connect-mode hellos) sees enrolled spokes without a change; the static file
    still reloads itself as before. The membership is attached once Redis is open.
    """

    def __init__(self, static: TrustStore) -> None:
        super().__init__(())
        self._static = static
        self._membership: Membership | None = None

    @property
    def static(self) -> TrustStore:
        return self._static

    def attach(self, membership: Membership) -> None:
        self._membership = membership

    def candidates(self, fingerprint: str, now: dt.datetime) -> list[TrustedKey]:
        found = self._static.candidates(fingerprint, now)
        if found or self._membership is None or self._static.is_revoked(fingerprint):
            return found
        return self._membership.candidates(fingerprint, now)

    def role_of(self, peer: str) -> Role | None:
        role = self._static.role_of(peer)
        if role is None and self._membership is not None and self._membership.member(peer):
            return Role.SPOKE
        return role

    def keys_of(self, peer: str) -> list[TrustedKey]:
        found = self._static.keys_of(peer)
        if found or self._membership is None:
            return found
        member = self._membership.member(peer)
        key = trusted_key_of(member) if member is not None else None
        return [key] if key is not None else []

    def peers(self, role: Role | None = None) -> list[str]:
        names = set(self._static.peers(role))
        if self._membership is not None and role in (None, Role.SPOKE):
            names.update(m.name for m in self._membership.members())
        return sorted(names)

    def is_revoked(self, fingerprint: str) -> bool:
        return self._static.is_revoked(fingerprint)
