-- KEYS[1] record; ARGV: data, idle ms, step ms, expected version ('' any), user ('' keep).
-- {new version, previous user or ''}; {0} no such session; {-1} the version differs.
local r = redis.call('HMGET', KEYS[1], 'x', 'v', 'u')
if not r[1] then
  return {0}
end
if ARGV[4] ~= '' and r[2] ~= ARGV[4] then
  return {-1}
end
if not slide(KEYS[1], tonumber(r[1]), tonumber(ARGV[2]), tonumber(ARGV[3])) then
  return {0}
end
redis.call('HSET', KEYS[1], 'd', ARGV[1])
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[1], 'u', ARGV[5])
end
return {redis.call('HINCRBY', KEYS[1], 'v', 1), r[3] or ''}
