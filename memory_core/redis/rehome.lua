-- Move one memory to a new home (a repartition): set the translated positions and the new
-- home, drop the old partition's epoch, bump the version (cached states elsewhere go stale).
-- Refused when the memory changed since it was read (then read and translate again).
-- KEYS: meta
-- ARGV: 1. the version the translation was computed from; 2. a JSON object of meta fields.
-- Replies: 'OK' | 'CONFLICT' | 'GONE' (expired or never written)
local version = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if version == 0 then return 'GONE' end
if version ~= tonumber(ARGV[1]) then return 'CONFLICT' end
local fields = {'version', version + 1}
for field, value in pairs(cjson.decode(ARGV[2])) do
  fields[#fields + 1] = field
  fields[#fields + 1] = value
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('HDEL', KEYS[1], 'epoch')
return 'OK'
