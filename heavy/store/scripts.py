"""Lua scripts: each multi-key change of a job is one atomic step on the server (no lost update between an API
process and a worker). Replies are `{outcome, detail}` pairs."""

from __future__ import annotations

from heavy.store.records import STATUSES

# The tenant's status sets (Keys.tenant_status_indexes: one sorted set per status, job id -> created time) are moved
# in the same step as the status they index: `reindex(first, job, job_id, old, new)` takes the job off the set of
# `old` and puts it on that of `new` (either nil for none), the sets being KEYS[first], ... in STATUSES order.
_STATUS_INDEXES = len(STATUSES)
_REINDEX = """
local STATUS_ORDER = {""" + ", ".join(f"{status} = {i}" for i, status in enumerate(STATUSES)) + """}
local function reindex(first, job, job_id, old, new)
  if old == new then return end
  if old and STATUS_ORDER[old] then redis.call('ZREM', KEYS[first + STATUS_ORDER[old]], job_id) end
  if new and STATUS_ORDER[new] then
    redis.call('ZADD', KEYS[first + STATUS_ORDER[new]], redis.call('HGET', job, 'created'), job_id)
  end
end
"""

# Taking a concurrency slot and a token grant for a job that is to run (SUBMIT without review, APPROVE), or the
# quota refusal, in the calling script's step. Needs `tenant` (its hash), `active` (its active set), `job` (the job
# hash), `job_id`, `default_jobs`, `default_tokens` and `budget` (the job's token budget) set. The job is granted
# its budget, or what the tenant has left when that is less, and the grant is reserved on the tenant until the job
# ends (FINISH): jobs running at once cannot together spend more than the tenant has.
_TAKE_SLOT_AND_GRANT = """
local max_jobs = tonumber(redis.call('HGET', tenant, 'max_jobs') or default_jobs)
if redis.call('SCARD', active) >= max_jobs then return {'quota', 'jobs'} end
local max_tokens = tonumber(redis.call('HGET', tenant, 'max_tokens') or default_tokens)
local left = max_tokens - tonumber(redis.call('HGET', tenant, 'tokens_used') or '0')
  - tonumber(redis.call('HGET', tenant, 'tokens_reserved') or '0')
if left <= 0 then return {'quota', 'tokens'} end
local grant = math.min(budget, left)
redis.call('HSET', job, 'token_grant', grant)
redis.call('HINCRBY', tenant, 'tokens_reserved', grant)
redis.call('SADD', active, job_id)
"""

# KEYS: idem, tenant hash, tenant active set, tenant jobs zset, job hash, jobs stream, awaiting zset, tenant held set,
#       the tenant's status sets
# ARGV: job id, created, enqueue 0/1 (0: held for review), use idem 0/1, idem ttl s, fingerprint, default max jobs,
#       default max tokens, the job's token budget, how long an unapproved job waits before it expires, in seconds
#       (0: for ever, or not held), the key's stale value ('' for none), the most jobs a tenant may hold for review,
#       then the job hash as field/value pairs.
# A stale value is what the key held when it named a job that is gone (deleted, expired): it counts as no value.
# Requests racing on such a key pass the same stale value, and only the first replaces it; the others replay its
# job (dropping the key in a separate call instead let each of them make a job).
# The job id is new to each call: a job already there is this call's own, run again by the client retrying a reply
# lost with its connection; it answers as it did, rather than queue the job twice and reserve its grant twice.
# A job to run takes its slot and grant now; a job held for review takes neither until it is approved (APPROVE):
# jobs waiting for a reviewer lock no tenant out. Held jobs are bounded per tenant instead (the held set, which
# APPROVE and FINISH take them off): they cost Redis memory and, with no approval window, never expire. Its approval
# deadline (`approve_by`, returned) is on Redis's clock, which the expiry sweep reads: an API process whose clock is
# off neither shortens nor stretches the window.
SUBMIT = _REINDEX + """
if redis.call('EXISTS', KEYS[5]) == 1 then return {'created', redis.call('HGET', KEYS[5], 'approve_by') or ''} end
if ARGV[4] == '1' then
  local previous = redis.call('GET', KEYS[1])
  if previous and previous ~= ARGV[11] then return {'replay', previous} end
end
local tenant, active, job, job_id = KEYS[2], KEYS[3], KEYS[5], ARGV[1]
local default_jobs, default_tokens, budget = ARGV[7], ARGV[8], tonumber(ARGV[9])
if ARGV[3] == '1' then
""" + _TAKE_SLOT_AND_GRANT + """
elseif redis.call('SCARD', KEYS[8]) >= tonumber(ARGV[12]) then return {'quota', 'held'}
end
local fields = {}
for i = 13, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[5], unpack(fields))
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
reindex(9, job, job_id, nil, redis.call('HGET', job, 'status'))
if ARGV[3] == '1' then redis.call('XADD', KEYS[6], '*', 'job', ARGV[1]) else redis.call('SADD', KEYS[8], ARGV[1]) end
local approve_by = ''
if tonumber(ARGV[10]) > 0 then
  local now = redis.call('TIME')
  approve_by = string.format('%.6f', now[1] + now[2] / 1000000 + tonumber(ARGV[10]))
  redis.call('HSET', KEYS[5], 'approve_by', approve_by)
  redis.call('ZADD', KEYS[7], approve_by, ARGV[1])
end
if ARGV[4] == '1' then redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[6], 'EX', ARGV[5]) end
return {'created', approve_by}
"""

# KEYS: job hash, then (when the fields set its status) the tenant's status sets; ARGV: allowed current statuses
# (comma-separated, empty = any), owner (the worker that must hold the job, '' for any), then field/value pairs
TRANSITION = _REINDEX + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing', ''} end
if ARGV[1] ~= '' and not string.find(',' .. ARGV[1] .. ',', ',' .. status .. ',', 1, true) then
  return {'refused', status}
end
local worker = redis.call('HGET', KEYS[1], 'worker') or ''
if ARGV[2] ~= '' and worker ~= ARGV[2] then return {'taken', worker} end
local fields = {}
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
if #fields > 0 then redis.call('HSET', KEYS[1], unpack(fields)) end
if #KEYS > 1 then
  reindex(2, KEYS[1], redis.call('HGET', KEYS[1], 'id'), status, redis.call('HGET', KEYS[1], 'status'))
end
return {'ok', status}
"""

# KEYS: job hash, jobs stream, awaiting zset, tenant hash, tenant active set, tenant held set, the tenant's status
# sets; ARGV: now, default max
# jobs, default max tokens, the job's token budget -> awaiting_approval becomes queued and is enqueued, with its slot
# and grant taken (a tenant at its limit is refused: approve again once one of its jobs has ended). A job approved at
# this call's `now` was approved by this very call, retried by the client after its reply was lost: done.
APPROVE = _REINDEX + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing', ''} end
if status ~= 'awaiting_approval' then
  if redis.call('HGET', KEYS[1], 'approved') == ARGV[1] then return {'ok', 'awaiting_approval'} end
  return {'refused', status}
end
local tenant, active, job, job_id = KEYS[4], KEYS[5], KEYS[1], redis.call('HGET', KEYS[1], 'id')
local default_jobs, default_tokens, budget = ARGV[2], ARGV[3], tonumber(ARGV[4])
if redis.call('HEXISTS', job, 'token_grant') == 0 then  -- a job held before this rule took both at submission
""" + _TAKE_SLOT_AND_GRANT + """
end
redis.call('ZREM', KEYS[3], job_id)
redis.call('SREM', KEYS[6], job_id)
redis.call('HSET', KEYS[1], 'status', 'queued', 'updated', ARGV[1], 'approved', ARGV[1])
reindex(7, job, job_id, status, 'queued')
redis.call('XADD', KEYS[2], '*', 'job', job_id)
return {'ok', status}
"""

# KEYS: job hash, tenant hash, tenant active set, callbacks zset, awaiting zset, tenant held set, tenant expiring
# zset, the tenant's status sets, then the job's other keys (events, report, checkpoints); ARGV: job id, allowed
# statuses, tokens, retention ms (0: kept), terminal event JSON ('' for none), report Markdown and report JSON ('' for
# no report), owner (the worker that must still hold the job, '' for any), then field/value pairs.
# The tokens spent are charged to the tenant and the job's reserved grant (SUBMIT) is given back.
# The report, the status and the terminal event are one step: no process can die between them (a follower would
# never see the event, or a client reacting to it would find no report). A worker that stalled past its lease
# while another took the job over (`worker` is the other's now) changes nothing: its report would replace the
# one the job ends with, its status and tokens would be the job's while the other still runs it.
# A job with a callback URL is put on the callbacks set, due now (Redis's clock, as CLAIM_CALLBACK's), in the same
# step: no process can end it and die before its callback is on record.
FINISH = _REINDEX + f"""
local parts = {8 + _STATUS_INDEXES}  -- KEYS[parts]: the job's events, then its report, checkpoints, their logs""" + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing', ''} end
if not string.find(',' .. ARGV[2] .. ',', ',' .. status .. ',', 1, true) then
  for i = 9, #ARGV - 1, 2 do  -- ended by this very call, retried by the client after its reply was lost: done
    if ARGV[i] == 'finished' and redis.call('HGET', KEYS[1], 'finished') == ARGV[i + 1] then return {'ok', status} end
  end
  return {'refused', status}
end
local worker = redis.call('HGET', KEYS[1], 'worker') or ''
if ARGV[8] ~= '' and worker ~= ARGV[8] then return {'taken', worker} end
local fields = {}
for i = 9, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
reindex(8, KEYS[1], ARGV[1], status, redis.call('HGET', KEYS[1], 'status'))
if ARGV[7] ~= '' then redis.call('HSET', KEYS[parts + 1], 'markdown', ARGV[6], 'json', ARGV[7]) end
-- the checkpoints and their logs (after the report, before the appends) only resume a job that runs: each holds a
-- trajectory's whole transcript (every page it read), megabytes for a long one, which the retention would keep for
-- nothing
for i = parts + 2, #KEYS - 1 do redis.call('DEL', KEYS[i]) end
if ARGV[5] ~= '' then
  local seq = redis.call('HINCRBY', KEYS[1], 'events', 1)
  redis.call('XADD', KEYS[parts], '0-' .. seq, 'seq', seq, 'event', ARGV[5])
end
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('SREM', KEYS[6], ARGV[1])
if tonumber(ARGV[3]) > 0 then redis.call('HINCRBY', KEYS[2], 'tokens_used', ARGV[3]) end
local grant = tonumber(redis.call('HGET', KEYS[1], 'token_grant') or '0')
if grant > 0 then redis.call('HINCRBY', KEYS[2], 'tokens_reserved', -grant) end
local url = redis.call('HGET', KEYS[1], 'callback_url')
if url and url ~= '' then
  redis.call('HSET', KEYS[1], 'callback_status', 'pending')
  local now = redis.call('TIME')
  redis.call('ZADD', KEYS[4], now[1] + now[2] / 1000000, ARGV[1])
end
if tonumber(ARGV[4]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  for i = parts, #KEYS - 1 do redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
  -- the append ids (last) keep the hour their last append gave them, or go with the job if it goes sooner
  local left = redis.call('PTTL', KEYS[#KEYS])
  if left == -1 or left > tonumber(ARGV[4]) then redis.call('PEXPIRE', KEYS[#KEYS], ARGV[4]) end
  local now = redis.call('TIME')
  redis.call('ZADD', KEYS[7], now[1] + now[2] / 1000000 + tonumber(ARGV[4]) / 1000, ARGV[1])
end
return {'ok', status}
"""

# A worker's write of its job (an event, a checkpoint), in the calling script's step: -1 when the job is gone, -2
# when ARGV[1] (the worker, '' for any writer) no longer runs it: another took it over while this one stalled
# past its lease, or it ended (given up under this worker's name). Its writes would duplicate events the new owner
# writes, overwrite its checkpoints, or outlive the job (a key written after the end gets no retention expiry).
_HELD_BY_OWNER = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if ARGV[1] ~= '' then
  local job = redis.call('HMGET', KEYS[1], 'worker', 'status')
  if job[1] ~= ARGV[1] or (job[2] ~= 'running' and job[2] ~= 'aggregating') then return -2 end
end
"""

# KEYS: job hash, events stream, appends hash; ARGV: owner, now, event JSON without its seq (the script numbers it),
# the append's id. An append that ran already (its reply lost with the connection, and the client retrying it)
# answers the seq it took, rather than write the event twice. A retry comes seconds later, so the append ids go by
# themselves within APPEND_IDS_TTL_MS of the last append (sooner with an ended job): a worker or API older than
# them, ending or deleting the job in a rolling update or a rollback, names no appends key, which kept it for ever.
APPEND_IDS_TTL_MS = 3_600_000
APPEND_EVENT = """
local appended = redis.call('HGET', KEYS[3], ARGV[4])
if appended then return tonumber(appended) end
""" + _HELD_BY_OWNER + """
local seq = redis.call('HINCRBY', KEYS[1], 'events', 1)
redis.call('HSET', KEYS[1], 'updated', ARGV[2])
redis.call('XADD', KEYS[2], '0-' .. seq, 'seq', seq, 'event', ARGV[3])
redis.call('HSET', KEYS[3], ARGV[4], seq)
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end -- an event after the end (a stream begun then too) goes with it
""" + f"""
redis.call('PEXPIRE', KEYS[3], (ttl > 0 and ttl < {APPEND_IDS_TTL_MS}) and ttl or {APPEND_IDS_TTL_MS})
return seq
"""

# KEYS: job hash, checkpoint key, its log's key; ARGV: owner, checkpoint JSON (a whole save: the lines logged after
# the one it replaces are of no use now)
SAVE_CHECKPOINT = _HELD_BY_OWNER + """
redis.call('SET', KEYS[2], ARGV[2])
redis.call('DEL', KEYS[3])
return 0
"""

# KEYS: job hash, checkpoint key, its log's key; ARGV: owner, a change line of the log (heavy/store/checkpoint_log.py)
APPEND_CHECKPOINT = _HELD_BY_OWNER + """
redis.call('APPEND', KEYS[3], ARGV[2] .. '\\n')
return 0
"""

# KEYS: job hash, callbacks zset; ARGV: job id, lease s, the claim's id -> 1 when this caller may send the job's
# callback now: it is on the set and due (never tried, or its last sender's lease ran out), and the lease is then this
# caller's; or the lease is this very claim's, retried by the client after its reply was lost. Times are Redis's
# clock: a process whose clock runs ahead must not take a lease another holds.
CLAIM_CALLBACK = """
local time = redis.call('TIME')
local now = time[1] + time[2] / 1000000
local due = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not due then return 0 end
if tonumber(due) > now then
  if redis.call('HGET', KEYS[1], 'callback_claim') == ARGV[3] then return 1 end
  return 0
end
if redis.call('EXISTS', KEYS[1]) == 0 then  -- deleted or expired: nothing to tell
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
redis.call('HSET', KEYS[1], 'callback_status', 'sending', 'callback_claim', ARGV[3])
return 1
"""

# KEYS: job hash, callbacks zset; ARGV: job id, outcome -> the callback is settled (off the set, its outcome kept)
SETTLE_CALLBACK = """
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'callback_status', ARGV[2]) end
return 1
"""

# KEYS: job hash, tenant jobs zset, tenant expiring zset, the tenant's status sets, then the job's other keys; ARGV:
# job id, tenant, statuses it may be deleted in
DELETE = _REINDEX + f"""
local parts = {4 + _STATUS_INDEXES}""" + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or redis.call('HGET', KEYS[1], 'tenant') ~= ARGV[2] then return {'missing', ''} end
if not string.find(',' .. ARGV[3] .. ',', ',' .. status .. ',', 1, true) then return {'refused', status} end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
reindex(4, KEYS[1], ARGV[1], status, nil)
redis.call('DEL', KEYS[1], unpack(KEYS, parts))
return {'ok', status}
"""

# KEYS: the tenant's jobs zset, its expiring zset, its held set, its status sets, then job hashes; ARGV: those jobs'
# ids, in the same order -> each job is on the set of the status its hash holds now and on no other, and on the held
# set if it is awaiting approval; a job whose keys expired (retention) leaves the list, the expiring zset and every
# set. Indexes the jobs of a store older than the sets (and the held jobs of one older than the held set, which its
# cap counts), and mends a list page that disagreed.
REINDEX = _REINDEX + f"""
local first_job = {4 + _STATUS_INDEXES}""" + """
for i = 1, #ARGV do
  local job, job_id = KEYS[first_job + i - 1], ARGV[i]
  local status = redis.call('HGET', job, 'status')
  for slot = 4, first_job - 1 do redis.call('ZREM', KEYS[slot], job_id) end
  if status == 'awaiting_approval' then redis.call('SADD', KEYS[3], job_id) else redis.call('SREM', KEYS[3], job_id) end
  if status then
    reindex(4, job, job_id, nil, status)
  else
    redis.call('ZREM', KEYS[1], job_id)
    redis.call('ZREM', KEYS[2], job_id)
  end
end
return #ARGV
"""

# KEYS: the tenant's jobs zset, its status sets, its checked-since key; ARGV: how far back (s) the newest jobs are
# checked again -> {how many more ids the list holds than the sets, the ids created since the last check that are on
# no set}. Every script that adds, moves or removes a job keeps the list and the (disjoint) sets in step; a process
# older than the sets does not: its SUBMIT puts a job on the list only, its DELETE takes one off the list only. The
# count finds either alone, not both at once, so the jobs made since the last check (less ARGV[1], for the API
# processes' clocks, which set `created`) are looked up too.
UNINDEXED = """
local checked = KEYS[#KEYS]
local now = redis.call('TIME')[1]
local since = redis.call('GET', checked) or (now - tonumber(ARGV[1]))
local missing = {}
for _, job_id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], since, '+inf')) do
  local found = false
  for i = 2, #KEYS - 1 do
    if redis.call('ZSCORE', KEYS[i], job_id) then found = true break end
  end
  if not found then missing[#missing + 1] = job_id end
end
redis.call('SET', checked, now - tonumber(ARGV[1]))
local indexed = 0
for i = 2, #KEYS - 1 do indexed = indexed + redis.call('ZCARD', KEYS[i]) end
return {redis.call('ZCARD', KEYS[1]) - indexed, missing}
"""

# KEYS: any key of the store -> Redis's clock, on the server that holds the store's keys: on a Redis Cluster a plain
# TIME goes to the client's default node, whose clock is not the one the scripts above read (approve_by, leases)
SERVER_TIME = "return redis.call('TIME')"

# A worker reaching the queue (a poll for abandoned entries, a lease renewal): `seen_now(gap_ms)` marks when, on
# Redis's clock, in KEYS[2] (the workers-seen hash), a quiet longer than `gap_ms` before it (no worker reaching
# Redis: it was down, restarted, or cut off from all of them) being the last gap; returns now, in ms.
_SEEN = """
local function seen_now(gap_ms)
  local time = redis.call('TIME')
  local now = time[1] * 1000 + math.floor(time[2] / 1000)
  local seen = tonumber(redis.call('HGET', KEYS[2], 'seen'))
  if seen and now - seen > gap_ms then redis.call('HSET', KEYS[2], 'gap_start', seen, 'gap_end', now) end
  redis.call('HSET', KEYS[2], 'seen', now)
  return now
end
"""

# KEYS: jobs stream, workers-seen hash; ARGV: group, consumer, lease ms, gap ms, count -> the entries this consumer
# took over: pending and idle past the lease, the lease counted only while workers could reach Redis. All workers
# share this Redis, so an owner cut off by an outage could renew no more than its rescuers could claim: until a lease
# has passed since the last gap, an entry needs the gap's length more idle time. A live owner so has what was left
# of its lease, once Redis is back, to renew its entry and record its cut run's stop, and is not taken for dead; one
# that does neither died, and is counted so.
CLAIM_ABANDONED = _SEEN + """
local now = seen_now(tonumber(ARGV[4]))
local lease = tonumber(ARGV[3])
local min_idle = lease
local gap = redis.call('HMGET', KEYS[2], 'gap_start', 'gap_end')
if gap[2] and now - tonumber(gap[2]) < lease then min_idle = lease + tonumber(gap[2]) - tonumber(gap[1]) end
return redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], min_idle, '0-0', 'COUNT', ARGV[5])[2]
"""

# KEYS: jobs stream, workers-seen hash; ARGV: group, consumer, gap ms, entry ids -> resets the idle time of the
# entries this consumer still owns (a worker reaching the queue, as in CLAIM_ABANDONED), returns the ones it lost
# (claimed by another worker after a pause longer than the lease)
RENEW = _SEEN + """
seen_now(tonumber(ARGV[3]))
local lost = {}
for i = 4, #ARGV do
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #pending == 0 or pending[1][2] ~= ARGV[2] then
    lost[#lost + 1] = ARGV[i]
  else
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  end
end
return lost
"""

# KEYS: jobs stream; ARGV: group, consumer -> 1 when the consumer had no entry pending and is dropped, else 0
# (DELCONSUMER drops a consumer's pending entries with it: their jobs would never be resumed)
DROP_CONSUMER = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
"""
