-- Write several memories' new states, each as a diff, each taking its lock first when the
-- caller does not hold it: one script call per chunk of memories (its per-call cost, in
-- Redis and in the client, was most of a live write: docs/decisions/0011). Each memory is
-- refused on its own (and nothing of it written) when another owner holds its lock, when the
-- caller's fencing token or partition epoch is older than its last writer's, or when it is
-- not at the version the caller computed from. On that last refusal (CONFLICT) the caller
-- keeps the lock and gets the current state back, so its next attempt is one more round
-- trip, with no wait.
-- KEYS: per memory, 7 keys: lock, meta, order, msgs, fence, ids, the writer's partition
--       epoch counter.
-- ARGV: 1. the owner; then per memory, in KEYS order:
--       a. a JSON array [token (-1 = not held: take the lock and draw a token here), epoch
--          (-1 = none), expected_version, ttl_ms, hold_ms (> 0: hold the lock hold_ms more;
--          0: release it after the write; < 0: held, with lease enough left: leave it),
--          lease_ms (how long a CONFLICT keeps the lock), the score of the first appended
--          message (the next ones follow by 1), the number of inserted messages, the ids
--          window's length, 1 if the stored ids window is known to be a list (else its type
--          is checked), the appended messages' ids, the event ids the batch added to the
--          window (appended to the stored list, which is trimmed to the window's length),
--          the removed message ids, an object of the changed meta fields];
--       b. the appended messages' bodies as newline-delimited JSON (each followed by a
--          newline; JSON bodies hold none);
--       c. (score, id, body) per message inserted between kept ones (a summary; rare).
-- Reply: one per memory, in order: {'OK', new_version, token}
--          | {'CONFLICT', token, version, meta, order, msgs, ids, ids_type}
--          | {'LOCKED', holder} | {'LOCK_LOST', ''} | {'FENCED', why} | {'LOST', why}
local owner = ARGV[1]

-- unpack() is bounded by Lua's C stack: commands take at most 1000 arguments at a time.
local function each_1000(cmd, key, list)
  for i = 1, #list, 1000 do
    redis.call(cmd, key, unpack(list, i, math.min(i + 999, #list)))
  end
end

-- The ids window as stored: a list (a JSON string, as an earlier version kept it, is read as
-- well and converted by the next write).
local function recent_ids(key)
  local kind = redis.call('TYPE', key).ok
  if kind == 'string' then return redis.call('GET', key), kind end
  return cjson.encode(redis.call('LRANGE', key, 0, -1)), kind
end

local function write(K, h, bodies, a)
  local token, epoch, expected = h[1], h[2], h[3]
  local ttl, hold, lease, base, n_inserted = h[4], h[5], h[6], h[7], h[8]
  local window, ids_list = h[9], h[10]
  local holder = redis.call('GET', K[1])
  if holder and holder ~= owner then return {'LOCKED', holder} end
  if token >= 0 and not holder then return {'LOCK_LOST', ''} end
  local m = redis.call('HMGET', K[2], 'version', 'epoch', 'fence')
  local version = tonumber(m[1]) or 0
  local refusal
  local stored_epoch = epoch >= 0 and redis.call('GET', K[7]) or false
  local current = tonumber(stored_epoch or '-1')
  -- A partition owner took its epoch at assignment, so a missing counter means Redis lost
  -- the partition's state (a wipe, a restart without persistence): nothing is written onto
  -- it until the owner restored the partition from the log. (On Redis Cluster K[7] is a
  -- stand-in key of the memory's slot that is never set, as for a write without a home:
  -- the check does not apply.)
  if epoch >= 0 and not stored_epoch and string.sub(K[7], -19) ~= ':no-partition-epoch' then
    refusal = {'LOST', 'partition epoch missing'}
  elseif current > epoch then
    refusal = {'FENCED', 'partition epoch ' .. current}
  elseif epoch >= 0 and (tonumber(m[2]) or -1) > epoch then
    refusal = {'FENCED', 'epoch ' .. m[2]}
  elseif token >= 0 and (tonumber(m[3]) or 0) > token then
    refusal = {'FENCED', 'token ' .. m[3]}
  end
  if refusal then
    if holder then redis.call('DEL', K[1]) end
    return refusal
  end
  if token < 0 then token = redis.call('INCR', K[5]) end
  if version ~= expected then
    redis.call('SET', K[1], owner, 'PX', lease)
    local ids, kind = recent_ids(K[6])
    return {'CONFLICT', token, version, redis.call('HGETALL', K[2]),
            redis.call('ZRANGE', K[3], 0, -1, 'WITHSCORES'), redis.call('HGETALL', K[4]),
            ids, kind}
  end
  local removed = h[13]
  if #removed > 0 then
    each_1000('ZREM', K[3], removed)
    each_1000('HDEL', K[4], removed)
  end
  -- Inserted scores travel as strings: Lua numbers would lose the digits of a midpoint. The
  -- appended ones are whole numbers, exact as Lua numbers.
  local zargs, hargs, n = {}, {}, 0
  for i = 0, n_inserted - 1 do
    local k = a + 3 * i
    zargs[2 * n + 1], zargs[2 * n + 2] = ARGV[k], ARGV[k + 1]
    hargs[2 * n + 1], hargs[2 * n + 2] = ARGV[k + 1], ARGV[k + 2]
    n = n + 1
  end
  -- Bodies are JSON objects: never empty, no newline inside.
  local ids, i = h[11], 0
  for body in string.gmatch(bodies, '[^\n]+') do
    i = i + 1
    zargs[2 * n + 1], zargs[2 * n + 2] = base + i - 1, ids[i]
    hargs[2 * n + 1], hargs[2 * n + 2] = ids[i], body
    n = n + 1
  end
  if n > 0 then
    each_1000('ZADD', K[3], zargs)
    each_1000('HSET', K[4], hargs)
  end
  local add = h[12]
  if #add > 0 then
    if ids_list ~= 1 and redis.call('TYPE', K[6]).ok == 'string' then
      local old = cjson.decode(redis.call('GET', K[6]))
      redis.call('DEL', K[6])
      each_1000('RPUSH', K[6], old)
    end
    each_1000('RPUSH', K[6], add)
    redis.call('LTRIM', K[6], -window, -1)
  end
  local fields = {'version', version + 1, 'fence', token}
  if epoch >= 0 then
    fields[#fields + 1] = 'epoch'
    fields[#fields + 1] = epoch
  end
  for field, value in pairs(h[14]) do  -- only the fields that changed
    fields[#fields + 1] = field
    fields[#fields + 1] = value
  end
  redis.call('HSET', K[2], unpack(fields))
  for k = 2, 6 do redis.call('PEXPIRE', K[k], ttl) end
  if hold > 0 then
    redis.call('SET', K[1], owner, 'PX', hold)
  elseif hold == 0 and holder then
    redis.call('DEL', K[1])
  end
  return {'OK', tostring(version + 1), token}
end

local replies, a = {}, 2
for j = 0, #KEYS / 7 - 1 do
  local K = {KEYS[7 * j + 1], KEYS[7 * j + 2], KEYS[7 * j + 3], KEYS[7 * j + 4],
             KEYS[7 * j + 5], KEYS[7 * j + 6], KEYS[7 * j + 7]}
  local h = cjson.decode(ARGV[a])
  replies[j + 1] = write(K, h, ARGV[a + 1], a + 2)
  a = a + 2 + 3 * h[8]
end
return replies
