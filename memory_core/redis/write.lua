-- Write one memory's new state as a diff, then release the lock. Refused (and nothing
-- written) unless the caller holds the lock, its fencing token and partition epoch are not
-- older than the last writer's, and the state is still at the version it computed from.
-- KEYS: lock, meta, order, msgs, fence, ids
-- ARGV: owner, token, epoch (-1 = none), expected_version, ttl_ms, diff (JSON:
--       {"removed": [id...], "added": [[score, id, body]...], "ids": [event id...],
--        "window": n, "meta": {field: string...}}), hold_ms (0 = release the lock, else
--       keep holding it for hold_ms more)
local owner, token, epoch = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local expected, ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local holder = redis.call('GET', KEYS[1])
if holder ~= owner then
  if holder then return {'LOCKED', holder} end
  return {'LOCK_LOST', ''}
end
local m = redis.call('HMGET', KEYS[2], 'version', 'epoch', 'fence')
local version = tonumber(m[1]) or 0
local refusal
if epoch >= 0 and (tonumber(m[2]) or -1) > epoch then
  refusal = {'FENCED', 'epoch ' .. m[2]}
elseif (tonumber(m[3]) or 0) > token then
  refusal = {'FENCED', 'token ' .. m[3]}
elseif version ~= expected then
  refusal = {'CONFLICT', tostring(version)}
end
if refusal then
  redis.call('DEL', KEYS[1])
  return refusal
end
local diff = cjson.decode(ARGV[6])
local removed = diff.removed
for i = 1, #removed, 1000 do  -- unpack() is bounded by Lua's C stack
  local j = math.min(i + 999, #removed)
  redis.call('ZREM', KEYS[3], unpack(removed, i, j))
  redis.call('HDEL', KEYS[4], unpack(removed, i, j))
end
for _, add in ipairs(diff.added) do
  -- Scores travel as strings: Lua numbers would lose the digits of a float.
  redis.call('ZADD', KEYS[3], add[1], add[2])
  redis.call('HSET', KEYS[4], add[2], add[3])
end
if #diff.ids > 0 then
  redis.call('RPUSH', KEYS[6], unpack(diff.ids))
  redis.call('LTRIM', KEYS[6], -diff.window, -1)
end
local fields = {'version', version + 1, 'fence', token}
if epoch >= 0 then
  fields[#fields + 1] = 'epoch'
  fields[#fields + 1] = epoch
end
for name, value in pairs(diff.meta) do  -- only the fields that changed
  fields[#fields + 1] = name
  fields[#fields + 1] = value
end
redis.call('HSET', KEYS[2], unpack(fields))
for k = 2, 6 do redis.call('PEXPIRE', KEYS[k], ttl) end
local hold = tonumber(ARGV[7])
if hold > 0 then
  redis.call('PEXPIRE', KEYS[1], hold)
else
  redis.call('DEL', KEYS[1])
end
return {'OK', tostring(version + 1)}
