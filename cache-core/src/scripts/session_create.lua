-- KEYS[1] record; ARGV: data, user ('' none), deadline ms ('0': now + max), idle ms,
-- created-at ms ('0': now), version, max ms.
-- 1 created; 0 the id is taken; -1 the deadline has passed.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local now = now_ms()
local x = tonumber(ARGV[3])
if x == 0 then
  x = now + tonumber(ARGV[7])
end
local ttl = math.min(tonumber(ARGV[4]), x - now)
if ttl <= 0 then
  return -1
end
local c = ARGV[5]
if c == '0' then
  c = string.format('%.0f', now)
end
redis.call('HSET', KEYS[1], 'd', ARGV[1], 'x', string.format('%.0f', x), 'c', c, 'v', ARGV[6])
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], 'u', ARGV[2])
end
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
