-- Write one memory's new state as a diff, taking its lock first when the caller does not hold
-- it: one round trip per memory in the common case. Refused (and nothing written) when another
-- owner holds the lock, when the caller's fencing token or partition epoch is older than the
-- last writer's, or when the state is not at the version the caller computed from. On that
-- last refusal (CONFLICT) the caller keeps the lock and gets the current state back, so its
-- next attempt is one more round trip, with no wait.
-- KEYS: lock, meta, order, msgs, fence, ids, the writer's partition epoch counter
-- ARGV: 1. a JSON array [owner, token (-1 = not held: take the lock and draw a token here),
--          epoch (-1 = none), expected_version, ttl_ms, hold_ms (0 = release the lock after
--          the write, else keep holding it for hold_ms more), lease_ms (how long a CONFLICT
--          keeps the lock), the score of the first appended message (the next ones follow
--          by 1), the number of inserted messages, the ids window's length];
--       2. a JSON array of the appended messages' ids; 3. their bodies as newline-delimited
--          JSON (each followed by a newline; JSON bodies hold none);
--       4. the event ids the batch added to the window, a JSON array ('' when none),
--          appended to the stored list, which is trimmed to the window's length;
--       5. a JSON array of the removed message ids;
--       6. a JSON object of the changed meta fields;
--       7… (score, id, body) per message inserted between kept ones (a summary; rare).
--       Few arguments whatever the batch: packing each one costs the consumer more than
--       decoding them here costs Redis, which has CPU to spare.
-- Replies: {'OK', new_version, token} | {'CONFLICT', token, version, meta, order, msgs, ids}
--          | {'LOCKED', holder} | {'LOCK_LOST', ''} | {'FENCED', why}
local h = cjson.decode(ARGV[1])
local owner, token, epoch, expected = h[1], h[2], h[3], h[4]
local ttl, hold, lease, base, n_inserted = h[5], h[6], h[7], h[8], h[9]
local window = h[10]
-- The ids window as stored: a list (a JSON string, as the previous version kept it, is
-- read as well and converted by the next write).
local function recent_ids()
  if redis.call('TYPE', KEYS[6]).ok == 'string' then return redis.call('GET', KEYS[6]) end
  return cjson.encode(redis.call('LRANGE', KEYS[6], 0, -1))
end
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= owner then return {'LOCKED', holder} end
if token >= 0 and not holder then return {'LOCK_LOST', ''} end
local m = redis.call('HMGET', KEYS[2], 'version', 'epoch', 'fence')
local version = tonumber(m[1]) or 0
local refusal
local current = epoch >= 0 and tonumber(redis.call('GET', KEYS[7]) or '-1') or -1
if current > epoch then
  refusal = {'FENCED', 'partition epoch ' .. current}
elseif epoch >= 0 and (tonumber(m[2]) or -1) > epoch then
  refusal = {'FENCED', 'epoch ' .. m[2]}
elseif token >= 0 and (tonumber(m[3]) or 0) > token then
  refusal = {'FENCED', 'token ' .. m[3]}
end
if refusal then
  if holder then redis.call('DEL', KEYS[1]) end
  return refusal
end
if token < 0 then token = redis.call('INCR', KEYS[5]) end
if version ~= expected then
  redis.call('SET', KEYS[1], owner, 'PX', lease)
  return {'CONFLICT', token, version, redis.call('HGETALL', KEYS[2]),
          redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES'), redis.call('HGETALL', KEYS[4]),
          recent_ids()}
end
-- unpack() is bounded by Lua's C stack: commands take at most 1000 arguments at a time.
local removed = cjson.decode(ARGV[5])
for i = 1, #removed, 1000 do
  local j = math.min(i + 999, #removed)
  redis.call('ZREM', KEYS[3], unpack(removed, i, j))
  redis.call('HDEL', KEYS[4], unpack(removed, i, j))
end
-- Inserted scores travel as strings: Lua numbers would lose the digits of a midpoint. The
-- appended ones are whole numbers, exact as Lua numbers.
local zargs, hargs, n = {}, {}, 0
for i = 0, n_inserted - 1 do
  local k = 7 + 3 * i
  zargs[2 * n + 1], zargs[2 * n + 2] = ARGV[k], ARGV[k + 1]
  hargs[2 * n + 1], hargs[2 * n + 2] = ARGV[k + 1], ARGV[k + 2]
  n = n + 1
end
-- Bodies are JSON objects: never empty, no newline inside.
local ids, i = cjson.decode(ARGV[2]), 0
for body in string.gmatch(ARGV[3], '[^\n]+') do
  i = i + 1
  zargs[2 * n + 1], zargs[2 * n + 2] = base + i - 1, ids[i]
  hargs[2 * n + 1], hargs[2 * n + 2] = ids[i], body
  n = n + 1
end
for i = 1, #zargs, 1000 do
  local j = math.min(i + 999, #zargs)
  redis.call('ZADD', KEYS[3], unpack(zargs, i, j))
  redis.call('HSET', KEYS[4], unpack(hargs, i, j))
end
if ARGV[4] ~= '' then
  local add = cjson.decode(ARGV[4])
  if redis.call('TYPE', KEYS[6]).ok == 'string' then
    local old = cjson.decode(redis.call('GET', KEYS[6]))
    redis.call('DEL', KEYS[6])
    for i = 1, #old, 1000 do redis.call('RPUSH', KEYS[6], unpack(old, i, math.min(i + 999, #old))) end
  end
  for i = 1, #add, 1000 do redis.call('RPUSH', KEYS[6], unpack(add, i, math.min(i + 999, #add))) end
  redis.call('LTRIM', KEYS[6], -window, -1)
end
local fields = {'version', version + 1, 'fence', token}
if epoch >= 0 then
  fields[#fields + 1] = 'epoch'
  fields[#fields + 1] = epoch
end
for field, value in pairs(cjson.decode(ARGV[6])) do  -- only the fields that changed
  fields[#fields + 1] = field
  fields[#fields + 1] = value
end
redis.call('HSET', KEYS[2], unpack(fields))
for k = 2, 6 do redis.call('PEXPIRE', KEYS[k], ttl) end
if hold > 0 then
  redis.call('SET', KEYS[1], owner, 'PX', hold)
elseif holder then
  redis.call('DEL', KEYS[1])
end
return {'OK', tostring(version + 1), token}
