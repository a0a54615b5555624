-- A consistent snapshot of one memory, optionally a page of its messages.
-- KEYS: meta, order, msgs, lock
-- ARGV: start, stop (ZRANGE indices; 0, -1 = all)
local ids = redis.call('ZRANGE', KEYS[2], ARGV[1], ARGV[2])
local bodies = {}
if #ids > 0 then
  for i = 1, #ids, 1000 do
    local chunk = {}
    for j = i, math.min(i + 999, #ids) do chunk[#chunk + 1] = ids[j] end
    local got = redis.call('HMGET', KEYS[3], unpack(chunk))
    for _, body in ipairs(got) do bodies[#bodies + 1] = body end
  end
end
return {redis.call('HGETALL', KEYS[1]), bodies, redis.call('ZCARD', KEYS[2]),
        redis.call('GET', KEYS[4]) or '', redis.call('PTTL', KEYS[4]), redis.call('PTTL', KEYS[1])}
