-- KEYS[1] record: returns {data, user, created-at, deadline, version} and deletes it (the
-- first half of a rotation); nil if there is no such session.
local r = redis.call('HMGET', KEYS[1], 'd', 'u', 'c', 'x', 'v')
if not r[1] or not r[4] then
  return false
end
redis.call('DEL', KEYS[1])
return {r[1], r[2] or '', r[3] or '0', r[4], r[5] or '1'}
