--[[
The server side of completion-valkey (see docs/valkey.md): the function library
`completions`, minus its first two parts. The crate assembles the library it loads from the
line `#!lua name=completions`, lua/emit.lua (the emit step: the log append, trimming and
announcement every completion goes through, and the helpers it needs) and this file, so
this file alone does not load; `completion_valkey::LIBRARY_SOURCE` is the whole library.

Every function touches the keys of ONE partition only (they share the hash tag
`{<prefix>:<p>}`), so the library works unchanged on a cluster. Functions are atomic:
a terminal write changes the execution, appends to the partition log and PUBLISHes in
one step, or does nothing.

Log entry ids are `<server time in microseconds>-<seq>`. One server runs one call at a
time, each at its own microsecond, so ids of all partitions sort in commit order and
readers can merge partitions. (A clock that went back makes XADD fall back to `*`, which
goes on after the partition's newest id: order across partitions is then approximate.)

Trimming is exact and recorded: the partition's meta hash keeps `trimmed_to`, the newest
id ever trimmed away, which readers compare with their position to report gaps.
(`max-deleted-entry-id` of XINFO STREAM only follows XDEL, not trimming: docs/server-facts.md,
"Valkey / Redis functions and streams".)

Versioning: VERSION grows whenever anything changes; a newer version keeps every function
and argument list of the older ones (old clients keep calling them after an upgrade), and
what each version changed is in docs/valkey.md, "History". The Rust side loads this
library when the server holds none or an older one, and refuses to run against a newer one.

Errors are replies whose first word is a code the Rust side maps:
  COMPLETIONS_NOT_FOUND, COMPLETIONS_EXISTS, COMPLETIONS_TERMINAL <outcome>,
  COMPLETIONS_EMITTED <outcome>, COMPLETIONS_BAD_ARGS <what>.
]]

local VERSION = 5

local function completions_version()
  return VERSION
end

-- KEYS: execution hash. ARGV: namespace, flow id ('' for none), tags JSON, write token.
-- Returns the creation time. Refuses an existing id, unless the same token created it
-- (the client library retried a call whose reply was lost).
local function completions_create(keys, args)
  local key = keys[1]
  local namespace, flow, tags, token = args[1], args[2], args[3], args[4]
  if not token then
    return redis.error_reply('COMPLETIONS_BAD_ARGS create takes namespace, flow, tags, token')
  end
  local existing = redis.call('HMGET', key, 'create_token', 'created_at_ms')
  if existing[1] then
    if existing[1] == token then
      return tonumber(existing[2])
    end
    return redis.error_reply('COMPLETIONS_EXISTS execution exists')
  end
  if redis.call('EXISTS', key) == 1 then
    return redis.error_reply('COMPLETIONS_EXISTS execution exists')
  end
  local now = math.floor(now_us() / 1000)
  redis.call('HSET', key,
    'namespace', namespace, 'flow_id', flow, 'tags', tags, 'state', 'active', 'reason', '',
    'created_at_ms', now, 'completed_at_ms', '', 'create_token', token)
  return now
end

-- KEYS: execution hash, partition log, partition meta.
-- ARGV: execution id, outcome, reason, write token, partition, channel,
--       max entries ('' for none), max age in ms ('' for none),
--       optional: 'sharded' to SPUBLISH (a cluster: the channel is in the partition's slot).
-- Returns the log entry id. Checks the execution exists and is still active, appends to
-- the log (trimming it to retention) and PUBLISHes the event (completions_append, the
-- same step completions_emit runs), and marks the execution terminal.
local function completions_terminal(keys, args)
  local key, log, meta = keys[1], keys[2], keys[3]
  local id, outcome, reason, token, partition, channel, maxlen, maxage, mode =
    args[1], args[2], args[3], args[4], args[5], args[6], args[7], args[8], args[9]
  if not maxage or not meta then
    return redis.error_reply('COMPLETIONS_BAD_ARGS terminal takes 3 keys and 8 arguments')
  end
  if outcome ~= 'succeeded' and outcome ~= 'failed' and outcome ~= 'cancelled' then
    return redis.error_reply('COMPLETIONS_BAD_ARGS unknown outcome')
  end
  if not string.find(partition, '^%d+$') then
    return redis.error_reply('COMPLETIONS_BAD_ARGS partition is not a number')
  end
  local current = redis.call('HMGET', key, 'state', 'terminal_token', 'terminal_id', 'namespace', 'flow_id', 'tags')
  local state = current[1]
  if not state then
    return redis.error_reply('COMPLETIONS_NOT_FOUND execution not found')
  end
  if state ~= 'active' then
    if current[2] == token then
      -- Our own write, retried after its reply was lost: it took effect once.
      return current[3]
    end
    return redis.error_reply('COMPLETIONS_TERMINAL ' .. state)
  end
  local entry, now = completions_append { log = log, meta = meta, id = id, namespace = current[4],
    flow = current[5], outcome = outcome, tags = current[6], partition = partition, channel = channel,
    sharded = mode == 'sharded', maxlen = maxlen, maxage = maxage }
  redis.call('HSET', key, 'state', outcome, 'reason', reason, 'completed_at_ms', now,
    'terminal_token', token, 'terminal_id', entry)
  return entry
end

-- KEYS and ARGV: those of the emit step (lua/emit.lua): log, meta, emit marker; execution
-- id, namespace, flow id, outcome, tags JSON, reason, write token, partition, partition
-- count, channel, 'plain' or 'sharded', retention count, retention age, marker lifetime,
-- 'once' or 'repeat'. For engines that keep their execution state elsewhere and need no
-- state change in the same call. Returns the log entry id (a retry with the same token:
-- the first call's). Errors: COMPLETIONS_BAD_ARGS <what>, COMPLETIONS_EMITTED <outcome>.
local function completions_emit(keys, args)
  local ok, emit = pcall(completions_emit_prepare, keys, args, 1, 1)
  if not ok then
    -- The checks raise error replies (pcall hands them over as their text): answer them
    -- plainly, without the script position an uncaught error gets appended.
    return redis.error_reply(tostring(emit))
  end
  return completions_emit_commit(emit)
end

local function xinfo_field(info, name)
  for i = 1, #info, 2 do
    if info[i] == name then
      return info[i + 1]
    end
  end
  return nil
end

-- KEYS: partition log, partition meta. ARGV: read after this id (exclusive), at most this
-- many entries (0: none, only the ids).
-- Returns { newest trimmed id, last generated id, entries, server time in microseconds },
-- read in one atomic step so the gap check matches the entries; '0-0' for ids that do
-- not exist. Every entry committed after this read has an id past the returned time: a
-- reader of several partitions merges them only up to the earliest of their read times.
local function completions_read(keys, args)
  local log, meta = keys[1], keys[2]
  local after, count = args[1], tonumber(args[2])
  if not count or not meta then
    return redis.error_reply('COMPLETIONS_BAD_ARGS read takes 2 keys, an id and a count')
  end
  local now = string.format('%.0f', now_us())
  local recorded = redis.call('HMGET', meta, 'trimmed_to', 'last')
  local trimmed = recorded[1] or '0-0'
  if redis.call('EXISTS', log) == 0 then
    return { trimmed, '0-0', {}, now }
  end
  -- `last` (version 3) is the newest id ever appended, as `last-generated-id` is.
  local last = recorded[2] and checked_last(log, recorded[2])
    or xinfo_field(redis.call('XINFO', 'STREAM', log), 'last-generated-id') or '0-0'
  local entries = {}
  if count > 0 then
    entries = redis.call('XRANGE', log, '(' .. after, '+', 'COUNT', count)
  end
  return { trimmed, last, entries, now }
end

-- KEYS: partition log, partition meta. ARGV: the oldest id to keep ('' for none), max age
-- in ms ('' for none). Trims exactly; returns how many entries were removed.
local function completions_trim(keys, args)
  local log, meta = keys[1], keys[2]
  local min_id, maxage = args[1], args[2]
  if not maxage or not meta then
    return redis.error_reply('COMPLETIONS_BAD_ARGS trim takes 2 keys and 2 arguments')
  end
  local removed = 0
  if min_id ~= '' then
    removed = removed + trim_before(log, meta, min_id)
  end
  if maxage ~= '' then
    removed = removed + trim_before(log, meta, us_id(now_us() - tonumber(maxage) * 1000))
  end
  return removed
end

-- KEYS: partition log. ARGV: before this id (exclusive; '+' for the newest), at most this
-- many. Returns entry ids only, newest first (to find the retention cut-off cheaply).
local function completions_ids(keys, args)
  local before, count = args[1], tonumber(args[2])
  if not count then
    return redis.error_reply('COMPLETIONS_BAD_ARGS ids takes an id and a count')
  end
  if before ~= '+' then
    before = '(' .. before
  end
  local ids = {}
  for i, entry in ipairs(redis.call('XREVRANGE', keys[1], before, '-', 'COUNT', count)) do
    ids[i] = entry[1]
  end
  return ids
end

redis.register_function { function_name = 'completions_version', callback = completions_version,
  flags = { 'no-writes', 'allow-stale' } }
redis.register_function('completions_create', completions_create)
redis.register_function('completions_terminal', completions_terminal)
redis.register_function('completions_emit', completions_emit)
redis.register_function { function_name = 'completions_read', callback = completions_read, flags = { 'no-writes' } }
redis.register_function('completions_trim', completions_trim)
redis.register_function { function_name = 'completions_ids', callback = completions_ids, flags = { 'no-writes' } }
