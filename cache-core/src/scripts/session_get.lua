-- KEYS[1] record; ARGV: idle ms, step ms, '1' to return {data, version} (get) or '0' (touch).
local r = redis.call('HMGET', KEYS[1], 'x', 'd', 'v')
if not r[1] or not r[2] then
  return false
end
if not slide(KEYS[1], tonumber(r[1]), tonumber(ARGV[1]), tonumber(ARGV[2])) then
  return false
end
if ARGV[3] == '1' then
  return {r[2], r[3] or '1'}
end
return 1
