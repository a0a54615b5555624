-- Take a memory's lock (re-entrant for the same owner) and draw a fencing token. One round trip.
-- (The apply step does not call this: write.lua takes the lock itself.)
-- KEYS: lock, fence
-- ARGV: owner, lock_ttl_ms
local owner, ttl = ARGV[1], tonumber(ARGV[2])
if not redis.call('SET', KEYS[1], owner, 'NX', 'PX', ttl) then
  local holder = redis.call('GET', KEYS[1])
  if holder ~= owner then
    return {'LOCKED', holder or '', redis.call('PTTL', KEYS[1])}
  end
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return {'OK', redis.call('INCR', KEYS[2])}
