#!lua name=completions
--[[
The server side of completion-valkey (see docs/valkey.md).

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
(`max-deleted-entry-id` of XINFO STREAM only follows XDEL, not trimming.)

Versioning: VERSION grows whenever anything changes (2: completions_terminal takes an
optional 9th argument, 'sharded', to announce with SPUBLISH on a cluster; 3: the partition's
meta hash keeps `last`, the newest entry id, so the terminal write and the read function
need neither XREVRANGE nor XINFO STREAM, and the message is built as text around the stored
tags JSON instead of decoding and re-encoding it: about half the function's server time;
4: the terminal write keeps the server time as the text TIME returns instead of formatting
Lua numbers, and quotes plain strings without cjson: 12% fewer instructions, the same
entries and messages). A newer version keeps every function
and argument list of the older ones (old clients keep calling them after an upgrade);
the Rust side loads this library when the server holds none or an older one, and refuses
to run against a newer one.

Errors are replies whose first word is a code the Rust side maps:
  COMPLETIONS_NOT_FOUND, COMPLETIONS_EXISTS, COMPLETIONS_TERMINAL <outcome>,
  COMPLETIONS_BAD_ARGS <what>.
]]

local VERSION = 4

-- Server time in microseconds (exact in a Lua number until the year 2255).
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function us_id(us)
  return string.format('%.0f-0', us)
end

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

local function parse_id(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

local function id_less(a, b)
  local ams, aseq = parse_id(a)
  local bms, bseq = parse_id(b)
  return ams < bms or (ams == bms and aseq < bseq)
end

-- Records that `id` (and everything before it) was trimmed from the partition.
local function record_trimmed(meta, id)
  local known = redis.call('HGET', meta, 'trimmed_to')
  if not known or id_less(known, id) then
    redis.call('HSET', meta, 'trimmed_to', id)
  end
end

-- Trims every entry older than `min_id` (exactly). Returns how many went.
local function trim_before(log, meta, min_id)
  local newest_gone = redis.call('XREVRANGE', log, '(' .. min_id, '-', 'COUNT', 1)
  if #newest_gone == 0 then
    return 0
  end
  local removed = redis.call('XTRIM', log, 'MINID', '=', min_id)
  record_trimmed(meta, newest_gone[1][1])
  return removed
end

-- Trims the oldest entries until at most `max` are left (exactly). Returns how many went.
local function trim_to_count(log, meta, max)
  local removed = 0
  local len = redis.call('XLEN', log)
  while len > max do
    -- At most 1000 per step, to bound the reply held in memory.
    local step = math.min(len - max, 1000)
    local gone = redis.call('XRANGE', log, '-', '+', 'COUNT', step)
    redis.call('XTRIM', log, 'MAXLEN', '=', len - step)
    record_trimmed(meta, gone[#gone][1])
    removed = removed + step
    len = len - step
  end
  return removed
end

-- `last` as recorded, unless entries were appended after it without recording it (code of
-- an older version ran again after this one, e.g. an older client reloading the library):
-- then the newest of them. When `last` holds, the range is empty and cheap.
local function checked_last(log, last)
  local newer = redis.call('XREVRANGE', log, '+', '(' .. last, 'COUNT', 1)
  if #newer > 0 then
    return newer[1][1]
  end
  return last
end

-- The partition's newest entry id: `last` of its meta hash (kept since version 3), else (a
-- log written by an older version) read from the stream. '0-0' for none.
local function stream_last_id(log, meta)
  local last = redis.call('HGET', meta, 'last')
  if last then
    return checked_last(log, last)
  end
  local newest = redis.call('XREVRANGE', log, '+', '-', 'COUNT', 1)
  if #newest > 0 then
    return newest[1][1]
  end
  return '0-0'
end

-- A JSON string literal for `s`, byte for byte what cjson gives: as is between quotes unless
-- it holds a character cjson escapes (controls, quote, backslash, and '/'), then cjson.
local function json_string(s)
  if string.find(s, '[%c"\\/]') then
    return cjson.encode(s)
  end
  return '"' .. s .. '"'
end

-- KEYS: execution hash, partition log, partition meta.
-- ARGV: execution id, outcome, reason, write token, partition, channel,
--       max entries ('' for none), max age in ms ('' for none),
--       optional: 'sharded' to SPUBLISH (a cluster: the channel is in the partition's slot).
-- Returns the log entry id. Checks the execution exists and is still active, marks it
-- terminal, appends to the log (trimming it to retention), and PUBLISHes the event.
-- Numbers are kept as the text TIME returns: formatting Lua numbers goes through the C
-- library's floating-point printf, the most expensive step of the call otherwise.
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
  local namespace, flow, tags = current[4], current[5], current[6]
  local time = redis.call('TIME')
  local micros = string.rep('0', 6 - #time[2]) .. time[2]
  local now = time[1] .. string.sub(micros, 1, 3)
  local prev = stream_last_id(log, meta)
  local entry = redis.pcall('XADD', log, time[1] .. micros .. '-*', 'execution_id', id, 'namespace', namespace,
    'flow_id', flow, 'outcome', outcome, 'tags', tags, 'completed_at_ms', now)
  if type(entry) == 'table' and entry.err then
    entry = redis.call('XADD', log, '*', 'execution_id', id, 'namespace', namespace,
      'flow_id', flow, 'outcome', outcome, 'tags', tags, 'completed_at_ms', now)
  end
  if maxlen ~= '' then
    trim_to_count(log, meta, tonumber(maxlen))
  end
  if maxage ~= '' then
    local us = tonumber(time[1]) * 1000000 + tonumber(time[2])
    trim_before(log, meta, us_id(us - tonumber(maxage) * 1000))
  end
  redis.call('HSET', meta, 'last', entry)
  redis.call('HSET', key, 'state', outcome, 'reason', reason, 'completed_at_ms', now,
    'terminal_token', token, 'terminal_id', entry)
  -- The tags are stored as the JSON object the client sent: embedded as they are.
  local flow_field = ''
  if flow ~= '' then
    flow_field = ',"flow_id":' .. json_string(flow)
  end
  local message = '{"v":1,"partition":' .. partition .. ',"id":"' .. entry .. '","prev":"' .. prev
    .. '","execution_id":' .. json_string(id) .. ',"namespace":' .. json_string(namespace) .. ',"outcome":"'
    .. outcome .. '","tags":' .. tags .. ',"completed_at_ms":' .. now .. flow_field .. '}'
  if mode == 'sharded' then
    redis.call('SPUBLISH', channel, message)
  else
    redis.call('PUBLISH', channel, message)
  end
  return entry
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
redis.register_function { function_name = 'completions_read', callback = completions_read, flags = { 'no-writes' } }
redis.register_function('completions_trim', completions_trim)
redis.register_function { function_name = 'completions_ids', callback = completions_ids, flags = { 'no-writes' } }
