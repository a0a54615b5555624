-- Write one memory's new state as a diff, then release the lock. Refused (and nothing
-- written) unless the caller holds the lock, its fencing token and partition epoch are not
-- older than the last writer's, and the state is still at the version it computed from.
-- KEYS: lock, meta, order, msgs, fence
-- ARGV: owner, token, epoch (-1 = none), expected_version, ttl_ms, n_removed, ids...,
--       n_added, (score, id, json)..., then meta field/value pairs
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
local i = 6
local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('ZREM', KEYS[3], ARGV[i])
  redis.call('HDEL', KEYS[4], ARGV[i])
  i = i + 1
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('ZADD', KEYS[3], ARGV[i], ARGV[i + 1])
  redis.call('HSET', KEYS[4], ARGV[i + 1], ARGV[i + 2])
  i = i + 3
end
for j = i, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[j], ARGV[j + 1])
end
redis.call('HSET', KEYS[2], 'version', version + 1, 'fence', token)
if epoch >= 0 then redis.call('HSET', KEYS[2], 'epoch', epoch) end
for k = 2, 5 do redis.call('PEXPIRE', KEYS[k], ttl) end
redis.call('DEL', KEYS[1])
return {'OK', tostring(version + 1)}
