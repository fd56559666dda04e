-- KEYS[1] record: deletes it; {1, user or ''} if it existed, {0, ''} otherwise.
local u = redis.call('HGET', KEYS[1], 'u')
local n = redis.call('DEL', KEYS[1])
return {n, u or ''}
