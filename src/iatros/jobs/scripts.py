"""The Lua scripts of the Redis queue: each state change is one atomic step.

A job is a hash ``<prefix>job:<id>``; a delivery is an entry of the stream
``<prefix>stream`` read through the consumer group ``workers``. Every change made by a
worker names the worker (``owner``) and the entry it was given (``delivery``): a worker
that stalled past its lease, whose entry another worker claimed (XAUTOCLAIM), finds
its late writes refused, exactly like the SQLite leases of knowledge jobs.
"""

from __future__ import annotations

GROUP = "workers"

# KEYS: job, idem ('' for none), stream, files
# ARGV: id, keep_s, job key prefix, then field/value pairs -> the job id (an earlier one's
# when the idempotency key is known)
ENQUEUE = """
if KEYS[2] ~= '' then
  local known = redis.call('GET', KEYS[2])
  if known and redis.call('EXISTS', ARGV[3] .. known) == 1 then
    redis.call('DEL', KEYS[4])
    return known
  end
  redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('XADD', KEYS[3], '*', 'job', ARGV[1])
return ARGV[1]
"""

# KEYS: job; ARGV: entry, owner, now -> {verdict, attempts, max_attempts}
START = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'gone', '0'} end
if state == 'done' or state == 'dead' or state == 'cancelled' then return {'skip', '0'} end
if redis.call('HGET', KEYS[1], 'cancel') == '1' then
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'error', 'cancelled', 'updated_at', ARGV[3])
  return {'cancelled', '0'}
end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'state', 'running', 'owner', ARGV[2], 'delivery', ARGV[1],
           'updated_at', ARGV[3])
if attempts > tonumber(redis.call('HGET', KEYS[1], 'max_attempts')) then
  return {'exhausted', tostring(attempts)}
end
return {'run', tostring(attempts)}
"""

_OWNED = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[2]
   or redis.call('HGET', KEYS[1], 'delivery') ~= ARGV[1] then
  return 0
end
"""

# KEYS: job, stream; ARGV: entry, owner, consumer -> 1 ours (and cancel flag), 0 lost
HEARTBEAT = (
    _OWNED
    + """
redis.call('XCLAIM', KEYS[2], 'workers', ARGV[3], 0, ARGV[1], 'JUSTID')
if redis.call('HGET', KEYS[1], 'cancel') == '1' then return 2 end
return 1
"""
)

# KEYS: job; ARGV: entry, owner, progress json, now
PROGRESS = (
    _OWNED
    + """
redis.call('HSET', KEYS[1], 'progress', ARGV[3], 'updated_at', ARGV[4])
return 1
"""
)

# KEYS: job, stream, dead, files; ARGV: entry, owner, state, field, value, now, keep_s, id
FINISH = (
    _OWNED
    + """
redis.call('HSET', KEYS[1], 'state', ARGV[3], ARGV[4], ARGV[5], 'updated_at', ARGV[6],
           'owner', '', 'delivery', '')
redis.call('XACK', KEYS[2], 'workers', ARGV[1])
redis.call('XDEL', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[7])
if ARGV[3] == 'dead' then
  redis.call('ZADD', KEYS[3], ARGV[6], ARGV[8])  -- its files stay for a retry, until keep_s
else
  redis.call('DEL', KEYS[4])
end
return 1
"""
)

# KEYS: job, stream, delayed; ARGV: entry, owner, error, now, due, id
RETRY_LATER = (
    _OWNED
    + """
redis.call('HSET', KEYS[1], 'state', 'failed', 'error', ARGV[3], 'updated_at', ARGV[4],
           'owner', '', 'delivery', '')
redis.call('XACK', KEYS[2], 'workers', ARGV[1])
redis.call('XDEL', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[6])
return 1
"""
)

# Shutdown: the interrupted run does not count. KEYS: job, stream; ARGV: entry, owner, now, id
REQUEUE = (
    _OWNED
    + """
redis.call('HINCRBY', KEYS[1], 'attempts', -1)
redis.call('HSET', KEYS[1], 'state', 'queued', 'updated_at', ARGV[3], 'owner', '', 'delivery', '')
redis.call('XACK', KEYS[2], 'workers', ARGV[1])
redis.call('XDEL', KEYS[2], ARGV[1])
redis.call('XADD', KEYS[2], '*', 'job', ARGV[4])
return 1
"""
)

# KEYS: delayed, stream; ARGV: now, job key prefix -> how many moved
PROMOTE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 100)
local moved = 0
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[1], id)
  local key = ARGV[2] .. id
  if redis.call('HGET', key, 'state') == 'failed' then
    redis.call('HSET', key, 'state', 'queued')
    redis.call('XADD', KEYS[2], '*', 'job', id)
    moved = moved + 1
  end
end
return moved
"""

# KEYS: job, delayed, files; ARGV: now, keep_s, id -> new state
CANCEL = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'queued' or state == 'failed' then
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'error', 'cancelled', 'cancel', '1',
             'updated_at', ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[3])
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  redis.call('DEL', KEYS[3])
  return 'cancelled'
end
if state == 'running' then redis.call('HSET', KEYS[1], 'cancel', '1') end
return state
"""

# KEYS: job, dead, stream; ARGV: now, id -> 1 requeued, 0 not dead
RESURRECT = """
if redis.call('HGET', KEYS[1], 'state') ~= 'dead' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'queued', 'attempts', 0, 'error', '', 'updated_at', ARGV[1])
redis.call('PERSIST', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('XADD', KEYS[3], '*', 'job', ARGV[2])
return 1
"""
