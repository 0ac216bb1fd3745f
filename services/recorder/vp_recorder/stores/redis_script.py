"""The Lua script applying a run of call events to the calls' live state in Redis, atomically.

Several recorders may share the work: each event is read, compared and written on the server in the
script's one step, and a batch is one pipeline of these scripts of up to ``EVENTS_PER_SCRIPT`` events
each (one round trip; one reply per script, not per event: parsing replies was a quarter of the
recorder's CPU). KEYS: per event in turn, the call hash, its history list, its recorded turn ids, its
bot turns cut before their llm.done. ARGV: per event in turn, how many values follow, then kind,
ttl_s, history_scan, the kind's fields (``RedisStore`` builds them), the pub/sub channel and the
event's public message ('' for none), published once its state is written. History entries are
compact JSON (``{"role","text","turn_id","ts_ms","interrupted"}``), so plain substring tests find one.
"""

# events per script: Redis runs nothing else meanwhile, so a run stays short (a few ms)
EVENTS_PER_SCRIPT = 100

CALL_EVENTS_SCRIPT = r"""
-- the event being applied (set per event below; the functions see them as upvalues)
local call, hist, turns, cut, A
local kind, ttl, scan

local function entry_json(role, text, turn_id, ts_ms, interrupted)
  return '{"role":' .. cjson.encode(role) .. ',"text":' .. cjson.encode(text) .. ',"turn_id":'
    .. cjson.encode(turn_id) .. ',"ts_ms":' .. ts_ms .. ',"interrupted":'
    .. (interrupted and 'true' or 'false') .. '}'
end

-- Update the history entry of (role, turn) in place, or append it; true when it existed. A stage's
-- report only ever marks an entry interrupted; the gateway's final one decides.
local function put_entry(role, turn_id, text, ts_ms, interrupted, append, final)
  local recent = redis.call('LRANGE', hist, -scan, -1)
  local first = redis.call('LLEN', hist) - #recent
  -- entries are compact JSON written here: plain substring tests find the (role, turn) one
  local want_turn = '"turn_id":' .. cjson.encode(turn_id) .. ','
  local want_role = '{"role":' .. cjson.encode(role) .. ','
  for i = #recent, 1, -1 do
    local raw = recent[i]
    if string.find(raw, want_turn, 1, true) and string.find(raw, want_role, 1, true) == 1 then
      local entry = cjson.decode(raw)
      local was = entry.interrupted == true
      local now = interrupted or ((not final) and was)
      if entry.text ~= text or was ~= now then
        local updated = entry_json(role, text, turn_id, string.format('%.0f', entry.ts_ms), now)
        redis.call('LSET', hist, first + i - 1, updated)
      end
      return true
    end
  end
  if append then
    local new = entry_json(role, text, turn_id, ts_ms, interrupted)
    -- in time order even when an event comes late: before the first recent entry after it (at
    -- the same millisecond, a turn's caller words come before its reply)
    local at = tonumber(ts_ms)
    for i = 1, #recent do
      local ts = tonumber(string.match(recent[i], '"ts_ms":(%d+)') or '0')
      local reply_of_turn = role == 'user' and string.find(recent[i], want_turn, 1, true)
        and string.find(recent[i], '{"role":"assistant",', 1, true) == 1
      if ts > at or (ts == at and reply_of_turn) then
        redis.call('LINSERT', hist, 'BEFORE', recent[i], new)
        return false
      end
    end
    redis.call('RPUSH', hist, new)
  end
  return false
end

local function apply()
  if kind == '' then
    -- no state of its own: only its public message
  elseif kind == 'call.started' then
    redis.call('HSET', call, 'robot', A[4], 'channel', A[5], 'started_at', A[6])
    -- a late call.started must not reopen an ended call
    redis.call('HSETNX', call, 'status', 'active')
    redis.call('HSETNX', call, 'turns', 0)
  elseif kind == 'call.ended' then
    redis.call('HSET', call, 'status', 'ended', 'ended_at', A[4], 'end_reason', A[5])
    redis.call('DEL', cut)
  elseif kind == 'prompt.switched' then
    redis.call('HSET', call, 'prompt', A[4])
  elseif kind == 'turn.metrics' then
    -- the gateway's account of a turn is final: it corrects the history entries of the turn
    local turn_id, user_text, bot_text, interrupted = A[4], A[5], A[6], A[7] == '1'
    -- delivered again (a recorder died before its ack): its entries are there, perhaps further
    -- back than the scan reaches, so they are corrected where found and never added twice
    local again = redis.call('SADD', turns, turn_id) == 0
    redis.call('HSET', call, 'turns', redis.call('SCARD', turns))
    if user_text ~= '' then
      put_entry('user', turn_id, user_text, A[8], false, not again, false)
    end
    if bot_text ~= '' or interrupted then
      put_entry('assistant', turn_id, bot_text, A[9], interrupted, not again, true)
      redis.call('HSET', call, 'last_bot_text', bot_text)
    end
    redis.call('HDEL', cut, turn_id)
  -- a stage's report of a turn (asr.final, llm.done, control.interrupt) comes before the gateway's
  -- account of it: once that is stored it is final, and a stage event delivered again is ignored
  elseif redis.call('SISMEMBER', turns, A[4]) == 0 then
    local turn_id, text, ts_ms = A[4], A[5], A[6]
    if kind == 'asr.final' then
      put_entry('user', turn_id, text, ts_ms, false, true, false)
      redis.call('HSET', call, 'last_user_text', text)
    elseif kind == 'llm.done' then
      local played = redis.call('HGET', cut, turn_id)
      if played then
        text = played
      end
      put_entry('assistant', turn_id, text, ts_ms, A[7] == '1' or played ~= false, true, false)
      redis.call('HSET', call, 'last_bot_text', text)
    elseif kind == 'control.interrupt' then
      if put_entry('assistant', turn_id, text, ts_ms, true, false, false) then
        redis.call('HSET', call, 'last_bot_text', text)
      else
        redis.call('HSET', cut, turn_id, text) -- the llm.done of the turn is still to come
      end
    end
  end
  redis.call('EXPIRE', call, ttl)
  redis.call('EXPIRE', hist, ttl)
  redis.call('EXPIRE', turns, ttl)
  redis.call('EXPIRE', cut, ttl)
  if A[#A] ~= '' then
    redis.call('PUBLISH', A[#A - 1], A[#A])
  end
end

local at, k = 1, 0
while at <= #ARGV do
  local n = tonumber(ARGV[at])
  A = {unpack(ARGV, at + 1, at + n)}
  call, hist, turns, cut = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]
  kind, ttl, scan = A[1], tonumber(A[2]), tonumber(A[3])
  apply()
  at, k = at + n + 1, k + 4
end
return 1
"""
