"""One script for a spawn: our create script (spoke/records_lua.py ``CREATE``) and, only when
it created the record, bullmq's own pinned ``addPrioritizedJob`` script, in one EVALSHA.

Before, a spawn paid a round trip for the create script and another for bullmq's
``Queue.add``; a pipeline of the two cannot help, because the job must not be added when the
create script refuses (backlog full, quota, dedupe). Here both scripts' texts run unchanged,
each as a Lua function that sees its own ``KEYS`` and ``ARGV`` (locals shadowing the call's
globals), so bullmq's script reads exactly the keys and arguments bullmq-python would give it
(spoke/jobs.py ``Jobs.add_call`` builds them with bullmq's own ``Scripts.addJobArgs``).

Call layout: ``KEYS`` = the create script's keys, then bullmq's; ``ARGV`` = the number of the
create script's keys, the number of its arguments, its arguments, then bullmq's. Returns the
create script's reply, with bullmq's (the job id, or its negative error code) appended when
the record was created.
"""

from __future__ import annotations

_HEAD = """
local ALL_KEYS, ALL_ARGV = KEYS, ARGV
local NK, NA = tonumber(ALL_ARGV[1]), tonumber(ALL_ARGV[2])
local function slice(t, i, j)
  local out = {}
  for x = i, j do out[#out + 1] = t[x] end
  return out
end
local function create_record()
  local KEYS = slice(ALL_KEYS, 1, NK)
  local ARGV = slice(ALL_ARGV, 3, 2 + NA)
"""

_MIDDLE = """
end
local function add_job()
  local KEYS = slice(ALL_KEYS, NK + 1, #ALL_KEYS)
  local ARGV = slice(ALL_ARGV, 3 + NA, #ALL_ARGV)
"""

_TAIL = """
end
local reply = create_record()
if reply[1] ~= 'created' then return reply end
local job = add_job()
if type(job) == 'number' then job = tostring(job) end
return {reply[1], reply[2], job}
"""


def create_and_add(create: str, add: str) -> str:
    """The combined script of ``create`` (ours, with ``feed_append``) and ``add`` (bullmq's)."""
    return _HEAD + create + _MIDDLE + add + _TAIL


def call_args(
    keys: list[str], args: list[object], add_keys: list[str], add_args: list[object]
) -> tuple[list[str], list[object]]:
    """The keys and arguments of one call of the combined script."""
    return keys + add_keys, [len(keys), len(args), *args, *add_args]
