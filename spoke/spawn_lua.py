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

A direct or relayed spawn that needs nothing read first (no dedupe key, no approvals, due now)
also takes its admission along (``admit_create_and_add``, issue 13: one round trip per spawn):
the admission script (shared/admission.py, unchanged) runs first, as its own function, and
only when it admits do the other two run. Its layout: ``KEYS`` = the admission's keys, the
create script's, bullmq's; ``ARGV`` = the numbers of the admission's keys and arguments, of
the create script's keys and arguments, then the three scripts' arguments in that order.
A refused admission returns ``{"refused", verdict, detail}`` and nothing else ran.
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


_ADMIT_HEAD = """
local ALL_KEYS, ALL_ARGV = KEYS, ARGV
local AK, AA = tonumber(ALL_ARGV[1]), tonumber(ALL_ARGV[2])
local NK, NA = tonumber(ALL_ARGV[3]), tonumber(ALL_ARGV[4])
local function slice(t, i, j)
  local out = {}
  for x = i, j do out[#out + 1] = t[x] end
  return out
end
local function admit()
  local KEYS = slice(ALL_KEYS, 1, AK)
  local ARGV = slice(ALL_ARGV, 5, 4 + AA)
"""

_ADMIT_MIDDLE = """
end
local function create_record()
  local KEYS = slice(ALL_KEYS, AK + 1, AK + NK)
  local ARGV = slice(ALL_ARGV, 5 + AA, 4 + AA + NA)
"""

_ADMIT_ADD = """
end
local function add_job()
  local KEYS = slice(ALL_KEYS, AK + NK + 1, #ALL_KEYS)
  local ARGV = slice(ALL_ARGV, 5 + AA + NA, #ALL_ARGV)
"""

_ADMIT_TAIL = """
end
local verdict = admit()
if tonumber(verdict[1]) ~= 0 then return {'refused', verdict[1], verdict[2]} end
local reply = create_record()
if reply[1] ~= 'created' then return reply end
local job = add_job()
if type(job) == 'number' then job = tostring(job) end
return {reply[1], reply[2], job}
"""


class AdmissionRefusedError(Exception):
    """The admission inside ``admit_create_and_add`` refused: nothing was stored. Answer it
    with ``Admission.refuse(principal, verdict, detail)``."""

    def __init__(self, verdict: int, detail: object) -> None:
        super().__init__(f"admission refused: {verdict}")
        self.verdict = verdict
        self.detail = detail


def admit_create_and_add(admit: str, create: str, add: str) -> str:
    """The combined script of ``admit`` (shared/admission.py's), ``create`` and ``add``."""
    return _ADMIT_HEAD + admit + _ADMIT_MIDDLE + create + _ADMIT_ADD + add + _ADMIT_TAIL


def admit_call_args(
    admit: tuple[list[str], list[object]],
    keys: list[str],
    args: list[object],
    add_keys: list[str],
    add_args: list[object],
) -> tuple[list[str], list[object]]:
    """The keys and arguments of one call of ``admit_create_and_add``'s script."""
    admit_keys, admit_args = admit
    return admit_keys + keys + add_keys, [
        len(admit_keys),
        len(admit_args),
        len(keys),
        len(args),
        *admit_args,
        *args,
        *add_args,
    ]


def create_and_add(create: str, add: str) -> str:
    """The combined script of ``create`` (ours, with ``feed_append``) and ``add`` (bullmq's)."""
    return _HEAD + create + _MIDDLE + add + _TAIL


def call_args(
    keys: list[str], args: list[object], add_keys: list[str], add_args: list[object]
) -> tuple[list[str], list[object]]:
    """The keys and arguments of one call of the combined script."""
    return keys + add_keys, [len(keys), len(args), *args, *add_args]
