-- A consistent snapshot of one memory, optionally a page of its messages.
-- KEYS: meta, order, msgs, lock[, ids: then the recent event ids and their key's type follow]
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
local out = {redis.call('HGETALL', KEYS[1]), bodies, redis.call('ZCARD', KEYS[2]),
             redis.call('GET', KEYS[4]) or '', redis.call('PTTL', KEYS[4]), redis.call('PTTL', KEYS[1])}
if KEYS[5] then
  -- A list, or a JSON string as an earlier version stored it.
  local kind = redis.call('TYPE', KEYS[5])['ok']
  if kind == 'string' then
    out[7] = redis.call('GET', KEYS[5])
  else
    out[7] = redis.call('LRANGE', KEYS[5], 0, -1)
  end
  out[8] = kind
end
return out
