"""What a supervised agent's record holds beyond the rest (spoke/supervisor.py), in Redis.

Fields of the agent's hash, written by the worker that holds it:

* ``sup_pid``, ``sup_ticks``: the supervisor's pid and start time (with the RUNNING edge);
* ``sup_out``, ``sup_err``: how far the holder has read the stdout and stderr files (bytes),
  saved about once a second, so a restarted spoked reads on from there.

:func:`adopt` hands a running attempt to a new worker (a restarted spoked, or the spoked
whose stall check got the job back) without a state change: the record stays RUNNING and
from then on only the adopter may record its end.
"""

from __future__ import annotations

from dataclasses import dataclass

from .backend import backend
from .records import Records

__all__ = ["SupervisorFields", "adopt", "read_fields", "save_offsets"]

_ADOPT = """
local held = redis.call('HMGET', KEYS[1], 'state', 'worker', 'attempt')
if held[1] ~= 'RUNNING' and held[1] ~= 'STARTING' then return 0 end
if held[2] ~= ARGV[1] or held[3] ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'worker', ARGV[3], 'spoked_pid', ARGV[4], 'spoked_ticks', ARGV[5])
return 1
"""

_OFFSETS = """
if redis.call('HGET', KEYS[1], 'worker') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'sup_out', ARGV[2], 'sup_err', ARGV[3])
return 1
"""


@dataclass(frozen=True, slots=True)
class SupervisorFields:
    sup_ticks: int | None
    out_offset: int
    err_offset: int


def _int(raw: bytes | None) -> int | None:
    try:
        return int(raw) if raw else None
    except ValueError:
        return None


@backend
async def read_fields(records: Records, agent_id: str) -> SupervisorFields:
    row: list[bytes | None] = await records.redis.hmget(  # type: ignore[assignment]  # bytes
        records.keys.agent(agent_id), "sup_ticks", "sup_out", "sup_err"
    )
    return SupervisorFields(_int(row[0]), _int(row[1]) or 0, _int(row[2]) or 0)


@backend
async def save_offsets(records: Records, agent_id: str, worker: str, out: int, err: int) -> None:
    """Record how far the output is read, while ``worker`` still holds the agent (a record
    swept or taken over meanwhile is left alone)."""
    await records.redis.eval(_OFFSETS, 1, records.keys.agent(agent_id), worker, out, err)


@backend
async def adopt(
    records: Records,
    agent_id: str,
    held_by: tuple[str, int],
    worker: str,
    spoked: tuple[int, int],
) -> bool:
    """Make ``worker`` (in spoked ``(pid, start ticks)``) the holder of the attempt
    ``held_by`` = (worker, attempt) holds; False if the record moved on meanwhile."""
    done = await records.redis.eval(
        _ADOPT,
        1,
        records.keys.agent(agent_id),
        held_by[0],
        str(held_by[1]),
        worker,
        spoked[0],
        spoked[1],
    )
    return bool(done)
