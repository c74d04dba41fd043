"""A status command (GetAgent) in one Redis round trip: the agent's record is read in the
admission script's round trip (shared/admission.py ``admit_and_read``), not after it.

The verifier asks ``prefetcher``'s function which hash a verified direct command will read
first; the service takes the record from ``Authorized.prefetched`` with ``record``. A
command whose agent name does not parse reads nothing ahead: the service refuses it as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from hubspoke import errors
from hubspoke.gen.federation.v1 import command_pb2

from .keys import SpokeKeys
from .model import AgentRecord
from .verifier import Authorized

UNREAD: Final = object()
"""``record``'s answer when nothing was read ahead for that key."""


def prefetcher(
    agent_id: Callable[[str], str], keys: SpokeKeys
) -> Callable[[command_pb2.Command, str], str | None]:
    """The verifier's ``prefetch``: the record key of a ``get_agent`` command's agent."""

    def key(cmd: command_pb2.Command, body: str) -> str | None:
        if body != "get_agent":
            return None
        try:
            return keys.agent(agent_id(cmd.get_agent.agent))
        except errors.HubspokeError:
            return None

    return key


def record(auth: Authorized, key: str) -> AgentRecord | object | None:
    """The record read ahead under ``key`` (None: it does not exist), or ``UNREAD``."""
    if auth.prefetched is None or auth.prefetched[0] != key:
        return UNREAD
    raw = auth.prefetched[1]
    return AgentRecord.from_hash(raw) if raw and b"state" in raw else None
