-- Extend a lock only for its owner. KEYS: lock. ARGV: owner, ttl_ms. Returns 1 if extended.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
