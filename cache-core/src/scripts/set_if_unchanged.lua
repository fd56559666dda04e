-- The write of a computed value: only if the key still holds what the read before the
-- computation found (a read that found nothing writes with a plain SET NX instead). An
-- invalidation or another write in between changed the key, and wins.
-- KEYS[1]: the key. ARGV[1]: SHA-1 (hex) of what the read found; ARGV[2]: the value;
-- ARGV[3]: its TTL in milliseconds, 0 for none.
-- Returns 1 if it wrote, 0 if not.
local current = redis.pcall('GET', KEYS[1])
if type(current) ~= 'string' or redis.sha1hex(current) ~= ARGV[1] then
  return 0
end
if ARGV[3] == '0' then
  redis.call('SET', KEYS[1], ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 1
