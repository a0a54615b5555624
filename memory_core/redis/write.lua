-- Write one memory's new state as a diff, then keep or release the lock. Refused (and nothing
-- written) unless the caller holds the lock, its fencing token and partition epoch are not
-- older than the last writer's, and the state is still at the version it computed from.
-- KEYS: lock, meta, order, msgs, fence, ids
-- ARGV: owner, token, epoch (-1 = none), expected_version, ttl_ms, hold_ms (0 = release the
--       lock, else keep holding it for hold_ms more), id window, then four counts
--       (removed, added, event ids, meta fields) and the flat lists they count:
--       removed message ids; (score, id, body) per added message; event ids; (field, value)
--       per changed meta field. Flat arguments, not JSON: nothing to decode here.
local owner, token, epoch = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local expected, ttl, hold = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local window = tonumber(ARGV[7])
local n_removed, n_added = tonumber(ARGV[8]), tonumber(ARGV[9])
local n_ids, n_meta = tonumber(ARGV[10]), tonumber(ARGV[11])
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
-- unpack() is bounded by Lua's C stack: commands take at most 1000 arguments at a time.
local at = 12
for i = at, at + n_removed - 1, 1000 do
  local j = math.min(i + 999, at + n_removed - 1)
  redis.call('ZREM', KEYS[3], unpack(ARGV, i, j))
  redis.call('HDEL', KEYS[4], unpack(ARGV, i, j))
end
at = at + n_removed
-- Scores travel as strings: Lua numbers would lose the digits of a float.
local zargs, hargs = {}, {}
for i = 0, n_added - 1 do
  local k = at + 3 * i
  zargs[2 * i + 1], zargs[2 * i + 2] = ARGV[k], ARGV[k + 1]
  hargs[2 * i + 1], hargs[2 * i + 2] = ARGV[k + 1], ARGV[k + 2]
end
for i = 1, #zargs, 1000 do
  local j = math.min(i + 999, #zargs)
  redis.call('ZADD', KEYS[3], unpack(zargs, i, j))
  redis.call('HSET', KEYS[4], unpack(hargs, i, j))
end
at = at + 3 * n_added
if n_ids > 0 then
  for i = at, at + n_ids - 1, 1000 do
    redis.call('RPUSH', KEYS[6], unpack(ARGV, i, math.min(i + 999, at + n_ids - 1)))
  end
  redis.call('LTRIM', KEYS[6], -window, -1)
end
at = at + n_ids
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
  redis.call('PEXPIRE', KEYS[1], hold)
else
  redis.call('DEL', KEYS[1])
end
return {'OK', tostring(version + 1)}
