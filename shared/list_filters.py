"""The rules of a ListAgents call's filters (docs/protocol.md §4.3), checked by the hub before
it fans a listing out (so a bad filter is one INVALID_ARGUMENT, not every spoke refusing it)
and by each spoke (spoke/list_filter.py, which also bounds how many labels).
"""

from __future__ import annotations

from . import dedupe, errors
from .gen.federation.v1 import command_pb2

FILTER_TEXT_BYTES = 256
"""The longest label key or value, profile or owner a list filter may name (UTF-8 bytes)."""


def check(body: command_pb2.ListAgentsBody) -> None:
    """INVALID_ARGUMENT for a filter no agent could carry: a text longer than
    ``FILTER_TEXT_BYTES``, an empty label key, a dedupe key outside the id alphabet."""
    texts = [body.profile, body.owner, *(t for pair in body.labels.items() for t in pair)]
    if any(len(t.encode()) > FILTER_TEXT_BYTES for t in texts):
        raise errors.InvalidCommandError(
            f"list filters (labels, profile, owner) are at most {FILTER_TEXT_BYTES} bytes each"
        )
    if any(not k for k in body.labels):
        raise errors.InvalidCommandError("a label filter needs a key")
    if body.dedupe_key:
        dedupe.check_key(body.dedupe_key)
