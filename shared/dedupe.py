"""Dedupe keys of spawns (docs/protocol.md §4.7): their alphabet and the key derived from a
spawn's profile and task. Pure functions: the spoke (spoke/dedupe.py) and the hub
(hub/dedupe.py) claim keys in their own Redis; both resolve a body's key here.

A spawn names its key (``SpawnAgentBody.dedupe_key``) or asks for one derived from its
profile and task (``dedupe_from_task``): ``"task-"`` and the lowercase hex SHA-256 of the
UTF-8 profile, one 0x00 byte and the UTF-8 task. Either key is 1-128 characters of the id
alphabet (``commands.COMMAND_ID_RE``), so it can never name another Redis key.
"""

from __future__ import annotations

import hashlib

from . import commands, errors

DERIVED_PREFIX = "task-"
"""What a key derived from profile and task starts with."""


def derive_key(profile: str, task: str) -> str:
    """The dedupe key of ``dedupe_from_task`` (module docstring)."""
    digest = hashlib.sha256(profile.encode() + b"\x00" + task.encode()).hexdigest()
    return DERIVED_PREFIX + digest


def check_key(key: str) -> None:
    """InvalidCommandError unless ``key`` is in the id alphabet (1-128 characters)."""
    if not commands.COMMAND_ID_RE.fullmatch(key):
        raise errors.InvalidCommandError(
            "dedupe_key must be 1-128 characters of A-Z a-z 0-9 . _ - and start alphanumeric",
            field="dedupe_key",
        )


def resolve(dedupe_key: str, from_task: bool, profile: str, task: str) -> str:
    """A spawn's dedupe key: its own, the derived one, or "" for none. Both at once is
    InvalidCommandError."""
    if dedupe_key and from_task:
        raise errors.InvalidCommandError(
            "set dedupe_key or dedupe_from_task, not both", field="dedupe_key"
        )
    if from_task:
        return derive_key(profile, task)
    if dedupe_key:
        check_key(dedupe_key)
    return dedupe_key


def meaning(dedupe_key: str, from_task: bool) -> dict[str, object]:
    """What the dedupe fields add to a spawn's meaning (docs/protocol.md §9): each field once
    set, as sent; nothing when neither is (so a spawn means what it meant before them)."""
    out: dict[str, object] = {}
    if dedupe_key:
        out["dedupe_key"] = dedupe_key
    if from_task:
        out["dedupe_from_task"] = True
    return out
