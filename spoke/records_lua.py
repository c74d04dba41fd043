"""The Lua scripts of :mod:`hubspoke.spoke.records`, one per change of an agent record: create
(with the backlog and the issuer's quota), transition (checked against the state machine's
edges), settle a verification, append an event, and count a waiting agent. Each runs atomically
in Redis, so two processes on one Redis never interleave a half-done change.
"""

from __future__ import annotations

from typing import Final

from .model import FINAL_STATES

FEED_MAXLEN_DEFAULT: Final = 50_000
"""The feed's cap when the spoke has not stored its own (``feed_maxlen``, spoke/feed.py)."""

FEED: Final = (
    """
-- The event feed (spoke/feed.py): every state change of every agent of the spoke, in one
-- stream whose ids are a counter of its own ("n-0", n from 1), appended by the same script
-- that makes the change, so none is missed. Its keys sit beside the agent's record (agent
-- "<prefix>:agent:<id>": "<prefix>:feed" and "<prefix>:feed-meta", with the counter "seq"
-- and the cap "cap"), derived here as the dedupe claim's base is: one Redis, no cluster.
local function feed_append(agent_key, state, reason, time_ms, seq)
  local base = string.match(agent_key, '^(.*):agent:[^:]*$')
  local meta = base .. ':feed-meta'
  local n = redis.call('HINCRBY', meta, 'seq', 1)
  local cap = tonumber(redis.call('HGET', meta, 'cap') or '') or """
    + str(FEED_MAXLEN_DEFAULT)
    + """
  local who = redis.call('HMGET', agent_key, 'issuer', 'agent_id')
  redis.call('XADD', base .. ':feed', 'MAXLEN', '~', cap, n .. '-0', 'agent_id', who[2] or '',
    'owner', who[1] or '', 'state', state, 'reason', reason, 'time', time_ms, 'seq', seq)
end
"""
)


def with_feed(script: str) -> str:
    """``script`` with ``feed_append`` defined before it (every script that changes state)."""
    return FEED + script


_LUA_FINAL: Final = "{" + ", ".join(f"{s.value}=true" for s in sorted(FINAL_STATES)) + "}"
"""The final states as a Lua table (a dedupe key's claim ends with its agent's)."""

CREATE: Final = (
    """
-- KEYS: agent, index, events, then bullmq's wait, paused, prioritized, delayed, then waiting,
-- then, for a spawn with a dedupe key (spoke/dedupe.py), its claim and the record of the agent
-- the caller read from the claim (the agent key of "" when it read none).
-- ARGV: agent_id, digest, now_ms, maxlen, max_backlog, issuer, quota, field, value, ...
-- The issuer's quota (0: none) counts its members ("issuer:agent_id") of the waiting set
-- (keys.py) with one ZLEXCOUNT: neither names nor ids contain ':'.
local existing = redis.call('HGET', KEYS[1], 'digest')
if existing then
  return {'exists', existing}
end
if KEYS[9] then
  local held = redis.call('GET', KEYS[9])
  if held then
    local base = string.sub(KEYS[1], 1, #KEYS[1] - #ARGV[1])
    if base .. held ~= KEYS[10] then return {'stale', held} end
    local st = redis.call('HGET', KEYS[10], 'state')
    local final = """
    + _LUA_FINAL
    + """
    if st and not final[st] then return {'dedupe', held} end
  end
end
local quota = tonumber(ARGV[7])
if quota > 0 then
  local mine = redis.call('ZLEXCOUNT', KEYS[8], '[' .. ARGV[6] .. ':', '(' .. ARGV[6] .. ';')
  if mine >= quota then
    return {'quota', tostring(mine)}
  end
end
local backlog = redis.call('LLEN', KEYS[4]) + redis.call('LLEN', KEYS[5])
  + redis.call('ZCARD', KEYS[6]) + redis.call('ZCARD', KEYS[7])
if backlog >= tonumber(ARGV[5]) then
  return {'full', tostring(backlog)}
end
-- The signed copies (fields envelope and relay) go to a key of their own (keys.py signed),
-- so that the record hash stays small enough for Redis's compact encoding.
local base = string.sub(KEYS[1], 1, #KEYS[1] - #ARGV[1] - 6)
local fields, signed = {}, {envelope = '', relay = ''}
for i = 8, #ARGV, 2 do
  if signed[ARGV[i]] then signed[ARGV[i]] = ARGV[i + 1]
  else fields[#fields + 1] = ARGV[i]; fields[#fields + 1] = ARGV[i + 1] end
end
if #fields > 0 then redis.call('HSET', KEYS[1], unpack(fields)) end
redis.call('SET', base .. 'signed:' .. ARGV[1],
  #signed.envelope .. ':' .. signed.envelope .. signed.relay)
redis.call('HSET', KEYS[1], 'state', 'QUEUED', 'seq', 1, 'digest', ARGV[2])
local start_by = tonumber(redis.call('HGET', KEYS[1], 'expire_ms') or '') or 0
if start_by > 0 then  -- the sweeper's index of start deadlines (keys.py start_deadlines)
  redis.call('ZADD', base .. 'start-deadlines', start_by, ARGV[1])
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[8], 0, ARGV[6] .. ':' .. ARGV[1])
-- No event stream yet (KEYS[3] stays unwritten): event 1 (QUEUED, at create_ms) is read from
-- the record (records.py first_event) until the first event after it creates the stream at 2.
feed_append(KEYS[1], 'QUEUED', '', ARGV[3], 1)
if KEYS[9] then redis.call('SET', KEYS[9], ARGV[1]) end
return {'created', ARGV[2]}
"""
)

TRANSITION: Final = """
-- KEYS: agent, events, waiting, verifying.
-- ARGV: from_csv, to, reason, now_ms, maxlen, owner_worker, owner_attempt, field, value, ...
-- With an owner, the record must still be held by that worker on that attempt: a worker
-- that was paused past its lease must not overwrite the attempt that replaced it.
-- The agent is a member of the waiting set exactly while its state is QUEUED or RETRYING
-- (the per-principal quota counts it), whichever transition moved it; likewise a member of
-- the verifying set, scored by its verify_deadline_ms, exactly while NEEDS_VERIFICATION.
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return {'missing', ''} end
local ok = false
for s in string.gmatch(ARGV[1], '[^,]+') do if s == cur then ok = true end end
if not ok then return {'illegal', cur} end
if ARGV[6] ~= '' then
  local held = redis.call('HMGET', KEYS[1], 'worker', 'attempt')
  if held[1] ~= ARGV[6] or held[2] ~= ARGV[7] then return {'illegal', cur .. ' (superseded)'} end
end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'reason', ARGV[3])
if #ARGV > 7 then redis.call('HSET', KEYS[1], unpack(ARGV, 8)) end
local who = redis.call('HMGET', KEYS[1], 'issuer', 'agent_id')
local member = (who[1] or '') .. ':' .. (who[2] or '')
if ARGV[2] == 'QUEUED' or ARGV[2] == 'RETRYING' then
  redis.call('ZADD', KEYS[3], 0, member)
else
  redis.call('ZREM', KEYS[3], member)
end
if ARGV[2] == 'NEEDS_VERIFICATION' then
  local deadline = tonumber(redis.call('HGET', KEYS[1], 'verify_deadline_ms') or '0') or 0
  redis.call('ZADD', KEYS[4], deadline, who[2] or '')
else
  redis.call('ZREM', KEYS[4], who[2] or '')
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], seq .. '-0',
  'kind', 'state', 'state', ARGV[2], 'reason', ARGV[3], 'time', ARGV[4])
feed_append(KEYS[1], ARGV[2], ARGV[3], ARGV[4], seq)
return {'ok', tostring(seq)}
"""

SETTLE: Final = """
-- KEYS: agent, events, verifying.
-- ARGV: now_ms, maxlen, verdicts_json ({name: status}), principal (who settles them).
-- Settles verification items of a NEEDS_VERIFICATION agent: a name it does not wait on is
-- refused; once any is failed the agent is FAILED (VERIFICATION_FAILED), once all passed
-- SUCCEEDED; otherwise it keeps waiting with the verdicts recorded.
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return {'missing', ''} end
if cur ~= 'NEEDS_VERIFICATION' then return {'illegal', cur} end
local pending = cjson.decode(redis.call('HGET', KEYS[1], 'pending') or '[]')
local verdicts = cjson.decode(redis.call('HGET', KEYS[1], 'verdicts') or '{}')
if type(verdicts) ~= 'table' or next(verdicts) == nil then verdicts = {} end
local wanted = {}
for _, name in ipairs(pending) do wanted[name] = true end
local by = cjson.decode(redis.call('HGET', KEYS[1], 'verified_by') or '{}')
if type(by) ~= 'table' then by = {} end
local given = cjson.decode(ARGV[3])
for name, _ in pairs(given) do
  if not wanted[name] then return {'unknown', name} end
end
for name, status in pairs(given) do
  verdicts[name] = status
  by[name] = ARGV[4]
end
redis.call('HSET', KEYS[1], 'verified_by', cjson.encode(by))
local to, reason = 'SUCCEEDED', ''
for _, name in ipairs(pending) do
  local v = verdicts[name]
  if v == 'failed' then to, reason = 'FAILED', 'VERIFICATION_FAILED'; break end
  if v ~= 'passed' then to = '' end
end
if next(verdicts) == nil then
  redis.call('HSET', KEYS[1], 'verdicts', '{}')
else
  redis.call('HSET', KEYS[1], 'verdicts', cjson.encode(verdicts))
end
if to == '' then return {'waiting', ''} end
redis.call('HSET', KEYS[1], 'state', to, 'reason', reason, 'end_ms', ARGV[1])
local id = redis.call('HGET', KEYS[1], 'agent_id') or ''
redis.call('ZREM', KEYS[3], id)
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], seq .. '-0',
  'kind', 'state', 'state', to, 'reason', reason, 'time', ARGV[1])
feed_append(KEYS[1], to, reason, ARGV[1], seq)
return {to, reason}
"""

EVENT: Final = """
-- KEYS: agent, events. ARGV: kind, data, now_ms, maxlen, field, value, ...
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if #ARGV > 4 then redis.call('HSET', KEYS[1], unpack(ARGV, 5)) end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], seq .. '-0',
  'kind', ARGV[1], 'data', ARGV[2], 'time', ARGV[3])
return seq
"""


COUNT_WAITING: Final = """
-- KEYS: agent, waiting. Adds the agent to the waiting set if it waits (checked here, so a
-- scan that read an older state cannot add one that has moved on).
local rec = redis.call('HMGET', KEYS[1], 'state', 'issuer', 'agent_id')
if rec[1] == 'QUEUED' or rec[1] == 'RETRYING' then
  return redis.call('ZADD', KEYS[2], 0, (rec[2] or '') .. ':' .. (rec[3] or ''))
end
return 0
"""
