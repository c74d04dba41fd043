"""bullmq's ``addPrioritizedJob`` arguments for an agent's job, built from a template per
(priority, backoff) instead of a bullmq ``Job`` per spawn (issue 13: ``Jobs.add_call`` built a
``Job``, its options and three encodings on every spawn, about 4% of a spawn's CPU).

A template is made by bullmq's own code (``Job`` and ``Scripts.addJobArgs``) for a placeholder
job id and timestamp; a spawn then changes only what differs per job: the job id and timestamp
inside the msgpacked argument array, the job id inside the msgpacked options, and the data
JSON, encoded exactly as ``addJobArgs`` encodes them. If bullmq's layout ever stops matching
what the template expects, ``Jobs.add_call`` falls back to bullmq's own path for every job
(tests/spoke/test_spawn_script.py compares the job hash with ``Queue.add``'s byte for byte).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack  # type: ignore[import-untyped]  # no stubs

__all__ = ["AddTemplate", "template"]

_ID = "\x00template-job-id\x00"
_TS = 1_234_567_890_123


@dataclass(frozen=True, slots=True)
class AddTemplate:
    """bullmq's arguments for one (priority, backoff), but the job's id, time and data."""

    head: list[Any]
    """The unpacked argument array (``ARGV[1]``): [1] is the job id, [3] its timestamp."""
    opts: dict[Any, Any]
    """The encoded options (``ARGV[3]``, unpacked); ``id_key`` holds the job id."""
    id_key: Any
    priority: Any
    """The script's last argument (bullmq-python passes the priority)."""

    def args(self, job_id: str, agent_id: str) -> list[Any]:
        """The arguments of the job ``job_id`` of ``agent_id``, queued now."""
        head = list(self.head)
        head[1], head[3] = job_id, round(time.time() * 1000)  # as bullmq's Job sets it
        opts = dict(self.opts)
        opts[self.id_key] = job_id
        data = json.dumps({"agent_id": agent_id}, separators=(",", ":"), allow_nan=False)
        return [
            msgpack.packb(head, use_bin_type=True),
            data,
            msgpack.packb(opts),
            self.priority,
        ]


def template(build: Callable[[str, int], list[Any]]) -> AddTemplate | None:
    """A template from ``build(job_id, timestamp)`` (bullmq's own arguments for a job with
    that id and timestamp), or None when they do not have the layout this module changes."""
    args = build(_ID, _TS)
    if len(args) != 4:
        return None
    head = msgpack.unpackb(args[0], raw=False)
    opts = msgpack.unpackb(args[2], raw=False)
    id_keys = [k for k, v in opts.items() if v == _ID]
    if (
        not isinstance(head, list)
        or len(head) < 4
        or head[1] != _ID
        or head[3] != _TS
        or _ID in head[4:]
        or len(id_keys) != 1
        or args[1] != json.dumps({"agent_id": _ID}, separators=(",", ":"), allow_nan=False)
        or msgpack.packb(head, use_bin_type=True) != args[0]  # the round trip is exact
        or msgpack.packb(opts) != args[2]
    ):
        return None
    return AddTemplate(head, opts, id_keys[0], args[3])
