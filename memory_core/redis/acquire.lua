-- Take a memory's lock (re-entrant for the same owner), draw a fencing token, and optionally
-- read the state when the caller's cached version is stale. One round trip.
-- KEYS: lock, fence, meta, order, msgs, ids
-- ARGV: owner, lock_ttl_ms, known_version ('' = do not read)
local owner, ttl = ARGV[1], tonumber(ARGV[2])
if not redis.call('SET', KEYS[1], owner, 'NX', 'PX', ttl) then
  local holder = redis.call('GET', KEYS[1])
  if holder ~= owner then
    return {'LOCKED', holder or '', redis.call('PTTL', KEYS[1])}
  end
  redis.call('PEXPIRE', KEYS[1], ttl)
end
local token = redis.call('INCR', KEYS[2])
local version = tonumber(redis.call('HGET', KEYS[3], 'version')) or 0
if ARGV[3] == '' or tonumber(ARGV[3]) == version then
  return {'OK', token, version}
end
return {'OK', token, version, redis.call('HGETALL', KEYS[3]),
        redis.call('ZRANGE', KEYS[4], 0, -1, 'WITHSCORES'), redis.call('HGETALL', KEYS[5]),
        redis.call('LRANGE', KEYS[6], 0, -1)}
