--[[
completion-valkey's emit step: append one completion to a partition's retained log and
announce it, exactly as the built-in terminal write does (docs/valkey.md, "Emitting from
your own function").

This file is included as is, in two places:
- in the `completions` function library itself (the crate assembles the library from the
  line `#!lua name=completions`, this file and lua/completions.lua: completions_terminal and
  completions_emit run this code);
- in an engine's own function library, after the engine's `#!lua name=...` line and before
  its own code (Rust: `completion_valkey::EMIT_LUA`), so that one FCALL of the engine
  changes the engine's own keys and emits the completion atomically. Valkey functions
  cannot call other functions: including the code is the only way to do both in one call.

It defines local functions only (no globals, no registration). Engines use two:

  local emit = completions_emit_prepare(KEYS, ARGV, k, a)
    Reads and checks the emit's 3 keys KEYS[k], KEYS[k+1], KEYS[k+2] and its 15 arguments
    ARGV[a] .. ARGV[a+14] (what `ValkeyBackend::emit_call` returns, in that order), and
    whether the execution already has a completion. Writes nothing. Raises an error reply
    (error(), so the call ends here) on bad arguments (COMPLETIONS_BAD_ARGS <what>) and on a
    second completion of the execution without the 'repeat' flag (COMPLETIONS_EMITTED
    <first outcome>). Call it before the engine's own writes: a Valkey function that fails
    half way keeps the writes it made (there is no rollback).
    `emit.retried` is the log entry id of an earlier call with the same write token (the
    client re-sent the call after losing its reply): the completion exists, nothing to do.

  local entry = completions_emit_commit(emit)
    Appends the completion to the partition's log (trimming it to retention), keeps the
    partition's bookkeeping (`last`, `trimmed_to`), records the execution's emit marker and
    PUBLISHes (or SPUBLISHes) the message. Returns the new log entry id (for a retried
    call: the first one's, and does nothing).

KEYS (all of one partition p, hash tag {P:p}):
  1. P:{P:p}:log   2. P:{P:p}:meta   3. P:{P:p}:emitted:<execution id>
ARGV:
  1. execution id   2. namespace   3. flow id ('' for none)
  4. outcome: succeeded, failed or cancelled   5. tags, a JSON object of strings ('{}')
  6. reason ('' for none)   7. write token ('' for none)
  8. partition p   9. the prefix's partition count
  10. channel: P:completions, or P:{P:p}:completions on a cluster
  11. 'plain' (PUBLISH) or 'sharded' (SPUBLISH, a cluster)
  12. retention count ('' for none)   13. retention age in ms ('' for none)
  14. how long the emit marker lives, ms ('' for ever)
  15. 'once' (refuse a second completion of the execution) or 'repeat' (append it anyway)

COMPLETIONS_EMIT_VERSION is the library version this copy of the code comes from: the
code an engine included keeps the log's bookkeeping as that version did (reload your
library when you upgrade the crate).
]]

local COMPLETIONS_EMIT_VERSION = 5

-- Server time in microseconds (exact in a Lua number until the year 2255).
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function us_id(us)
  return string.format('%.0f-0', us)
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

-- The log/message step of every completion, shared by completions_terminal and the emit:
-- appends the event `e` to its partition's log (entry id: the server time in microseconds,
-- or after the partition's newest id if the clock went back), trims the log to retention,
-- records the partition's newest id (`last`) and PUBLISHes (or SPUBLISHes) the message with
-- `prev`, the partition's newest id before this entry. `e` holds: log, meta, id,
-- namespace, flow ('' for none), outcome, tags (JSON object text), partition (text),
-- channel, sharded (boolean), maxlen and maxage ('' for none). Returns the entry id and
-- the completion time in ms (text).
-- Numbers are kept as the text TIME returns: formatting Lua numbers goes through the C
-- library's floating-point printf, the most expensive step of the call otherwise.
local function completions_append(e)
  local log, meta = e.log, e.meta
  local time = redis.call('TIME')
  local micros = string.rep('0', 6 - #time[2]) .. time[2]
  local now = time[1] .. string.sub(micros, 1, 3)
  local prev = stream_last_id(log, meta)
  local entry = redis.pcall('XADD', log, time[1] .. micros .. '-*', 'execution_id', e.id, 'namespace', e.namespace,
    'flow_id', e.flow, 'outcome', e.outcome, 'tags', e.tags, 'completed_at_ms', now)
  if type(entry) == 'table' and entry.err then
    entry = redis.call('XADD', log, '*', 'execution_id', e.id, 'namespace', e.namespace,
      'flow_id', e.flow, 'outcome', e.outcome, 'tags', e.tags, 'completed_at_ms', now)
  end
  if e.maxlen ~= '' then
    trim_to_count(log, meta, tonumber(e.maxlen))
  end
  if e.maxage ~= '' then
    local us = tonumber(time[1]) * 1000000 + tonumber(time[2])
    trim_before(log, meta, us_id(us - tonumber(e.maxage) * 1000))
  end
  redis.call('HSET', meta, 'last', entry)
  -- The tags are the JSON object text as stored: embedded as they are.
  local flow_field = ''
  if e.flow ~= '' then
    flow_field = ',"flow_id":' .. json_string(e.flow)
  end
  local message = '{"v":1,"partition":' .. e.partition .. ',"id":"' .. entry .. '","prev":"' .. prev
    .. '","execution_id":' .. json_string(e.id) .. ',"namespace":' .. json_string(e.namespace) .. ',"outcome":"'
    .. e.outcome .. '","tags":' .. e.tags .. ',"completed_at_ms":' .. now .. flow_field .. '}'
  if e.sharded then
    redis.call('SPUBLISH', e.channel, message)
  else
    redis.call('PUBLISH', e.channel, message)
  end
  return entry, now
end

-- Raises COMPLETIONS_BAD_ARGS with `what`.
local function completions_bad(what)
  error(redis.error_reply('COMPLETIONS_BAD_ARGS ' .. what))
end

-- `value` for an error message: quoted, cut at 100 bytes.
local function completions_shown(value)
  if #value > 100 then
    value = string.sub(value, 1, 100) .. '...'
  end
  return '`' .. value .. '`'
end

-- Checks an id, flow id, namespace or tag key: 1 to `max` bytes of visible ASCII without
-- braces (nor `=` in a tag key), as completion-core's types are.
local function completions_check_name(what, value, max, no_equals)
  if value == '' then
    completions_bad(what .. ' must not be empty')
  end
  if #value > max then
    completions_bad(what .. ' ' .. completions_shown(value) .. ' is ' .. #value .. ' bytes long, the limit is ' .. max)
  end
  local at = string.find(value, '[^!-z|~]')
  if not at and no_equals then
    at = string.find(value, '=', 1, true)
  end
  if at then
    completions_bad(what .. ' ' .. completions_shown(value) .. ': the byte at ' .. (at - 1)
      .. ' is not allowed (visible ASCII without braces)')
  end
end

-- Whether `s` is valid UTF-8 without control characters (C0, DEL, C1), except the bytes of
-- `allowed` (a Lua pattern set such as '[\n\t]'), and without braces unless `braces`.
local function completions_plain_text(s, allowed, braces)
  local i, n = 1, #s
  while i <= n do
    local c = string.byte(s, i)
    if c < 0x80 then
      local ch = string.char(c)
      if (c < 0x20 or c == 0x7f) and not (allowed and string.find(ch, allowed)) then
        return false
      end
      if not braces and (ch == '{' or ch == '}') then
        return false
      end
      i = i + 1
    else
      local len
      if c >= 0xc2 and c <= 0xdf then len = 2
      elseif c >= 0xe0 and c <= 0xef then len = 3
      elseif c >= 0xf0 and c <= 0xf4 then len = 4
      else return false end
      if i + len - 1 > n then
        return false
      end
      for j = i + 1, i + len - 1 do
        local b = string.byte(s, j)
        if b < 0x80 or b > 0xbf then
          return false
        end
      end
      local c2 = string.byte(s, i + 1)
      if (c == 0xe0 and c2 < 0xa0) or (c == 0xed and c2 > 0x9f) or (c == 0xf0 and c2 < 0x90)
        or (c == 0xf4 and c2 > 0x8f) or (c == 0xc2 and c2 <= 0x9f) then
        return false -- overlong, a surrogate, past U+10FFFF, or a C1 control
      end
      i = i + len
    end
  end
  return true
end

-- Checks the tags JSON: an object of at most 16 strings, keys as tag keys, values 1 to 256
-- bytes of text without controls and braces.
local function completions_check_tags(text)
  if string.sub(text, 1, 1) ~= '{' then
    completions_bad('tags ' .. completions_shown(text) .. ' are not a JSON object')
  end
  local ok, tags = pcall(cjson.decode, text)
  if not ok or type(tags) ~= 'table' then
    completions_bad('tags ' .. completions_shown(text) .. ' are not a JSON object: ' .. tostring(tags))
  end
  local count = 0
  for k, v in pairs(tags) do
    count = count + 1
    if type(k) ~= 'string' or type(v) ~= 'string' then
      completions_bad('tags ' .. completions_shown(text) .. ': every key and value must be a string')
    end
    completions_check_name('tag key', k, 64, true)
    if v == '' or #v > 256 or not completions_plain_text(v, nil, false) then
      completions_bad('tag value ' .. completions_shown(v) .. ' of tag ' .. completions_shown(k)
        .. ' must be 1 to 256 bytes of UTF-8 text without control characters and braces')
    end
  end
  if count > 16 then
    completions_bad('tags ' .. completions_shown(text) .. ': ' .. count .. ' tags, the limit is 16')
  end
end

-- fnv1a64(s) % n (the partition of an execution id: docs/valkey.md), exactly, on 16-bit
-- limbs (Lua numbers are doubles). h * 0x100000001b3 = h * 0x1b3 + (h << 40), mod 2^64.
local function completions_partition_of(s, n)
  local h0, h1, h2, h3 = 0x2325, 0x8422, 0x9ce4, 0xcbf2
  for i = 1, #s do
    h0 = bit.bxor(h0, string.byte(s, i))
    local a0 = h0 * 0x1b3
    local a1 = h1 * 0x1b3 + math.floor(a0 / 65536)
    local a2 = h2 * 0x1b3 + math.floor(a1 / 65536)
    local a3 = h3 * 0x1b3 + math.floor(a2 / 65536)
    a2 = a2 % 65536 + (h0 % 256) * 256
    a3 = a3 + math.floor(h0 / 256) + (h1 % 256) * 256 + math.floor(a2 / 65536)
    h0, h1, h2, h3 = a0 % 65536, a1 % 65536, a2 % 65536, a3 % 65536
  end
  return (((h3 * 65536 + h2) % n * 65536 + h1) % n * 65536 + h0) % n
end

-- A count or a number of ms: '' or digits.
local function completions_check_count(what, value)
  if value ~= '' and not string.find(value, '^%d+$') then
    completions_bad(what .. ' ' .. completions_shown(value) .. ' is not a number (or empty for none)')
  end
end

-- See the top of this file.
local function completions_emit_prepare(keys, args, k, a)
  k, a = k or 1, a or 1
  local log, meta, marker = keys[k], keys[k + 1], keys[k + 2]
  if not marker then
    completions_bad('emit takes 3 keys (log, meta, marker) from KEYS[' .. k .. ']')
  end
  if args[a + 14] == nil then
    completions_bad('emit takes 15 arguments from ARGV[' .. a .. ']')
  end
  local id, namespace, flow, outcome, tags, reason, token = args[a], args[a + 1], args[a + 2], args[a + 3],
    args[a + 4], args[a + 5], args[a + 6]
  local partition, partitions, channel, mode = args[a + 7], args[a + 8], args[a + 9], args[a + 10]
  local maxlen, maxage, ttl, repeat_flag = args[a + 11], args[a + 12], args[a + 13], args[a + 14]
  completions_check_name('execution id', id, 128)
  completions_check_name('namespace', namespace, 64)
  if flow ~= '' then
    completions_check_name('flow id', flow, 128)
  end
  if outcome ~= 'succeeded' and outcome ~= 'failed' and outcome ~= 'cancelled' then
    completions_bad('outcome ' .. completions_shown(outcome) .. ' is not succeeded, failed or cancelled')
  end
  completions_check_tags(tags)
  if #reason > 1024 or not completions_plain_text(reason, '[\n\t]', true) then
    completions_bad('reason ' .. completions_shown(reason)
      .. ' must be at most 1024 bytes of UTF-8 text without control characters but newline and tab')
  end
  if not string.find(partitions, '^%d+$') or tonumber(partitions) < 1 or tonumber(partitions) > 256 then
    completions_bad('partition count ' .. completions_shown(partitions) .. ' is not a number from 1 to 256')
  end
  if not string.find(partition, '^%d+$') then
    completions_bad('partition ' .. completions_shown(partition) .. ' is not a number')
  end
  local expected = completions_partition_of(id, tonumber(partitions))
  if tonumber(partition) ~= expected then
    completions_bad('execution id ' .. completions_shown(id) .. ' belongs to partition ' .. expected .. ' of '
      .. partitions .. ', not ' .. partition)
  end
  local base = string.match(log, '^(.*):log$')
  local prefix, tag_prefix, tag_partition = string.match(base or '', '^([^{}]+):{([^{}]+):(%d+)}$')
  if not prefix or prefix ~= tag_prefix or tonumber(tag_partition) ~= expected then
    completions_bad('log key ' .. completions_shown(log) .. ' is not <prefix>:{<prefix>:' .. expected .. '}:log')
  end
  if meta ~= base .. ':meta' then
    completions_bad('meta key ' .. completions_shown(meta) .. ' is not ' .. base .. ':meta')
  end
  if marker ~= base .. ':emitted:' .. id then
    completions_bad('marker key ' .. completions_shown(marker) .. ' is not ' .. base .. ':emitted:' .. id)
  end
  local sharded = mode == 'sharded'
  if mode ~= 'plain' and not sharded then
    completions_bad('announce mode ' .. completions_shown(mode) .. ' is not plain or sharded')
  end
  local want = (sharded and base or prefix) .. ':completions'
  if channel ~= want then
    completions_bad('channel ' .. completions_shown(channel) .. ' is not ' .. want)
  end
  completions_check_count('retention count', maxlen)
  completions_check_count('retention age', maxage)
  completions_check_count('marker lifetime', ttl)
  if maxlen == '0' then
    completions_bad('retention count `0` must be at least 1 (or empty for none)')
  end
  if ttl == '0' then
    completions_bad('marker lifetime `0` must be at least 1 ms (or empty for ever)')
  end
  if repeat_flag ~= 'once' and repeat_flag ~= 'repeat' then
    completions_bad('repeat flag ' .. completions_shown(repeat_flag) .. ' is not once or repeat')
  end
  local emit = { log = log, meta = meta, marker = marker, id = id, namespace = namespace, flow = flow,
    outcome = outcome, tags = tags, reason = reason, token = token, partition = partition, channel = channel,
    sharded = sharded, maxlen = maxlen, maxage = maxage, ttl = ttl }
  local first = redis.call('HMGET', marker, 'outcome', 'entry', 'token')
  if first[1] then
    if token ~= '' and first[3] == token then
      -- Our own call, re-sent after its reply was lost: it took effect once.
      emit.retried = first[2]
    elseif repeat_flag ~= 'repeat' then
      error(redis.error_reply('COMPLETIONS_EMITTED ' .. first[1] .. ' execution ' .. id
        .. ' already has a completion (log entry ' .. first[2] .. '); pass repeat to append another'))
    end
  end
  return emit
end

-- See the top of this file.
local function completions_emit_commit(emit)
  if emit.retried then
    return emit.retried
  end
  local entry, now = completions_append(emit)
  redis.call('HSET', emit.marker, 'outcome', emit.outcome, 'entry', entry, 'token', emit.token,
    'reason', emit.reason, 'emitted_at_ms', now)
  if emit.ttl ~= '' then
    redis.call('PEXPIRE', emit.marker, emit.ttl)
  else
    redis.call('PERSIST', emit.marker)
  end
  return entry
end
