"""The filters of a ListAgents call beyond its states (docs/protocol.md §4.3): labels (every
one must match), profile, owner and dedupe key, checked and turned into one predicate on a
record. The spoke applies them while it reads its time index (spoke/pages.py: a filtered
page reads on until it is full), so paging by count and by bytes works as without them.
"""

from __future__ import annotations

from dataclasses import dataclass

from hubspoke import errors, list_filters
from hubspoke.gen.federation.v1 import command_pb2

from .model import AgentRecord


@dataclass(frozen=True, slots=True)
class AgentFilter:
    """A record matches when it carries every label with its value and, for each of profile,
    owner and dedupe key that is set, has exactly that one."""

    labels: tuple[tuple[str, str], ...] = ()
    profile: str = ""
    owner: str = ""
    dedupe_key: str = ""

    def __call__(self, rec: AgentRecord) -> bool:
        return (
            all(rec.labels.get(k) == v for k, v in self.labels)
            and (not self.profile or rec.profile == self.profile)
            and (not self.owner or rec.issuer == self.owner)
            and (not self.dedupe_key or rec.dedupe_key == self.dedupe_key)
        )

    @property
    def empty(self) -> bool:
        return not (self.labels or self.profile or self.owner or self.dedupe_key)


def from_body(body: command_pb2.ListAgentsBody, max_labels: int) -> AgentFilter:
    """The body's filters, checked (hubspoke.list_filters), and at most ``max_labels`` labels
    (the spoke's limit on a spawn's labels); else INVALID_ARGUMENT."""
    labels = tuple(sorted(body.labels.items()))
    if len(labels) > max_labels:
        raise errors.InvalidCommandError(f"a list filters by at most {max_labels} labels")
    list_filters.check(body)
    return AgentFilter(
        labels=labels, profile=body.profile, owner=body.owner, dedupe_key=body.dedupe_key
    )
