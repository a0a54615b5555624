-- Write one memory's new state as a diff, taking its lock first when the caller does not hold
-- it: one round trip per memory in the common case. Refused (and nothing written) when another
-- owner holds the lock, when the caller's fencing token or partition epoch is older than the
-- last writer's, or when the state is not at the version the caller computed from. On that
-- last refusal (CONFLICT) the caller keeps the lock and gets the current state back, so its
-- next attempt is one more round trip, with no wait.
-- KEYS: lock, meta, order, msgs, fence, ids
-- ARGV: owner, token (-1 = not held: take the lock and draw a token here), epoch (-1 = none),
--       expected_version, ttl_ms, hold_ms (0 = release the lock after the write, else keep
--       holding it for hold_ms more), lease_ms (how long a CONFLICT keeps the lock), id window,
--       then what changes:
--       - the messages appended at the end: a JSON array of their ids, their bodies joined by
--         newlines (JSON bodies hold none), and the score of the first (the next ones follow
--         by 1);
--       - a JSON array of the new event ids;
--       - three counts and the flat lists they count: removed message ids; (score, id, body)
--         per message inserted between kept ones (a summary); (field, value) per changed meta
--         field.
--       Few arguments whatever the batch: packing each one costs the consumer more than
--       splitting them here costs Redis.
-- Replies: {'OK', new_version, token} | {'CONFLICT', token, version, meta, order, msgs, ids}
--          | {'LOCKED', holder} | {'LOCK_LOST', ''} | {'FENCED', why}
local owner, token, epoch = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local expected, ttl, hold = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local lease, window = tonumber(ARGV[7]), tonumber(ARGV[8])
local appended_ids, appended_bodies, base = ARGV[9], ARGV[10], tonumber(ARGV[11])
local event_ids = ARGV[12]
local n_removed, n_inserted, n_meta = tonumber(ARGV[13]), tonumber(ARGV[14]), tonumber(ARGV[15])
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= owner then return {'LOCKED', holder} end
if token >= 0 and not holder then return {'LOCK_LOST', ''} end
local m = redis.call('HMGET', KEYS[2], 'version', 'epoch', 'fence')
local version = tonumber(m[1]) or 0
local refusal
if epoch >= 0 and (tonumber(m[2]) or -1) > epoch then
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
          redis.call('LRANGE', KEYS[6], 0, -1)}
end
-- unpack() is bounded by Lua's C stack: commands take at most 1000 arguments at a time.
local at = 16
for i = at, at + n_removed - 1, 1000 do
  local j = math.min(i + 999, at + n_removed - 1)
  redis.call('ZREM', KEYS[3], unpack(ARGV, i, j))
  redis.call('HDEL', KEYS[4], unpack(ARGV, i, j))
end
at = at + n_removed
-- Inserted scores travel as strings: Lua numbers would lose the digits of a midpoint. The
-- appended ones are whole numbers, exact as Lua numbers.
local zargs, hargs, n = {}, {}, 0
for i = 0, n_inserted - 1 do
  local k = at + 3 * i
  zargs[2 * n + 1], zargs[2 * n + 2] = ARGV[k], ARGV[k + 1]
  hargs[2 * n + 1], hargs[2 * n + 2] = ARGV[k + 1], ARGV[k + 2]
  n = n + 1
end
at = at + 3 * n_inserted
local pos = 1
for i, id in ipairs(cjson.decode(appended_ids)) do
  local stop = string.find(appended_bodies, '\n', pos, true) or (#appended_bodies + 1)
  zargs[2 * n + 1], zargs[2 * n + 2] = base + i - 1, id
  hargs[2 * n + 1], hargs[2 * n + 2] = id, string.sub(appended_bodies, pos, stop - 1)
  pos = stop + 1
  n = n + 1
end
for i = 1, #zargs, 1000 do
  local j = math.min(i + 999, #zargs)
  redis.call('ZADD', KEYS[3], unpack(zargs, i, j))
  redis.call('HSET', KEYS[4], unpack(hargs, i, j))
end
local eids = cjson.decode(event_ids)
if #eids > 0 then
  for i = 1, #eids, 1000 do
    redis.call('RPUSH', KEYS[6], unpack(eids, i, math.min(i + 999, #eids)))
  end
  redis.call('LTRIM', KEYS[6], -window, -1)
end
local fields = {'version', version + 1, 'fence', token}
if epoch >= 0 then
  fields[#fields + 1] = 'epoch'
  fields[#fields + 1] = epoch
end
for i = at, at + 2 * n_meta - 1 do  -- only the fields that changed
  fields[#fields + 1] = ARGV[i]
end
redis.call('HSET', KEYS[2], unpack(fields))
for k = 2, 6 do redis.call('PEXPIRE', KEYS[k], ttl) end
if hold > 0 then
  redis.call('SET', KEYS[1], owner, 'PX', hold)
elseif holder then
  redis.call('DEL', KEYS[1])
end
return {'OK', tostring(version + 1), token}
